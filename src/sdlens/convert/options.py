"""The options of ``sdlens convert`` and the names they accept, checked before anything is read."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdlens.analysis.recorded_configs import CONFIGS_META  # noqa: F401  (the metadata key convert writes)
from sdlens.errors import SdlensError

DTYPE_CHOICES = {"fp16": "F16", "bf16": "BF16", "fp32": "F32", "keep": None}
EMA_CHOICES = ("keep", "drop", "use")
LAYOUTS = ("single", "diffusers")
EXTRAS_FILE = "sdlens_extras.safetensors"
PROVENANCE_META = "sdlens.provenance"

# --drop / --extract names -> components (split_components ids; "other" = keys no layout explains)
_TE = ("clip_l", "openclip_h", "clip_g", "t5", "text_encoder")
SELECTORS: dict[str, tuple[str, ...]] = {
    "unknown": ("other",),
    "ema": ("ema",),
    "schedule": ("schedule",),
    "markers": ("markers",),
    "vae": ("vae_encoder", "vae_decoder"),
    "vae_encoder": ("vae_encoder",),
    "vae_decoder": ("vae_decoder",),
    "te": _TE,
    "unet": ("denoiser",),
    "denoiser": ("denoiser",),
    "controlnet": ("controlnet",),
    **{k: (k,) for k in _TE},
}


@dataclass
class ConvertOptions:
    dtype: str = "keep"
    ema: str = "keep"
    drop: list[str] = field(default_factory=list)
    fix_position_ids: bool = False
    vae: Path | None = None
    extract: list[str] = field(default_factory=list)
    layout: str = "single"
    variant: str | None = None  # diffusers folders: read this variant's files (fp16 ...)
    merge_lora: list[str] = field(default_factory=list)  # LORA[:WEIGHT], baked in order

    def lora_specs(self) -> list[Any]:
        """The ``--merge-lora`` values as :class:`sdlens.analysis.lora_apply.LoraSpec`."""
        from sdlens.analysis.lora_apply import parse_merge_lora

        return [parse_merge_lora(v) for v in self.merge_lora]

    def validate(self) -> None:
        from sdlens.io.folders import check_variant

        check_variant(self.variant)
        self.lora_specs()
        if self.dtype not in DTYPE_CHOICES:
            raise SdlensError(None, f"--dtype must be one of {', '.join(DTYPE_CHOICES)} (got {self.dtype!r})")
        if self.ema not in EMA_CHOICES:
            raise SdlensError(None, f"--ema must be one of {', '.join(EMA_CHOICES)} (got {self.ema!r})")
        if self.layout not in LAYOUTS:
            raise SdlensError(None, f"--layout must be single or diffusers (got {self.layout!r})")
        for d in self.drop:
            if d not in SELECTORS and d != "position_ids" and not any(c in d for c in "*?[."):
                raise SdlensError(
                    None,
                    f"--drop {d!r}: not a component ({', '.join(SELECTORS)}, position_ids) "
                    "nor a key pattern (use a glob such as 'my_trainer.*')",
                )
        for x in self.extract:
            if x not in SELECTORS or x == "unknown":
                raise SdlensError(
                    None,
                    f"--extract {x!r}: expected one of {', '.join(k for k in SELECTORS if k != 'unknown')}",
                )

    def to_dict(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype,
            "ema": self.ema,
            "drop": list(self.drop),
            "fix_position_ids": self.fix_position_ids,
            "vae": str(self.vae) if self.vae else None,
            "extract": list(self.extract),
            "layout": self.layout,
            "variant": self.variant,
            "merge_lora": list(self.merge_lora),
        }
