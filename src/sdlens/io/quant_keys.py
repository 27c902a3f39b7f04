"""Quantised weights stored as ordinary safetensors tensors, recognised from their companions' names.

- **Scaled fp8** (ComfyUI): ``<module>.weight`` in fp8 with a ``<module>.scale_weight`` (or, in ComfyUI's
  newer and other tools' layouts, ``<module>.weight_scale``) float scale, per tensor or per output row; value
  = fp8 × scale. ``<module>.scale_input`` / ``input_scale`` (activation scales) and ``<module>.comfy_quant``
  (the layer's format as JSON) belong to the weight too; a ``scaled_fp8`` tensor marks the whole file.
- **bitsandbytes 4-bit** (NF4 / FP4: Forge, diffusers, transformers): ``<module>.weight`` packed codes with
  ``.absmax``, ``.quant_map``, ``.nested_absmax``, ``.nested_quant_map`` and ``.quant_state.bitsandbytes__nf4``
  (JSON: the logical shape, dtype and block size) — see :mod:`sdlens.io.bnb4`.

``recognise`` replaces each such group by one logical tensor carrying a :class:`~sdlens.io.quant.Quant`;
the companions leave the tensor index (they are parts of their weight, not unknown keys).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from sdlens.errors import CheckpointError
from sdlens.io.base import TensorInfo
from sdlens.io.limits import short
from sdlens.io.quant import Quant

FP8 = ("F8_E4M3", "F8_E5M2")
SCALE_DTYPES = ("F32", "F16", "BF16")
# role -> the suffixes (after the module name) a scaled-fp8 weight's companions are stored under
FP8_PARTS = {
    "scale": ("scale_weight", "weight_scale"),
    "input_scale": ("scale_input", "input_scale"),
    "format": ("comfy_quant",),
}
BNB_STATE = ".quant_state.bitsandbytes__"  # in the key of a bitsandbytes 4-bit weight's JSON state
BNB_DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}  # a quant state's dtype -> ours
FP8_MARKER = "scaled_fp8"
MAX_FORMAT_BYTES = (
    4096  # a comfy_quant JSON tensor  # ComfyUI's file-wide marker (its dtype is the fp8 format used)
)


def candidates(tensors: dict[str, TensorInfo]) -> bool:
    """Whether the index may hold quantised weights at all (cheap: fp8 or uint8 tensors present)."""
    return any(t.dtype in FP8 or t.dtype == "U8" for t in tensors.values())


def recognise(
    src: str, tensors: dict[str, TensorInfo], raw: Callable[[TensorInfo], Any]
) -> tuple[dict[str, TensorInfo], dict[str, TensorInfo]]:
    """The index with quantised weights as logical tensors, and the file-wide markers taken out of it."""
    if not candidates(tensors):
        return tensors, {}
    out = dict(tensors)
    markers = {k: t for k, t in tensors.items() if k.rsplit(".", 1)[-1] == FP8_MARKER and t.numel <= 2}
    for k in markers:
        del out[k]
    for key, info in tensors.items():
        if info.dtype in FP8 and key.endswith(".weight"):
            _scaled_fp8(src, key, info, out)
    if any(BNB_STATE in k for k in out):
        from sdlens.io import bnb4

        try:
            found = bnb4.find_bnb4(out)
        except ValueError as e:
            raise CheckpointError(src, f"bitsandbytes weights: {e}") from None
        for key, parts in found.items():
            if key in out:  # a quant state without its weight stays as stored (an unknown key)
                _bnb4(src, key, parts, out, raw)
    return out, markers


def _scaled_fp8(src: str, key: str, info: TensorInfo, out: dict[str, TensorInfo]) -> None:
    module = key[: -len("weight")]
    parts: dict[str, TensorInfo] = {}
    for role, suffixes in FP8_PARTS.items():
        found = next((module + s for s in suffixes if module + s in out), None)
        if found is not None:
            parts[role] = out[found]
    scale = parts.get("scale")
    rows = info.shape[0] if info.shape else 1
    if scale is None or scale.dtype not in SCALE_DTYPES or scale.numel not in (1, rows) or info.numel == 0:
        return  # plain fp8 (or a scale sdlens cannot place): left as stored
    inp, fmt = parts.get("input_scale"), parts.get("format")
    if inp is not None and (inp.dtype not in SCALE_DTYPES or inp.numel > max(1, rows)):
        del parts["input_scale"]  # not an activation scale sdlens knows: left as stored
    if fmt is not None and (fmt.dtype != "U8" or fmt.nbytes > MAX_FORMAT_BYTES):
        del parts["format"]
    _check_unquantised(src, key, info, parts)
    for p in parts.values():
        del out[p.key]
    scheme = f"{info.dtype} scaled"
    decode = functools.partial(_decode_fp8, info, scale)
    detail = {"scale": "per tensor" if scale.numel == 1 else "per output row"}
    row = info.numel // rows
    quant = Quant(scheme, info, decode, parts, None, detail, unit=max(1, row))
    out[key] = TensorInfo(key, info.shape, "F32", src, info.offset, quant)


def _check_unquantised(src: str, key: str, info: TensorInfo, parts: dict[str, TensorInfo]) -> None:
    """Refuse a weight, or a companion, that an earlier recognition already made a quantised tensor (a
    crafted file can give one key both scaled-fp8 and bitsandbytes companions)."""
    for t in (info, *parts.values()):
        if isinstance(t.extra, Quant):
            raise CheckpointError(
                src, f"{short(key)}: {short(t.key)} is claimed by two quantisation schemes; refused"
            )


def _floats(raw: Callable[[TensorInfo], Any], info: TensorInfo):
    import numpy as np

    a = raw(info)
    if info.dtype == "BF16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32)


def _decode_fp8(
    weight: TensorInfo, scale: TensorInfo, raw: Callable[[TensorInfo], Any], start: int, stop: int
):
    """Elements ``start .. stop`` (whole rows from ``start``) of fp8 × scale in float32 (the scale per
    tensor or per output row)."""
    import torch

    from sdlens.io.dtypes import torch_dtype

    codes = torch.from_numpy(raw(weight)[start:stop].copy()).view(torch_dtype(weight.dtype)).float()
    s = torch.from_numpy(_floats(raw, scale))
    if s.numel() == 1:
        return (codes * s[0]).numpy()
    row = weight.numel // max(1, s.numel())
    rows = s[start // row : -(-stop // row)]
    return (codes.reshape(-1, row) * rows.reshape(-1, 1)).reshape(-1).numpy()


def _bnb4(src: str, key: str, roles: dict[str, str], out: dict[str, TensorInfo], raw) -> None:
    from sdlens.io import bnb4

    info = out[key]
    parts = {role: out[k] for role, k in roles.items() if k in out}
    state_info = parts.get("quant_state")
    if state_info is None or state_info.nbytes > bnb4.MAX_STATE_BYTES:
        return
    _check_unquantised(src, key, info, parts)
    kind = state_info.key.rsplit("__", 1)[-1]
    try:
        state = bnb4.parse_quant_state(bytes(raw(state_info)), kind)
        bnb4.check_parts(state, info, parts)
    except ValueError as e:
        raise CheckpointError(src, f"bitsandbytes weight {short(key)}: {e}") from None
    for p in parts.values():
        del out[p.key]
    decode = functools.partial(_decode_bnb4, info, parts, state)
    scheme = state.quant_type.upper()
    detail = {"blocksize": state.blocksize, "nested": state.nested, "dtype": BNB_DTYPES[state.dtype]}
    quant = Quant(scheme, info, decode, parts, state.blocksize, detail, unit=state.blocksize)
    out[key] = TensorInfo(key, tuple(state.shape), BNB_DTYPES[state.dtype], src, info.offset, quant)


def _decode_bnb4(weight: TensorInfo, parts: dict[str, TensorInfo], state: Any, raw, start: int, stop: int):
    """Elements ``start .. stop`` (whole blocks from ``start``) of a bitsandbytes 4-bit weight: its blocks'
    absmax (restored once, small) and the packed bytes of just those blocks, through :mod:`sdlens.io.bnb4`."""
    import dataclasses

    from sdlens.io import bnb4

    def get(role: str):
        p = parts.get(role)
        return None if p is None else (raw(p) if p.dtype == "U8" else _floats(raw, p))

    scales = bnb4.absmax_float32(get("absmax"), state, get("nested_absmax"), get("nested_quant_map"))
    bs = state.blocksize
    part = dataclasses.replace(
        state, shape=(stop - start,), nested=False, nested_blocksize=None, nested_offset=None
    )
    packed = raw(weight).reshape(-1).view("u1")[start // 2 : -(-stop // 2)]
    return bnb4.dequantise_4bit(packed, scales[start // bs : -(-stop // bs)], get("quant_map"), part).reshape(
        -1
    )
