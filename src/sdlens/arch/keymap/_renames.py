"""Key-only renames by module prefix (no tensor changes), both directions, matched on ``.`` boundaries."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch


class PrefixRenames:
    """A bijective table of module prefixes (``a.b`` -> ``c.d``): top-level entries and entries inside numbered
    blocks (``blocks.N.`` in one layout, ``blocks_to.N.`` in the other)."""

    def __init__(self, top: Mapping[str, str], block: Mapping[str, str] = (), blocks: tuple[str, str] = ("", "")):
        self.top, self.block = dict(top), dict(block)
        self.top_rev = {v: k for k, v in self.top.items()}
        self.block_rev = {v: k for k, v in self.block.items()}
        if len(self.top_rev) != len(self.top) or len(self.block_rev) != len(self.block):  # pragma: no cover
            raise ValueError("a key map table is not one-to-one")
        self.blocks = blocks

    @staticmethod
    def _rename(key: str, table: Mapping[str, str]) -> str:
        parts = key.split(".")
        for n in range(len(parts), 0, -1):
            head = ".".join(parts[:n])
            if head in table:
                return ".".join([table[head], *parts[n:]]) if table[head] else ".".join(parts[n:])
        return key

    def _key(self, key: str, forward: bool) -> str:
        src, dst = self.blocks if forward else self.blocks[::-1]
        if src and (m := re.match(rf"{re.escape(src)}\.(\d+)\.", key)):
            rest = key[m.end() :]
            return f"{dst}.{m.group(1)}.{self._rename(rest, self.block if forward else self.block_rev)}"
        return self._rename(key, self.top if forward else self.top_rev)

    def forward(self, key: str) -> str:
        return self._key(key, True)

    def backward(self, key: str) -> str:
        return self._key(key, False)


def rename_all(sd: Mapping[str, torch.Tensor], fn) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        new = fn(key)
        if new in out:
            raise KeyError(f"two keys map to {new!r}")
        out[new] = t
    return out
