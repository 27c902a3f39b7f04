"""Checkpoints spread over several files: diffusers folders and sharded models (``*.index.json``).

Layouts as ``diffusers`` / ``transformers`` ``save_pretrained`` write them: per component folder one weights file
(``diffusion_pytorch_model.safetensors``, ``model.safetensors``, ``pytorch_model.bin``) or shards plus an index
(``diffusion_pytorch_model-00001-of-00002.safetensors`` + ``diffusion_pytorch_model.safetensors.index.json``),
and variants (``model.fp16.safetensors``; sharded: ``model.fp16-00001-of-00002.safetensors`` +
``model.safetensors.index.fp16.json``), chosen explicitly with ``variant``.

Every path named inside a folder or an index must resolve inside that folder (see :func:`confined`).
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from sdlens.errors import CheckpointError, SdlensError
from sdlens.io.base import Checkpoint, TensorInfo
from sdlens.io.config_check import check_config
from sdlens.io.files import open_file
from sdlens.io.limits import show
from sdlens.io.quant import Quant

WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
# weight file stems written by diffusers / transformers, best first
_STEMS = ("diffusion_pytorch_model", "model", "pytorch_model")
_STEM = "|".join(_STEMS)
_VAR = r"[A-Za-z0-9_]+"
_SINGLE = re.compile(rf"(?P<stem>{_STEM})(?:\.(?P<var>{_VAR}))?\.(?P<ext>safetensors|bin)")
# diffusers / transformers write "X.safetensors.index.fp16.json"; "X.fp16.safetensors.index.json" is accepted too
_INDEX = re.compile(
    rf"(?P<stem>{_STEM})(?:\.(?P<var>{_VAR}))?\.(?P<ext>safetensors|bin)\.index(?:\.(?P<var2>{_VAR}))?\.json"
)
_SHARD = re.compile(rf"(?P<stem>{_STEM})(?:\.(?P<var>{_VAR}))?-\d+-of-\d+\.(?P<ext>safetensors|bin)")
INDEX_NAME = re.compile(rf".*\.index(?:\.{_VAR})?\.json")
VARIANT = re.compile(_VAR)
# sub-folders of a diffusers pipeline that hold weights sdlens reads
PIPELINE_PARTS = (
    "unet",
    "transformer",
    "prior",
    "controlnet",
    "vae",
    "text_encoder",
    "text_encoder_2",
    "text_encoder_3",
)
MAX_JSON_BYTES = 64 << 20  # config.json, model_index.json, shard indexes (a 100k-key index is ~10 MB)
MAX_JSON_DEPTH = 64  # real configs nest 3-4 levels


class CompositeCheckpoint(Checkpoint):
    """Several checkpoints shown as one; keys may be prefixed with the part they came from."""

    def __init__(self, path: str | Path, fmt: str):
        super().__init__(path)
        self.format = fmt
        self.parts: dict[str, Checkpoint] = {}
        self.configs: dict[str, dict[str, Any]] = {}  # part -> its config.json
        self.pipeline: str | None = None  # model_index.json's _class_name
        self.variant: str | None = None  # the variant read (fp16, ...), None for the full-precision files
        self.notes: list[str] = []  # how the folder was read, where it departs from the plain choice
        self._where: dict[str, tuple[Checkpoint, str]] = {}

    def add(self, prefix: str, ckpt: Checkpoint) -> None:
        self.parts[f"{prefix}/{ckpt.path.name}" if prefix else ckpt.path.name] = ckpt
        for key, info in ckpt.tensors.items():
            full = f"{prefix}.{key}" if prefix else key
            if full in self._where:
                raise CheckpointError(self.path, f"key {show(full)} appears in two shards")
            self.tensors[full] = TensorInfo(
                full, info.shape, info.dtype, info.source, info.offset, info.extra
            )
            self._where[full] = (ckpt, key)
        for k, v in ckpt.metadata.items():
            self.metadata.setdefault(k, v)
        for k, v in ckpt.extras.items():
            self.extras.setdefault(k, v)

    @property
    def files(self) -> list[Path]:
        return [f for c in self.parts.values() for f in c.files]

    def recognise_quantised(self) -> None:
        """Scaled-fp8 / bitsandbytes weights whose companions the shards hold (perhaps in other shards than
        the weight): each becomes one quantised tensor, read by this checkpoint from the shards' files."""
        from sdlens.io.quant_keys import recognise

        tensors, markers = recognise(str(self.path), self.tensors, self.stored)
        for gone in set(self.tensors) - set(tensors):
            del self._where[gone]
        self.tensors = tensors
        self.quant_markers.update(markers)

    def is_plain(self, key: str) -> bool:
        if isinstance(self.tensors[key].extra, Quant):
            return False
        ckpt, inner = self._where[key]
        return ckpt.is_plain(inner)

    def read(self, key: str, *, copy: bool = True):
        if isinstance(self.tensors[key].extra, Quant):  # recognised across shards: decoded here
            return Checkpoint.read(self, key, copy=copy)
        ckpt, inner = self._where[key]
        return ckpt.read(inner, copy=copy)

    def close(self) -> None:
        for c in self.parts.values():
            c.close()
        super().close()


# --------------------------------------------------------------------------- confinement


def root_of(path: Path) -> Path:
    """The folder every path named inside ``path`` must stay in: ``path`` itself (symlinks resolved), or, for a
    folder inside a Hugging Face cache snapshot (``models--org--name/snapshots/REV/``, whose files are links
    into ``models--org--name/blobs/``), that repository's cache folder."""
    real = path.resolve()
    parts = real.parts
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] == "snapshots" and parts[i - 1].startswith("models--"):
            return Path(*parts[:i])
    return real


def confined(root: Path, folder: Path, name: Any, what: Path, role: str = "file") -> Path:
    """``folder / name`` after checking that ``name`` is a relative path without ``..``, that it resolves (links
    followed) to a regular file inside ``root``; otherwise :class:`CheckpointError` about ``what``. Nothing
    outside is opened."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise CheckpointError(what, f"{role} name {show(name)} is not a file name")
    if (
        PurePosixPath(name).is_absolute()
        or PureWindowsPath(name).drive
        or PureWindowsPath(name).is_absolute()
    ):
        raise CheckpointError(
            what, f"{role} {show(name)} is an absolute path; refused (only files inside the folder are read)"
        )
    if ".." in PurePosixPath(name).parts or ".." in PureWindowsPath(name).parts:
        raise CheckpointError(what, f"{role} {show(name)} points outside the folder ('..'); refused")
    full = folder / name
    try:
        real = full.resolve(strict=True)
    except FileNotFoundError:
        raise CheckpointError(
            what,
            f"{role} {show(name)} listed in the index is missing"
            if role == "shard"
            else f"{role} {show(name)} is missing",
        ) from None
    except (OSError, RuntimeError) as e:  # symlink loops: RuntimeError before Python 3.13, OSError after
        raise CheckpointError(
            what, f"{role} {show(name)} cannot be resolved ({getattr(e, 'strerror', None) or e})"
        ) from None
    if not real.is_relative_to(root):
        raise CheckpointError(what, f"{role} {show(name)} is a link to outside the folder; refused")
    try:
        mode = os.stat(real).st_mode
    except OSError as e:
        raise CheckpointError(what, f"{role} {show(name)}: cannot read ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        raise CheckpointError(what, f"{role} {show(name)} is not a regular file ({file_kind(mode)}); refused")
    return full


def file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return kind
    return "not a plain file"


def _inside(root: Path, folder: Path, what: Path) -> bool:
    """Whether a sub-folder resolves inside ``root``; a link out is refused."""
    try:
        real = folder.resolve(strict=True)
    except (OSError, RuntimeError):
        return False
    if not real.is_relative_to(root):
        raise CheckpointError(what, f"{folder.name}/ is a link to outside the folder; refused")
    return real.is_dir()


def read_json(path: Path, what: str = "JSON") -> Any:
    """A small JSON file (config, model index, shard index), every failure one :class:`CheckpointError`: too
    big, not UTF-8, not JSON, nested too deep, integers beyond Python's digit limit."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a named pipe must not block the open
        with os.fdopen(fd, "rb") as f:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise CheckpointError(path, f"not a regular file ({file_kind(mode)}); refused")
            raw = f.read(MAX_JSON_BYTES + 1)
    except OSError as e:
        raise CheckpointError(path, f"cannot read: {e.strerror}") from None
    if len(raw) > MAX_JSON_BYTES:
        raise CheckpointError(path, f"{what} is over {MAX_JSON_BYTES >> 20} MB; refused")
    try:
        data = json.loads(raw)
    except RecursionError:
        raise CheckpointError(path, f"{what} is nested too deeply; refused") from None
    except (ValueError, UnicodeError) as e:  # JSONDecodeError, UnicodeDecodeError, int digit limit
        raise CheckpointError(path, f"{what} is not valid JSON ({show(str(e))})") from None
    if _depth(data) > MAX_JSON_DEPTH:
        raise CheckpointError(path, f"{what} is nested deeper than {MAX_JSON_DEPTH} levels; refused")
    return data


def _depth(data: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if d > MAX_JSON_DEPTH:
            break
        if isinstance(node, dict):
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, d + 1) for v in node)
    return deepest


def check_variant(variant: str | None) -> None:
    if variant is not None and not VARIANT.fullmatch(variant):
        raise SdlensError(None, f"--variant {show(variant)}: expected a name such as fp16, bf16 or non_ema")


# --------------------------------------------------------------------------- shard indexes


def open_sharded(
    index_path: Path, prefix: str = "", into: CompositeCheckpoint | None = None, root: Path | None = None
) -> CompositeCheckpoint:
    """A model split into shards listed by ``*.index.json`` (``{"metadata": {...}, "weight_map": {key: file}}``).
    Shards must lie inside ``root`` (default: the index's own folder)."""
    root = root or root_of(index_path.parent)
    index = read_json(index_path, "shard index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(
            index_path, "not a valid shard index (expected a JSON object with a 'weight_map' object)"
        )
    if not weight_map:
        raise CheckpointError(index_path, "shard index lists no tensors (empty 'weight_map')")
    for k, v in weight_map.items():
        if not isinstance(v, str):
            raise CheckpointError(
                index_path, f"shard index: the file of {show(k)} is {show(v)}, not a file name"
            )
    comp = into if into is not None else CompositeCheckpoint(index_path, "sharded")  # (an empty one is falsy)
    meta = index.get("metadata")
    if isinstance(meta, dict):
        comp.metadata.update(
            {
                f"index.{k}": show(v) if not isinstance(v, str) else v[:200]
                for k, v in meta.items()
                if isinstance(v, (str, int, float, bool))
            }
        )
    shards = sorted(set(weight_map.values()))
    paths = [
        confined(root, index_path.parent, s, index_path, "shard") for s in shards
    ]  # all checked before any read
    for shard_path in paths:
        comp.add(prefix, open_file(shard_path, quantised=False))
    found = {k.removeprefix(f"{prefix}.") if prefix else k for k in comp._where}
    missing = [k for k in weight_map if k not in found]
    if missing:
        raise CheckpointError(
            index_path, f"{len(missing)} keys of the index are in no shard (e.g. {show(missing[0])})"
        )
    comp.recognise_quantised()
    return comp


# --------------------------------------------------------------------------- component folders


@dataclass(frozen=True)
class _Candidate:
    name: str
    variant: str | None
    rank: tuple[int, int, int]  # safetensors before bin, one file before an index, stem order


def _candidates(folder: Path) -> tuple[list[_Candidate], list[str], list[str]]:
    """Weight files (and indexes) named as diffusers / transformers name them; other weight-like names; shards."""
    found: list[_Candidate] = []
    other: list[str] = []
    shards: list[str] = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return [], [], []
    for e in entries:
        n = e.name
        if (m := _SINGLE.fullmatch(n)) or (m := _INDEX.fullmatch(n)):
            is_index = n.endswith(".json")
            var = m.group("var") or (m.groupdict().get("var2") if is_index else None)
            if is_index and m.group("var") and m.groupdict().get("var2"):
                continue  # two variant tags: not a name any writer produces
            ext = 0 if m.group("ext") == "safetensors" else 1
            found.append(_Candidate(n, var, (ext, int(is_index), _STEMS.index(m.group("stem")))))
        elif _SHARD.fullmatch(n):
            shards.append(n)
        elif n.endswith(WEIGHT_SUFFIXES) or INDEX_NAME.fullmatch(n):
            other.append(n)
    return found, other, shards


def _choose(folder: Path, variant: str | None) -> tuple[str | None, str | None, str | None]:
    """(file name, variant read, how the choice departs from ``variant``: "fallback" (no such variant here: the
    full-precision files), "only" (no full-precision files: the one variant there is) or None) for one component
    folder. Several variants and no full-precision files, without ``variant``: refused."""
    found, other, shards = _candidates(folder)
    by_var: dict[str | None, list[_Candidate]] = {}
    for c in found:
        by_var.setdefault(c.variant, []).append(c)
    best = {v: min(cs, key=lambda c: c.rank).name for v, cs in by_var.items()}
    if variant in best:
        return best[variant], variant, None
    if variant is not None and None in best:
        return best[None], None, "fallback"
    if variant is None and len(best) == 1:
        (only,) = best
        return best[only], only, "only"
    if best:
        names = ", ".join(sorted(v for v in best if v))
        if variant is not None:
            raise CheckpointError(folder, f"no {variant} variant here (variants: {names})")
        raise CheckpointError(
            folder, f"several variants ({names}) and no full-precision weights: pass --variant"
        )
    if not found and shards:
        raise CheckpointError(
            folder, f"shard files ({show(shards[0])}, ...) but no index (*.safetensors.index.json)"
        )
    # no standard names: one weights file or one index, whatever it is called
    indexes = [n for n in other if INDEX_NAME.fullmatch(n)]
    files = [n for n in other if n.endswith(WEIGHT_SUFFIXES)]
    if len(indexes) == 1:
        return indexes[0], None, None
    if not indexes and len(files) == 1:
        return files[0], None, None
    return None, None, None


def _has_weights(folder: Path) -> bool:
    found, other, shards = _candidates(folder)
    return bool(found or shards or any(n.endswith(WEIGHT_SUFFIXES) for n in other))


def is_model_folder(path: Path) -> bool:
    """A diffusers pipeline folder, one component folder (weights + config.json), or shards with their index."""
    if (path / "model_index.json").is_file() or any((path / p).is_dir() for p in PIPELINE_PARTS):
        return True
    found, other, shards = _candidates(path)
    if any(c.rank[1] for c in found):  # a standard shard index: the shards are one model
        return True
    return (path / "config.json").is_file() and bool(
        found or shards or any(n.endswith(WEIGHT_SUFFIXES) for n in other)
    )


def _listed(model_index: Any, path: Path) -> tuple[str | None, dict[str, str | None]]:
    """``_class_name`` and the components of ``model_index.json`` (name -> class, None for ``[null, null]``)."""
    where = path / "model_index.json"
    if not isinstance(model_index, dict):
        raise CheckpointError(where, "not a diffusers model index (expected a JSON object)")
    cls = model_index.get("_class_name")
    if cls is not None and not isinstance(cls, str):
        raise CheckpointError(where, f"'_class_name' is {show(cls)}, not a class name")
    listed: dict[str, str | None] = {}
    for k, v in model_index.items():
        if k.startswith("_") or not isinstance(v, list) or len(v) != 2:
            continue
        if not all(x is None or isinstance(x, str) for x in v):
            raise CheckpointError(where, f"entry {show(k)} is {show(v)}, not [library, class]")
        listed[k] = v[1] if v[0] is not None and v[1] is not None else None
    return cls, listed


def open_folder(path: Path, variant: str | None = None) -> CompositeCheckpoint:
    """A diffusers pipeline folder (parts prefixed ``unet.``, ``vae.``, ``text_encoder.`` ...) or a single
    component folder (bare keys). ``model_index.json``, when present, names the pipeline and says which
    component folders are read; ``variant`` (``fp16`` ...) picks variant files."""
    check_variant(variant)
    root = root_of(path)
    comp = CompositeCheckpoint(path, "diffusers-folder")
    listed: dict[str, str | None] = {}
    if (path / "model_index.json").exists():
        model_index = read_json(confined(root, path, "model_index.json", path), "model_index.json")
        comp.configs["model_index"] = model_index
        comp.pipeline, listed = _listed(model_index, path)
    parts = _parts_to_read(path, root, listed, comp.notes)
    folders = [(p, path / p) for p in parts] if parts or listed else [("", path)]
    used: set[str | None] = set()
    departs: dict[tuple[str, str | None], list[str]] = {}  # (how, variant read) -> component labels
    for prefix, folder in folders:
        name, var, how = _choose(folder, variant)
        if name is None:
            continue
        weights = confined(root, folder, name, folder, "weights file")
        used.add(var)
        if how:
            departs.setdefault((how, var), []).append(f"{prefix}/" if prefix else "this folder")
        comp.configs[prefix or "model"] = _folder_config(root, folder)
        if INDEX_NAME.fullmatch(name):
            open_sharded(weights, prefix, into=comp, root=root)
        else:
            comp.add(prefix, open_file(weights))
    if not comp.tensors:
        extra = f" (model_index.json lists: {', '.join(k for k, c in listed.items() if c)})" if listed else ""
        raise CheckpointError(
            path, "folder holds no model weights (no .safetensors/.bin/.ckpt in a known layout)" + extra
        )
    if variant is not None and variant not in used:
        raise CheckpointError(path, f"no {variant} variant in this folder")
    for (how, var), labels in departs.items():
        where = ", ".join(labels)
        comp.notes.append(
            f"no {variant} variant in {where}: read the full-precision weights"
            if how == "fallback"
            else f"only the {var} variant in {where}: read it (pass --variant {var} to choose it)"
        )
    comp.variant = ", ".join(sorted(v for v in used if v)) or None
    _describe(comp)
    return comp


def _describe(comp: CompositeCheckpoint) -> None:
    """The folder's pipeline, variant files and notes as extras (shown by inspect)."""
    if comp.pipeline:
        comp.extras["pipeline"] = comp.pipeline
    if comp.variant:
        comp.extras["variant files"] = comp.variant
    if comp.notes:
        comp.extras["folder notes"] = "; ".join(comp.notes)


def _parts_to_read(path: Path, root: Path, listed: dict[str, str | None], notes: list[str]) -> list[str]:
    """The component folders to read: those present, or with a ``model_index.json`` those it lists (what it
    lists but the folder lacks, and what it does not list, said in ``notes``)."""
    present = [p for p in PIPELINE_PARTS if _inside(root, path / p, path)]
    if not listed:
        return present
    parts = [p for p in PIPELINE_PARTS if listed.get(p)]
    gone = [p for p in parts if p not in present]
    if gone:
        notes.append(f"model_index.json lists {', '.join(gone)} but the folder has no {', '.join(gone)}/")
    unlisted = [p for p in present if p not in parts]
    if unlisted:
        notes.append(f"not read: {', '.join(p + '/' for p in unlisted)} (not in model_index.json)")
    skipped = [
        k
        for k, c in listed.items()
        if c and k not in PIPELINE_PARTS and _inside(root, path / k, path) and _has_weights(path / k)
    ]
    if skipped:
        notes.append("not read: " + ", ".join(f"{k} ({show(listed[k])[1:-1]})" for k in skipped))
    return [p for p in parts if p in present]


def _folder_config(root: Path, folder: Path) -> dict[str, Any]:
    """A component folder's ``config.json`` (checked), or ``{}`` without one."""
    if not (folder / "config.json").exists():
        return {}
    cfg = read_json(confined(root, folder, "config.json", folder), "config.json")
    if not isinstance(cfg, dict):
        raise CheckpointError(folder / "config.json", "not a model config (expected a JSON object)")
    check_config(cfg, folder / "config.json")
    return cfg
