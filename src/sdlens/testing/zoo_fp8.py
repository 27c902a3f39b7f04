"""fp8 test files: ComfyUI "scaled fp8", ComfyUI's mixed-precision ``comfy_quant`` form, and plain fp8 casts.

What ComfyUI reads (comfyanonymous/ComfyUI ``comfy/model_detection.py`` ``model_config_from_unet``,
``comfy/utils.py`` ``convert_old_quants``, ``comfy/ops.py`` ``scaled_fp8_ops``):

- **scaled fp8** (legacy): a marker tensor ``<prefix>scaled_fp8`` whose *dtype* is the weights' fp8 type
  (float32 there means float8_e4m3fn; 2 elements mean ``full_precision_matrix_mult``; the released files hold
  an empty one). Each Linear weight ``<layer>.weight`` is fp8 with ``<layer>.scale_weight``, a float32
  scalar (shape ``()``): the weight is fp8 × scale_weight. ``<layer>.scale_input`` (float32 scalar) is
  optional (activation scale for fp8 matmuls; 1.0 means none). Biases, norms and the rest stay 16-bit.
- **comfy_quant** (current): ``<layer>.weight`` fp8, ``<layer>.weight_scale`` (float32 scalar),
  optional ``<layer>.input_scale``, and the layer's format as ``<layer>.comfy_quant``: a uint8 tensor holding
  the UTF-8 JSON ``{"format": "float8_e4m3fn"}`` — or, instead of those tensors, the safetensors metadata key
  ``_quantization_metadata`` = JSON ``{"layers": {"<layer>": {"format": ...}}}``. ComfyUI converts the legacy
  form into this one (scale_weight -> weight_scale, scale_input -> input_scale).
- **plain fp8**: tensors simply cast to float8_e4m3fn / float8_e5m2, no scales (e.g. the fp8 FLUX releases).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdlens.io.dtypes import st_name
from sdlens.testing.writers import save_safetensors

FP8 = {"e4m3fn": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
ST_NAME = {"e4m3fn": "F8_E4M3", "e5m2": "F8_E5M2"}
COMFY_FORMAT = {"e4m3fn": "float8_e4m3fn", "e5m2": "float8_e5m2"}

Select = Callable[[str, torch.Tensor], bool]


def linear_weight(key: str, t: torch.Tensor) -> bool:
    """The tensors ComfyUI's fp8 ops scale: Linear weights (2-D ``*.weight``)."""
    return key.endswith(".weight") and t.dim() == 2 and t.is_floating_point()


def _scaled(t: torch.Tensor, fp8: str, per_tensor_scale: bool) -> tuple[torch.Tensor, float]:
    dt = FP8[fp8]
    w = t.detach().to(torch.float32)
    scale = float(w.abs().max()) / torch.finfo(dt).max if per_tensor_scale else 1.0
    scale = scale or 1.0
    scale = float(torch.tensor(scale, dtype=torch.float32))  # the float32 value the file holds
    return (w / scale).to(dt), scale


@dataclass
class Fp8Truth:
    """What a written fp8 file holds. ``scales``: weight key -> the scale its fp8 values multiply by;
    ``companions``: the non-weight keys the scheme added (marker, scales, comfy_quant); ``kept``: key ->
    safetensors dtype of the tensors left unquantised."""

    scheme: str  # scaled_fp8 | comfy_quant | fp8
    fp8: str  # F8_E4M3 | F8_E5M2
    scales: dict[str, float]
    companions: tuple[str, ...]
    kept: dict[str, str]
    input_scales: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)


def _put_scaled(
    out: dict[str, torch.Tensor],
    scales: dict[str, float],
    companions: list[str],
    key: str,
    t: torch.Tensor,
    fp8: str,
    per_tensor_scale: bool,
    scale_name: str,
) -> str:
    """``key``'s weight as fp8 into ``out`` with its float32 scale ``<layer>.<scale_name>``; returns the layer."""
    q, s = _scaled(t, fp8, per_tensor_scale)
    layer = key[: -len(".weight")]
    out[key] = q
    out[f"{layer}.{scale_name}"] = torch.tensor(s, dtype=torch.float32)
    scales[key] = s
    companions.append(f"{layer}.{scale_name}")
    return layer


def _kept(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    if dtype is not None and t.is_floating_point():
        return t.to(dtype)
    return t


def _st(dt: torch.dtype) -> str:
    return st_name(dt)


def write_scaled_fp8(
    path: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    *,
    marker_key: str = "scaled_fp8",
    per_tensor_scale: bool = True,
    fp8: str = "e4m3fn",
    scale_input: float | None = None,
    keep_dtype: torch.dtype | None = torch.bfloat16,
    select: Select = linear_weight,
) -> Fp8Truth:
    """A ComfyUI scaled-fp8 file: selected weights fp8 with a float32 ``scale_weight`` scalar (amax / fp8 max,
    or 1.0 without ``per_tensor_scale``), the empty ``marker_key`` tensor first, ``scale_input`` scalars when
    given, the rest cast to ``keep_dtype``."""
    out: dict[str, torch.Tensor] = {marker_key: torch.empty(0, dtype=FP8[fp8])}
    scales: dict[str, float] = {}
    inputs: dict[str, float] = {}
    kept: dict[str, str] = {}
    companions = [marker_key]
    for key, t in state_dict.items():
        if select(key, t):
            layer = _put_scaled(out, scales, companions, key, t, fp8, per_tensor_scale, "scale_weight")
            if scale_input is not None:
                out[f"{layer}.scale_input"] = torch.tensor(scale_input, dtype=torch.float32)
                inputs[key] = scale_input
                companions.append(f"{layer}.scale_input")
        else:
            out[key] = _kept(t, keep_dtype)
            kept[key] = _st(out[key].dtype)
    save_safetensors(out, path)
    return Fp8Truth("scaled_fp8", ST_NAME[fp8], scales, tuple(companions), kept, inputs)


def write_comfy_quant_fp8(
    path: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    *,
    in_metadata: bool = False,
    fp8: str = "e4m3fn",
    keep_dtype: torch.dtype | None = torch.bfloat16,
    select: Select = linear_weight,
) -> Fp8Truth:
    """ComfyUI's mixed-precision form: ``weight`` fp8 + ``weight_scale`` (float32 scalar) per layer, the
    format in ``<layer>.comfy_quant`` uint8 JSON tensors, or in ``_quantization_metadata`` when ``in_metadata``."""
    out: dict[str, torch.Tensor] = {}
    scales: dict[str, float] = {}
    kept: dict[str, str] = {}
    layers: dict[str, dict[str, Any]] = {}
    companions: list[str] = []
    for key, t in state_dict.items():
        if select(key, t):
            layer = _put_scaled(out, scales, companions, key, t, fp8, True, "weight_scale")
            layers[layer] = {"format": COMFY_FORMAT[fp8]}
            if not in_metadata:
                blob = json.dumps(layers[layer]).encode("utf-8")
                out[f"{layer}.comfy_quant"] = torch.tensor(list(blob), dtype=torch.uint8)
                companions.append(f"{layer}.comfy_quant")
        else:
            out[key] = _kept(t, keep_dtype)
            kept[key] = _st(out[key].dtype)
    meta = {"_quantization_metadata": json.dumps({"layers": layers})} if in_metadata else {}
    save_safetensors(out, path, metadata=meta or None)
    return Fp8Truth("comfy_quant", ST_NAME[fp8], scales, tuple(companions), kept, metadata=meta)


def write_plain_fp8(
    path: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    *,
    fp8: str = "e4m3fn",
    keep_dtype: torch.dtype | None = torch.bfloat16,
    select: Select = linear_weight,
) -> Fp8Truth:
    """Selected weights cast to fp8 (no scale: the scale is 1), the rest to ``keep_dtype``."""
    out: dict[str, torch.Tensor] = {}
    scales: dict[str, float] = {}
    kept: dict[str, str] = {}
    for key, t in state_dict.items():
        if select(key, t):
            out[key] = t.to(FP8[fp8])
            scales[key] = 1.0
        else:
            out[key] = _kept(t, keep_dtype)
            kept[key] = _st(out[key].dtype)
    save_safetensors(out, path)
    return Fp8Truth("fp8", ST_NAME[fp8], scales, (), kept)


@dataclass
class Fp8Entry:
    name: str
    path: Path
    family: str
    source: Path
    truth: Fp8Truth


def build_fp8_zoo(folder: str | Path) -> list[Fp8Entry]:
    """Scaled-fp8 (with and without ``scale_input``), comfy_quant (tensor and metadata forms) and plain fp8
    (E4M3, E5M2) copies of the quantisation zoo's FLUX-dev (bf16 source) and SD3 (fp16 source) denoisers."""
    from sdlens.testing.zoo_gguf import quant_denoiser

    folder = Path(folder)
    entries: list[Fp8Entry] = []
    for family, stem, dtype in (
        ("flux_dev", "flux1-dev", torch.bfloat16),
        ("sd3", "sd3_medium", torch.float16),
    ):
        sd = quant_denoiser(family, dtype=dtype)
        source = save_safetensors(sd, folder / f"{stem}.safetensors")
        plan: list[tuple[str, Callable[[Path], Fp8Truth]]] = [
            ("fp8_scaled", lambda p, sd=sd, dt=dtype: write_scaled_fp8(p, sd, keep_dtype=dt)),
            ("fp8_e4m3fn", lambda p, sd=sd, dt=dtype: write_plain_fp8(p, sd, keep_dtype=dt)),
            ("comfy_quant", lambda p, sd=sd, dt=dtype: write_comfy_quant_fp8(p, sd, keep_dtype=dt)),
        ]
        if family == "flux_dev":
            plan += [
                ("fp8_scaled_input", lambda p, sd=sd: write_scaled_fp8(p, sd, scale_input=1.0)),
                ("fp8_e5m2", lambda p, sd=sd: write_plain_fp8(p, sd, fp8="e5m2")),
            ]
        else:
            plan.append(
                (
                    "comfy_quant_meta",
                    lambda p, sd=sd, dt=dtype: write_comfy_quant_fp8(p, sd, in_metadata=True, keep_dtype=dt),
                )
            )
        for tag, write in plan:
            path = folder / f"{stem}-{tag}.safetensors"
            entries.append(Fp8Entry(path.name, path, family, source, write(path)))
    return entries
