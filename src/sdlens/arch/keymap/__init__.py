"""Key maps between diffusers / transformers state dicts and LDM / sgm / open_clip single-file layouts.

DiT denoisers (SD3 ``mmdit``, ``flux``, ``auraflow``, ``hunyuandit``, ``pixart``, ``sana``, ``lumina2``,
``stable_cascade``, ``wan``, ``chroma``, ``ltx_video``: the names records give in ``Denoiser.keymap``) have one :class:`~sdlens.arch.keymap._dit.DitMap` each, looked up with :func:`dit_map`.
"""

from sdlens.arch.keymap import (
    auraflow,
    chroma,
    flux,
    hunyuandit,
    ltx_video,
    lumina2,
    mmdit,
    pixart,
    sana,
    stable_cascade,
    wan,
)
from sdlens.arch.keymap._dit import DitMap, Plan, Rel, Slice, Target, assemble
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

DIT_MAPS: dict[str, DitMap] = {
    m.MAP.name: m.MAP
    for m in (
        mmdit,
        flux,
        auraflow,
        hunyuandit,
        pixart,
        sana,
        lumina2,
        stable_cascade,
        wan,
        chroma,
        ltx_video,
    )
}


def dit_map(name: str | None) -> DitMap | None:
    """The DiT key map a record names (``Denoiser.keymap``); None for UNets, unknown names and None."""
    return DIT_MAPS.get(name) if name else None


__all__ = [
    "DIT_MAPS",
    "DitMap",
    "Plan",
    "Rel",
    "Slice",
    "Target",
    "assemble",
    "dit_map",
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
