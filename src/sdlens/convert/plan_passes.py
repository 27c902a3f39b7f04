"""The passes of a conversion plan, applied in order by :func:`sdlens.convert.plan.make_plan`.

Each pass is ``pass_(st: PlanState) -> None``: it reads the options and changes the items to write, moves
what it removes to ``st.dropped`` and says what it did in ``st.operations`` / ``st.notes``."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sdlens.analysis.recorded_configs import recorded_scheduler
from sdlens.arch import families
from sdlens.arch.detect import split_components
from sdlens.arch.schedulers import scheduler_values_known
from sdlens.convert import layouts as L
from sdlens.convert import markers
from sdlens.convert.diffusers_layout import to_diffusers
from sdlens.convert.items import drop_item
from sdlens.convert.layouts import Item, Piece, renamed
from sdlens.convert.options import DTYPE_CHOICES, SELECTORS, ConvertOptions
from sdlens.errors import SdlensError
from sdlens.io.dtypes import DTYPES
from sdlens.io.limits import show
from sdlens.words import plural


@dataclass
class PlanState:
    """What the passes read and change."""

    inp: Path
    opts: ConvertOptions
    fmt: str  # the input's format
    items: dict[str, Item]  # to write, by single-file key
    family: str
    comps: dict[str, Any]  # the split's components (for prefixes)
    metadata: dict[str, str]
    sources: list[str]  # input files the items' pieces come from (0 = the input)
    offsets: dict[str, tuple[str, int]]  # source key -> (file, offset): the write order
    broken_pos: list[str]  # position_ids stored, but not 0..N-1
    arange_pos: set[str]  # position_ids that are exactly 0..N-1 (stored or restored)
    input_tensor_bytes: int = 0
    input_file_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    operations: list[str] = field(default_factory=list)
    dropped: list[Item] = field(default_factory=list)
    final: list[Item] = field(default_factory=list)  # the layout pass's output
    json_files: dict[str, dict[str, Any]] = field(default_factory=dict)
    loras: Any = None  # LoraPlan of --merge-lora
    prediction: Any = None  # the input's sdlens.analysis.prediction.Prediction

    def drop(self, key: str, note: str) -> None:
        self.dropped.append(drop_item(self.items.pop(key), note))


def vae_pass(st: PlanState) -> None:
    """``--vae``: replace (or bake in) the VAE."""
    if st.opts.vae is None:
        return
    vae = st.opts.vae
    dropped_vae, new_vae = _vae_items(vae, st.items, st.family, st.sources, st.offsets, st.opts.variant)
    for k in dropped_vae:
        st.drop(k, f"replaced by the VAE of {Path(vae).name}")
    st.items.update(new_vae)
    st.operations.append(
        f"vae: {'replaced' if dropped_vae else 'baked in'} from {Path(vae).name} ({plural(len(new_vae), 'tensor')})"
    )


def lora_pass(st: PlanState) -> None:
    """``--merge-lora``: resolve every LoRA module onto the input's tensors (refusing what cannot be baked)."""
    specs = st.opts.lora_specs()
    if not specs:
        return
    from sdlens.analysis.lora_apply import plan_loras
    from sdlens.io.open import open_checkpoint

    with open_checkpoint(st.inp, st.opts.variant) as ck:
        st.loras = plan_loras(ck, specs)
    for f in st.loras.files:
        n = len({t.key for ts in st.loras.targets.values() for t in ts if t.lora == st.loras.files.index(f)})
        st.operations.append(
            f"merge-lora: {f.name} at weight {f.weight:g} "
            f"({plural(f.modules, 'module')} -> {plural(n, 'tensor')})"
        )
    if any(it.component == "ema" for it in st.items.values()):
        st.notes.append("--merge-lora: the EMA copy of the UNet is left as it is")


def bake_check(st: PlanState) -> None:
    """Mark the written items that hold a tensor a LoRA changes; refuse when such a tensor is not written."""
    if st.loras is None:
        return
    covered: set[str] = set()
    for it in st.final:
        keys = [p.key for p in it.pieces if p.source == 0 and p.key in st.loras.targets]
        if keys:
            it.bake = tuple(dict.fromkeys(n for k in keys for n in st.loras.names(k)))
            covered.update(keys)
    left = [k for k in st.loras.targets if k not in covered]
    if left:
        raise SdlensError(
            st.inp,
            f"--merge-lora: {plural(len(left), 'tensor')} the LoRAs change would not be written "
            f"(dropped by --drop / --extract / --ema use), e.g. {left[0]}",
        )


def ema_pass(st: PlanState) -> None:
    """``--ema drop`` (or ``--drop ema``) / ``--ema use``."""
    ema_keys = [k for k, it in st.items.items() if it.component == "ema"]
    if st.opts.ema == "drop" or "ema" in st.opts.drop:
        for k in ema_keys:
            st.drop(k, "EMA dropped")
        if ema_keys:
            st.operations.append(f"ema: dropped ({plural(len(ema_keys), 'tensor')})")
    elif st.opts.ema == "use":
        if not ema_keys:
            raise SdlensError(st.inp, "--ema use: the file has no EMA weights (no model_ema.* keys)")
        _use_ema(st.items, ema_keys, st.dropped, st.notes, st.inp)
        st.operations.append("ema: EMA weights made the model's weights (EMA-only file)")


def drop_pass(st: PlanState) -> None:
    """``--drop``: components, ``position_ids`` or key globs."""
    for sel in st.opts.drop:
        if sel == "ema":
            continue
        hit = [k for k, it in st.items.items() if _selected(sel, k, it)]
        for k in hit:
            st.drop(k, f"--drop {sel}")
        st.operations.append(f"drop {sel}: {plural(len(hit), 'tensor')}")
        if not hit:
            st.notes.append(f"--drop {sel}: nothing matched")


def position_ids_pass(st: PlanState) -> None:
    """``--fix-position-ids`` restores them as int64 0..N-1; without it, broken ones are pointed out."""
    pos_keys = [k for k in st.items if k.endswith("position_ids")]
    if st.opts.fix_position_ids:
        for k in pos_keys:
            it = st.items[k]
            shape = it.shape if it.shape else (1, 77)
            st.items[k] = Item(
                k,
                shape,
                "I64",
                (),
                component=it.component,
                op="restore",
                restore="arange",
                note=f"restored as int64 0..{shape[-1] - 1}"
                + (f" (was {it.dtype}, broken)" if k in st.broken_pos else ""),
            )
        st.operations.append(f"fix-position-ids: {len(pos_keys)} restored as int64 0..N-1")
    else:
        for k in st.broken_pos:
            if k in st.items:
                st.notes.append(f"{k} is broken (not exactly 0..N-1): pass --fix-position-ids to restore it")


def extract_pass(st: PlanState) -> None:
    """``--extract``: keep only these components."""
    if not st.opts.extract:
        return
    wanted = {c for x in st.opts.extract for c in SELECTORS[x]}
    if "denoiser" in wanted and "markers" not in st.opts.drop:  # they say how to sample the denoiser
        wanted.add("markers")
    for k in [k for k, it in st.items.items() if it.component not in wanted]:
        st.drop(k, "not extracted")
    if not st.items:
        raise SdlensError(st.inp, f"--extract {','.join(st.opts.extract)}: the file holds no such component")
    st.operations.append(f"extract: {', '.join(st.opts.extract)}")
    kept = [k for k, it in st.items.items() if it.component == "markers"]
    if kept and "markers" not in st.opts.extract:
        st.notes.append(f"marker keys kept with the denoiser ({', '.join(kept)}): they say how to sample it")


def dtype_pass(st: PlanState) -> None:
    """``--dtype``: every float tensor's output dtype (restored tensors and marker keys keep theirs)."""
    target = DTYPE_CHOICES[st.opts.dtype]
    n_cast = 0
    for it in st.items.values():
        it.out_dtype = it.dtype
        if (
            target
            and it.restore is None
            and it.component != "markers"  # what loaders read them as (ComfyUI: float32 scalars)
            and DTYPES[it.dtype].is_float
            and it.dtype != target
        ):
            it.out_dtype = target
            n_cast += 1
    if target:
        st.operations.append(f"dtype: {st.opts.dtype} ({plural(n_cast, 'tensor')} cast)")
    if target == "F16":
        st.notes.append(
            "fp16: values beyond ±65504 would become inf (refused unless --force); values below 6e-8 "
            "become 0 (reported)"
        )


def prediction_pass(st: PlanState) -> None:
    """The prediction type into the output's layout: a diffusers folder's scheduler config from the input's
    prediction (markers, metadata, ...), a single file from a folder gets the marker keys it states."""
    pred = st.prediction
    if st.opts.layout == "diffusers":
        cfg = st.json_files.get(markers.SCHEDULER)
        if cfg is None:
            return
        recorded, dropped = recorded_scheduler(st.metadata, families.get(st.family))
        if dropped:
            st.operations.append(f"prediction: {markers.SCHEDULER}: {dropped}")
        if recorded is None and not scheduler_values_known(st.family):
            st.operations.append(
                f"prediction: {markers.SCHEDULER}: {show(cfg.get('_class_name'))[1:-1]} with num_train_timesteps "
                "only: the values of the release's scheduler config are not known to sdlens (set them before "
                "sampling)"
            )
        new, words = markers.fill_scheduler(cfg, pred)
        st.json_files[markers.SCHEDULER] = new
        index = st.json_files.get("model_index.json")
        if isinstance(index, dict) and new.get("_class_name") != cfg.get("_class_name"):
            index["scheduler"] = ["diffusers", new["_class_name"]]
        st.operations += [f"prediction: {w}" for w in words]
        return
    if st.fmt != "diffusers-folder" or "markers" in st.opts.drop:
        return
    if st.opts.extract and not {"denoiser", "markers"} & {c for x in st.opts.extract for c in SELECTORS[x]}:
        return
    new_items = markers.marker_items(pred, {it.key for it in st.final})
    if new_items:
        st.final = new_items + st.final
        keys = " + ".join(it.key for it in new_items)
        st.operations.append(
            f"prediction: marker keys {keys} written (the folder states {pred.label()}: {pred.basis})"
        )


def layout_pass(st: PlanState) -> None:
    """``--layout``: the output's keys and files (``st.final``, ``st.json_files``)."""
    if st.opts.layout == "diffusers":
        st.final, st.json_files, more_dropped = to_diffusers(
            st.items, st.family, st.metadata, st.arange_pos, st.inp
        )
        st.dropped += more_dropped
        st.operations.append("layout: diffusers folder")
    else:
        st.final = _single(st.items, st.opts, st.comps)
        st.json_files = {}
        st.operations.append("layout: single file")


# --------------------------------------------------------------------------- helpers of the passes


def _selected(sel: str, key: str, it: Item) -> bool:
    if sel in SELECTORS:
        return it.component in SELECTORS[sel]
    if sel == "position_ids":
        return key.endswith("position_ids")
    return fnmatch.fnmatchcase(key, sel)


def _use_ema(
    items: dict[str, Item], ema_keys: list[str], dropped: list[Item], notes: list[str], inp: Path
) -> None:
    den_prefix = "model.diffusion_model."
    squashed = {
        "model_ema.diffusion_model" + k[len(den_prefix) :].replace(".", ""): k
        for k, it in items.items()
        if it.component == "denoiser" and k.startswith(den_prefix)
    }
    used = 0
    for ek in ema_keys:
        ema = items.pop(ek)
        target = squashed.pop(ek, None)
        if target is None:
            dropped.append(drop_item(ema, "EMA bookkeeping (no model weight of that name)"))
            continue
        model = items[target]
        if model.shape != ema.shape:
            raise SdlensError(
                inp, f"--ema use: {ek} has shape {list(ema.shape)} but {target} has {list(model.shape)}"
            )
        dropped.append(drop_item(model, "replaced by its EMA copy"))
        items[target] = replace(
            ema, key=target, component="denoiser", op="ema", note=f"EMA weight ({ek})", tags=set()
        )
        used += 1
    if squashed:
        notes.append(
            f"--ema use: {len(squashed)} UNet tensors have no EMA copy and keep the model's weights "
            f"(e.g. {next(iter(squashed.values()))})"
        )
    notes.append(f"--ema use: {used} UNet tensors now hold the EMA weights")


def _vae_items(
    path: Path,
    items: dict[str, Item],
    family: str,
    sources: list[str],
    offsets: dict[str, tuple[str, int]],
    variant: str | None = None,
) -> tuple[list[str], dict[str, Item]]:
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
            new[full] = Item(
                full,
                shape,
                info.dtype,
                (Piece(si, info.key),),
                component="vae_decoder"
                if key.startswith(("decoder.", "post_quant_conv."))
                else "vae_encoder",
                op="replace",
                note=f"from {path.name}",
            )
    old = [k for k, it in items.items() if it.component in ("vae_encoder", "vae_decoder")]
    for k in old:
        if k in new and items[k].shape != new[k].shape:
            raise SdlensError(
                path,
                f"--vae: {k} has shape {list(new[k].shape)} but the model's is {list(items[k].shape)} "
                "(a VAE of another architecture)",
            )
    return old, new


def _single(items: dict[str, Item], opts: ConvertOptions, comps: dict[str, Any]) -> list[Item]:
    """Single-file keys: unchanged, or for one extracted component the layout its own files use."""
    final = list(items.values())
    if len(opts.extract) != 1:
        return final
    what = opts.extract[0]
    if what in ("vae", "unet", "denoiser"):
        prefix = "first_stage_model." if what == "vae" else "model.diffusion_model."
        return [renamed(it, it.key[len(prefix) :]) if it.key.startswith(prefix) else it for it in final]
    if what in ("clip_l", "openclip_h", "clip_g"):
        comp = comps.get(what)
        prefix = comp.prefix if comp is not None else ""
        rels = {it.key[len(prefix) :]: it for it in final if it.key.startswith(prefix)}
        others = [it for it in final if not it.key.startswith(prefix)]
        if what in L.OPENCLIP_KINDS and any(r.startswith("transformer.resblocks.") for r in rels):
            conv, left = L.openclip_to_hf(rels, None, True)
            return conv + [renamed(rels[r], r) for r in left] + others
        fixed = [
            renamed(it, r if r.startswith(("text_model.", "text_projection")) else "text_model." + r)
            for r, it in rels.items()
        ]
        return fixed + others
    return final
