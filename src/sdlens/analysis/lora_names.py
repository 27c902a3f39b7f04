"""The LoRA module a canonical weight is written as: which weights are LoRA targets, and their names in the
kohya layout (``lora_unet_…`` / ``lora_te…_``) and the PEFT / diffusers layout (``unet.….lora_A.weight``).

Canonical names (:mod:`sdlens.arch.canonical`) are ``denoiser/<LDM key>`` for UNets, ``denoiser/<diffusers
key>`` for DiTs and ``<kind>/<transformers key>`` for text encoders. kohya names a UNet module by its
diffusers path (SD1 / SD2: kohya trains the diffusers UNet) or by its LDM / sgm path (SDXL); which one is the
record's ``Denoiser.kohya_names``, and a family without one has no kohya layout here. PEFT names every
module by its diffusers / transformers path under the pipeline's slot (``unet``, ``transformer``,
``text_encoder``, ``text_encoder_2``: the record's ``diffusers_slots``).

Targets are kohya's: in a UNet the Transformer2DModel modules (attention projections, feed-forward,
``proj_in`` / ``proj_out``) always, the ResNet / down- / up-sampler modules only as LoCon (``conv``); in a
text encoder the attention and MLP projections; in a DiT every linear of the denoiser but its embeddings.
Norms, biases, embeddings, the VAE and the UNet's ``conv_in`` / ``conv_out`` / time embeddings are not.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sdlens.arch import families
from sdlens.arch.record import Family
from sdlens.errors import SdlensError
from sdlens.io.base import Checkpoint

LINEAR, CONV = "linear", "conv"  # a target always extracted; one extracted only as LoCon (--conv-rank)

# (regex on the key inside its component, kind), by the denoiser's key map ("unet"; anything else: a DiT)
_UNET_TARGETS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(
            r"^(input_blocks\.\d+\.1|middle_block\.1|output_blocks\.\d+\.1)\.(proj_in|proj_out|transformer_blocks"
            r"\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2)))\.weight$"
        ),
        LINEAR,
    ),
    (
        re.compile(
            r"^((input_blocks\.\d+\.0|middle_block\.[02]|output_blocks\.\d+\.0)\.(in_layers\.2|out_layers\.3|"
            r"emb_layers\.1|skip_connection)|input_blocks\.\d+\.0\.op|output_blocks\.\d+\.[12]\.conv)\.weight$"
        ),
        CONV,
    ),
)
_DIT_SKIP = re.compile(r"(^|\.)(pos_embed|[a-z_]*embedding|norm[a-z_0-9]*)(\.|$)|\[")
_TEXT_TARGETS = re.compile(
    r"(\.self_attn\.(q|k|v|out)_proj|\.mlp\.fc[12]|\.SelfAttention\.[qkvo]|\.EncDecAttention\.[qkvo]|"
    r"\.DenseReluDense\.(wi|wi_0|wi_1|wo))\.weight$"
)


def target_kind(name: str, shape: tuple[int, ...], family: Family | None) -> str | None:
    """``linear`` / ``conv`` for a LoRA target (by its canonical name and shape), None for anything else."""
    if len(shape) not in (2, 4) or not name.endswith(".weight"):
        return None
    comp, _, key = name.partition("/")
    if comp == "denoiser":
        den = family.denoiser if family else None
        if den is not None and den.keymap == "unet":
            return next((kind for rx, kind in _UNET_TARGETS if rx.match(key)), None)
        return LINEAR if len(shape) == 2 and not _DIT_SKIP.search(key) else None
    if family is not None and comp.split("@")[0] in family.text_encoder_kinds:
        return LINEAR if len(shape) == 2 and _TEXT_TARGETS.search(key) else None
    return None


@dataclass(frozen=True)
class LoraNames:
    """How one family's modules are named in a LoRA file (built by :func:`lora_names`)."""

    family: Family
    unet_config: Mapping[str, Any] | None  # the model's UNet config: LDM -> diffusers module paths

    @property
    def has_kohya(self) -> bool:
        return bool(self.family.denoiser and self.family.denoiser.kohya_names)

    def _module(self, name: str, spelling: str) -> tuple[str, str]:
        """(component, module path) of a canonical weight; ``spelling`` ``diffusers`` or ``ldm`` for UNets."""
        comp, _, key = name.partition("/")
        if comp == "denoiser" and self.unet_config is not None and spelling == "diffusers":
            from sdlens.arch.keymap import unet_ldm_key_to_diffusers

            key = unet_ldm_key_to_diffusers(key, self.unet_config)
        return comp, key.removesuffix(".weight")

    def _slot(self, comp: str) -> str:
        slots = self.family.diffusers_slots
        return slots.get(comp.split("@")[0]) or ("unet" if comp == "denoiser" else comp)

    def peft(self, name: str) -> str:
        """``unet.down_blocks.0.attentions.0.proj_in``: the PEFT / diffusers module (keys add ``.lora_A.weight``)."""
        comp, module = self._module(name, "diffusers")
        return f"{self._slot(comp)}.{module}"

    def kohya(self, name: str) -> str:
        """``lora_unet_down_blocks_0_attentions_0_proj_in``, ``lora_te1_text_model_…``: the kohya module."""
        den = self.family.denoiser
        if den is None or not den.kohya_names:
            raise SdlensError(None, f"{self.family.name} has no kohya LoRA layout here; use --format peft")
        comp, module = self._module(name, den.kohya_names)
        if comp == "denoiser":
            scope = "unet"
        else:
            slot = self._slot(comp)  # text_encoder / text_encoder_2: kohya te / te1 / te2
            n = int(slot.rsplit("_", 1)[1]) if slot[-1].isdigit() else 1
            scope = "te" if len(self.family.text_encoders) == 1 and n == 1 else f"te{n}"
        return f"lora_{scope}_{module.replace('.', '_')}"


# wrappers some library versions have and others flatten away (transformers >= 5 dropped CLIPTextModel's
# ``text_model``): PEFT's target_modules / rank_pattern name modules without them, so they match either way
_WRAPPERS = ("text_model.",)


def peft_config_name(module: str) -> str:
    """A module path (inside its pipeline slot) as a LoraConfig's target_modules / rank_pattern name it:
    without the wrappers some versions flatten, so it matches as a suffix in either version."""
    for w in _WRAPPERS:
        module = module.removeprefix(w)
    return module


def _unet_config(ckpt: Checkpoint, family: Family) -> dict[str, Any] | None:
    """The model's UNet config: its folder's ``unet/config.json``, else read off its shapes, else the record's."""
    den = family.denoiser
    if den is None or den.keymap != "unet":
        return None
    cfg = ckpt.configs.get("unet")
    if isinstance(cfg, dict) and cfg.get("down_block_types"):
        return {k: v for k, v in cfg.items() if not k.startswith("_")}
    if den.config_from_shapes is not None:
        from sdlens.arch.identify import identify

        comp = identify(ckpt.tensors, ckpt.configs).split.components.get("denoiser")
        if comp is not None:
            try:
                return {**den.config, **den.config_from_shapes(comp.keys)}
            except (KeyError, IndexError, ValueError):
                pass
    return dict(den.config)


def lora_names(ckpt: Checkpoint, family: str) -> LoraNames:
    """The LoRA naming of the model ``ckpt`` (family id ``family``)."""
    fam = families.get(family)
    if fam is None:
        raise SdlensError(ckpt.path, f"unknown architecture ({family}): cannot name its LoRA modules")
    return LoraNames(fam, _unet_config(ckpt, fam))
