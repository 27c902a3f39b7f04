"""PixArt-α and PixArt-Σ (original ``blocks`` / ``t_block``, diffusers ``transformer``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from sdlens.arch.families._common import IN_OUT
from sdlens.arch.families.hunyuandit import DIT_RULES
from sdlens.arch.record import Blocks, Denoiser, Family, Feature, Loading, Pipeline, TextEncoderSlot
from sdlens.arch.shapes import count, first, head_dim

if TYPE_CHECKING:
    from sdlens.io.base import TensorInfo

# LTX-Video (sdlens.arch.families.ltx_video) has PixArt's adaln_single and 28 blocks, but q/k RMS norms
LTX_QK_NORM = Feature(
    "ltx_qk_norm",
    "present",
    r"^transformer_blocks\.0\.attn1\.(q_norm|norm_q)\.weight$",
    0,
    "query/key RMS norms",
)
FEATURES: tuple[Feature, ...] = (
    Feature(
        "pixart",
        "present",
        r"^(t_block\.1\.weight|adaln_single\.linear\.weight)$",
        0,
        "PixArt timestep block",
    ),
    Feature(
        "pixart_ar",
        "present",
        r"^(ar_embedder\.|adaln_single\.emb\.aspect_ratio_embedder\.)",
        0,
        "aspect-ratio embedder",
    ),
    Feature("pixart_blocks", "count", r"^(?:blocks|transformer_blocks)\.(\d+)\.", 0, "DiT blocks"),
    LTX_QK_NORM,
)
_BASE: dict[str, Any] = {
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
ALPHA: dict[str, Any] = {**_BASE, "use_additional_conditions": True}
SIGMA: dict[str, Any] = {**_BASE, "use_additional_conditions": False, "interpolation_scale": 2}


def config_from_shapes(released: Mapping[str, Any]) -> Callable[[Mapping[str, TensorInfo]], dict[str, Any]]:
    """The record's ``config_from_shapes``: PixArtTransformer2DModel kwargs from the original keys (``blocks.N.``,
    ``t_block``) or diffusers' ones, on top of ``released``. Heads are not in the shapes: the released head
    width where it divides the hidden width (:func:`sdlens.arch.shapes.head_dim`); the latent sample size and the
    position-embedding interpolation scale (a buffer diffusers does not store) are the release's too."""

    def derive(keys: Mapping[str, TensorInfo]) -> dict[str, Any]:
        x = first(keys, "x_embedder.proj.weight", "pos_embed.proj.weight")
        hidden, p = x.shape[0], x.shape[2]
        head = head_dim(hidden, released["attention_head_dim"])
        caption = keys.get("y_embedder.y_proj.fc1.weight") or keys.get("caption_projection.linear_1.weight")
        return {
            **released,
            "in_channels": x.shape[1],
            "patch_size": p,
            "out_channels": first(keys, "final_layer.linear.weight", "proj_out.weight").shape[0] // (p * p),
            "num_layers": count(keys, r"^(?:blocks|transformer_blocks)\.(\d+)\."),
            "num_attention_heads": hidden // head,
            "attention_head_dim": head,
            "cross_attention_dim": first(
                keys, "blocks.0.cross_attn.kv_linear.weight", "transformer_blocks.0.attn2.to_k.weight"
            ).shape[1],
            "attention_bias": "blocks.0.attn.qkv.bias" in keys
            or "transformer_blocks.0.attn1.to_q.bias" in keys,
            "caption_channels": caption.shape[1] if caption is not None else None,
            "use_additional_conditions": "csize_embedder.mlp.0.weight" in keys
            or "adaln_single.emb.resolution_embedder.linear_1.weight" in keys,
        }

    return derive


_BLOCKS = Blocks(DIT_RULES, (*IN_OUT, ("B", 28), ("OUT", None)))
# PixArt-alpha/PixArt-XL-2-1024-MS and PixArt-alpha/PixArt-Sigma-XL-2-1024-MS scheduler/scheduler_config.json
_SCHEDULER = {
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "num_train_timesteps": 1000,
    "solver_order": 2,
    "algorithm_type": "dpmsolver++",
    "lower_order_final": True,
}


def _size_conditioned(config) -> bool:
    """PixArt-α's size / aspect-ratio micro-conditioning, as diffusers decides it (None: on at sample size 128)."""
    on = config.get("use_additional_conditions")
    return config.get("sample_size", 128) == 128 if on is None else bool(on)


def _pipeline(name: str, aliases: tuple[str, ...], tokens: int, cls: str) -> Pipeline:
    return Pipeline(
        name,
        aliases,
        tokens,
        True,
        20,
        (1024, 1024),
        "DPMSolverMultistepScheduler",
        "epsilon",
        cls,
        measured=False,
        scheduler_config=_SCHEDULER,
    )


_TES = (TextEncoderSlot("t5", 120, "last"),)
_SLOTS = {"denoiser": "transformer", "t5": "text_encoder", "vae": "vae"}

_LOAD_ALPHA = Loading(
    comfy_checkpoint=None,
    comfy_clip_type="pixart",
    a1111="no",
    forge="no",
    vae="SD VAE (sd-vae-ft-ema, 4-channel)",
)
_LOAD_SIGMA = Loading(
    comfy_checkpoint=None,
    comfy_clip_type="pixart",
    a1111="no",
    forge="no",
    vae="SDXL VAE (sdxl_vae.safetensors, 4-channel)",
)

FAMILIES: tuple[Family, ...] = (
    Family(
        "pixart_alpha",
        "PixArt-α",
        {"pixart": True, "pixart_ar": True, "ltx_qk_norm": False, "sana_ff": False},
        {"pixart_blocks": 28},
        features=FEATURES,
        bare_keys=(
            (r"^t_block\.1\.weight$", "bare"),
        ),  # a bare file (no prefix) with this key is this denoiser
        denoiser=Denoiser(
            "PixArtTransformer2DModel",
            ALPHA,
            label="DiT",
            config_from_shapes=config_from_shapes(ALPHA),
            keymap="pixart",
            matches_config=_size_conditioned,
        ),
        text_encoders=_TES,
        blocks=_BLOCKS,
        diffusers_slots=_SLOTS,
        pipeline=_pipeline(
            "PixArt-α 1024", ("pixart-alpha", "pixart-α", "pixart-xl-2-1024-ms"), 120, "PixArtAlphaPipeline"
        ),
        loading=_LOAD_ALPHA,
    ),
    Family(
        "pixart_sigma",
        "PixArt-Σ",
        {"pixart": True, "pixart_ar": False, "ltx_qk_norm": False, "sana_ff": False},
        {"pixart_blocks": 28},
        denoiser=Denoiser(
            "PixArtTransformer2DModel",
            SIGMA,
            label="DiT",
            config_from_shapes=config_from_shapes(SIGMA),
            keymap="pixart",
            matches_config=lambda c: not _size_conditioned(c),
        ),
        text_encoders=(TextEncoderSlot("t5", 300, "last"),),
        blocks=_BLOCKS,
        diffusers_slots=_SLOTS,
        pipeline=_pipeline(
            "PixArt-Σ 1024",
            ("pixart-sigma", "pixart-σ", "pixart-sigma-xl-2-1024-ms"),
            300,
            "PixArtSigmaPipeline",
        ),
        loading=_LOAD_SIGMA,
    ),
)
