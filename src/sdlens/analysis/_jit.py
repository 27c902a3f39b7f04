"""numba kernels (imported lazily by ``sdlens.analysis.kernels``; compiled once, cached on disk).

The loops are written so LLVM vectorises them: the element type is widened inside the loop (fp16 with the
CPU's half-to-float instruction, bf16 by a 16-bit shift), max and "is non-zero" use branch-free forms."""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core.extending import intrinsic

BLOCK = 512  # float32 partial sums over this many elements, float64 across blocks
_BIG, _ONE = np.float32(2.0**100), np.float32(1.0)
_F32 = ir.FloatType()


@intrinsic
def _widen(typingctx, x, bf16):
    """The float32 value of one stored element: uint16 holds fp16 bits (``bf16`` false) or bf16 bits;
    float32 passes through."""
    if x == types.float32:
        return types.float32(x, bf16), lambda context, builder, sig, args: args[0]

    def codegen(context, builder, sig, args):
        bits, flag = args
        half = builder.fpext(builder.bitcast(bits, ir.HalfType()), _F32)
        shifted = builder.shl(builder.zext(bits, ir.IntType(32)), ir.Constant(ir.IntType(32), 16))
        flag = builder.icmp_unsigned("!=", flag, ir.Constant(flag.type, 0))
        return builder.select(flag, builder.bitcast(shifted, _F32), half)

    return types.float32(types.uint16, types.boolean), codegen


@intrinsic
def _fmax(typingctx, x, y):
    """llvm.maxnum: a max LLVM can vectorise (numba's ``max`` branches on NaN)."""

    def codegen(context, builder, sig, args):
        decl = builder.module.declare_intrinsic("llvm.maxnum", [_F32], ir.FunctionType(_F32, [_F32, _F32]))
        return builder.call(decl, args)

    return types.float32(types.float32, types.float32), codegen


@njit(fastmath=True, nogil=True, cache=True)
def pair_sums(a, b, bf16):
    """(‖a‖², ‖b‖², ⟨a,b⟩, ‖a−b‖², Σ|a−b|, #(a≠b), max|a−b|) of two equally long 1-D arrays in one pass.

    Full fast-math (needed for the min / max to vectorise): a NaN or Inf input still makes the plain sums
    non-finite, which the caller treats as "take the exact path" (tested)."""
    saa = sbb = sab = sdd = sl1 = l0 = 0.0
    mx = np.float32(0.0)
    n = a.size
    for s in range(0, n, BLOCK):
        e = min(n, s + BLOCK)
        paa = pbb = pab = pdd = pl1 = np.float32(0.0)
        pm = pc = np.float32(0.0)
        for i in range(s, e):
            fa = _widen(a[i], bf16)
            fb = _widen(b[i], bf16)
            d = fa - fb
            ad = abs(d)
            paa += fa * fa
            pbb += fb * fb
            pab += fa * fb
            pdd += d * d
            pl1 += ad
            # 1 for any non-zero difference (even 2^-149, float32's smallest), 0 for zero: branch-free
            pc += min(min(ad * _BIG, _ONE) * _BIG, _ONE)
            pm = _fmax(pm, ad)
        saa += paa
        sbb += pbb
        sab += pab
        sdd += pdd
        sl1 += pl1
        l0 += pc
        mx = max(mx, pm)
    return saa, sbb, sab, sdd, sl1, l0, mx


@njit(nogil=True, cache=True)
def bits_equal(a, b):
    """Same bits? Stops at the first differing block of 4096 elements."""
    n = a.size
    for s in range(0, n, 4096):
        e = min(n, s + 4096)
        x = 0
        for i in range(s, e):
            x |= a[i] ^ b[i]
        if x:
            return False
    return True


@njit(fastmath={"reassoc", "nsz", "contract", "arcp"}, nogil=True, cache=True)
def _dot(a, b, m):
    acc = 0.0
    for i in range(m):
        acc += a[i] * b[i]
    return acc


@njit(fastmath={"reassoc", "nsz", "contract", "arcp"}, nogil=True, cache=True)
def _dot4(a, b0, b1, b2, b3, m):
    """Four dot products sharing ``a``: four independent accumulator chains, ``a`` loaded once."""
    s0 = s1 = s2 = s3 = 0.0
    for i in range(m):
        t = a[i]
        s0 += t * b0[i]
        s1 += t * b1[i]
        s2 += t * b2[i]
        s3 += t * b3[i]
    return s0, s1, s2, s3


@njit(fastmath={"reassoc", "nsz", "contract", "arcp"}, nogil=True, cache=True)
def _l1(a, b, m):
    acc = 0.0
    for i in range(m):
        acc += abs(a[i] - b[i])
    return acc


@njit(fastmath={"reassoc", "nsz", "contract", "arcp"}, nogil=True, cache=True)
def gram_rows(x, bf16, with_l1):
    """Sums for the N×N distances between the rows of ``x`` (u × n, C-contiguous; fp16 / bf16 bits as
    uint16, or float32).

    Per block of columns the rows are centred on their column mean m, in float64 (so near-identical rows
    keep their precision next to very different ones), then G[r, s] = Σ yr·ys, v[r] = Σ yr·m, mm = Σ m²
    and, with ``with_l1``, L1[r, s] = Σ |yr − ys|. Then ‖xr − xs‖² = G[r,r] + G[s,s] − 2 G[r,s] and
    ⟨xr, xs⟩ = G[r,s] + v[r] + v[s] + mm."""
    u, n = x.shape
    g = np.zeros((u, u))
    l1 = np.zeros((u, u))
    v = np.zeros(u)
    mm = 0.0
    width = 1024
    y = np.zeros((u + 3, width))  # three zero rows pad the last group of four
    mean = np.zeros(width)
    inv = 1.0 / u
    for s in range(0, n, width):
        m = min(width, n - s)
        mean[:] = 0.0
        for r in range(u):  # widen once into y, summing the column means on the way
            xr = x[r, s : s + m]
            yr = y[r]
            for i in range(m):
                w = np.float64(_widen(xr[i], bf16))
                yr[i] = w
                mean[i] += w
        for i in range(m):
            mean[i] *= inv
        for r in range(u):
            yr = y[r]
            for i in range(m):
                yr[i] -= mean[i]
        mm += _dot(mean, mean, m)
        for r in range(u):
            yr = y[r]
            v[r] += _dot(yr, mean, m)
            for q in range(r, u, 4):
                a0, a1, a2, a3 = _dot4(yr, y[q], y[q + 1], y[q + 2], y[q + 3], m)
                g[r, q] += a0
                if q + 1 < u:
                    g[r, q + 1] += a1
                if q + 2 < u:
                    g[r, q + 2] += a2
                if q + 3 < u:
                    g[r, q + 3] += a3
            if with_l1:
                for q in range(r + 1, u):
                    l1[r, q] += _l1(yr, y[q], m)
    for r in range(u):
        for q in range(r + 1, u):
            g[q, r] = g[r, q]
            l1[q, r] = l1[r, q]
    return g, v, mm, l1
