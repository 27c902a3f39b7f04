"""LoRA-family files (kohya, LyCORIS LoCon/LoHa/LoKr/DoRA, diffusers/PEFT): network, ranks, alpha, targets."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any

from sdlens.arch.layers import layer_type
from sdlens.io.base import Checkpoint, TensorInfo

# module-name suffix -> role of the tensor
_KOHYA = re.compile(r"^lora_(unet|te\d?)_(.+?)\.(lora_down\.weight|lora_up\.weight|lora_mid\.weight|alpha|dora_scale|"
                    r"hada_w[12]_[ab]|hada_t[12]|lokr_w[12](?:_[ab])?|lokr_t2|diff|diff_b|bias_indices|bias_values)$")
_PEFT = re.compile(r"^(?:(unet|transformer|text_encoder|text_encoder_2|text_encoder_3)\.)?(.+?)\."
                   r"(lora_A\.weight|lora_B\.weight|lora_magnitude_vector|lora\.down\.weight|lora\.up\.weight|alpha)$")

_KOHYA_COMPONENT = {"unet": "denoiser", "te": "text encoder", "te1": "text encoder 1", "te2": "text encoder 2",
                    "te3": "text encoder 3"}
_PEFT_COMPONENT = {None: "denoiser", "unet": "denoiser", "transformer": "denoiser", "text_encoder": "text encoder",
                   "text_encoder_2": "text encoder 2", "text_encoder_3": "text encoder 3"}

# context widths of cross-attention (attn2 to_k input) -> architecture
_CONTEXT_ARCH = {768: "sd1", 1024: "sd2", 2048: "sdxl", 1280: "sdxl_refiner"}
_BASE_MODEL_HINTS = (("sdxl", "sdxl"), ("sd_v2", "sd2"), ("sd_v1", "sd1"), ("flux", "flux"), ("sd3", "sd3"))


@dataclass
class LoraInfo:
    network: str  # LoRA / LoCon / LoHa / LoKr / DoRA
    convention: str  # kohya | peft | diffusers
    modules: int
    ranks: dict[int, int]  # rank -> number of modules
    alphas: dict[str, int]  # alpha value -> number of modules
    arch: str  # sd1 / sd2 / sdxl / flux / sd3 / unknown
    arch_reasons: list[str]
    components: dict[str, int]  # targeted component -> modules
    layer_types: dict[str, int]  # attn1 / attn2 / ff / resnet/conv / ... -> modules
    conv_modules: int = 0
    examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ranks"] = {str(k): v for k, v in self.ranks.items()}
        return d


def is_lora(keys: Mapping[str, TensorInfo]) -> bool:
    """More than half the keys follow a LoRA naming scheme."""
    hits = sum(1 for k in keys if _KOHYA.match(k) or _PEFT.match(k))
    return hits > 0 and hits * 2 >= len(keys)


def analyse_lora(
    keys: Mapping[str, TensorInfo],
    metadata: Mapping[str, str],
    read_scalar: Callable[[str], float] | None = None,
) -> LoraInfo:
    """Describe a LoRA file from its keys and shapes (and the few scalar ``alpha`` tensors, via ``read_scalar``)."""
    modules: dict[tuple[str, str], dict[str, TensorInfo]] = {}
    convention = "kohya"
    for k, info in keys.items():
        m = _KOHYA.match(k)
        if m:
            modules.setdefault((m.group(1), m.group(2)), {})[m.group(3)] = info
            continue
        m = _PEFT.match(k)
        if m:
            convention = "diffusers" if ".lora.down." in k or ".lora.up." in k else "peft"
            modules.setdefault((m.group(1) or "", m.group(2)), {})[m.group(3)] = info

    ranks: Counter[int] = Counter()
    alphas: Counter[str] = Counter()
    comps: Counter[str] = Counter()
    ltypes: Counter[str] = Counter()
    conv = 0
    kinds: set[str] = set()
    context_widths: Counter[int] = Counter()
    for (scope, name), parts in modules.items():
        comp = _KOHYA_COMPONENT.get(scope) if convention == "kohya" else _PEFT_COMPONENT.get(scope or None, scope)
        comps[comp or scope] += 1
        ltypes[layer_type(name.replace("_", "."))] += 1
        rank, down = _rank(parts)
        if rank:
            ranks[rank] += 1
        if down is not None and len(down.shape) == 4 and tuple(down.shape[2:]) != (1, 1):
            conv += 1  # a 3x3 (or larger) conv: LoCon; 1x1 convs (SD1 proj_in) are plain LoRA
        if "hada_w1_a" in parts:
            kinds.add("LoHa")
        if any(p.startswith("lokr") for p in parts):
            kinds.add("LoKr")
        if "dora_scale" in parts or "lora_magnitude_vector" in parts:
            kinds.add("DoRA")
        if "alpha" in parts and read_scalar is not None:
            a = read_scalar(parts["alpha"].key)
            alphas[f"{a:g}"] += 1
        elif rank and "alpha" not in parts:
            alphas[f"{rank:g} (default = rank)"] += 1
        if down is not None and re.search(r"attn2[._]to_k$", name):
            context_widths[down.shape[1]] += 1
    network = "LoRA"
    for k in ("LoHa", "LoKr", "DoRA"):
        if k in kinds:
            network = k
    if network == "LoRA" and conv:
        network = "LoCon"
    arch, reasons = _arch(modules, context_widths, metadata)
    return LoraInfo(
        network=network,
        convention=convention,
        modules=len(modules),
        ranks=dict(sorted(ranks.items())),
        alphas=dict(alphas.most_common()),
        arch=arch,
        arch_reasons=reasons,
        components=dict(comps.most_common()),
        layer_types=dict(ltypes.most_common()),
        conv_modules=conv,
        examples=[f"{s}:{n}" if s else n for s, n in list(modules)[:3]],
    )


def _rank(parts: dict[str, TensorInfo]) -> tuple[int | None, TensorInfo | None]:
    """(rank, the down-projection tensor) for whichever decomposition the module uses."""
    for name in ("lora_down.weight", "lora_A.weight", "lora.down.weight"):
        if name in parts:
            return parts[name].shape[0], parts[name]
    if "hada_w1_b" in parts:
        return parts["hada_w1_b"].shape[0], None
    if "lokr_w2_a" in parts:
        return parts["lokr_w2_a"].shape[1], None
    return None, None


def _arch(modules: dict[tuple[str, str], dict[str, TensorInfo]], context_widths: Counter[int], metadata: Mapping[str, str]) -> tuple[str, list[str]]:
    names = " ".join(n for _, n in modules)
    scopes = {s for s, _ in modules}
    reasons: list[str] = []
    arch = "unknown"
    if re.search(r"(double_blocks|single_blocks|single_transformer_blocks)", names):
        arch = "flux"
        reasons.append("targets FLUX double/single-stream blocks")
    elif re.search(r"joint_blocks|transformer_blocks[._]\d+[._]attn[._]add_q_proj", names):
        arch = "sd3"
        reasons.append("targets MMDiT joint blocks")
    elif context_widths:
        width = context_widths.most_common(1)[0][0]
        arch = _CONTEXT_ARCH.get(width, "unknown")
        reasons.append(f"cross-attention to_k input width {width}")
    elif scopes & {"te1", "te2", "text_encoder_2"}:
        arch = "sdxl"
        reasons.append("two text encoders (te1/te2)")
    base = (metadata.get("ss_base_model_version") or metadata.get("modelspec.architecture") or "").lower()
    for hint, fam in _BASE_MODEL_HINTS:
        if hint in base:
            reasons.append(f"metadata says {base!r}")
            if arch == "unknown":
                arch = fam
            elif not arch.startswith(fam) and not fam.startswith(arch):
                reasons.append(f"(metadata disagrees with the shapes: {fam})")
            break
    return arch, reasons


# --------------------------------------------------------------------------- alignment of two LoRA files

# the tensor roles of each convention, as one canonical suffix (alpha is a scalar per module, compared apart)
_ROLE = {"lora_down.weight": "lora_down.weight", "lora_A.weight": "lora_down.weight",
         "lora.down.weight": "lora_down.weight", "lora_up.weight": "lora_up.weight",
         "lora_B.weight": "lora_up.weight", "lora.up.weight": "lora_up.weight",
         "lora_magnitude_vector": "dora_scale"}
# a scope's text-encoder slot (0: the first text encoder of the family)
_TE_SLOT = {"te": 0, "te1": 0, "text_encoder": 0, "te2": 1, "text_encoder_2": 1, "te3": 2, "text_encoder_3": 2}


@cache
def _unet_modules(family: str) -> dict[str, str]:
    """kohya-style (``_``-joined) name of each UNet module, diffusers and LDM spellings -> the dotted LDM
    module, for the released UNet of ``family`` (empty when the family has no UNet config)."""
    from sdlens.arch import registry as R
    from sdlens.arch.keymap import unet_key_map

    fam = R.FAMILY_BY_ID.get(family)
    if fam is None or fam.denoiser is None or fam.denoiser.keymap != "unet":
        return {}
    out: dict[str, str] = {}
    for diff_key, ldm_key in unet_key_map(dict(fam.denoiser.config)).items():
        d, ldm = diff_key.rsplit(".", 1)[0], ldm_key.rsplit(".", 1)[0]
        out[d.replace(".", "_")] = out[ldm.replace(".", "_")] = ldm
    return out


def _component(scope: str, family: str) -> str:
    """The canonical component a LoRA scope targets: ``denoiser`` or the family's text-encoder kind."""
    from sdlens.arch import registry as R

    if scope not in _TE_SLOT:
        return "denoiser"
    fam = R.FAMILY_BY_ID.get(family)
    slot = _TE_SLOT[scope]
    kinds = fam.text_encoder_kinds if fam else ()
    return kinds[slot] if slot < len(kinds) else f"text_encoder_{slot + 1}"


def lora_family(ckpt: Checkpoint) -> str:
    """The registry family a LoRA file targets, from its shapes and metadata (``unknown`` if not told)."""
    from sdlens.arch import registry as R

    arch = analyse_lora(ckpt.tensors, ckpt.metadata).arch
    arch = "flux_dev" if arch == "flux" else arch
    return arch if arch in R.FAMILY_BY_ID else "unknown"


def lora_index(ckpt: Checkpoint, family: str | None = None) -> tuple[dict[str, Any], str, dict[str, float]]:
    """(canonical name -> CanonRef, family id, module -> alpha) of a LoRA file, so two LoRAs in different
    conventions (kohya ``lora_unet_…_lora_down.weight`` vs PEFT ``unet.….lora_A.weight``) compare target
    module by target module. UNet targets are named by their LDM module (kohya's diffusers or LDM spelling
    and PEFT's diffusers path all resolve to it), text-encoder targets by their ``_``-joined module path;
    roles down / up / DoRA magnitude share one suffix. Alphas come from the ``alpha`` tensors, else from
    PEFT's ``lora_adapter_metadata`` (``<prefix>.lora_alpha``), else equal the rank (kohya's and diffusers'
    default). ``family`` overrides the family read from the file (when that one is not told)."""
    from sdlens.arch.canonical import CanonRef

    tensors: Mapping[str, TensorInfo] = ckpt.tensors
    family = family or lora_family(ckpt)
    unet = _unet_modules(family)
    meta_alpha = _peft_alphas(ckpt.metadata)
    out: dict[str, Any] = {}
    ranks: dict[str, int] = {}
    alpha_keys: dict[str, str] = {}
    scopes: dict[str, str] = {}
    for key, t in tensors.items():
        m = _KOHYA.match(key) or _PEFT.match(key)
        if not m:
            continue
        scope, name, role = m.group(1) or "", m.group(2), m.group(3)
        comp = _component(scope, family)
        flat = name.replace(".", "_")
        module = f"{comp}/{unet.get(flat, flat) if comp == 'denoiser' else flat}"
        scopes[module] = scope
        if role == "alpha":
            alpha_keys[module] = key
            continue
        role = _ROLE.get(role, role)
        if role == "lora_down.weight":
            ranks[module] = t.shape[0]
        out[f"{module}.{role}"] = CanonRef(key, t.shape)
    alphas: dict[str, float] = {}
    for module, rank in ranks.items():
        if module in alpha_keys:
            alphas[module] = float(ckpt.read_numpy(alpha_keys[module]).reshape(-1)[0])
        else:
            alphas[module] = meta_alpha.get(scopes[module] or "unet", float(rank))
    return out, family, alphas


def _peft_alphas(metadata: Mapping[str, str]) -> dict[str, float]:
    """PEFT / diffusers adapter metadata: scope prefix -> lora_alpha."""
    import json

    try:
        meta = json.loads(metadata.get("lora_adapter_metadata") or "{}")
    except ValueError:
        return {}
    return {k[: -len(".lora_alpha")]: float(v) for k, v in meta.items()
            if k.endswith(".lora_alpha") and isinstance(v, int | float)} if isinstance(meta, dict) else {}
