"""One canonical name for every tensor, whatever the file's layout, so two files compare tensor to tensor.

Canonical names are ``<component>/<key>`` with the key in one layout per component:

* denoiser — LDM names for UNets (diffusers-layout UNets renamed with the keymap); diffusers names for DiTs
  (original-layout files renamed with the family's key map, their fused q/k/v as row slices; the modulations
  whose (shift, scale) halves the two layouts order differently as ``key[a:b]`` row ranges), so an original
  file, its ComfyUI form (``model.diffusion_model.`` prefix) and its diffusers folder index alike;
* VAE — LDM names (``encoder.down.0.block.0.conv1.weight``); diffusers VAEs renamed;
* text encoders — transformers' CLIPTextModel layout (``text_model.encoder.layers.0.self_attn.q_proj.weight``):
  NAI-renamed keys are put back under ``text_model.``, open_clip's fused ``in_proj_weight`` becomes three row
  slices and its ``text_projection`` a transpose (see :class:`CanonRef`);
* EMA — ``ema/<LDM UNet key>`` (the dot-free ``model_ema.diffusion_model…`` names restored against the
  file's own denoiser keys, or, without one, against the released UNet configs' LDM keys);
* schedule buffers, markers, ControlNets — their own keys; anything unrecognised — ``other/<full key>``.

Canonical shapes: the shape after ``rows`` / ``transpose``; the VAE's mid-block attention weights, 1×1 convs
[C, C, 1, 1] in LDM files and linears [C, C] in diffusers ones, are canonical as 2-D [C, C].
:func:`read_canonical` returns tensors of the canonical shape, so equal weights compare ``torch.equal``.
Names one layout has and the other lacks (``logit_scale``, ``position_ids``, SD2's unused 24th open_clip
layer, ``text_projection`` of a projection-less encoder, schedule buffers) simply stay unmatched.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from sdlens.arch import configs as C
from sdlens.arch import families
from sdlens.arch import registry as R
from sdlens.arch.detect import Component
from sdlens.arch.identify import identify
from sdlens.arch.identify import latent_channels as _latent_channels
from sdlens.io.base import Checkpoint, TensorInfo

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class CanonRef:
    """Where a canonical tensor's data lives: a real key, optionally a row slice (dim 0) and/or a transpose;
    ``shape`` is the canonical shape (after both)."""

    key: str
    shape: tuple[int, ...]
    rows: tuple[int, int] | None = None
    transpose: bool = False


def read_canonical(ckpt: Checkpoint, ref: CanonRef, *, copy: bool = True) -> torch.Tensor:
    """Read ``ref.key`` from ``ckpt`` and apply the row slice, transpose and reshape to the canonical shape."""
    t = ckpt.read(ref.key, copy=copy)
    if ref.rows is not None:
        t = t[ref.rows[0] : ref.rows[1]]
    if ref.transpose:
        t = t.t()
    if tuple(t.shape) != tuple(ref.shape):
        t = t.reshape(ref.shape)
    return t


def _plain(info: TensorInfo) -> CanonRef:
    return CanonRef(info.key, info.shape)


# --------------------------------------------------------------------------- text encoders

_OPENCLIP_LAYER = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_OPENCLIP_TOP = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
}
_RESBLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")


def _text_encoder(comp: Component) -> dict[str, CanonRef]:
    out: dict[str, CanonRef] = {}
    for rel, info in comp.keys.items():
        key = rel.removeprefix("transformer.") if rel.startswith("transformer.text_model.") else rel
        m = _RESBLOCK.match(rel)
        if m:  # open_clip layout
            n, rest = m.groups()
            base = f"text_model.encoder.layers.{n}."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                width = info.shape[0] // 3
                kind = "weight" if rest.endswith("weight") else "bias"
                for i, qkv in enumerate("qkv"):
                    shape = (width, *info.shape[1:])
                    out[f"{base}self_attn.{qkv}_proj.{kind}"] = CanonRef(
                        info.key, shape, (i * width, (i + 1) * width)
                    )
                continue
            for src, dst in _OPENCLIP_LAYER.items():
                if rest.startswith(src + "."):
                    rest = dst + rest[len(src) :]
                    break
            out[base + rest] = _plain(info)
            continue
        if rel in _OPENCLIP_TOP:
            out[_OPENCLIP_TOP[rel]] = _plain(info)
        elif rel == "text_projection" and len(info.shape) == 2:
            out["text_projection.weight"] = CanonRef(info.key, (info.shape[1], info.shape[0]), transpose=True)
        elif key.startswith(("encoder.layers.", "embeddings.", "final_layer_norm.")) and comp.id != "t5":
            out["text_model." + key] = _plain(
                info
            )  # NAI-renamed, or the ldm prefix that swallowed text_model.
        else:
            out[key] = _plain(info)
    return out


# --------------------------------------------------------------------------- UNet, VAE, EMA


def _unet_config(family: str, configs: Mapping[str, dict] | None) -> dict | None:
    if configs and isinstance(configs.get("unet"), dict) and configs["unet"].get("block_out_channels"):
        return {k: v for k, v in configs["unet"].items() if not k.startswith("_")}
    fam = R.FAMILY_BY_ID.get(family)
    return dict(fam.denoiser.config) if fam and fam.denoiser and fam.denoiser.keymap == "unet" else None


def _dit(comp: Component, family: str) -> dict[str, CanonRef] | None:
    """DiT denoisers: diffusers names, whatever the layout (the family's key map; q/k/v apart, swapped
    modulation halves as ``key[a:b]`` row ranges). None where the family has no DiT map."""
    fam = families.get(family)
    name = fam.denoiser.keymap if fam and fam.denoiser else None
    if not name or name == "unet":  # UNet files never import the key maps (nor torch) here
        return None
    from sdlens.arch.keymap import dit_map

    km = dit_map(name)
    if km is None:
        return None
    index, left = km.canonical({rel: info.shape for rel, info in comp.keys.items()})
    out: dict[str, CanonRef] = {}
    for name, target in index.items():
        piece = target.pieces[0]
        out[name] = CanonRef(comp.keys[piece.key].key, target.shape, piece.rows)
    for rel in left:  # outside the map (PixArt's null caption...): its own name
        out.setdefault(rel, _plain(comp.keys[rel]))
    return out


def _denoiser(comp: Component, family: str, configs: Mapping[str, dict] | None) -> dict[str, CanonRef]:
    dit = _dit(comp, family)
    if dit is not None:
        return dit
    is_diffusers_unet = "conv_in.weight" in comp.keys and any(k.startswith("down_blocks.") for k in comp.keys)
    config = _unet_config(family, configs) if is_diffusers_unet else None
    if config is None:
        return {rel: _plain(info) for rel, info in comp.keys.items()}
    from sdlens.arch.keymap import unet_diffusers_key_to_ldm

    out: dict[str, CanonRef] = {}
    for rel, info in comp.keys.items():
        try:
            out[unet_diffusers_key_to_ldm(rel, config)] = _plain(info)
        except (KeyError, ValueError):
            out[rel] = _plain(info)
    return out


def _vae(comps: list[Component], configs: Mapping[str, dict] | None) -> dict[str, CanonRef]:
    keys = {rel: info for c in comps for rel, info in c.keys.items()}
    if not any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in keys):
        return {rel: _vae_attn_2d(rel, _plain(info)) for rel, info in keys.items()}
    from sdlens.arch.keymap import vae_key_map

    cfg = (configs or {}).get("vae")
    if not (isinstance(cfg, dict) and cfg.get("block_out_channels")):
        cfg = C.vae_config_for(_latent_channels(keys))
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    try:
        mapping = vae_key_map(cfg, list(keys))
    except (KeyError, ValueError):
        return {rel: _plain(info) for rel, info in keys.items()}
    out: dict[str, CanonRef] = {}
    for rel, info in keys.items():
        name = mapping.get(rel, rel)
        out[name] = _vae_attn_2d(name, _plain(info))
    return out


_VAE_ATTN = re.compile(r"^(encoder|decoder)\.mid\.attn_1\.(q|k|v|proj_out)\.weight$")


def _vae_attn_2d(name: str, ref: CanonRef) -> CanonRef:
    """VAE mid attention weights are canonical as 2-D [C, C] (LDM stores 1x1 convs [C, C, 1, 1])."""
    if _VAE_ATTN.match(name) and len(ref.shape) == 4 and ref.shape[2:] == (1, 1):
        return CanonRef(ref.key, ref.shape[:2], ref.rows, ref.transpose)
    return ref


@cache
def _released_unet_ldm_keys() -> tuple[tuple[str, ...], ...]:
    """LDM key sets of the released UNet configs (sd1, sd2, sdxl, refiner), for EMA files without a UNet."""
    from sdlens.arch.keymap import unet_key_map

    return tuple(
        tuple(unet_key_map(cfg).values())
        for cls, cfg in C.DENOISERS.values()
        if cls == "UNet2DConditionModel"
    )


def _squash(ldm_keys: Iterable[str]) -> dict[str, str]:
    return {"diffusion_model" + k.replace(".", ""): k for k in ldm_keys}


def _ema(comp: Component, denoiser_keys: list[str]) -> dict[str, CanonRef]:
    """Restore the dots of ``model_ema.diffusion_model…`` keys from the UNet key set that explains most of them."""
    rels = [r for r in comp.keys if r.startswith("diffusion_model")]
    best = _squash(denoiser_keys)
    if not all(r in best for r in rels):
        for keys in _released_unet_ldm_keys():
            other = _squash(keys)
            if sum(r in other for r in rels) > sum(r in best for r in rels):
                best = other
    return {best.get(rel, rel): _plain(info) for rel, info in comp.keys.items()}


def canonical_index(
    tensors: Mapping[str, TensorInfo], configs: Mapping[str, dict] | None = None
) -> tuple[dict[str, CanonRef], str]:
    """Canonical name -> where its data is, for every tensor; and the detected family id."""
    ident = identify(tensors, configs)
    split, comps, family = ident.split, ident.split.components, ident.denoiser_family
    out: dict[str, CanonRef] = {}
    denoiser_keys: list[str] = []
    if "denoiser" in comps:
        den = _denoiser(comps["denoiser"], family, configs)
        denoiser_keys = list(den)
        out.update({f"denoiser/{k}": v for k, v in den.items()})
    vae_parts = [comps[c] for c in ("vae_encoder", "vae_decoder") if c in comps]
    for rel, ref in _vae(vae_parts, configs).items():
        side = "vae_decoder" if rel.startswith(("decoder.", "post_quant_conv.")) else "vae_encoder"
        out[f"{side}/{rel}"] = ref
    for cid, comp in comps.items():
        base = cid.split("@")[0]
        if base in R.TEXT_ENCODER_KINDS:
            out.update({f"{cid}/{k}": v for k, v in _text_encoder(comp).items()})
        elif base == "ema":
            out.update({f"ema/{k}": v for k, v in _ema(comp, denoiser_keys).items()})
        elif base not in ("denoiser", "vae_encoder", "vae_decoder"):
            out.update({f"{cid}/{rel}": _plain(info) for rel, info in comp.keys.items()})
    for key, info in split.unknown.items():
        out[f"other/{key}"] = _plain(info)
    return out, family
