"""A quantised copy is not a changed model: the quantisation test of ``diff`` and its words.

A tensor pair where one side (or both) is quantised (GGUF blocks, scaled fp8, NF4) is *within quantisation*
when every value of A and B differs by at most the quantisation step of its block (``sdlens.io.quant.steps``,
summed over the quantised sides): what rounding to that grid does, whatever quantiser chose the nearest or
a neighbouring level. Rounding alone costs about Σ step² / 12 of squared error (uniform rounding), which the
verdict sets beside the measured error so a user sees whether anything beyond quantisation is there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sdlens.arch.canonical import CanonRef
from sdlens.io.base import Checkpoint
from sdlens.io.quant import quant_of, steps
from sdlens.words import plural

# a whole step, and 1/32 more: a block's scale is itself stored in 16 bits, which moves the clamped far end of
# a symmetric block (Q4_0 / Q5_0: q in −16 … 15) up to 16 · 2^−11 of a step further
SLACK = 1 + 1 / 32
# a measured error below this share of what rounding to the grid gives means a dequantised copy, not a source
DEQUANTISED = 0.5

if TYPE_CHECKING:
    from sdlens.analysis.diff import DiffResult, TensorDiff


@dataclass
class QuantCheck:
    scheme: str  # "Q4_K" (the quantised side's scheme; "Q8_0 / Q4_K" when both are)
    side: str  # A | B | both
    within: bool  # every |Δ| within the summed quantisation steps
    noise: float  # Σ step² / 12: the squared error rounding alone gives


def _steps_view(ck: Checkpoint, ref: CanonRef, values: Any):
    """The quantisation step of every value of a canonical tensor, flat, in the order ``diff._view`` gives
    its ``values`` (a row slice or a transpose: from the whole tensor's steps, sliced the same way)."""
    import torch

    info = ck.tensors[ref.key]
    q = quant_of(info)
    scale = q.scales(ck.stored)
    if ref.rows is None and not ref.transpose:
        return torch.from_numpy(steps(q, values.float().numpy(), scale))
    s = torch.from_numpy(steps(q, ck.read_numpy(ref.key).reshape(-1), scale).reshape(info.shape))
    if ref.rows is not None:
        s = s[ref.rows[0] : ref.rows[1]]
    if ref.transpose:
        s = s.t()
    return s.reshape(-1)


def check_pair(
    ca: Checkpoint, cb: Checkpoint, ra: CanonRef, rb: CanonRef, a: Any, b: Any, *, identical: bool = False
) -> QuantCheck | None:
    """The quantisation test of one aligned pair (``a``, ``b``: its flat values), or ``None`` when neither
    side is quantised; an ``identical`` pair only gets its scheme and side (no steps to compute)."""
    import torch

    qa, qb = quant_of(ca.tensors[ra.key]), quant_of(cb.tensors[rb.key])
    if qa is None and qb is None:
        return None
    side = "both" if qa and qb else ("A" if qa else "B")
    scheme = " / ".join(q.scheme for q in (qa, qb) if q is not None)
    if identical:
        return QuantCheck(scheme, side, True, 0.0)
    bound, noise = None, 0.0
    for ck, ref, q, values in ((ca, ra, qa, a), (cb, rb, qb, b)):
        if q is not None:
            s = _steps_view(ck, ref, values)
            noise += float((s.double() ** 2).sum()) / 12.0  # independent roundings: their energies add
            bound = s if bound is None else bound + s
    d = (a.float() - b.float()).abs()
    within = bool(torch.all(d <= bound * SLACK)) if d.numel() else True
    return QuantCheck(scheme, side, within, noise)


# --------------------------------------------------------------------------- words


def quantised(r: DiffResult) -> list[TensorDiff]:
    return [t for t in r.tensors if t.quantised]


def _pct(x: float) -> str:
    return f"{100 * x:.2g}%" if x < 0.1 else f"{100 * x:.0f}%"


def _rel(ts: list[TensorDiff]) -> tuple[float, float]:
    """(measured, rounding-only) relative error of a group: √(Σ‖Δ‖² / Σ‖A‖²), √(Σ noise / Σ‖A‖²)."""
    na2 = sum((t.l2 / t.rel) ** 2 for t in ts if t.rel > 0 and math.isfinite(t.rel))
    if not na2:
        return 0.0, 0.0
    return math.sqrt(sum(t.l2**2 for t in ts) / na2), math.sqrt(sum(t.quant_noise for t in ts) / na2)


def _block_kind(block: str) -> str:
    return block.rstrip("0123456789") or block


def _by_block(ts: list[TensorDiff]) -> str:
    """``IN 0.31%, D00–D18 0.38–0.45%, S00–S37 …``: each kind of block, its range of relative errors."""
    from sdlens.analysis.diff import _block_order

    blocks: dict[str, list[TensorDiff]] = {}
    for t in sorted(ts, key=lambda t: _block_order(t.block)):
        blocks.setdefault(t.block, []).append(t)
    kinds: dict[str, list[tuple[str, float]]] = {}
    for b, group in blocks.items():
        kinds.setdefault(_block_kind(b), []).append((b, _rel(group)[0]))
    parts = []
    for items in kinds.values():
        names = [n for n, _ in items]
        errs = [e for _, e in items]
        span = names[0] if len(names) == 1 else f"{names[0]}–{names[-1]}"
        lo, hi = min(errs), max(errs)
        parts.append(f"{span} {_pct(lo)}" if _pct(lo) == _pct(hi) else f"{span} {_pct(lo)}–{_pct(hi)}")
    return ", ".join(parts)


def quant_lines(r: DiffResult) -> list[str]:
    """The quantisation verdict: which side is quantised to what, whether every difference is within the
    quantisation, and the relative error (overall, per kind of block, and what rounding alone gives).
    "Same model" is said only when nothing else changed."""
    qs = [t for t in quantised(r) if not t.identical]
    if not quantised(r):
        return []
    sides = sorted({t.quant_side for t in quantised(r)})
    side = sides[0] if len(sides) == 1 else "both"
    scheme = " and ".join(sorted({t.quantised for t in quantised(r)}))
    other = {"A": "B", "B": "A"}.get(side, "")
    if not qs:  # every quantised tensor equals its counterpart
        if side == "both":
            return []  # the plain "identical" verdict says it
        return [f"same model, dequantised: {other} holds {side}'s {scheme} values exactly"]
    within = [t for t in qs if t.within_quantisation]
    measured, expected = _rel(qs)
    err = f"relative error {_pct(measured)} (rounding to the grid alone: ~{_pct(expected)})"
    others_changed = any(t.changed and not t.quantised for t in r.tensors)
    n = plural(len(qs), "quantised tensor")
    if len(within) == len(qs) and side != "both" and measured < DEQUANTISED * expected and not others_changed:
        # far less error than rounding to the grid gives: the other file holds the grid's own values
        dtypes = sorted({t.dtype_b if side == "A" else t.dtype_a for t in qs})
        return [
            f"same model, dequantised: {other} holds {side}'s {scheme} values, stored as {', '.join(dtypes)} "
            f"({n}; relative error {_pct(measured)}, from that storage's rounding)"
        ]
    quantised_to = {"A": f"A is quantised to {scheme}", "B": f"B is quantised to {scheme}"}.get(
        side, f"both are quantised ({scheme})"
    )
    if len(within) == len(qs) and not others_changed:
        who = {"A": "A is B", "B": "B is A"}.get(side, "A and B are")
        what = f"{who} quantised to {scheme}" if side != "both" else f"A and B are both quantised ({scheme})"
        head = f"same model, quantised: {what} ({n}, every value within one quantisation step); {err}"
    elif len(within) == len(qs):
        head = f"{quantised_to}: all {n} within one quantisation step of the other file's; {err}"
    else:
        head = (
            f"{quantised_to}; {len(qs) - len(within)} of {n} differ by more than one quantisation step "
            f"(changed, not only quantised); {err}"
        )
    lines = [head]
    if len({t.block for t in qs}) > 1:
        lines.append(f"relative error per block: {_by_block(qs)}")
    return lines
