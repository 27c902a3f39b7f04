"""``sdlens arch``: the anatomy of a diffusion architecture with no weights — parameters (exact), merge blocks,
every GEMM of one denoiser forward, FLOPs per image, weight and activation memory, VRAM estimates.

Everything is measured on models built on the meta device (``sdlens.arch.build``) and traced op by op
(``sdlens.analysis.trace``); see ``docs/arch.md`` for what is counted and what is not.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from sdlens.analysis.trace import Op, Trace, trace_forward
from sdlens.arch import build as B
from sdlens.arch import configs as C
from sdlens.arch import families
from sdlens.arch import registry as R
from sdlens.arch.blocks import block_names, block_of
from sdlens.choices import Precision, TimeEmbed, check_choice
from sdlens.errors import SdlensError

DTYPE_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}
FLOP_PARTS = ("conv", "linear", "attn_qk", "attn_pv")
ALL_MODELS = B.measured_models()

TORCHINFO_NOTE = (
    "torchinfo's figure (2.0 B for SD1, 5.3 B for SDXL) is not the parameter count: diffusers "
    "0.22–0.32 reused one nn.SiLU instance across all ResNet blocks, and torchinfo ≤ 1.8.0 records one parent "
    "per module, so its tree broke and parameters were counted twice or more (SD1's 2,041,004,804 reproduces "
    "exactly with a shared SiLU). Its mult-adds multiply Linear parameters by the batch only (ignoring the "
    "sequence length) and never count attention matmuls; its 'forward/backward pass size' is 2 × the output "
    "bytes of parameter-owning leaf modules, not peak memory."
)


# --------------------------------------------------------------------------- results


@dataclass
class ComponentParams:
    id: str  # denoiser | clip_l | … | vae
    label: str
    params: int
    reference: int | None  # parameter count of the released weights, where known
    detail: dict[str, int] = field(default_factory=dict)  # VAE: encoder / decoder / quant convs

    @property
    def matches(self) -> bool | None:
        return None if self.reference is None else self.params == self.reference

    def weight_bytes(self, dtype: str) -> int:
        return self.params * DTYPE_BYTES[dtype]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["matches_reference"] = self.matches
        d["weight_bytes"] = {dt: self.weight_bytes(dt) for dt in DTYPE_BYTES}
        return d


@dataclass
class BlockRow:
    name: str
    params: int
    share: float  # of the denoiser's parameters
    flops: int  # of one denoiser forward at the chosen inputs
    resolution: str | None  # UNets: latent resolution at the block's output (H×W)
    channels: int | None  # UNets: channels at the block's output
    keys: list[str]  # original checkpoint key prefixes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ForwardCost:
    """One forward of one component, traced."""

    component: str
    batch: int
    inputs: dict[str, list[int]]
    flops: dict[str, int]  # conv / linear / attn_qk / attn_pv
    gemms: int
    peak_fused: int  # activation bytes at the peak, fused attention kernels
    peak_materialised: int  # … with attention scores and probabilities materialised
    peak_module: str

    @property
    def total_flops(self) -> int:
        return sum(self.flops.values())

    @property
    def macs(self) -> int:
        return self.total_flops // 2

    @property
    def attention_flops(self) -> int:
        return self.flops.get("attn_qk", 0) + self.flops.get("attn_pv", 0)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            total_flops=self.total_flops,
            macs=self.macs,
            attention_flops=self.attention_flops,
            flops_without_attention=self.total_flops - self.attention_flops,
        )
        return d


@dataclass
class ArchReport:
    model: str
    name: str
    cls_name: str
    family: str
    source: str
    config: dict[str, Any]
    settings: dict[str, Any]
    components: list[ComponentParams]
    blocks: list[BlockRow]
    mbw_blocks: int
    mbw_expected: int | None
    denoiser: ForwardCost
    text_encoders: list[ForwardCost]
    vae_decode: ForwardCost
    vae_encode: ForwardCost | None
    per_image: dict[str, int]  # FLOPs per generated image, by part, and total
    memory: dict[str, Any]
    notebook: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list, repr=False)
    seconds: float = 0.0  # wall time of the measurement (builds and traces not cached before)

    @property
    def params(self) -> int:
        return self.components[0].params

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "ops"}
        d["params"] = self.params
        d["gemm_total_flops"] = sum(o.flops for o in self.ops)
        d["torchinfo_note"] = TORCHINFO_NOTE
        return d


# --------------------------------------------------------------------------- helpers


def parse_res(text: str | None) -> tuple[int, int] | None:
    """``1024x768`` / ``1024`` -> (width, height)."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*(?:[x×X*,]\s*(\d+))?\s*", text)
    if not m:
        raise SdlensError(None, f"--res {text!r}: write WIDTHxHEIGHT, e.g. 1024x1024")
    w = int(m.group(1))
    return w, int(m.group(2) or w)


def _dtype(name: str) -> torch.dtype:
    return B.DTYPES[check_choice(name, "dtype", Precision)]


def _shapes(inputs: dict[str, Any]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor):
            out[k] = list(v.shape)
        elif isinstance(v, dict):
            out.update({f"{k}.{kk}": list(vv.shape) for kk, vv in v.items() if isinstance(vv, torch.Tensor)})
        elif isinstance(v, tuple):
            out.update(
                {f"{k}[{i}]": list(vv.shape) for i, vv in enumerate(v) if isinstance(vv, torch.Tensor)}
            )
    return out


def _summary(component: str, batch: int, inputs: dict[str, Any], tr: Trace) -> ForwardCost:
    flops = dict.fromkeys(FLOP_PARTS, 0)
    for o in tr.ops:
        flops[o.op if o.kind == "attention" else o.kind] += o.flops
    return ForwardCost(
        component,
        batch,
        _shapes(inputs),
        flops,
        len(tr.ops),
        tr.peak_fused,
        tr.peak_materialised,
        tr.peak_module,
    )


@lru_cache(maxsize=32)
def _denoiser_model(cls_name: str, config_json: str, dtype: str) -> torch.nn.Module:
    import json

    return B.build_denoiser(cls_name, json.loads(config_json), B.DTYPES[dtype])


def _denoiser_for(spec: B.ArchSpec, dtype: str) -> torch.nn.Module:
    import json

    return _denoiser_model(spec.cls_name, json.dumps(spec.config, sort_keys=True, default=str), dtype)


@lru_cache(maxsize=64)
def _denoiser_cost(
    spec: B.ArchSpec, batch: int, width: int, height: int, dtype: str
) -> tuple[ForwardCost, Trace]:
    """One traced denoiser forward (cached: steps, CFG-vs-batch and the other settings reuse it)."""
    den = _denoiser_for(spec, dtype)
    inputs = B.denoiser_inputs(spec, den, batch, width, height, B.DTYPES[dtype])
    tr = trace_forward(den, lambda: den(**inputs, return_dict=False), inputs)
    return _summary("denoiser", batch, inputs, tr), tr


@lru_cache(maxsize=32)
def _text_encoder_cost(kind: str, batch: int, tokens: int, dtype: str) -> ForwardCost:
    model = _text_encoder_model(kind, dtype)
    inputs = B.text_encoder_inputs(kind, batch, tokens)
    tr = trace_forward(model, lambda: model(**inputs), inputs)
    return _summary(kind, batch, inputs, tr)


@lru_cache(maxsize=16)
def _text_encoder_model(kind: str, dtype: str) -> torch.nn.Module:
    return B.build_text_encoder(kind, B.DTYPES[dtype])


@lru_cache(maxsize=4)
def _vae_model(kind: str, dtype: str) -> torch.nn.Module:
    return B.build_vae(kind, B.DTYPES[dtype])


@lru_cache(maxsize=32)
def _vae_cost(kind: str, direction: str, batch: int, h: int, w: int, dtype: str) -> ForwardCost:
    vae = _vae_model(kind, dtype)
    dt = B.DTYPES[dtype]
    if direction == "decode":
        z = torch.empty(batch, C.VAES[kind]["latent_channels"], h, w, device=B.META, dtype=dt)
        inputs = {"latents": z}
        tr = trace_forward(vae, lambda: vae.decode(z), inputs)
    else:
        x = torch.empty(batch, 3, h * 8, w * 8, device=B.META, dtype=dt)
        inputs = {"image": x}
        tr = trace_forward(vae, lambda: vae.encode(x), inputs)
    return _summary(f"vae_{direction}", batch, inputs, tr)


# --------------------------------------------------------------------------- parameters and blocks


def _canonical_keys(spec: B.ArchSpec, model: torch.nn.Module) -> dict[str, str]:
    """diffusers parameter name -> the name in the original checkpoints' layout (LDM for UNets)."""
    names = [n for n, _ in model.named_parameters()]
    if not spec.is_unet:
        return {n: n for n in names}
    from sdlens.arch.keymap import unet_diffusers_key_to_ldm

    out = {}
    for n in names:
        try:
            out[n] = unet_diffusers_key_to_ldm(n, spec.config)
        except (KeyError, ValueError):
            out[n] = n
    return out


def _module_blocks(
    spec: B.ArchSpec, model: torch.nn.Module, canon: dict[str, str], time_embed: str
) -> dict[str, str]:
    """Module path -> merge block, through the first parameter under each module (parents for the rest)."""
    first: dict[str, str] = {}
    for n in canon:
        parts = n.split(".")
        for i in range(len(parts)):
            first.setdefault(".".join(parts[:i]), n)
    out: dict[str, str] = {}
    for path, _ in model.named_modules():
        p = path
        while p not in first and p:
            p = p.rpartition(".")[0]
        key = first.get(p)
        out[path] = block_of(f"denoiser/{canon[key]}", spec.family, time_embed=time_embed) if key else "BASE"
    return out


def _original_prefixes(spec: B.ArchSpec, block: str, keys: list[str]) -> list[str]:
    fam = families.get(spec.family)
    if spec.is_unet:  # LDM keys under the single file's denoiser prefix
        top = fam.single_file.get("denoiser", "") if fam else ""
        prefixes: list[str] = []
        for k in keys:
            parts = k.split(".")
            p = ".".join(parts[:2]) if parts[0] in ("input_blocks", "output_blocks") else parts[0]
            p = f"{top}{p}."
            if p not in prefixes:
                prefixes.append(p)
        return prefixes
    style = fam.blocks.original_keys if fam else {}
    m = re.fullmatch(r"([A-Z]+)(\d*)", block)
    if m and m.group(1) in style:
        tpl = style[m.group(1)]
        return [tpl.format(n=int(m.group(2))) if m.group(2) else tpl]
    return sorted({k.split(".")[0] for k in keys})


def _blocks(spec: B.ArchSpec, model: torch.nn.Module, ops: list[Op], time_embed: str) -> list[BlockRow]:
    canon = _canonical_keys(spec, model)
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    by_block: dict[str, list[str]] = {}
    count: dict[str, int] = {}
    for n, key in canon.items():
        b = block_of(f"denoiser/{key}", spec.family, time_embed=time_embed)
        by_block.setdefault(b, []).append(key)
        count[b] = count.get(b, 0) + params[n].numel()
    mod_block = _module_blocks(spec, model, canon, time_embed)
    flops: dict[str, int] = {}
    last_conv: dict[str, dict[str, Any]] = {}
    for o in ops:
        b = mod_block.get(o.module, "BASE")
        flops[b] = flops.get(b, 0) + o.flops
        if o.conv is not None:
            last_conv[b] = o.conv
    order = [b for b in block_names(spec.family) if b in count or b in flops]
    order += [b for b in list(count) + list(flops) if b not in order]
    rows = []
    for b in dict.fromkeys(order):
        conv = last_conv.get(b) if spec.is_unet else None
        rows.append(
            BlockRow(
                b,
                count.get(b, 0),
                count.get(b, 0) / total if total else 0.0,
                flops.get(b, 0),
                "×".join(str(x) for x in conv["output"]) if conv else None,
                conv["out"] if conv else None,
                _original_prefixes(spec, b, by_block.get(b, [])),
            )
        )
    return rows


def _mbw_count(spec: B.ArchSpec, blocks: list[BlockRow]) -> int:
    """Functional merge blocks: every UNet block but BASE; the numbered blocks of a DiT."""
    if spec.is_unet:
        return sum(1 for b in blocks if b.name != "BASE" and b.params)
    return sum(1 for b in blocks if re.fullmatch(r"[A-Z]+\d+", b.name))


# --------------------------------------------------------------------------- the report


def resolve(model: str | Path) -> B.ArchSpec:
    """A released model name / alias, a diffusers config.json, or a checkpoint -> the spec to measure."""
    text = str(model)
    if B.resolve_alias(text) is not None:
        return B.released_spec(text)
    p = Path(text)
    if not p.exists() and not p.is_symlink():  # a broken link or a link loop: the reader names the problem
        raise SdlensError(
            None, f"unknown model {text!r}: use one of {', '.join(ALL_MODELS)}, a config.json or a checkpoint"
        )
    from sdlens.arch.from_checkpoint import spec_from_config_json, spec_from_path

    if p.suffix == ".json" and not p.name.endswith(".index.json"):
        return spec_from_config_json(p)
    return spec_from_path(p)


def _input_path(model: object) -> Path | None:
    """The file or config ``model`` names, for an error message (None for a released model's name)."""
    if isinstance(model, B.ArchSpec) or B.resolve_alias(str(model)) is not None:
        return None
    return Path(str(model))


def analyse(
    model: str | Path | B.ArchSpec,
    *,
    res: tuple[int, int] | None = None,
    batch: int = 1,
    cfg: bool | None = None,
    steps: int | None = None,
    dtype: Precision = "fp16",
    tokens: int | None = None,
    img2img: bool = False,
    time_embed: TimeEmbed = "IN00",
) -> ArchReport:
    """Measure one architecture at the given inputs (``res`` = (width, height); defaults: the model's own)."""
    import time

    t0 = time.perf_counter()
    check_choice(time_embed, "time_embed", TimeEmbed)
    spec = model if isinstance(model, B.ArchSpec) else resolve(model)
    if spec.cls_name not in B.TRACEABLE:
        raise SdlensError(
            _input_path(model),
            f"sdlens arch cannot measure a {spec.name} denoiser yet: it has no forward-input recipe for "
            f"{spec.cls_name} (the record, its key map and its parameter count are known)",
        )
    spec = B.with_tokens(spec, tokens)
    _dtype(dtype)
    if batch < 1:
        raise SdlensError(None, "--batch must be at least 1")
    width, height = res or spec.res
    cfg = spec.cfg if cfg is None else cfg
    steps = spec.steps if steps is None else steps
    if steps < 0:
        raise SdlensError(None, "--steps must be 0 or more")
    h, w = B.latent_size(spec, width, height)
    guidance = 2 if cfg else 1
    eff = batch * guidance

    den = _denoiser_for(spec, dtype)
    try:
        fwd, tr = _denoiser_cost(spec, eff, width, height, dtype)
    except (AssertionError, RuntimeError, ValueError, TypeError, IndexError) as e:
        if spec.source == "released config":
            raise  # a released model that does not run is sdlens's bug
        raise SdlensError(  # shapes read off a (possibly crafted) file that make no runnable model
            _input_path(model), f"the denoiser these shapes describe does not run ({type(e).__name__})"
        ) from None

    # components and parameters
    comps = [
        ComponentParams(
            "denoiser",
            spec.name + " denoiser",
            B.count_params(den),
            _released_params(spec) if spec.source == "released config" else spec.reference_params,
        )
    ]
    tes: list[ForwardCost] = []
    te_flops = 0
    for kind, n_tok in spec.text_encoders:
        chunks, per = B.clip_chunks(kind, n_tok)
        comps.append(
            ComponentParams(
                kind,
                R.COMPONENT_LABELS.get(kind, kind),
                B.text_encoder_params(kind),
                C.TEXT_ENCODER_PARAMS.get(kind),
            )
        )
        cost = _text_encoder_cost(kind, guidance * batch * chunks, per, dtype)
        tes.append(cost)
        te_flops += cost.total_flops // batch
    vae_total, vae_enc, vae_dec = B.vae_params(spec.vae)
    comps.append(
        ComponentParams(
            spec.vae,
            "VAE",
            vae_total,
            C.VAE_PARAMS.get(spec.vae),
            {
                "encoder + quant_conv": vae_enc,
                "decoder (decoder.*)": vae_dec - _post_quant(spec.vae),
                "post_quant_conv": _post_quant(spec.vae),
            },
        )
    )
    dec = _vae_cost(spec.vae, "decode", batch, h, w, dtype)
    enc = _vae_cost(spec.vae, "encode", batch, h, w, dtype) if img2img else None

    per_image = {
        "denoiser": steps * fwd.total_flops // batch,
        "text_encoders": te_flops,
        "vae_decode": dec.total_flops // batch,
        "vae_encode": enc.total_flops // batch if enc else 0,
    }
    per_image["total"] = sum(per_image.values())

    blocks = _blocks(spec, den, tr.ops, time_embed)
    fam = families.get(spec.family)
    settings = {
        "res": [width, height],
        "latent": [h, w],
        "batch": batch,
        "cfg": cfg,
        "denoiser_batch": eff,
        "steps": steps,
        "dtype": dtype,
        "text_tokens": spec.text_tokens,
        "img2img": img2img,
        "time_embed": time_embed,
        "text_encoder_tokens": [list(t) for t in spec.text_encoders],
    }
    report = ArchReport(
        spec.key,
        spec.name,
        spec.cls_name,
        spec.family,
        spec.source,
        spec.config,
        settings,
        comps,
        blocks,
        _mbw_count(spec, blocks),
        fam.blocks.mbw if fam else None,
        fwd,
        tes,
        dec,
        enc,
        per_image,
        {},
        _notebook(spec.key) if spec.source == "released config" else None,
        list(spec.notes),
        tr.ops,
    )
    report.memory = _memory(report, dtype)
    report.seconds = time.perf_counter() - t0
    return report


def _released_params(spec: B.ArchSpec) -> int | None:
    fam = families.get(spec.key)
    return fam.denoiser.params if fam is not None and fam.denoiser is not None else None


def _post_quant(kind: str) -> int:
    cfg = C.VAES[kind]
    if cfg.get("use_post_quant_conv", True) is False:
        return 0
    c = cfg["latent_channels"]
    return c * c + c


def _notebook(key: str) -> dict[str, Any] | None:
    fam = families.get(key)
    row = fam.notebook if fam else None
    if row is None:
        return None
    mbw, ti, dp, passmb, total = row
    return {
        "mbw_layers": mbw,
        "params_torchinfo_b": ti,
        "params_diffusers_b": dp,
        "fwd_bwd_pass_mb_fp16": passmb,
        "est_total_gb_fp16": total,
    }


def _memory(r: ArchReport, dtype: str) -> dict[str, Any]:
    weights = {c.id: {dt: c.weight_bytes(dt) for dt in DTYPE_BYTES} for c in r.components}
    w = {c.id: c.weight_bytes(dtype) for c in r.components}
    te_ids = [c.id for c in r.components[1:-1]]
    acts = {"denoiser": r.denoiser, **{t.component: t for t in r.text_encoders}, "vae_decode": r.vae_decode}
    if r.vae_encode is not None:
        acts["vae_encode"] = r.vae_encode
    out: dict[str, Any] = {
        "dtype": dtype,
        "weights": weights,
        "activations": {
            k: {"fused": v.peak_fused, "materialised": v.peak_materialised, "at": v.peak_module}
            for k, v in acts.items()
        },
    }
    for mode in ("fused", "materialised"):
        peak = {k: getattr(v, f"peak_{mode}") for k, v in acts.items()}
        all_w = sum(w.values())
        no_te = all_w - sum(w[t] for t in te_ids)
        out[f"vram_{mode}"] = {
            "all_on_gpu": all_w + max(peak.values()),
            "text_encoders_offloaded": no_te + max(v for k, v in peak.items() if k not in te_ids),
        }
    out["assumptions"] = (
        "VRAM = weights of the components on the GPU + the largest activation peak of the stages run there (stages "
        "run one after another, activations freed in between); not counted: CUDA context (~0.3-1 GB), allocator "
        "fragmentation, the scheduler and latents between steps (a few MB). 'fused': attention through a fused "
        "kernel (flash / memory-efficient SDPA), scores never stored; 'materialised': QKᵀ scores and softmax "
        "probabilities held at once (2 × batch × heads × Lq × Lk elements)."
    )
    return out


def compare(
    models: str | Sequence[str | Path] = "all", *, on_model: Callable[[str], None] | None = None, **kw: Any
) -> list[ArchReport]:
    """:func:`analyse` of each of ``models`` ("all": every released architecture) at the same settings;
    ``on_model(name)`` is told before each is measured."""
    names = (list(ALL_MODELS) if models == "all" else [models]) if isinstance(models, str) else list(models)
    reports = []
    for name in names:
        if on_model is not None:
            on_model(str(name))
        reports.append(analyse(name, **kw))
    return reports


def gemm_rows(report: ArchReport) -> list[dict[str, Any]]:
    """The ``--gemm`` table: one row per GEMM / convolution of one denoiser forward."""
    rows = []
    for i, o in enumerate(report.ops):
        c = o.conv or {}
        rows.append(
            {
                "index": i,
                "module": o.module,
                "op": o.op,
                "kind": o.kind,
                "batch": o.batch,
                "M": o.m,
                "N": o.n,
                "K": o.k,
                "conv_in": c.get("in", ""),
                "conv_out": c.get("out", ""),
                "kernel": "x".join(map(str, c.get("kernel", []))),
                "stride": "x".join(map(str, c.get("stride", []))),
                "groups": c.get("groups", ""),
                "output": "x".join(map(str, c.get("output", []))),
                "macs": o.macs,
                "flops": o.flops,
            }
        )
    return rows


def write_gemm_csv(report: ArchReport, path: Path) -> Path:
    import csv
    import io

    from sdlens.io.atomic import write_text_atomic

    rows = gemm_rows(report)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["index"])
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())
    return path
