"""The diffusers folder layout of ``sdlens convert``: reading a pipeline folder as single-file (LDM) items,
and laying single-file items out as a pipeline folder (weights per slot, configs, ``model_index.json``)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdlens.analysis.recorded_configs import recorded_configs
from sdlens.arch import families
from sdlens.arch.detect import text_encoder_kind
from sdlens.convert import dit_layout
from sdlens.convert import layouts as L
from sdlens.convert.items import assign_components, drop_item
from sdlens.convert.layouts import Item, Piece, renamed
from sdlens.convert.options import EXTRAS_FILE
from sdlens.errors import SdlensError

if TYPE_CHECKING:
    from sdlens.io.base import Checkpoint

# --------------------------------------------------------------------------- reading a diffusers folder


def from_diffusers(
    ck: Checkpoint, folder: Path, sources: list[str]
) -> tuple[dict[str, Item], dict[str, Any], list[str]]:
    """A diffusers pipeline folder as logical LDM items; the folder's configs; notes."""
    notes: list[str] = []
    configs = _folder_configs(ck, folder)
    parts: dict[str, dict[str, Item]] = {}
    for key, info in ck.tensors.items():
        part, _, rel = key.partition(".")
        parts.setdefault(part, {})[rel] = Item(key, info.shape, info.dtype, (Piece(0, key),))
    items: dict[str, Item] = {}
    # UNet first: it tells the family
    family = _unet_from_diffusers(parts.pop("unet", {}), configs.get("unet"), items, notes)
    dit_layout.from_diffusers(
        parts, configs, items
    )  # a DiT's transformer/ (and its VAE) in the record's layout
    _vae_from_diffusers(parts.pop("vae", {}), configs.get("vae"), family, items)
    for slot in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        _text_encoder_from_diffusers(slot, parts.pop(slot, {}), family, items, notes)
    for rels in parts.values():
        _keep_as_is(rels, items)
    _extras_from_folder(ck, folder, sources, items)
    return items, configs, notes


def _folder_configs(ck: Checkpoint, folder: Path) -> dict[str, Any]:
    configs: dict[str, Any] = {k: v for k, v in ck.configs.items() if isinstance(v, dict)}
    if (folder / "scheduler" / "scheduler_config.json").is_file():
        from sdlens.io.folders import confined, read_json, root_of

        with contextlib.suppress(SdlensError):  # confined to the folder, like its weights
            configs["scheduler"] = read_json(
                confined(root_of(folder), folder, "scheduler/scheduler_config.json", folder)
            )
    return configs


def _keep_as_is(rels: dict[str, Item], items: dict[str, Item]) -> None:
    for it in rels.values():
        items[it.key] = it


def _unet_from_diffusers(
    unet: dict[str, Item], ucfg: dict[str, Any] | None, items: dict[str, Item], notes: list[str]
) -> str:
    """The UNet's items under their LDM names; returns the family they tell."""
    if unet and ucfg:
        mapped: dict[str, Item] = {}
        for rel, it in unet.items():
            try:
                mapped["model.diffusion_model." + L.unet_diffusers_to_ldm(rel, ucfg)] = it
            except (KeyError, ValueError):
                items[it.key] = it
        for k, it in mapped.items():
            items[k] = renamed(it, k)
        fam, _ = assign_components({k: items[k] for k in mapped})
        return fam
    if unet:
        _keep_as_is(unet, items)
        notes.append("unet/ has no config.json: its keys are kept as they are")
    return "unknown"


def _vae_from_diffusers(
    vae: dict[str, Item], vcfg: dict[str, Any] | None, family: str, items: dict[str, Item]
) -> None:
    if not vae:
        return
    vcfg = vcfg or L.vae_config({r: it.shape for r, it in vae.items()}, family)
    for rel, it in vae.items():
        try:
            k, shape = L.vae_diffusers_to_ldm(rel, it.shape, vcfg)
            items["first_stage_model." + k] = renamed(it, "first_stage_model." + k, shape)
        except (KeyError, ValueError):
            items[it.key] = it


def _text_encoder_from_diffusers(
    slot: str, rels: dict[str, Item], family: str, items: dict[str, Item], notes: list[str]
) -> None:
    if not rels:
        return
    rels = {
        (r if r.startswith(("text_model.", "text_projection")) else "text_model." + r): it
        for r, it in rels.items()
    }
    kind = text_encoder_kind(list(rels))
    prefix = L.SINGLE_PREFIX.get(family, {}).get(kind)
    if prefix is None:
        _keep_as_is(rels, items)
        notes.append(f"{slot}/ ({kind}) has no place in a {family} single file: keys kept as they are")
        return
    if kind in L.OPENCLIP_KINDS:
        out, left = L.hf_to_openclip(rels)
        for it in out:
            items[prefix + it.key] = renamed(it, prefix + it.key)
        for rel in left:
            items[rels[rel].key] = rels[rel]
        return
    for rel, it in rels.items():
        items[prefix + rel] = renamed(it, prefix + rel)
    pos = rels.get("text_model.embeddings.position_embedding.weight")
    if pos is not None and L.POSITION_IDS not in rels:
        k = prefix + L.POSITION_IDS
        items[k] = Item(
            k,
            (1, pos.shape[0]),
            "I64",
            (),
            op="restore",
            restore="arange",
            note="position_ids restored as int64 0..N-1 (transformers does not store it)",
        )


def _extras_from_folder(ck: Checkpoint, folder: Path, sources: list[str], items: dict[str, Item]) -> None:
    """The tensors a previous ``--layout diffusers`` kept in the extras file, back under their own keys."""
    extras = folder / EXTRAS_FILE
    if not extras.is_file():
        return
    from sdlens.io.folders import confined, root_of
    from sdlens.io.open import open_checkpoint

    extras = confined(root_of(folder), folder, EXTRAS_FILE, folder)
    with open_checkpoint(extras) as ex:
        sources.append(str(extras))
        si = len(sources) - 1
        for key, info in ex.tensors.items():
            if key.endswith(L.POSITION_IDS) and key in items:
                items.pop(key)
            items[key] = Item(key, info.shape, info.dtype, (Piece(si, key),))
        for k, v in ex.metadata.items():
            ck.metadata.setdefault(k, v)


# --------------------------------------------------------------------------- writing a diffusers folder


@dataclass
class _Folder:
    """The folder being laid out: written items, their files' configs, what has no diffusers counterpart."""

    known: dict[str, Any]  # the configs an earlier conversion recorded (metadata), by slot
    arange_pos: set[str]
    final: list[Item] = field(default_factory=list)
    dropped: list[Item] = field(default_factory=list)
    extras: list[Item] = field(default_factory=list)
    json_files: dict[str, dict[str, Any]] = field(default_factory=dict)
    slots_written: dict[str, str] = field(default_factory=dict)  # text encoder slot -> transformers class
    pooled: int | None = None  # clip_g's projection width (the SDXL UNet config needs it)

    def put(self, it: Item, file: str, key: str, shape: tuple[int, ...] | None = None) -> None:
        new = renamed(it, key, shape)
        new.file = file
        self.final.append(new)

    def split_prefix(self, group: dict[str, Item], prefix: str) -> dict[str, Item]:
        """The group's items under ``prefix``, by their names below it; the rest become extras."""
        self.extras += [it for k, it in group.items() if not k.startswith(prefix)]
        return {k[len(prefix) :]: it for k, it in group.items() if k.startswith(prefix)}


def to_diffusers(
    items: dict[str, Item], family: str, metadata: dict[str, str], arange_pos: set[str], inp: Path
) -> tuple[list[Item], dict[str, dict[str, Any]], list[Item]]:
    comps_present = {it.component for it in items.values()}
    if "denoiser" in comps_present and (
        dit := dit_layout.diffusers_layout(items, family, metadata, inp, EXTRAS_FILE)
    ):
        return dit
    out = _Folder(recorded_configs(metadata, families.get(family)), arange_pos)
    by_comp: dict[str, dict[str, Item]] = {}
    for k, it in items.items():
        by_comp.setdefault(it.component, {})[k] = it
    # text encoders first (their widths feed the UNet config)
    for kind, slot in L.PIPELINE_SLOT.get(family, {}).items():
        group = by_comp.pop(kind, {})
        if group:
            _text_encoder_to_diffusers(out, kind, slot, group, family)
    den = by_comp.pop("denoiser", {})
    if den:
        _unet_to_diffusers(out, den, family)
    vae = {**by_comp.pop("vae_encoder", {}), **by_comp.pop("vae_decoder", {})}
    if vae:
        _vae_to_diffusers(out, vae, family)
    for group in by_comp.values():
        out.extras += list(group.values())
    for it in out.extras:
        new = renamed(it, it.key)
        new.file = EXTRAS_FILE
        new.note = (new.note + "; " if new.note else "") + "no diffusers counterpart: kept in " + EXTRAS_FILE
        out.final.append(new)
    if den and family in L.PIPELINE_CLASS:
        _pipeline_files(out, family, bool(vae))
    return out.final, out.json_files, out.dropped


def _text_encoder_to_diffusers(
    out: _Folder, kind: str, slot: str, group: dict[str, Item], family: str
) -> None:
    rels = out.split_prefix(group, L.SINGLE_PREFIX[family][kind])
    file = f"{slot}/model.safetensors"
    if kind in L.OPENCLIP_KINDS:
        conv, left = L.openclip_to_hf(rels, L.HF_LAYERS.get(kind), kind == "clip_g")
        for it in conv:
            out.put(it, file, it.key)
        out.extras += [rels[r] for r in left]
    else:
        for r, it in rels.items():
            hf = r if r.startswith(("text_model.", "text_projection")) else "text_model." + r
            if hf == L.POSITION_IDS:
                if it.key in out.arange_pos:
                    out.dropped.append(
                        drop_item(it, "int64 0..N-1: transformers rebuilds it; restored when converting back")
                    )
                else:
                    out.extras.append(it)
                continue
            out.put(it, file, hf)
    shapes = {e.key: e.shape for e in out.final if e.file == file}
    cfg = out.known.get(slot) or L.text_config(kind, shapes, L.clip_layers(list(shapes)), kind == "clip_g")
    out.json_files[f"{slot}/config.json"] = cfg
    out.slots_written[slot] = cfg.get("architectures", ["CLIPTextModel"])[0]
    if kind == "clip_g" and "text_projection.weight" in shapes:
        out.pooled = shapes["text_projection.weight"][0]


def _unet_to_diffusers(out: _Folder, den: dict[str, Item], family: str) -> None:
    rels = out.split_prefix(den, "model.diffusion_model.")
    cfg = out.known.get("unet") or L.unet_config(family, {r: it.shape for r, it in rels.items()}, out.pooled)
    for r, it in rels.items():
        try:
            out.put(it, "unet/diffusion_pytorch_model.safetensors", L.unet_ldm_to_diffusers(r, cfg))
        except (KeyError, ValueError):
            out.extras.append(it)
    out.json_files["unet/config.json"] = cfg


def _vae_to_diffusers(out: _Folder, vae: dict[str, Item], family: str) -> None:
    rels = out.split_prefix(vae, "first_stage_model.")
    cfg = out.known.get("vae") or L.vae_config({r: it.shape for r, it in rels.items()}, family)
    for r, it in rels.items():
        try:
            key, shape = L.vae_ldm_to_diffusers(r, it.shape, cfg)
            out.put(it, "vae/diffusion_pytorch_model.safetensors", key, shape)
        except (KeyError, ValueError):
            out.extras.append(it)
    out.json_files["vae/config.json"] = cfg


def _pipeline_files(out: _Folder, family: str, with_vae: bool) -> None:
    """``model_index.json`` and the scheduler's config."""
    index: dict[str, Any] = dict(out.known.get("model_index") or {"_class_name": L.PIPELINE_CLASS[family]})
    index.setdefault("unet", ["diffusers", "UNet2DConditionModel"])
    if with_vae:
        index.setdefault("vae", ["diffusers", "AutoencoderKL"])
    for slot, cls in out.slots_written.items():
        index.setdefault(slot, ["transformers", cls])
    sched = out.known.get("scheduler") or L.scheduler_config(family)
    index.setdefault("scheduler", ["diffusers", sched["_class_name"]])
    out.json_files["model_index.json"] = index
    out.json_files["scheduler/scheduler_config.json"] = sched
