"""Models with no weights: diffusers / transformers classes built on the meta device, and the inputs the
pipelines hand them (as the diffusers pipelines build them), so a meta-device forward can be traced op by op.

By default nothing here allocates real memory for weights or activations: every tensor lives on
``torch.device("meta")``. ``build_denoiser(..., device=...)`` and ``denoiser_inputs(..., device=...)`` build the
same model with random weights and the same inputs with random values on a real device (``arch --measure``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch

from sdlens.arch import configs as C
from sdlens.arch import families
from sdlens.errors import SdlensError

META = torch.device("meta")
DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class ArchSpec:
    """One denoiser to measure: its class and config, and what the pipeline around it uses."""

    key: str  # the record id (sdlens.arch.families) whose pipeline goes with the denoiser
    name: str
    family: str  # record id (merge-block rules, layout)
    cls_name: str
    config: dict[str, Any] = field(hash=False)
    text_encoders: tuple[tuple[str, int], ...] = ()  # (TEXT_ENCODERS kind, tokens per prompt)
    vae: str = "kl_f8_c4"
    text_tokens: int = 77  # tokens of the text sequence the denoiser attends to
    cfg: bool = True  # whether the pipeline runs classifier-free guidance by default
    source: str = "released config"
    steps: int = 30  # the pipeline's default number of steps
    res: tuple[int, int] = (1024, 1024)  # native (width, height)
    notes: tuple[str, ...] = ()
    reference_params: int | None = None  # the parameter count the build must match (a checkpoint's own)

    @property
    def is_unet(self) -> bool:
        return self.cls_name == "UNet2DConditionModel"


def resolve_alias(name: str) -> str | None:
    """The family id of a released pipeline from any name users type (``flux``, ``sd15``, ``SDXL base``)."""
    fam = families.get(families.resolve(name))
    return fam.id if fam is not None and fam.pipeline is not None else None


def measured_models() -> tuple[str, ...]:
    """The ids of the released pipelines ``sdlens arch`` lists by default (``pipeline.measured``), in record order."""
    return tuple(f.id for f in families.all_families() if f.pipeline is not None and f.pipeline.measured)


def released_spec(key: str, *, tokens: int | None = None) -> ArchSpec:
    """The spec of a released model (``sd1`` … ``flux_dev``, aliases accepted)."""
    fam = families.get(resolve_alias(key))
    if fam is None or fam.pipeline is None or fam.denoiser is None:
        raise SdlensError(
            None,
            f"unknown model {key!r}: use one of {', '.join(measured_models())}, a config.json or "
            "a checkpoint",
        )
    p = fam.pipeline
    spec = ArchSpec(
        fam.id,
        p.name,
        fam.id,
        fam.denoiser.cls_name,
        dict(fam.denoiser.config),
        tuple((t.kind, t.tokens) for t in fam.text_encoders),
        fam.vae,
        p.text_tokens,
        p.cfg,
        steps=p.steps,
        res=tuple(p.res),
    )
    return with_tokens(spec, tokens)


def with_tokens(spec: ArchSpec, tokens: int | None) -> ArchSpec:
    """Override the length of the (longest) text sequence: the T5 one, or CLIP's for CLIP-only pipelines."""
    if tokens is None:
        return spec
    if tokens < 1:
        raise SdlensError(None, "--tokens must be at least 1")
    tes = list(spec.text_encoders)
    if not tes or spec.cls_name == "HunyuanDiT2DModel":
        raise SdlensError(None, f"--tokens: {spec.name}'s text lengths are fixed by its config")
    i = max(range(len(tes)), key=lambda j: tes[j][1])
    extra = spec.text_tokens - tes[i][1]  # e.g. SD3's 77 CLIP tokens in front of the T5 ones
    tes[i] = (tes[i][0], tokens)
    return dataclasses.replace(spec, text_encoders=tuple(tes), text_tokens=tokens + extra)


# --------------------------------------------------------------------------- building on the meta device


@contextlib.contextmanager
def _quiet():
    """diffusers / transformers log warnings for configs they think odd; nothing for users here."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # diffusers imports bitsandbytes where it is installed, which logs its own optional-kernel notices
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import diffusers  # noqa: F401  (imported first: importing it resets its loggers' levels)
    import transformers  # noqa: F401

    names = ("diffusers", "transformers")
    old = [logging.getLogger(n).level for n in names]
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():  # e.g. diffusers' deprecation notices inside its own classes
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for n, lvl in zip(names, old, strict=True):
            logging.getLogger(n).setLevel(lvl)


def diffusers_class(name: str) -> Any:
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None:
        raise SdlensError(None, f"diffusers has no class {name!r}")
    return cls


def build_denoiser(
    cls_name: str,
    config: dict[str, Any],
    dtype: torch.dtype = torch.float16,
    *,
    device: torch.device | str = META,
) -> torch.nn.Module:
    """The denoiser of ``config``: on meta (shapes only; the default), or with the class's own random
    initialisation on a real ``device``, created there directly in ``dtype`` (no full-precision copy first)."""
    device = torch.device(device)
    with _quiet():
        cls = diffusers_class(cls_name)
        cfg = {k: v for k, v in config.items() if not k.startswith("_")}
        with torch.device(device), _default_dtype(dtype if device.type != "meta" else None):
            try:
                model = cls(**cfg)
            except (TypeError, ValueError, KeyError, AttributeError) as e:
                raise SdlensError(None, f"cannot build {cls_name} from this config: {e}") from None
        _attention_sdpa(model)
        if device.type == "meta":
            return model.to(dtype).eval()
        return model.to(device=device, dtype=dtype).eval()  # a buffer made on the CPU (numpy) moves too


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype | None):
    """Parameters created in ``dtype`` (None: unchanged): a real build never holds an fp32 copy of fp16 weights."""
    old = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _attention_sdpa(model: torch.nn.Module) -> None:
    """Every diffusers attention through ``F.scaled_dot_product_attention`` (the default processors already are)."""
    with contextlib.suppress(Exception):
        from diffusers.models.attention_processor import AttnProcessor2_0

        for m in model.modules():
            proc = getattr(m, "processor", None)
            if proc is not None and type(proc).__name__ == "AttnProcessor":
                m.set_processor(AttnProcessor2_0())


def build_text_encoder(kind: str, dtype: torch.dtype = torch.float16) -> torch.nn.Module:
    import transformers

    cls_name, cfg = {**C.TEXT_ENCODERS, **C.OTHER_TEXT_ENCODERS}[kind]
    with _quiet():
        cls = getattr(transformers, cls_name)
        config = cls.config_class(**cfg)
        with contextlib.suppress(Exception):
            config._attn_implementation = "sdpa"
        with torch.device(META):
            model = cls(config)
        return model.to(dtype).eval()


def build_vae(kind: str, dtype: torch.dtype = torch.float16) -> torch.nn.Module:
    with _quiet():
        cls = diffusers_class("AutoencoderKL")
        with torch.device(META):
            model = cls(**C.VAES[kind])
        _attention_sdpa(model)
        return model.to(dtype).eval()


def count_params(model: torch.nn.Module) -> int:
    """Unique parameters (a tied weight counted once), as diffusers' ``num_parameters()``."""
    seen: set[int] = set()
    n = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


@lru_cache(maxsize=16)
def text_encoder_params(kind: str) -> int:
    return count_params(build_text_encoder(kind, torch.float32))


@lru_cache(maxsize=4)
def vae_params(kind: str) -> tuple[int, int, int]:
    """(total, encoder side, decoder side) parameters of a VAE; quant_conv counts to the encoder side."""
    vae = build_vae(kind, torch.float32)
    total = count_params(vae)
    dec = sum(p.numel() for n, p in vae.named_parameters() if n.startswith(("decoder.", "post_quant_conv.")))
    return total, total - dec, dec


# --------------------------------------------------------------------------- inputs


def latent_size(spec: ArchSpec, width: int, height: int) -> tuple[int, int]:
    """Latent height and width; checks the image size against what the denoiser can take."""
    if width <= 0 or height <= 0:
        raise SdlensError(None, "--res must be positive, e.g. 1024x1024")
    multiple = (
        8 * unet_downsampling(spec.config) if spec.is_unet else 8 * int(spec.config.get("patch_size", 2) or 1)
    )
    if spec.cls_name == "FluxTransformer2DModel":
        multiple = 16  # 2×2 packing of the latents
    if width % multiple or height % multiple:
        raise SdlensError(
            None, f"--res {width}x{height}: {spec.name} needs both sides to be multiples of {multiple}"
        )
    limit = spec.config.get("pos_embed_max_size") if spec.cls_name == "SD3Transformer2DModel" else None
    if limit and max(width, height) > limit * 8 * spec.config.get("patch_size", 2):
        raise SdlensError(
            None,
            f"--res {width}x{height}: {spec.name}'s positional embedding covers at most "
            f"{limit * 8 * spec.config.get('patch_size', 2)} pixels a side",
        )
    return height // 8, width // 8


def unet_downsampling(config: dict[str, Any]) -> int:
    levels = len(config.get("block_out_channels", [320, 640, 1280, 1280]))
    return 2 ** (levels - 1)


# the denoiser classes whose forward inputs denoiser_inputs builds (as their diffusers pipelines do)
TRACEABLE = (
    "UNet2DConditionModel",
    "SD3Transformer2DModel",
    "FluxTransformer2DModel",
    "AuraFlowTransformer2DModel",
    "HunyuanDiT2DModel",
)


def denoiser_inputs(
    spec: ArchSpec,
    model: torch.nn.Module,
    batch: int,
    width: int,
    height: int,
    dtype: torch.dtype,
    *,
    device: torch.device | str = META,
    seed: int = 0,
) -> dict[str, Any]:
    """Keyword arguments of one denoiser forward, as the pipeline passes them: shapes only on meta (the
    default); on a real ``device``, values of the right kind (normal latents and text states, timestep 500 (0.5 where the pipeline divides by 1000),
    masks of ones, style 0, sizes of the image), drawn from ``seed``."""
    h, w = latent_size(spec, width, height)
    cfg = model.config
    B, L = batch, spec.text_tokens
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    fills = {
        "time": 500.0,
        "time01": 0.5,
        "guidance": 3.5,
        "one": 1,
        "zero": 0,
        "size": float(max(width, height)),
    }

    def t(*shape: int, dt: torch.dtype = dtype, fill: str = "normal") -> torch.Tensor:
        if device.type == "meta":
            return torch.empty(*shape, device=META, dtype=dt)
        if fill == "normal":  # drawn on the CPU (the same values on every device), then moved
            return torch.randn(*shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dt)
        return torch.full(shape, fills[fill], device=device, dtype=dt)

    if spec.is_unet:
        kw: dict[str, Any] = {
            "sample": t(B, cfg.in_channels, h, w),
            "timestep": t(B, dt=torch.float32, fill="time"),
            "encoder_hidden_states": t(B, L, cfg.cross_attention_dim),
        }
        if cfg.addition_embed_type == "text_time":
            fam = families.get(
                spec.family
            )  # SDXL: sizes and crop (6 values); the refiner: 5, with aesthetics
            n_time = fam.denoiser.time_ids if fam is not None and fam.denoiser is not None else 6
            pooled = cfg.projection_class_embeddings_input_dim - n_time * cfg.addition_time_embed_dim
            kw["added_cond_kwargs"] = {"text_embeds": t(B, pooled), "time_ids": t(B, n_time, fill="size")}
        return kw
    if spec.cls_name == "SD3Transformer2DModel":
        return {
            "hidden_states": t(B, cfg.in_channels, h, w),
            "encoder_hidden_states": t(B, L, cfg.joint_attention_dim),
            "pooled_projections": t(B, cfg.pooled_projection_dim),
            "timestep": t(B, dt=torch.float32, fill="time"),
        }
    if spec.cls_name == "FluxTransformer2DModel":
        n = (h // 2) * (w // 2)
        kw = {
            "hidden_states": t(B, n, cfg.in_channels),
            "encoder_hidden_states": t(B, L, cfg.joint_attention_dim),
            "pooled_projections": t(B, cfg.pooled_projection_dim),
            "timestep": t(B, dt=torch.float32, fill="time01"),
            "img_ids": t(n, 3, dt=torch.float32, fill="zero"),
            "txt_ids": t(L, 3, dt=torch.float32, fill="zero"),
        }
        if cfg.guidance_embeds:
            kw["guidance"] = t(B, dt=torch.float32, fill="guidance")
        return kw
    if spec.cls_name == "AuraFlowTransformer2DModel":
        return {
            "hidden_states": t(B, cfg.in_channels, h, w),
            "encoder_hidden_states": t(B, L, cfg.joint_attention_dim),
            "timestep": t(B, dt=torch.float32, fill="time01"),
        }
    if spec.cls_name == "HunyuanDiT2DModel":
        p = cfg.patch_size
        head_dim = cfg.attention_head_dim
        n = (h // p) * (w // p)
        return {
            "hidden_states": t(B, cfg.in_channels, h, w),
            "timestep": t(B, fill="time"),  # in the latents' dtype, as its pipeline passes it
            "encoder_hidden_states": t(B, cfg.text_len, cfg.cross_attention_dim),
            "text_embedding_mask": t(B, cfg.text_len, dt=torch.long, fill="one"),
            "encoder_hidden_states_t5": t(B, cfg.text_len_t5, cfg.cross_attention_dim_t5),
            "text_embedding_mask_t5": t(B, cfg.text_len_t5, dt=torch.long, fill="one"),
            "image_meta_size": t(B, 6, fill="size"),
            "style": t(B, dt=torch.long, fill="zero"),
            "image_rotary_emb": (t(n, head_dim), t(n, head_dim)),
        }
    raise SdlensError(None, f"no input recipe for {spec.cls_name}")


def text_encoder_inputs(kind: str, batch: int, tokens: int) -> dict[str, Any]:
    return {"input_ids": torch.empty(batch, tokens, device=META, dtype=torch.long)}


def clip_chunks(kind: str, tokens: int) -> tuple[int, int]:
    """(chunks, tokens per chunk): CLIP encoders take 77 positions; longer prompts run in chunks of 77."""
    cls_name, cfg = {**C.TEXT_ENCODERS, **C.OTHER_TEXT_ENCODERS}[kind]
    limit = cfg.get("max_position_embeddings")
    if cls_name.startswith("CLIP") and limit and tokens > limit:
        return math.ceil(tokens / limit), limit
    return 1, tokens
