"""Small facts about plan items shared by the passes: which component each belongs to, dropping one, and
whether a stored ``position_ids`` tensor is exactly 0..N-1."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sdlens.arch.identify import identify
from sdlens.convert.layouts import Item
from sdlens.io.base import Checkpoint, TensorInfo


def _infos(items: dict[str, Item]) -> dict[str, TensorInfo]:
    return {k: TensorInfo(k, it.shape, it.dtype, "", 0) for k, it in items.items()}


def assign_components(items: dict[str, Item]) -> tuple[str, dict[str, Any]]:
    """Set each item's component; return the family and the split's components (for prefixes)."""
    ident = identify(_infos(items))
    split = ident.split
    for cid, comp in split.components.items():
        for k in comp.full_keys:
            items[k].component = cid.split("@")[0]
    for k in split.unknown:
        items[k].component = "other"
    return ident.denoiser_family, split.components


def drop_item(it: Item, note: str) -> Item:
    return replace(it, op="drop", note=note, tags=set(it.tags))


def is_arange(ck: Checkpoint, key: str) -> bool:
    import numpy as np

    info = ck.tensors.get(key)
    if info is None or info.dtype != "I64" or info.nbytes > 1 << 20:
        return False
    vals = ck.read_numpy(key).reshape(-1)
    return bool(np.array_equal(vals, np.arange(vals.size)))
