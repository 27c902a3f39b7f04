"""``identify()``: what is this file? Its components, its family (with reasons and confidence) and its kind.

One function for every command (inspect, canonical, diff, matrix, convert, from_checkpoint): LoRA files are
told by their key scheme, everything else by :func:`sdlens.arch.detect.split_components` and the records'
features. Kinds: ``full`` (denoiser + text encoders + VAE), ``denoiser`` (with some or none of the others),
``controlnet``, ``vae``, ``text_encoder``, ``lora``, ``unknown``, ``empty``. Part files (a VAE, text encoders)
name the families they fit (``fits``); their ``family`` is one only when a single family fits.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sdlens.arch import families
from sdlens.arch import registry as R
from sdlens.arch.detect import (
    FamilyMatch,
    Split,
    denoiser_features,
    family_from_text_encoders,
    match_family,
    read_features,
    split_components,
)
from sdlens.arch.record import Family
from sdlens.io.base import TensorInfo

KINDS = ("full", "denoiser", "controlnet", "vae", "text_encoder", "lora", "unknown", "empty")

# ----------------------------------------------------------------------------------------------- LoRA keys

# kohya / LyCORIS: lora_<scope>_<module>.<role>; PEFT / diffusers: [<scope>.]<module>.<role>
KOHYA = re.compile(
    r"^lora_(unet|te\d?)_(.+?)\.(lora_down\.weight|lora_up\.weight|lora_mid\.weight|alpha|dora_scale|"
    r"hada_w[12]_[ab]|hada_t[12]|lokr_w[12](?:_[ab])?|lokr_t2|diff|diff_b|bias_indices|bias_values)$"
)
PEFT = re.compile(
    r"^(?:(unet|transformer|text_encoder|text_encoder_2|text_encoder_3)\.)?(.+?)\."
    r"(lora_A\.weight|lora_B\.weight|lora_magnitude_vector|lora\.down\.weight|lora\.up\.weight|alpha)$"
)
# every role above as a key suffix: one C-level test rejects the keys of a checkpoint before any regex
_ROLE_SUFFIXES = tuple(
    "." + r
    for r in (
        "lora_down.weight",
        "lora_up.weight",
        "lora_mid.weight",
        "alpha",
        "dora_scale",
        "hada_w1_a",
        "hada_w1_b",
        "hada_w2_a",
        "hada_w2_b",
        "hada_t1",
        "hada_t2",
        "lokr_w1",
        "lokr_w2",
        "lokr_w1_a",
        "lokr_w1_b",
        "lokr_w2_a",
        "lokr_w2_b",
        "lokr_t2",
        "diff",
        "diff_b",
        "bias_indices",
        "bias_values",
        "lora_A.weight",
        "lora_B.weight",
        "lora_magnitude_vector",
        "lora.down.weight",
        "lora.up.weight",
    )
)
# a scope's text-encoder slot (0: the first text encoder of the family); numbered scopes say "several encoders"
TE_SLOT = {"te": 0, "te1": 0, "text_encoder": 0, "te2": 1, "text_encoder_2": 1, "te3": 2, "text_encoder_3": 2}
_NUMBERED = {"te1", "te2", "te3", "text_encoder_2", "text_encoder_3"}

Modules = dict[tuple[str, str], dict[str, TensorInfo]]  # (scope, module name) -> role -> tensor


def _role_match(key: str) -> re.Match[str] | None:
    return (KOHYA.match(key) or PEFT.match(key)) if key.endswith(_ROLE_SUFFIXES) else None


def is_lora(keys: Mapping[str, Any]) -> bool:
    """More than half the keys follow a LoRA naming scheme."""
    hits = sum(1 for k in keys if _role_match(k))
    return hits > 0 and hits * 2 >= len(keys)


def lora_modules(keys: Mapping[str, TensorInfo]) -> tuple[Modules, str]:
    """A LoRA file's modules, and its key convention (``kohya``, ``peft`` or ``diffusers``)."""
    modules: Modules = {}
    convention = "kohya"
    for k, info in keys.items():
        if not k.endswith(_ROLE_SUFFIXES):
            continue
        m = KOHYA.match(k)
        if m:
            modules.setdefault((m.group(1), m.group(2)), {})[m.group(3)] = info
            continue
        m = PEFT.match(k)
        if m:
            convention = "diffusers" if ".lora.down." in k or ".lora.up." in k else "peft"
            modules.setdefault((m.group(1) or "", m.group(2)), {})[m.group(3)] = info
    return modules, convention


def lora_rank(parts: Mapping[str, TensorInfo]) -> tuple[int | None, TensorInfo | None]:
    """(rank, the down-projection tensor) for whichever decomposition a LoRA module uses."""
    for name in ("lora_down.weight", "lora_A.weight", "lora.down.weight"):
        if name in parts:
            return parts[name].shape[0], parts[name]
    if "hada_w1_b" in parts:
        return parts["hada_w1_b"].shape[0], None
    if "lokr_w2_a" in parts:
        return parts["lokr_w2_a"].shape[1], None
    return None, None


def _first(cands: list[Family], reasons: list[str]) -> Family | None:
    """The first candidate in record order; the others are named in the reasons."""
    if len(cands) > 1:
        reasons.append("also consistent with " + ", ".join(f.name for f in cands[1:]))
    return cands[0] if cands else None


def lora_match(modules: Modules, metadata: Mapping[str, str] | None = None) -> FamilyMatch:
    """The family a LoRA targets: its modules' names (records' ``lora_targets``), else the cross-attention
    context width its ``attn2.to_k`` modules read (the released denoiser configs), else the number of text
    encoders its scopes name; the metadata's base model (records' ``lora_hints``) decides when shapes cannot."""
    names = [n for _, n in modules]
    reasons: list[str] = []
    fam: Family | None = None
    scored = [
        (sum(1 for n in names if re.search(f.lora_targets, n)), f)
        for f in families.FAMILIES
        if f.lora_targets
    ]
    best = max((n for n, _ in scored), default=0)
    tied = [f for n, f in scored if n == best and best]
    widths: Counter[int] = Counter()
    for (_, name), parts in modules.items():
        _, down = lora_rank(parts)
        if down is not None and len(down.shape) >= 2 and re.search(r"attn2[._]to_k$", name):
            widths[down.shape[1]] += 1
    numbered = sorted({s for s, _ in modules if s in _NUMBERED})
    if tied:
        reasons.append(f"targets {tied[0].denoiser_label} blocks of {tied[0].name} ({best} modules)")
    elif widths:
        width = widths.most_common(1)[0][0]
        reasons.append(f"cross-attention to_k input width {width}")
        tied = [
            f
            for f in families.FAMILIES
            if f.denoiser and f.denoiser.config.get("cross_attention_dim") == width
        ]
    elif numbered:  # te1 / te2 / text_encoder_2 ...: a pipeline of several text encoders
        n = max(2, *(TE_SLOT[s] + 1 for s in numbered))
        reasons.append(f"{n} text encoders ({'/'.join(numbered)})")
        tied = [f for f in families.FAMILIES if len(f.text_encoders) == n]
    base = (
        (metadata or {}).get("ss_base_model_version") or (metadata or {}).get("modelspec.architecture") or ""
    ).lower()
    hinted = (
        next((f for f in families.FAMILIES if any(h in base for h in f.lora_hints)), None) if base else None
    )
    if hinted is not None and hinted in tied:
        tied = [hinted, *(f for f in tied if f is not hinted)]
    fam = _first(tied, reasons)
    if hinted is not None:
        reasons.append(f"metadata says {base!r}")
        if fam is None:
            fam = hinted
        elif hinted is not fam:
            reasons.append(f"(metadata disagrees with the shapes: {hinted.name})")
    if fam is None:
        return FamilyMatch(
            "unknown", "unknown", "low", reasons or ["LoRA targets tell no known family"], [], []
        )
    return FamilyMatch(fam.id, fam.name, "high", reasons, [], [])


# ----------------------------------------------------------------------------------------------- identity


@dataclass
class Identity:
    """What a file is. ``match`` holds the family, its reasons and confidence; ``split`` the components."""

    kind: str  # one of KINDS
    match: FamilyMatch
    split: Split
    text_encoders: list[str] = field(default_factory=list)  # text-encoder component ids
    has_vae: bool = False
    latent_channels: int | None = None  # VAE files
    fits: list[str] = field(default_factory=list)  # families a part file (VAE, text encoders) fits
    lora_convention: str | None = None  # kohya | peft | diffusers
    pipeline: str | None = None  # a diffusers folder's model_index.json _class_name

    @property
    def family(self) -> str:
        return self.match.family

    @property
    def record(self) -> Family | None:
        return families.get(self.match.family)

    @property
    def denoiser_family(self) -> str:
        """The family read from a denoiser's structure ("unknown" for part files, ControlNets and LoRAs)."""
        return self.match.family if self.kind in ("full", "denoiser") else "unknown"

    @property
    def label(self) -> str:
        """How reports name the kind: ``full model``, ``denoiser only``, ``denoiser + VAE``, ``VAE``, ..."""
        if self.kind == "denoiser":
            return "denoiser" + _with(self.text_encoders, self.has_vae)
        if self.kind == "vae":
            return "VAE" + (_with(self.text_encoders, False) if self.text_encoders else "")
        if self.kind == "text_encoder":
            return "text encoder" if len(self.text_encoders) == 1 else "text encoders"
        return _LABELS.get(self.kind, self.kind)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "label": self.label,
            **self.match.to_dict(),
            "components": {
                c.id: {
                    "prefix": c.prefix,
                    "convention": c.convention,
                    "tensors": len(c.keys),
                    "params": c.params,
                }
                for c in self.split.components.values()
            },
            "unknown_keys": list(self.split.unknown),
            "conventions": list(self.split.conventions),
            "text_encoders": list(self.text_encoders),
            "has_vae": self.has_vae,
            "latent_channels": self.latent_channels,
            "fits": list(self.fits),
            "lora_convention": self.lora_convention,
            "pipeline": self.pipeline,
        }


_LABELS = {"full": "full model", "controlnet": "ControlNet", "lora": "LoRA"}


def _with(te: list[str], has_vae: bool) -> str:
    extra = (["text encoders"] if te else []) + (["VAE"] if has_vae else [])
    return (" + " + " + ".join(extra)) if extra else " only"


def identify(
    tensors: Mapping[str, TensorInfo],
    configs: Mapping[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Identity:
    """Identify a file from its tensors' names and shapes (no data read); ``configs`` (a diffusers folder's
    ``config.json`` files by part) and ``metadata`` (safetensors header) add what they tell."""
    index = (configs or {}).get("model_index")
    pipeline = (
        index.get("_class_name")
        if isinstance(index, dict) and isinstance(index.get("_class_name"), str)
        else None
    )
    split = split_components(tensors)
    if is_lora(tensors):
        modules, convention = lora_modules(tensors)
        return Identity(
            "lora", lora_match(modules, metadata), split, lora_convention=convention, pipeline=pipeline
        )
    comps = split.components
    te = [c for c in comps if c.split("@")[0] in R.TEXT_ENCODER_KINDS]
    has_vae = "vae_encoder" in comps or "vae_decoder" in comps

    def out(kind: str, match: FamilyMatch, **kw: Any) -> Identity:
        return Identity(kind, match, split, te, has_vae, pipeline=pipeline, **kw)

    if "denoiser" in comps:
        return out("full" if te and has_vae else "denoiser", match_family(denoiser_features(split, configs)))
    if "controlnet" in comps:
        return out("controlnet", _controlnet(comps["controlnet"].keys))
    if has_vae:
        return _vae(split, out)
    if te:
        return _text_encoders(te, out)
    if not tensors:
        return out("empty", FamilyMatch("unknown", "unknown", "low", ["no tensors in the file"], [], []))
    return out("unknown", FamilyMatch("unknown", "unknown", "low", ["no key matches a known layout"], [], []))


def _controlnet(keys: Mapping[str, TensorInfo]) -> FamilyMatch:
    """A ControlNet is half a UNet (its encoder side and middle block): matched against the UNet families, its
    level count read from the input blocks it has."""
    feats = read_features(keys)
    feats["levels"] = (
        (feats["input_blocks"] + 1) // 3 if feats.get("input_blocks") else feats.get("down_levels")
    )
    unets = tuple(f.id for f in families.FAMILIES if f.denoiser is not None and f.denoiser.keymap == "unet")
    match = match_family(feats, allowed=unets)
    match.reasons.insert(0, "ControlNet keys (control_model.* / controlnet_cond_embedding.*)")
    return match


def latent_channels(rel: Mapping[str, TensorInfo]) -> int | None:
    """A VAE's latent channels from its (relative) keys: the decoder's input, else half the encoder's output."""
    t = rel.get("decoder.conv_in.weight")
    if t is not None and len(t.shape) > 1:
        return t.shape[1]
    t = rel.get("encoder.conv_out.weight")
    return t.shape[0] // 2 if t is not None and len(t.shape) > 0 else None


def _vae(split: Split, out: Any) -> Identity:
    comps = split.components
    parts = [p for p in ("vae_encoder", "vae_decoder") if p in comps]
    latent = latent_channels({k: t for p in parts for k, t in comps[p].keys.items()})
    fits = [f for f in families.FAMILIES if latent is not None and f.latent_channels == latent]
    reasons = [f"VAE {' + '.join(R.COMPONENT_LABELS[p] for p in parts)}"]
    if fits:
        same = " (identical shapes: only values tell them apart)" if len(fits) > 1 else ""
        reasons.append(f"{latent}-channel latent: the VAE of {', '.join(f.name for f in fits)}{same}")
    else:
        reasons.append(f"{latent}-channel latent: no known family" if latent else "latent channels not told")
    fam = fits[0] if len(fits) == 1 else None
    name = f"VAE ({latent}-channel latent)" if latent else "VAE"
    match = FamilyMatch(fam.id if fam else "unknown", name, "high" if fits else "low", reasons, [], [])
    return out("vae", match, latent_channels=latent, fits=[f.id for f in fits])


def _text_encoders(te: list[str], out: Any) -> Identity:
    kinds = [c.split("@")[0] for c in te]
    fits = family_from_text_encoders(kinds)
    names = " + ".join(R.COMPONENT_LABELS[k] for k in kinds)
    reasons = [f"text encoder(s) only: {names}"]
    if fits:
        reasons.append("the text encoders of " + ", ".join(families.get(f).name for f in fits))
    fam = families.get(fits[0]) if len(fits) == 1 else None
    match = FamilyMatch(fam.id if fam else "unknown", fam.name if fam else names, "medium", reasons, [], [])
    return out("text_encoder", match, fits=list(fits))
