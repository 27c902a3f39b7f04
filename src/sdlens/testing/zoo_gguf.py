"""GGUF test files laid out as ComfyUI-GGUF lays out diffusion models, with the truth of each tensor.

What ComfyUI-GGUF does (city96/ComfyUI-GGUF: ``tools/convert.py`` writes an F16/BF16 GGUF from a safetensors
denoiser; ``tools/lcpp.patch`` teaches llama.cpp's ``llama-quantize`` the image archs; ``loader.py`` reads):

- Keys are the denoiser's original keys (BFL / LDM / SAI), the ``model.diffusion_model.`` (or ``model.``)
  prefix stripped; only the denoiser is kept. ``general.architecture`` is the arch name (``IMG_ARCH_LIST``
  of loader.py: flux, sd1, sdxl, sd3, aura, hidream, cosmos, ltxv, hyvid, wan, lumina2, qwen_image),
  plus ``general.quantization_version`` (2) and ``general.file_type`` (a ``LlamaFileType``).
- Stage 1 (convert.py): F16 (BF16 when the source is bf16); for float32 / bf16 sources, 1-D tensors, tensors
  of at most ``QUANTIZATION_THRESHOLD`` = 1024 elements and the arch's ``keys_hiprec`` stay F32. For sd1 /
  sdxl (``shape_fix``) a tensor of ≥ ``REARRANGE_THRESHOLD`` = 512 elements, > 1-D, whose element count is a
  multiple of 256 but whose last dim is not, is stored as ``(n / 256, 256)`` with its true shape in
  ``comfy.gguf.orig_shape.<key>`` (an INT32 array; loader.py refuses any other type). Tensors of more than
  4 dims (Wan / HunyuanVideo 3-D conv) are added back as F32 with all their dims (``fix_5d_tensors.py``).
- Stage 2 (llama-quantize with lcpp.patch): only 2-D tensors whose name ends in ``weight`` and that are not
  on the arch's keep list (:data:`KEEP_HIGH_PRECISION`) take the quant type; a K-quant on a row length
  (``ne[0]``, the last numpy dim) that is not a multiple of 256 falls back to F16, and so does a legacy
  Q*_0 / Q*_1 type on a row that is not a multiple of 32 here. Everything else keeps its stage-1 type.

GGUF stores dims reversed (``ne``): numpy shape ``[rows, cols]`` is ``ne = [cols, rows]``; ``GGUFWriter``
reverses for us, and ``GGUFReader`` reports ``ReaderTensor.shape`` as ``ne``.

Quant types: F32, F16, BF16, Q8_0, Q5_1, Q5_0, Q4_1, Q4_0 through ``gguf.quants.quantize``; Q2_K, Q3_K, Q4_K,
Q5_K, Q6_K through the hand-built blocks of :mod:`sdlens.testing.kquant`. The pure types are written (every
quantised tensor gets the one type); llama.cpp's _S / _M mixes can be had by passing ``qtype`` a function.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdlens.testing.kquant import K_TYPES, quantize_k

# sdlens family id -> ComfyUI-GGUF arch name (general.architecture)
FAMILY_ARCH = {
    "flux_dev": "flux",
    "flux_schnell": "flux",
    "sd1": "sd1",
    "sdxl": "sdxl",
    "sd3": "sd3",
    "sd35m": "sd3",
    "sd35": "sd3",
    "auraflow": "aura",
    "hidream_i1": "hidream",
    "ltx_video": "ltxv",
    "wan21_t2v_1_3b": "wan",
    "wan21_t2v_14b": "wan",
    "wan21_i2v_14b": "wan",
    "lumina2": "lumina2",
}
QUANTIZATION_THRESHOLD = 1024
REARRANGE_THRESHOLD = 512
SHAPE_FIX_ARCHS = frozenset({"sd1", "sdxl"})
# convert.py keys_hiprec: kept F32 at stage 1 (substring match)
KEYS_HIPREC: dict[str, tuple[str, ...]] = {
    "hidream": (".ff_i.gate.weight", "img_emb.emb_pos"),
    "cosmos": ("pos_embedder",),
    "wan": (".modulation",),
    "ltxv": ("scale_shift_table",),
}
_FLUX_KEEP = ("txt_in.", "img_in.", "time_in.", "vector_in.", "guidance_in.", "final_layer.")
# lcpp.patch: tensors llama-quantize leaves at their stage-1 type, per arch (substrings; "=" marks exact names)
KEEP_HIGH_PRECISION: dict[str, tuple[str, ...]] = {
    "flux": _FLUX_KEEP,
    "hyvid": _FLUX_KEEP,
    "sd1": (
        "class_embedding.",
        "time_embedding.",
        "add_embedding.",
        "time_embed.",
        "label_emb.",
        "conv_in.",
        "conv_out.",
        "=input_blocks.0.0.weight",
        "=out.2.weight",
    ),
    "sd3": (
        "final_layer.",
        "time_text_embed.",
        "context_embedder.",
        "t_embedder.",
        "y_embedder.",
        "x_embedder.",
        "=proj_out.weight",
        "=pos_embed",
    ),
    "aura": (
        "t_embedder.",
        "init_x_linear.",
        "=modF.1.weight",
        "=cond_seq_linear.weight",
        "=final_linear.weight",
        "=positional_encoding",
        "=register_tokens",
    ),
    "ltxv": ("adaln_single.", "caption_projection.", "patchify_proj.", "proj_out.", "scale_shift_table"),
    "wan": (
        "modulation.",
        "patch_embedding.",
        "text_embedding.",
        "time_projection.",
        "time_embedding.",
        "img_emb.",
        "head.",
    ),
    "hidream": (
        "p_embedder.",
        "t_embedder.",
        "x_embedder.",
        "final_layer.",
        ".ff_i.gate.weight",
        "caption_projection.",
    ),
    "cosmos": (
        "p_embedder.",
        "t_embedder.",
        "t_embedding_norm.",
        "x_embedder.",
        "pos_embedder.",
        "final_layer.",
    ),
    "lumina2": (
        "t_embedder.",
        "x_embedder.",
        "final_layer.",
        "cap_embedder.",
        "context_refiner.",
        "noise_refiner.",
    ),
}
KEEP_HIGH_PRECISION["sdxl"] = KEEP_HIGH_PRECISION["sd1"]

FLOAT_TYPES = ("F32", "F16", "BF16")
LEGACY_TYPES = ("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0")
QTYPES = FLOAT_TYPES + LEGACY_TYPES + K_TYPES
# general.file_type written for each target (llama.cpp's LlamaFileType; a pure K type takes its _S file type)
FILE_TYPE = {
    "F32": 0,
    "F16": 1,
    "Q4_0": 2,
    "Q4_1": 3,
    "Q8_0": 7,
    "Q5_0": 8,
    "Q5_1": 9,
    "Q2_K": 10,
    "Q3_K": 11,
    "Q4_K": 14,
    "Q5_K": 16,
    "Q6_K": 18,
    "BF16": 32,
}

QTypeArg = str | Callable[[str, tuple[int, ...]], str]


def _keep(arch: str, key: str) -> bool:
    for pat in KEEP_HIGH_PRECISION.get(arch, ()):
        if (pat[1:] == key) if pat.startswith("=") else (pat in key):
            return True
    return False


def _block_size(qtype: str) -> int:
    return 256 if qtype in K_TYPES else 32 if qtype in LEGACY_TYPES else 1


def stored_shape(arch: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The numpy shape a tensor is written with: ``(n/256, 256)`` under sd1 / sdxl's shape fix, else its own."""
    n = math.prod(shape)
    if (
        arch in SHAPE_FIX_ARCHS
        and len(shape) > 1
        and n >= REARRANGE_THRESHOLD
        and n % 256 == 0
        and shape[-1] % 256
    ):
        return (n // 256, 256)
    return tuple(shape)


def stage1_type(arch: str, key: str, shape: tuple[int, ...], source: str, base: str) -> str:
    """convert.py's type: ``base`` (F16 / BF16), F32 for > 4-D, and for F32 / BF16 sources F32 for 1-D,
    small (≤ 1024 elements) and ``keys_hiprec`` tensors."""
    if len(shape) > 4:
        return "F32"
    if source in ("F32", "BF16") and (
        len(shape) == 1
        or math.prod(shape) <= QUANTIZATION_THRESHOLD
        or any(h in key for h in KEYS_HIPREC.get(arch, ()))
    ):
        return "F32"
    return base


def comfy_qtype(arch: str, key: str, shape: tuple[int, ...], target: str, *, source: str = "F32") -> str:
    """The type ComfyUI-GGUF's pipeline gives tensor ``key`` of (original) ``shape`` for file type ``target``.

    ``source``: the safetensors dtype it came from (F32, F16, BF16; F8 for fp8)."""
    if target not in QTYPES:
        raise ValueError(f"unknown quant type {target!r}; expected one of {QTYPES}")
    base = target if target in FLOAT_TYPES else ("BF16" if source == "BF16" else "F16")
    first = stage1_type(arch, key, tuple(shape), source, base)
    if target in FLOAT_TYPES or len(shape) > 4:
        return first
    st = stored_shape(arch, tuple(shape))
    if len(st) != 2 or not key.endswith("weight") or _keep(arch, key):
        return first
    return target if st[-1] % _block_size(target) == 0 else "F16"


def _source_name(t: Any) -> str:
    """F32 / BF16 / F16, or F8 for an fp8 source (convert.py casts those to F16, without the F32 rules)."""
    dt = t.dtype
    if dt == torch.bfloat16:
        return "BF16"
    if dt in (torch.float16, np.float16):
        return "F16"
    if dt in (torch.float8_e4m3fn, torch.float8_e5m2):
        return "F8"
    return "F32"


def _as_numpy(t: Any) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu()
        if t.dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
            t = t.to(torch.float32)
        return t.numpy()
    return np.asarray(t)


def encode(data: np.ndarray, qtype: str) -> np.ndarray:
    """``data`` as the array ``GGUFWriter.add_tensor`` takes for ``qtype`` (uint8 block bytes for quants)."""
    import gguf

    if qtype in K_TYPES:
        return quantize_k(data, qtype).raw
    x = data.astype(np.float32, copy=False)
    return gguf.quants.quantize(x, gguf.GGMLQuantizationType[qtype])


def write_gguf(
    path: str | Path,
    tensors: Mapping[str, torch.Tensor | np.ndarray],
    *,
    arch: str,
    qtype: QTypeArg,
    metadata: Mapping[str, Any] | None = None,
    file_type: int | None = None,
) -> dict[str, str]:
    """Write ``tensors`` (original keys, no prefix) as a ComfyUI-GGUF style file; return key -> type written.

    ``qtype``: a target (:data:`QTYPES`; the per-tensor policy of :func:`comfy_qtype`) or a function
    ``(key, shape) -> type`` (a type whose block does not divide the row falls back to F16; > 4-D tensors are
    F32 either way, as ComfyUI-GGUF adds them back). ``metadata``:
    extra key/values (``GGUFWriter.add_key_value`` picks the type from the Python value)."""
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path=None, arch=arch)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    target = qtype if isinstance(qtype, str) else None
    writer.add_file_type(
        file_type if file_type is not None else FILE_TYPE.get(target or "", FILE_TYPE["F16"])
    )
    for k, v in (metadata or {}).items():
        _add_kv(writer, k, v)
    written: dict[str, str] = {}
    for key, t in tensors.items():
        shape = tuple(int(d) for d in t.shape)
        if target is not None:
            qt = comfy_qtype(arch, key, shape, target, source=_source_name(t))
        else:
            qt = "F32" if len(shape) > 4 else qtype(key, shape)
            st = stored_shape(arch, shape)
            if qt not in FLOAT_TYPES and (not st or st[-1] % _block_size(qt)):
                qt = "F16"
        data = _as_numpy(t)
        st = stored_shape(arch, shape) if len(shape) <= 4 else shape
        if st != shape:
            data = data.reshape(st)
            writer.add_array(f"comfy.gguf.orig_shape.{key}", [int(d) for d in shape])
        writer.add_tensor(key, encode(data, qt), raw_dtype=gguf.GGMLQuantizationType[qt])
        written[key] = qt
    tmp = path.with_name(path.name + ".tmp")
    writer.write_header_to_file(path=tmp)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
    return written


def write_sparse_gguf(
    path: str | Path,
    tensors: Mapping[str, torch.Tensor],
    *,
    arch: str,
    qtype: str,
) -> dict[str, str]:
    """A full-size GGUF from shapes alone (meta tensors welcome): the real header, key/values and tensor infos
    (the types of :func:`comfy_qtype`), then the data left as a hole (the file truncated to its full length,
    reading as zeros; no disk used). For header-only timing on full-size files."""
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path=None, arch=arch)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(FILE_TYPE[qtype])
    written: dict[str, str] = {}
    sizes: list[int] = []
    for key, t in tensors.items():
        shape = tuple(int(d) for d in t.shape)
        qt = comfy_qtype(arch, key, shape, qtype, source=_source_name(t))
        st = stored_shape(arch, shape) if len(shape) <= 4 else shape
        if st != shape:
            writer.add_array(f"comfy.gguf.orig_shape.{key}", [int(d) for d in shape])
        block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qt]]
        nbytes = math.prod(st) // block * type_size
        writer.add_tensor_info(key, st, np.dtype(np.float32), nbytes, raw_dtype=gguf.GGMLQuantizationType[qt])
        sizes.append(gguf.GGUFWriter.ggml_pad(nbytes, writer.data_alignment))
        written[key] = qt
    tmp = path.with_name(path.name + ".tmp")
    writer.write_header_to_file(path=tmp)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    fout = writer.fout[0]
    writer.write_padding(fout, fout.tell())
    fout.truncate(fout.tell() + sum(sizes))
    writer.close()
    tmp.replace(path)
    return written


def _add_kv(writer: Any, key: str, value: Any) -> None:
    import gguf

    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value) if 0 <= value < 2**32 else writer.add_int64(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, list | tuple):
        writer.add_array(key, list(value))
    else:
        writer.add_key_value(key, value, gguf.GGUFValueType.get_type(value))


# ----------------------------------------------------------------------------------------------- the zoo
@dataclass
class GgufEntry:
    """One zoo file and its truth. ``types``: key -> GGUF type; ``shapes``: key -> the original (numpy)
    shape; ``reshaped``: keys stored as ``(n/256, 256)`` with ``comfy.gguf.orig_shape``; ``source``: the
    safetensors file it was made from (same keys)."""

    name: str
    path: Path
    family: str
    arch: str
    qtype: str
    source: Path
    types: dict[str, str]
    shapes: dict[str, tuple[int, ...]]
    reshaped: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def count(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.types.values():
            out[t] = out.get(t, 0) + 1
        return out


# tiny widths with 256-wide rows for the K-quants: the MLP down projections are [hidden, 4·hidden] = [64, 256]
_DIT_WIDTHS: dict[str, dict[str, Any]] = {
    "flux_dev": {"attention_head_dim": 32, "num_attention_heads": 2, "axes_dims_rope": (8, 12, 12)},
    "sd3": {"attention_head_dim": 32, "num_attention_heads": 2, "caption_projection_dim": 64},
}
# (family, source file name, source dtype, GGUF copies)
ZOO_PLAN: tuple[tuple[str, str, torch.dtype, tuple[str, ...]], ...] = (
    ("flux_dev", "flux1-dev.safetensors", torch.bfloat16, ("BF16", "Q8_0", "Q5_1", "Q4_K")),
    ("sd3", "sd3_medium.safetensors", torch.float16, ("F16", "Q4_0", "Q5_K", "Q6_K")),
    ("sd1", "sd15_unet.safetensors", torch.float32, ("F16", "Q8_0", "Q5_0", "Q4_1", "Q4_K", "Q3_K", "Q2_K")),
    ("sdxl", "sdxl_unet.safetensors", torch.float16, ("Q8_0", "Q4_K")),
)


def quant_denoiser(
    family: str, *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """The zoo's denoiser of ``family`` in original keys, no prefix: FLUX / SD3 at hidden width 64 (so the
    MLP down projections have 256-wide rows), SD1 the tiny UNet of :mod:`sdlens.testing.zoo_unet`."""
    if family in _DIT_WIDTHS:
        from sdlens.testing import zoo_dit

        cls_name, cfg = zoo_dit.denoiser_config(family)
        cfg.update(_DIT_WIDTHS[family])
        meta = zoo_dit.meta_state_dict(cls_name, cfg)
        sd = zoo_dit.to_original(
            family, zoo_dit.materialize(meta, size="tiny", seed=seed, dtype=torch.float32)
        )
    elif family in ("sd1", "sdxl"):
        from sdlens.testing.zoo_unet import build_single_file

        prefix = "model.diffusion_model."
        full = build_single_file(family, seed=seed)
        sd = {k[len(prefix) :]: v for k, v in full.items() if k.startswith(prefix)}
    else:
        raise ValueError(f"no quantisation zoo denoiser for {family!r}")
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}


def build_gguf_zoo(
    folder: str | Path, plan: tuple[tuple[str, str, torch.dtype, tuple[str, ...]], ...] = ZOO_PLAN
) -> list[GgufEntry]:
    """Each plan row: the source safetensors (the denoiser-only file a user has) and its GGUF copies,
    ``<stem>-<TYPE>.gguf`` (convert.py's naming)."""
    from sdlens.testing.writers import save_safetensors

    folder = Path(folder)
    entries: list[GgufEntry] = []
    for family, name, dtype, qtypes in plan:
        sd = quant_denoiser(family, dtype=dtype)
        source = save_safetensors(sd, folder / name)
        arch = FAMILY_ARCH[family]
        shapes = {k: tuple(int(d) for d in v.shape) for k, v in sd.items()}
        reshaped = {k: s for k, s in shapes.items() if stored_shape(arch, s) != s}
        stem = Path(name).stem
        for qt in qtypes:
            path = folder / f"{stem}-{qt}.gguf"
            types = write_gguf(path, sd, arch=arch, qtype=qt)
            entries.append(GgufEntry(path.name, path, family, arch, qt, source, types, shapes, reshaped))
    return entries
