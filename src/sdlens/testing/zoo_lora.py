"""LoRA / LyCORIS / PEFT test files with known ground truth, on the real module paths of SD1, SDXL and FLUX.

Module paths and shapes come from the real diffusers / transformers classes built on the meta device:

* kohya names (``lora_unet_*``, ``lora_te*_*``) are module paths with ``.`` -> ``_`` as sd-scripts writes them:
  SD1 uses the diffusers UNet names (``lora_unet_down_blocks_0_attentions_0_proj_in``), SDXL the LDM / sgm names
  (``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``), FLUX the BFL names
  (``lora_unet_double_blocks_0_img_attn_qkv``); text encoders the transformers CLIP names
  (``lora_te1_text_model_encoder_layers_0_self_attn_q_proj``).
* PEFT / diffusers names: ``unet.``/``transformer.``/``text_encoder.``/``text_encoder_2.`` + diffusers module path
  + ``.lora_A.weight`` / ``.lora_B.weight``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import torch

from sdlens.arch.configs import DENOISERS
from sdlens.testing import zoo_dit

Arch = Literal["sd1", "sdxl", "flux"]
KINDS = ("kohya", "locon", "loha", "lokr", "dora", "peft")
TARGETS = ("attn", "all", "unet_only", "te_only")
_CONV_KINDS = ("locon", "loha", "lokr")

_NETWORK_TYPE = {
    "kohya": "lora",
    "locon": "locon",
    "loha": "loha",
    "lokr": "lokr",
    "dora": "dora",
    "peft": "lora",
}
_BASE_VERSION = {"sd1": "sd_v1", "sdxl": "sdxl_base_v1-0", "flux": "flux1"}
_RESOLUTION = {"sd1": 512, "sdxl": 1024, "flux": 1024}
_MODELSPEC_ARCH = {"sd1": "stable-diffusion-v1", "sdxl": "stable-diffusion-xl-v1-base", "flux": "flux-1-dev"}

# component -> (kohya prefix, PEFT prefix, text-encoder config name or None for the denoiser)
_COMPONENTS: dict[str, dict[str, tuple[str, str, str | None]]] = {
    "sd1": {"unet": ("lora_unet", "unet", None), "te": ("lora_te", "text_encoder", "clip_l")},
    "sdxl": {
        "unet": ("lora_unet", "unet", None),
        "te1": ("lora_te1", "text_encoder", "clip_l"),
        "te2": ("lora_te2", "text_encoder_2", "clip_g"),
    },
    "flux": {"unet": ("lora_unet", "transformer", None), "te1": ("lora_te1", "text_encoder", "clip_l")},
}

_ATTN_UNET = re.compile(r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$")
_TRANSFORMER_UNET = re.compile(r"^(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.attentions\.\d+\.")
_CONV_UNET = re.compile(
    r"^(down_blocks\.\d+|up_blocks\.\d+|mid_block)\."
    r"(resnets\.\d+\.(conv1|conv2|conv_shortcut|time_emb_proj)|downsamplers\.0\.conv|upsamplers\.0\.conv)$"
)
_TE = re.compile(r"^text_model\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$")
_TE_ATTN = re.compile(r"\.self_attn\.(q|k|v|out)_proj$")
_FLUX_BFL = re.compile(r"^(double_blocks|single_blocks)\.\d+\.")
_FLUX_BFL_ATTN = re.compile(r"(img_attn|txt_attn)\.(qkv|proj)$|single_blocks\.\d+\.linear[12]$")
_FLUX_DIFF = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.\d+\.")
_FLUX_DIFF_ATTN = re.compile(
    r"\.attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)$"
)


@dataclass(frozen=True)
class LoraModule:
    """One targeted module: where it lives and the shape of the weight it adapts."""

    component: str  # "unet", "te", "te1", "te2"
    module: str  # module path inside the component (naming as written in the file, dots kept)
    prefix: str  # key prefix in the file, e.g. "lora_unet_..._to_q" or "unet.down_blocks...to_q"
    shape: tuple[int, ...]  # (out, in) or (out, in, kh, kw)

    @property
    def is_conv(self) -> bool:
        return len(self.shape) == 4


def _weights(sd: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """module path -> weight shape for Linear (2-D) and Conv2d (4-D) weights."""
    return {
        k[: -len(".weight")]: tuple(v.shape)
        for k, v in sd.items()
        if k.endswith(".weight") and v.dim() in (2, 4)
    }


@cache
def _unet_modules(arch: Arch, *, attn_only: bool, conv: bool, kohya: bool) -> dict[str, tuple[int, ...]]:
    cfg = DENOISERS[arch][1]
    shapes = _weights(zoo_dit.meta_state_dict("UNet2DConditionModel", cfg))
    picked: dict[str, tuple[int, ...]] = {}
    for name, shape in shapes.items():
        if _TRANSFORMER_UNET.match(name):
            ok = bool(_ATTN_UNET.search(name)) if attn_only else (len(shape) == 2 or shape[2:] == (1, 1))
        else:
            ok = conv and not attn_only and bool(_CONV_UNET.match(name))
        if ok:
            picked[name] = shape
    if kohya and arch == "sdxl":  # sd-scripts' SDXL UNet carries the LDM / sgm module names
        up_types = cfg["up_block_types"]
        up_attn = [i for i, t in enumerate(up_types) if t.startswith("CrossAttn")]
        return {zoo_dit.unet_name_to_ldm(k, up_attn_blocks=up_attn): v for k, v in picked.items()}
    return picked


@cache
def _flux_modules(*, attn_only: bool, kohya: bool) -> dict[str, tuple[int, ...]]:
    sd = zoo_dit.build_denoiser("flux_dev", size="full", layout="original" if kohya else "diffusers")
    pattern, attn = (_FLUX_BFL, _FLUX_BFL_ATTN) if kohya else (_FLUX_DIFF, _FLUX_DIFF_ATTN)
    return {k: v for k, v in _weights(sd).items() if pattern.match(k) and (not attn_only or attn.search(k))}


@cache
def _te_modules(name: str, *, attn_only: bool) -> dict[str, tuple[int, ...]]:
    shapes = _weights(zoo_dit.text_encoder_meta_state_dict(name, "full"))
    return {k: v for k, v in shapes.items() if _TE.match(k) and (not attn_only or _TE_ATTN.search(k))}


def lora_modules(
    kind: str = "kohya", *, arch: Arch = "sd1", targets: str = "all", conv: bool | None = None
) -> list[LoraModule]:
    """The modules a ``kind`` LoRA with ``targets`` adapts, with real shapes, in file order.

    targets: ``attn`` (attention projections of denoiser + text encoders), ``all`` (sd-scripts defaults: every
    Linear / 1x1 conv of the transformer blocks + CLIP attention and MLP), ``unet_only``, ``te_only``.
    ``conv`` (default: kinds locon / loha / lokr on SD1 / SDXL) adds ResNet / sampler convs (LoCon)."""
    if kind not in KINDS:
        raise ValueError(f"unknown LoRA kind {kind!r}; expected one of {KINDS}")
    if targets not in TARGETS:
        raise ValueError(f"unknown targets {targets!r}; expected one of {TARGETS}")
    if arch not in _COMPONENTS:
        raise ValueError(f"unknown arch {arch!r}; expected sd1, sdxl or flux")
    kohya = kind != "peft"
    attn_only = targets == "attn"
    if conv is None:
        conv = kind in _CONV_KINDS and arch != "flux" and targets in ("all", "unet_only")
    out: list[LoraModule] = []
    for comp, (k_prefix, p_prefix, te_name) in _COMPONENTS[arch].items():
        if (te_name is None and targets == "te_only") or (te_name is not None and targets == "unet_only"):
            continue
        if te_name is not None:
            found = _te_modules(te_name, attn_only=attn_only)
        elif arch == "flux":
            found = _flux_modules(attn_only=attn_only, kohya=kohya)
        else:
            found = _unet_modules(arch, attn_only=attn_only, conv=conv and kohya, kohya=kohya)
        for mod, shape in found.items():
            prefix = f"{k_prefix}_{mod.replace('.', '_')}" if kohya else f"{p_prefix}.{mod}"
            out.append(LoraModule(comp, mod, prefix, shape))
    return out


def _factor(n: int) -> tuple[int, int]:
    """LyCORIS ``factorization(n, -1)``: the divisor pair closest to sqrt(n), smaller first."""
    a = int(n**0.5)
    while n % a:
        a -= 1
    return a, n // a


def _lokr_shapes(shape: tuple[int, ...], rank: int) -> dict[str, tuple[int, ...]]:
    out_dim, in_dim, k = shape[0], shape[1], shape[2:]
    (o1, o2), (i1, i2) = _factor(out_dim), _factor(in_dim)
    kk = 1
    for d in k:
        kk *= d
    if rank < max(o2, i2) / 2:
        return {"lokr_w1": (o1, i1), "lokr_w2_a": (o2, rank), "lokr_w2_b": (rank, i2 * kk)}
    return {"lokr_w1": (o1, i1), "lokr_w2": (o2, i2, *k)}


def lora_tensor_shapes(kind: str, module: LoraModule, rank: int) -> dict[str, tuple[int, ...]]:
    """Suffix -> shape of the tensors ``kind`` stores for ``module`` (``alpha`` is a 0-d scalar)."""
    shape = module.shape
    out_dim, in_dim, k = shape[0], shape[1], shape[2:]
    ones = (1,) * len(k)
    if kind == "peft":
        return {"lora_A.weight": (rank, in_dim, *k), "lora_B.weight": (out_dim, rank, *ones)}
    if kind in ("kohya", "locon", "dora"):
        res = {"lora_down.weight": (rank, in_dim, *k), "lora_up.weight": (out_dim, rank, *ones), "alpha": ()}
        if kind == "dora":  # LyCORIS weight decomposition, wd_on_out: one magnitude per output channel
            res["dora_scale"] = (out_dim, 1, *ones)
        return res
    flat_in = in_dim
    for d in k:
        flat_in *= d
    if kind == "loha":
        return {
            "hada_w1_a": (out_dim, rank),
            "hada_w1_b": (rank, flat_in),
            "hada_w2_a": (out_dim, rank),
            "hada_w2_b": (rank, flat_in),
            "alpha": (),
        }
    if kind == "lokr":
        return {**_lokr_shapes(shape, rank), "alpha": ()}
    raise ValueError(f"unknown LoRA kind {kind!r}")


def _metadata(
    kind: str,
    arch: Arch,
    rank: int,
    alpha: float,
    conv_rank: int,
    conv_alpha: float,
    truth: dict[str, Any],
    modelspec: bool,
) -> dict[str, str]:
    res = _RESOLUTION[arch]
    spec = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{_MODELSPEC_ARCH[arch]}/lora",
        "modelspec.implementation": "https://github.com/kohya-ss/sd-scripts"
        if kind != "peft"
        else "diffusers",
        "modelspec.title": f"zoo-{kind}-{arch}",
        "modelspec.resolution": f"{res}x{res}",
        "modelspec.date": "2024-05-01T12:00:00",
    }
    if kind == "peft":
        meta_json: dict[str, Any] = {}
        for comp in truth["components"]:
            p_prefix = _COMPONENTS[arch][comp][1]
            mods = sorted(
                {re.sub(r"^.*?\.?([a-z_0-9]+(?:\.\d+)?)$", r"\1", m) for m in truth["module_paths"][comp]}
            )
            meta_json |= {
                f"{p_prefix}.r": rank,
                f"{p_prefix}.lora_alpha": alpha,
                f"{p_prefix}.target_modules": mods,
            }
        md = {"format": "pt", "lora_adapter_metadata": json.dumps(meta_json, indent=2, sort_keys=True)}
        return md | spec if modelspec else md
    if kind == "kohya":
        module, args = ("networks.lora_flux" if arch == "flux" else "networks.lora"), None
    else:
        module = "lycoris.kohya"
        args = {
            "algo": "locon" if kind == "dora" else kind,
            "conv_dim": str(conv_rank),
            "conv_alpha": str(conv_alpha),
        }
        if kind == "dora":
            args["dora_wd"] = "True"
        if kind == "lokr":
            args["factor"] = "-1"
    tags = {"10_zoo": {"zoo": 40, "1girl": 25, "outdoors": 12, "smile": 7}}
    md = {
        "ss_network_module": module,
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_base_model_version": _BASE_VERSION[arch],
        "ss_v2": "False",
        "ss_resolution": f"({res}, {res})",
        "ss_num_epochs": "10",
        "ss_epoch": "10",
        "ss_max_train_steps": "1000",
        "ss_num_train_images": "40",
        "ss_learning_rate": "0.0001",
        "ss_output_name": f"zoo_{kind}_{arch}",
        "ss_tag_frequency": json.dumps(tags),
        "ss_training_comment": "synthetic zoo file",
        "sshs_model_hash": "0" * 64,
    }
    if args is not None:
        md["ss_network_args"] = json.dumps(args)
    return md | spec if modelspec else md


def _plan(
    kind: str,
    arch: Arch,
    rank: int,
    alpha: float | None,
    targets: str,
    conv_rank: int | None,
    conv_alpha: float | None,
    conv: bool | None,
) -> tuple[list[LoraModule], dict[str, Any]]:
    mods = lora_modules(kind, arch=arch, targets=targets, conv=conv)
    alpha = float(rank if alpha is None else alpha)
    conv_rank = rank if conv_rank is None else conv_rank
    conv_alpha = float(alpha if conv_alpha is None else conv_alpha)
    comps = [c for c in _COMPONENTS[arch] if any(m.component == c for m in mods)]
    truth: dict[str, Any] = {
        "kind": kind,
        "network_type": _NETWORK_TYPE[kind],
        "key_format": "peft" if kind == "peft" else "kohya",
        "arch": arch,
        "base_model_version": _BASE_VERSION[arch],
        "rank": rank,
        "alpha": alpha,
        "conv_rank": conv_rank if any(m.is_conv and m.shape[2:] != (1, 1) for m in mods) else None,
        "conv_alpha": conv_alpha if any(m.is_conv and m.shape[2:] != (1, 1) for m in mods) else None,
        "targets": targets,
        "components": comps,
        "n_modules": len(mods),
        "modules_per_component": {c: sum(m.component == c for m in mods) for c in comps},
        "n_conv3x3_modules": sum(m.is_conv and m.shape[2:] != (1, 1) for m in mods),
        "module_paths": {c: [m.module for m in mods if m.component == c] for c in comps},
        "prefixes": [m.prefix for m in mods],
    }
    return mods, truth


def lora_truth(
    kind: str = "kohya",
    *,
    arch: Arch = "sd1",
    rank: int = 4,
    alpha: float | None = None,
    targets: str = "all",
    conv_rank: int | None = None,
    conv_alpha: float | None = None,
    conv: bool | None = None,
) -> dict[str, Any]:
    """Ground truth of ``build_lora`` with the same arguments: network type, rank, alpha, arch, modules, components."""
    return _plan(kind, arch, rank, alpha, targets, conv_rank, conv_alpha, conv)[1]


def build_lora(
    kind: str = "kohya",
    *,
    arch: Arch = "sd1",
    rank: int = 4,
    alpha: float | None = None,
    seed: int = 0,
    targets: str = "all",
    conv_rank: int | None = None,
    conv_alpha: float | None = None,
    conv: bool | None = None,
    modelspec: bool = True,
    dtype: torch.dtype = torch.float16,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, safetensors metadata) of a LoRA-family file; ``alpha`` defaults to ``rank``.

    3x3 convs (LoCon) use ``conv_rank`` / ``conv_alpha`` (default: ``rank`` / ``alpha``)."""
    if rank < 1:
        raise ValueError("rank must be >= 1")
    mods, truth = _plan(kind, arch, rank, alpha, targets, conv_rank, conv_alpha, conv)
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for m in mods:
        is3x3 = m.is_conv and m.shape[2:] != (1, 1)
        r = truth["conv_rank"] if is3x3 else rank
        a = truth["conv_alpha"] if is3x3 else truth["alpha"]
        for suffix, shape in lora_tensor_shapes(kind, m, r).items():
            if suffix == "alpha":
                t = torch.tensor(a)
            elif suffix == "dora_scale":
                t = 1.0 + 0.01 * torch.randn(shape, generator=gen)
            else:
                t = torch.randn(shape, generator=gen) * 0.01
            tensors[f"{m.prefix}.{suffix}"] = t.to(dtype)
    meta = _metadata(
        kind,
        arch,
        rank,
        truth["alpha"],
        truth["conv_rank"] or rank,
        truth["conv_alpha"] or truth["alpha"],
        truth,
        modelspec,
    )
    return tensors, meta
