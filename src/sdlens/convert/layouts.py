"""Key layouts for conversion: LDM / sgm single files <-> diffusers folders, per component.

Built on the verified key maps of :mod:`sdlens.arch.keymap` (UNet, VAE prefix tables) and the CLIP layouts
(HF ``text_model.*`` <-> open_clip ``transformer.resblocks.N`` with fused q/k/v). Every mapping here only
renames keys, reshapes (same bytes) or describes an output tensor as row slices / transposes / a
concatenation of input tensors (:class:`Piece`), so converting one way and back gives the same bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from sdlens.arch import configs as C
from sdlens.arch import families
from sdlens.arch.schedulers import SCHEDULERS, scheduler_config  # noqa: F401  (re-exported for convert)


@dataclass(frozen=True)
class Piece:
    """Part of an output tensor: input ``key`` of source ``source`` (0 = the input, 1 = ``--vae``), optionally
    a row range (dim 0) and/or a 2-D transpose. An output tensor is its pieces concatenated along dim 0."""

    source: int
    key: str
    rows: tuple[int, int] | None = None
    transpose: bool = False

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"source": self.source, "key": self.key}
        if self.rows:
            d["rows"] = list(self.rows)
        if self.transpose:
            d["transpose"] = True
        return d


@dataclass
class Item:
    """One tensor of the model being converted (logical LDM naming until a layout is applied)."""

    key: str
    shape: tuple[int, ...]
    dtype: str  # dtype in the source
    pieces: tuple[Piece, ...]
    component: str = "other"
    op: str = "keep"  # keep | rename | restore | replace | ema | drop
    note: str = ""
    restore: str | None = None  # no source data: "arange" int64 0..N-1 (position_ids), "empty", "value"
    file: str = ""  # output file (relative to OUT for folders)
    out_dtype: str = ""
    tags: set[str] = field(default_factory=set)
    bake: tuple[str, ...] = ()  # the LoRA files whose ΔW is added (--merge-lora): assembled, not streamed
    value: float | None = None  # restore "value": every element (a marker scalar such as edm_vpred.sigma_max)

    @property
    def simple(self) -> bool:
        """One whole input tensor, unchanged in element order (written straight from the stream)."""
        return (
            self.restore is None
            and not self.bake
            and len(self.pieces) == 1
            and not self.pieces[0].rows
            and not self.pieces[0].transpose
        )


def renamed(item: Item, key: str, shape: tuple[int, ...] | None = None) -> Item:
    return replace(
        item, key=key, shape=tuple(shape) if shape is not None else item.shape, tags=set(item.tags)
    )


# --------------------------------------------------------------------------- VAE

_VAE_ATTN = re.compile(r"(^|\.)mid\.attn_1\.(q|k|v|proj_out)\.weight$")
_VAE_ATTN_DIFFUSERS = re.compile(r"(^|\.)mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$")


def _groups(channels: list[int]) -> int:
    for g in (32, 16, 8, 4, 2, 1):
        if all(c % g == 0 for c in channels):
            return g
    return 1


def vae_config(shapes: dict[str, tuple[int, ...]], family: str = "") -> dict[str, Any]:
    """A diffusers AutoencoderKL config read off VAE keys (LDM or diffusers layout, no prefix)."""
    diffusers = any(k.startswith("encoder.down_blocks.") for k in shapes)
    lvl_rx = re.compile(r"^encoder\.down_blocks\.(\d+)\." if diffusers else r"^encoder\.down\.(\d+)\.")
    levels = len({m.group(1) for k in shapes if (m := lvl_rx.match(k))}) or 4
    res_rx = re.compile(
        r"^encoder\.down_blocks\.0\.resnets\.(\d+)\." if diffusers else r"^encoder\.down\.0\.block\.(\d+)\."
    )
    per = len({m.group(1) for k in shapes if (m := res_rx.match(k))}) or 2
    chans = []
    for lvl in range(levels):
        k = (
            f"encoder.down_blocks.{lvl}.resnets.0.conv1.weight"
            if diffusers
            else f"encoder.down.{lvl}.block.0.conv1.weight"
        )
        chans.append(shapes[k][0] if k in shapes else 0)
    latent = shapes.get("decoder.conv_in.weight", (0, 4))[1]
    cfg = C.vae_config_for(latent)
    cfg.update(
        _class_name="AutoencoderKL",
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
        layers_per_block=per,
        latent_channels=latent,
        use_quant_conv="quant_conv.weight" in shapes,
        use_post_quant_conv="post_quant_conv.weight" in shapes,
    )
    if all(chans):
        cfg["block_out_channels"] = chans
        cfg["norm_num_groups"] = _groups(chans)
    if "encoder.conv_in.weight" in shapes:
        cfg["in_channels"] = shapes["encoder.conv_in.weight"][1]
    if "decoder.conv_out.weight" in shapes:
        cfg["out_channels"] = shapes["decoder.conv_out.weight"][0]
    fam = families.get(family)
    if fam is not None and fam.vae_scaling_factor is not None:
        cfg["scaling_factor"] = fam.vae_scaling_factor
    return cfg


def _vae_pmap(cfg: dict[str, Any]):
    from sdlens.arch.keymap._common import PrefixMap
    from sdlens.arch.keymap.vae import vae_prefix_table

    return PrefixMap(vae_prefix_table({k: v for k, v in cfg.items() if not k.startswith("_")}))


def vae_ldm_to_diffusers(
    rel: str, shape: tuple[int, ...], cfg: dict[str, Any]
) -> tuple[str, tuple[int, ...]]:
    key, _conv = _vae_pmap(cfg).to_diffusers(rel)
    if _VAE_ATTN.search(rel) and len(shape) == 4:
        shape = shape[:2]
    return key, shape


def vae_diffusers_to_ldm(
    rel: str, shape: tuple[int, ...], cfg: dict[str, Any]
) -> tuple[str, tuple[int, ...]]:
    key, _conv = _vae_pmap(cfg).to_ldm(rel)
    if _VAE_ATTN_DIFFUSERS.search(rel) and len(shape) == 2:
        shape = (*shape, 1, 1)
    return key, shape


# --------------------------------------------------------------------------- UNet

_POOLED = C.TEXT_ENCODERS["clip_g"][1].get(
    "projection_dim", 1280
)  # the pooled text width of SDXL's label_emb


def unet_config(
    family: str, shapes: dict[str, tuple[int, ...]], pooled_dim: int | None = None
) -> dict[str, Any]:
    """A diffusers UNet2DConditionModel config for an LDM UNet (no prefix): the family's released config with
    every width that can be read off the weights replaced (channels, context width, inputs, outputs)."""
    fam = families.get(family)
    cfg: dict[str, Any] = {"_class_name": "UNet2DConditionModel", **fam.denoiser.config}
    from sdlens.arch.keymap.unet import _DEFAULTS

    full = {**_DEFAULTS, **cfg}
    levels = len(full["down_block_types"])
    per = full["layers_per_block"]
    if "input_blocks.0.0.weight" in shapes:
        cfg["in_channels"] = shapes["input_blocks.0.0.weight"][1]
    if "out.2.weight" in shapes:
        cfg["out_channels"] = shapes["out.2.weight"][0]
    chans = []
    for lvl in range(levels):
        k = f"input_blocks.{1 + lvl * (per + 1)}.0.out_layers.3.weight"
        chans.append(shapes[k][0] if k in shapes else 0)
    if all(chans) and chans != list(full.get("block_out_channels", [])):
        cfg["block_out_channels"] = chans
        cfg["norm_num_groups"] = _groups(chans)
        heads = full.get("attention_head_dim", 8)
        heads = heads if isinstance(heads, list) else [heads] * levels
        if any(c % h for c, h in zip(chans, heads, strict=False)):
            cfg["attention_head_dim"] = [_groups([c]) for c in chans]
    ctx = next((s[1] for k, s in shapes.items() if k.endswith("attn2.to_k.weight")), None)
    if ctx:
        cfg["cross_attention_dim"] = ctx
    adm = shapes.get("label_emb.0.0.weight")
    if adm is not None:
        cfg["projection_class_embeddings_input_dim"] = adm[1]
        # size / crop / target (or aesthetic score) ids of the released model: (its width - pooled) / id width
        released = full.get("projection_class_embeddings_input_dim") or 0
        id_dim = full.get("addition_time_embed_dim") or 0
        n_ids = (released - _POOLED) // id_dim if released > _POOLED and id_dim else 5
        if (
            pooled_dim
            and (adm[1] - pooled_dim) % n_ids == 0
            and adm[1] != full.get("projection_class_embeddings_input_dim")
        ):
            cfg["addition_time_embed_dim"] = (adm[1] - pooled_dim) // n_ids
    return cfg


def _unet_pmap(cfg: dict[str, Any]):
    from sdlens.arch.keymap._common import PrefixMap
    from sdlens.arch.keymap.unet import unet_prefix_table

    return PrefixMap(unet_prefix_table({k: v for k, v in cfg.items() if not k.startswith("_")}))


def unet_ldm_to_diffusers(rel: str, cfg: dict[str, Any]) -> str:
    return _unet_pmap(cfg).to_diffusers(rel)[0]


def unet_diffusers_to_ldm(rel: str, cfg: dict[str, Any]) -> str:
    return _unet_pmap(cfg).to_ldm(rel)[0]


# --------------------------------------------------------------------------- CLIP

_OC_LAYER = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_OC_TOP = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
}
_OC_RESBLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_HF_LAYER = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.(.+)$")
POSITION_IDS = "text_model.embeddings.position_ids"


def openclip_to_hf(
    items: dict[str, Item], num_layers: int | None, projection: bool
) -> tuple[list[Item], list[str]]:
    """open_clip text encoder items (rel key -> item) -> HF CLIPTextModel items; and the rel keys with no HF
    counterpart (``logit_scale``, ``attn_mask``, layers past ``num_layers``, a projection the class lacks)."""
    out: list[Item] = []
    left: list[str] = []
    for rel, it in items.items():
        if rel in _OC_TOP:
            out.append(renamed(it, _OC_TOP[rel]))
        elif rel == "text_projection" and projection and len(it.shape) == 2:
            p = it.pieces[0]
            out.append(
                replace(
                    renamed(it, "text_projection.weight", (it.shape[1], it.shape[0])),
                    pieces=(replace(p, transpose=True),),
                )
            )
        elif m := _OC_RESBLOCK.match(rel):
            n, rest = int(m.group(1)), m.group(2)
            if num_layers is not None and n >= num_layers:
                left.append(rel)
                continue
            base = f"text_model.encoder.layers.{n}."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]
                width = it.shape[0] // 3
                for i, q in enumerate("qkv"):
                    p = replace(it.pieces[0], rows=(i * width, (i + 1) * width))
                    out.append(
                        replace(
                            renamed(it, f"{base}self_attn.{q}_proj.{kind}", (width, *it.shape[1:])),
                            pieces=(p,),
                        )
                    )
                continue
            for src, dst in _OC_LAYER.items():
                if rest.startswith(src + "."):
                    out.append(renamed(it, base + dst + rest[len(src) :]))
                    break
            else:
                left.append(rel)
        else:
            left.append(rel)
    return out, left


def hf_to_openclip(items: dict[str, Item]) -> tuple[list[Item], list[str]]:
    """HF CLIPTextModel items (rel key -> item) -> open_clip items (q/k/v concatenated into ``in_proj``)."""
    rev_top = {v: k for k, v in _OC_TOP.items()}
    out: list[Item] = []
    left: list[str] = []
    qkv: dict[tuple[int, str], dict[str, Item]] = {}
    for rel, it in items.items():
        if rel in rev_top:
            out.append(renamed(it, rev_top[rel]))
        elif rel == "text_projection.weight" and len(it.shape) == 2:
            p = it.pieces[0]
            out.append(
                replace(
                    renamed(it, "text_projection", (it.shape[1], it.shape[0])),
                    pieces=(replace(p, transpose=True),),
                )
            )
        elif m := _HF_LAYER.match(rel):
            n, rest = int(m.group(1)), m.group(2)
            if qm := re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest):
                qkv.setdefault((n, qm.group(2)), {})[qm.group(1)] = it
                continue
            for src, dst in _OC_LAYER.items():
                if rest.startswith(dst + "."):
                    out.append(renamed(it, f"transformer.resblocks.{n}.{src}{rest[len(dst) :]}"))
                    break
            else:
                left.append(rel)
        else:
            left.append(rel)
    for (n, kind), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"} or len({p.dtype for p in parts.values()}) != 1:
            left += [f"text_model.encoder.layers.{n}.self_attn.{q}_proj.{kind}" for q in parts]
            continue
        first = parts["q"]
        shape = (sum(parts[q].shape[0] for q in "qkv"), *first.shape[1:])
        pieces = tuple(p for q in "qkv" for p in parts[q].pieces)
        merged = replace(
            renamed(first, f"transformer.resblocks.{n}.attn.in_proj_{kind}", shape), pieces=pieces
        )
        out.append(merged)
    return out, left


def clip_layers(rels: list[str]) -> int:
    rx = re.compile(r"^(?:text_model\.encoder\.layers|transformer\.resblocks)\.(\d+)\.")
    return len({m.group(1) for k in rels if (m := rx.match(k))})


def text_config(
    kind: str, shapes: dict[str, tuple[int, ...]], layers: int, projection: bool
) -> dict[str, Any]:
    """A transformers CLIPTextConfig dict for an HF-layout text encoder, widths read off the weights."""
    cls, base = C.TEXT_ENCODERS.get(kind, C.TEXT_ENCODERS["clip_l"])
    cfg: dict[str, Any] = dict(base)
    tok = shapes.get("text_model.embeddings.token_embedding.weight")
    pos = shapes.get("text_model.embeddings.position_embedding.weight")
    fc1 = shapes.get("text_model.encoder.layers.0.mlp.fc1.weight")
    proj = shapes.get("text_projection.weight")
    if tok:
        cfg["vocab_size"], cfg["hidden_size"] = tok
    if pos:
        cfg["max_position_embeddings"] = pos[0]
    if fc1:
        cfg["intermediate_size"] = fc1[0]
    if proj:
        cfg["projection_dim"] = proj[0]
    cfg["num_hidden_layers"] = layers
    if cfg["hidden_size"] != base["hidden_size"]:
        heads = base["num_attention_heads"]
        while heads > 1 and cfg["hidden_size"] % heads:
            heads -= 1
        cfg["num_attention_heads"] = heads
    cfg["architectures"] = ["CLIPTextModelWithProjection" if projection else "CLIPTextModel"]
    cfg["model_type"] = "clip_text_model"
    return cfg


# Views of the records (sdlens.arch.families) the folder <-> single-file code reads: per family, where each
# text encoder sits in the single file and which diffusers slot it fills, and the pipeline class.
def _te_map(field: str) -> dict[str, dict[str, str]]:
    return {
        f.id: {k: v for k, v in getattr(f, field).items() if k in f.text_encoder_kinds}
        for f in families.all_families()
    }


SINGLE_PREFIX: dict[str, dict[str, str]] = _te_map("single_file")
PIPELINE_SLOT: dict[str, dict[str, str]] = _te_map("diffusers_slots")
PIPELINE_CLASS: dict[str, str] = {
    f.id: f.pipeline.diffusers_class
    for f in families.all_families()
    if f.pipeline and f.pipeline.diffusers_class
}
OPENCLIP_KINDS = ("openclip_h", "clip_g")
# layers the HF model runs (SD2 files store one more open_clip resblock than are used)
HF_LAYERS = {"openclip_h": 23}
