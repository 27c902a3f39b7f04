"""DiT-family test checkpoints with real key names: SD3 / SD3.5, FLUX, AuraFlow, HunyuanDiT, PixArt-α/Σ.

Every builder instantiates the real diffusers / transformers class. ``size="full"`` builds on the meta device
(shapes only: hand the result to :func:`sdlens.testing.writers.save_safetensors` for a sparse file);
``size="tiny"`` keeps every key name (same block counts) but uses small widths and seeded random values.

``layout="original"`` renames to the key names of the original single-file releases. For SD3, FLUX and
AuraFlow the renaming is the exact inverse of diffusers' single-file converters (the tests check it); for
HunyuanDiT and PixArt it follows the naming of the original repositories (tables ``HUNYUAN_RENAMES`` /
``PIXART_RENAMES`` below).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from typing import Any, Literal

import torch

from sdlens.arch.configs import DENOISERS, TEXT_ENCODERS, VAES

Size = Literal["tiny", "full"]
Layout = Literal["original", "diffusers"]
TensorDict = dict[str, torch.Tensor]

SD3_FAMILIES = ("sd3", "sd35m", "sd35")
FAMILIES = (*SD3_FAMILIES, "flux", "auraflow", "hunyuandit", "pixart_alpha", "pixart_sigma")

_PIXART_BASE: dict[str, Any] = {
    "num_attention_heads": 16,
    "attention_head_dim": 72,
    "in_channels": 4,
    "out_channels": 8,
    "num_layers": 28,
    "cross_attention_dim": 1152,
    "attention_bias": True,
    "sample_size": 128,
    "patch_size": 2,
    "activation_fn": "gelu-approximate",
    "num_embeds_ada_norm": 1000,
    "norm_type": "ada_norm_single",
    "norm_elementwise_affine": False,
    "norm_eps": 1e-6,
    "caption_channels": 4096,
}

# families not in configs.DENOISERS (published diffusers configs of the 1024px releases)
_EXTRA: dict[str, tuple[str, dict[str, Any]]] = {
    "sd35m": (
        "SD3Transformer2DModel",
        {
            **DENOISERS["sd3"][1],
            "pos_embed_max_size": 384,
            "qk_norm": "rms_norm",
            "dual_attention_layers": tuple(range(13)),
        },
    ),
    "pixart_alpha": ("PixArtTransformer2DModel", {**_PIXART_BASE, "use_additional_conditions": True}),
    "pixart_sigma": (
        "PixArtTransformer2DModel",
        {**_PIXART_BASE, "use_additional_conditions": False, "interpolation_scale": 2},
    ),
}

_SD3_TINY = {
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "caption_projection_dim": 32,
    "joint_attention_dim": 32,
    "pooled_projection_dim": 32,
    "sample_size": 16,
    "pos_embed_max_size": 8,
}
_PIXART_TINY = {
    "num_attention_heads": 2,
    "attention_head_dim": 12,
    "cross_attention_dim": 24,
    "caption_channels": 32,
}

# width overrides for size="tiny" (block counts untouched)
_TINY: dict[str, dict[str, Any]] = {
    "sd3": _SD3_TINY,
    "sd35m": {**_SD3_TINY, "pos_embed_max_size": 16},
    "sd35": _SD3_TINY,
    "flux": {
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": 32,
        "pooled_projection_dim": 32,
        "axes_dims_rope": (4, 6, 6),
    },
    "auraflow": {
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": 32,
        "caption_projection_dim": 32,
        "pos_embed_max_size": 64,
        "sample_size": 16,
    },
    "hunyuandit": {
        "num_attention_heads": 2,
        "attention_head_dim": 8,
        "hidden_size": 16,
        "cross_attention_dim": 24,
        "cross_attention_dim_t5": 32,
        "pooled_projection_dim": 24,
        "sample_size": 16,
    },
    "pixart_alpha": _PIXART_TINY,
    "pixart_sigma": _PIXART_TINY,
}

# FLUX variants: config changes on top of dev
_FLUX_VARIANTS: dict[str, dict[str, Any]] = {
    "dev": {},
    "schnell": {"guidance_embeds": False},
    "fill": {"in_channels": 384, "out_channels": 64},
    "depth": {"in_channels": 128, "out_channels": 64},
}


# ----------------------------------------------------------------------------------------------- helpers
def _diffusers_cls(name: str) -> Any:
    import diffusers

    return getattr(diffusers, name)


def _full_dtype(dtype: torch.dtype | None, size: Size) -> torch.dtype:
    if dtype is not None:
        return dtype
    return torch.float32 if size == "tiny" else torch.float16


def materialize(meta_sd: dict[str, torch.Tensor], *, size: Size, seed: int, dtype: torch.dtype) -> TensorDict:
    """Shapes of ``meta_sd`` -> meta tensors (``full``) or seeded N(0, 0.02²) values (``tiny``), in key order."""
    if size == "full":
        return {k: torch.empty(tuple(v.shape), dtype=dtype, device="meta") for k, v in meta_sd.items()}
    gen = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(tuple(v.shape), generator=gen) * 0.02).to(dtype) for k, v in meta_sd.items()}


_META_CACHE: dict[str, dict[str, torch.Tensor]] = {}


def _meta_state_dict(
    factory: Callable[[], torch.nn.Module], key: str | None = None
) -> dict[str, torch.Tensor]:
    """State dict of ``factory()`` built on the meta device; cached under ``key`` when given."""
    if key is not None and key in _META_CACHE:
        return dict(_META_CACHE[key])
    with torch.device("meta"):
        sd = factory().state_dict()
    if key is not None:
        _META_CACHE[key] = sd
    return dict(sd)


def meta_state_dict(cls_name: str, cfg: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Meta-device state dict of diffusers class ``cls_name`` built with ``cfg`` (cached)."""
    cls = _diffusers_cls(cls_name)
    return _meta_state_dict(lambda: cls(**cfg), f"diffusers:{cls_name}:{sorted(cfg.items())!r}")


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    """(shift, scale) <-> (scale, shift) along dim 0; its own inverse."""
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def _block_ids(sd: dict[str, Any], prefix: str) -> list[int]:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in sd if (m := pat.match(k))})


def _check_consumed(src: dict[str, Any], used: set[str], family: str) -> None:
    left = sorted(set(src) - used)
    if left:
        raise AssertionError(f"{family}: diffusers keys not mapped to the original layout: {left[:8]}")


# ----------------------------------------------------------------------------------------------- configs
def denoiser_config(
    family: str, *, size: Size = "tiny", variant: str | None = None
) -> tuple[str, dict[str, Any]]:
    """(diffusers class name, config kwargs) for ``family`` at ``size``; ``variant`` only for FLUX."""
    if family in _EXTRA:
        cls, cfg = _EXTRA[family]
    elif family in FAMILIES and (family if family != "flux" else "flux_dev") in DENOISERS:
        cls, cfg = DENOISERS[family if family != "flux" else "flux_dev"]
    else:
        raise ValueError(f"unknown DiT family {family!r}; expected one of {FAMILIES}")
    cfg = dict(cfg)
    if family == "flux":
        if (variant or "dev") not in _FLUX_VARIANTS:
            raise ValueError(f"unknown FLUX variant {variant!r}; expected one of {tuple(_FLUX_VARIANTS)}")
        cfg.update(_FLUX_VARIANTS[variant or "dev"])
    elif variant is not None:
        raise ValueError(f"family {family!r} has no variants")
    if size == "tiny":
        cfg.update(_TINY[family])
    elif size != "full":
        raise ValueError(f"size must be 'tiny' or 'full', not {size!r}")
    return cls, cfg


class _Renamer:
    """Builds a renamed state dict while recording which source keys were used (to catch leftovers)."""

    def __init__(self, sd: TensorDict):
        self.sd = sd
        self.out: TensorDict = {}
        self.used: set[str] = set()

    def take(self, key: str) -> torch.Tensor:
        self.used.add(key)
        return self.sd[key]

    def put(self, dst: str, src: str) -> None:
        self.out[dst] = self.take(src)


# ----------------------------------------------------------------------------------------------- SD3
def sd3_to_original(sd: TensorDict) -> TensorDict:
    """diffusers SD3Transformer2DModel state dict -> SD3 single-file keys (no ``model.diffusion_model.``)."""
    r = _Renamer(sd)
    out, used, take, put = r.out, r.used, r.take, r.put

    out["pos_embed"] = take("pos_embed.pos_embed")
    for p in ("weight", "bias"):
        put(f"x_embedder.proj.{p}", f"pos_embed.proj.{p}")
        put(f"t_embedder.mlp.0.{p}", f"time_text_embed.timestep_embedder.linear_1.{p}")
        put(f"t_embedder.mlp.2.{p}", f"time_text_embed.timestep_embedder.linear_2.{p}")
        put(f"y_embedder.mlp.0.{p}", f"time_text_embed.text_embedder.linear_1.{p}")
        put(f"y_embedder.mlp.2.{p}", f"time_text_embed.text_embedder.linear_2.{p}")
        put(f"context_embedder.{p}", f"context_embedder.{p}")
        put(f"final_layer.linear.{p}", f"proj_out.{p}")
        out[f"final_layer.adaLN_modulation.1.{p}"] = _swap_halves(take(f"norm_out.linear.{p}"))

    blocks = _block_ids(sd, "transformer_blocks.")
    last = blocks[-1]
    for i in blocks:
        d, x, c = f"transformer_blocks.{i}.", f"joint_blocks.{i}.x_block.", f"joint_blocks.{i}.context_block."
        for p in ("weight", "bias"):
            out[f"{x}attn.qkv.{p}"] = torch.cat([take(f"{d}attn.to_{n}.{p}") for n in "qkv"])
            out[f"{c}attn.qkv.{p}"] = torch.cat([take(f"{d}attn.add_{n}_proj.{p}") for n in "qkv"])
            put(f"{x}attn.proj.{p}", f"{d}attn.to_out.0.{p}")
            put(f"{x}adaLN_modulation.1.{p}", f"{d}norm1.linear.{p}")
            put(f"{x}mlp.fc1.{p}", f"{d}ff.net.0.proj.{p}")
            put(f"{x}mlp.fc2.{p}", f"{d}ff.net.2.{p}")
            if i == last:  # context_pre_only: AdaLayerNormContinuous, (scale, shift) order in diffusers
                out[f"{c}adaLN_modulation.1.{p}"] = _swap_halves(take(f"{d}norm1_context.linear.{p}"))
            else:
                put(f"{c}attn.proj.{p}", f"{d}attn.to_add_out.{p}")
                put(f"{c}adaLN_modulation.1.{p}", f"{d}norm1_context.linear.{p}")
                put(f"{c}mlp.fc1.{p}", f"{d}ff_context.net.0.proj.{p}")
                put(f"{c}mlp.fc2.{p}", f"{d}ff_context.net.2.{p}")
            if f"{d}attn2.to_q.weight" in sd:  # MMDiT-X dual attention (SD3.5 medium)
                out[f"{x}attn2.qkv.{p}"] = torch.cat([take(f"{d}attn2.to_{n}.{p}") for n in "qkv"])
                put(f"{x}attn2.proj.{p}", f"{d}attn2.to_out.0.{p}")
        if f"{d}attn.norm_q.weight" in sd:  # qk_norm="rms_norm" (SD3.5)
            put(f"{x}attn.ln_q.weight", f"{d}attn.norm_q.weight")
            put(f"{x}attn.ln_k.weight", f"{d}attn.norm_k.weight")
            put(f"{c}attn.ln_q.weight", f"{d}attn.norm_added_q.weight")
            put(f"{c}attn.ln_k.weight", f"{d}attn.norm_added_k.weight")
            if f"{d}attn2.norm_q.weight" in sd:
                put(f"{x}attn2.ln_q.weight", f"{d}attn2.norm_q.weight")
                put(f"{x}attn2.ln_k.weight", f"{d}attn2.norm_k.weight")
    _check_consumed(sd, used, "sd3")
    return out


# ----------------------------------------------------------------------------------------------- FLUX
def flux_to_original(sd: TensorDict) -> TensorDict:
    """diffusers FluxTransformer2DModel state dict -> BFL single-file keys (bare ``double_blocks.N`` ...)."""
    r = _Renamer(sd)
    out, used, take, put = r.out, r.used, r.take, r.put

    emb = {"time_in": "timestep_embedder", "vector_in": "text_embedder", "guidance_in": "guidance_embedder"}
    for p in ("weight", "bias"):
        for orig, dif in emb.items():
            if f"time_text_embed.{dif}.linear_1.{p}" in sd:
                put(f"{orig}.in_layer.{p}", f"time_text_embed.{dif}.linear_1.{p}")
                put(f"{orig}.out_layer.{p}", f"time_text_embed.{dif}.linear_2.{p}")
        put(f"txt_in.{p}", f"context_embedder.{p}")
        put(f"img_in.{p}", f"x_embedder.{p}")
    for i in _block_ids(sd, "transformer_blocks."):
        d, o = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for p in ("weight", "bias"):
            put(f"{o}img_mod.lin.{p}", f"{d}norm1.linear.{p}")
            put(f"{o}txt_mod.lin.{p}", f"{d}norm1_context.linear.{p}")
            out[f"{o}img_attn.qkv.{p}"] = torch.cat([take(f"{d}attn.to_{n}.{p}") for n in "qkv"])
            out[f"{o}txt_attn.qkv.{p}"] = torch.cat([take(f"{d}attn.add_{n}_proj.{p}") for n in "qkv"])
            put(f"{o}img_attn.proj.{p}", f"{d}attn.to_out.0.{p}")
            put(f"{o}txt_attn.proj.{p}", f"{d}attn.to_add_out.{p}")
            put(f"{o}img_mlp.0.{p}", f"{d}ff.net.0.proj.{p}")
            put(f"{o}img_mlp.2.{p}", f"{d}ff.net.2.{p}")
            put(f"{o}txt_mlp.0.{p}", f"{d}ff_context.net.0.proj.{p}")
            put(f"{o}txt_mlp.2.{p}", f"{d}ff_context.net.2.{p}")
        put(f"{o}img_attn.norm.query_norm.scale", f"{d}attn.norm_q.weight")
        put(f"{o}img_attn.norm.key_norm.scale", f"{d}attn.norm_k.weight")
        put(f"{o}txt_attn.norm.query_norm.scale", f"{d}attn.norm_added_q.weight")
        put(f"{o}txt_attn.norm.key_norm.scale", f"{d}attn.norm_added_k.weight")
    for i in _block_ids(sd, "single_transformer_blocks."):
        d, o = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for p in ("weight", "bias"):
            put(f"{o}modulation.lin.{p}", f"{d}norm.linear.{p}")
            parts = [take(f"{d}attn.to_{n}.{p}") for n in "qkv"] + [take(f"{d}proj_mlp.{p}")]
            out[f"{o}linear1.{p}"] = torch.cat(parts)
            put(f"{o}linear2.{p}", f"{d}proj_out.{p}")
        put(f"{o}norm.query_norm.scale", f"{d}attn.norm_q.weight")
        put(f"{o}norm.key_norm.scale", f"{d}attn.norm_k.weight")
    for p in ("weight", "bias"):
        put(f"final_layer.linear.{p}", f"proj_out.{p}")
        out[f"final_layer.adaLN_modulation.1.{p}"] = _swap_halves(take(f"norm_out.linear.{p}"))
    _check_consumed(sd, used, "flux")
    return out


# ----------------------------------------------------------------------------------------------- AuraFlow
def auraflow_to_original(sd: TensorDict) -> TensorDict:
    """diffusers AuraFlowTransformer2DModel state dict -> fal AuraFlow single-file keys."""
    out: TensorDict = {}
    used: set[str] = set()

    def put(dst: str, src: str) -> None:
        used.add(src)
        out[dst] = sd[src]

    put("register_tokens", "register_tokens")
    put("positional_encoding", "pos_embed.pos_embed")
    put("init_x_linear.weight", "pos_embed.proj.weight")
    put("init_x_linear.bias", "pos_embed.proj.bias")
    put("cond_seq_linear.weight", "context_embedder.weight")
    for p in ("weight", "bias"):
        put(f"t_embedder.mlp.0.{p}", f"time_step_proj.linear_1.{p}")
        put(f"t_embedder.mlp.2.{p}", f"time_step_proj.linear_2.{p}")
    mlp = {"c_fc1": "linear_1", "c_fc2": "linear_2", "c_proj": "out_projection"}
    for i in _block_ids(sd, "joint_transformer_blocks."):
        d, o = f"joint_transformer_blocks.{i}.", f"double_layers.{i}."
        for orig, dif in (("mlpX", "ff"), ("mlpC", "ff_context")):
            for k, v in mlp.items():
                put(f"{o}{orig}.{k}.weight", f"{d}{dif}.{v}.weight")
        put(f"{o}modX.1.weight", f"{d}norm1.linear.weight")
        put(f"{o}modC.1.weight", f"{d}norm1_context.linear.weight")
        attn = {"w2q": "to_q", "w2k": "to_k", "w2v": "to_v", "w2o": "to_out.0"}
        attn |= {"w1q": "add_q_proj", "w1k": "add_k_proj", "w1v": "add_v_proj", "w1o": "to_add_out"}
        for k, v in attn.items():
            put(f"{o}attn.{k}.weight", f"{d}attn.{v}.weight")
    for i in _block_ids(sd, "single_transformer_blocks."):
        d, o = f"single_transformer_blocks.{i}.", f"single_layers.{i}."
        for k, v in mlp.items():
            put(f"{o}mlp.{k}.weight", f"{d}ff.{v}.weight")
        put(f"{o}modCX.1.weight", f"{d}norm1.linear.weight")
        for k, v in {"w1q": "to_q", "w1k": "to_k", "w1v": "to_v", "w1o": "to_out.0"}.items():
            put(f"{o}attn.{k}.weight", f"{d}attn.{v}.weight")
    put("final_linear.weight", "proj_out.weight")
    used.add("norm_out.linear.weight")
    out["modF.1.weight"] = _swap_halves(sd["norm_out.linear.weight"])
    _check_consumed(sd, used, "auraflow")
    return out


# ----------------------------------------------------------------------------------------------- HunyuanDiT / PixArt
# Original-repo names (Tencent HunyuanDiT ``hydit/modules/models.py``), diffusers prefix -> original prefix.
# Applied per key, first match wins; ``{i}`` is the block index. Fused projections are listed separately.
HUNYUAN_RENAMES: tuple[tuple[str, str], ...] = (
    ("text_embedder.linear_1.", "mlp_t5.0."),
    ("text_embedder.linear_2.", "mlp_t5.2."),
    ("pos_embed.proj.", "x_embedder.proj."),
    ("time_extra_emb.timestep_embedder.linear_1.", "t_embedder.mlp.0."),
    ("time_extra_emb.timestep_embedder.linear_2.", "t_embedder.mlp.2."),
    ("time_extra_emb.pooler.", "pooler."),
    ("time_extra_emb.style_embedder.", "style_embedder."),
    ("time_extra_emb.extra_embedder.linear_1.", "extra_embedder.0."),
    ("time_extra_emb.extra_embedder.linear_2.", "extra_embedder.2."),
    ("proj_out.", "final_layer.linear."),
    ("blocks.{i}.norm1.linear.", "blocks.{i}.default_modulation.1."),
    ("blocks.{i}.norm1.norm.", "blocks.{i}.norm1."),
    ("blocks.{i}.attn1.norm_q.", "blocks.{i}.attn1.q_norm."),
    ("blocks.{i}.attn1.norm_k.", "blocks.{i}.attn1.k_norm."),
    ("blocks.{i}.attn1.to_out.0.", "blocks.{i}.attn1.out_proj."),
    ("blocks.{i}.attn2.to_q.", "blocks.{i}.attn2.q_proj."),
    ("blocks.{i}.attn2.norm_q.", "blocks.{i}.attn2.q_norm."),
    ("blocks.{i}.attn2.norm_k.", "blocks.{i}.attn2.k_norm."),
    ("blocks.{i}.attn2.to_out.0.", "blocks.{i}.attn2.out_proj."),
    (
        "blocks.{i}.norm2.",
        "blocks.{i}.norm3.",
    ),  # original: norm3 before cross-attention, norm2 before the MLP
    ("blocks.{i}.norm3.", "blocks.{i}.norm2."),
    ("blocks.{i}.ff.net.0.proj.", "blocks.{i}.mlp.fc1."),
    ("blocks.{i}.ff.net.2.", "blocks.{i}.mlp.fc2."),
    ("blocks.{i}.skip_norm.", "blocks.{i}.skip_norm."),
    ("blocks.{i}.skip_linear.", "blocks.{i}.skip_linear."),
    ("text_embedding_padding", "text_embedding_padding"),
)
# fused: original key <- concatenation of diffusers keys (dim 0)
HUNYUAN_FUSED: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "blocks.{i}.attn1.Wqkv.",
        ("blocks.{i}.attn1.to_q.", "blocks.{i}.attn1.to_k.", "blocks.{i}.attn1.to_v."),
    ),
    ("blocks.{i}.attn2.kv_proj.", ("blocks.{i}.attn2.to_k.", "blocks.{i}.attn2.to_v.")),
)

# Original-repo names (PixArt-alpha / PixArt-sigma ``PixArt`` / ``PixArtMS``).
PIXART_RENAMES: tuple[tuple[str, str], ...] = (
    ("pos_embed.proj.", "x_embedder.proj."),
    ("caption_projection.linear_1.", "y_embedder.y_proj.fc1."),
    ("caption_projection.linear_2.", "y_embedder.y_proj.fc2."),
    ("adaln_single.emb.timestep_embedder.linear_1.", "t_embedder.mlp.0."),
    ("adaln_single.emb.timestep_embedder.linear_2.", "t_embedder.mlp.2."),
    ("adaln_single.emb.resolution_embedder.linear_1.", "csize_embedder.mlp.0."),
    ("adaln_single.emb.resolution_embedder.linear_2.", "csize_embedder.mlp.2."),
    ("adaln_single.emb.aspect_ratio_embedder.linear_1.", "ar_embedder.mlp.0."),
    ("adaln_single.emb.aspect_ratio_embedder.linear_2.", "ar_embedder.mlp.2."),
    ("adaln_single.linear.", "t_block.1."),
    ("proj_out.", "final_layer.linear."),
    ("scale_shift_table", "final_layer.scale_shift_table"),
    ("transformer_blocks.{i}.scale_shift_table", "blocks.{i}.scale_shift_table"),
    ("transformer_blocks.{i}.attn1.to_out.0.", "blocks.{i}.attn.proj."),
    ("transformer_blocks.{i}.attn2.to_q.", "blocks.{i}.cross_attn.q_linear."),
    ("transformer_blocks.{i}.attn2.to_out.0.", "blocks.{i}.cross_attn.proj."),
    ("transformer_blocks.{i}.ff.net.0.proj.", "blocks.{i}.mlp.fc1."),
    ("transformer_blocks.{i}.ff.net.2.", "blocks.{i}.mlp.fc2."),
)
PIXART_FUSED: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "blocks.{i}.attn.qkv.",
        (
            "transformer_blocks.{i}.attn1.to_q.",
            "transformer_blocks.{i}.attn1.to_k.",
            "transformer_blocks.{i}.attn1.to_v.",
        ),
    ),
    (
        "blocks.{i}.cross_attn.kv_linear.",
        ("transformer_blocks.{i}.attn2.to_k.", "transformer_blocks.{i}.attn2.to_v."),
    ),
)


def _table_convert(
    sd: TensorDict,
    renames: tuple[tuple[str, str], ...],
    fused: tuple[tuple[str, tuple[str, ...]], ...],
    block_prefix: str,
    family: str,
    handled: Collection[str] = (),
) -> TensorDict:
    out: TensorDict = {}
    used: set[str] = set(handled)
    for i in _block_ids(sd, block_prefix):
        for dst, srcs in fused:
            for p in ("weight", "bias"):
                keys = [s.format(i=i) + p for s in srcs]
                if all(k in sd for k in keys):
                    out[dst.format(i=i) + p] = torch.cat([sd[k] for k in keys])
                    used.update(keys)
    for key, t in sd.items():
        if key in used:
            continue
        m = re.match(re.escape(block_prefix) + r"(\d+)\.", key)
        for src, dst in renames:
            if "{i}" in src:
                if m is None:
                    continue
                src, dst = src.format(i=m.group(1)), dst.format(i=m.group(1))
            if key.startswith(src):
                out[dst + key[len(src) :]] = t
                used.add(key)
                break
    _check_consumed(sd, used, family)
    return out


def hunyuandit_to_original(sd: TensorDict) -> TensorDict:
    """diffusers HunyuanDiT2DModel state dict -> original HunyuanDiT keys (``HUNYUAN_RENAMES``)."""
    final = ("norm_out.linear.weight", "norm_out.linear.bias")
    out = _table_convert(sd, HUNYUAN_RENAMES, HUNYUAN_FUSED, "blocks.", "hunyuandit", handled=final)
    for key in final:  # FinalLayer: (shift, scale) in the original, (scale, shift) in diffusers
        out[key.replace("norm_out.linear", "final_layer.adaLN_modulation.1")] = _swap_halves(sd[key])
    return out


def pixart_to_original(sd: TensorDict, *, y_tokens: int = 120, generator_seed: int = 0) -> TensorDict:
    """diffusers PixArtTransformer2DModel state dict -> original PixArt keys (``PIXART_RENAMES``).

    Adds ``y_embedder.y_embedding`` (the learned null caption, ``[y_tokens, caption_channels]``; α 120, Σ 300),
    which diffusers does not keep."""
    out = _table_convert(sd, PIXART_RENAMES, PIXART_FUSED, "transformer_blocks.", "pixart")
    w = sd["caption_projection.linear_1.weight"]
    shape = (y_tokens, w.shape[1])
    if w.device.type == "meta":
        out["y_embedder.y_embedding"] = torch.empty(shape, dtype=w.dtype, device="meta")
    else:
        gen = torch.Generator().manual_seed(generator_seed + 1)
        out["y_embedder.y_embedding"] = (torch.randn(shape, generator=gen) * 0.02).to(w.dtype)
    return out


_TO_ORIGINAL: dict[str, Callable[[TensorDict], TensorDict]] = {
    "sd3": sd3_to_original,
    "sd35m": sd3_to_original,
    "sd35": sd3_to_original,
    "flux": flux_to_original,
    "auraflow": auraflow_to_original,
    "hunyuandit": hunyuandit_to_original,
}


# ----------------------------------------------------------------------------------------------- public builders
def build_denoiser(
    family: str,
    *,
    size: Size = "tiny",
    layout: Layout = "original",
    seed: int = 0,
    variant: str | None = None,
    dtype: torch.dtype | None = None,
) -> TensorDict:
    """State dict of a DiT-family denoiser (keys without any ``model.diffusion_model.`` prefix).

    ``dtype`` defaults to float32 (tiny) / float16 (full)."""
    cls_name, cfg = denoiser_config(family, size=size, variant=variant)
    meta = meta_state_dict(cls_name, cfg)
    sd = materialize(meta, size=size, seed=seed, dtype=_full_dtype(dtype, size))
    if layout == "diffusers":
        return sd
    if layout != "original":
        raise ValueError(f"layout must be 'original' or 'diffusers', not {layout!r}")
    if family.startswith("pixart"):
        return pixart_to_original(sd, y_tokens=120 if family == "pixart_alpha" else 300, generator_seed=seed)
    return _TO_ORIGINAL[family](sd)


def text_encoder_meta_state_dict(name: str, size: Size) -> dict[str, torch.Tensor]:
    """Meta state dict of text encoder ``name`` (clip_l, clip_g, t5xxl / t5, openclip_h) as stored in files."""
    import transformers

    kind = {"t5xxl": "t5"}.get(name, name)
    cls_name, cfg = TEXT_ENCODERS[kind]
    cfg = dict(cfg)
    if size == "tiny":
        if kind == "t5":
            cfg.update(d_model=16, d_ff=32, d_kv=8, num_heads=2)
        else:
            cfg.update(hidden_size=16, intermediate_size=32, num_attention_heads=2, projection_dim=16)
    cls = getattr(transformers, cls_name)
    config_cls = transformers.T5Config if kind == "t5" else transformers.CLIPTextConfig
    sd = _meta_state_dict(lambda: cls(config_cls(**cfg)), f"transformers:{cls_name}:{sorted(cfg.items())!r}")
    if kind == "t5":
        sd.pop("encoder.embed_tokens.weight", None)  # tied to shared.weight, not stored
    elif cls_name == "CLIPTextModel":  # transformers >= 5.6 dropped the text_model wrapper
        sd = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in sd.items()}
    return sd


def build_text_encoders(
    names: Collection[str] = ("clip_l", "clip_g", "t5xxl"),
    *,
    size: Size = "tiny",
    seed: int = 0,
    prefix: str = "text_encoders.",
    dtype: torch.dtype | None = None,
) -> TensorDict:
    """Text encoders as SD3 / FLUX single files store them: ``{prefix}{name}.transformer.<transformers keys>``.

    clip_l: CLIPTextModel (no projection, as in the SD3 files); clip_g: CLIPTextModelWithProjection;
    t5xxl: T5EncoderModel (``shared.weight``, no tied ``encoder.embed_tokens.weight``)."""
    out: TensorDict = {}
    for j, name in enumerate(names):
        sd = materialize(
            text_encoder_meta_state_dict(name, size),
            size=size,
            seed=seed + 101 * (j + 1),
            dtype=_full_dtype(dtype, size),
        )
        out.update({f"{prefix}{name}.transformer.{k}": v for k, v in sd.items()})
    return out


def build_text_encoders_sd3(
    size: Size = "tiny", seed: int = 0, dtype: torch.dtype | None = None
) -> TensorDict:
    """``text_encoders.{clip_l,clip_g,t5xxl}.*`` as in ``sd3_medium_incl_clips_t5xxlfp16.safetensors``."""
    return build_text_encoders(("clip_l", "clip_g", "t5xxl"), size=size, seed=seed, dtype=dtype)


_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_to_ldm(sd: TensorDict, num_levels: int = 4) -> TensorDict:
    """diffusers AutoencoderKL keys -> LDM ``first_stage_model`` keys (no prefix); attention linears -> 1x1 convs."""
    out: TensorDict = {}
    for key, t in sd.items():
        new = key
        if m := re.match(r"(encoder|decoder)\.conv_norm_out\.(.*)", key):
            new = f"{m[1]}.norm_out.{m[2]}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.*)", key):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{_VAE_RESNET.get(m[3], m[3])}.{m[4]}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.*)", key):
            new = f"decoder.up.{num_levels - 1 - int(m[1])}.block.{m[2]}.{_VAE_RESNET.get(m[3], m[3])}.{m[4]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            new = f"decoder.up.{num_levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(\w+)\.(.*)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{_VAE_RESNET.get(m[3], m[3])}.{m[4]}"
        elif m := re.match(
            r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.*)", key
        ):
            new = f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}"
            if t.dim() == 2:
                t = t.reshape(*t.shape, 1, 1)
        out[new] = t
    return out


def build_vae(
    kind: str = "vae16",
    *,
    size: Size = "tiny",
    seed: int = 0,
    prefix: str = "first_stage_model.",
    layout: Layout = "original",
    dtype: torch.dtype | None = None,
) -> TensorDict:
    """AutoencoderKL with ``configs.VAES[kind]``; ``original`` = LDM keys under ``prefix``."""
    cfg = dict(VAES[kind])
    if size == "tiny":
        cfg.update(block_out_channels=[8, 16, 16, 16], norm_num_groups=4)
    sd = materialize(
        meta_state_dict("AutoencoderKL", cfg), size=size, seed=seed + 7, dtype=_full_dtype(dtype, size)
    )
    if layout == "diffusers":
        return sd
    return {prefix + k: v for k, v in vae_to_ldm(sd, len(cfg["block_out_channels"])).items()}


def build_vae16(size: Size = "tiny", seed: int = 0, dtype: torch.dtype | None = None) -> TensorDict:
    """16-channel SD3 / FLUX VAE in LDM layout under ``first_stage_model.``."""
    return build_vae("vae16", size=size, seed=seed, dtype=dtype)


def build_single_file(
    family: str,
    size: Size = "tiny",
    seed: int = 0,
    with_encoders: bool = False,
    with_vae: bool = False,
    variant: str | None = None,
    *,
    denoiser_prefix: str | None = None,
    dtype: torch.dtype | None = None,
) -> TensorDict:
    """A single-file checkpoint as released: denoiser in original layout, optionally encoders / VAE.

    SD3 family: ``model.diffusion_model.*`` + ``text_encoders.{clip_l,clip_g,t5xxl}.*`` + ``first_stage_model.*``.
    FLUX: bare denoiser keys (``denoiser_prefix`` to override) + ``text_encoders.{clip_l,t5xxl}.*`` + ``vae.*``.
    Other families: bare denoiser keys only (encoders / VAE are not bundled in their releases)."""
    is_sd3 = family in SD3_FAMILIES
    if (with_encoders or with_vae) and not (is_sd3 or family == "flux"):
        raise ValueError(f"{family!r} single files carry no text encoders / VAE")
    prefix = denoiser_prefix if denoiser_prefix is not None else ("model.diffusion_model." if is_sd3 else "")
    den = build_denoiser(family, size=size, layout="original", seed=seed, variant=variant, dtype=dtype)
    out = {prefix + k: v for k, v in den.items()}
    if with_encoders:
        names = ("clip_l", "clip_g", "t5xxl") if is_sd3 else ("clip_l", "t5xxl")
        out.update(build_text_encoders(names, size=size, seed=seed, dtype=dtype))
    if with_vae:
        out.update(
            build_vae(
                "vae16", size=size, seed=seed, prefix="first_stage_model." if is_sd3 else "vae.", dtype=dtype
            )
        )
    return out


# ----------------------------------------------------------------------------------------------- UNet names / ControlNet
_RESNET_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_TOP_LDM = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def unet_name_to_ldm(name: str, *, layers_per_block: int = 2, up_attn_blocks: Collection[int] = ()) -> str:
    """diffusers UNet2DConditionModel / ControlNetModel module or parameter name -> LDM name.

    ``up_attn_blocks``: indices of up blocks that have attentions (their upsampler sits at ``.2``, else ``.1``)."""
    n = layers_per_block + 1

    def resnet(rest: str) -> str:
        head, _, tail = rest.partition(".")
        new = _RESNET_LDM.get(head, head)
        return f"{new}.{tail}" if tail else new

    for src, dst in _TOP_LDM.items():
        if name == src or name.startswith(src + "."):
            return dst + name[len(src) :]
    if m := re.match(r"down_blocks\.(\d+)\.(attentions|resnets)\.(\d+)(?:\.(.*))?$", name):
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4] or ""
        base = f"input_blocks.{1 + b * n + j}"
        if kind == "attentions":
            return f"{base}.1" + (f".{rest}" if rest else "")
        return f"{base}.0" + (f".{resnet(rest)}" if rest else "")
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv(.*)$", name):
        return f"input_blocks.{(int(m[1]) + 1) * n}.0.op{m[2]}"
    if m := re.match(r"mid_block\.(attentions|resnets)\.(\d+)(?:\.(.*))?$", name):
        kind, j, rest = m[1], int(m[2]), m[3] or ""
        if kind == "attentions":
            return "middle_block.1" + (f".{rest}" if rest else "")
        return f"middle_block.{2 * j}" + (f".{resnet(rest)}" if rest else "")
    if m := re.match(r"up_blocks\.(\d+)\.(attentions|resnets)\.(\d+)(?:\.(.*))?$", name):
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4] or ""
        base = f"output_blocks.{b * n + j}"
        if kind == "attentions":
            return f"{base}.1" + (f".{rest}" if rest else "")
        return f"{base}.0" + (f".{resnet(rest)}" if rest else "")
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv(.*)$", name):
        b = int(m[1])
        return f"output_blocks.{b * n + layers_per_block}.{2 if b in up_attn_blocks else 1}.conv{m[2]}"
    return name


def controlnet_config(kind: str = "sd1", size: Size = "tiny") -> dict[str, Any]:
    """ControlNetModel kwargs mirroring the SD1 / SDXL UNet encoder (``tiny``: small widths, same layout)."""
    import inspect

    from diffusers import ControlNetModel

    base = {"sd1": "sd1", "sdxl": "sdxl"}.get(kind)
    if base is None:
        raise ValueError(f"ControlNet kind must be 'sd1' or 'sdxl', not {kind!r}")
    allowed = set(inspect.signature(ControlNetModel.__init__).parameters)
    cfg = {k: v for k, v in DENOISERS[base][1].items() if k in allowed}
    if size == "tiny":
        cfg.update(
            cross_attention_dim=32, conditioning_embedding_out_channels=(4, 8, 8, 16), norm_num_groups=8
        )
        if kind == "sd1":
            cfg.update(block_out_channels=(16, 32, 32, 32), attention_head_dim=8)
        else:
            cfg.update(
                block_out_channels=(16, 32, 32),
                attention_head_dim=[2, 4, 4],
                addition_time_embed_dim=8,
                projection_class_embeddings_input_dim=32 + 6 * 8,
            )
    return cfg


def controlnet_to_original(sd: TensorDict, *, layers_per_block: int = 2) -> TensorDict:
    """diffusers ControlNetModel state dict -> LDM ``control_model.*`` keys."""
    out: TensorDict = {}
    n_hint = len(_block_ids(sd, "controlnet_cond_embedding.blocks."))
    for key, t in sd.items():
        if m := re.match(r"controlnet_cond_embedding\.blocks\.(\d+)\.(.*)", key):
            new = f"input_hint_block.{2 * (int(m[1]) + 1)}.{m[2]}"
        elif m := re.match(r"controlnet_cond_embedding\.conv_in\.(.*)", key):
            new = f"input_hint_block.0.{m[1]}"
        elif m := re.match(r"controlnet_cond_embedding\.conv_out\.(.*)", key):
            new = f"input_hint_block.{2 * (n_hint + 1)}.{m[1]}"
        elif m := re.match(r"controlnet_down_blocks\.(\d+)\.(.*)", key):
            new = f"zero_convs.{m[1]}.0.{m[2]}"
        elif m := re.match(r"controlnet_mid_block\.(.*)", key):
            new = f"middle_block_out.0.{m[1]}"
        else:
            new = unet_name_to_ldm(key, layers_per_block=layers_per_block)
        out["control_model." + new] = t
    return out


def build_controlnet(
    kind: str = "sd1",
    size: Size = "tiny",
    seed: int = 0,
    layout: Layout = "original",
    *,
    dtype: torch.dtype | None = None,
) -> TensorDict:
    """ControlNet for SD1 / SDXL: ``control_model.*`` (original) or diffusers ``ControlNetModel`` keys."""
    cfg = controlnet_config(kind, size)
    sd = materialize(
        meta_state_dict("ControlNetModel", cfg), size=size, seed=seed, dtype=_full_dtype(dtype, size)
    )
    if layout == "diffusers":
        return sd
    return controlnet_to_original(sd, layers_per_block=cfg.get("layers_per_block", 2))
