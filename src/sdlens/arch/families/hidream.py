"""HiDream-I1 (Full / Dev / Fast: one architecture). Its released weights are in the diffusers layout already
(diffusers' single-file converter only strips ``model.diffusion_model.``), so there is no second key map."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sdlens.arch.families._common import IN_OUT
from sdlens.arch.record import Blocks, Denoiser, Family, Feature, Loading, Pipeline, TextEncoderSlot
from sdlens.arch.shapes import count, first, head_dim

FEATURES: tuple[Feature, ...] = (
    Feature(
        "hidream",
        "present",
        r"^double_stream_blocks\.\d+\.block\.adaLN_modulation\.1\.weight$",
        0,
        "HiDream dual-stream blocks",
    ),
    Feature("hidream_double", "count", r"^double_stream_blocks\.(\d+)\.", 0, "dual-stream blocks"),
    Feature("hidream_single", "count", r"^single_stream_blocks\.(\d+)\.", 0, "single-stream blocks"),
    Feature("hidream_hidden", "dim", r"^x_embedder\.proj\.weight$", 0, "hidden width"),
    Feature(
        "hidream_experts",
        "count",
        r"^double_stream_blocks\.0\.block\.ff_i\.experts\.(\d+)\.",
        0,
        "routed MoE experts",
    ),
)


def config_from_shapes(keys: Mapping[str, Any]) -> dict[str, Any]:
    """HiDreamImageTransformer2DModel config from a file's keys (patch size 2, 2 active experts: as released)."""
    x = first(keys, "x_embedder.proj.weight").shape
    hidden, patch = x[0], 2
    head = head_dim(hidden, 128)
    depth = count(keys, r"^double_stream_blocks\.(\d+)\."), count(keys, r"^single_stream_blocks\.(\d+)\.")
    n_caps = count(keys, r"^caption_projection\.(\d+)\.")
    return {
        "patch_size": patch,
        "in_channels": x[1] // patch**2,
        "out_channels": first(keys, "final_layer.linear.weight").shape[0] // patch**2,
        "num_layers": depth[0],
        "num_single_layers": depth[1],
        "attention_head_dim": head,
        "num_attention_heads": hidden // head,
        # the last projection takes the T5 states (caption_channels[0]), the others the Llama layers' ([1])
        "caption_channels": [
            first(keys, f"caption_projection.{n_caps - 1}.linear.weight").shape[1],
            first(keys, "caption_projection.0.linear.weight").shape[1],
        ],
        "text_emb_dim": first(keys, "p_embedder.pooled_embedder.linear_1.weight").shape[1],
        "num_routed_experts": count(keys, r"^double_stream_blocks\.0\.block\.ff_i\.experts\.(\d+)\."),
        "num_activated_experts": 2,
        "axes_dims_rope": [head // 2, head // 4, head // 4],
        "max_resolution": [128, 128],
        "llama_layers": [min(i, 31) for i in range(sum(depth))],
    }


_RULES: tuple[tuple[str, str], ...] = (
    (r"^double_stream_blocks\.(\d+)\.", "D{0:02d}"),
    (r"^single_stream_blocks\.(\d+)\.", "S{0:02d}"),
    (r"^final_layer\.", "OUT"),
    (r".", "IN"),
)
_ORIGINAL = {
    "D": "double_stream_blocks.{n}.",
    "S": "single_stream_blocks.{n}.",
    "IN": "x_embedder, t_embedder, p_embedder, caption_projection",
    "OUT": "final_layer",
}
# HiDream-ai/HiDream-I1-Full transformer/config.json (Dev and Fast ship the same one)
CONFIG: dict[str, Any] = {
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 16,
    "num_single_layers": 32,
    "attention_head_dim": 128,
    "num_attention_heads": 20,
    "caption_channels": [4096, 4096],
    "text_emb_dim": 2048,
    "num_routed_experts": 4,
    "num_activated_experts": 2,
    "axes_dims_rope": [64, 32, 32],
    "max_resolution": [128, 128],
    "llama_layers": [*range(32), *([31] * 16)],
}
_SRC = (
    "num_parameters() of the class built from HiDream-ai/HiDream-I1-Full's transformer config.json; the model "
    "card says '17B', and published model inventories list the same 17,105,733,184 for the transformer"
)

_LOADING = Loading(
    comfy_checkpoint=None,
    comfy_gguf=True,
    comfy_clip_type="hidream",
    a1111="no",
    forge="no",
    vae="FLUX VAE (ae.safetensors, 16-channel)",
)

FAMILIES: tuple[Family, ...] = (
    Family(
        "hidream_i1",
        "HiDream-I1",
        {"hidream": True},
        {"hidream_double": 16, "hidream_single": 32, "hidream_hidden": 2560, "hidream_experts": 4},
        features=FEATURES,
        denoiser=Denoiser(
            "HiDreamImageTransformer2DModel", CONFIG, 17_105_733_184, _SRC, "MoE DiT", config_from_shapes
        ),
        text_encoders=(
            TextEncoderSlot("clip_l", 77, "last"),
            TextEncoderSlot("clip_g", 77, "last"),
            TextEncoderSlot("t5", 128, "last"),
            TextEncoderSlot("llama31_8b", 128, "last"),
        ),
        vae="kl_f8_c16",
        latent_channels=16,
        blocks=Blocks(_RULES, (*IN_OUT, ("D", 16), ("S", 32), ("OUT", None)), original_keys=_ORIGINAL),
        pipeline=Pipeline(
            "HiDream-I1 Full",
            ("hidream", "hidream-i1", "hidream-i1-full", "hidream-full"),
            256,
            True,
            50,
            (1024, 1024),
            "FlowMatchEulerDiscreteScheduler",
            "flow",
            "HiDreamImagePipeline",
            measured=False,
        ),
        single_file={"denoiser": "model.diffusion_model."},
        diffusers_slots={
            "denoiser": "transformer",
            "clip_l": "text_encoder",
            "clip_g": "text_encoder_2",
            "t5": "text_encoder_3",
            "llama31_8b": "text_encoder_4",
            "vae": "vae",
        },
        bare_keys=((r"^double_stream_blocks\.\d+\.block\.", "diffusers"),),
        lora_hints=("hidream",),
        notes="Dev (28 steps) and Fast (16 steps) are distilled from Full with the same transformer; the Llama "
        "encoder conditions through the hidden states of the 48 layers in llama_layers (pooled CLIP-L/G "
        "vectors, T5 and Llama token states); the denoiser attends to 128 T5 + 128 Llama tokens.",
        loading=_LOADING,
    ),
)
