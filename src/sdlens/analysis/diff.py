"""``diff(a, b)``: what changed between two checkpoints, per tensor, component, merge block and layer type.

Keys are first mapped to one canonical naming (``sdlens.arch.canonical``), so LDM / sgm / diffusers / NAI
layouts of the same model compare tensor to tensor; two LoRA files are aligned by their target modules
(``sdlens.analysis.lora.lora_index``), and a LoRA against a checkpoint is refused with what to do instead.
A file holding one part of a model (a VAE, text encoders, a bare denoiser) is compared with that part of the
other file. Copies at different float precisions are told apart from real changes by ``precision``. Tensor
pairs are streamed in A's file order, one pair at a time, with reused float32 buffers: memory is a small
multiple of the largest tensor, whatever the model size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sdlens.analysis.diff_quant import check_pair, quant_lines
from sdlens.analysis.spectrum import ROW, sumsq
from sdlens.arch import registry as R
from sdlens.arch.blocks import block_of
from sdlens.arch.canonical import CanonRef, canonical_index
from sdlens.arch.layers import layer_type
from sdlens.choices import TimeEmbed, check_choice
from sdlens.errors import SdlensError
from sdlens.io.base import Checkpoint
from sdlens.io.dtypes import DTYPES
from sdlens.io.open import open_checkpoint
from sdlens.words import plural


@dataclass
class TensorDiff:
    key: str  # canonical name: "<component>/<key>"
    component: str
    block: str
    layer_type: str
    shape: list[int]
    dtype_a: str
    dtype_b: str
    numel: int
    identical: bool  # bit-identical (same dtype, same bytes)
    # different dtypes, every pair of values consistent with one common source (``precision``)
    same_within_precision: bool
    l2: float = 0.0
    l1: float = 0.0
    l0: int = 0
    cos: float = 1.0
    rel: float = 0.0  # ||a-b|| / ||a||
    max_abs: float = 0.0
    # a quantised side (``diff_quant``): its scheme, which side, whether every |Δ| is within one step
    quantised: str = ""
    quant_side: str = ""
    within_quantisation: bool = False
    quant_noise: float = 0.0  # Σ step² / 12: the squared error rounding to the grid alone gives

    @property
    def rms(self) -> float:
        return self.l2 / math.sqrt(self.numel) if self.numel else 0.0

    @property
    def changed(self) -> bool:
        return not (self.identical or self.same_within_precision or self.within_quantisation)

    @property
    def same_at_lower_precision(self) -> bool:  # the name before issue 14
        return self.same_within_precision

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rms"] = self.rms
        return d


@dataclass
class GroupDiff:
    """Aggregate of tensors: l2 = sqrt(sum ||Δ||²) (the notebook's v2), rms = l2 / sqrt(elements)."""

    tensors: int = 0  # = changed + identical + within_precision + within_quantisation
    changed: int = 0
    identical: int = 0
    within_precision: int = 0
    within_quantisation: int = 0
    numel: int = 0
    sumsq: float = 0.0
    max_abs: float = 0.0

    def add(self, t: TensorDiff) -> None:
        self.tensors += 1
        self.changed += t.changed
        self.identical += t.identical
        self.within_precision += t.same_within_precision
        self.within_quantisation += t.within_quantisation
        self.numel += t.numel
        self.sumsq += t.l2 * t.l2
        self.max_abs = max(self.max_abs, t.max_abs)

    @property
    def l2(self) -> float:
        return math.sqrt(self.sumsq)

    @property
    def rms(self) -> float:
        return math.sqrt(self.sumsq / self.numel) if self.numel else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "tensors": self.tensors,
            "changed": self.changed,
            "identical": self.identical,
            "same_within_precision": self.within_precision,
            "within_quantisation": self.within_quantisation,
            "numel": self.numel,
            "l2": self.l2,
            "rms": self.rms,
            "max_abs": self.max_abs,
        }


@dataclass
class DiffResult:
    a: str
    b: str
    family_a: str
    family_b: str
    verdict: list[str]
    only_a: list[str]
    only_b: list[str]
    shape_mismatch: list[dict[str, Any]]
    dtype_pairs: dict[str, int]  # "F32->F16" -> tensors
    tensors: list[TensorDiff]
    by_component: dict[str, GroupDiff]
    by_block: dict[str, dict[str, GroupDiff]]  # component -> block -> group
    by_type: dict[str, GroupDiff]
    time_embed: str = "IN00"
    options: dict[str, Any] = field(default_factory=dict)
    kind: str = "checkpoint"  # or "lora": two LoRA files aligned by target module
    alpha_diff: list[dict[str, Any]] = field(default_factory=list)  # LoRA modules whose alpha differs

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "family_a": self.family_a,
            "family_b": self.family_b,
            "verdict": self.verdict,
            "only_a": self.only_a,
            "only_b": self.only_b,
            "shape_mismatch": self.shape_mismatch,
            "dtype_pairs": self.dtype_pairs,
            "by_component": {k: v.to_dict() for k, v in self.by_component.items()},
            "by_block": {
                c: {b: g.to_dict() for b, g in blocks.items()} for c, blocks in self.by_block.items()
            },
            "by_type": {k: v.to_dict() for k, v in self.by_type.items()},
            "tensors": [t.to_dict() for t in self.tensors],
            "time_embed": self.time_embed,
            "kind": self.kind,
            "alpha_diff": self.alpha_diff,
        }


class _Buffers:
    """Reused float32 work buffers (grown on demand), so the hot loop does not allocate per tensor."""

    def __init__(self) -> None:
        self.size = 0
        self.a = self.b = self.d = None

    def get(self, n: int):
        import torch

        if n > self.size:
            self.size = n
            self.a, self.b, self.d = (torch.empty(n, dtype=torch.float32) for _ in range(3))
        return self.a[:n], self.b[:n], self.d[:n]


def _view(ckpt: Checkpoint, ref: CanonRef):
    t = ckpt.read(ref.key, copy=False)
    if ref.rows is not None:
        t = t[ref.rows[0] : ref.rows[1]]
    if ref.transpose:
        t = t.t()
    return t.reshape(-1)


def _rows(x):
    m = x.numel() // ROW
    return x[: m * ROW].view(m, ROW), x[m * ROW :]


_sumsq = sumsq


def _sum(x) -> float:
    body, tail = _rows(x)
    s = float(body.sum(1).double().sum()) if body.numel() else 0.0
    return s + float(tail.double().sum())


def compare_tensors(a, b, buf: _Buffers | None = None) -> dict[str, Any]:
    """All metrics for one flat pair, in float32 work buffers (reused) with float64 accumulation across rows.

    Passes over memory are kept few: the cosine comes from the three norms,
    cos = (‖a‖² + ‖b‖² − ‖a−b‖²) / (2‖a‖‖b‖), each accurate to ~1e-8 relative."""
    import torch

    n = a.numel()
    buf = buf or _Buffers()
    fa, fb, d = buf.get(n)
    fa.copy_(a)
    fb.copy_(b)
    torch.sub(fa, fb, out=d)
    l2sq = _sumsq(d) if n else 0.0
    if l2sq == 0.0:
        return {"l2": 0.0, "l1": 0.0, "l0": 0, "cos": 1.0, "rel": 0.0, "max_abs": 0.0}
    na2, nb2 = _sumsq(fa), _sumsq(fb)
    absd = torch.abs(d, out=fb)
    return _metrics(na2, nb2, l2sq, _sum(absd), int(torch.count_nonzero(absd)), float(absd.max()))


def _metrics(
    na2: float, nb2: float, l2sq: float, l1: float, l0: int, max_abs: float, dot: float | None = None
) -> dict[str, Any]:
    """Per-tensor metrics from the sums; cos = ⟨a,b⟩ / (‖a‖‖b‖), the dot product taken as
    (‖a‖² + ‖b‖² − ‖a−b‖²) / 2 when not summed directly."""
    if l2sq == 0.0 and l0 == 0:
        return {"l2": 0.0, "l1": 0.0, "l0": 0, "cos": 1.0, "rel": 0.0, "max_abs": 0.0}
    na, nb, l2 = math.sqrt(na2), math.sqrt(nb2), math.sqrt(l2sq)
    dot = (na2 + nb2 - l2sq) / 2 if dot is None else dot
    return {
        "l2": l2,
        "l1": l1,
        "l0": l0,
        "cos": max(-1.0, min(1.0, dot / (na * nb))) if na and nb else (1.0 if na == nb else 0.0),
        "rel": l2 / na if na else math.inf,
        "max_abs": max_abs,
    }


def diff(
    path_a: str | Path,
    path_b: str | Path,
    *,
    time_embed: TimeEmbed = "IN00",
    progress: Callable[[int], None] | None = None,
    variant: str | None = None,
) -> DiffResult:
    """Compare two checkpoints (any formats / layouts). ``progress`` receives bytes of A processed; ``variant``
    picks diffusers folders' variant files (``fp16`` ...)."""
    check_choice(time_embed, "time_embed", TimeEmbed)
    with open_checkpoint(path_a, variant) as ca, open_checkpoint(path_b, variant) as cb:
        kind, (idx_a, fam_a, alpha_a), (idx_b, fam_b, alpha_b) = _indexes(ca, cb)
        common = [k for k in idx_a if k in idx_b]
        # A's file order: each file is walked once, pair by pair
        order = {k: i for i, k in enumerate(ca.in_file_order())}
        common.sort(key=lambda k: order.get(idx_a[k].key, 0))
        family = fam_a if fam_a != "unknown" else fam_b
        buf = _Buffers()
        tensors: list[TensorDiff] = []
        mismatch: list[dict[str, Any]] = []
        dtype_pairs: dict[str, int] = {}
        pending = 0
        for name in common:
            ra, rb = idx_a[name], idx_b[name]
            ia, ib = ca.tensors[ra.key], cb.tensors[rb.key]
            if math.prod(ra.shape) != math.prod(rb.shape) or (
                ra.shape != rb.shape and len(ra.shape) == len(rb.shape)
            ):
                mismatch.append({"key": name, "a": list(ra.shape), "b": list(rb.shape)})
                continue
            component = name.split("/", 1)[0]
            if ia.dtype != ib.dtype:
                pair = f"{ia.dtype}->{ib.dtype}"
                dtype_pairs[pair] = dtype_pairs.get(pair, 0) + 1
            identical, lower_same, metrics, qc = _compare_pair(ca, cb, ra, rb, buf)
            td = TensorDiff(
                key=name,
                component=component,
                block=block_of(name, family, time_embed=time_embed),
                layer_type=layer_type(name.split("/", 1)[1]),
                shape=list(ra.shape),
                dtype_a=ia.dtype,
                dtype_b=ib.dtype,
                numel=math.prod(ra.shape),
                identical=identical,
                same_within_precision=lower_same,
                **metrics,
            )
            if qc is not None:
                td.quantised, td.quant_side, td.quant_noise = qc.scheme, qc.side, qc.noise
                td.within_quantisation = qc.within and not identical
            tensors.append(td)
            if progress:
                pending += ia.nbytes
                if pending >= 1 << 24:  # a few hundred updates for a big model, not one per tensor
                    progress(pending)
                    pending = 0
        if progress and pending:
            progress(pending)
        result = DiffResult(
            a=str(path_a),
            b=str(path_b),
            family_a=fam_a,
            family_b=fam_b,
            verdict=[],
            only_a=sorted(set(idx_a) - set(idx_b)),
            only_b=sorted(set(idx_b) - set(idx_a)),
            shape_mismatch=mismatch,
            dtype_pairs=dtype_pairs,
            tensors=tensors,
            by_component={},
            by_block={},
            by_type={},
            time_embed=time_embed,
            kind=kind,
            alpha_diff=_alpha_diff(alpha_a, alpha_b),
        )
    _aggregate(result)
    result.verdict = verdict(result)
    return result


_Index = tuple[dict[str, CanonRef], str, dict[str, float]]


def _indexes(ca: Checkpoint, cb: Checkpoint) -> tuple[str, _Index, _Index]:
    """("checkpoint" | "lora", A's and B's (canonical index, family, LoRA alphas)); a LoRA against a
    checkpoint is refused in one line that says what A / B is and what to do instead."""
    from sdlens.analysis.lora import analyse_lora, is_lora, lora_family, lora_index

    lora = [is_lora(c.tensors) for c in (ca, cb)]
    if all(lora):  # a file that does not tell its family is read as the other's
        fa, fb = lora_family(ca), lora_family(cb)
        fa, fb = (fa if fa != "unknown" else fb), (fb if fb != "unknown" else fa)
        return "lora", lora_index(ca, fa), lora_index(cb, fb)
    if any(lora):
        side, ck = ("A", ca) if lora[0] else ("B", cb)
        info = analyse_lora(ck.tensors, ck.metadata, lambda k: float(ck.read_numpy(k).reshape(-1)[0]))
        fam = R.FAMILY_BY_ID.get(info.arch)
        ranks = "/".join(str(r) for r in info.ranks) or "?"
        what = f"{info.network if info.network != 'LoRA' else ''} {info.convention}".strip()
        raise SdlensError(
            None,
            f"{side} ({Path(ck.path).name}) is a LoRA ({what}, "
            f"{fam.name if fam else info.arch}, rank {ranks}) — compare it with another LoRA, "
            "or apply it first",
        )
    out = []
    for c in (ca, cb):
        idx, fam = canonical_index(c.tensors, c.configs)
        out.append((idx, fam, {}))
    return "checkpoint", out[0], out[1]


def _alpha_diff(a: dict[str, float], b: dict[str, float]) -> list[dict[str, Any]]:
    return [{"module": m, "a": a[m], "b": b[m]} for m in a if m in b and a[m] != b[m]]


def _raw_view(ckpt: Checkpoint, ref: CanonRef):
    """The stored bytes of a canonical tensor as a numpy view (row slices included), or None when only the
    torch path can produce it (transposed refs, strided .ckpt views)."""
    if ref.transpose:
        return None
    raw = ckpt.raw_bytes(ref.key)
    if raw is None or ref.rows is None:
        return raw
    info = ckpt.tensors[ref.key]
    row = info.nbytes // info.shape[0]
    return raw[ref.rows[0] * row : ref.rows[1] * row]


raw_view = _raw_view  # the public name (delta)


def _compare_pair(ca: Checkpoint, cb: Checkpoint, ra: CanonRef, rb: CanonRef, buf: _Buffers):
    """(bit-identical, same at the lower precision, metrics, quantisation test) of one aligned tensor pair.

    Same-dtype pairs of fp16 / bf16 / fp32 (nearly every pair) take one fused pass over the mapped bytes
    (``kernels``); other pairs, and tensors with NaN / Inf, take the float32 torch path."""
    from sdlens.analysis.kernels import KERNEL_DTYPES, bits_equal, mixed_pair_stats, pair_stats

    da, db = ca.tensors[ra.key].dtype, cb.tensors[rb.key].dtype
    if da == db or da in KERNEL_DTYPES and db in KERNEL_DTYPES:
        xa, xb = _raw_view(ca, ra), _raw_view(cb, rb)
        if xa is not None and xb is not None:
            if da == db and bits_equal(xa, xb):
                return True, False, {}, None
            if da == db and da in KERNEL_DTYPES:
                s = pair_stats(xa, xb, da)
                if s is not None:
                    return False, False, _metrics(s.saa, s.sbb, s.sdd, s.l1, s.l0, s.max_abs, s.sab), None
            elif da != db and (s := mixed_pair_stats(xa, da, xb, db)) is not None:  # small: no torch start-up
                from sdlens.analysis.kernels import stored_bits
                from sdlens.analysis.precision import all_consistent

                within = s.l0 == 0 or all_consistent(stored_bits(xa, da), da, stored_bits(xb, db), db)
                return False, within, _metrics(s.saa, s.sbb, s.sdd, s.l1, s.l0, s.max_abs, s.sab), None
    from sdlens.analysis.precision import same_within_precision

    a, b = _view(ca, ra), _view(cb, rb)
    if da == db and _bits_equal(a, b):
        return True, False, {}, check_pair(ca, cb, ra, rb, a, b, identical=True)
    qc = check_pair(ca, cb, ra, rb, a, b)
    metrics = compare_tensors(a, b, buf)
    within = False
    if (
        qc is None and da != db
    ):  # equal values are the same weights; else every pair's rounding intervals must meet
        within = (
            metrics["l0"] == 0
            and metrics["l2"] == 0.0
            or (DTYPES[da].is_float and DTYPES[db].is_float and same_within_precision(a, da, b, db))
        )
    return False, within, metrics, qc


def _bits_equal(a, b) -> bool:
    import torch

    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    size = a.element_size()
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[size]
    if not (a.is_contiguous() and b.is_contiguous()):
        a, b = a.contiguous(), b.contiguous()
    return bool(torch.equal(a.view(ints), b.view(ints)))


_BLOCK_RANK = {"BASE": 0, "IN": 1, "D": 2, "J": 2, "B": 2, "M": 3, "S": 4, "OUT": 5, "ALL": 6}


def _block_order(name: str) -> tuple[int, int]:
    head = name.rstrip("0123456789")
    return _BLOCK_RANK.get(head, 9), int(name[len(head) :] or 0)


def _aggregate(r: DiffResult) -> None:
    for t in r.tensors:
        r.by_component.setdefault(t.component, GroupDiff()).add(t)
        r.by_block.setdefault(t.component, {}).setdefault(t.block, GroupDiff()).add(t)
        r.by_type.setdefault(t.layer_type, GroupDiff()).add(t)
    r.by_block = {
        c: dict(sorted(g.items(), key=lambda kv: _block_order(kv[0]))) for c, g in r.by_block.items()
    }


# --------------------------------------------------------------------------- verdict in plain words

_TYPE_WORDS = {
    "attn1": "self-attention (attn1)",
    "attn2": "cross-attention (attn2)",
    "ff": "feed-forward",
    "norm": "norms",
    "proj": "projections",
    "resnet/conv": "resnet/conv",
    "embedding": "embeddings",
    "attn": "attention",
    "other": "other",
}


def _label(component: str, family: str) -> str:
    fam = R.FAMILY_BY_ID.get(family)
    if component == "denoiser":
        return fam.denoiser_label if fam else "denoiser"
    return R.COMPONENT_LABELS.get(component, component)


component_label = _label  # the public name (render's tables and figures)


def _span(names: list[str]) -> str:
    return ", ".join(names) if len(names) <= 10 else f"{names[0]} … {names[-1]} ({len(names)} blocks)"


def _parts(r: DiffResult, side: str) -> set[str]:
    """The model parts (``registry.COMPONENT_PARTS``) one side holds."""
    keys = [t.key for t in r.tensors] + (r.only_a if side == "A" else r.only_b)
    return {
        R.COMPONENT_PARTS[c]
        for c in {k.split("/", 1)[0].split("@")[0] for k in keys}
        if c in R.COMPONENT_PARTS
    }


def part_file(r: DiffResult) -> str | None:
    """ "A" or "B" when that side is one part of a model (a VAE, text encoders, a bare denoiser) and the other
    side holds that part and more: only that part is compared."""
    if r.kind != "checkpoint":
        return None
    pa, pb = _parts(r, "A"), _parts(r, "B")
    if len(pa) == 1 and pa < pb:
        return "A"
    if len(pb) == 1 and pb < pa:
        return "B"
    return None


def _precisions(r: DiffResult) -> str:
    pairs = sorted({f"{t.dtype_a} vs {t.dtype_b}" for t in r.tensors if t.same_within_precision})
    return ", ".join(pairs[:3]) + (" …" if len(pairs) > 3 else "")


def verdict(r: DiffResult) -> list[str]:
    """Plain sentences, most important first."""
    out: list[str] = []
    fam = r.family_a if r.family_a != "unknown" else r.family_b
    name = lambda f: R.FAMILY_BY_ID[f].name if f in R.FAMILY_BY_ID else f  # noqa: E731
    if "unknown" not in (r.family_a, r.family_b) and r.family_a != r.family_b:
        out.append(
            f"different architectures: A is {name(r.family_a)}, B is {name(r.family_b)} — "
            f"comparing the {len(r.tensors)} tensors they share"
        )
    if r.kind == "lora":
        out.append(
            f"two LoRA files, compared target module by target module ({len(r.tensors)} tensors shared)"
        )
    changed = [t for t in r.tensors if t.changed]
    within = [t for t in r.tensors if t.same_within_precision]
    alpha = _alpha_lines(r)
    quant = quant_lines(r)
    if not changed and not r.only_a and not r.only_b and not r.shape_mismatch and not alpha:
        if quant:
            out += quant
        elif within:
            out.append(
                f"same weights at different precisions ({_precisions(r)}: every pair of values is "
                "consistent with one common source)"
            )
        else:
            out.append("identical: every tensor bit-identical")
        return out
    out += quant
    part = part_file(r)
    if r.tensors and not changed and part is None:
        out.append("every shared tensor is the same" + (" (some at different precisions)" if within else ""))
    lines = [_group_line(r, label, comps, fam, part) for label, comps in _groups(r, fam, part)]
    if part is not None:
        other = "B" if part == "A" else "A"
        shared = {t.component for t in r.tensors}
        rest = r.only_b if part == "A" else r.only_a
        rank = R.component_rank
        others = sorted({k.split("/", 1)[0] for k in rest} - shared, key=rank)
        skipped = list(dict.fromkeys(_part_label(c, fam) for c in others))
        if lines and skipped:
            lines[-1] += f" ({other}'s other components not compared: {', '.join(skipped)})"
        out += lines
        # the part file's own extra keys all count; of the other side's, only those of the compared part
        mine, theirs = (r.only_a, r.only_b) if part == "A" else (r.only_b, r.only_a)
        theirs = [k for k in theirs if k.split("/", 1)[0] in shared]
        out += _presence(mine, part, fam, shared) + _presence(theirs, other, fam, shared)
    else:
        out += lines
        present = {t.component for t in r.tensors}
        out += _presence(r.only_a, "A", fam, present) + _presence(r.only_b, "B", fam, present)
    out += alpha
    if r.shape_mismatch:
        out.append(
            f"{plural(len(r.shape_mismatch), 'tensor')} differ{'s' if len(r.shape_mismatch) == 1 else ''} in shape (e.g. {r.shape_mismatch[0]['key']}: "
            f"{r.shape_mismatch[0]['a']} vs {r.shape_mismatch[0]['b']})"
        )
    return out


def _part_label(component: str, fam: str) -> str:
    return "VAE" if component in ("vae_encoder", "vae_decoder") else _label(component, fam)


def _groups(r: DiffResult, fam: str, part: str | None) -> list[tuple[str, list[str]]]:
    """(label, components) of each verdict line; a part file's VAE encoder + decoder make one line."""
    comps = sorted(r.by_component, key=R.component_rank)
    if part is not None and {"vae_encoder", "vae_decoder"} <= set(comps):
        out = [(_label(c, fam), [c]) for c in comps if c not in ("vae_encoder", "vae_decoder")]
        at = min(comps.index("vae_encoder"), comps.index("vae_decoder"))
        return out[:at] + [("VAE", ["vae_encoder", "vae_decoder"])] + out[at:]
    return [(_label(c, fam), [c]) for c in comps]


def _group_line(r: DiffResult, label: str, comps: list[str], fam: str, part: str | None) -> str:
    g = GroupDiff()
    for t in r.tensors:
        if t.component in comps:
            g.add(t)
    to = f" to {'B' if part == 'A' else 'A'}'s {label}" if part else ""
    vs = f" vs {'B' if part == 'A' else 'A'}'s {label}" if part else ""
    cts = [t for t in r.tensors if t.changed and t.component in comps]
    if not cts:
        if g.identical == g.tensors:
            return f"{label}: bit-identical{to}"
        if g.within_quantisation:
            schemes = ", ".join(
                sorted({t.quantised for t in r.tensors if t.component in comps and t.quantised})
            )
            return f"{label}: same weights{' as ' + to[4:] if part else ''}, quantised ({schemes})"
        return f"{label}: same weights{' as ' + to[4:] if part else ''} at different precisions"
    types = sorted({t.layer_type for t in cts})
    all_types = {t.layer_type for t in r.tensors if t.component in comps}
    text = f"{label}: changed{vs} — {len(cts)} of {g.tensors} tensors (RMS of Δ {g.rms:.3g})"
    if g.within_precision:
        text += f"; {g.within_precision} more the same at different precisions"
    if g.within_quantisation:
        text += f"; {g.within_quantisation} more within quantisation"
    if len(types) < len(all_types):
        text += "; only " + ", ".join(_TYPE_WORDS.get(t, t) for t in types)
    blocks = r.by_block.get(comps[0], {}) if len(comps) == 1 else {}
    if len(blocks) > 1:
        ch = [b for b, bg in blocks.items() if bg.changed]
        same = [b for b, bg in blocks.items() if not bg.changed]
        text += f"; blocks changed: {_span(ch)}"
        if same:
            text += f"; unchanged: {_span(same)}"
    return text


def _alpha_lines(r: DiffResult) -> list[str]:
    if not r.alpha_diff:
        return []
    d = r.alpha_diff[0]
    n = len(r.alpha_diff)
    return [
        f"alpha differs in {n} module{'s' if n != 1 else ''} (e.g. {d['module']}: A {d['a']:g}, B {d['b']:g})"
        " — the same factors at a different strength"
    ]


def _presence(keys: list[str], side: str, fam: str, shared: set[str]) -> list[str]:
    """Sentences for keys found on one side only, per component."""
    from sdlens.analysis.notes import note

    other = "B" if side == "A" else "A"
    by: dict[str, list[str]] = {}
    for k in keys:
        c, _, rest = k.partition("/")
        by.setdefault(c, []).append(rest)
    if {"vae_encoder", "vae_decoder"} <= by.keys() and not {"vae_encoder", "vae_decoder"} & shared:
        by["VAE"] = by.pop("vae_encoder") + by.pop("vae_decoder")  # say "no VAE", not two half-sentences
    out = []
    for c, rests in by.items():
        label, n = _label(c, fam), len(rests)
        tensors = f"{n} tensor{'s' if n != 1 else ''}"
        if c == "ema":
            out.append(f"EMA {'removed' if side == 'A' else 'added'} ({tensors} only in {side})")
        elif c not in shared:
            out.append(f"no {label} in {other} ({tensors} only in {side})")
        else:
            out.append(note(f"{label}: only in {side}", rests, "tensor"))
    return out
