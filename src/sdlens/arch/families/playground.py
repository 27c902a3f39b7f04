"""Playground v2.5 (the SDXL base UNet trained on EDM; single files carry ``edm_mean`` / ``edm_std``)."""

from __future__ import annotations

from sdlens.arch.families import sd_unet
from sdlens.arch.record import Denoiser, Family, Feature, Loading, Pipeline, TextEncoderSlot

# The UNet is SDXL base's to the shape; what tells a Playground v2.5 single file apart is the EDM latent
# statistics stored at its top level (diffusers' single_file_utils keys on "edm_mean" the same way).
FEATURES: tuple[Feature, ...] = (
    # single file: edm_mean / edm_std; diffusers pipeline folder: model_index.json's EDM DPM-Solver scheduler
    Feature(
        "pg_edm",
        "marker",
        r"^(edm_(mean|std)|scheduler=EDMDPMSolverMultistepScheduler)$",
        0,
        "EDM markers (edm_mean / edm_std, or the EDM DPM-Solver scheduler)",
    ),
)
_SDXL = next(f for f in sd_unet.FAMILIES if f.id == "sdxl")

_LOADING = Loading(
    comfy_clip_type="sdxl",
    a1111="unknown",
    forge="unknown",
    vae="SDXL VAE (sdxl_vae.safetensors, 4-channel)",
    notes="ComfyUI reads the EDM schedule from the file's edm_mean / edm_std keys; a file without them "
    "loads as SDXL",
)

# playgroundai/playground-v2.5-1024px-aesthetic scheduler/scheduler_config.json (diffusers' single-file loader
# builds the same): EDM, Karras sigmas 80 -> 0.002 (rho 7), sigma_data 0.5, epsilon under EDM preconditioning
_EDM_SCHEDULER = {
    "algorithm_type": "dpmsolver++",
    "dynamic_thresholding_ratio": 0.995,
    "euler_at_final": False,
    "final_sigmas_type": "zero",
    "lower_order_final": True,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "rho": 7.0,
    "sample_max_value": 1.0,
    "sigma_data": 0.5,
    "sigma_max": 80.0,
    "sigma_min": 0.002,
    "solver_order": 2,
    "solver_type": "midpoint",
    "thresholding": False,
}

FAMILIES: tuple[Family, ...] = (
    Family(
        "playground_v25",
        "Playground v2.5",
        {**_SDXL.requires, "pg_edm": True},
        dict(_SDXL.standard),
        features=FEATURES,
        variants=_SDXL.variants,
        # playgroundai/playground-v2.5-1024px-aesthetic unet/config.json: the SDXL base 1.0 UNet config
        denoiser=Denoiser(
            "UNet2DConditionModel",
            dict(_SDXL.denoiser.config),
            2_567_463_684,
            "the released unet/config.json is SDXL base 1.0's: UNet2DConditionModel built on the meta device "
            "with it, num_parameters() = 2,567,463,684 (SDXL base's published count)",
            "UNet",
            _SDXL.denoiser.config_from_shapes,
            "unet",
        ),
        text_encoders=(
            TextEncoderSlot("clip_l", 77, "penultimate"),
            TextEncoderSlot("clip_g", 77, "penultimate"),
        ),
        vae="kl_f8_c4",
        latent_channels=4,  # the SDXL VAE; latents normalised by the EDM mean / std, scaling 0.5
        blocks=_SDXL.blocks,
        pipeline=Pipeline(
            "Playground v2.5",
            ("playground", "playground-v2.5", "playground-v25", "pgv2.5", "playground-v2.5-1024px-aesthetic"),
            77,
            True,
            50,
            (1024, 1024),
            "EDMDPMSolverMultistepScheduler",
            "edm",
            "StableDiffusionXLPipeline",
            measured=False,
            scheduler_config=_EDM_SCHEDULER,
        ),
        single_file=dict(_SDXL.single_file),
        diffusers_slots=dict(_SDXL.diffusers_slots),
        lora_hints=("playground",),
        base="sdxl",
        notes="EDM formulation (sigma_data 0.5, sigma 0.002..80, epsilon parametrisation under EDM "
        "preconditioning); guidance ~3. A diffusers unet folder alone is weight-identical to SDXL base: "
        "only the markers (single file) or the folder's EDM scheduler (model_index.json) tell it apart.",
        loading=_LOADING,
    ),
)
