"""Tokenizers for ``sdlens embed``, strictly offline: from ``--tokenizer DIR`` folders, else from the local
Hugging Face cache. Never a download.

A folder may be a tokenizer itself (CLIP: ``vocab.json`` + ``merges.txt``; T5: ``tokenizer.json`` or
``spiece.model``) or a diffusers repo with ``tokenizer`` / ``tokenizer_2`` / ``tokenizer_3`` subfolders.
SD1, SD2, SDXL, SD3 and FLUX share one CLIP BPE vocabulary (the pad token differs; ``sdlens.analysis.embed``
pads per encoder as the pipelines do), so one CLIP tokenizer serves every CLIP encoder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdlens.errors import SdlensError

# (repo id, subfolder) of well-known repos whose tokenizer may already be in the local cache
CACHED_CLIP = (
    ("openai/clip-vit-large-patch14", ""),
    ("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer"),
    ("stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer"),
    ("runwayml/stable-diffusion-v1-5", "tokenizer"),
    ("laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", ""),
    ("stabilityai/stable-diffusion-2-1", "tokenizer"),
    ("stabilityai/stable-diffusion-3-medium-diffusers", "tokenizer"),
    ("black-forest-labs/FLUX.1-dev", "tokenizer"),
    ("black-forest-labs/FLUX.1-schnell", "tokenizer"),
)
CACHED_T5 = (
    ("google/t5-v1_1-xxl", ""),
    ("stabilityai/stable-diffusion-3-medium-diffusers", "tokenizer_3"),
    ("black-forest-labs/FLUX.1-dev", "tokenizer_2"),
    ("black-forest-labs/FLUX.1-schnell", "tokenizer_2"),
)
_SUBFOLDERS = ("tokenizer", "tokenizer_2", "tokenizer_3")


@dataclass
class Tokenizers:
    clip: Any = None
    t5: Any = None
    sources: dict[str, str] = field(default_factory=dict)  # "clip" / "t5" -> where it was loaded from

    def for_arch(self, arch: str) -> Any:
        return self.clip if arch == "clip" else self.t5


def _kind(folder: Path) -> str | None:
    """ "clip", "t5" or None, from the files of a tokenizer folder."""
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return "clip"
    cls = ""
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        try:
            cls = str(json.loads(cfg.read_text()).get("tokenizer_class", ""))
        except (OSError, ValueError):
            cls = ""
    if (folder / "spiece.model").is_file():
        return "t5"
    if (folder / "tokenizer.json").is_file():
        if "CLIP" in cls:
            return "clip"
        try:
            text = (folder / "tokenizer.json").read_text(errors="replace")
        except OSError:
            return None
        return "clip" if "<|endoftext|>" in text else "t5"  # a sentencepiece-style (T5) tokenizer
    return None


def _load(folder: Path, kind: str) -> Any:
    import transformers

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        if kind == "clip":
            return transformers.CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
        return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - any loader failure is the folder's problem, said in one line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SdlensError(folder, f"cannot load the {kind.upper()} tokenizer: {msg[:200]}") from None
    finally:
        transformers.logging.set_verbosity(level)


def _candidates(folder: Path) -> list[tuple[Path, str]]:
    out = []
    kind = _kind(folder)
    if kind:
        out.append((folder, kind))
    for sub in _SUBFOLDERS:
        if (folder / sub).is_dir() and (k := _kind(folder / sub)):
            out.append((folder / sub, k))
    return out


def _from_cache(repos: tuple[tuple[str, str], ...], kind: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    names = ("vocab.json",) if kind == "clip" else ("tokenizer.json", "spiece.model")
    for repo, sub in repos:
        for name in names:
            try:
                hit = try_to_load_from_cache(repo, f"{sub}/{name}" if sub else name)
            except Exception:  # noqa: BLE001 - a malformed cache is just "not found"
                hit = None
            if isinstance(hit, str):
                folder = Path(hit).parent
                if _kind(folder) == kind:
                    return folder
    return None


def find_tokenizers(
    dirs: list[Path] | tuple[Path, ...] = (), *, need_clip: bool = True, need_t5: bool = False
) -> Tokenizers:
    """The CLIP and/or T5 tokenizer: from ``dirs`` (first match wins), else from the local HF cache.

    Raises :class:`SdlensError` with one line saying what to provide when a needed tokenizer is not found."""
    found: dict[str, Path] = {}
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise SdlensError(
                d, "--tokenizer must be a folder (a tokenizer, or a diffusers repo with tokenizer/)"
            )
        cands = _candidates(d)
        if not cands:
            raise SdlensError(
                d,
                "no tokenizer here: expected vocab.json + merges.txt (CLIP), tokenizer.json / "
                "spiece.model (T5), or tokenizer/ tokenizer_2/ tokenizer_3/ subfolders",
            )
        for folder, kind in cands:
            found.setdefault(kind, folder)
    if need_clip and "clip" not in found and (hit := _from_cache(CACHED_CLIP, "clip")):
        found["clip"] = hit
    if need_t5 and "t5" not in found and (hit := _from_cache(CACHED_T5, "t5")):
        found["t5"] = hit
    if need_clip and "clip" not in found:
        raise SdlensError(
            None,
            "no CLIP tokenizer found offline: pass --tokenizer DIR (a folder with vocab.json + "
            "merges.txt, e.g. the tokenizer/ folder of any SD1/SDXL diffusers repo); sdlens never downloads",
        )
    out = Tokenizers()
    for kind, folder in found.items():
        if (kind == "clip" and need_clip) or (kind == "t5" and need_t5):
            setattr(out, kind, _load(folder, kind))
            out.sources[kind] = str(folder)
    return out
