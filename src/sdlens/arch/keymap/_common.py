"""Shared machinery for the prefix-table key maps (diffusers <-> LDM)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch

ConfigLike = Mapping[str, Any]


class Entry(NamedTuple):
    """Where one diffusers module lives in the LDM layout."""

    ldm: str
    renames: Mapping[str, str] = {}
    conv1x1: bool = False  # 2-D linear weights in diffusers, 1x1 conv (4-D) weights in LDM


def as_dict(config: ConfigLike) -> dict[str, Any]:
    """A plain, JSON-friendly copy of a config (FrozenDict, dict...): tuples become lists."""
    return {str(k): list(v) if isinstance(v, tuple) else v for k, v in dict(config).items()}


class PrefixMap:
    """Both directions of a module-prefix table, matching keys on ``.`` boundaries."""

    def __init__(self, table: Mapping[str, Entry]) -> None:
        self.fwd: dict[str, Entry] = dict(table)
        self.rev: dict[str, tuple[str, dict[str, str], bool]] = {
            e.ldm: (d, {v: k for k, v in e.renames.items()}, e.conv1x1) for d, e in table.items()
        }
        self._depth = max((p.count(".") + 1 for p in [*self.fwd, *self.rev]), default=1)

    @staticmethod
    def _rename(rest: str, renames: Mapping[str, str]) -> str:
        for old, new in renames.items():
            if rest == old or rest.startswith(old + "."):
                return new + rest[len(old) :]
        return rest

    def _split(self, key: str, table: Mapping[str, Any]) -> tuple[str, str]:
        parts = key.split(".")
        for n in range(min(self._depth, len(parts)), 0, -1):
            head = ".".join(parts[:n])
            if head in table:
                return head, ".".join(parts[n:])
        raise KeyError(key)

    def to_ldm(self, key: str) -> tuple[str, bool]:
        """diffusers key -> (LDM key, is a 1x1-conv weight)."""
        head, rest = self._split(key, self.fwd)
        e = self.fwd[head]
        rest = self._rename(rest, e.renames)
        return (f"{e.ldm}.{rest}" if rest else e.ldm), e.conv1x1

    def to_diffusers(self, key: str) -> tuple[str, bool]:
        """LDM key -> (diffusers key, is a 1x1-conv weight)."""
        head, rest = self._split(key, self.rev)
        target, renames, conv = self.rev[head]
        rest = self._rename(rest, renames)
        return (f"{target}.{rest}" if rest else target), conv


def apply_map(sd: Mapping[str, torch.Tensor], pmap: PrefixMap, *, to_ldm: bool) -> dict[str, torch.Tensor]:
    """Rename every key of ``sd`` with ``pmap``; reshape attention weights between linear and 1x1 conv."""
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        new, conv = pmap.to_ldm(key) if to_ldm else pmap.to_diffusers(key)
        if conv and key.endswith("weight"):
            if to_ldm and t.ndim == 2:
                t = t[:, :, None, None]
            elif not to_ldm and t.ndim > 2:
                t = t.reshape(t.shape[0], t.shape[1])
        if new in out:
            raise KeyError(f"two keys map to {new!r}")
        out[new] = t
    return out
