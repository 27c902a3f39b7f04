"""LoRA-family files (kohya, LyCORIS LoCon/LoHa/LoKr/DoRA, diffusers/PEFT): network, ranks, alpha, targets."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any

from sdlens.arch import families
from sdlens.arch.detect import FamilyMatch
from sdlens.arch.identify import KOHYA, PEFT, TE_SLOT, identify, is_lora, lora_match, lora_modules, lora_rank
from sdlens.arch.layers import layer_type
from sdlens.io.base import Checkpoint, TensorInfo

__all__ = ["LoraInfo", "analyse_lora", "is_lora", "lora_family", "lora_index"]

_KOHYA_COMPONENT = {
    "unet": "denoiser",
    "te": "text encoder",
    "te1": "text encoder 1",
    "te2": "text encoder 2",
    "te3": "text encoder 3",
}
_PEFT_COMPONENT = {
    None: "denoiser",
    "unet": "denoiser",
    "transformer": "denoiser",
    "text_encoder": "text encoder",
    "text_encoder_2": "text encoder 2",
    "text_encoder_3": "text encoder 3",
}


@dataclass
class LoraInfo:
    network: str  # LoRA / LoCon / LoHa / LoKr / DoRA
    convention: str  # kohya | peft | diffusers
    modules: int
    ranks: dict[int, int]  # rank -> number of modules
    alphas: dict[str, int]  # alpha value -> number of modules
    arch: str  # the targeted family: a record id (sd1, sdxl, flux_dev, sd3, ...) or unknown
    arch_reasons: list[str]
    components: dict[str, int]  # targeted component -> modules
    layer_types: dict[str, int]  # attn1 / attn2 / ff / resnet/conv / ... -> modules
    conv_modules: int = 0
    examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ranks"] = {str(k): v for k, v in self.ranks.items()}
        return d


def analyse_lora(
    keys: Mapping[str, TensorInfo],
    metadata: Mapping[str, str],
    read_scalar: Callable[[str], float] | None = None,
    match: FamilyMatch | None = None,
) -> LoraInfo:
    """Describe a LoRA file from its keys and shapes (and the few scalar ``alpha`` tensors, via ``read_scalar``);
    ``match``: the family :func:`sdlens.arch.identify.identify` found (else it is read here)."""
    modules, convention = lora_modules(keys)

    ranks: Counter[int] = Counter()
    alphas: Counter[str] = Counter()
    comps: Counter[str] = Counter()
    ltypes: Counter[str] = Counter()
    conv = 0
    kinds: set[str] = set()
    for (scope, name), parts in modules.items():
        comp = (
            _KOHYA_COMPONENT.get(scope)
            if convention == "kohya"
            else _PEFT_COMPONENT.get(scope or None, scope)
        )
        comps[comp or scope] += 1
        ltypes[layer_type(name.replace("_", "."))] += 1
        rank, down = lora_rank(parts)
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
    network = "LoRA"
    for k in ("LoHa", "LoKr", "DoRA"):
        if k in kinds:
            network = k
    if network == "LoRA" and conv:
        network = "LoCon"
    match = match or lora_match(modules, metadata)
    return LoraInfo(
        network=network,
        convention=convention,
        modules=len(modules),
        ranks=dict(sorted(ranks.items())),
        alphas=dict(alphas.most_common()),
        arch=match.family,
        arch_reasons=list(match.reasons),
        components=dict(comps.most_common()),
        layer_types=dict(ltypes.most_common()),
        conv_modules=conv,
        examples=[f"{s}:{n}" if s else n for s, n in list(modules)[:3]],
    )


# --------------------------------------------------------------------------- alignment of two LoRA files

# the tensor roles of each convention, as one canonical suffix (alpha is a scalar per module, compared apart)
_ROLE = {
    "lora_down.weight": "lora_down.weight",
    "lora_A.weight": "lora_down.weight",
    "lora.down.weight": "lora_down.weight",
    "lora_up.weight": "lora_up.weight",
    "lora_B.weight": "lora_up.weight",
    "lora.up.weight": "lora_up.weight",
    "lora_magnitude_vector": "dora_scale",
}


@cache
def _unet_modules(family: str) -> dict[str, str]:
    """kohya-style (``_``-joined) name of each UNet module, diffusers and LDM spellings -> the dotted LDM
    module, for the released UNet of ``family`` (empty when the family has no UNet config)."""
    from sdlens.arch.keymap import unet_key_map

    fam = families.get(family)
    if fam is None or fam.denoiser is None or fam.denoiser.keymap != "unet":
        return {}
    return _module_names(unet_key_map(dict(fam.denoiser.config)).items())


def unet_modules_of(family: str, ldm_keys: list[str]) -> dict[str, str]:
    """As :func:`_unet_modules`, for the UNet keys a checkpoint holds (LDM names, no prefix): each renamed
    with the family's key map alone, so no model is built (building SD1's on the meta device takes seconds)."""
    from sdlens.arch.keymap import unet_ldm_key_to_diffusers

    fam = families.get(family)
    if fam is None or fam.denoiser is None or fam.denoiser.keymap != "unet":
        return {}
    config = dict(fam.denoiser.config)
    pairs = []
    for key in ldm_keys:
        try:
            pairs.append((unet_ldm_key_to_diffusers(key, config), key))
        except KeyError:  # a key the released layout lacks: only its LDM spelling resolves
            pairs.append((key, key))
    return _module_names(pairs)


def _module_names(pairs) -> dict[str, str]:
    out: dict[str, str] = {}
    for diff_key, ldm_key in pairs:
        d, ldm = diff_key.rsplit(".", 1)[0], ldm_key.rsplit(".", 1)[0]
        out[d.replace(".", "_")] = out[ldm.replace(".", "_")] = ldm
    return out


def _component(scope: str, family: str) -> str:
    """The canonical component a LoRA scope targets: ``denoiser`` or the family's text-encoder kind."""
    if scope not in TE_SLOT:
        return "denoiser"
    fam = families.get(family)
    slot = TE_SLOT[scope]
    kinds = fam.text_encoder_kinds if fam else ()
    return kinds[slot] if slot < len(kinds) else f"text_encoder_{slot + 1}"


def lora_family(ckpt: Checkpoint) -> str:
    """The family id a LoRA file targets, from its shapes and metadata (``unknown`` if not told)."""
    return identify(ckpt.tensors, metadata=ckpt.metadata).family


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
        m = KOHYA.match(key) or PEFT.match(key)
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
    return (
        {
            k[: -len(".lora_alpha")]: float(v)
            for k, v in meta.items()
            if k.endswith(".lora_alpha") and isinstance(v, int | float)
        }
        if isinstance(meta, dict)
        else {}
    )
