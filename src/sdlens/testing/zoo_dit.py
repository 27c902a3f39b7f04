"""DiT-family test checkpoints with real key names: SD3 / SD3.5, FLUX, AuraFlow, HunyuanDiT, PixArt-α/Σ.

Every builder instantiates the real diffusers / transformers class. ``size="full"`` builds on the meta device
(shapes only: hand the result to :func:`sdlens.testing.writers.save_safetensors` for a sparse file);
``size="tiny"`` keeps every key name (same block counts) but uses small widths and seeded random values.

Families are record ids (``sdlens.arch.families``: sd3, sd35m, sd35, flux_dev, flux_schnell, auraflow,
hunyuandit, pixart_alpha, pixart_sigma; aliases such as ``flux`` resolve). ``layout="original"`` renames with
the family's key map (:mod:`sdlens.arch.keymap`, checked against diffusers' single-file converters).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Literal

import torch

from sdlens.arch import families
from sdlens.arch.configs import DENOISERS, TEXT_ENCODERS, VAES
from sdlens.arch.keymap import dit_map
from sdlens.arch.keymap.pixart import NULL_CAPTION

Size = Literal["tiny", "full"]
Layout = Literal["original", "diffusers"]
TensorDict = dict[str, torch.Tensor]


_SD3_TINY = {
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "caption_projection_dim": 32,
    "joint_attention_dim": 32,
    "pooled_projection_dim": 32,
    "sample_size": 16,
    "pos_embed_max_size": 8,
}
# width overrides for size="tiny" (block counts untouched), by record id, else by key map
_TINY: dict[str, dict[str, Any]] = {
    "mmdit": _SD3_TINY,
    "sd35m": {**_SD3_TINY, "pos_embed_max_size": 16},
    "flux": {
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": 32,
        "pooled_projection_dim": 32,
        "axes_dims_rope": (4, 6, 6),
    },
    "auraflow": {
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": 32,
        "caption_projection_dim": 32,
        "pos_embed_max_size": 64,
        "sample_size": 16,
    },
    "hunyuandit": {
        "num_attention_heads": 2,
        "attention_head_dim": 8,
        "hidden_size": 16,
        "cross_attention_dim": 24,
        "cross_attention_dim_t5": 32,
        "pooled_projection_dim": 24,
        "sample_size": 16,
    },
    "pixart": {
        "num_attention_heads": 2,
        "attention_head_dim": 12,
        "cross_attention_dim": 24,
        "caption_channels": 32,
    },
}
# the DiT families this builder makes (the newer ones: testing/zoo_new_a.py, zoo_new_b.py)
FAMILIES = tuple(
    f.id
    for f in families.all_families()
    if f.denoiser and dit_map(f.denoiser.keymap) and f.denoiser.keymap in _TINY
)
# config changes for the variants the records tell apart by shapes (FLUX Fill / Depth)
_VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "flux": {
        "fill": {"in_channels": 384, "out_channels": 64},
        "depth": {"in_channels": 128, "out_channels": 64},
    },
}
# where the released single files put the denoiser (BFL, fal, Tencent and PixArt files are bare)
_RELEASE_PREFIX = {"mmdit": "model.diffusion_model."}


# ----------------------------------------------------------------------------------------------- helpers
def _diffusers_cls(name: str) -> Any:
    import diffusers

    return getattr(diffusers, name)


def _full_dtype(dtype: torch.dtype | None, size: Size) -> torch.dtype:
    if dtype is not None:
        return dtype
    return torch.float32 if size == "tiny" else torch.float16


def materialize(meta_sd: dict[str, torch.Tensor], *, size: Size, seed: int, dtype: torch.dtype) -> TensorDict:
    """Shapes of ``meta_sd`` -> meta tensors (``full``) or seeded N(0, 0.02²) values (``tiny``), in key order."""
    if size == "full":
        return {k: torch.empty(tuple(v.shape), dtype=dtype, device="meta") for k, v in meta_sd.items()}
    gen = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(tuple(v.shape), generator=gen) * 0.02).to(dtype) for k, v in meta_sd.items()}


_META_CACHE: dict[str, dict[str, torch.Tensor]] = {}


def _meta_state_dict(
    factory: Callable[[], torch.nn.Module], key: str | None = None
) -> dict[str, torch.Tensor]:
    """State dict of ``factory()`` built on the meta device; cached under ``key`` when given."""
    if key is not None and key in _META_CACHE:
        return dict(_META_CACHE[key])
    with torch.device("meta"):
        sd = factory().state_dict()
    if key is not None:
        _META_CACHE[key] = sd
    return dict(sd)


def meta_state_dict(cls_name: str, cfg: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Meta-device state dict of diffusers class ``cls_name`` built with ``cfg`` (cached)."""
    cls = _diffusers_cls(cls_name)
    return _meta_state_dict(lambda: cls(**cfg), f"diffusers:{cls_name}:{sorted(cfg.items())!r}")


def _record(family: str) -> families.Family:
    fam = families.get(families.resolve(family) or family)
    if fam is None or fam.id not in FAMILIES:
        raise ValueError(f"unknown DiT family {family!r}; expected one of {FAMILIES}")
    return fam


def keymap_name(family: str) -> str:
    """The key map (``sdlens.arch.keymap.dit_map``) of a DiT family id."""
    return str(_record(family).denoiser.keymap)


# ----------------------------------------------------------------------------------------------- configs
def denoiser_config(
    family: str, *, size: Size = "tiny", variant: str | None = None
) -> tuple[str, dict[str, Any]]:
    """(diffusers class name, config kwargs) for record ``family`` at ``size``; ``variant``: FLUX fill / depth."""
    fam = _record(family)
    km = keymap_name(family)
    cfg = dict(fam.denoiser.config)
    if variant is not None:
        choices = _VARIANTS.get(km, {})
        if variant not in choices:
            raise ValueError(
                f"family {fam.id!r} has no variant {variant!r}; expected one of {tuple(choices)}"
            )
        cfg.update(choices[variant])
    if size == "tiny":
        cfg.update(_TINY.get(fam.id, _TINY[km]))
    elif size != "full":
        raise ValueError(f"size must be 'tiny' or 'full', not {size!r}")
    return fam.denoiser.cls_name, cfg


def to_original(family: str, sd: TensorDict, *, seed: int = 0) -> TensorDict:
    """diffusers state dict of ``family`` -> its original single-file keys (no prefix), with the family's key
    map. PixArt files also hold the learned null caption (``y_embedder.y_embedding``, [tokens, caption width]),
    which diffusers does not keep: it is added here, seeded."""
    km = dit_map(keymap_name(family))
    out = km.convert(sd, "original")
    if NULL_CAPTION in km.original_only:
        w = sd["caption_projection.linear_1.weight"]
        shape = (_record(family).text_encoders[0].tokens, w.shape[1])
        if w.device.type == "meta":
            out[NULL_CAPTION] = torch.empty(shape, dtype=w.dtype, device="meta")
        else:
            gen = torch.Generator().manual_seed(seed + 1)
            out[NULL_CAPTION] = (torch.randn(shape, generator=gen) * 0.02).to(w.dtype)
    return out


# ----------------------------------------------------------------------------------------------- public builders
def build_denoiser(
    family: str,
    *,
    size: Size = "tiny",
    layout: Layout = "original",
    seed: int = 0,
    variant: str | None = None,
    dtype: torch.dtype | None = None,
) -> TensorDict:
    """State dict of a DiT-family denoiser (keys without any ``model.diffusion_model.`` prefix).

    ``dtype`` defaults to float32 (tiny) / float16 (full)."""
    cls_name, cfg = denoiser_config(family, size=size, variant=variant)
    meta = meta_state_dict(cls_name, cfg)
    sd = materialize(meta, size=size, seed=seed, dtype=_full_dtype(dtype, size))
    if layout == "diffusers":
        return sd
    if layout != "original":
        raise ValueError(f"layout must be 'original' or 'diffusers', not {layout!r}")
    return to_original(family, sd, seed=seed)


def text_encoder_meta_state_dict(name: str, size: Size) -> dict[str, torch.Tensor]:
    """Meta state dict of text encoder ``name`` (clip_l, clip_g, t5xxl / t5, openclip_h) as stored in files."""
    import transformers

    kind = {"t5xxl": "t5"}.get(name, name)
    cls_name, cfg = TEXT_ENCODERS[kind]
    cfg = dict(cfg)
    if size == "tiny":
        if kind == "t5":
            cfg.update(d_model=16, d_ff=32, d_kv=8, num_heads=2)
        else:
            cfg.update(hidden_size=16, intermediate_size=32, num_attention_heads=2, projection_dim=16)
    cls = getattr(transformers, cls_name)
    config_cls = transformers.T5Config if kind == "t5" else transformers.CLIPTextConfig
    sd = _meta_state_dict(lambda: cls(config_cls(**cfg)), f"transformers:{cls_name}:{sorted(cfg.items())!r}")
    if kind == "t5":
        sd.pop("encoder.embed_tokens.weight", None)  # tied to shared.weight, not stored
    elif cls_name == "CLIPTextModel":  # transformers >= 5.6 dropped the text_model wrapper
        sd = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in sd.items()}
    return sd


def build_text_encoders(
    names: Collection[str] = ("clip_l", "clip_g", "t5xxl"),
    *,
    size: Size = "tiny",
    seed: int = 0,
    prefix: str = "text_encoders.",
    dtype: torch.dtype | None = None,
) -> TensorDict:
    """Text encoders as SD3 / FLUX single files store them: ``{prefix}{name}.transformer.<transformers keys>``.

    clip_l: CLIPTextModel (no projection, as in the SD3 files); clip_g: CLIPTextModelWithProjection;
    t5xxl: T5EncoderModel (``shared.weight``, no tied ``encoder.embed_tokens.weight``)."""
    out: TensorDict = {}
    for j, name in enumerate(names):
        sd = materialize(
            text_encoder_meta_state_dict(name, size),
            size=size,
            seed=seed + 101 * (j + 1),
            dtype=_full_dtype(dtype, size),
        )
        out.update({f"{prefix}{name}.transformer.{k}": v for k, v in sd.items()})
    return out


def build_text_encoders_sd3(
    size: Size = "tiny", seed: int = 0, dtype: torch.dtype | None = None
) -> TensorDict:
    """``text_encoders.{clip_l,clip_g,t5xxl}.*`` as in ``sd3_medium_incl_clips_t5xxlfp16.safetensors``."""
    return build_text_encoders(("clip_l", "clip_g", "t5xxl"), size=size, seed=seed, dtype=dtype)


_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_to_ldm(sd: TensorDict, num_levels: int = 4) -> TensorDict:
    """diffusers AutoencoderKL keys -> LDM ``first_stage_model`` keys (no prefix); attention linears -> 1x1 convs."""
    out: TensorDict = {}
    for key, t in sd.items():
        new = key
        if m := re.match(r"(encoder|decoder)\.conv_norm_out\.(.*)", key):
            new = f"{m[1]}.norm_out.{m[2]}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.*)", key):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{_VAE_RESNET.get(m[3], m[3])}.{m[4]}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.*)", key):
            new = f"decoder.up.{num_levels - 1 - int(m[1])}.block.{m[2]}.{_VAE_RESNET.get(m[3], m[3])}.{m[4]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            new = f"decoder.up.{num_levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(\w+)\.(.*)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{_VAE_RESNET.get(m[3], m[3])}.{m[4]}"
        elif m := re.match(
            r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.*)", key
        ):
            new = f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}"
            if t.dim() == 2:
                t = t.reshape(*t.shape, 1, 1)
        out[new] = t
    return out


def build_vae(
    kind: str = "kl_f8_c16",
    *,
    size: Size = "tiny",
    seed: int = 0,
    prefix: str = "first_stage_model.",
    layout: Layout = "original",
    dtype: torch.dtype | None = None,
) -> TensorDict:
    """AutoencoderKL with ``configs.VAES[kind]``; ``original`` = LDM keys under ``prefix``."""
    cfg = dict(VAES[kind])
    if size == "tiny":
        cfg.update(block_out_channels=[8, 16, 16, 16], norm_num_groups=4)
    sd = materialize(
        meta_state_dict("AutoencoderKL", cfg), size=size, seed=seed + 7, dtype=_full_dtype(dtype, size)
    )
    if layout == "diffusers":
        return sd
    return {prefix + k: v for k, v in vae_to_ldm(sd, len(cfg["block_out_channels"])).items()}


def build_vae16(size: Size = "tiny", seed: int = 0, dtype: torch.dtype | None = None) -> TensorDict:
    """16-channel SD3 / FLUX VAE in LDM layout under ``first_stage_model.``."""
    return build_vae("kl_f8_c16", size=size, seed=seed, dtype=dtype)


def build_single_file(
    family: str,
    size: Size = "tiny",
    seed: int = 0,
    with_encoders: bool = False,
    with_vae: bool = False,
    variant: str | None = None,
    *,
    denoiser_prefix: str | None = None,
    dtype: torch.dtype | None = None,
) -> TensorDict:
    """A single-file checkpoint as released: denoiser in original layout, optionally encoders / VAE.

    Prefixes come from the record's ``single_file``: SD3 family ``model.diffusion_model.*`` +
    ``text_encoders.{clip_l,clip_g,t5xxl}.*`` + ``first_stage_model.*``; FLUX bare denoiser keys as BFL ships
    them (``denoiser_prefix="model.diffusion_model."`` for the ComfyUI form) + ``text_encoders.{clip_l,t5xxl}.*``
    + ``vae.*``. Families without bundled encoders / VAE in the record refuse them."""
    fam = _record(family)
    te_prefixes = [fam.single_file[k] for k in fam.text_encoder_kinds if k in fam.single_file]
    if (with_encoders and not te_prefixes) or (with_vae and "vae" not in fam.single_file):
        raise ValueError(f"{family!r} single files carry no text encoders / VAE")
    if denoiser_prefix is None:
        denoiser_prefix = _RELEASE_PREFIX.get(keymap_name(family), "")
    den = build_denoiser(family, size=size, layout="original", seed=seed, variant=variant, dtype=dtype)
    out = {denoiser_prefix + k: v for k, v in den.items()}
    if with_encoders:
        names = [p.removeprefix("text_encoders.").rstrip(".") for p in te_prefixes]
        out.update(build_text_encoders(names, size=size, seed=seed, dtype=dtype))
    if with_vae:
        vae = next(k for k, v in VAES.items() if v.get("latent_channels") == fam.latent_channels)
        out.update(build_vae(vae, size=size, seed=seed, prefix=fam.single_file["vae"], dtype=dtype))
    return out


# ----------------------------------------------------------------------------------------------- UNet names / ControlNet
_RESNET_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_TOP_LDM = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def unet_name_to_ldm(name: str, *, layers_per_block: int = 2, up_attn_blocks: Collection[int] = ()) -> str:
    """diffusers UNet2DConditionModel / ControlNetModel module or parameter name -> LDM name.

    ``up_attn_blocks``: indices of up blocks that have attentions (their upsampler sits at ``.2``, else ``.1``)."""
    n = layers_per_block + 1

    def resnet(rest: str) -> str:
        head, _, tail = rest.partition(".")
        new = _RESNET_LDM.get(head, head)
        return f"{new}.{tail}" if tail else new

    for src, dst in _TOP_LDM.items():
        if name == src or name.startswith(src + "."):
            return dst + name[len(src) :]
    if m := re.match(r"down_blocks\.(\d+)\.(attentions|resnets)\.(\d+)(?:\.(.*))?$", name):
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4] or ""
        base = f"input_blocks.{1 + b * n + j}"
        if kind == "attentions":
            return f"{base}.1" + (f".{rest}" if rest else "")
        return f"{base}.0" + (f".{resnet(rest)}" if rest else "")
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv(.*)$", name):
        return f"input_blocks.{(int(m[1]) + 1) * n}.0.op{m[2]}"
    if m := re.match(r"mid_block\.(attentions|resnets)\.(\d+)(?:\.(.*))?$", name):
        kind, j, rest = m[1], int(m[2]), m[3] or ""
        if kind == "attentions":
            return "middle_block.1" + (f".{rest}" if rest else "")
        return f"middle_block.{2 * j}" + (f".{resnet(rest)}" if rest else "")
    if m := re.match(r"up_blocks\.(\d+)\.(attentions|resnets)\.(\d+)(?:\.(.*))?$", name):
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4] or ""
        base = f"output_blocks.{b * n + j}"
        if kind == "attentions":
            return f"{base}.1" + (f".{rest}" if rest else "")
        return f"{base}.0" + (f".{resnet(rest)}" if rest else "")
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv(.*)$", name):
        b = int(m[1])
        return f"output_blocks.{b * n + layers_per_block}.{2 if b in up_attn_blocks else 1}.conv{m[2]}"
    return name


def controlnet_config(kind: str = "sd1", size: Size = "tiny") -> dict[str, Any]:
    """ControlNetModel kwargs mirroring the SD1 / SDXL UNet encoder (``tiny``: small widths, same layout)."""
    import inspect

    from diffusers import ControlNetModel

    base = {"sd1": "sd1", "sdxl": "sdxl"}.get(kind)
    if base is None:
        raise ValueError(f"ControlNet kind must be 'sd1' or 'sdxl', not {kind!r}")
    allowed = set(inspect.signature(ControlNetModel.__init__).parameters)
    cfg = {k: v for k, v in DENOISERS[base][1].items() if k in allowed}
    if size == "tiny":
        cfg.update(
            cross_attention_dim=32, conditioning_embedding_out_channels=(4, 8, 8, 16), norm_num_groups=8
        )
        if kind == "sd1":
            cfg.update(block_out_channels=(16, 32, 32, 32), attention_head_dim=8)
        else:
            cfg.update(
                block_out_channels=(16, 32, 32),
                attention_head_dim=[2, 4, 4],
                addition_time_embed_dim=8,
                projection_class_embeddings_input_dim=32 + 6 * 8,
            )
    return cfg


def _block_ids(sd: dict[str, Any], prefix: str) -> list[int]:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in sd if (m := pat.match(k))})


def controlnet_to_original(sd: TensorDict, *, layers_per_block: int = 2) -> TensorDict:
    """diffusers ControlNetModel state dict -> LDM ``control_model.*`` keys."""
    out: TensorDict = {}
    n_hint = len(_block_ids(sd, "controlnet_cond_embedding.blocks."))
    for key, t in sd.items():
        if m := re.match(r"controlnet_cond_embedding\.blocks\.(\d+)\.(.*)", key):
            new = f"input_hint_block.{2 * (int(m[1]) + 1)}.{m[2]}"
        elif m := re.match(r"controlnet_cond_embedding\.conv_in\.(.*)", key):
            new = f"input_hint_block.0.{m[1]}"
        elif m := re.match(r"controlnet_cond_embedding\.conv_out\.(.*)", key):
            new = f"input_hint_block.{2 * (n_hint + 1)}.{m[1]}"
        elif m := re.match(r"controlnet_down_blocks\.(\d+)\.(.*)", key):
            new = f"zero_convs.{m[1]}.0.{m[2]}"
        elif m := re.match(r"controlnet_mid_block\.(.*)", key):
            new = f"middle_block_out.0.{m[1]}"
        else:
            new = unet_name_to_ldm(key, layers_per_block=layers_per_block)
        out["control_model." + new] = t
    return out


def build_controlnet(
    kind: str = "sd1",
    size: Size = "tiny",
    seed: int = 0,
    layout: Layout = "original",
    *,
    dtype: torch.dtype | None = None,
) -> TensorDict:
    """ControlNet for SD1 / SDXL: ``control_model.*`` (original) or diffusers ``ControlNetModel`` keys."""
    cfg = controlnet_config(kind, size)
    sd = materialize(
        meta_state_dict("ControlNetModel", cfg), size=size, seed=seed, dtype=_full_dtype(dtype, size)
    )
    if layout == "diffusers":
        return sd
    return controlnet_to_original(sd, layers_per_block=cfg.get("layers_per_block", 2))


def write_diffusers_folder(
    family: str,
    path: str | Path,
    *,
    size: Size = "tiny",
    seed: int = 0,
    variant: str | None = None,
    sd: TensorDict | None = None,
) -> Path:
    """A denoiser-only diffusers folder: ``model_index.json`` (the record's pipeline class) and the denoiser's
    slot (``transformer/``) with ``config.json`` and ``diffusion_pytorch_model.safetensors`` (``sd``, or the
    seeded tiny / meta model)."""
    from sdlens.testing.writers import save_safetensors

    fam = _record(family)
    cls_name, cfg = denoiser_config(family, size=size, variant=variant)
    if sd is None:
        sd = build_denoiser(family, size=size, layout="diffusers", seed=seed, variant=variant)
    slot = fam.diffusers_slots["denoiser"]
    path = Path(path)
    (path / slot).mkdir(parents=True, exist_ok=True)
    index = {
        "_class_name": fam.pipeline.diffusers_class if fam.pipeline else "",
        "_diffusers_version": "0.32.0",
        slot: ["diffusers", cls_name],
    }
    (path / "model_index.json").write_text(json.dumps(index, indent=2))
    config = {"_class_name": cls_name, **{k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}}
    (path / slot / "config.json").write_text(json.dumps(config, indent=2))
    save_safetensors(sd, path / slot / "diffusion_pytorch_model.safetensors")
    return path
