"""Small readers for the config-from-shapes functions of the records (relative keys -> TensorInfo-like)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from sdlens.errors import SdlensError


def first(keys: Mapping[str, Any], *names: str) -> Any:
    """The first of ``names`` the file has (each family writes a tensor under its original or diffusers name)."""
    for n in names:
        if n in keys:
            return keys[n]
    raise SdlensError(None, f"cannot derive a config: none of {', '.join(names)} in the file")


def count(keys: Mapping[str, Any], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := rx.match(k))})


def head_dim(hidden: int, usual: int) -> int:
    """Head width where no tensor tells it (q/k norms across heads): the family's usual one where it divides."""
    return usual if hidden % usual == 0 else (16 if hidden % 16 == 0 else hidden)


def optional(keys: Mapping[str, Any], *names: str) -> Any:
    """The first of ``names`` the file has, or None."""
    return next((keys[n] for n in names if n in keys), None)
