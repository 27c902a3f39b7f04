"""The one registry of architecture knowledge: components, key conventions, structural features, families.

Everything here is data. Detection (``sdlens.arch.detect``), inspect, diff and the other commands consult these
tables; adding a family or a layout means adding rows, not code paths. Sources: architectures.md §3-§4.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdlens.arch import families as _families
from sdlens.arch import record as _record

# --------------------------------------------------------------------------- components

COMPONENT_LABELS: dict[str, str] = {
    "denoiser": "denoiser",
    "clip_l": "CLIP-L",
    "openclip_h": "OpenCLIP-H",
    "clip_g": "CLIP-G",
    "t5": "T5-XXL",
    "pile_t5_xl": "Pile-T5-XL",
    "mt5_xl": "mT5-XL",
    "hunyuan_bert": "CLIP-zh (BERT)",
    "umt5_xxl": "umT5-XXL",
    "llama31_8b": "Llama-3.1-8B",
    "clip_vision_h": "CLIP ViT-H (image encoder)",
    "gemma2_2b": "Gemma-2 2B",
    "clip_l_vision": "CLIP-L vision",
    "text_encoder": "text encoder",
    "vae_encoder": "VAE encoder",
    "vae_decoder": "VAE decoder",
    "ema": "EMA",
    "controlnet": "ControlNet",
    "schedule": "schedule buffers",
    "other": "other",
}
TEXT_ENCODER_KINDS = ("clip_l", "openclip_h", "clip_g", "t5")
# the order components are listed in, everywhere (reports, diffs, matrix groups)
COMPONENT_ORDER: tuple[str, ...] = (
    "denoiser", "controlnet", "clip_l", "openclip_h", "clip_g", "t5", "text_encoder",
    "vae", "vae_encoder", "vae_decoder", "ema", "schedule", "markers", "other",
)  # fmt: skip


def component_rank(component: str) -> int:
    """Where ``component`` (``clip_l@text_encoder_2.`` counts as ``clip_l``) stands in COMPONENT_ORDER; others last."""
    base = component.split("@")[0]
    return COMPONENT_ORDER.index(base) if base in COMPONENT_ORDER else len(COMPONENT_ORDER)


@dataclass(frozen=True)
class Prefix:
    """Keys starting with ``prefix`` belong to ``component`` and are written in ``convention``."""

    prefix: str
    component: (
        str  # a COMPONENT_LABELS key, "vae" (split into encoder/decoder) or "te?" (kind from structure)
    )
    convention: str
    exclude: str | None = None  # relative keys matching this regex are not part of it


# Longest prefix wins (sorted at lookup), so the NAI rule below never shadows the standard CLIP one.
PREFIXES: tuple[Prefix, ...] = (
    Prefix("model.diffusion_model.", "denoiser", "ldm"),
    Prefix("model_ema.", "ema", "ldm"),
    Prefix("first_stage_model.", "vae", "ldm"),
    Prefix("cond_stage_model.transformer.text_model.", "clip_l", "ldm"),
    Prefix("cond_stage_model.transformer.", "clip_l", "nai"),
    Prefix("cond_stage_model.model.", "openclip_h", "ldm"),
    Prefix("conditioner.embedders.0.transformer.", "clip_l", "sgm"),
    Prefix("conditioner.embedders.0.model.", "clip_g", "sgm"),
    Prefix("conditioner.embedders.1.model.", "clip_g", "sgm"),
    Prefix("text_encoders.clip_l.", "clip_l", "comfy"),
    Prefix("text_encoders.clip_g.", "clip_g", "comfy"),
    Prefix("text_encoders.t5xxl.", "t5", "comfy"),
    Prefix("control_model.", "controlnet", "ldm"),
    Prefix("unet.", "denoiser", "diffusers"),
    Prefix("prior.", "denoiser", "diffusers"),  # Stable Cascade prior pipelines (StableCascadeUNet stage C)
    Prefix("transformer.", "denoiser", "diffusers", exclude=r"^resblocks\."),
    Prefix("controlnet.", "controlnet", "diffusers"),
    Prefix("vae.", "vae", "diffusers"),
    Prefix("text_encoder.", "te?", "diffusers"),
    Prefix("text_encoder_2.", "te?", "diffusers"),
    Prefix("text_encoder_3.", "te?", "diffusers"),
)

# LDM noise-schedule buffers stored at the top level of SD1/SD2 checkpoints, shape (1000,)
SCHEDULE_KEYS: frozenset[str] = frozenset(
    {
        "betas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
        "logvar",
    }
)


@dataclass(frozen=True)
class ZeroByDesign:
    """Tensors (raw keys matching ``pattern``) that the reference code makes all-zero in a released or freshly
    built model of ``families`` (``None``: any family), so ``--scan`` reports them as information, not problems."""

    pattern: str
    why: str
    families: tuple[str, ...] | None = None


ZERO_BY_DESIGN: tuple[ZeroByDesign, ...] = (
    # CompVis/Stability ldm DDPM: self.logvar = torch.full((num_timesteps,), logvar_init), logvar_init 0,
    # learn_logvar False in the released v1 / v2 inference configs
    ZeroByDesign(
        r"^logvar$", "LDM per-timestep log-variance buffer (logvar_init = 0, not learned)", ("sd1", "sd2")
    ),
    # ldm LitEma: num_updates starts at 0 and is only counted when use_num_upates; converted files keep 0
    ZeroByDesign(r"(^|\.)num_updates$", "EMA update counter (0 when updates were not counted)"),
    # ControlNet (Zhang et al. 2023): zero_module() convolutions, all zero until the ControlNet is trained
    ZeroByDesign(
        r"(^|\.)(zero_convs\.\d+\.0|middle_block_out\.0|input_hint_block\.14)\.(weight|bias)$",
        "ControlNet zero convolution (zero-initialised; zero in an untrained ControlNet)",
    ),
    ZeroByDesign(
        r"(^|\.)(controlnet_down_blocks\.\d+|controlnet_mid_block|controlnet_cond_embedding\.conv_out)"
        r"\.(weight|bias)$",
        "ControlNet zero convolution (zero-initialised; zero in an untrained ControlNet)",
    ),
)

# Which part of a model each component is: a file holding a single part (a VAE, the text encoders, a bare
# denoiser) is compared with that part of a full checkpoint. Components not listed are not parts.
COMPONENT_PARTS: dict[str, str] = {
    "denoiser": "denoiser",
    "controlnet": "ControlNet",
    "ema": "EMA",
    "vae_encoder": "VAE",
    "vae_decoder": "VAE",
    **{kind: "text encoders" for kind in (*TEXT_ENCODER_KINDS, "text_encoder")},
}

# SDXL-era marker keys (architectures.md §4)
MARKER_KEYS: dict[str, str] = {
    "v_pred": "v-prediction marker",
    "ztsnr": "zero terminal SNR marker",
    "edm_mean": "EDM latent mean (Playground v2.5 style)",
    "edm_std": "EDM latent std (Playground v2.5 style)",
    "edm_vpred.sigma_max": "EDM v-prediction sigma_max",
    "edm_vpred.sigma_min": "EDM v-prediction sigma_min",
}

# A whole file with no known prefix: which component its bare keys make up (first match wins).
BARE_SIGNATURES: tuple[tuple[str, str, str], ...] = (
    # (regex that some key must match, component, convention)
    (r"^controlnet_cond_embedding\.", "controlnet", "diffusers"),
    # each record's own bare-file signatures (families/*.py ``bare_keys``), then the generic layouts
    *((rx, "denoiser", conv) for f in _families.FAMILIES for rx, conv in f.bare_keys),
    (
        r"^(down_blocks\.\d+\.(resnets|attentions)|transformer_blocks\.\d+\.|single_transformer_blocks\.|joint_transformer_blocks\.)",
        "denoiser",
        "diffusers",
    ),
    (r"^blocks\.\d+\.attn1\.", "denoiser", "diffusers"),
    (r"^(encoder|decoder)\.(down|up|mid|conv_in|down_blocks|up_blocks|mid_block)", "vae", "bare"),
    (r"^text_model\.encoder\.layers\.\d+\.", "te?", "bare"),
    (r"^transformer\.resblocks\.\d+\.", "te?", "bare"),
    (r"^(encoder\.block\.\d+\.layer|shared\.weight$)", "t5", "bare"),
)

# How a text encoder's kind is read from its own (relative) keys when its slot does not say it.
# (regex capturing a layer index, layer count -> kind); widths are not used, so tiny models resolve too.
TEXT_ENCODER_LAYERS: tuple[tuple[str, dict[int, str]], ...] = (
    (
        r"^(?:text_model\.)?encoder\.layers\.(\d+)\.",
        {12: "clip_l", 23: "openclip_h", 24: "openclip_h", 32: "clip_g"},
    ),
    (r"^transformer\.resblocks\.(\d+)\.", {12: "clip_l", 23: "openclip_h", 24: "openclip_h", 32: "clip_g"}),
    (r"^encoder\.block\.(\d+)\.", {24: "t5", 12: "t5"}),
)
# the layout each text encoder kind is written in, per relative-key signature
TEXT_ENCODER_LAYOUTS: tuple[tuple[str, str], ...] = (
    (r"^text_model\.", "hf"),
    (r"^transformer\.resblocks\.", "open_clip"),
    (r"^encoder\.layers\.", "hf-nai"),
    (r"^encoder\.block\.", "hf"),
)

# --------------------------------------------------------------------------- families (views of the records)

# The records live in sdlens.arch.families, one module per architecture; these names are views of them for
# the code that wants a table.
Feature = _record.Feature
Family = _record.Family
Variant = _record.Variant
FAMILIES: tuple[Family, ...] = _families.FAMILIES
FAMILY_BY_ID: dict[str, Family] = _families.BY_ID
DENOISER_FEATURES: tuple[Feature, ...] = _families.features()
DERIVED_FEATURES: dict[str, Any] = _families.derived()

# --------------------------------------------------------------------------- layer types

# What kind of layer a key (or a kohya module name, with "_" for ".") belongs to; first match wins.
LAYER_TYPES: tuple[tuple[str, str], ...] = (
    ("attn1", r"attn1[._]"),
    ("attn2", r"attn2[._]"),
    (
        "attn",
        r"(attn|attention|self_attn|SelfAttention|EncDecAttention)[._]|[._](qkv|to_[qkv]|in_proj|out_proj|w1[qkv]|w2[qkv])([._]|$)",
    ),
    (
        "ff",
        r"([._]ff[._]|ff_context|[._]mlp[._]|mlp_|[._]fc[12][._]|DenseReluDense|c_fc|c_proj|proj_mlp|linear[12][._])",
    ),
    ("norm", r"(norm|ln_|layer_norm|ln_final|final_layer_norm|group_norm)"),
    ("proj", r"(proj_in|proj_out|text_projection|proj[._])"),
    (
        "embedding",
        r"(embed|emb[._]|emb_layers|time_in|vector_in|guidance_in|txt_in|img_in|token_embedding|positional_embedding|label_emb|shared)",
    ),
    (
        "resnet/conv",
        r"(conv|resnets|in_layers|out_layers|skip_connection|nin_shortcut|op[._]|block_\d|downsample|upsample|input_blocks\.0\.0)",
    ),
)

# --------------------------------------------------------------------------- pipelines (sdlens arch)


def _pipeline_row(f: Family) -> dict[str, Any]:
    p = f.pipeline
    assert p is not None
    return {
        "family": f.id,
        "name": p.name,
        "aliases": p.aliases,
        "text_encoders": tuple((t.kind, t.tokens) for t in f.text_encoders),
        "vae": f.vae,
        "text_tokens": p.text_tokens,
        "cfg": p.cfg,
        "steps": p.steps,
        "res": p.res,
    }


# The released pipelines ``sdlens arch`` measures by default (architectures.md §1), keyed by family id.
PIPELINES: dict[str, dict[str, Any]] = {
    f.id: _pipeline_row(f) for f in FAMILIES if f.pipeline and f.pipeline.measured
}
