"""Plan a conversion before touching any data: every output tensor, where its bytes come from, what happens
to it (keep / cast / rename / restore / replace / EMA / drop), its dtype and size.

The plan is built from headers (plus the few tiny ``position_ids`` tensors); ``--dry-run`` renders it and the
writer executes it tensor by tensor.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sdlens.arch.detect import split_components, text_encoder_kind
from sdlens.arch.identify import identify
from sdlens.convert import layouts as L
from sdlens.convert.layouts import Item, Piece, renamed
from sdlens.errors import SdlensError
from sdlens.io.base import Checkpoint, TensorInfo
from sdlens.io.dtypes import DTYPES
from sdlens.words import plural

DTYPE_CHOICES = {"fp16": "F16", "bf16": "BF16", "fp32": "F32", "keep": None}
EMA_CHOICES = ("keep", "drop", "use")
LAYOUTS = ("single", "diffusers")
EXTRAS_FILE = "sdlens_extras.safetensors"
CONFIGS_META = "sdlens.diffusers_configs"
PROVENANCE_META = "sdlens.provenance"

# --drop / --extract names -> components (split_components ids; "other" = keys no layout explains)
_TE = ("clip_l", "openclip_h", "clip_g", "t5", "text_encoder")
SELECTORS: dict[str, tuple[str, ...]] = {
    "unknown": ("other",),
    "ema": ("ema",),
    "schedule": ("schedule",),
    "markers": ("markers",),
    "vae": ("vae_encoder", "vae_decoder"),
    "vae_encoder": ("vae_encoder",),
    "vae_decoder": ("vae_decoder",),
    "te": _TE,
    "unet": ("denoiser",),
    "denoiser": ("denoiser",),
    "controlnet": ("controlnet",),
    **{k: (k,) for k in _TE},
}


@dataclass
class ConvertOptions:
    dtype: str = "keep"
    ema: str = "keep"
    drop: list[str] = field(default_factory=list)
    fix_position_ids: bool = False
    vae: Path | None = None
    extract: list[str] = field(default_factory=list)
    layout: str = "single"
    variant: str | None = None  # diffusers folders: read this variant's files (fp16 ...)

    def validate(self) -> None:
        from sdlens.io.folders import check_variant

        check_variant(self.variant)
        if self.dtype not in DTYPE_CHOICES:
            raise SdlensError(None, f"--dtype must be one of {', '.join(DTYPE_CHOICES)} (got {self.dtype!r})")
        if self.ema not in EMA_CHOICES:
            raise SdlensError(None, f"--ema must be one of {', '.join(EMA_CHOICES)} (got {self.ema!r})")
        if self.layout not in LAYOUTS:
            raise SdlensError(None, f"--layout must be single or diffusers (got {self.layout!r})")
        for d in self.drop:
            if d not in SELECTORS and d != "position_ids" and not any(c in d for c in "*?[."):
                raise SdlensError(None, f"--drop {d!r}: not a component ({', '.join(SELECTORS)}, position_ids) "
                                  "nor a key pattern (use a glob such as 'my_trainer.*')")
        for x in self.extract:
            if x not in SELECTORS or x == "unknown":
                raise SdlensError(None, f"--extract {x!r}: expected one of {', '.join(k for k in SELECTORS if k != 'unknown')}")

    def to_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "ema": self.ema, "drop": list(self.drop), "fix_position_ids": self.fix_position_ids,
                "vae": str(self.vae) if self.vae else None, "extract": list(self.extract), "layout": self.layout,
                "variant": self.variant}


def _op(it: Item) -> str:
    if it.op != "keep":
        return it.op
    p = it.pieces[0] if it.pieces else None
    if p is None or len(it.pieces) > 1 or p.rows or p.transpose or p.key != it.key:
        return "rename"
    return "keep"


def entry_dict(it: Item, sources: list[str]) -> dict[str, Any]:
    d: dict[str, Any] = {
        "key": it.key,
        "file": it.file,
        "op": _op(it),
        "cast": bool(it.out_dtype) and it.out_dtype != it.dtype and it.op != "drop",
        "component": it.component,
        "shape": list(it.shape),
        "dtype_in": it.dtype,
        "dtype_out": it.out_dtype or it.dtype,
        "bytes": nbytes(it),
        "sources": [{**p.to_dict(), "file": sources[p.source]} for p in it.pieces],
    }
    if it.note:
        d["note"] = it.note
    return d


def nbytes(it: Item) -> int:
    n = DTYPES[it.out_dtype or it.dtype].itemsize
    for s in it.shape:
        n *= s
    return n


@dataclass
class ConversionPlan:
    input: str
    output: str
    sources: list[str]
    input_format: str
    family: str
    layout: str
    options: ConvertOptions
    entries: list[Item]  # written, grouped by file, in write order
    dropped: list[Item]
    json_files: dict[str, dict[str, Any]]
    metadata: dict[str, str]
    operations: list[str]
    notes: list[str]
    input_tensor_bytes: int = 0
    input_file_bytes: int = 0
    range_check: dict[str, Any] | None = None  # filled by a dry-run scan or by the write

    @property
    def files(self) -> dict[str, list[Item]]:
        out: dict[str, list[Item]] = {}
        for e in self.entries:
            out.setdefault(e.file, []).append(e)
        return out

    @property
    def output_tensor_bytes(self) -> int:
        return sum(nbytes(e) for e in self.entries)

    def output_size(self) -> int:
        """Bytes of every output file (headers included; the provenance entry estimated)."""
        from sdlens.io.safetensors_writer import build_header

        meta = {**self.metadata, PROVENANCE_META: "x" * 1024}
        total = sum(len(json.dumps(v, indent=2)) for v in self.json_files.values())
        for entries in self.files.values():
            header, sizes = build_header([(e.key, e.out_dtype, e.shape) for e in entries], meta)
            total += len(header) + sum(sizes)
        return total

    def counts(self) -> dict[str, int]:
        c: dict[str, int] = {}
        for e in self.entries:
            op = _op(e)
            if op == "keep" and e.out_dtype != e.dtype:
                op = "cast"
            elif e.out_dtype != e.dtype:
                c["cast"] = c.get("cast", 0) + 1
            c[op] = c.get(op, 0) + 1
        c["drop"] = len(self.dropped)
        return c

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "output": self.output,
            "sources": self.sources,
            "input_format": self.input_format,
            "family": self.family,
            "layout": self.layout,
            "options": self.options.to_dict(),
            "operations": self.operations,
            "notes": self.notes,
            "counts": self.counts(),
            "input_tensor_bytes": self.input_tensor_bytes,
            "input_file_bytes": self.input_file_bytes,
            "output_tensor_bytes": self.output_tensor_bytes,
            "output_size": self.output_size(),
            "files": sorted(self.files) + sorted(self.json_files),
            "range_check": self.range_check,
            "entries": [entry_dict(e, self.sources) for e in self.entries],
            "dropped": [entry_dict(e, self.sources) for e in self.dropped],
        }


# --------------------------------------------------------------------------- helpers


def _infos(items: dict[str, Item]) -> dict[str, TensorInfo]:
    return {k: TensorInfo(k, it.shape, it.dtype, "", 0) for k, it in items.items()}


def _assign_components(items: dict[str, Item]) -> tuple[str, dict[str, Any]]:
    """Set each item's component; return the family and the split's components (for prefixes)."""
    ident = identify(_infos(items))
    split = ident.split
    for cid, comp in split.components.items():
        for k in comp.full_keys:
            items[k].component = cid.split("@")[0]
    for k in split.unknown:
        items[k].component = "other"
    return ident.denoiser_family, split.components


def _drop(it: Item, note: str) -> Item:
    return replace(it, op="drop", note=note, tags=set(it.tags))


def _is_arange(ck: Checkpoint, key: str) -> bool:
    import numpy as np

    info = ck.tensors.get(key)
    if info is None or info.dtype != "I64" or info.nbytes > 1 << 20:
        return False
    vals = ck.read_numpy(key).reshape(-1)
    return bool(np.array_equal(vals, np.arange(vals.size)))


# --------------------------------------------------------------------------- reading a diffusers folder


def _from_diffusers(ck: Any, folder: Path, sources: list[str]) -> tuple[dict[str, Item], dict[str, Any], list[str]]:
    """A diffusers pipeline folder as logical LDM items; the folder's configs; notes."""
    notes: list[str] = []
    configs: dict[str, Any] = {k: v for k, v in ck.configs.items() if isinstance(v, dict)}
    if (folder / "scheduler" / "scheduler_config.json").is_file():
        from sdlens.io.folders import confined, read_json, root_of

        with contextlib.suppress(SdlensError):  # confined to the folder, like its weights
            configs["scheduler"] = read_json(confined(root_of(folder), folder, "scheduler/scheduler_config.json", folder))
    parts: dict[str, dict[str, Item]] = {}
    for key, info in ck.tensors.items():
        part, _, rel = key.partition(".")
        parts.setdefault(part, {})[rel] = Item(key, info.shape, info.dtype, (Piece(0, key),))
    items: dict[str, Item] = {}

    def keep_as_is(part: str, rels: dict[str, Item]) -> None:
        for it in rels.values():
            items[it.key] = it

    # UNet first: it tells the family
    family = "unknown"
    unet = parts.pop("unet", {})
    ucfg = configs.get("unet")
    if unet and ucfg:
        mapped: dict[str, Item] = {}
        for rel, it in unet.items():
            try:
                mapped["model.diffusion_model." + L.unet_diffusers_to_ldm(rel, ucfg)] = it
            except (KeyError, ValueError):
                items[it.key] = it
        for k, it in mapped.items():
            items[k] = renamed(it, k)
        fam, _ = _assign_components({k: items[k] for k in mapped})
        family = fam
    elif unet:
        keep_as_is("unet", unet)
        notes.append("unet/ has no config.json: its keys are kept as they are")
    vae = parts.pop("vae", {})
    if vae:
        vcfg = configs.get("vae") or L.vae_config({r: it.shape for r, it in vae.items()}, family)
        for rel, it in vae.items():
            try:
                k, shape = L.vae_diffusers_to_ldm(rel, it.shape, vcfg)
                items["first_stage_model." + k] = renamed(it, "first_stage_model." + k, shape)
            except (KeyError, ValueError):
                items[it.key] = it
    for slot in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        rels = parts.pop(slot, {})
        if not rels:
            continue
        rels = {(r if r.startswith(("text_model.", "text_projection")) else "text_model." + r): it for r, it in rels.items()}
        kind = text_encoder_kind(list(rels))
        prefix = L.SINGLE_PREFIX.get(family, {}).get(kind)
        if prefix is None:
            keep_as_is(slot, rels)
            notes.append(f"{slot}/ ({kind}) has no place in a {family} single file: keys kept as they are")
            continue
        if kind in L.OPENCLIP_KINDS:
            out, left = L.hf_to_openclip(rels)
            for it in out:
                items[prefix + it.key] = renamed(it, prefix + it.key)
            for rel in left:
                items[rels[rel].key] = rels[rel]
        else:
            for rel, it in rels.items():
                items[prefix + rel] = renamed(it, prefix + rel)
            pos = rels.get("text_model.embeddings.position_embedding.weight")
            if pos is not None and L.POSITION_IDS not in rels:
                k = prefix + L.POSITION_IDS
                items[k] = Item(k, (1, pos.shape[0]), "I64", (), op="restore", restore="arange",
                                note="position_ids restored as int64 0..N-1 (transformers does not store it)")
    for part, rels in parts.items():
        keep_as_is(part, rels)
    extras = folder / EXTRAS_FILE
    if extras.is_file():
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
    return items, configs, notes


# --------------------------------------------------------------------------- the plan


def check_output_name(out: Path, layout: str) -> None:
    """OUT names what is written: a ``.safetensors`` file (never safetensors bytes under ``.ckpt``; sdlens writes
    no pickles), or with ``--layout diffusers`` a folder; its parent folder must exist."""
    from sdlens.io.folders import WEIGHT_SUFFIXES

    suffix = out.suffix.lower()
    if layout == "single" and suffix != ".safetensors":
        raise SdlensError(out, "OUT must end in .safetensors: sdlens writes safetensors files only"
                          + (f" (not {out.suffix} pickles)" if suffix in WEIGHT_SUFFIXES else ""))
    if layout == "diffusers" and suffix in WEIGHT_SUFFIXES:
        raise SdlensError(out, f"--layout diffusers writes a folder: name OUT without {out.suffix}")
    if not out.parent.is_dir():
        raise SdlensError(out, f"OUT: folder {str(out.parent)!r} does not exist")


def make_plan(input_path: str | Path, output_path: str | Path, opts: ConvertOptions) -> ConversionPlan:
    """Everything the conversion will do, from headers (and a few tiny tensors), without writing anything."""
    from sdlens.io.open import open_checkpoint

    opts.validate()
    inp, out = Path(input_path), Path(output_path)
    check_output_name(out, opts.layout)
    sources = [str(inp)]
    notes: list[str] = []
    operations: list[str] = []
    dropped: list[Item] = []
    with open_checkpoint(inp, opts.variant) as ck:
        fmt = ck.format
        folder_configs: dict[str, Any] = {}
        if fmt == "diffusers-folder":
            items, folder_configs, more = _from_diffusers(ck, inp, sources)
            notes += more
            operations.append("read diffusers folder (keys mapped to the single-file layout)")
        else:
            items = {k: Item(k, i.shape, i.dtype, (Piece(0, k),)) for k, i in ck.tensors.items()}
        family, comps = _assign_components(items)
        metadata = dict(ck.metadata)
        if ck.extras:
            metadata.setdefault("sdlens.source_extras", json.dumps(ck.extras, default=str, sort_keys=True))
        if folder_configs:
            metadata[CONFIGS_META] = json.dumps(folder_configs, sort_keys=True)
        input_tensor_bytes, input_file_bytes = ck.tensor_bytes, ck.file_size
        broken_pos = [k for k, it in items.items() if k.endswith("position_ids") and it.pieces
                      and it.pieces[0].source == 0 and it.pieces[0].key in ck.tensors and not _is_arange(ck, it.pieces[0].key)]
        arange_pos = {k for k, it in items.items() if k.endswith("position_ids")
                      and (it.restore == "arange" or (it.pieces and it.pieces[0].source == 0 and _is_arange(ck, it.pieces[0].key)))}
        offsets = {k: (i.source, i.offset) for k, i in ck.tensors.items()}
    for extra_source in sources[1:]:
        with open_checkpoint(extra_source, opts.variant) as ex:
            offsets.update({f"\0{extra_source}\0{k}": (i.source, i.offset) for k, i in ex.tensors.items()})

    # ---- --vae: replace (or bake in) the VAE
    if opts.vae is not None:
        dropped_vae, new_vae = _vae_items(opts.vae, items, family, sources, offsets, opts.variant)
        for k in dropped_vae:
            dropped.append(_drop(items.pop(k), f"replaced by the VAE of {Path(opts.vae).name}"))
        items.update(new_vae)
        operations.append(f"vae: {'replaced' if dropped_vae else 'baked in'} from {Path(opts.vae).name} ({plural(len(new_vae), 'tensor')})")

    # ---- EMA
    ema_keys = [k for k, it in items.items() if it.component == "ema"]
    if opts.ema == "drop" or "ema" in opts.drop:
        for k in ema_keys:
            dropped.append(_drop(items.pop(k), "EMA dropped"))
        if ema_keys:
            operations.append(f"ema: dropped ({plural(len(ema_keys), 'tensor')})")
    elif opts.ema == "use":
        if not ema_keys:
            raise SdlensError(inp, "--ema use: the file has no EMA weights (no model_ema.* keys)")
        _use_ema(items, ema_keys, dropped, notes, inp)
        operations.append("ema: EMA weights made the model's weights (EMA-only file)")

    # ---- --drop
    for sel in opts.drop:
        if sel == "ema":
            continue
        hit = [k for k, it in items.items() if _selected(sel, k, it)]
        for k in hit:
            dropped.append(_drop(items.pop(k), f"--drop {sel}"))
        operations.append(f"drop {sel}: {plural(len(hit), 'tensor')}")
        if not hit:
            notes.append(f"--drop {sel}: nothing matched")

    # ---- position_ids
    pos_keys = [k for k in items if k.endswith("position_ids")]
    if opts.fix_position_ids:
        for k in pos_keys:
            it = items[k]
            shape = it.shape if it.shape else (1, 77)
            items[k] = Item(k, shape, "I64", (), component=it.component, op="restore", restore="arange",
                            note=f"restored as int64 0..{shape[-1] - 1}" + (f" (was {it.dtype}, broken)" if k in broken_pos else ""))
        operations.append(f"fix-position-ids: {len(pos_keys)} restored as int64 0..N-1")
    else:
        for k in broken_pos:
            if k in items:
                notes.append(f"{k} is broken (not exactly 0..N-1): pass --fix-position-ids to restore it")

    # ---- --extract
    if opts.extract:
        wanted = {c for x in opts.extract for c in SELECTORS[x]}
        for k in [k for k, it in items.items() if it.component not in wanted]:
            dropped.append(_drop(items.pop(k), "not extracted"))
        if not items:
            raise SdlensError(inp, f"--extract {','.join(opts.extract)}: the file holds no such component")
        operations.append(f"extract: {', '.join(opts.extract)}")

    # ---- dtype
    target = DTYPE_CHOICES[opts.dtype]
    n_cast = 0
    for it in items.values():
        it.out_dtype = it.dtype
        if target and it.restore is None and DTYPES[it.dtype].is_float and it.dtype != target:
            it.out_dtype = target
            n_cast += 1
    if target:
        operations.append(f"dtype: {opts.dtype} ({plural(n_cast, 'tensor')} cast)")
    if target == "F16":
        notes.append("fp16: values beyond ±65504 would become inf (refused unless --force); values below 6e-8 "
                     "become 0 (reported)")

    # ---- layout
    if opts.layout == "diffusers":
        final, json_files, more_dropped = _to_diffusers(items, family, metadata, arange_pos, inp)
        dropped += more_dropped
        operations.append("layout: diffusers folder")
    else:
        final = _single(items, opts, comps)
        json_files = {}
        operations.append("layout: single file")
    if fmt != "safetensors":
        operations.insert(0, f"format: {fmt} -> safetensors")

    def order(it: Item) -> tuple:
        if not it.pieces:
            return (it.file, -1, "", -1)
        p = it.pieces[0]
        src, off = offsets[p.key if p.source == 0 else f"\0{sources[p.source]}\0{p.key}"]
        return (it.file, p.source, src, off)

    final.sort(key=order)
    keys_seen: dict[tuple[str, str], Item] = {}
    for it in final:
        if (it.file, it.key) in keys_seen:
            raise SdlensError(inp, f"two tensors would be written as {it.key!r}")
        keys_seen[(it.file, it.key)] = it
    return ConversionPlan(
        input=str(inp), output=str(out), sources=sources, input_format=fmt, family=family, layout=opts.layout,
        options=opts, entries=final, dropped=dropped, json_files=json_files, metadata=metadata,
        operations=operations, notes=notes, input_tensor_bytes=input_tensor_bytes, input_file_bytes=input_file_bytes,
    )


def _selected(sel: str, key: str, it: Item) -> bool:
    if sel in SELECTORS:
        return it.component in SELECTORS[sel]
    if sel == "position_ids":
        return key.endswith("position_ids")
    return fnmatch.fnmatchcase(key, sel)


def _use_ema(items: dict[str, Item], ema_keys: list[str], dropped: list[Item], notes: list[str], inp: Path) -> None:
    den_prefix = "model.diffusion_model."
    squashed = {"model_ema.diffusion_model" + k[len(den_prefix):].replace(".", ""): k
                for k, it in items.items() if it.component == "denoiser" and k.startswith(den_prefix)}
    used = 0
    for ek in ema_keys:
        ema = items.pop(ek)
        target = squashed.pop(ek, None)
        if target is None:
            dropped.append(_drop(ema, "EMA bookkeeping (no model weight of that name)"))
            continue
        model = items[target]
        if model.shape != ema.shape:
            raise SdlensError(inp, f"--ema use: {ek} has shape {list(ema.shape)} but {target} has {list(model.shape)}")
        dropped.append(_drop(model, "replaced by its EMA copy"))
        items[target] = replace(ema, key=target, component="denoiser", op="ema", note=f"EMA weight ({ek})", tags=set())
        used += 1
    if squashed:
        notes.append(f"--ema use: {len(squashed)} UNet tensors have no EMA copy and keep the model's weights "
                     f"(e.g. {next(iter(squashed.values()))})")
    notes.append(f"--ema use: {used} UNet tensors now hold the EMA weights")


def _vae_items(path: Path, items: dict[str, Item], family: str, sources: list[str],
               offsets: dict[str, tuple[str, int]], variant: str | None = None) -> tuple[list[str], dict[str, Item]]:
    from sdlens.io.open import open_checkpoint

    path = Path(path)
    with open_checkpoint(path, variant) as vck:
        split = split_components(vck.tensors)
        parts = [split.components[c] for c in ("vae_encoder", "vae_decoder") if c in split.components]
        if not parts:
            raise SdlensError(path, "--vae: this file holds no VAE")
        sources.append(str(path))
        si = len(sources) - 1
        offsets.update({f"\0{path}\0{k}": (i.source, i.offset) for k, i in vck.tensors.items()})
        rel = {r: info for c in parts for r, info in c.keys.items()}
        diffusers = any(r.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for r in rel)
        cfg = L.vae_config({r: i.shape for r, i in rel.items()}, family) if diffusers else None
        new: dict[str, Item] = {}
        for r, info in rel.items():
            key, shape = L.vae_diffusers_to_ldm(r, info.shape, cfg) if cfg else (r, info.shape)
            full = "first_stage_model." + key
            new[full] = Item(full, shape, info.dtype, (Piece(si, info.key),),
                             component="vae_decoder" if key.startswith(("decoder.", "post_quant_conv.")) else "vae_encoder",
                             op="replace", note=f"from {path.name}")
    old = [k for k, it in items.items() if it.component in ("vae_encoder", "vae_decoder")]
    for k in old:
        if k in new and items[k].shape != new[k].shape:
            raise SdlensError(path, f"--vae: {k} has shape {list(new[k].shape)} but the model's is {list(items[k].shape)} "
                              "(a VAE of another architecture)")
    return old, new


def _single(items: dict[str, Item], opts: ConvertOptions, comps: dict[str, Any]) -> list[Item]:
    """Single-file keys: unchanged, or for one extracted component the layout its own files use."""
    final = list(items.values())
    if len(opts.extract) != 1:
        return final
    what = opts.extract[0]
    if what in ("vae", "unet", "denoiser"):
        prefix = "first_stage_model." if what == "vae" else "model.diffusion_model."
        return [renamed(it, it.key[len(prefix):]) if it.key.startswith(prefix) else it for it in final]
    if what in ("clip_l", "openclip_h", "clip_g"):
        comp = comps.get(what)
        prefix = comp.prefix if comp is not None else ""
        rels = {it.key[len(prefix):]: it for it in final if it.key.startswith(prefix)}
        others = [it for it in final if not it.key.startswith(prefix)]
        if what in L.OPENCLIP_KINDS and any(r.startswith("transformer.resblocks.") for r in rels):
            conv, left = L.openclip_to_hf(rels, None, True)
            return conv + [renamed(rels[r], r) for r in left] + others
        fixed = [renamed(it, r if r.startswith(("text_model.", "text_projection")) else "text_model." + r) for r, it in rels.items()]
        return fixed + others
    return final


def _to_diffusers(items: dict[str, Item], family: str, metadata: dict[str, str], arange_pos: set[str],
                  inp: Path) -> tuple[list[Item], dict[str, dict[str, Any]], list[Item]]:
    comps_present = {it.component for it in items.values()}
    if "denoiser" in comps_present and family not in L.UNET_FAMILIES:
        raise SdlensError(inp, f"--layout diffusers: only SD1/SD2/SDXL UNet checkpoints are supported (this is {family})")
    known: dict[str, Any] = {}
    if CONFIGS_META in metadata:
        try:
            known = json.loads(metadata[CONFIGS_META])
        except ValueError:
            known = {}
    final: list[Item] = []
    dropped: list[Item] = []
    extras: list[Item] = []
    json_files: dict[str, dict[str, Any]] = {}
    by_comp: dict[str, dict[str, Item]] = {}
    for k, it in items.items():
        by_comp.setdefault(it.component, {})[k] = it

    def put(it: Item, file: str, key: str, shape: tuple[int, ...] | None = None) -> None:
        new = renamed(it, key, shape)
        new.file = file
        final.append(new)

    # text encoders first (their widths feed the UNet config)
    pooled = None
    slots_written: dict[str, str] = {}
    for kind, slot in L.PIPELINE_SLOT.get(family, {}).items():
        group = by_comp.pop(kind, {})
        if not group:
            continue
        prefix = L.SINGLE_PREFIX[family][kind]
        rels = {k[len(prefix):]: it for k, it in group.items() if k.startswith(prefix)}
        extras += [it for k, it in group.items() if not k.startswith(prefix)]
        file = f"{slot}/model.safetensors"
        if kind in L.OPENCLIP_KINDS:
            conv, left = L.openclip_to_hf(rels, L.HF_LAYERS.get(kind), kind == "clip_g")
            for it in conv:
                put(it, file, it.key)
            extras += [rels[r] for r in left]
        else:
            for r, it in rels.items():
                hf = r if r.startswith(("text_model.", "text_projection")) else "text_model." + r
                if hf == L.POSITION_IDS:
                    if it.key in arange_pos:
                        dropped.append(_drop(it, "int64 0..N-1: transformers rebuilds it; restored when converting back"))
                    else:
                        extras.append(it)
                    continue
                put(it, file, hf)
        shapes = {e.key: e.shape for e in final if e.file == file}
        cfg = known.get(slot) or L.text_config(kind, shapes, L.clip_layers(list(shapes)), kind == "clip_g")
        json_files[f"{slot}/config.json"] = cfg
        slots_written[slot] = cfg.get("architectures", ["CLIPTextModel"])[0]
        if kind == "clip_g" and "text_projection.weight" in shapes:
            pooled = shapes["text_projection.weight"][0]
    den = by_comp.pop("denoiser", {})
    if den:
        prefix = "model.diffusion_model."
        rels = {k[len(prefix):]: it for k, it in den.items() if k.startswith(prefix)}
        extras += [it for k, it in den.items() if not k.startswith(prefix)]
        cfg = known.get("unet") or L.unet_config(family, {r: it.shape for r, it in rels.items()}, pooled)
        for r, it in rels.items():
            try:
                put(it, "unet/diffusion_pytorch_model.safetensors", L.unet_ldm_to_diffusers(r, cfg))
            except (KeyError, ValueError):
                extras.append(it)
        json_files["unet/config.json"] = cfg
    vae = {**by_comp.pop("vae_encoder", {}), **by_comp.pop("vae_decoder", {})}
    if vae:
        prefix = "first_stage_model."
        rels = {k[len(prefix):]: it for k, it in vae.items() if k.startswith(prefix)}
        extras += [it for k, it in vae.items() if not k.startswith(prefix)]
        cfg = known.get("vae") or L.vae_config({r: it.shape for r, it in rels.items()}, family)
        for r, it in rels.items():
            try:
                key, shape = L.vae_ldm_to_diffusers(r, it.shape, cfg)
                put(it, "vae/diffusion_pytorch_model.safetensors", key, shape)
            except (KeyError, ValueError):
                extras.append(it)
        json_files["vae/config.json"] = cfg
    for group in by_comp.values():
        extras += list(group.values())
    for it in extras:
        new = renamed(it, it.key)
        new.file = EXTRAS_FILE
        new.note = (new.note + "; " if new.note else "") + "no diffusers counterpart: kept in " + EXTRAS_FILE
        final.append(new)
    if den and family in L.PIPELINE_CLASS:
        index: dict[str, Any] = dict(known.get("model_index") or {"_class_name": L.PIPELINE_CLASS[family]})
        index.setdefault("unet", ["diffusers", "UNet2DConditionModel"])
        if vae:
            index.setdefault("vae", ["diffusers", "AutoencoderKL"])
        for slot, cls in slots_written.items():
            index.setdefault(slot, ["transformers", cls])
        sched = known.get("scheduler") or L.scheduler_config(family)
        index.setdefault("scheduler", ["diffusers", sched["_class_name"]])
        json_files["model_index.json"] = index
        json_files["scheduler/scheduler_config.json"] = sched
    return final, json_files, dropped
