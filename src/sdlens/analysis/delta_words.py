"""What a delta means, in plain words: a headline and one line per component."""

from __future__ import annotations

import re
import statistics
from collections import Counter
from typing import TYPE_CHECKING

from sdlens.analysis.diff import component_label
from sdlens.arch.blocks import block_names

if TYPE_CHECKING:
    from sdlens.analysis.delta import DeltaResult, TensorDelta

_ORDER = ("denoiser", "clip_l", "openclip_h", "clip_g", "t5", "vae_encoder", "vae_decoder")
_TYPES = {
    "attn1": "attn1",
    "attn2": "attn2",
    "ff": "feed-forward",
    "proj": "proj_in/out",
    "attn": "attention",
}
_PRECISION_WORD = {
    "F16": "fp16",
    "BF16": "bf16",
    "F32": "fp32",
    "F8_E4M3": "fp8 (e4m3)",
    "F8_E5M2": "fp8 (e5m2)",
}
_COARSE = ("F8_E5M2", "F8_E4M3", "BF16", "F16", "F32", "F64")


def ranks_phrase(ranks: Counter) -> str:
    """ "rank 8", "rank ≈ 8" (most at 8), or "ranks 4–32"."""
    if not ranks:
        return "rank ?"
    (top, n), total = ranks.most_common(1)[0], sum(ranks.values())
    if len(ranks) == 1:
        return f"rank {top}"
    if n >= 0.8 * total:
        return f"rank ≈ {top}"
    return f"ranks {min(ranks)}–{max(ranks)}"


def _types(ts: list[TensorDelta]) -> str:
    names = Counter(t.layer_type for t in ts)
    return "/".join(_TYPES.get(n, n) for n, _ in sorted(names.items(), key=lambda kv: -kv[1]))


def _layer_no(block: str) -> int:
    m = re.search(r"\d+", block)
    return int(m.group()) if m else -1


def _where(hit: list[TensorDelta], every: list[TensorDelta], component: str, family: str) -> str:
    """Which blocks (denoiser) or layers (encoders) the ``hit`` tensors sit in, next to all the blocks that
    hold tensors of those layer types (``every``): "every block", "IN04–OUT11 (14 blocks)", "layer 3"."""
    blocks = {t.block for t in hit}
    possible = {t.block for t in every}
    unit = "block" if component == "denoiser" else "layer"
    if blocks == {component}:  # a component without blocks or layers (VAE)
        return ""
    if len(possible) > 1 and blocks == possible:
        return f"; every {unit}"
    order = block_names(family) if component == "denoiser" else []
    pos = {b: i for i, b in enumerate(order)}
    names = sorted(blocks, key=lambda b: (pos.get(b, len(pos)), _layer_no(b)))
    if len(names) <= 4:
        return "; " + ", ".join(names)
    return f"; {names[0]}–{names[-1]} ({len(names)} {unit}s)"


def _coarse_dtype(ts: list[TensorDelta]) -> str:
    from sdlens.io.quant import SCHEMES

    seen = {d for t in ts for d in (t.dtype_model, t.dtype_base)}
    schemes = sorted(d for d in seen if d in SCHEMES)
    if schemes:  # a quantised side: its rounding is the quantisation's
        return " / ".join(schemes)
    best = next((d for d in _COARSE if d in seen), "F32")
    return _PRECISION_WORD.get(best, best)


def _high_rank(high: list[TensorDelta]) -> str:
    """ "effective rank 66 of 128 at 90 % of ‖Δ‖²" (medians), or, where the large weights were sketched,
    "rank ≥ 40 of 640"."""
    measured = [t for t in high if t.effective_rank_90 is not None]
    sketched = [t for t in high if t.effective_rank_90 is None]
    out = []
    if measured:
        eff = statistics.median(t.effective_rank_90 or 0 for t in measured)
        size = statistics.median(t.size or 0 for t in measured)
        out.append(f"effective rank {eff:.0f} of {size:.0f} at 90 % of ‖Δ‖²")
    if sketched:
        low = min(t.rank or 0 for t in sketched)
        size = statistics.median(t.size or 0 for t in sketched)
        out.append(f"{'larger weights ' if measured else ''}rank ≥ {low} of {size:.0f}, sketched")
    return "; ".join(out)


def component_line(component: str, ts: list[TensorDelta], family: str) -> str:
    """One component's verdict from its tensors."""
    ts = [t for t in ts if t.kind != "non-finite"]  # said apart, after the components
    label = component_label(component, family)
    kinds = Counter(t.kind for t in ts)
    low = [t for t in ts if t.kind == "low-rank"]
    high = [t for t in ts if t.kind == "high-rank"]
    one_d = [t for t in ts if t.kind == "changed"]
    weights = [t for t in ts if t.size is not None]
    if kinds["unchanged"] == len(ts):
        return f"{label}: unchanged"
    if not (low or high or one_d):
        return f"{label}: differs only by {_coarse_dtype(ts)} rounding ({kinds['rounding']} of {len(ts)} tensors)"
    parts: list[str] = []
    if low and len(low) >= len(high):
        types = {t.layer_type for t in low}
        every = [t for t in weights if t.layer_type in types]
        ranks = Counter(t.rank for t in low)
        parts.append(
            f"LoRA-like: {ranks_phrase(ranks)} in {_types(low)} of "
            + _where(low, every, component, family).removeprefix("; ")
        )
        if high:
            parts.append(f"high-rank in {len(high)} more weights ({_types(high)})")
    elif high:
        types = {t.layer_type for t in high}
        every = [t for t in weights if t.layer_type in types]
        where = _where(high, every, component, family)
        what = (
            "all layer types" if types == {t.layer_type for t in weights} and len(types) > 2 else _types(high)
        )
        parts.append(
            f"full fine-tune: Δ is high-rank ({_high_rank(high)}) "
            f"in {len(high)} of {len(weights)} weights ({what}{where})"
        )
        if low:
            parts.append(f"low-rank in {len(low)} more ({ranks_phrase(Counter(t.rank for t in low))})")
    if one_d:
        parts.append(f"{len(one_d)} biases/norms changed")
    changed = len(low) + len(high) + len(one_d)
    rest = len(ts) - changed
    if rest and not one_d:
        parts.append(
            "everything else unchanged" if not kinds["rounding"] else "everything else within rounding"
        )
    elif not parts:
        parts.append(f"{changed} tensors changed")
    return f"{label}: " + ", ".join(parts)


def headline(result: DeltaResult) -> str:
    """The one-line answer: identical, rounding only, a base with a LoRA baked in, or a fine-tune."""
    finite = [t for t in result.tensors if t.kind != "non-finite"]
    kinds = Counter(t.kind for t in finite)
    if not result.tensors:
        return "no tensors in common"
    if len(finite) < len(result.tensors) and not (
        kinds["low-rank"] or kinds["high-rank"] or kinds["changed"]
    ):
        return "no change beyond rounding where the values are finite; some tensors hold NaN or Inf"
    if kinds["unchanged"] == len(finite):
        return "identical weights"
    if not (kinds["low-rank"] or kinds["high-rank"] or kinds["changed"]):
        return f"the same model: differs only by {_coarse_dtype(finite)} rounding"
    low = Counter(t.rank for t in result.tensors if t.kind == "low-rank")
    if kinds["low-rank"] and kinds["low-rank"] >= kinds["high-rank"] and not kinds["changed"]:
        extra = f", and {kinds['high-rank']} weights changed at high rank" if kinds["high-rank"] else ""
        return f"the base with a LoRA baked in ({ranks_phrase(low)}){extra}"
    if kinds["high-rank"]:
        return "a fine-tune of the base: high-rank changes"
    return "changed: low-rank weights and changed biases/norms (a LoRA with bias training, or a partial fine-tune)"


def verdict(result: DeltaResult) -> list[str]:
    """Headline, then one line per component (denoiser first), then what only one file holds."""
    by_comp: dict[str, list[TensorDelta]] = {}
    for t in result.tensors:
        by_comp.setdefault(t.component, []).append(t)
    rank = {c: i for i, c in enumerate(_ORDER)}
    lines = [headline(result)]
    for comp in sorted(by_comp, key=lambda c: (rank.get(c, len(rank)), c)):
        lines.append(component_line(comp, by_comp[comp], result.family))
    bad = [t.key for t in result.tensors if t.kind == "non-finite"]
    if bad:
        lines.append(f"{len(bad)} tensors hold NaN or Inf values and were not compared (e.g. {bad[0]})")
    if result.only_model:
        lines.append(f"{len(result.only_model)} tensors only in the model (e.g. {result.only_model[0]})")
    if result.only_base:
        lines.append(f"{len(result.only_base)} tensors only in the base (e.g. {result.only_base[0]})")
    if result.mismatched:
        lines.append(f"{len(result.mismatched)} tensors differ in shape (e.g. {result.mismatched[0]['key']})")
    return lines
