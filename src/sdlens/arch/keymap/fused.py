"""A small engine for DiT key maps given as ordered regex rules, with fused tensors as row slices.

A rule maps one diffusers key (``fullmatch``) to its original key (``Match.expand`` template). A rule whose regex
has a ``part`` group (``to_(?P<part>q|k|v)``) names one row slice of a fused original tensor; ``parts`` gives the
slices' order. The reverse rules map original keys back, splitting fused tensors by ``sizes`` (rows per part,
equal chunks when not given). Unknown keys raise ``KeyError``: a map that silently passes keys through hides gaps.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Rule:
    pattern: str  # regex on the source key (fullmatch)
    template: str  # target key (``\1``, ``\g<name>``); for a split, ``{part}`` marks the part's place
    parts: tuple[str, ...] = ()  # fused parts in row order

    @property
    def rx(self) -> re.Pattern[str]:
        return _compile(self.pattern)


_CACHE: dict[str, re.Pattern[str]] = {}


def _compile(pattern: str) -> re.Pattern[str]:
    if pattern not in _CACHE:
        _CACHE[pattern] = re.compile(pattern)
    return _CACHE[pattern]


def _find(rules: Sequence[Rule], key: str) -> tuple[Rule, re.Match[str]]:
    for rule in rules:
        m = rule.rx.fullmatch(key)
        if m:
            return rule, m
    raise KeyError(key)


def fuse(sd: Mapping[str, torch.Tensor], rules: Sequence[Rule]) -> dict[str, torch.Tensor]:
    """diffusers -> original: rename, and concatenate the parts of fused tensors along rows."""
    out: dict[str, torch.Tensor] = {}
    groups: dict[str, tuple[Rule, dict[str, torch.Tensor]]] = {}
    for key, t in sd.items():
        rule, m = _find(rules, key)
        target = m.expand(rule.template)
        if rule.parts:
            groups.setdefault(target, (rule, {}))[1][m.group("part")] = t
        else:
            out[target] = t
    for target, (rule, parts) in groups.items():
        if set(parts) != set(rule.parts):
            raise KeyError(f"{target}: parts {sorted(parts)} of {list(rule.parts)}")
        out[target] = torch.cat([parts[p] for p in rule.parts], dim=0)
    return out


def split(sd: Mapping[str, torch.Tensor], rules: Sequence[Rule],
          sizes: Mapping[str, Sequence[int]] | None = None) -> dict[str, torch.Tensor]:
    """original -> diffusers: rename, and slice fused tensors into their parts (``sizes[template]`` rows per
    part, else equal chunks)."""
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        rule, m = _find(rules, key)
        if not rule.parts:
            out[m.expand(rule.template)] = t
            continue
        rows = (sizes or {}).get(rule.template)
        pieces = torch.split(t, list(rows), dim=0) if rows else torch.chunk(t, len(rule.parts), dim=0)
        for part, piece in zip(rule.parts, pieces, strict=True):
            out[m.expand(rule.template.replace("{part}", part))] = piece
    return out
