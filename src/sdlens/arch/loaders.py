"""What loads which kind of file, whatever its family: ComfyUI's loader nodes and folders, the WebUI folders,
the diffusers classes that have ``from_single_file``. The per-family facts are the records' ``loading``
(``sdlens.arch.record.Loading``); ``sdlens.analysis.loading`` puts the two together.

Sources: ComfyUI's ``nodes.py`` (node classes, the ``type`` lists of CLIPLoader / DualCLIPLoader) and
``folder_paths.py``; ComfyUI-GGUF's ``nodes.py`` / README (``UnetLoaderGGUF`` lists ``models/unet`` and
``models/diffusion_models``); diffusers' ``loaders/single_file_model.py`` (``SINGLE_FILE_CONFIGS``) and the
pipelines that mix in ``FromSingleFileMixin``.
"""

from __future__ import annotations

# the kinds of file the advice is given for, as reports name them
LOAD_KINDS: dict[str, str] = {
    "checkpoint": "single-file checkpoint",
    "denoiser": "denoiser only",
    "gguf": "GGUF denoiser",
    "diffusers": "diffusers folder",
    "text_encoder": "text encoder file",
    "vae": "VAE file",
    "lora": "LoRA",
    "controlnet": "ControlNet",
}

TE_FOLDER = "models/text_encoders (older: models/clip)"
VAE_FOLDER = "models/vae"
# kind -> (ComfyUI node class, its display name, folder under ComfyUI/)
COMFY: dict[str, tuple[str, str, str]] = {
    "checkpoint": ("CheckpointLoaderSimple", "Load Checkpoint", "models/checkpoints"),
    "denoiser": ("UNETLoader", "Load Diffusion Model", "models/diffusion_models (older: models/unet)"),
    "gguf": (
        "UnetLoaderGGUF",
        "Unet Loader (GGUF), from ComfyUI-GGUF",
        "models/unet (or models/diffusion_models)",
    ),
    "diffusers": ("DiffusersLoader", "deprecated: prefer single files", "models/diffusers"),
    "vae": ("VAELoader", "Load VAE", VAE_FOLDER),
    "lora": ("LoraLoader", "Load LoRA; LoraLoaderModelOnly for denoiser-only LoRAs", "models/loras"),
    "controlnet": ("ControlNetLoader", "Load ControlNet Model", "models/controlnet"),
}
# ComfyUI's text-encoder loaders by the number of encoders a family conditions on
CLIP_LOADERS: dict[int, str] = {
    1: "CLIPLoader",
    2: "DualCLIPLoader",
    3: "TripleCLIPLoader",
    4: "QuadrupleCLIPLoader",
}
CLIP_LOADERS_WITH_TYPE = ("CLIPLoader", "DualCLIPLoader")  # the others have no ``type`` input
GGUF_SUFFIX = "GGUF"  # ComfyUI-GGUF's text-encoder loaders: CLIPLoaderGGUF, DualCLIPLoaderGGUF, ...
# other components a pipeline may need (diffusers-slot id -> name, ComfyUI node, folder)
OTHER_COMPONENTS: dict[str, tuple[str, str, str]] = {
    "clip_vision_h": (
        "CLIP ViT-H image encoder (clip_vision_h.safetensors)",
        "CLIPVisionLoader",
        "models/clip_vision",
    ),
    "clip_l_vision": ("CLIP ViT-L/14 image encoder", "CLIPVisionLoader", "models/clip_vision"),
}

# AUTOMATIC1111 / Forge folders (under the WebUI's folder); Forge alone has a text-encoder folder
WEBUI_FOLDERS: dict[str, str] = {
    "checkpoint": "models/Stable-diffusion",
    "denoiser": "models/Stable-diffusion",
    "gguf": "models/Stable-diffusion",
    "diffusers": "",  # neither loads a diffusers folder
    "text_encoder": "models/text_encoder (Forge)",
    "vae": "models/VAE",
    "lora": "models/Lora",
    "controlnet": "models/ControlNet",
}

# diffusers model classes with ``from_single_file`` (SINGLE_FILE_CONFIGS of loaders/single_file_model.py)
SINGLE_FILE_MODELS: frozenset[str] = frozenset(
    {
        "UNet2DConditionModel",
        "StableCascadeUNet",
        "AutoencoderKL",
        "ControlNetModel",
        "SD3Transformer2DModel",
        "FluxTransformer2DModel",
        "ChromaTransformer2DModel",
        "LTXVideoTransformer3DModel",
        "AutoencoderKLLTXVideo",
        "AutoencoderDC",
        "AuraFlowTransformer2DModel",
        "Lumina2Transformer2DModel",
        "SanaTransformer2DModel",
        "WanTransformer3DModel",
        "AutoencoderKLWan",
        "HiDreamImageTransformer2DModel",
    }
)
# diffusers pipelines that mix in FromSingleFileMixin (a whole single-file checkpoint)
SINGLE_FILE_PIPELINES: frozenset[str] = frozenset(
    {
        "StableDiffusionPipeline",
        "StableDiffusionXLPipeline",
        "StableDiffusionXLImg2ImgPipeline",
        "StableDiffusion3Pipeline",
        "FluxPipeline",
        "ChromaPipeline",
        "LTXPipeline",
    }
)
# a record's ``vae`` key -> (how reports name the VAE, its diffusers class)
VAES: dict[str, tuple[str, str]] = {
    "kl_f8_c4": ("4-channel KL-f8 VAE", "AutoencoderKL"),
    "kl_f8_c16": ("16-channel KL-f8 VAE", "AutoencoderKL"),
    "wan_vae": ("Wan 2.1 VAE (wan_2.1_vae.safetensors)", "AutoencoderKLWan"),
    "ltx_vae": ("LTX-Video VAE", "AutoencoderKLLTXVideo"),
    "dc_ae_f32c32": ("DC-AE f32c32 autoencoder", "AutoencoderDC"),
    "stable_cascade_stage_b": ("Stable Cascade stage B + stage A", "StableCascadeUNet"),
    "paella_vq": ("Stable Cascade stage A (Paella VQGAN)", "PaellaVQModel"),
}
GGUF_CALL = "quantization_config=GGUFQuantizationConfig(compute_dtype=torch.bfloat16)"

# quantised files beyond GGUF, by the origin of their scheme (``sdlens.io.quant`` ``Scheme.origin``):
# the ComfyUI loader per kind where it is not the usual one, and what to know
QUANT_COMFY: dict[str, dict[str, tuple[str, str]]] = {
    "bitsandbytes": {
        "checkpoint": (
            "CheckpointLoaderNF4 (custom nodes: comfyanonymous/ComfyUI_bitsandbytes_NF4)",
            "models/checkpoints",
        ),
        "denoiser": ("UNETLoaderNF4 (custom nodes: silveroxides/ComfyUI_bnb_nf4_fp4_Loaders)", "models/unet"),
    },
}
QUANT_NOTES: dict[str, str] = {
    "bitsandbytes": "bitsandbytes NF4 / FP4 weights: AUTOMATIC1111 does not load them; diffusers' "
    "from_single_file on them: unknown",
    "scaled fp8": "ComfyUI scaled-fp8 weights (fp8 × scale_weight): ComfyUI's usual loaders read them; "
    "other tools: unknown",
}
