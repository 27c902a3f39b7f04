"""Wan 2.1 (Alibaba): text-to-video 1.3B / 14B and image-to-video 14B, one diffusers class
(``WanTransformer3DModel``) at two sizes. Wan-Video original keys (``blocks.N.self_attn.q``, ``head.head``) and the
diffusers ``transformer`` (key map: sdlens.arch.keymap.wan). Three records, told apart by width / depth and by the
image-conditioning layers (``img_emb``, ``k_img`` / ``v_img``) plus 36 input channels of I2V."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sdlens.arch.families._common import IN_OUT
from sdlens.arch.record import Blocks, Denoiser, Family, Feature, Loading, Pipeline, TextEncoderSlot
from sdlens.arch.shapes import count, first, head_dim, optional

FEATURES: tuple[Feature, ...] = (
    Feature(
        "wan",
        "present",
        r"^(head\.modulation|condition_embedder\.time_proj\.weight)$",
        0,
        "Wan time projection / head modulation",
    ),
    Feature("wan_blocks", "count", r"^blocks\.(\d+)\.", 0, "DiT blocks"),
    Feature("wan_hidden", "dim", r"^patch_embedding\.weight$", 0, "hidden width"),
    Feature("wan_in", "dim", r"^patch_embedding\.weight$", 1, "input channels"),
    Feature("wan_ffn", "dim", r"^blocks\.0\.(ffn\.0|ffn\.net\.0\.proj)\.weight$", 0, "FFN width"),
    Feature(
        "wan_image",
        "present",
        r"^(img_emb\.|condition_embedder\.image_embedder\.)",
        0,
        "CLIP image embedding (img_emb)",
    ),
)


def config_from_shapes(keys: Mapping[str, Any]) -> dict[str, Any]:
    """WanTransformer3DModel config from a file's (original or diffusers) keys."""
    patch = first(keys, "patch_embedding.weight").shape
    hidden = patch[0]
    img = optional(keys, "img_emb.proj.0.weight", "condition_embedder.image_embedder.norm1.weight")
    kv = optional(keys, "blocks.0.cross_attn.k_img.weight", "blocks.0.attn2.add_k_proj.weight")
    pos = optional(keys, "img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed")
    head = head_dim(hidden, 128)
    return {
        "patch_size": list(patch[2:]),
        "num_attention_heads": hidden // head,
        "attention_head_dim": head,
        "in_channels": patch[1],
        "out_channels": first(keys, "head.head.weight", "proj_out.weight").shape[0] // math.prod(patch[2:]),
        "text_dim": first(
            keys, "text_embedding.0.weight", "condition_embedder.text_embedder.linear_1.weight"
        ).shape[1],
        "freq_dim": first(
            keys, "time_embedding.0.weight", "condition_embedder.time_embedder.linear_1.weight"
        ).shape[1],
        "ffn_dim": first(keys, "blocks.0.ffn.0.weight", "blocks.0.ffn.net.0.proj.weight").shape[0],
        "num_layers": count(keys, r"^blocks\.(\d+)\."),
        "cross_attn_norm": "blocks.0.norm3.weight" in keys or "blocks.0.norm2.weight" in keys,
        "qk_norm": "rms_norm_across_heads"
        if "blocks.0.self_attn.norm_q.weight" in keys or "blocks.0.attn1.norm_q.weight" in keys
        else None,
        "image_dim": img.shape[0] if img is not None else None,
        "added_kv_proj_dim": kv.shape[1] if kv is not None else None,
        "pos_embed_seq_len": pos.shape[1] if pos is not None else None,
    }


_RULES: tuple[tuple[str, str], ...] = (
    (r"^blocks\.(\d+)\.", "B{0:02d}"),
    (r"^(head|norm_out|proj_out|scale_shift_table)(\.|$)", "OUT"),
    (r".", "IN"),
)
_ORIGINAL = {
    "B": "blocks.{n}.",
    "IN": "patch_embedding, time_embedding, time_projection, text_embedding, img_emb",
    "OUT": "head",
}
# the released transformer/config.json of Wan-AI/Wan2.1-T2V-14B-Diffusers: every value the class default
_T2V_14B: dict[str, Any] = {
    "num_attention_heads": 40,
    "attention_head_dim": 128,
    "in_channels": 16,
    "ffn_dim": 13824,
    "num_layers": 40,
    "text_dim": 4096,
    "qk_norm": "rms_norm_across_heads",
}
# Wan-AI/Wan2.1-T2V-1.3B-Diffusers
_T2V_1_3B: dict[str, Any] = {**_T2V_14B, "num_attention_heads": 12, "ffn_dim": 8960, "num_layers": 30}
# Wan-AI/Wan2.1-I2V-14B-480P-Diffusers (the 720P release has the same transformer config)
_I2V_14B: dict[str, Any] = {**_T2V_14B, "in_channels": 36, "image_dim": 1280, "added_kv_proj_dim": 5120}
_TES = (TextEncoderSlot("umt5_xxl", 512, "last"),)
_SLOTS = {"denoiser": "transformer", "umt5_xxl": "text_encoder", "vae": "vae"}
_BUILT = "num_parameters() of WanTransformer3DModel built from the released config.json"


def _pipeline(name: str, aliases: tuple[str, ...], cls: str) -> Pipeline:
    # 81 frames of 832x480 by default; UniPC in flow-prediction mode (flow_shift 3.0 at 480p)
    return Pipeline(
        name, aliases, 512, True, 50, (832, 480), "UniPCMultistepScheduler", "flow", cls, measured=False
    )


def _blocks(n: int) -> Blocks:
    return Blocks(_RULES, (*IN_OUT, ("B", n), ("OUT", None)), original_keys=_ORIGINAL)


_COMMON: dict[str, Any] = dict(
    features=(),
    vae="wan_vae",
    latent_channels=16,
    single_file={"denoiser": "model.diffusion_model."},
    bare_keys=((r"^blocks\.\d+\.self_attn\.q\.", "bare"),),
    lora_hints=("wan",),
)

_LOADING = Loading(comfy_checkpoint=None, comfy_gguf=True, comfy_clip_type="wan", a1111="no", forge="no")

FAMILIES: tuple[Family, ...] = (
    Family(
        "wan21_t2v_1_3b",
        "Wan 2.1 T2V 1.3B",
        {"wan": True, "wan_image": False, "wan_in": 16},
        {"wan_hidden": 1536, "wan_blocks": 30, "wan_ffn": 8960},
        denoiser=Denoiser(
            "WanTransformer3DModel",
            _T2V_1_3B,
            1_418_996_800,
            f"{_BUILT}; the model card's '1.3B' (1,418,996,800, the count training code built on it checks)",
            "DiT",
            config_from_shapes,
            "wan",
            matches_config=lambda c: c.get("num_layers", 40) == 30,
        ),
        text_encoders=_TES,
        blocks=_blocks(30),
        diffusers_slots=_SLOTS,
        pipeline=_pipeline(
            "Wan 2.1 T2V 1.3B", ("wan", "wan2.1", "wan21", "wan-1.3b", "wan2.1-t2v-1.3b"), "WanPipeline"
        ),
        **{**_COMMON, "features": FEATURES},
        loading=_LOADING,
    ),
    Family(
        "wan21_t2v_14b",
        "Wan 2.1 T2V 14B",
        {"wan": True, "wan_image": False, "wan_in": 16},
        {"wan_hidden": 5120, "wan_blocks": 40, "wan_ffn": 13824},
        denoiser=Denoiser(
            "WanTransformer3DModel",
            _T2V_14B,
            14_288_491_584,
            f"{_BUILT}; the model card's '14B' (14,288,491,584 total in published inventories of the "
            "same 14B transformer)",
            "DiT",
            config_from_shapes,
            "wan",
            matches_config=lambda c: c.get("num_layers", 40) == 40 and not c.get("image_dim"),
        ),
        text_encoders=_TES,
        blocks=_blocks(40),
        diffusers_slots=_SLOTS,
        pipeline=_pipeline("Wan 2.1 T2V 14B", ("wan-14b", "wan2.1-t2v-14b", "wan21-t2v-14b"), "WanPipeline"),
        **_COMMON,
        loading=_LOADING,
    ),
    Family(
        "wan21_i2v_14b",
        "Wan 2.1 I2V 14B",
        {"wan": True, "wan_image": True},
        {"wan_hidden": 5120, "wan_blocks": 40, "wan_ffn": 13824, "wan_in": 36},
        denoiser=Denoiser(
            "WanTransformer3DModel",
            _I2V_14B,
            16_394_878_784,
            f"{_BUILT}; the model card names it '14B' after the T2V backbone (14,288,491,584): the "
            "image cross-attention (k_img / v_img / norm_k_img in 40 blocks), img_emb and the 20 "
            "extra input channels add 2,106,387,200",
            "DiT",
            config_from_shapes,
            "wan",
        ),
        text_encoders=_TES,
        blocks=_blocks(40),
        diffusers_slots={**_SLOTS, "clip_vision_h": "image_encoder"},
        pipeline=_pipeline(
            "Wan 2.1 I2V 14B",
            ("wan-i2v", "wan2.1-i2v-14b", "wan21-i2v-14b", "wan-i2v-14b-480p"),
            "WanImageToVideoPipeline",
        ),
        notes="The image encoder (open-clip XLM-RoBERTa ViT-H/14; CLIPVisionModel in diffusers, 257 tokens of "
        "width 1280) conditions through img_emb; the first frame's VAE latents and a mask are concatenated "
        "to the noise (16 + 4 + 16 = 36 input channels).",
        **_COMMON,
        loading=_LOADING,
    ),
)
