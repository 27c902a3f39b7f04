"""A denoiser config from a checkpoint's shapes (or a diffusers ``config.json``), so that fine-tunes with
other widths or depths — SSD-1B / Vega / KOALA-style SDXL distillations, the tiny test zoo — are measured as
they are. Only the header is read.

The flow is generic: identify the family, take its record (``sdlens.arch.families``), let the record's
``denoiser.config_from_shapes`` read the config off the keys (what shapes cannot tell — UNet heads, DiT head
width — is the record's), build it on the meta device and compare its parameter count with the file's; a
difference is reported, never hidden. The pipeline around the denoiser (text encoders, steps…) is the record's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sdlens.arch import build as B
from sdlens.arch import families
from sdlens.arch.record import Family
from sdlens.arch.shapes import derive_config
from sdlens.errors import SdlensError


def _measurable() -> tuple[Family, ...]:
    """Records ``sdlens arch`` can measure: a denoiser class and a pipeline around it."""
    return tuple(f for f in families.all_families() if f.denoiser is not None and f.pipeline is not None)


def record_for_config(cls_name: str, config: Mapping[str, Any]) -> Family | None:
    """The record a diffusers config of ``cls_name`` belongs to: the first measurable record of that class whose
    ``matches_config`` holds (a record without one takes any config of its class)."""
    for fam in _measurable():
        den = fam.denoiser
        if (
            den is not None
            and den.cls_name == cls_name
            and (den.matches_config is None or den.matches_config(config))
        ):
            return fam
    return None


def _spec(
    fam: Family,
    cls_name: str,
    config: dict[str, Any],
    source: str,
    *,
    notes: list[str] | None = None,
    reference: int | None = None,
) -> B.ArchSpec:
    base = B.released_spec(fam.id)
    spec = dataclasses.replace(base, cls_name=cls_name, config=config, source=source)
    if spec.is_unet:  # a UNet's sample_size is its latent size: the native resolution follows it
        sample = config.get("sample_size")
        if isinstance(sample, int) and sample * 8 != base.res[0]:
            spec = dataclasses.replace(spec, res=(sample * 8, sample * 8))
    return dataclasses.replace(spec, notes=tuple(notes or ()), reference_params=reference)


def spec_from_config_json(path: Path) -> B.ArchSpec:
    from sdlens.io.config_check import check_config
    from sdlens.io.folders import read_json

    cfg = read_json(path, "config")  # bounded, type-checked: one line for any bad file
    if not isinstance(cfg, dict):
        raise SdlensError(path, "not a diffusers config (a JSON object with _class_name)")
    check_config(cfg, path)
    cls_name = cfg.get("_class_name")
    if cls_name is None:
        cls_name = (
            "UNet2DConditionModel" if "block_out_channels" in cfg and "cross_attention_dim" in cfg else None
        )
    config = {k: v for k, v in cfg.items() if not k.startswith("_")}
    fam = record_for_config(cls_name, config) if isinstance(cls_name, str) else None
    if fam is None:
        known = ", ".join(dict.fromkeys(f.denoiser.cls_name for f in _measurable() if f.denoiser))
        raise SdlensError(path, f"config of {cls_name or 'an unknown class'}: sdlens arch measures {known}")
    return _spec(fam, cls_name, config, f"config {path.name}")


def spec_from_path(path: Path) -> B.ArchSpec:
    """A checkpoint file or diffusers folder -> spec; a folder's own ``unet``/``transformer`` config wins."""
    if path.is_dir():
        from sdlens.io.folders import confined, root_of

        for name in ("unet/config.json", "transformer/config.json", "config.json"):
            if (path / name).exists():  # confined to the folder, like its weights
                return spec_from_config_json(confined(root_of(path), path, name, path))
    from sdlens.arch.identify import identify
    from sdlens.io.open import open_checkpoint

    with open_checkpoint(path) as ck:
        tensors = dict(ck.tensors)
    ident = identify(tensors)
    comps = ident.split.components
    if ident.kind not in ("full", "denoiser"):
        raise SdlensError(
            path, "no denoiser in this file (text encoder, VAE or LoRA only): nothing to measure"
        )
    keys = comps["denoiser"].keys
    match = ident.match
    fam = families.get(match.family)
    if fam is not None and fam.base:  # a refinement of another family's denoiser is built as its base
        fam = families.get(fam.base)
    den = fam.denoiser if fam is not None else None
    if fam is None or den is None or den.config_from_shapes is None or fam.pipeline is None:
        raise SdlensError(path, f"sdlens arch cannot derive a config for a {match.name} denoiser")
    config = derive_config(den, keys, path)
    try:
        model = B.build_denoiser(den.cls_name, config)
    except (
        ValueError,
        TypeError,
        ZeroDivisionError,
        AssertionError,
        RuntimeError,
    ) as e:  # diffusers refuses it
        raise SdlensError(
            path, f"the config derived from the shapes does not build a {den.cls_name} ({type(e).__name__})"
        ) from None
    file_params = sum(t.numel for t in keys.values())
    buffers = persistent_buffers(model)  # e.g. SD3's pos_embed: stored in files, not a parameter
    file_params -= buffers if file_params - buffers > 0 else 0
    notes = [f"config derived from the shapes in {path.name} ({match.name}, {match.confidence} confidence)"]
    notes += [f"differs from the released model: {n}" for n in match.nonstandard]
    built = B.count_params(model)
    if built != file_params:
        notes.append(
            f"the derived config has {built:,} parameters, the file's denoiser {file_params:,}: "
            "figures are for the derived config"
        )
    return _spec(fam, den.cls_name, config, f"derived from {path.name}", notes=notes, reference=file_params)


def persistent_buffers(model) -> int:
    """Elements of the buffers a state dict (and so a file) holds: not the non-persistent ones (Wan's RoPE
    tables), which no file stores."""
    params = {n for n, _ in model.named_parameters()}
    return sum(t.numel() for n, t in model.state_dict().items() if n not in params)
