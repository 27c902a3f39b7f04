"""Lumina-Image 2.0 (Alpha-VLLM NextDiT: ``layers`` / ``noise_refiner`` / ``context_refiner``; diffusers
``transformer``)."""

from __future__ import annotations

from typing import Any

from sdlens.arch.families._common import IN_OUT
from sdlens.arch.record import Blocks, Denoiser, Family, Feature, Loading, Pipeline, TextEncoderSlot

FEATURES: tuple[Feature, ...] = (
    Feature(
        "lumina2",
        "present",
        r"^(cap_embedder\.1|time_caption_embed\.caption_embedder\.1)\.weight$",
        0,
        "caption embedder (RMSNorm + linear)",
    ),
    Feature("lumina2_layers", "count", r"^layers\.(\d+)\.", 0, "joint transformer layers"),
    Feature("lumina2_refiners", "count", r"^noise_refiner\.(\d+)\.", 0, "noise refiner layers"),
    Feature(
        "lumina2_cap",
        "dim",
        r"^(cap_embedder\.1|time_caption_embed\.caption_embedder\.1)\.weight$",
        1,
        "caption (Gemma-2) width",
    ),
    Feature("lumina2_in", "dim", r"^x_embedder\.weight$", 1, "patchified latent width"),
)
RULES: tuple[tuple[str, str], ...] = (
    (r"^layers\.(\d+)\.", "B{0:02d}"),
    (r"^(final_layer|norm_out)\.", "OUT"),
    (r".", "IN"),
)
ORIGINAL = {
    "B": "layers.{n}.",
    "IN": "x_embedder, t_embedder, cap_embedder, noise_refiner, context_refiner",
    "OUT": "final_layer",
}
# Alpha-VLLM/Lumina-Image-2.0 transformer/config.json (values that differ from Lumina2Transformer2DModel's defaults)
CONFIG: dict[str, Any] = {"cap_feat_dim": 2304}
PARAMS = 2_609_769_152

_LOADING = Loading(
    comfy_gguf=True,
    comfy_clip_type="lumina2",
    a1111="no",
    forge="no",
    vae="FLUX VAE (ae.safetensors, 16-channel)",
    notes="ComfyUI's all-in-one lumina_2.safetensors goes in models/checkpoints",
)

FAMILIES: tuple[Family, ...] = (
    Family(
        "lumina2",
        "Lumina-Image 2.0",
        {"lumina2": True},
        {"lumina2_layers": 26, "lumina2_refiners": 2, "lumina2_cap": 2304, "lumina2_in": 64},
        features=FEATURES,
        denoiser=Denoiser(
            "Lumina2Transformer2DModel",
            CONFIG,
            PARAMS,
            "Lumina2Transformer2DModel built on the meta device with the released transformer/config.json "
            "(hidden 2304, 26 layers, 24 heads / 8 kv heads, cap_feat_dim 2304): num_parameters() = 2,609,769,152, "
            "the total the Hub reports for Alpha-VLLM/Lumina-Image-2.0's transformer (model card: '2 billion')",
            "DiT",
            keymap="lumina2",
        ),
        text_encoders=(TextEncoderSlot("gemma2_2b", 256, "penultimate"),),
        vae="kl_f8_c16",
        latent_channels=16,  # the FLUX.1 VAE
        blocks=Blocks(RULES, (*IN_OUT, ("B", 26), ("OUT", None)), original_keys=ORIGINAL),
        pipeline=Pipeline(
            "Lumina-Image 2.0",
            ("lumina-image-2.0", "lumina-2", "lumina2", "lumina-image-2", "lumina_2"),
            256,
            True,
            50,
            (1024, 1024),
            "FlowMatchEulerDiscreteScheduler",
            "flow",
            "Lumina2Pipeline",
            measured=False,
        ),
        single_file={"denoiser": "model.diffusion_model."},
        diffusers_slots={"denoiser": "transformer", "gemma2_2b": "text_encoder", "vae": "vae"},
        bare_keys=((r"^(noise_refiner|context_refiner)\.\d+\.", "bare"),),
        lora_hints=("lumina",),
        notes="Gemma-2 2B hidden states (the second-to-last layer's, as the pipeline takes hidden_states[-2]); "
        "the original's unused norm_final.weight is dropped by diffusers' converter.",
        loading=_LOADING,
    ),
)
