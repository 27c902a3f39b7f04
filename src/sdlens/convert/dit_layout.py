"""DiT denoisers between their original single-file layout and a diffusers folder, for ``convert --layout``.

Every key comes from the family's key map (:mod:`sdlens.arch.keymap`), every output tensor is a row
concatenation of (slices of) input tensors, so original -> diffusers -> original gives the same bytes. Where the
records put a component: ``single_file`` (prefixes) and ``diffusers_slots`` (folders); the pipeline class and
scheduler: ``pipeline``. The VAE goes to ``vae/`` (LDM <-> diffusers, as for the UNet families); tensors that
have no diffusers home (text encoders bundled in a single file, PixArt's null caption) are left to the
caller's extras file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from sdlens.analysis.recorded_configs import recorded_configs
from sdlens.arch import families
from sdlens.arch.keymap import DitMap, dit_map
from sdlens.arch.record import Family
from sdlens.arch.shapes import derive_config
from sdlens.convert import layouts as L
from sdlens.errors import SdlensError
from sdlens.io.base import TensorInfo


def dit_record(family: str) -> tuple[Family, DitMap] | None:
    """The record and DiT key map of ``family``; None for UNet or unknown families."""
    fam = families.get(family)
    km = dit_map(fam.denoiser.keymap) if fam and fam.denoiser else None
    return (fam, km) if fam is not None and km is not None else None


def _infos(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, TensorInfo]:
    return {k: TensorInfo(k, tuple(s), "F32", "", 0) for k, s in shapes.items()}


def denoiser_config(fam: Family, shapes: Mapping[str, tuple[int, ...]], path: Any = None) -> dict[str, Any]:
    """The denoiser's diffusers config: the record's released config with what the weights tell (widths,
    depths, channels) read off ``shapes`` by the record's config-from-shapes function."""
    den = fam.denoiser
    if den is None or den.config_from_shapes is None:
        raise SdlensError(path, f"--layout diffusers: the {fam.id} record has no config-from-shapes function")
    cfg = derive_config(den, _infos(shapes), path)
    return {
        "_class_name": den.cls_name,
        **{k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
    }


def single_prefix(fam: Family, component: str) -> str:
    """Where ``component`` sits in the family's single file ('' where the release stores it bare)."""
    return fam.single_file.get(component, "")


def strip_prefix(keys: list[str], candidates: tuple[str, ...]) -> str:
    """The one candidate prefix every key carries ('' if none does)."""
    for p in sorted(candidates, key=len, reverse=True):
        if p and all(k.startswith(p) for k in keys):
            return p
    return ""


# --------------------------------------------------------------------------- single file -> diffusers folder


def to_diffusers(
    items: Mapping[str, Any],
    fam: Family,
    km: DitMap,
    known: Mapping[str, Any],
    extras_file: str,
    path: Any = None,
) -> tuple[list[Any], dict[str, dict[str, Any]], list[Any]]:
    """Items of a DiT single file (logical single-file keys) -> (items placed in the folder's files, the JSON
    files, dropped items). ``known``: configs a diffusers folder left in the file's metadata (used as they are)."""
    final: list[Any] = []
    extras: list[Any] = []
    json_files: dict[str, dict[str, Any]] = {}

    def put(it: Any, file: str, key: str, shape: tuple[int, ...], pieces: tuple | None = None) -> None:
        new = L.renamed(it, key, shape)
        if pieces is not None:
            new = replace(new, pieces=pieces)
        new.file = file
        final.append(new)

    by_comp: dict[str, dict[str, Any]] = {}
    for k, it in items.items():
        by_comp.setdefault(it.component, {})[k] = it
    den = by_comp.pop("denoiser", {})
    prefix = strip_prefix(list(den), (single_prefix(fam, "denoiser"), "model.diffusion_model."))
    rels = {k[len(prefix) :]: it for k, it in den.items() if it.simple}
    extras += [it for it in den.values() if not it.simple]
    slot = fam.diffusers_slots.get("denoiser", "transformer")
    file = f"{slot}/diffusion_pytorch_model.safetensors"
    plan = km.to_diffusers({r: it.shape for r, it in rels.items()})
    for dkey, target in plan.targets.items():
        first = rels[target.pieces[0].key]
        pieces = tuple(replace(rels[s.key].pieces[0], rows=s.rows) for s in target.pieces)
        put(first, file, dkey, target.shape, pieces)
    extras += [rels[r] for r in plan.left]
    cfg = dict(known.get(slot) or denoiser_config(fam, {r: it.shape for r, it in rels.items()}, path))
    json_files[f"{slot}/config.json"] = cfg

    vae = {**by_comp.pop("vae_encoder", {}), **by_comp.pop("vae_decoder", {})}
    if vae:
        vprefix = strip_prefix(list(vae), (single_prefix(fam, "vae"), "first_stage_model.", "vae."))
        vrels = {k[len(vprefix) :]: it for k, it in vae.items()}
        vcfg = known.get("vae") or L.vae_config({r: it.shape for r, it in vrels.items()}, fam.id)
        for r, it in vrels.items():
            try:
                key, shape = L.vae_ldm_to_diffusers(r, it.shape, vcfg)
            except (KeyError, ValueError):
                extras.append(it)
                continue
            put(it, "vae/diffusion_pytorch_model.safetensors", key, shape)
        json_files["vae/config.json"] = vcfg
    for group in by_comp.values():
        extras += list(group.values())
    for it in extras:
        new = L.renamed(it, it.key)
        new.file = extras_file
        new.note = (new.note + "; " if new.note else "") + "no diffusers counterpart: kept in " + extras_file
        final.append(new)
    sched = known.get("scheduler") or L.scheduler_config(fam.id)
    index: dict[str, Any] = dict(
        known.get("model_index")
        or {"_class_name": fam.pipeline.diffusers_class if fam.pipeline else "DiffusionPipeline"}
    )
    index.setdefault(slot, ["diffusers", cfg["_class_name"]])
    if vae:
        index.setdefault("vae", ["diffusers", "AutoencoderKL"])
    index.setdefault("scheduler", ["diffusers", sched["_class_name"]])
    json_files["model_index.json"] = index
    json_files["scheduler/scheduler_config.json"] = sched
    return final, json_files, []


# --------------------------------------------------------------------------- diffusers folder -> single file


def _family_of(rels: Mapping[str, Any]) -> tuple[Family, DitMap] | None:
    from sdlens.arch.detect import match_family, read_features

    infos = {r: TensorInfo(r, it.shape, it.dtype, "", 0) for r, it in rels.items()}
    return dit_record(match_family(read_features(infos)).family)


def from_diffusers(
    parts: dict[str, dict[str, Any]], configs: Mapping[str, Any], items: dict[str, Any]
) -> None:
    """A DiT folder's denoiser slot (and its VAE) -> single-file items, in the record's single-file layout;
    ``parts`` (slot -> relative key -> item) loses the slots it handles. Nothing happens for other folders."""
    slots = {f.diffusers_slots.get("denoiser") for f in families.all_families() if dit_record(f.id)}
    slot = next((s for s in slots if s and s in parts), None)
    if slot is None:
        return
    hit = _family_of(parts[slot])
    if hit is None:
        return
    fam, km = hit
    rels = parts.pop(slot)
    prefix = single_prefix(fam, "denoiser")
    plan = km.to_original({r: it.shape for r, it in rels.items()})
    for okey, target in plan.targets.items():
        first = rels[target.pieces[0].key]
        pieces = tuple(replace(rels[s.key].pieces[0], rows=s.rows) for s in target.pieces)
        items[prefix + okey] = replace(L.renamed(first, prefix + okey, target.shape), pieces=pieces)
    for r in plan.left:
        items[rels[r].key] = rels[r]
    vae = parts.get("vae")
    if vae and "vae" in fam.single_file:
        parts.pop("vae")
        vprefix = fam.single_file["vae"]
        vcfg = configs.get("vae") or L.vae_config({r: it.shape for r, it in vae.items()}, fam.id)
        for rel, it in vae.items():
            try:
                k, shape = L.vae_diffusers_to_ldm(rel, it.shape, vcfg)
            except (KeyError, ValueError):
                items[it.key] = it
                continue
            items[vprefix + k] = L.renamed(it, vprefix + k, shape)


def diffusers_layout(
    items: dict[str, Any], family: str, metadata: dict[str, str], path: Any, extras_file: str
) -> tuple[list[Any], dict[str, dict[str, Any]], list[Any]] | None:
    """The gate of ``--layout diffusers`` for a file with a denoiser: None for the UNet families (their
    conversion follows), the whole folder (items, JSON files, dropped) for a DiT family with a key map, and a
    clear refusal for anything else."""
    fam = families.get(family)
    km = fam.denoiser.keymap if fam and fam.denoiser else None
    if km == "unet":
        return None
    hit = dit_record(family)
    if hit is None:
        raise SdlensError(path, f"--layout diffusers: no key map for this denoiser (family {family})")
    known = recorded_configs(metadata, hit[0])
    return to_diffusers(items, hit[0], hit[1], known, extras_file, path)
