"""How to load a file: the loader per tool (diffusers, ComfyUI node and folder, AUTOMATIC1111 / Forge) and the
companion files it lacks, for what ``identify`` found.

Everything comes from the records (``Family.loading``, text encoders, VAE, diffusers slots) and the generic
tables of :mod:`sdlens.arch.loaders`; a family sdlens does not know gives an honest "cannot tell".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from sdlens.arch import families
from sdlens.arch import loaders as T
from sdlens.arch import registry as R
from sdlens.arch.configs import OTHER_TEXT_ENCODERS, TEXT_ENCODERS
from sdlens.arch.record import Family, Loader, Loading

if TYPE_CHECKING:
    from sdlens.arch.identify import Identity
    from sdlens.io.base import TensorInfo

UNKNOWN = "unknown"
REPO = "<diffusers repo>"
_FITS_SHOWN = 6  # families named in the note of a part file that fits several
_FOLDER_FORMATS = ("diffusers-folder", "sharded")  # a folder (or a shard index) of diffusers parts


@dataclass
class Companion:
    """A file the one inspected needs beside it, and how ComfyUI loads it."""

    what: str
    comfy: str
    folder: str
    optional: bool = False


@dataclass
class LoadAdvice:
    """How to load one file. ``known`` is False when sdlens cannot tell (unknown family or kind)."""

    known: bool
    kind: str  # a key of sdlens.arch.loaders.LOAD_KINDS, or "unknown"
    kind_label: str
    family: str  # record id or "unknown"
    family_name: str
    diffusers: str
    comfy: str  # ComfyUI node class (its display name)
    comfy_folder: str
    a1111: str
    forge: str
    webui_folder: str  # AUTOMATIC1111 / Forge folder ("" where neither loads it)
    companions: list[Companion] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------ the file's kind


def load_kind(ident_kind: str, file_format: str, components: Iterable[str]) -> str:
    """The kind of file for loading: ``identify``'s kind refined by the format (GGUF, diffusers folder) and by
    what a denoiser file bundles (a denoiser with a VAE or text encoders loads as a checkpoint)."""
    comps = {c.split("@")[0] for c in components}
    if ident_kind in ("lora", "controlnet", "vae", "text_encoder"):
        return ident_kind
    if ident_kind not in ("full", "denoiser"):
        return UNKNOWN
    if file_format == "gguf":
        return "gguf"
    if file_format in _FOLDER_FORMATS:
        return "diffusers"
    if ident_kind == "full" or comps & ({"vae_encoder", "vae_decoder"} | set(R.TEXT_ENCODER_KINDS)):
        return "checkpoint"
    return "denoiser"


def quant_origins(tensors: Mapping[str, TensorInfo]) -> set[str]:
    """Where the file's quantised weights come from (``gguf``, ``scaled fp8``, ``bitsandbytes``): the origin
    of each tensor's scheme (its ``extra``, a ``sdlens.io.quant.Quant``)."""
    schemes = {s for t in tensors.values() if isinstance(s := getattr(t.extra, "scheme", None), str)}
    if not schemes:
        return set()
    from sdlens.io.quant import SCHEMES  # only files with quantised tensors get here

    return {SCHEMES[s].origin for s in schemes if s in SCHEMES}


def how_to_load(
    ident: Identity, file_format: str, tensors: Mapping[str, TensorInfo] | None = None
) -> LoadAdvice:
    """The advice for a file ``identify`` described (``file_format``: the checkpoint's ``format``; ``tensors``:
    its tensors, read for the origin of quantised weights)."""
    comps = list(ident.split.components)
    kind = load_kind(ident.kind, file_format, comps)
    fits = [f for f in (families.get(i) for i in ident.fits) if f is not None]
    quant = quant_origins(tensors or {})
    return advise(ident.record, kind, comps, fits=fits, gguf=file_format == "gguf", quant=quant)


def advise(
    fam: Family | None,
    kind: str,
    components: Iterable[str] = (),
    *,
    fits: Sequence[Family] = (),
    gguf: bool = False,
    quant: Iterable[str] = (),
) -> LoadAdvice:
    """The advice for a file of ``kind`` holding ``components`` (component ids as ``identify`` names them) of
    family ``fam``; ``fits``: the families a part file (VAE, text encoders) fits when ``fam`` is None;
    ``quant``: the origins of its quantised weights (``bitsandbytes``, ``scaled fp8``)."""
    present = {c.split("@")[0] for c in components}
    label = T.LOAD_KINDS.get(kind, "unknown kind")
    if kind == UNKNOWN:
        return _cannot_tell(kind, label, "sdlens cannot tell what kind of file this is")
    if fam is None or fam.loading is None:
        return _part_without_family(kind, label, fits, gguf)
    load = fam.loading
    over = load.kinds.get(kind, Loader())
    comfy, folder = _comfy(fam, load, over, kind, gguf)
    a1111, forge = _webui(load, over, kind)
    notes = [n for n in (over.note, load.notes) if n]
    diffusers = over.diffusers or _diffusers(fam, kind, present)
    for origin in sorted(set(quant) & set(T.QUANT_NOTES)):
        notes.append(T.QUANT_NOTES[origin])
        if origin in T.QUANT_COMFY:
            comfy, folder = T.QUANT_COMFY[origin].get(kind, (UNKNOWN, ""))
            a1111, diffusers = "no", UNKNOWN
            forge = load.kinds.get(origin, Loader()).forge or UNKNOWN
    if kind == "gguf":
        notes.append("the GGUF nodes come with the ComfyUI-GGUF custom nodes (city96/ComfyUI-GGUF)")
    if kind == "controlnet" and a1111 != "no":
        notes.append("AUTOMATIC1111 runs ControlNets through the sd-webui-controlnet extension")
    return LoadAdvice(
        True,
        kind,
        label,
        fam.id,
        fam.name,
        diffusers,
        comfy,
        folder,
        a1111,
        forge,
        _webui_folder(kind, a1111, forge),
        _companions(fam, kind, present, gguf),
        notes,
    )


def _cannot_tell(kind: str, label: str, why: str) -> LoadAdvice:
    return LoadAdvice(
        False, kind, label, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, "", [], [why]
    )


def _part_without_family(kind: str, label: str, fits: Sequence[Family], gguf: bool) -> LoadAdvice:
    """A VAE, text encoder, LoRA or ControlNet whose family is not told: ComfyUI's node and folder do not
    depend on it (text encoders: on the number of encoders); the rest does."""
    if kind not in ("vae", "text_encoder", "lora", "controlnet"):
        return _cannot_tell(kind, label, "the family is unknown: sdlens cannot tell how to load it")
    if kind == "text_encoder":
        nodes = sorted({_te_node(f, gguf) for f in fits if f.loading is not None}) or [
            " / ".join(T.CLIP_LOADERS.values()) + " (by the number of encoders the model uses)"
        ]
        comfy, folder = " or ".join(nodes), T.TE_FOLDER
    else:
        node, name, folder = T.COMFY[kind]
        comfy = f"{node} ({name})"
    notes = ["the family is not told: the loader in diffusers and WebUI support depend on the model"]
    if fits:
        more = f" and {len(fits) - _FITS_SHOWN} more" if len(fits) > _FITS_SHOWN else ""
        notes.append("fits " + ", ".join(f.name for f in fits[:_FITS_SHOWN]) + more)
    return LoadAdvice(
        False, kind, label, UNKNOWN, UNKNOWN, UNKNOWN, comfy, folder, UNKNOWN, UNKNOWN, "", [], notes
    )


# ----------------------------------------------------------------------------------------------- per tool


def _te_node(fam: Family, gguf: bool = False) -> str:
    """ComfyUI's loader for a family's text encoders (all of them, in one node) and its ``type``."""
    load = fam.loading
    if load is None or load.comfy is not True or not fam.text_encoders:
        return UNKNOWN
    given = load.kinds.get("text_encoder", Loader()).comfy
    if given:
        return given
    node = T.CLIP_LOADERS.get(len(fam.text_encoders))
    if node is None:
        return UNKNOWN
    if gguf:
        node += T.GGUF_SUFFIX
    if node.removesuffix(T.GGUF_SUFFIX) in T.CLIP_LOADERS_WITH_TYPE:
        node += f" (type {load.comfy_clip_type})" if load.comfy_clip_type else " (type unknown)"
    return node


def _comfy(fam: Family, load: Loading, over: Loader, kind: str, gguf: bool) -> tuple[str, str]:
    """(node, folder) of the file itself in ComfyUI."""
    folder = over.folder or (T.TE_FOLDER if kind == "text_encoder" else T.COMFY[kind][2])
    if over.comfy:
        return over.comfy, folder if over.comfy != UNKNOWN else ""
    if load.comfy is None:
        return UNKNOWN, ""
    if load.comfy is False:
        return "not supported", ""
    if kind == "text_encoder":
        node = _te_node(fam, gguf)
        return node, folder if node != UNKNOWN else ""
    support = {"checkpoint": load.comfy_checkpoint, "gguf": load.comfy_gguf}.get(kind, True)
    if support is None:
        return UNKNOWN, ""
    if support is False:
        return "not supported", ""
    node, name, _ = T.COMFY[kind]
    return f"{node} ({name})", folder


def _webui(load: Loading, over: Loader, kind: str) -> tuple[str, str]:
    """(AUTOMATIC1111, Forge): the family's support for whole files, VAEs, LoRAs and ControlNets; the parts
    of a pipeline (a bare denoiser, GGUF, text encoders) only where the record says; no diffusers folders."""
    out = []
    for given, family in ((over.a1111, load.a1111), (over.forge, load.forge)):
        if given:
            out.append(given)
        elif kind == "diffusers":
            out.append("no (single files only)")
        elif kind in ("denoiser", "gguf", "text_encoder") and family != "no":
            out.append(UNKNOWN)
        else:
            out.append(family)
    return out[0], out[1]


def _webui_folder(kind: str, a1111: str, forge: str) -> str:
    supported = [s for s in (a1111, forge) if not s.startswith(("no", UNKNOWN))]
    return T.WEBUI_FOLDERS.get(kind, "") if supported else ""


@dataclass(frozen=True)
class _Classes:
    """The diffusers names a family's calls are written with."""

    pipe: str
    den: str
    slot: str

    @classmethod
    def of(cls, fam: Family) -> _Classes:
        return cls(
            fam.pipeline.diffusers_class if fam.pipeline else "",
            fam.denoiser.cls_name if fam.denoiser else "",
            fam.diffusers_slots.get("denoiser", "transformer"),
        )

    @property
    def into(self) -> str:
        return f"then {self.pipe}.from_pretrained({REPO}, {self.slot}=model)" if self.pipe else ""


def _d_checkpoint(fam: Family, c: _Classes, present: set[str]) -> str:
    if c.pipe in T.SINGLE_FILE_PIPELINES:
        return f"{c.pipe}.from_single_file(path)"
    if c.den in T.SINGLE_FILE_MODELS:
        return f"no single-file pipeline loader: {c.den}.from_single_file(path), {c.into}"
    return UNKNOWN


def _d_denoiser(fam: Family, c: _Classes, present: set[str], quant: str = "") -> str:
    if c.den not in T.SINGLE_FILE_MODELS:
        return f"no single-file loader for {c.den} in diffusers (a diffusers folder: {c.den}.from_pretrained)"
    return f"{c.den}.from_single_file(path{quant}), {c.into}"


def _d_gguf(fam: Family, c: _Classes, present: set[str]) -> str:
    return _d_denoiser(fam, c, present, f", {T.GGUF_CALL}")


def _d_folder(fam: Family, c: _Classes, present: set[str]) -> str:
    if present - {"denoiser"} and c.pipe:
        return f"{c.pipe}.from_pretrained(folder)"
    return f"{c.den}.from_pretrained(folder), {c.into}" if c.den else UNKNOWN


def _d_text_encoder(fam: Family, c: _Classes, present: set[str]) -> str:
    calls = []
    for te in fam.text_encoder_kinds:
        if te in present:
            cls = (TEXT_ENCODERS.get(te) or OTHER_TEXT_ENCODERS.get(te) or (UNKNOWN,))[0]
            calls.append(f"{cls}.from_pretrained({REPO}, subfolder={fam.diffusers_slots.get(te, te)!r})")
    return "no single-file loader for text encoders; transformers' " + "; ".join(calls) if calls else UNKNOWN


def _d_vae(fam: Family, c: _Classes, present: set[str]) -> str:
    cls = T.VAES.get(fam.vae, ("", UNKNOWN))[1]
    if cls not in T.SINGLE_FILE_MODELS:
        return f"no single-file loader for {cls} in diffusers"
    return f"{cls}.from_single_file(path, config={REPO}, subfolder='vae'), passed as vae= to {c.pipe}"


def _d_lora(fam: Family, c: _Classes, present: set[str]) -> str:
    return f"pipe.load_lora_weights(path) on a {c.pipe}" if c.pipe else UNKNOWN


def _d_controlnet(fam: Family, c: _Classes, present: set[str]) -> str:
    if c.den == "UNet2DConditionModel" and c.pipe.endswith("Pipeline"):
        cn = c.pipe.removesuffix("Pipeline") + "ControlNetPipeline"
        return f"ControlNetModel.from_single_file(path), then {cn}.from_pretrained({REPO}, controlnet=model)"
    return UNKNOWN


_DIFFUSERS = {
    "checkpoint": _d_checkpoint,
    "denoiser": _d_denoiser,
    "gguf": _d_gguf,
    "diffusers": _d_folder,
    "text_encoder": _d_text_encoder,
    "vae": _d_vae,
    "lora": _d_lora,
    "controlnet": _d_controlnet,
}


def _diffusers(fam: Family, kind: str, present: set[str]) -> str:
    """The diffusers call for a file of ``kind`` of ``fam``."""
    fn = _DIFFUSERS.get(kind)
    return fn(fam, _Classes.of(fam), present) if fn else UNKNOWN


# ------------------------------------------------------------------------------------------ companions


def _vae_companion(fam: Family) -> Companion:
    load = fam.loading or Loading()
    name = load.vae or T.VAES.get(fam.vae, (f"VAE ({fam.vae})", ""))[0]
    node, display, folder = T.COMFY["vae"]
    return Companion(name, load.vae_comfy or f"{node} ({display})", load.vae_folder or folder)


def _te_companion(fam: Family, kinds: Sequence[str], gguf: bool) -> Companion:
    names = " + ".join(R.COMPONENT_LABELS.get(k, k) for k in kinds)
    word = "text encoder" if len(kinds) == 1 else "text encoders"
    node = _te_node(fam, gguf)
    if len(kinds) < len(fam.text_encoders) and node != UNKNOWN:
        node += ", with the encoders it has"
    return Companion(f"{names} {word}", node, T.TE_FOLDER if node != UNKNOWN else "")


def _needed(fam: Family) -> list[str]:
    """The components a pipeline of ``fam`` runs with besides its denoiser, in the record's slot order."""
    slots = [c for c in fam.diffusers_slots if c != "denoiser"]
    if not slots:
        slots = [*fam.text_encoder_kinds, "vae"]
    elif "vae" not in slots and fam.vae:  # stage C: its "VAE" (stage B + A) is no diffusers slot of its own
        slots.append("vae")
    return slots


def _companions(fam: Family, kind: str, present: set[str], gguf: bool) -> list[Companion]:
    """The files a file of ``kind`` with components ``present`` lacks to generate with ``fam``."""
    load = fam.loading or Loading()
    if kind in ("lora", "controlnet"):
        return [Companion(f"a {fam.name} model to apply it to", _model_nodes(fam), "")]
    has_vae = bool(present & {"vae_encoder", "vae_decoder"})
    out: list[Companion] = []
    if kind in ("text_encoder", "vae"):
        out.append(
            Companion(f"the {fam.name} {fam.denoiser_label} (or a full checkpoint)", _model_nodes(fam), "")
        )
    tes = [k for k in fam.text_encoder_kinds if k not in present]
    if tes:
        out.append(_te_companion(fam, tes, gguf and kind == "text_encoder"))
    for comp in _needed(fam):
        if comp in fam.text_encoder_kinds:
            continue
        if comp == "vae":
            if not has_vae and kind != "vae":
                out.append(_vae_companion(fam))
            continue
        if comp in present:
            continue
        name, node, folder = T.OTHER_COMPONENTS.get(comp, (R.COMPONENT_LABELS.get(comp, comp), UNKNOWN, ""))
        out.append(Companion(name, node, folder, optional=comp in load.optional))
    return out


def _model_nodes(fam: Family) -> str:
    load = fam.loading or Loading()
    if load.comfy is not True:
        return UNKNOWN
    nodes = [T.COMFY["checkpoint"][0]] if load.comfy_checkpoint else []
    return " or ".join([*nodes, T.COMFY["denoiser"][0]])
