"""HunyuanDiT (Tencent ``blocks`` original, diffusers ``transformer``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sdlens.arch.families._common import IN_OUT
from sdlens.arch.record import Blocks, Denoiser, Family, Feature, Loader, Loading, Pipeline, TextEncoderSlot
from sdlens.arch.shapes import count, first

if TYPE_CHECKING:
    from sdlens.io.base import TensorInfo

FEATURES: tuple[Feature, ...] = (
    Feature(
        "hunyuan",
        "present",
        r"^(mlp_t5\.0\.weight|text_embedder\.linear_1\.weight)$",
        0,
        "HunyuanDiT T5 MLP (mlp_t5)",
    ),
    Feature("hunyuan_blocks", "count", r"^blocks\.(\d+)\.", 0, "DiT blocks"),
)
DIT_RULES: tuple[tuple[str, str], ...] = (
    (r"^(?:blocks|transformer_blocks)\.(\d+)\.", "B{0:02d}"),
    (r"^(final_layer|norm_out|proj_out)", "OUT"),
    (r".", "IN"),
)
_ORIGINAL = {
    "B": "blocks.{n}.",
    "IN": "x_embedder, t_embedder, text_embedding_padding, mlp_t5, pooler, extra_embedder",
    "OUT": "final_layer",
}


RELEASED: dict[str, Any] = {
    "num_attention_heads": 16,
    "attention_head_dim": 88,
    "in_channels": 4,
    "patch_size": 2,
    "activation_fn": "gelu-approximate",
    "sample_size": 128,
    "hidden_size": 1408,
    "num_layers": 40,
    "mlp_ratio": 4.3637,
    "learn_sigma": True,
    "cross_attention_dim": 1024,
    "norm_type": "layer_norm",
    "cross_attention_dim_t5": 2048,
    "pooled_projection_dim": 1024,
    "text_len": 77,
    "text_len_t5": 256,
    "use_style_cond_and_image_meta_size": True,
}


def _derive(keys: Mapping[str, TensorInfo]) -> dict[str, Any]:
    """HunyuanDiT2DModel kwargs from the original repository's keys (``blocks.N.attn1.Wqkv`` ...) or diffusers'."""
    x = first(keys, "x_embedder.proj.weight", "pos_embed.proj.weight")
    hidden, p = x.shape[0], x.shape[2]
    head = first(keys, "blocks.0.attn1.q_norm.weight", "blocks.0.attn1.norm_q.weight").shape[0]
    pool = first(keys, "pooler.positional_embedding", "time_extra_emb.pooler.positional_embedding")
    t5_len = pool.shape[0] - 1
    return {
        **RELEASED,
        "hidden_size": hidden,
        "in_channels": x.shape[1],
        "patch_size": p,
        "num_layers": count(keys, r"^blocks\.(\d+)\."),
        "num_attention_heads": hidden // head,
        "attention_head_dim": head,
        "mlp_ratio": first(keys, "blocks.0.mlp.fc1.weight", "blocks.0.ff.net.0.proj.weight").shape[0]
        / hidden,
        "learn_sigma": first(keys, "final_layer.linear.weight", "proj_out.weight").shape[0]
        == 2 * x.shape[1] * p * p,
        "cross_attention_dim": first(
            keys, "blocks.0.attn2.kv_proj.weight", "blocks.0.attn2.to_k.weight"
        ).shape[1],
        "cross_attention_dim_t5": pool.shape[1],
        "pooled_projection_dim": first(
            keys, "pooler.c_proj.weight", "time_extra_emb.pooler.c_proj.weight"
        ).shape[0],
        "text_len_t5": t5_len,
        "text_len": first(keys, "text_embedding_padding").shape[0] - t5_len,
        "use_style_cond_and_image_meta_size": "style_embedder.weight" in keys
        or "time_extra_emb.style_embedder.weight" in keys,
    }


_LOADING = Loading(
    comfy_gguf=None,
    a1111="no",
    forge="no",
    vae="sdxl-vae-fp16-fix (4-channel)",
    kinds={"denoiser": Loader(comfy="unknown"), "text_encoder": Loader(comfy="unknown")},
    notes="ComfyUI runs the bundled single file (hunyuan_dit_1.2.safetensors) with Load Checkpoint",
)

FAMILIES: tuple[Family, ...] = (
    Family(
        "hunyuandit",
        "HunyuanDiT",
        {"hunyuan": True},
        {"hunyuan_blocks": 40},
        features=FEATURES,
        bare_keys=(
            (r"^mlp_t5\.0\.weight$", "bare"),
        ),  # a bare file (no prefix) with this key is this denoiser
        denoiser=Denoiser(
            "HunyuanDiT2DModel",
            RELEASED,
            1_516_534_048,
            "diffusers num_parameters() of the released transformer",
            "DiT",
            _derive,
            "hunyuandit",
        ),
        text_encoders=(TextEncoderSlot("hunyuan_bert", 77, "last"), TextEncoderSlot("mt5_xl", 256, "last")),
        blocks=Blocks(DIT_RULES, (*IN_OUT, ("B", 40), ("OUT", None)), mbw=40, original_keys=_ORIGINAL),
        pipeline=Pipeline(
            "HunyuanDiT",
            ("hunyuan", "hunyuan-dit", "hydit"),
            256,
            True,
            50,
            (1024, 1024),
            "DDPMScheduler",
            "v_prediction",
            "HunyuanDiTPipeline",
            # ComfyUI's HunyuanDiT (v1.2) sampling settings: scaled linear β 0.00085 -> 0.018 (v1.0 / 1.1: 0.03)
            scheduler_config={"beta_start": 0.00085, "beta_end": 0.018},
        ),
        diffusers_slots={
            "denoiser": "transformer",
            "hunyuan_bert": "text_encoder",
            "mt5_xl": "text_encoder_2",
            "vae": "vae",
        },
        notebook=(40, 1.5, 1.5, 17595, 20.12),
        loading=_LOADING,
    ),
)
