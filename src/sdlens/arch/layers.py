"""Classify a key or module name into a layer type using the registry's LAYER_TYPES table."""

from __future__ import annotations

import re
from functools import lru_cache

from sdlens.arch.registry import LAYER_TYPES

_COMPILED = tuple((name, re.compile(rx)) for name, rx in LAYER_TYPES)


@lru_cache(maxsize=65536)
def layer_type(key: str) -> str:
    """attn1 / attn2 / attn / ff / norm / proj / embedding / resnet/conv / other."""
    for name, rx in _COMPILED:
        if rx.search(key):
            return name
    return "other"
