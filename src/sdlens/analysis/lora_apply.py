"""Baking LoRAs into a checkpoint: which tensor each LoRA module changes, and by how much.

Conventions read (with :func:`sdlens.io.open.open_checkpoint`, never a pickle executed):

* kohya / LyCORIS LoCon: ``lora_unet_…`` / ``lora_te_…`` / ``lora_te1_…`` / ``lora_te2_…`` + ``.lora_down.weight``,
  ``.lora_up.weight``, ``.alpha`` (conv modules: down ``[r, in, kh, kw]``, up ``[out, r, 1, 1]``);
* PEFT / diffusers: ``unet.`` / ``text_encoder.`` / ``text_encoder_2.`` / ``transformer.`` + module +
  ``.lora_A.weight`` / ``.lora_B.weight``; alpha from a ``<module>.alpha`` tensor, else the
  ``lora_adapter_metadata`` diffusers writes (``lora_alpha``, ``alpha_pattern``, ``use_rslora``), else the rank.

Per module ΔW = weight · scale · up @ down (conv kernels flattened to 2-D and reshaped back), with
scale = alpha / rank (alpha / √rank for rsLoRA), as kohya's, diffusers' and PEFT's loaders apply it. Modules are
named onto the checkpoint's canonical tensors (:func:`sdlens.arch.canonical.canonical_index`): LDM module names
for UNets (kohya's diffusers or LDM spelling and PEFT's diffusers path resolve to them), the checkpoint's own
``_``-flattened names for text encoders, so the checkpoint may be an LDM / ComfyUI single file or a diffusers
folder; a canonical tensor stored as rows of a fused tensor (open_clip ``in_proj``) or transposed gets its Δ
on those rows. LoHa, LoKr, DoRA, Tucker (``lora_mid``) and full-diff modules are refused (not supported yet).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdlens.errors import SdlensError

if TYPE_CHECKING:
    import torch

    from sdlens.arch.canonical import CanonRef
    from sdlens.io.base import Checkpoint, TensorInfo

__all__ = ["LoraBaker", "LoraFile", "LoraPlan", "LoraSpec", "LoraTarget", "parse_merge_lora", "plan_loras"]

_DOWN = ("lora_down.weight", "lora_A.weight", "lora.down.weight")
_UP = ("lora_up.weight", "lora_B.weight", "lora.up.weight")
# roles that name a decomposition sdlens does not bake (yet), and what to call it
_UNSUPPORTED = {
    "hada_": "LoHa",
    "lokr_": "LoKr",
    "dora_scale": "DoRA",
    "lora_magnitude_vector": "DoRA",
    "lora_mid.weight": "LoCon with a Tucker core (lora_mid)",
    "diff": "full-weight diff modules",
    "diff_b": "full-weight diff modules",
    "bias_": "bias modules",
}
_META_PREFIX = {"": "", "unet": "unet.", "transformer": "transformer.", "text_encoder": "text_encoder.",
                "text_encoder_2": "text_encoder_2.", "text_encoder_3": "text_encoder_3."}  # fmt: skip


@dataclass(frozen=True)
class LoraSpec:
    """One ``--merge-lora LORA[:WEIGHT]``."""

    path: Path
    weight: float = 1.0


def parse_merge_lora(value: str) -> LoraSpec:
    """``LORA[:WEIGHT]``: split on the last ``:`` only when what follows is a number (so ``C:\\x.safetensors``
    stays a path); the weight may be negative, must be finite."""
    path, weight = value, 1.0
    head, sep, tail = value.rpartition(":")
    if sep and head:
        try:
            weight = float(tail)
            path = head
        except ValueError:
            pass
    if not math.isfinite(weight):
        raise SdlensError(path, f"--merge-lora: weight {tail!r} is not a finite number")
    if not path:
        raise SdlensError(None, f"--merge-lora {value!r}: no LoRA file named")
    return LoraSpec(Path(path), weight)


@dataclass(frozen=True)
class LoraTarget:
    """One LoRA module applied to one checkpoint tensor."""

    lora: int  # index into LoraPlan.files
    module: str  # the module's key stem in the LoRA file
    down: str  # key of the down / A tensor
    up: str  # key of the up / B tensor
    scale: float  # weight · alpha / rank (alpha / sqrt(rank) for rsLoRA)
    canonical: str  # canonical name of the changed tensor
    key: str  # the checkpoint key that stores it
    shape: tuple[int, ...]  # canonical shape
    rows: tuple[int, int] | None = None  # the canonical tensor is these rows of ``key``
    transpose: bool = False  # ... transposed


@dataclass
class LoraFile:
    path: str
    name: str
    sha256: str
    weight: float
    convention: str
    modules: int
    ranks: dict[int, int] = field(default_factory=dict)
    alphas: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "name": self.name,
            "sha256": self.sha256,
            "weight": self.weight,
            "convention": self.convention,
            "modules": self.modules,
            "ranks": {str(k): v for k, v in self.ranks.items()},
            "alphas": self.alphas,
        }

    def provenance(self) -> dict[str, Any]:
        return {"file": self.name, "sha256": self.sha256, "weight": self.weight, "modules": self.modules}


@dataclass
class LoraPlan:
    """The LoRAs to bake and, per checkpoint key, the modules that change it."""

    files: list[LoraFile]
    targets: dict[str, list[LoraTarget]]

    def names(self, key: str) -> list[str]:
        """The LoRA files whose modules change checkpoint ``key``."""
        return list(dict.fromkeys(self.files[t.lora].name for t in self.targets.get(key, ())))

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": [f.to_dict() for f in self.files],
            "tensors": len(self.targets),
            "modules": sum(len(v) for v in self.targets.values()),
        }


# --------------------------------------------------------------------------- resolving the modules


def _file_sha256(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            while chunk := fh.read(8 << 20):
                h.update(chunk)
    return h.hexdigest()


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape without trailing 1s past the first two dims (a 1x1 conv compares like a linear)."""
    s = list(shape)
    while len(s) > 2 and s[-1] == 1:
        s.pop()
    return tuple(s)


def _peft_meta(metadata: Mapping[str, str]) -> dict[str, Any]:
    try:
        meta = json.loads(metadata.get("lora_adapter_metadata") or "{}")
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _peft_alpha(meta: Mapping[str, Any], scope: str, module: str, rank: int) -> tuple[float, bool]:
    """(alpha, rsLoRA) of a PEFT module from diffusers' adapter metadata (PEFT's ``alpha_pattern`` matching)."""
    prefix = _META_PREFIX.get(scope, scope + ".")
    alpha = meta.get(prefix + "lora_alpha", rank)
    pattern = meta.get(prefix + "alpha_pattern") or {}
    if isinstance(pattern, dict):
        for pat, val in pattern.items():
            try:  # PEFT's matching; a pattern that is no regex is refused, never raised
                hit = len(str(pat)) <= 512 and re.match(rf"(.*\.)?({pat})$", module)
            except re.error:
                raise ValueError(f"alpha_pattern key {str(pat)[:60]!r} is not a pattern") from None
            if hit:
                alpha = val
                break
    if isinstance(alpha, bool) or not isinstance(alpha, int | float):
        raise ValueError(f"lora_alpha {str(alpha)[:60]!r} is not a number")
    rs = bool(meta.get(prefix + "use_rslora", False))
    if meta.get(prefix + "use_dora"):
        raise ValueError("DoRA is not supported yet (use_dora)")
    return float(alpha), rs


class _Names:
    """The checkpoint's canonical weights, found by a LoRA module name."""

    def __init__(self, index: Mapping[str, CanonRef], family: str):
        from sdlens.analysis.lora import unet_modules_of

        self.index = index
        self.family = family
        ldm = [name.split("/", 1)[1] for name in index if name.startswith("denoiser/")]
        self.unet = unet_modules_of(family, ldm)
        self.flat: dict[tuple[str, str], str] = {}  # (component, flattened module) -> canonical name
        for name in index:
            comp, _, rel = name.partition("/")
            if rel.endswith(".weight"):
                self.flat[(comp.split("@")[0], rel[: -len(".weight")].replace(".", "_"))] = name

    def component(self, scope: str) -> str | None:
        """The canonical component a LoRA scope targets: the denoiser, or the text encoder in the diffusers
        slot the scope names (``te1`` / ``text_encoder`` -> slot ``text_encoder``, ``te2`` ->
        ``text_encoder_2``: the SDXL refiner's one encoder sits there); kohya's bare ``te`` is the only one."""
        from sdlens.arch import families
        from sdlens.arch.identify import TE_SLOT

        if scope not in TE_SLOT:
            return "denoiser"
        fam = families.get(self.family)
        if fam is None:
            return None
        if scope == "te":  # kohya writes lora_te_ for one-encoder models only
            kinds = fam.text_encoder_kinds
            return kinds[0] if len(kinds) == 1 else None
        folder = _KOHYA_SLOT.get(scope, scope)
        return {slot: comp for comp, slot in fam.diffusers_slots.items()}.get(folder)

    def find(self, scope: str, module: str) -> str | None:
        comp = self.component(scope)
        if comp is None:
            return None
        flat = module.replace(".", "_")
        hit = self.flat.get((comp, flat))
        if hit is None and comp == "denoiser" and flat in self.unet:  # kohya SD1 / PEFT: diffusers spelling
            hit = self.flat.get((comp, self.unet[flat].replace(".", "_")))
        return hit


_KOHYA_SLOT = {"te1": "text_encoder", "te2": "text_encoder_2", "te3": "text_encoder_3"}


def _family_name(family: str) -> str:
    from sdlens.arch import families

    fam = families.get(family)
    return fam.name if fam else family


def _check_base_model(path: Path, metadata: Mapping[str, str], family: str) -> None:
    """Refuse a LoRA whose metadata names the base model of another family (records' ``lora_hints``)."""
    from sdlens.arch import families

    base = (metadata.get("ss_base_model_version") or "").lower()
    own = families.get(family)
    if not base or own is None or base == family or any(h in base for h in own.lora_hints):
        return  # no claim, an unknown checkpoint, or the checkpoint's own family (sdxl_refiner ⊃ sdxl)
    hints = [(len(h), f) for f in families.FAMILIES for h in f.lora_hints if h in base]
    hinted = max(hints, key=lambda x: x[0])[1] if hints else None
    if hinted is not None and hinted.id != family:
        raise SdlensError(
            path,
            f"--merge-lora: a LoRA for {hinted.name} (its metadata says {base!r}); "
            f"the checkpoint is {_family_name(family)}",
        )


def _lora_hint(lora: Checkpoint, family: str) -> str:
    from sdlens.analysis.lora import lora_family

    target = lora_family(lora)
    if target not in ("unknown", family):
        return f" (a LoRA for {_family_name(target)}; the checkpoint is {_family_name(family)})"
    return ""


def _pair(
    path: Path, stem: str, parts: Mapping[str, TensorInfo], lora: Checkpoint
) -> tuple[TensorInfo, TensorInfo]:
    """The (down, up) tensors of one module, checked: a plain LoRA pair of finite values."""
    import torch

    for role in parts:
        kind = next((v for k, v in _UNSUPPORTED.items() if role.startswith(k)), None)
        if kind:
            raise SdlensError(path, f"--merge-lora: {kind} is not supported yet ({stem}.{role})")
    down = next((parts[r] for r in _DOWN if r in parts), None)
    up = next((parts[r] for r in _UP if r in parts), None)
    if down is None or up is None:
        raise SdlensError(path, f"--merge-lora: module {stem} lacks its down or up weight")
    rank = down.shape[0] if down.shape else 0
    if (
        rank < 1
        or len(down.shape) < 2
        or len(up.shape) < 2
        or up.shape[1] != rank
        or any(d != 1 for d in up.shape[2:])
    ):
        raise SdlensError(
            path, f"--merge-lora: {stem}: down {list(down.shape)} and up {list(up.shape)} are no LoRA pair"
        )
    for info in (down, up):
        if not bool(torch.isfinite(lora.read(info.key)).all()):
            raise SdlensError(path, f"--merge-lora: {info.key} holds non-finite values (NaN / inf)")
    return down, up


def _scale(
    path: Path,
    stem: str,
    parts: Mapping[str, TensorInfo],
    lora: Checkpoint,
    convention: str,
    meta: Mapping[str, Any],
    scope: str,
    module: str,
    rank: int,
) -> tuple[float, float]:
    """(alpha, alpha / rank or alpha / sqrt(rank) for rsLoRA) of one module."""  # fmt: skip
    rs = False
    if "alpha" in parts:
        value = lora.read(parts["alpha"].key).reshape(-1)
        if value.numel() != 1:  # the loaders read it with .item()
            raise SdlensError(path, f"--merge-lora: {stem}.alpha holds {value.numel()} values, not one")
        alpha = float(value[0])
    elif convention == "kohya":
        alpha = float(rank)
    else:
        try:
            alpha, rs = _peft_alpha(meta, scope, module, rank)
        except ValueError as e:
            raise SdlensError(path, f"--merge-lora: lora_adapter_metadata: {e}") from None
    if not math.isfinite(alpha):
        raise SdlensError(path, f"--merge-lora: {stem}: alpha is not finite")
    return alpha, alpha / (math.sqrt(rank) if rs else rank)


def _plan_file(i: int, spec: LoraSpec, lora: Checkpoint, names: _Names) -> tuple[LoraFile, list[LoraTarget]]:
    from sdlens.arch.identify import is_lora, lora_modules

    path = spec.path
    if not is_lora(lora.tensors):
        raise SdlensError(path, "--merge-lora: not a LoRA file (no kohya / LyCORIS / PEFT LoRA keys)")
    modules, convention = lora_modules(lora.tensors)
    known = {info.key for parts in modules.values() for info in parts.values()}
    stray = [k for k in lora.tensors if k not in known]
    if stray:
        raise SdlensError(
            path,
            f"--merge-lora: {len(stray)} keys are no LoRA module part (e.g. {', '.join(stray[:3])}); refused",
        )
    _check_base_model(path, lora.metadata, names.family)
    meta = _peft_meta(lora.metadata)
    targets: list[LoraTarget] = []
    unmatched: list[str] = []
    seen: dict[str, str] = {}
    ranks: dict[int, int] = {}
    alphas: dict[str, int] = {}
    for (scope, module), parts in modules.items():
        stem = f"lora_{scope}_{module}" if convention == "kohya" else (f"{scope}." if scope else "") + module
        down, up = _pair(path, stem, parts, lora)
        rank = down.shape[0]
        alpha, scale = _scale(path, stem, parts, lora, convention, meta, scope, module, rank)
        ranks[rank] = ranks.get(rank, 0) + 1
        alphas[f"{alpha:g}"] = alphas.get(f"{alpha:g}", 0) + 1
        canon = names.find(scope, module)
        if canon is None:
            unmatched.append(stem)
            continue
        if canon in seen:
            raise SdlensError(path, f"--merge-lora: {seen[canon]} and {stem} both change {canon}")
        seen[canon] = stem
        ref = names.index[canon]
        if ref.rows and ref.rows[1] - ref.rows[0] != ref.shape[1 if ref.transpose else 0]:
            raise SdlensError(path, f"--merge-lora: {stem}: {canon} is stored in pieces; not supported yet")
        lora_shape = (up.shape[0], *down.shape[1:])
        if _squeezed(lora_shape) != _squeezed(tuple(ref.shape)):
            raise SdlensError(
                path,
                f"--merge-lora: {stem} makes a {list(lora_shape)} change but {canon} is {list(ref.shape)}"
                + _lora_hint(lora, names.family),
            )
        targets.append(
            LoraTarget(
                i, stem, down.key, up.key, spec.weight * scale, canon, ref.key, tuple(ref.shape), ref.rows,
                ref.transpose,
            )
        )  # fmt: skip
    if unmatched:
        raise SdlensError(
            path,
            f"--merge-lora: {len(unmatched)} of {len(modules)} LoRA modules match no tensor of the checkpoint "
            f"(e.g. {', '.join(unmatched[:3])})" + _lora_hint(lora, names.family),
        )
    info = LoraFile(
        str(path), path.name, _file_sha256(list(lora.files)), spec.weight, convention, len(modules),
        dict(sorted(ranks.items())), alphas,
    )  # fmt: skip
    return info, targets


def plan_loras(ckpt: Checkpoint, specs: list[LoraSpec]) -> LoraPlan:
    """Resolve every module of every LoRA onto ``ckpt``'s tensors; refuse (:class:`SdlensError` naming the LoRA
    file) what cannot be baked exactly: unmatched modules, shape mismatches, unsupported decompositions,
    non-finite values. Reads only the LoRA files' (small) tensors."""
    from sdlens.arch.canonical import canonical_index
    from sdlens.io.open import open_checkpoint

    index, family = canonical_index(ckpt.tensors, ckpt.configs)
    names = _Names(index, family)
    files: list[LoraFile] = []
    targets: dict[str, list[LoraTarget]] = {}
    for i, spec in enumerate(specs):
        if not spec.path.exists():
            raise SdlensError(spec.path, "--merge-lora: no such file")
        with open_checkpoint(spec.path) as lora:
            info, found = _plan_file(i, spec, lora, names)
        files.append(info)
        for t in found:
            targets.setdefault(t.key, []).append(t)
    return LoraPlan(files, targets)


# --------------------------------------------------------------------------- computing the deltas


def lora_delta(down: torch.Tensor, up: torch.Tensor, scale: float, shape: tuple[int, ...]) -> torch.Tensor:
    """scale · up @ down in float32, reshaped to ``shape`` (conv kernels flattened and back)."""
    rank = down.shape[0]
    d = up.float().reshape(up.shape[0], rank) @ down.float().reshape(rank, -1)
    return (d * scale).reshape(shape)


class LoraBaker:
    """Adds the planned ΔW to checkpoint tensors, one tensor at a time; holds only the LoRA files open."""

    def __init__(self, plan: LoraPlan):
        self.plan = plan
        self._open: dict[int, Checkpoint] = {}
        self._last: tuple[str, Any] | None = None

    def __contains__(self, key: str) -> bool:
        return key in self.plan.targets

    def _lora(self, i: int) -> Checkpoint:
        from sdlens.io.open import open_checkpoint

        if i not in self._open:
            self._open[i] = open_checkpoint(self.plan.files[i].path)
        return self._open[i]

    def delta(self, t: LoraTarget) -> torch.Tensor:
        ck = self._lora(t.lora)
        return lora_delta(ck.read(t.down), ck.read(t.up), t.scale, t.shape)

    def bake(self, key: str, base: torch.Tensor) -> torch.Tensor:
        """``base`` (the whole tensor stored under ``key``) as float32 with every planned ΔW added."""
        import torch

        if self._last is not None and self._last[0] == key:
            return self._last[1]
        out = base.to(torch.float32, copy=True)
        for t in self.plan.targets[key]:
            d = self.delta(t)
            if t.transpose:
                d = d.t()
            view = out[t.rows[0] : t.rows[1]] if t.rows else out
            view += d.reshape(view.shape)
        if not bool(torch.isfinite(out).all()) and bool(torch.isfinite(base).all()):
            names = ", ".join(sorted({self.plan.files[t.lora].name for t in self.plan.targets[key]}))
            raise SdlensError(
                self.plan.files[self.plan.targets[key][0].lora].path,
                f"--merge-lora: baking {names} into {key} overflows float32 (values become inf): "
                "the LoRA's weight or alpha is too large",
            )
        self._last = (key, out)
        return out

    def close(self) -> None:
        for ck in self._open.values():
            ck.close()
        self._open.clear()
        self._last = None

    def __enter__(self) -> LoraBaker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
