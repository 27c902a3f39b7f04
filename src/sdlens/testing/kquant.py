"""Hand-built llama.cpp K-quant blocks (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) in numpy, for the GGUF test zoo.

``gguf.quants.quantize`` cannot write the K-quants; these encoders write valid block bytes (the layouts of
ggml-common.h, as ``gguf.quants`` dequantises them). Every block is a 256-element super-block:

- Q2_K (84 B): ``scales[16]`` (low nibble scale, high nibble min, per 16 values), ``qs[64]`` (2-bit), f16 ``d``,
  f16 ``dmin``; value = d·sc·q − dmin·m, q ∈ 0..3.
- Q3_K (110 B): ``hmask[32]`` (high bit), ``qs[64]`` (low 2 bits), ``scales[12]`` (16 six-bit scales, stored
  +32), f16 ``d``; value = d·(sc−32)·q, q ∈ −4..3.
- Q4_K (144 B): f16 ``d``, f16 ``dmin``, ``scales[12]`` (8 six-bit scales and 8 six-bit mins), ``qs[128]``
  (4-bit); value = d·sc·q − dmin·m per 32 values, q ∈ 0..15.
- Q5_K (176 B): as Q4_K plus ``qh[32]`` (the fifth bit) before ``qs``; q ∈ 0..31.
- Q6_K (210 B): ``ql[128]`` (low 4 bits), ``qh[64]`` (high 2 bits), ``scales[16]`` (int8), f16 ``d``;
  value = d·sc·(q−32) per 16 values.

The quantiser is simple, not llama.cpp's optimising one: per sub-block the range is covered exactly (the
scale codes are rounded *up*), so no value is clipped and each value is within half a step of the input,
step = the sub-block's effective scale d·sc. :func:`quantize_k` also returns the reconstruction its codes
stand for, computed with the float32 operations ``gguf.quants`` uses, so a test can demand equality.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QK_K = 256
# type -> (bytes per block, values per sub-block, largest code, largest scale code, affine (with mins))
_SPEC: dict[str, tuple[int, int, int, int, bool]] = {
    "Q2_K": (84, 16, 3, 15, True),
    "Q3_K": (110, 16, 3, 31, False),
    "Q4_K": (144, 32, 15, 63, True),
    "Q5_K": (176, 32, 31, 63, True),
    "Q6_K": (210, 16, 31, 127, False),
}
K_TYPES = tuple(_SPEC)
BLOCK_BYTES = {k: v[0] for k, v in _SPEC.items()}


@dataclass
class KQuantized:
    """Block bytes (``(*shape[:-1], row bytes)`` uint8), the values they decode to and the step of each value."""

    raw: np.ndarray
    reconstruction: np.ndarray  # float32, the input's shape
    step: np.ndarray  # float32, the input's shape: d·sc of the value's sub-block


def _f16_at_least(x: np.ndarray) -> np.ndarray:
    """The float16 nearest ``x``, bumped one ulp up where it fell below ``x`` (so a range is never cut)."""
    h = x.astype(np.float16)
    low = h.astype(np.float32) < x
    return np.where(low, np.nextafter(h, np.float16(np.inf)), h)


def _super_scale(need: np.ndarray, smax: int) -> tuple[np.ndarray, np.ndarray]:
    """(f16 super-block scale, integer codes ≤ smax) with scale·code ≥ need for every sub-block."""
    top = need.max(axis=-1)
    d16 = _f16_at_least((top / smax).astype(np.float32))
    d32 = d16.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        codes = np.where(d32 > 0, np.ceil(need / d32), 0)
    return d16, np.clip(codes, 0, smax).astype(np.uint8)


def _codes(x: np.ndarray, scale: np.ndarray, lo: int, hi: int) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(scale > 0, np.rint(x / scale), 0)
    return np.clip(q, lo, hi).astype(np.int32)


def _encode_affine(blocks: np.ndarray, sub: int, qmax: int, smax: int):
    nb = blocks.shape[0]
    xs = blocks.reshape(nb, QK_K // sub, sub)
    off = np.maximum(-xs.min(axis=-1), 0).astype(np.float32)
    dmin16, m = _super_scale(off, smax)
    effmin = dmin16.astype(np.float32)[:, None] * m.astype(np.float32)
    need = ((xs.max(axis=-1) + effmin) / qmax).astype(np.float32)
    d16, sc = _super_scale(np.maximum(need, 0), smax)
    step = d16.astype(np.float32)[:, None] * sc.astype(np.float32)
    q = _codes(xs + effmin[..., None], step[..., None], 0, qmax)
    recon = step[..., None] * q.astype(np.float32) - effmin[..., None]
    return d16, dmin16, sc, m, q.reshape(nb, QK_K), recon.reshape(nb, QK_K), step, sub


def _encode_symmetric(blocks: np.ndarray, sub: int, qmax: int, smax: int):
    nb = blocks.shape[0]
    xs = blocks.reshape(nb, QK_K // sub, sub)
    need = (np.abs(xs).max(axis=-1) / qmax).astype(np.float32)
    d16, sc = _super_scale(need, smax)
    step = d16.astype(np.float32)[:, None] * sc.astype(np.float32)
    q = _codes(xs, step[..., None], -qmax, qmax)
    recon = step[..., None] * q.astype(np.float32)
    return d16, sc, q.reshape(nb, QK_K), recon.reshape(nb, QK_K), step, sub


def _pack_2bit_128(q: np.ndarray) -> np.ndarray:
    """(nb, 256) codes 0..3 -> (nb, 64): byte 32h+l holds values 128h+32s+l at bits 2s."""
    q = q.astype(np.uint8).reshape(-1, 2, 4, 32)
    return (
        (q << (2 * np.arange(4, dtype=np.uint8))[None, None, :, None])
        .sum(axis=2, dtype=np.uint8)
        .reshape(-1, 64)
    )


def _pack_nibbles_64(low: np.ndarray) -> np.ndarray:
    """(nb, 256) codes 0..15 -> (nb, 128): byte 32c+l = value 64c+l | value 64c+32+l << 4."""
    low = low.astype(np.uint8).reshape(-1, 4, 2, 32)
    return (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(-1, 128)


def _pack_scales_k4(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """8 six-bit scales and mins -> the 12 bytes of Q4_K / Q5_K (see ``gguf.quants.Q4_K.get_scale_min``)."""
    out = np.empty((sc.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    out[:, 4:8] = m[:, :4] | ((m[:, 4:] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:] & 0x0F) | ((m[:, 4:] & 0x0F) << 4)
    return out


def _f16_bytes(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).reshape(-1, 1).view(np.uint8)


def _blocks_q2_k(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    d, dmin, sc, m, q, recon, step, sub = _encode_affine(blocks, 16, 3, 15)
    raw = np.concatenate([sc | (m << 4), _pack_2bit_128(q), _f16_bytes(d), _f16_bytes(dmin)], axis=1)
    return raw, recon, step, sub


def _blocks_q3_k(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    d, sc, q, recon, step, sub = _encode_symmetric(blocks, 16, 3, 31)
    u = (q + 4).astype(np.uint8)  # 0..7: low 2 bits in qs, the third bit (set for q >= 0) in hmask
    hbit = (u >> 2).reshape(-1, 8, 32)
    hmask = (hbit << np.arange(8, dtype=np.uint8)[None, :, None]).sum(axis=1, dtype=np.uint8)
    s = (sc.astype(np.int16) + 32).astype(np.uint8)  # stored as code + 32
    scales = np.empty((s.shape[0], 12), dtype=np.uint8)
    scales[:, 0:8] = (s[:, 0:8] & 0x0F) | ((s[:, 8:16] & 0x0F) << 4)
    hi = (s >> 4) & 0x03  # scale k's two high bits: byte 8 + k % 4, bits 2 * (k // 4)
    scales[:, 8:12] = (hi.reshape(-1, 4, 4) << (2 * np.arange(4, dtype=np.uint8))[None, :, None]).sum(
        axis=1, dtype=np.uint8
    )
    raw = np.concatenate([hmask, _pack_2bit_128(u & 0x03), scales, _f16_bytes(d)], axis=1)
    return raw, recon, step, sub


def _blocks_q4_k(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    d, dmin, sc, m, q, recon, step, sub = _encode_affine(blocks, 32, 15, 63)
    raw = np.concatenate(
        [_f16_bytes(d), _f16_bytes(dmin), _pack_scales_k4(sc, m), _pack_nibbles_64(q)], axis=1
    )
    return raw, recon, step, sub


def _blocks_q5_k(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    d, dmin, sc, m, q, recon, step, sub = _encode_affine(blocks, 32, 31, 63)
    qb = q.astype(np.uint8)
    high = (qb >> 4).reshape(-1, 8, 32)  # bit i of qh[l]: the fifth bit of value 32i + l
    qh = (high << np.arange(8, dtype=np.uint8)[None, :, None]).sum(axis=1, dtype=np.uint8)
    raw = np.concatenate(
        [_f16_bytes(d), _f16_bytes(dmin), _pack_scales_k4(sc, m), qh, _pack_nibbles_64(qb & 0x0F)], axis=1
    )
    return raw, recon, step, sub


def _blocks_q6_k(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    d, sc, q, recon, step, sub = _encode_symmetric(blocks, 16, 31, 127)
    u = (q + 32).astype(np.uint8)  # 1..63
    low = (u & 0x0F).reshape(-1, 2, 2, 64)  # value 128h + 64s + l: nibble s of ql[64h + l]
    ql = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(-1, 128)
    high = (u >> 4).reshape(-1, 2, 4, 32)  # value 128h + 32s + l: bits 2s of qh[32h + l]
    qh = (high << (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]).sum(axis=2, dtype=np.uint8)
    raw = np.concatenate([ql, qh.reshape(-1, 64), sc.astype(np.int8).view(np.uint8), _f16_bytes(d)], axis=1)
    return raw, recon, step, sub


_ENCODERS = {
    "Q2_K": _blocks_q2_k,
    "Q3_K": _blocks_q3_k,
    "Q4_K": _blocks_q4_k,
    "Q5_K": _blocks_q5_k,
    "Q6_K": _blocks_q6_k,
}


def quantize_k(data: np.ndarray, qtype: str) -> KQuantized:
    """Encode ``data`` (last dim a multiple of 256) as ``qtype`` blocks; also the decoded values and steps."""
    if qtype not in _ENCODERS:
        raise ValueError(f"not a K-quant type: {qtype!r}; expected one of {K_TYPES}")
    x = np.asarray(data, dtype=np.float32)
    if x.ndim == 0 or x.shape[-1] % QK_K:
        raise ValueError(f"{qtype} needs a row length that is a multiple of {QK_K}, not shape {x.shape}")
    raw, recon, step, sub = _ENCODERS[qtype](np.ascontiguousarray(x).reshape(-1, QK_K))
    steps = np.repeat(step, sub, axis=1)
    row_bytes = x.shape[-1] // QK_K * BLOCK_BYTES[qtype]
    return KQuantized(
        raw.reshape(*x.shape[:-1], row_bytes),
        recon.reshape(x.shape).astype(np.float32),
        steps.reshape(x.shape).astype(np.float32),
    )
