"""Key maps between diffusers / transformers state dicts and LDM / sgm / open_clip single-file layouts."""

from sdlens.arch.keymap.clip import (
    clip_hf_to_ldm,
    clip_hf_to_openclip,
    clip_ldm_to_hf,
    hf_to_nai_clip_key,
    is_nai_clip,
    nai_to_hf_clip_key,
    normalize_hf_clip,
    openclip_to_clip_hf,
)
from sdlens.arch.keymap.unet import (
    unet_diffusers_key_to_ldm,
    unet_diffusers_to_ldm,
    unet_key_map,
    unet_ldm_key_to_diffusers,
    unet_ldm_to_diffusers,
)
from sdlens.arch.keymap.vae import vae_diffusers_to_ldm, vae_key_map, vae_ldm_to_diffusers

__all__ = [
    "clip_hf_to_ldm",
    "clip_hf_to_openclip",
    "clip_ldm_to_hf",
    "hf_to_nai_clip_key",
    "is_nai_clip",
    "nai_to_hf_clip_key",
    "normalize_hf_clip",
    "openclip_to_clip_hf",
    "unet_diffusers_key_to_ldm",
    "unet_diffusers_to_ldm",
    "unet_key_map",
    "unet_ldm_key_to_diffusers",
    "unet_ldm_to_diffusers",
    "vae_diffusers_to_ldm",
    "vae_key_map",
    "vae_ldm_to_diffusers",
]
