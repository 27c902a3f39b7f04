"""``inspect(path)``: what is this file? From the header alone (plus a few tiny tensors), in about a second."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdlens.analysis.loading import LoadAdvice, how_to_load
from sdlens.analysis.lora import LoraInfo, analyse_lora
from sdlens.analysis.metadata import MetadataSummary, summarise_metadata
from sdlens.analysis.prediction import Prediction, prediction_of
from sdlens.analysis.quantisation import QuantSummary, summarise_quantisation
from sdlens.analysis.scan import ScanResult, scan_and_hash, scan_and_hash_bytes, scan_tensors
from sdlens.analysis.schedule_buffers import ScheduleInfo, read_buffers
from sdlens.arch import registry as R
from sdlens.arch.identify import Identity, identify
from sdlens.arch.record import Family
from sdlens.io.base import Checkpoint
from sdlens.io.dtypes import DTYPES
from sdlens.io.hashing import FileHashes, hash_file
from sdlens.io.open import open_checkpoint
from sdlens.io.quant import SCHEMES, quant_of, stored_dtype, stored_nbytes

if TYPE_CHECKING:
    from sdlens.analysis.merge_claims import Claim

SCHEMA_VERSION = 1
# tensors smaller than this may be read by inspect (position ids, alphas, schedule buffers, one norm bias)
_SMALL = 1 << 20


@dataclass
class ComponentSummary:
    id: str
    label: str
    prefix: str
    convention: str
    tensors: int
    params: int
    bytes: int
    dtypes: dict[str, int]  # dtype -> tensors


@dataclass
class EmaInfo:
    tensors: int
    expected: int  # denoiser parameters an EMA copy should hold
    complete: bool
    missing_examples: list[str] = field(default_factory=list)


@dataclass
class PositionIdsCheck:
    key: str
    dtype: str
    ok: bool
    detail: str


@dataclass
class InspectReport:
    """Everything inspect knows about one checkpoint. ``to_dict()`` gives the documented JSON schema."""

    path: str
    format: str
    file_size: int
    tensor_count: int
    tensor_bytes: int
    kind: str  # full model | denoiser only | VAE | text encoder(s) | LoRA | ControlNet | ... | unknown
    family: str  # record id or "unknown"
    family_name: str
    variants: list[str]
    confidence: str
    reasons: list[str]
    nonstandard: list[str]
    conventions: list[str]
    components: list[ComponentSummary]
    missing: list[str]
    dtypes: dict[str, dict[str, int]]  # dtype -> {"tensors": n, "bytes": b}
    precision: str
    bytes_beyond_fp16: int
    ema: EmaInfo | None
    schedule: ScheduleInfo | None
    markers: list[str]
    prediction: Prediction | None  # prediction type with its evidence (None: nothing says, or no denoiser)
    unknown_keys: list[dict[str, Any]]
    position_ids: list[PositionIdsCheck]
    problems: list[str]
    lora: LoraInfo | None
    metadata: MetadataSummary
    extras: dict[str, Any]
    latent_channels: int | None = None  # a VAE's latent channels
    fits: list[str] = field(default_factory=list)  # families a part file (VAE, text encoders) fits
    hashes: list[FileHashes] = field(default_factory=list)
    scan: ScanResult | None = None
    summary: str = ""
    merge_claims: list[Claim] = field(default_factory=list)  # recipes merge tools wrote into the metadata
    quantisation: QuantSummary | None = None  # quantised weights (GGUF, scaled fp8, NF4): schemes, bits
    loading: LoadAdvice | None = None  # how to load it: loaders per tool, companion files it lacks
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["merge_claims"] = [c.to_dict() for c in self.merge_claims]
        d["quantisation"] = self.quantisation.to_dict() if self.quantisation else None
        d["prediction"] = self.prediction.to_dict() if self.prediction else None
        return d


CLAIM_KEYS = ("sd_merge_recipe", "mecha_recipe", "prompt")  # = merge_claims.read_claims' readers


def _merge_claims(metadata) -> list[Claim]:
    """The merge recipes the metadata claims; the parser is imported only for metadata that has one."""
    if not any(k in metadata for k in CLAIM_KEYS):
        return []
    from sdlens.analysis.merge_claims import read_claims

    return read_claims(metadata)


def inspect(
    path: str | Path,
    *,
    hashes: bool = False,
    scan: bool = False,
    progress: Callable[[int], None] | None = None,
    variant: str | None = None,
) -> InspectReport:
    """Describe a checkpoint. ``hashes`` and ``scan`` read the whole file (streaming); ``progress`` gets byte counts;
    ``variant`` picks a diffusers folder's variant files (``fp16`` ...)."""
    with open_checkpoint(path, variant) as ckpt:
        report = describe(ckpt)
        if scan and hashes:  # one read of each file for both
            report.scan, report.hashes = scan_and_hash(ckpt, progress, family=report.family)
        elif scan:
            report.scan = scan_tensors(ckpt, progress, family=report.family)
        elif hashes:
            report.hashes = [hash_file(f, progress) for f in ckpt.files]
        if report.scan is not None:
            report.problems += report.scan.problems
        report.summary = summary_line(report)
        return report


def read_bytes(ckpt: Checkpoint, *, hashes: bool, scan: bool) -> int:
    """The bytes :func:`inspect` reads with these options (the progress bar's total)."""
    if hashes and scan:
        return scan_and_hash_bytes(ckpt)
    return ckpt.file_size if hashes else (ckpt.tensor_bytes if scan else 0)


def describe(ckpt: Checkpoint) -> InspectReport:
    """The header-level report (no hashing, no scan)."""
    tensors = ckpt.tensors
    dtypes: dict[str, dict[str, int]] = {}
    beyond = 0
    for t in tensors.values():
        d = dtypes.setdefault(stored_dtype(t), {"tensors": 0, "bytes": 0})
        d["tensors"] += 1
        d["bytes"] += stored_nbytes(t)
        if quant_of(t) is None and DTYPES[t.dtype].is_float and DTYPES[t.dtype].itemsize > 2:
            beyond += t.nbytes - t.numel * 2
    meta = summarise_metadata(ckpt.metadata)
    base = dict(
        path=str(ckpt.path),
        format=ckpt.format,
        file_size=ckpt.file_size,
        tensor_count=len(tensors),
        tensor_bytes=ckpt.tensor_bytes,
        dtypes=dict(sorted(dtypes.items(), key=lambda kv: -kv[1]["bytes"])),
        precision=_precision(dtypes),
        bytes_beyond_fp16=beyond,
        metadata=meta,
        extras=dict(ckpt.extras),
        merge_claims=_merge_claims(ckpt.metadata),
        quantisation=summarise_quantisation(ckpt),
    )
    ident = identify(tensors, ckpt.configs, ckpt.metadata)
    base["loading"] = how_to_load(ident, ckpt.format, tensors)
    match = ident.match
    if ident.kind == "lora":
        lora = analyse_lora(tensors, ckpt.metadata, lambda k: float(ckpt.read_numpy(k).reshape(-1)[0]), match)
        return InspectReport(
            **base,
            kind=ident.label,
            family=match.family,
            family_name=match.name,
            variants=[lora.network],
            confidence=match.confidence,
            reasons=match.reasons,
            nonstandard=[],
            conventions=[lora.convention],
            components=[],
            missing=[],
            ema=None,
            schedule=None,
            markers=[],
            prediction=None,
            unknown_keys=[],
            position_ids=[],
            problems=[],
            lora=lora,
        )

    split = ident.split
    comps = split.components
    kind = ident.label
    fam = ident.record
    components = [
        ComponentSummary(
            c.id,
            _label(c.id, fam),
            c.prefix,
            c.convention,
            len(c.keys),
            c.params,
            c.nbytes,
            dict(sorted(_count(map(stored_dtype, c.keys.values())).items())),
        )
        for c in sorted(comps.values(), key=lambda c: R.component_rank(c.id))
    ]
    problems: list[str] = []
    pos = [_check_position_ids(ckpt, k) for k in tensors if k.endswith("position_ids")]
    for p in pos:
        if not p.ok:
            problems.append(
                f"broken position_ids in {p.key}: {p.detail} (a known merge bug; restore as int64 0..N-1)"
            )
    return InspectReport(
        **base,
        kind=kind,
        family=match.family,
        family_name=match.name,
        variants=match.variants,
        confidence=match.confidence,
        reasons=match.reasons,
        nonstandard=match.nonstandard,
        conventions=split.conventions,
        components=components,
        missing=_missing(comps, fam, ident),
        ema=_ema(comps),
        schedule=_schedule(ckpt, problems),
        markers=[f"{k}: {R.MARKER_KEYS[k]}" for k in tensors if k in R.MARKER_KEYS],
        prediction=_prediction(ckpt, fam, comps),
        unknown_keys=[
            {
                "key": k,
                "shape": list(t.shape),
                "dtype": stored_dtype(t),
                "bytes": stored_nbytes(t),
                "why": f"prefix {k.split('.')[0]!r} belongs to no known component or layout",
            }
            for k, t in split.unknown.items()
        ],
        position_ids=pos,
        problems=problems,
        lora=None,
        latent_channels=ident.latent_channels,
        fits=list(ident.fits),
    )


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


def _label(cid: str, fam: Family | None) -> str:
    base = cid.split("@")[0]
    if base == "denoiser":
        return fam.denoiser_label if fam else "denoiser"
    if base == "markers":
        return "markers"
    return R.COMPONENT_LABELS.get(base, base)


def _missing(comps: dict, fam: Family | None, ident: Identity) -> list[str]:
    if fam is None or ident.kind in ("lora", "controlnet"):
        return []
    out = []
    for te in fam.text_encoder_kinds:
        if te not in comps:
            out.append(f"{R.COMPONENT_LABELS.get(te, te)} text encoder (load it separately)")
    enc, dec = "vae_encoder" in comps, "vae_decoder" in comps
    if not enc and not dec:
        out.append("VAE (load one separately)")
    elif not dec:
        out.append("VAE decoder (needed to decode images)")
    elif not enc:
        out.append("VAE encoder (needed for img2img / inpainting only)")
    if "denoiser" not in comps:
        out.insert(0, fam.denoiser_label)
    return out


def _ema(comps: dict) -> EmaInfo | None:
    ema = comps.get("ema")
    if ema is None:
        return None
    present = set(ema.keys) - {"decay", "num_updates"}  # bookkeeping scalars, not weight copies
    den = comps.get("denoiser")
    expected = {"diffusion_model" + rel.replace(".", "") for rel in (den.keys if den else {})}
    missing = sorted(expected - present)
    return EmaInfo(len(present), len(expected), bool(expected) and not missing, missing[:5])


def _schedule(ckpt: Checkpoint, problems: list[str]) -> ScheduleInfo | None:
    """The file's schedule buffers named (one checked reader: bounded, float, 1-D); unusable ones are a problem."""
    bufs = read_buffers(ckpt)
    if bufs.problem:
        problems.append(f"schedule buffers unusable: {bufs.problem}")
    return bufs.info


def _prediction(ckpt: Checkpoint, fam: Family | None, comps: dict) -> Prediction | None:
    """The prediction type with its evidence: the family's default applies to a file with a denoiser only;
    None when nothing says anything (a VAE, text encoders)."""
    has_denoiser = any(cid.split("@")[0] == "denoiser" for cid in comps)
    pred = prediction_of(ckpt, fam if has_denoiser else None)
    return pred if pred.evidence else None


def _check_position_ids(ckpt: Checkpoint, key: str) -> PositionIdsCheck:
    import numpy as np

    info = ckpt.tensors[key]
    if info.nbytes > _SMALL:
        return PositionIdsCheck(key, info.dtype, False, f"unexpectedly large ({info.shape})")
    vals = ckpt.read_numpy(key).reshape(-1).astype(np.float64)
    n = vals.size
    if np.array_equal(vals, np.arange(n, dtype=np.float64)):
        return PositionIdsCheck(key, info.dtype, True, f"0..{n - 1}")
    diff = np.abs(vals - np.arange(n))
    i = int(diff.argmax())
    return PositionIdsCheck(
        key,
        info.dtype,
        False,
        f"not exactly 0..{n - 1}: {int((diff > 0).sum())} of {n} values off, "
        f"worst at index {i} = {float(vals[i]):.6g} (stored as {info.dtype})",
    )


def _precision(dtypes: dict[str, dict[str, int]]) -> str:
    floats = {d: v["bytes"] for d, v in dtypes.items() if d in SCHEMES or DTYPES[d].is_float}
    if not floats:
        return "none"
    names = {
        "F16": "fp16",
        "BF16": "bf16",
        "F32": "fp32",
        "F64": "fp64",
        "F8_E4M3": "fp8-e4m3",
        "F8_E5M2": "fp8-e5m2",
    }
    if len(floats) == 1:
        return names.get(d := next(iter(floats)), d)
    total = sum(floats.values())

    def share(b: int) -> str:
        pct = 100 * b / total
        return f"{pct:.0f}%" if pct >= 1 else "<1%"

    return "mixed: " + ", ".join(
        f"{names.get(d, d)} {share(b)}" for d, b in sorted(floats.items(), key=lambda kv: -kv[1])
    )


# --------------------------------------------------------------------------- one-line summary


def _human_count(n: int) -> str:
    for div, suffix in ((1e9, " B"), (1e6, " M"), (1e3, " k")):
        if n >= div:
            v = n / div
            return f"{v:.3g}{suffix}" if v < 100 else f"{v:.0f}{suffix}"
    return str(n)


human_count = _human_count  # the public name (render's tables)


def human_bytes(n: int) -> str:
    for div, suffix in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if n >= div:
            return f"{n / div:.3g} {suffix}"
    return f"{n} B"


def summary_line(r: InspectReport) -> str:
    """E.g. ``SDXL base · sgm keys · fp16 · 6.94 GB · UNet 2.57 B · CLIP-L 123 M · CLIP-G 695 M · VAE 83.7 M · no EMA``."""
    if r.kind in ("full model", "LoRA"):
        name = r.family_name
    elif r.kind.startswith("denoiser"):
        name = f"{r.family_name} ({r.kind})"
    else:
        name = f"{r.kind}: {r.family_name}"
    parts = [name + (f" {', '.join(r.variants)}" if r.variants else "")]
    if r.conventions:
        parts.append("/".join(r.conventions) + " keys")
    parts += [r.precision, human_bytes(r.file_size)]
    if r.lora:
        ranks = ", ".join(str(k) for k in r.lora.ranks) or "?"
        parts.append(f"{r.lora.modules} modules · rank {ranks}")
    vae = 0
    for c in r.components:
        if c.id in ("vae_encoder", "vae_decoder"):
            vae += c.params
        elif c.id not in ("schedule", "markers", "ema"):
            parts.append(f"{c.label} {_human_count(c.params)}")
    if vae:
        parts.append(f"VAE {_human_count(vae)}")
    if r.kind not in ("LoRA", "VAE", "text encoder", "text encoders", "ControlNet"):
        parts.append("no EMA" if r.ema is None else ("EMA" if r.ema.complete else "partial EMA"))
    if r.problems:
        parts.append(f"{len(r.problems)} problem{'s' if len(r.problems) > 1 else ''}")
    return " · ".join(parts)
