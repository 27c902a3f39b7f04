"""``diff(a, b)``: what changed between two checkpoints, per tensor, component, merge block and layer type.

Keys are first mapped to one canonical naming (``sdlens.arch.canonical``), so LDM / sgm / diffusers / NAI
layouts of the same model compare tensor to tensor. Tensor pairs are streamed in A's file order, one pair at a
time, with reused float32 buffers: memory is a small multiple of the largest tensor, whatever the model size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sdlens.arch import registry as R
from sdlens.arch.blocks import block_of
from sdlens.arch.canonical import CanonRef, canonical_index
from sdlens.arch.layers import layer_type
from sdlens.io.base import Checkpoint
from sdlens.io.dtypes import DTYPES
from sdlens.io.open import open_checkpoint
from sdlens.words import plural

# mantissa bits: the lower-precision side of a pair is the one with fewer
_MANTISSA = {"F64": 52, "F32": 23, "BF16": 7, "F16": 10, "F8_E4M3": 3, "F8_E5M2": 2}


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
    same_at_lower_precision: bool  # the higher-precision side rounds exactly to the lower one
    l2: float = 0.0
    l1: float = 0.0
    l0: int = 0
    cos: float = 1.0
    rel: float = 0.0  # ||a-b|| / ||a||
    max_abs: float = 0.0

    @property
    def rms(self) -> float:
        return self.l2 / math.sqrt(self.numel) if self.numel else 0.0

    @property
    def changed(self) -> bool:
        return not (self.identical or self.same_at_lower_precision)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rms"] = self.rms
        return d


@dataclass
class GroupDiff:
    """Aggregate of tensors: l2 = sqrt(sum ||Δ||²) (the notebook's v2), rms = l2 / sqrt(elements)."""

    tensors: int = 0
    changed: int = 0
    identical: int = 0
    numel: int = 0
    sumsq: float = 0.0
    max_abs: float = 0.0

    def add(self, t: TensorDiff) -> None:
        self.tensors += 1
        self.changed += t.changed
        self.identical += t.identical
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
        return {"tensors": self.tensors, "changed": self.changed, "identical": self.identical, "numel": self.numel,
                "l2": self.l2, "rms": self.rms, "max_abs": self.max_abs}


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a, "b": self.b, "family_a": self.family_a, "family_b": self.family_b,
            "verdict": self.verdict, "only_a": self.only_a, "only_b": self.only_b,
            "shape_mismatch": self.shape_mismatch, "dtype_pairs": self.dtype_pairs,
            "by_component": {k: v.to_dict() for k, v in self.by_component.items()},
            "by_block": {c: {b: g.to_dict() for b, g in blocks.items()} for c, blocks in self.by_block.items()},
            "by_type": {k: v.to_dict() for k, v in self.by_type.items()},
            "tensors": [t.to_dict() for t in self.tensors],
            "time_embed": self.time_embed,
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


def _lower(da: str, db: str) -> str:
    return da if _MANTISSA.get(da, 99) <= _MANTISSA.get(db, 99) else db


_ROW = 1 << 14  # float32 partial sums over rows of this length, then float64 across rows: exact to ~1e-8


def _rows(x):
    m = x.numel() // _ROW
    return x[: m * _ROW].view(m, _ROW), x[m * _ROW :]


def _sumsq(x) -> float:
    import torch

    body, tail = _rows(x)
    s = torch.linalg.vector_norm(body, dim=1).double().pow(2).sum() if body.numel() else 0.0
    return float(s) + float(tail.double().pow(2).sum())


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
    time_embed: str = "IN00",
    progress: Callable[[int], None] | None = None,
) -> DiffResult:
    """Compare two checkpoints (any formats / layouts). ``progress`` receives bytes of A processed."""
    with open_checkpoint(path_a) as ca, open_checkpoint(path_b) as cb:
        idx_a, fam_a = canonical_index(ca.tensors, getattr(ca, "configs", None))
        idx_b, fam_b = canonical_index(cb.tensors, getattr(cb, "configs", None))
        common = [k for k in idx_a if k in idx_b]
        # A's file order: each file is walked once, pair by pair
        order = {k: i for i, k in enumerate(ca.in_file_order())}
        common.sort(key=lambda k: order.get(idx_a[k].key, 0))
        family = fam_a if fam_a != "unknown" else fam_b
        buf = _Buffers()
        tensors: list[TensorDiff] = []
        mismatch: list[dict[str, Any]] = []
        dtype_pairs: dict[str, int] = {}
        for name in common:
            ra, rb = idx_a[name], idx_b[name]
            ia, ib = ca.tensors[ra.key], cb.tensors[rb.key]
            if math.prod(ra.shape) != math.prod(rb.shape) or (ra.shape != rb.shape and len(ra.shape) == len(rb.shape)):
                mismatch.append({"key": name, "a": list(ra.shape), "b": list(rb.shape)})
                continue
            component = name.split("/", 1)[0]
            if ia.dtype != ib.dtype:
                pair = f"{ia.dtype}->{ib.dtype}"
                dtype_pairs[pair] = dtype_pairs.get(pair, 0) + 1
            identical, lower_same, metrics = _compare_pair(ca, cb, ra, rb, buf)
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
                same_at_lower_precision=lower_same,
                **metrics,
            )
            tensors.append(td)
            if progress:
                progress(ia.nbytes)
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
        )
    _aggregate(result)
    result.verdict = verdict(result)
    return result


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


def _compare_pair(ca: Checkpoint, cb: Checkpoint, ra: CanonRef, rb: CanonRef, buf: _Buffers):
    """(bit-identical, same at the lower precision, metrics) of one aligned tensor pair.

    Same-dtype pairs of fp16 / bf16 / fp32 (nearly every pair) take one fused pass over the mapped bytes
    (``kernels``); other pairs, and tensors with NaN / Inf, take the float32 torch path."""
    from sdlens.analysis.kernels import KERNEL_DTYPES, bits_equal, pair_stats

    da, db = ca.tensors[ra.key].dtype, cb.tensors[rb.key].dtype
    if da == db:
        xa, xb = _raw_view(ca, ra), _raw_view(cb, rb)
        if xa is not None and xb is not None:
            if bits_equal(xa, xb):
                return True, False, {}
            if da in KERNEL_DTYPES:
                s = pair_stats(xa, xb, da)
                if s is not None:
                    return False, False, _metrics(s.saa, s.sbb, s.sdd, s.l1, s.l0, s.max_abs, s.sab)
    import torch

    a, b = _view(ca, ra), _view(cb, rb)
    if da == db and _bits_equal(a, b):
        return True, False, {}
    lower_same = False
    if da != db and DTYPES[da].is_float and DTYPES[db].is_float:
        hi, lo = (b, a) if _lower(da, db) == da else (a, b)
        lower_same = bool(torch.equal(hi.to(lo.dtype), lo))
    return False, lower_same, compare_tensors(a, b, buf)


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
    r.by_block = {c: dict(sorted(g.items(), key=lambda kv: _block_order(kv[0]))) for c, g in r.by_block.items()}


# --------------------------------------------------------------------------- verdict in plain words

_COMP_ORDER = ["denoiser", "controlnet", "clip_l", "openclip_h", "clip_g", "t5", "vae_encoder", "vae_decoder", "ema",
               "schedule", "markers", "other"]
_TYPE_WORDS = {"attn1": "self-attention (attn1)", "attn2": "cross-attention (attn2)", "ff": "feed-forward",
               "norm": "norms", "proj": "projections", "resnet/conv": "resnet/conv", "embedding": "embeddings",
               "attn": "attention", "other": "other"}


def _label(component: str, family: str) -> str:
    fam = R.FAMILY_BY_ID.get(family)
    if component == "denoiser":
        return fam.denoiser_label if fam else "denoiser"
    return R.COMPONENT_LABELS.get(component, component)


def _span(names: list[str]) -> str:
    return ", ".join(names) if len(names) <= 10 else f"{names[0]} … {names[-1]} ({len(names)} blocks)"


def verdict(r: DiffResult) -> list[str]:
    """Plain sentences, most important first."""
    out: list[str] = []
    fam = r.family_a if r.family_a != "unknown" else r.family_b
    name = lambda f: R.FAMILY_BY_ID[f].name if f in R.FAMILY_BY_ID else f  # noqa: E731
    if r.family_a != r.family_b:
        out.append(f"different architectures: A is {name(r.family_a)}, B is {name(r.family_b)} — "
                   f"comparing the {len(r.tensors)} tensors they share")
    changed = [t for t in r.tensors if t.changed]
    lower = [t for t in r.tensors if t.same_at_lower_precision]
    if not changed and not r.only_a and not r.only_b and not r.shape_mismatch:
        if lower:
            pairs = ", ".join(sorted(r.dtype_pairs))
            out.append(f"same weights at another precision ({pairs}: every value rounds exactly)")
        else:
            out.append("identical: every tensor bit-identical")
        return out
    if r.tensors and not changed:
        out.append("every shared tensor is the same" + (" (some at another precision)" if lower else ""))
    comps = sorted(r.by_component, key=lambda c: _COMP_ORDER.index(c) if c in _COMP_ORDER else 99)
    for c in comps:
        g = r.by_component[c]
        label = _label(c, fam)
        cts = [t for t in changed if t.component == c]
        if not cts:
            how = "bit-identical" if g.identical == g.tensors else "same weights (other precision)"
            out.append(f"{label}: {how}")
            continue
        types = sorted({t.layer_type for t in cts})
        all_types = {t.layer_type for t in r.tensors if t.component == c}
        text = f"{label}: changed — {len(cts)} of {g.tensors} tensors (RMS of Δ {g.rms:.3g})"
        if len(types) < len(all_types):
            text += "; only " + ", ".join(_TYPE_WORDS.get(t, t) for t in types)
        blocks = r.by_block.get(c, {})
        if len(blocks) > 1:
            ch = [b for b, bg in blocks.items() if bg.changed]
            same = [b for b, bg in blocks.items() if not bg.changed]
            text += f"; blocks changed: {_span(ch)}"
            if same:
                text += f"; unchanged: {_span(same)}"
        out.append(text)
    present = {t.component for t in r.tensors}
    out += _presence(r.only_a, "A", fam, present) + _presence(r.only_b, "B", fam, present)
    if r.shape_mismatch:
        out.append(f"{plural(len(r.shape_mismatch), 'tensor')} differ{'s' if len(r.shape_mismatch) == 1 else ''} in shape (e.g. {r.shape_mismatch[0]['key']}: "
                   f"{r.shape_mismatch[0]['a']} vs {r.shape_mismatch[0]['b']})")
    return out


def _presence(keys: list[str], side: str, fam: str, shared: set[str]) -> list[str]:
    """Sentences for keys found on one side only, per component."""
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
            examples = ", ".join(rests[:3]) + (" …" if n > 3 else "")
            out.append(f"{label}: {tensors} only in {side} ({examples})")
    return out
