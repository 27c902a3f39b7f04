"""Shared machinery for the DiT key maps (original single-file layout <-> diffusers ``transformer``).

A map is a table of :class:`Rel` relations. Each relates one original key (or key prefix) to one or more
diffusers keys: a rename, a fusion (the original tensor is the row concatenation of the diffusers tensors, as
for fused q/k/v) or a half swap (``(shift, scale)`` in the original, ``(scale, shift)`` in diffusers). Every
mapping works on names and shapes alone and describes each output tensor as row slices of input tensors
(:class:`Slice`), so callers can plan first and read data lazily; :meth:`DitMap.convert` applies a plan to
tensors. Applying both directions gives back the same bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Literal, NamedTuple

if TYPE_CHECKING:
    import torch

Shape = tuple[int, ...]
Side = Literal["original", "diffusers"]
# original key, its shape and every original shape -> the row sizes of the fused parts
SplitFn = Callable[[str, Shape, Mapping[str, Shape]], list[int]]


@dataclass(frozen=True)
class Rel:
    """One original key (``original``) and the diffusers key(s) it is made of.

    Templates: ``{i}`` stands for a block index, ``{p}`` for any run of key segments (a module path); a
    template ending in ``.`` is a module prefix (the rest of the key, ``weight`` / ``bias`` / ``scale``..., is
    carried over), otherwise a whole key. ``diffusers`` with
    several entries: the original is their concatenation along dim 0 (``split`` gives the part sizes from the
    original side; default equal parts). ``swap``: the two halves of dim 0 trade places. ``absent``: (original,
    diffusers) key templates of the same block; the relation applies only where that key is missing;
    ``present``: likewise, only where that key is there.
    """

    original: str
    diffusers: tuple[str, ...]
    swap: bool = False
    split: SplitFn | None = None
    absent: tuple[str, str] | None = None
    present: tuple[str, str] | None = None

    @property
    def identity(self) -> bool:
        """Same name in both layouts (such keys say nothing about which layout a file is in)."""
        return self.diffusers == (self.original,)


class Slice(NamedTuple):
    """Rows ``rows`` (dim 0; None = all) of input tensor ``key``."""

    key: str
    rows: tuple[int, int] | None = None


class Target(NamedTuple):
    """An output tensor: its shape and the input slices it is the row concatenation of."""

    shape: Shape
    pieces: tuple[Slice, ...]


class Plan(NamedTuple):
    """Output key -> target, in input order; and the input keys no relation covers."""

    targets: dict[str, Target]
    left: list[str]


def _compile(template: str) -> re.Pattern[str]:
    body = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>.+)")
    return re.compile(f"^{body}(?P<rest>.*)$" if template.endswith(".") else f"^{body}(?P<rest>)$")


Groups = dict[str, str]  # the template fields a key matched: i (block index), p (module path), rest


def _fmt(template: str, g: Groups, rest: str | None = None) -> str:
    return template.replace("{i}", g.get("i") or "").replace("{p}", g.get("p") or "") + (
        g["rest"] if rest is None else rest
    )


def _probe(template: str, g: Groups) -> str:
    return _fmt(template, g, "")


def _rows(shape: Shape, n: int) -> Shape:
    return (n, *shape[1:])


class DitMap:
    """Both directions of one family's relation table."""

    def __init__(self, name: str, rels: Iterable[Rel], original_only: tuple[str, ...] = ()) -> None:
        self.name = name
        self.rels: tuple[Rel, ...] = tuple(rels)
        self.original_only = (
            original_only  # original keys diffusers has no place for (left out of every plan)
        )

    @cached_property
    def _orig_rx(self) -> tuple[re.Pattern[str], ...]:
        return tuple(_compile(r.original) for r in self.rels)

    @cached_property
    def _diff_rx(self) -> tuple[tuple[re.Pattern[str], ...], ...]:
        return tuple(tuple(_compile(d) for d in r.diffusers) for r in self.rels)

    @cached_property
    def _by_head(self) -> dict[tuple[Side, str], tuple[int, ...]]:
        """Relation indices by the first key segment of their templates (table order kept), per side; a
        template whose first segment is a field (``{p}...``) is listed under the head ``*``."""
        out: dict[tuple[Side, str], list[int]] = {}
        for n, rel in enumerate(self.rels):
            for side, templates in (("original", (rel.original,)), ("diffusers", rel.diffusers)):
                for head in {"*" if t.startswith("{") else t.split(".", 1)[0] for t in templates}:
                    out.setdefault((side, head), []).append(n)
        return {k: tuple(v) for k, v in out.items()}

    def _candidates(self, side: Side, head: str) -> tuple[int, ...]:
        wild = self._by_head.get((side, "*"), ())
        named = self._by_head.get((side, head), ())
        return tuple(sorted({*named, *wild})) if wild and named else named or wild

    # ------------------------------------------------------------------ matching
    def _find(self, key: str, side: Side, keys: Mapping[str, Shape]) -> tuple[Rel, Groups] | None:
        """(relation, matched fields) for ``key`` on ``side``, first applicable relation wins."""
        s = 0 if side == "original" else 1
        for n in self._candidates(side, key.split(".", 1)[0]):
            rel = self.rels[n]
            pats = (self._orig_rx[n],) if side == "original" else self._diff_rx[n]
            for rx in pats:
                m = rx.match(key)
                if m is None:
                    continue
                g = {k: v for k, v in m.groupdict().items() if v is not None}
                if rel.absent is not None and _probe(rel.absent[s], g) in keys:
                    continue
                if rel.present is not None and _probe(rel.present[s], g) not in keys:
                    continue
                return rel, g
        return None

    def layout(self, keys: Iterable[str]) -> Side | None:
        """Which side ``keys`` (relative denoiser keys) are written in: the side more of them match (keys
        matched by a same-name relation count only to break a tie); None if neither matches any."""
        ks = {k: () for k in keys}
        score = {"original": [0, 0], "diffusers": [0, 0]}
        for side in score:
            for k in ks:
                hit = self._find(k, side, ks)
                if hit is not None:
                    score[side][hit[0].identity] += 1
        (o_rel, o_same), (d_rel, d_same) = score["original"], score["diffusers"]
        if not (o_rel + o_same) and not (d_rel + d_same):
            return None
        return "original" if (o_rel, o_same) > (d_rel, d_same) else "diffusers"

    # ------------------------------------------------------------------ planning (names + shapes only)
    def to_diffusers(self, shapes: Mapping[str, Shape]) -> Plan:
        """Original-layout header (key -> shape) -> diffusers keys as row slices of the original tensors."""
        targets: dict[str, Target] = {}
        left: list[str] = []
        for key, shape in shapes.items():
            shape = tuple(shape)
            hit = self._find(key, "original", shapes)
            if hit is None:
                left.append(key)
                continue
            rel, g = hit
            outs = [_fmt(d, g) for d in rel.diffusers]
            if rel.swap:
                h = shape[0] // 2
                targets[outs[0]] = Target(shape, (Slice(key, (h, 2 * h)), Slice(key, (0, h))))
            elif len(outs) == 1:
                targets[outs[0]] = Target(shape, (Slice(key),))
            else:
                sizes = rel.split(key, shape, shapes) if rel.split else [shape[0] // len(outs)] * len(outs)
                if sum(sizes) != shape[0] or len(sizes) != len(outs):
                    left.append(key)
                    continue
                off = 0
                for out, size in zip(outs, sizes, strict=True):
                    targets[out] = Target(_rows(shape, size), (Slice(key, (off, off + size)),))
                    off += size
        return Plan(targets, left)

    def to_original(self, shapes: Mapping[str, Shape]) -> Plan:
        """diffusers-layout header -> original keys as row concatenations of (slices of) diffusers tensors."""
        targets: dict[str, Target] = {}
        left: list[str] = []
        done: set[str] = set()
        for key, shape in shapes.items():
            shape = tuple(shape)
            if key in done:
                continue
            hit = self._find(key, "diffusers", shapes)
            if hit is None:
                left.append(key)
                continue
            rel, g = hit
            out = _fmt(rel.original, g)
            parts = [_fmt(d, g) for d in rel.diffusers]
            if rel.swap:
                h = shape[0] // 2
                targets[out] = Target(shape, (Slice(key, (h, 2 * h)), Slice(key, (0, h))))
            elif all(p in shapes for p in parts):
                rows = sum(tuple(shapes[p])[0] for p in parts)
                targets[out] = Target(_rows(shape, rows), tuple(Slice(p) for p in parts))
                done.update(parts)
            else:
                left.append(key)
        return Plan(targets, left)

    def plan(self, shapes: Mapping[str, Shape], to: Side) -> Plan:
        return self.to_diffusers(shapes) if to == "diffusers" else self.to_original(shapes)

    def canonical(self, shapes: Mapping[str, Shape]) -> tuple[dict[str, Target], list[str]]:
        """Canonical name -> one slice of one file tensor, for a header in either layout.

        Canonical names are the diffusers keys (q, k and v apart); a diffusers tensor whose rows come from
        several original slices (the swapped modulation halves) is split into ``key[a:b]`` row ranges, so
        every canonical tensor is one row range of one tensor in both layouts."""
        side = self.layout(shapes)
        if side is None:
            return {}, list(shapes)
        out: dict[str, Target] = {}
        if side == "original":
            plan = self.to_diffusers(shapes)
            for dkey, t in plan.targets.items():
                if len(t.pieces) == 1:
                    out[dkey] = t
                    continue
                off = 0
                for p in t.pieces:
                    n = p.rows[1] - p.rows[0] if p.rows else t.shape[0]
                    out[f"{dkey}[{off}:{off + n}]"] = Target(_rows(t.shape, n), (p,))
                    off += n
            return out, plan.left
        plan = self.to_original(shapes)
        split: dict[str, list[tuple[int, int]]] = {}
        for t in plan.targets.values():
            for p in t.pieces:
                if p.rows is not None:
                    split.setdefault(p.key, []).append(p.rows)
        left = set(plan.left)
        for key, shape in shapes.items():
            if key in left:
                continue
            shape = tuple(shape)
            if key in split:
                for a, b in sorted(split[key]):
                    out[f"{key}[{a}:{b}]"] = Target(_rows(shape, b - a), (Slice(key, (a, b)),))
            else:
                out[key] = Target(shape, (Slice(key),))
        return out, plan.left

    # ------------------------------------------------------------------ tensors
    def convert(
        self, sd: Mapping[str, torch.Tensor], to: Side, *, strict: bool = True
    ) -> dict[str, torch.Tensor]:
        """Rename ``sd`` (relative keys) to the other layout. ``strict``: raise KeyError for keys no relation
        covers (else they are dropped). Whole tensors are shared, sliced or concatenated ones are new."""
        plan = self.plan({k: tuple(v.shape) for k, v in sd.items()}, to)
        if strict and plan.left:
            raise KeyError(f"{self.name}: keys outside the {to} map: {plan.left[:8]}")
        return {k: assemble(t, sd) for k, t in plan.targets.items()}


def assemble(target: Target, sd: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The tensor ``target`` describes, from the input tensors ``sd``."""
    import torch

    parts = [sd[p.key] if p.rows is None else sd[p.key][p.rows[0] : p.rows[1]] for p in target.pieces]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def wb(original: str, *diffusers: str, **kw) -> Rel:
    """A module-prefix relation (``weight`` and ``bias`` and whatever else the module holds)."""
    return Rel(original, tuple(diffusers), **kw)
