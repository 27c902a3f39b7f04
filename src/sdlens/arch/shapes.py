"""Small readers of a denoiser's relative keys and shapes, shared by the records' ``config_from_shapes``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sdlens.errors import SdlensError

if TYPE_CHECKING:
    from sdlens.io.base import TensorInfo


def count(keys: Mapping[str, Any], pattern: str) -> int:
    """Distinct values of the regex's first group over the keys (e.g. block indices)."""
    rx = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := rx.match(k))})


def indices(keys: Mapping[str, Any], pattern: str) -> list[int]:
    """The regex's first group as sorted distinct ints."""
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def first(keys: Mapping[str, TensorInfo], *names: str) -> TensorInfo:
    """The first of ``names`` in the keys (original layout name first, diffusers name second, say)."""
    for n in names:
        if n in keys:
            return keys[n]
    raise SdlensError(None, f"cannot derive a config: none of {', '.join(names)} in the file")


def head_dim(hidden: int, usual: int) -> int:
    """Head width when no tensor tells it: the family's usual one where it divides the width (parameters do not
    depend on it; attention FLOPs neither, only materialised-score memory does)."""
    return usual if hidden % usual == 0 else (16 if hidden % 16 == 0 else hidden)


def optional(keys: Mapping[str, TensorInfo], *names: str) -> TensorInfo | None:
    """The first of ``names`` in the keys, or None."""
    return next((keys[n] for n in names if n in keys), None)


def derive_config(denoiser: Any, keys: Mapping[str, TensorInfo], path: Any = None) -> dict[str, Any]:
    """``denoiser.config_from_shapes(keys)`` for a file that may be crafted: a shape of the wrong rank or a
    missing tensor is one clear error naming the file, never an internal one."""
    try:
        return denoiser.config_from_shapes(keys)
    except SdlensError as e:
        raise SdlensError(path, e.problem) from None
    except (IndexError, KeyError, ValueError, TypeError, ZeroDivisionError, AttributeError) as e:
        raise SdlensError(
            path, f"cannot derive a {denoiser.cls_name} config from the tensors' shapes ({type(e).__name__})"
        ) from None
