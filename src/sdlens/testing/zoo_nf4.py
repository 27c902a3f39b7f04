"""Write bitsandbytes 4-bit (NF4 / FP4) safetensors files laid out as Forge's and diffusers' bnb-4bit saves.

Each chosen 2-D weight ``X.weight`` becomes the packed U8 ``[ceil(n/2), 1]`` tensor plus its companions
``X.weight.absmax``, ``.quant_map``, (nested) ``.nested_absmax`` / ``.nested_quant_map`` and
``.quant_state.bitsandbytes__nf4|fp4``: the keys ``Linear4bit._save_to_state_dict`` writes. Everything else
is written as is. bitsandbytes quantises when it is importable, else sdlens' numpy quantiser does.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sdlens.io import bnb4
from sdlens.testing.writers import save_safetensors

FLOAT_DTYPES = ("float16", "bfloat16", "float32")


@functools.cache
def have_bitsandbytes() -> bool:
    """Whether bitsandbytes imports (its first import costs seconds: it sets up torch.compile)."""
    try:
        import bitsandbytes.functional  # noqa: F401
    except Exception:  # an absent or broken build: use the numpy quantiser
        return False
    return True


def default_keys(state_dict: Mapping[str, Any]) -> list[str]:
    """The keys bnb-4bit loaders quantise by default: 2-D floating ``*.weight`` tensors (Linear weights)."""
    return [
        k
        for k, t in state_dict.items()
        if k.endswith(".weight") and t.dim() == 2 and str(t.dtype).removeprefix("torch.") in FLOAT_DTYPES
    ]


def _quantise_bnb(w, quant_type: str, blocksize: int, nested: bool) -> dict[str, Any]:
    import bitsandbytes.functional as bnbf

    packed, state = bnbf.quantize_4bit(
        w.contiguous(), blocksize=blocksize, compress_statistics=nested, quant_type=quant_type
    )
    parts = {"weight": packed}
    for k, v in state.as_dict(packed=True).items():
        parts[k] = v
    return parts


def _quantise_numpy(w, quant_type: str, blocksize: int, nested: bool) -> dict[str, Any]:
    import torch

    dtype = str(w.dtype).removeprefix("torch.")
    roles = bnb4.quantise_4bit_numpy(w.float().numpy(), quant_type, blocksize, nested, dtype=dtype)
    parts = {"weight": torch.from_numpy(roles.pop("weight"))}
    qs = roles.pop("quant_state")
    for role, arr in roles.items():
        parts[role] = torch.from_numpy(arr)
    parts[f"quant_state.bitsandbytes__{quant_type}"] = torch.from_numpy(qs)
    return parts


def _reference_values(parts: Mapping[str, Any], quant_type: str):
    """The float32 tensor the parts dequantise to: by bitsandbytes where importable, else by sdlens."""
    import torch

    if have_bitsandbytes():
        import bitsandbytes.functional as bnbf
        import torch._dynamo

        qs = {k: v for k, v in parts.items() if k != "weight"}
        state = bnbf.QuantState.from_dict(qs, device=torch.device("cpu"))
        # bitsandbytes 0.50.2's CPU kernel mis-decodes weights whose rows are shorter than the block size
        # (rows of 32, blocks of 64: errors of several absmax); its blocks run over the flat tensor, so the
        # same bytes are decoded as one row and reshaped (tests/test_bnb4.py checks both shapes)
        shape = tuple(state.shape)
        state.shape = torch.Size((1, math.prod(shape)))
        # eager: bitsandbytes would torch.compile its CPU fallback for odd shapes (seconds, same values)
        with torch._dynamo.config.patch(disable=True):
            return bnbf.dequantize_4bit(parts["weight"], state).float().reshape(shape)
    arrays = {k: v.numpy() for k, v in parts.items()}
    state = bnb4.parse_quant_state(arrays[f"quant_state.bitsandbytes__{quant_type}"], quant_type)
    values = bnb4.dequantise_parts(arrays, state)
    return torch.from_numpy(values)


def write_nf4(
    path: str | Path,
    state_dict: Mapping[str, Any],
    *,
    quant_type: str = "nf4",
    keys: Iterable[str] | None = None,
    blocksize: int = 64,
    nested: bool = False,
    backend: str = "auto",
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Write ``state_dict`` (torch tensors) with the ``keys`` (default: :func:`default_keys`) quantised to
    bnb-4bit; returns the truth: ``backend`` ("bitsandbytes" | "numpy"), ``quantised`` (weight key ->
    logical ``shape``, ``dtype``, ``quant_type``, ``blocksize``, ``nested``, ``companions`` role -> key,
    ``values``: the float32 tensor the file dequantises to, by bitsandbytes where it is importable),
    ``plain`` (the keys written as they are) and ``keys`` (every key in the file)."""
    if quant_type not in bnb4.QUANT_TYPES:
        raise ValueError(f"quant_type must be one of {bnb4.QUANT_TYPES}")
    if backend == "auto":
        backend = "bitsandbytes" if have_bitsandbytes() else "numpy"
    quantise = {"bitsandbytes": _quantise_bnb, "numpy": _quantise_numpy}[backend]
    chosen = list(keys) if keys is not None else default_keys(state_dict)
    missing = [k for k in chosen if k not in state_dict]
    if missing:
        raise KeyError(f"not in the state dict: {missing[:3]}")
    out: dict[str, Any] = {}
    quantised: dict[str, dict[str, Any]] = {}
    for key, tensor in state_dict.items():
        if key not in chosen:
            out[key] = tensor
            continue
        w = tensor.detach().cpu()
        if str(w.dtype).removeprefix("torch.") not in FLOAT_DTYPES:
            w = w.float()
        parts = quantise(w, quant_type, blocksize, nested)
        companions = {}
        for name, value in parts.items():
            full = key if name == "weight" else f"{key}.{name}"
            out[full] = value
            if name != "weight":
                companions["quant_state" if name.startswith("quant_state.") else name] = full
        values = _reference_values(parts, quant_type)
        quantised[key] = {
            "shape": tuple(w.shape),
            "dtype": str(w.dtype).removeprefix("torch."),
            "quant_type": quant_type,
            "blocksize": blocksize,
            "nested": nested,
            "companions": companions,
            "values": values,
        }
    save_safetensors(out, path, metadata=metadata)
    return {
        "path": Path(path),
        "backend": backend,
        "quantised": quantised,
        "plain": [k for k in state_dict if k not in quantised],
        "keys": sorted(out),
    }
