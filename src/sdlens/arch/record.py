"""The shape of one architecture record: everything sdlens knows about a model family, in one place.

A record (``Family``) is pure data plus small functions of its own: the denoiser config derived from a file's
shapes (``Denoiser.config_from_shapes``), the test telling its diffusers config from its neighbours'
(``Denoiser.matches_config``) and derived detection features. The records themselves live in ``sdlens.arch.families`` (one module per architecture); every command
looks facts up there through ``sdlens.arch.families.get`` / ``all_families``. See docs/adding-a-family.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Feature:
    """A fact read off a component's (relative) keys and shapes.

    ``op``: ``present`` (some key matches), ``dim`` (shape[arg] of the first match), ``ndim``,
    ``count`` (distinct values of the regex's first group), ``keys`` (number of matching keys), ``marker``
    (some top-level marker key of the file matches, e.g. ``edm_mean``: read off the whole file, not the
    component).
    ``text`` is how a reason names it ("hidden width = 3072").
    """

    name: str
    op: str
    pattern: str
    arg: int = 0
    text: str = ""


@dataclass(frozen=True)
class Variant:
    """A variant told by one feature's value (e.g. 9 input channels -> inpainting)."""

    feature: str
    value: Any
    name: str


@dataclass(frozen=True)
class TextEncoderSlot:
    """One text encoder of the pipeline: its kind (``sdlens.arch.configs`` TEXT_ENCODERS / OTHER_TEXT_ENCODERS
    key), the tokens per prompt the pipeline feeds it, and the hidden state it conditions on."""

    kind: str
    tokens: int = 77
    layer: str = "last"  # last | penultimate


@dataclass(frozen=True)
class Denoiser:
    """The denoiser as diffusers builds it: class, released config (values that differ from the class
    defaults), the released parameter count and where that count comes from."""

    cls_name: str
    config: Mapping[str, Any] = field(default_factory=dict, hash=False)
    params: int | None = None  # num_parameters() of the released weights
    params_source: str = ""
    label: str = "UNet"  # how reports name it: UNet, MMDiT, DiT, ...
    # relative keys -> diffusers config, for files whose widths or depths differ from the release
    config_from_shapes: Callable[[Mapping[str, Any]], dict[str, Any]] | None = field(
        default=None, hash=False, compare=False
    )
    keymap: str | None = None  # the key map (sdlens.arch.keymap) between its original and diffusers layouts
    # which records a diffusers config.json of ``cls_name`` belongs to: the first record (in detection order)
    # with a pipeline whose predicate holds (None: any config of the class) is the one measured
    matches_config: Callable[[Mapping[str, Any]], bool] | None = field(
        default=None, hash=False, compare=False
    )
    time_ids: int = (
        6  # text_time UNets: micro-conditioning values (SDXL: sizes and crop; refiner: 5 with aesthetics)
    )
    # the module names kohya-style LoRA files (``lora_unet_…``) use for this denoiser: ``diffusers`` (SD1/SD2:
    # kohya trains the diffusers UNet), ``ldm`` (SDXL: kohya's sgm UNet); "" = none (write PEFT instead)
    kohya_names: str = ""


@dataclass(frozen=True)
class Blocks:
    """Merge blocks: rules on the denoiser's canonical key (LDM names for UNets, diffusers names for DiTs: see
    ``sdlens.arch.canonical``; rules may match both layouts), first match wins; a template gets
    the regex's first group as an int, ``TIME`` is the switchable time-embedding placement, ``OUT{last}`` the
    last output block. ``layout`` is the display order: (name prefix, count), count None -> the bare name."""

    rules: tuple[tuple[str, str], ...] = ()
    layout: tuple[tuple[str, int | None], ...] = ()
    last_out: int = 11
    mbw: int | None = None  # "MBW layers" as the community (and the original notebook) counts them
    original_keys: Mapping[str, str] = field(default_factory=dict, hash=False)  # block head -> original keys


@dataclass(frozen=True)
class Pipeline:
    """The released pipeline around the denoiser (what ``sdlens arch`` measures and ``schedule`` expects)."""

    name: str
    aliases: tuple[str, ...] = ()
    text_tokens: int = 77  # tokens of the text sequence the denoiser attends to
    cfg: bool = True  # classifier-free guidance by default
    steps: int = 50
    res: tuple[int, int] = (1024, 1024)
    scheduler: str = ""  # diffusers scheduler class of the released folder
    prediction: str = "epsilon"  # epsilon | v_prediction | flow | edm
    diffusers_class: str = ""  # the diffusers pipeline class
    measured: bool = True  # one of the pipelines ``sdlens arch`` lists by default
    # the released scheduler_config.json's values beyond sdlens.arch.schedulers.SCHEDULERS' for its class
    scheduler_config: Mapping[str, Any] = field(default_factory=dict, hash=False)
    # "linspace": the pipeline hands set_timesteps σ = linspace(1, 1/N, N) (FluxPipeline), "" = its own spacing
    sigmas: str = ""


@dataclass(frozen=True)
class PredictionProbe:
    """How a file tells a family's epsilon release from its v-prediction one (one structure, two targets):
    ``epsilon_steps`` (a pickle's ``global_step`` -> the epsilon release it marks), else the spread of one
    small tensor (``key``, a full key of the single-file layout): std above ``v_std`` means v-prediction, read
    only when the denoiser's input channels (dim 1 of ``in_channels_key``) are ``in_channels`` (ComfyUI: its
    inpainting release is not v-prediction). ``modelspec_ids``: the ModelSpec ``modelspec.architecture`` ids
    that name one release of this family -> its prediction type."""

    epsilon_steps: Mapping[int, str] = field(default_factory=dict, hash=False)
    key: str = ""
    v_std: float = 0.09
    in_channels_key: str = ""
    in_channels: int | None = None  # None: any
    modelspec_ids: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Loader:
    """How one kind of file (``sdlens.arch.loaders.LOAD_KINDS``) is loaded, where a family departs from what
    ``sdlens.analysis.loading`` derives: every field left "" is derived (from the record and the generic tables
    of ``sdlens.arch.loaders``); "unknown" says sdlens does not know, rather than guessing."""

    diffusers: str = ""  # the loading call
    comfy: str = ""  # the ComfyUI node class ("" = the kind's usual node)
    folder: str = ""  # the ComfyUI folder under ComfyUI/
    a1111: str = ""  # AUTOMATIC1111 support, in words
    forge: str = ""  # Forge support, in words
    note: str = ""


@dataclass(frozen=True)
class Loading:
    """How the tools people run load this family's files (what ``inspect`` says under "How to load").

    Facts per family only; the loader per kind of file and the companion files a file lacks are derived
    by ``sdlens.analysis.loading`` from these, the record's text encoders / VAE / diffusers slots and the
    generic tables of ``sdlens.arch.loaders``. ``None`` = unknown."""

    comfy: bool | None = True  # ComfyUI (core) runs the architecture
    comfy_checkpoint: bool | None = True  # Load Checkpoint takes a single file that bundles the parts
    comfy_gguf: bool | None = None  # ComfyUI-GGUF's Unet Loader (GGUF) knows the architecture
    comfy_clip_type: str = ""  # the ``type`` of CLIPLoader / DualCLIPLoader for its text encoders
    a1111: str = "no"  # AUTOMATIC1111 support of the architecture, in words
    forge: str = "no"  # Forge support (lllyasviel/stable-diffusion-webui-forge), in words
    vae: str = ""  # the VAE file people pair it with ("" = named from the record's ``vae`` key)
    vae_comfy: str = ""  # its ComfyUI loader(s), where not Load VAE (Stable Cascade: stage B + stage A)
    vae_folder: str = ""
    optional: tuple[str, ...] = ()  # components (diffusers-slot ids) that are not needed to generate
    # departures per kind of file (LOAD_KINDS keys) or per origin of quantised weights ("bitsandbytes")
    kinds: Mapping[str, Loader] = field(default_factory=dict, hash=False)
    notes: str = ""


@dataclass(frozen=True)
class Family:
    """One architecture (or a variant of one that users name apart, e.g. FLUX.1-dev / -schnell).

    Detection: ``features`` this record introduces (evaluated with everyone's), ``derived`` features computed
    from them, ``requires`` (feature -> value or (op, value), op in ne/ge/le/in) that must all hold, and
    ``standard`` values of the released model (others -> "non-standard widths").
    """

    id: str
    name: str
    requires: Mapping[str, Any] = field(hash=False)
    standard: Mapping[str, Any] = field(default_factory=dict, hash=False)
    features: tuple[Feature, ...] = ()
    derived: Mapping[str, Callable[[dict[str, Any]], Any]] = field(
        default_factory=dict, hash=False, compare=False
    )
    feature_text: Mapping[str, str] = field(
        default_factory=dict, hash=False
    )  # how reasons name derived features
    variants: tuple[Variant, ...] = ()
    denoiser: Denoiser | None = None
    text_encoders: tuple[TextEncoderSlot, ...] = ()
    vae: str = "kl_f8_c4"  # sdlens.arch.configs VAES key
    latent_channels: int = 4
    vae_scaling_factor: float | None = (
        None  # the released VAE's scaling_factor where it is not the class default
    )
    blocks: Blocks = Blocks()
    pipeline: Pipeline | None = None
    # where each component sits in the single-file (original) layout and in a diffusers folder
    single_file: Mapping[str, str] = field(default_factory=dict, hash=False)  # component -> key prefix
    diffusers_slots: Mapping[str, str] = field(default_factory=dict, hash=False)  # component -> folder slot
    # the family this one refines with the same denoiser and text encoders (Playground v2.5 -> sdxl): where a
    # file cannot tell them apart (text encoders only, a bare diffusers unet), it is reported as the base
    base: str | None = None
    # a bare file (no component prefix) is this family's denoiser when one of its keys matches a regex here:
    # (regex, key convention). Checked before the generic signatures of sdlens.arch.registry.BARE_SIGNATURES.
    bare_keys: tuple[tuple[str, str], ...] = ()
    lora_hints: tuple[str, ...] = ()  # substrings of a LoRA's ss_base_model_version naming this family
    lora_targets: str = ""  # regex on a LoRA's module names (any convention) that only this denoiser has
    prediction_probe: PredictionProbe | None = (
        None  # epsilon vs v-prediction, where the structure cannot tell
    )
    notebook: tuple[int, float, float, int, float] | None = None  # the original notebook's numbers (§7)
    notes: str = ""
    loading: Loading | None = None  # how tools load its files (None: sdlens cannot tell)

    @property
    def text_encoder_kinds(self) -> tuple[str, ...]:
        return tuple(t.kind for t in self.text_encoders)

    @property
    def denoiser_label(self) -> str:
        return self.denoiser.label if self.denoiser else "denoiser"
