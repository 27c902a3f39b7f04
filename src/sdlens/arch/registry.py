"""The one registry of architecture knowledge: components, key conventions, structural features, families.

Everything here is data. Detection (``sdlens.arch.detect``), inspect, diff and the other commands consult these
tables; adding a family or a layout means adding rows, not code paths. Sources: architectures.md §3-§4.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# --------------------------------------------------------------------------- components

COMPONENT_LABELS: dict[str, str] = {
    "denoiser": "denoiser",
    "clip_l": "CLIP-L",
    "openclip_h": "OpenCLIP-H",
    "clip_g": "CLIP-G",
    "t5": "T5-XXL",
    "text_encoder": "text encoder",
    "vae_encoder": "VAE encoder",
    "vae_decoder": "VAE decoder",
    "ema": "EMA",
    "controlnet": "ControlNet",
    "schedule": "schedule buffers",
    "other": "other",
}
TEXT_ENCODER_KINDS = ("clip_l", "openclip_h", "clip_g", "t5")


@dataclass(frozen=True)
class Prefix:
    """Keys starting with ``prefix`` belong to ``component`` and are written in ``convention``."""

    prefix: str
    component: str  # a COMPONENT_LABELS key, "vae" (split into encoder/decoder) or "te?" (kind from structure)
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
    ZeroByDesign(r"^logvar$", "LDM per-timestep log-variance buffer (logvar_init = 0, not learned)",
                 ("sd1", "sd2")),
    # ldm LitEma: num_updates starts at 0 and is only counted when use_num_upates; converted files keep 0
    ZeroByDesign(r"(^|\.)num_updates$", "EMA update counter (0 when updates were not counted)"),
    # ControlNet (Zhang et al. 2023): zero_module() convolutions, all zero until the ControlNet is trained
    ZeroByDesign(r"(^|\.)(zero_convs\.\d+\.0|middle_block_out\.0|input_hint_block\.14)\.(weight|bias)$",
                 "ControlNet zero convolution (zero-initialised; zero in an untrained ControlNet)"),
    ZeroByDesign(r"(^|\.)(controlnet_down_blocks\.\d+|controlnet_mid_block|controlnet_cond_embedding\.conv_out)"
                 r"\.(weight|bias)$",
                 "ControlNet zero convolution (zero-initialised; zero in an untrained ControlNet)"),
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
    (r"^(double_blocks|single_blocks)\.\d+\.", "denoiser", "bare"),
    (r"^joint_blocks\.\d+\.", "denoiser", "bare"),
    (r"^(double_layers|single_layers)\.\d+\.", "denoiser", "bare"),
    (r"^mlp_t5\.0\.weight$", "denoiser", "bare"),
    (r"^t_block\.1\.weight$", "denoiser", "bare"),
    (r"^input_blocks\.0\.0\.weight$", "denoiser", "bare"),
    (r"^(down_blocks\.\d+\.(resnets|attentions)|transformer_blocks\.\d+\.|single_transformer_blocks\.|joint_transformer_blocks\.)", "denoiser", "diffusers"),
    (r"^blocks\.\d+\.attn1\.", "denoiser", "diffusers"),
    (r"^(encoder|decoder)\.(down|up|mid|conv_in|down_blocks|up_blocks|mid_block)", "vae", "bare"),
    (r"^text_model\.encoder\.layers\.\d+\.", "te?", "bare"),
    (r"^transformer\.resblocks\.\d+\.", "te?", "bare"),
    (r"^(encoder\.block\.\d+\.layer|shared\.weight$)", "t5", "bare"),
)

# How a text encoder's kind is read from its own (relative) keys when its slot does not say it.
# (regex capturing a layer index, layer count -> kind); widths are not used, so tiny models resolve too.
TEXT_ENCODER_LAYERS: tuple[tuple[str, dict[int, str]], ...] = (
    (r"^(?:text_model\.)?encoder\.layers\.(\d+)\.", {12: "clip_l", 23: "openclip_h", 24: "openclip_h", 32: "clip_g"}),
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

# --------------------------------------------------------------------------- structural features


@dataclass(frozen=True)
class Feature:
    """A fact read off a component's (relative) keys and shapes.

    ``op``: ``present`` (some key matches), ``dim`` (shape[arg] of the first match), ``ndim``,
    ``count`` (distinct values of the regex's first group), ``keys`` (number of matching keys).
    """

    name: str
    op: str
    pattern: str
    arg: int = 0


DENOISER_FEATURES: tuple[Feature, ...] = (
    # UNets, LDM layout and diffusers layout
    Feature("unet_ldm", "present", r"^input_blocks\.0\.0\.weight$"),
    Feature("unet_diffusers", "present", r"^down_blocks\.0\.resnets\.0\.conv1\.weight$"),
    Feature("in_channels", "dim", r"^(input_blocks\.0\.0|conv_in)\.weight$", 1),
    Feature("model_channels", "dim", r"^(input_blocks\.0\.0|conv_in)\.weight$", 0),
    Feature("context_dim", "dim", r"(^|\.)attn2\.to_k\.weight$", 1),
    Feature("proj_in_ndim", "ndim", r"(^|\.)proj_in\.weight$"),
    Feature("adm_in", "dim", r"^(label_emb\.0\.0|add_embedding\.linear_1)\.weight$", 1),
    Feature("input_blocks", "count", r"^input_blocks\.(\d+)\."),
    Feature("down_levels", "count", r"^down_blocks\.(\d+)\."),
    Feature("transformer_depth", "count", r"\.transformer_blocks\.(\d+)\."),
    # MMDiT (SD3 family): original and diffusers layouts
    Feature("joint_blocks", "count", r"^joint_blocks\.(\d+)\."),
    Feature("sd3_diffusers", "present", r"^transformer_blocks\.0\.norm1_context\.linear\.weight$"),
    Feature("sd3_diffusers_blocks", "count", r"^transformer_blocks\.(\d+)\.norm1_context\."),
    Feature("dual_attention", "present", r"^(joint_blocks\.\d+\.x_block\.attn2\.|transformer_blocks\.\d+\.attn2\.)"),
    Feature("pos_embed_len", "dim", r"^pos_embed(\.pos_embed)?$", 1),
    Feature("hidden", "dim", r"^(x_embedder\.proj|pos_embed\.proj|img_in|x_embedder)\.weight$", 0),
    # FLUX
        Feature("flux_double", "count", r"^double_blocks\.(\d+)\."),
    Feature("flux_single", "count", r"^single_blocks\.(\d+)\."),
    Feature("flux_diffusers_single", "count", r"^single_transformer_blocks\.(\d+)\.proj_mlp\."),
    Feature("dit_blocks", "count", r"^transformer_blocks\.(\d+)\."),
    Feature("img_in", "dim", r"^(img_in|x_embedder)\.weight$", 1),
    Feature("guidance_in", "present", r"^(guidance_in\.|time_text_embed\.guidance_embedder\.)"),
    # AuraFlow
    Feature("aura_double", "count", r"^(?:double_layers|joint_transformer_blocks)\.(\d+)\."),
    Feature("aura_single", "count", r"^(?:single_layers|single_transformer_blocks)\.(\d+)\."),
    Feature("aura", "present", r"^(double_layers\.0\.attn\.w1q\.weight|register_tokens)$"),
    # HunyuanDiT
    Feature("hunyuan", "present", r"^(mlp_t5\.0\.weight|text_embedder\.linear_1\.weight)$"),
    Feature("hunyuan_blocks", "count", r"^blocks\.(\d+)\."),
    # PixArt
    Feature("pixart", "present", r"^(t_block\.1\.weight|adaln_single\.linear\.weight)$"),
    Feature("pixart_ar", "present", r"^(ar_embedder\.|adaln_single\.emb\.aspect_ratio_embedder\.)"),
    Feature("pixart_blocks", "count", r"^(?:blocks|transformer_blocks)\.(\d+)\."),
)


# --------------------------------------------------------------------------- families


@dataclass(frozen=True)
class Family:
    """One architecture: what its denoiser looks like (``requires``), its released sizes (``standard``),
    and what else a complete single file carries."""

    id: str
    name: str
    requires: dict[str, Any]  # feature -> exact value, or (op, value) with op in {"ne", "ge", "le", "in"}
    standard: dict[str, Any] = field(default_factory=dict)  # released-model values (else: non-standard widths)
    denoiser_label: str = "UNet"
    text_encoders: tuple[str, ...] = ()
    latent_channels: int = 4
    config: str | None = None  # key in sdlens.arch.configs.DENOISERS
    notes: str = ""


def _unet(**kw: Any) -> dict[str, Any]:
    return {"unet": True, **kw}


FAMILIES: tuple[Family, ...] = (
    Family(
        "sd1",
        "SD1.x",
        _unet(proj_in_ndim=4, adm_in=None, levels=4),
        {"context_dim": 768, "model_channels": 320},
        text_encoders=("clip_l",),
        config="sd1",
    ),
    Family(
        "sd2",
        "SD2.x",
        _unet(proj_in_ndim=2, adm_in=None, levels=4),
        {"context_dim": 1024, "model_channels": 320},
        text_encoders=("openclip_h",),
        config="sd2",
    ),
    Family(
        "sdxl",
        "SDXL base",
        _unet(adm_in=("ne", None), levels=3),
        {"context_dim": 2048, "model_channels": 320, "adm_in": 2816, "transformer_depth": 10},
        text_encoders=("clip_l", "clip_g"),
        config="sdxl",
    ),
    Family(
        "sdxl_refiner",
        "SDXL refiner",
        _unet(adm_in=("ne", None), levels=4),
        {"context_dim": 1280, "model_channels": 384, "adm_in": 2560, "transformer_depth": 4},
        text_encoders=("clip_g",),
        config="sdxl_refiner",
    ),
    Family(
        "sd3",
        "SD3 medium",
        {"mmdit_blocks": 24, "dual_attention": False},
        {"pos_embed_len": 36864, "hidden": 1536},
        denoiser_label="MMDiT",
        text_encoders=("clip_l", "clip_g", "t5"),
        latent_channels=16,
        config="sd3",
    ),
    Family(
        "sd35m",
        "SD3.5 medium",
        {"mmdit_blocks": 24, "dual_attention": True},
        {"pos_embed_len": 147456, "hidden": 1536},
        denoiser_label="MMDiT-X",
        text_encoders=("clip_l", "clip_g", "t5"),
        latent_channels=16,
    ),
    Family(
        "sd35",
        "SD3.5 large",
        {"mmdit_blocks": 38},
        {"pos_embed_len": 36864, "hidden": 2432},
        denoiser_label="MMDiT",
        text_encoders=("clip_l", "clip_g", "t5"),
        latent_channels=16,
        config="sd35",
    ),
    Family(
        "flux_dev",
        "FLUX.1-dev",
        {"flux_blocks": (19, 38), "guidance_in": True},
        {"hidden": 3072, "img_in": 64},
        denoiser_label="DiT",
        text_encoders=("clip_l", "t5"),
        latent_channels=16,
        config="flux",
    ),
    Family(
        "flux_schnell",
        "FLUX.1-schnell",
        {"flux_blocks": (19, 38), "guidance_in": False},
        {"hidden": 3072, "img_in": 64},
        denoiser_label="DiT",
        text_encoders=("clip_l", "t5"),
        latent_channels=16,
        config="flux",
    ),
    Family(
        "auraflow",
        "AuraFlow",
        {"aura": True},
        {"aura_double": 4, "aura_single": 32},
        denoiser_label="DiT",
        latent_channels=4,
        config="auraflow",
    ),
    Family(
        "hunyuandit",
        "HunyuanDiT",
        {"hunyuan": True},
        {"hunyuan_blocks": 40},
        denoiser_label="DiT",
        latent_channels=4,
        config="hunyuandit",
    ),
    Family(
        "pixart_alpha",
        "PixArt-α",
        {"pixart": True, "pixart_ar": True},
        {"pixart_blocks": 28},
        denoiser_label="DiT",
        text_encoders=("t5",),
        latent_channels=4,
    ),
    Family(
        "pixart_sigma",
        "PixArt-Σ",
        {"pixart": True, "pixart_ar": False},
        {"pixart_blocks": 28},
        denoiser_label="DiT",
        text_encoders=("t5",),
        latent_channels=4,
    ),
)
FAMILY_BY_ID: dict[str, Family] = {f.id: f for f in FAMILIES}


@dataclass(frozen=True)
class Variant:
    """A variant of a family told by one feature's value (e.g. 9 input channels -> inpainting)."""

    families: tuple[str, ...]
    feature: str
    value: Any
    name: str


VARIANTS: tuple[Variant, ...] = (
    Variant(("sd1", "sd2", "sdxl"), "in_channels", 9, "inpainting"),
    Variant(("sd1", "sd2", "sdxl"), "in_channels", 8, "instruct-pix2pix"),
    Variant(("sd2",), "in_channels", 7, "x4 upscaler"),
    Variant(("flux_dev", "flux_schnell"), "img_in", 384, "Fill (inpainting)"),
    Variant(("flux_dev", "flux_schnell"), "img_in", 128, "Depth/Canny control"),
)

# Derived features: computed from the raw ones above (name -> function of the raw feature dict).
DERIVED_FEATURES: dict[str, Any] = {
    "unet": lambda f: bool(f.get("unet_ldm") or f.get("unet_diffusers")),
    # UNet resolution levels: LDM input_blocks = 1 + levels*3 - 1 (no downsampler at the last level)
    "levels": lambda f: (f["input_blocks"] + 1) // 3 if f.get("input_blocks") else f.get("down_levels"),
    "mmdit_blocks": lambda f: f.get("joint_blocks")
    or (f.get("sd3_diffusers_blocks") if not f.get("flux_diffusers_single") and not f.get("aura") else None)
    or None,
    "flux_blocks": lambda f: (
        (f.get("flux_double"), f.get("flux_single"))
        if f.get("flux_double")
        else ((f.get("dit_blocks"), f.get("flux_diffusers_single")) if f.get("flux_diffusers_single") else None)
    ),
}

# --------------------------------------------------------------------------- layer types

# What kind of layer a key (or a kohya module name, with "_" for ".") belongs to; first match wins.
LAYER_TYPES: tuple[tuple[str, str], ...] = (
    ("attn1", r"attn1[._]"),
    ("attn2", r"attn2[._]"),
    ("attn", r"(attn|attention|self_attn|SelfAttention|EncDecAttention)[._]|[._](qkv|to_[qkv]|in_proj|out_proj|w1[qkv]|w2[qkv])([._]|$)"),
    ("ff", r"([._]ff[._]|ff_context|[._]mlp[._]|mlp_|[._]fc[12][._]|DenseReluDense|c_fc|c_proj|proj_mlp|linear[12][._])"),
    ("norm", r"(norm|ln_|layer_norm|ln_final|final_layer_norm|group_norm)"),
    ("proj", r"(proj_in|proj_out|text_projection|proj[._])"),
    ("embedding", r"(embed|emb[._]|emb_layers|time_in|vector_in|guidance_in|txt_in|img_in|token_embedding|positional_embedding|label_emb|shared)"),
    ("resnet/conv", r"(conv|resnets|in_layers|out_layers|skip_connection|nin_shortcut|op[._]|block_\d|downsample|upsample|input_blocks\.0\.0)"),
)

# --------------------------------------------------------------------------- merge blocks (architectures.md §5)

# Rules applied to a denoiser's canonical key (LDM / original layout), first match wins. A template gets the
# regex's first group as an int; "TIME" stands for the switchable placement of time_embed / label_emb.
_SD_UNET_BLOCKS: tuple[tuple[str, str], ...] = (
    (r"^(time_embed|label_emb)\.", "TIME"),
    (r"^out\.", "OUT{last}"),
    (r"^input_blocks\.(\d+)\.", "IN{0:02d}"),
    (r"^middle_block\.", "M00"),
    (r"^output_blocks\.(\d+)\.", "OUT{0:02d}"),
)
_FLUX_BLOCKS: tuple[tuple[str, str], ...] = (
    (r"^(?:double_blocks|transformer_blocks)\.(\d+)\.", "D{0:02d}"),
    (r"^(?:single_blocks|single_transformer_blocks)\.(\d+)\.", "S{0:02d}"),
    (r"^(img_in|txt_in|time_in|vector_in|guidance_in|x_embedder|context_embedder|time_text_embed)", "IN"),
    (r"^(final_layer|norm_out|proj_out)", "OUT"),
)
_MMDIT_BLOCKS: tuple[tuple[str, str], ...] = (
    (r"^(?:joint_blocks|transformer_blocks)\.(\d+)\.", "J{0:02d}"),
    (r"^(x_embedder|t_embedder|y_embedder|context_embedder|pos_embed|time_text_embed)", "IN"),
    (r"^(final_layer|norm_out|proj_out)", "OUT"),
)
_AURA_BLOCKS: tuple[tuple[str, str], ...] = (
    (r"^(?:double_layers|joint_transformer_blocks)\.(\d+)\.", "D{0:02d}"),
    (r"^(?:single_layers|single_transformer_blocks)\.(\d+)\.", "S{0:02d}"),
    (r"^(final_linear|modF|norm_out|proj_out)", "OUT"),
    (r".", "IN"),
)
_DIT_BLOCKS: tuple[tuple[str, str], ...] = (
    (r"^(?:blocks|transformer_blocks)\.(\d+)\.", "B{0:02d}"),
    (r"^(final_layer|norm_out|proj_out)", "OUT"),
    (r".", "IN"),
)
BLOCK_RULES: dict[str, tuple[tuple[str, str], ...]] = {
    "sd1": _SD_UNET_BLOCKS,
    "sd2": _SD_UNET_BLOCKS,
    "sdxl": _SD_UNET_BLOCKS,
    "sdxl_refiner": _SD_UNET_BLOCKS,
    "flux_dev": _FLUX_BLOCKS,
    "flux_schnell": _FLUX_BLOCKS,
    "sd3": _MMDIT_BLOCKS,
    "sd35m": _MMDIT_BLOCKS,
    "sd35": _MMDIT_BLOCKS,
    "auraflow": _AURA_BLOCKS,
    "hunyuandit": _DIT_BLOCKS,
    "pixart_alpha": _DIT_BLOCKS,
    "pixart_sigma": _DIT_BLOCKS,
}
# index of the last output block, for the rule that sends the final ``out.`` layers there
LAST_OUT_BLOCK: dict[str, int] = {"sd1": 11, "sd2": 11, "sdxl": 8, "sdxl_refiner": 11}

# Display order of each family's merge blocks: (name prefix, count); count None -> the bare name (BASE, IN, OUT).
_SD_LAYOUT = (("BASE", None), ("IN", 12), ("M", 1), ("OUT", 12))
_SD3_LAYOUT = (("BASE", None), ("IN", None), ("J", 24), ("OUT", None))
_FLUX_LAYOUT = (("BASE", None), ("IN", None), ("D", 19), ("S", 38), ("OUT", None))
_PIXART_LAYOUT = (("BASE", None), ("IN", None), ("B", 28), ("OUT", None))
BLOCK_LAYOUT: dict[str, tuple[tuple[str, int | None], ...]] = {
    "sd1": _SD_LAYOUT,
    "sd2": _SD_LAYOUT,
    "sdxl": (("BASE", None), ("IN", 9), ("M", 1), ("OUT", 9)),
    "sdxl_refiner": _SD_LAYOUT,
    "flux_dev": _FLUX_LAYOUT,
    "flux_schnell": _FLUX_LAYOUT,
    "sd3": _SD3_LAYOUT,
    "sd35m": _SD3_LAYOUT,
    "sd35": (("BASE", None), ("IN", None), ("J", 38), ("OUT", None)),
    "auraflow": (("BASE", None), ("IN", None), ("D", 4), ("S", 32), ("OUT", None)),
    "hunyuandit": (("BASE", None), ("IN", None), ("B", 40), ("OUT", None)),
    "pixart_alpha": _PIXART_LAYOUT,
    "pixart_sigma": _PIXART_LAYOUT,
}

# --------------------------------------------------------------------------- pipelines (sdlens arch)

# The eight released pipelines ``sdlens arch`` measures (architectures.md §1): the registry family of the
# denoiser, the text encoders with their tokens per prompt, the VAE, the length of the text sequence the
# denoiser attends to, whether the pipeline runs classifier-free guidance by default, its default number of steps, the native
# resolution.
PIPELINES: dict[str, dict[str, Any]] = {
    "sd1": {"family": "sd1", "name": "SD 1.5", "aliases": ("sd15", "sd1.5", "sd-1.5", "sd-v1-5", "sd1x"),
            "text_encoders": (("clip_l", 77),), "vae": "vae4", "text_tokens": 77, "cfg": True, "steps": 50, "res": (512, 512)},
    "sd2": {"family": "sd2", "name": "SD 2.1", "aliases": ("sd21", "sd2.1", "sd-2.1", "sd2x"),
            "text_encoders": (("openclip_h", 77),), "vae": "vae4", "text_tokens": 77, "cfg": True, "steps": 50, "res": (768, 768)},
    "sdxl": {"family": "sdxl", "name": "SDXL base 1.0", "aliases": ("sdxl-base", "sdxl1.0", "sdxl-1.0", "xl"),
             "text_encoders": (("clip_l", 77), ("clip_g", 77)), "vae": "vae4", "text_tokens": 77, "cfg": True,
             "steps": 50, "res": (1024, 1024)},
    "sd3": {"family": "sd3", "name": "SD3 medium", "aliases": ("sd3m", "sd3-medium", "sd-3"),
            "text_encoders": (("clip_l", 77), ("clip_g", 77), ("t5", 256)), "vae": "vae16", "text_tokens": 333,
            "cfg": True, "steps": 28, "res": (1024, 1024)},
    "sd35": {"family": "sd35", "name": "SD3.5 large", "aliases": ("sd3.5", "sd35l", "sd3.5-large", "sd35-large"),
             "text_encoders": (("clip_l", 77), ("clip_g", 77), ("t5", 256)), "vae": "vae16", "text_tokens": 333,
             "cfg": True, "steps": 28, "res": (1024, 1024)},
    "hunyuandit": {"family": "hunyuandit", "name": "HunyuanDiT", "aliases": ("hunyuan", "hunyuan-dit", "hydit"),
                   "text_encoders": (("hunyuan_bert", 77), ("mt5_xl", 256)), "vae": "vae4", "text_tokens": 256,
                   "cfg": True, "steps": 50, "res": (1024, 1024)},
    "auraflow": {"family": "auraflow", "name": "AuraFlow v0.2", "aliases": ("aura", "aura-flow"),
                 "text_encoders": (("pile_t5_xl", 256),), "vae": "vae4", "text_tokens": 256, "cfg": True,
                 "steps": 50, "res": (1024, 1024)},
    "flux": {"family": "flux_dev", "name": "FLUX.1-dev", "aliases": ("flux-dev", "flux1", "flux.1", "flux1-dev"),
             "text_encoders": (("clip_l", 77), ("t5", 512)), "vae": "vae16", "text_tokens": 512, "cfg": False,
             "steps": 28, "res": (1024, 1024)},
}
# "MBW layers" counted by the original notebook (architectures.md §1): numbered merge blocks per family
MBW_LAYERS: dict[str, int] = {"sd1": 25, "sd2": 25, "sdxl": 19, "sd3": 24, "sd35": 38, "hunyuandit": 40,
                              "auraflow": 36, "flux_dev": 57, "flux_schnell": 57}
# Where each merge block lives in the original (non-diffusers) checkpoints, per block-name head.
ORIGINAL_BLOCK_KEYS: dict[str, dict[str, str]] = {
    "flux": {"D": "double_blocks.{n}.", "S": "single_blocks.{n}.",
             "IN": "img_in, txt_in, time_in, vector_in, guidance_in", "OUT": "final_layer"},
    "mmdit": {"J": "joint_blocks.{n}.", "IN": "x_embedder, t_embedder, y_embedder, context_embedder, pos_embed",
              "OUT": "final_layer"},
    "aura": {"D": "double_layers.{n}.", "S": "single_layers.{n}.",
             "IN": "init_x_linear, positional_encoding, cond_seq_linear, t_embedder, register_tokens",
             "OUT": "modF, final_linear"},
    "hunyuan": {"B": "blocks.{n}.", "IN": "x_embedder, t_embedder, text_embedding_padding, mlp_t5, pooler, extra_embedder",
                "OUT": "final_layer"},
}
ORIGINAL_BLOCK_STYLE: dict[str, str] = {"flux_dev": "flux", "flux_schnell": "flux", "sd3": "mmdit", "sd35m": "mmdit",
                                        "sd35": "mmdit", "auraflow": "aura", "hunyuandit": "hunyuan"}

# The original notebook's numbers (architectures.md §7), to set beside sdlens's: MBW layers, parameters by
# torchinfo and by diffusers (billions), torchinfo's "forward/backward pass size" (MB, fp16), est. total (GB, fp16).
NOTEBOOK_NUMBERS: dict[str, tuple[int, float, float, int, float]] = {
    "sd1": (25, 2.0, 0.860, 1265, 2.91),
    "sd2": (25, 2.1, 0.865, 2837, 4.46),
    "sdxl": (19, 5.3, 2.6, 8993, 13.80),
    "sd3": (24, 2.0, 2.0, 11127, 18.79),
    "sd35": (38, 8.0, 8.0, 17010, 32.35),
    "hunyuandit": (40, 1.5, 1.5, 17595, 20.12),
    "auraflow": (36, 6.8, 6.8, 39974, 52.38),
    "flux": (57, 11.91, 11.91, 31557, 54.06),
}
