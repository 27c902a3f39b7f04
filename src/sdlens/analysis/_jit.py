"""numba kernels (imported lazily by ``sdlens.analysis.kernels``; compiled once, cached on disk).

The loops are written so LLVM vectorises them: the element type is widened inside the loop (fp16 with the
CPU's half-to-float instruction, bf16 by a 16-bit shift), max and "is non-zero" use branch-free forms."""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import carray, literally, njit, types
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


_FM = {"reassoc", "nsz", "contract", "arcp"}  # reorder sums (vectorise), fused multiply-add; no NaN/Inf tricks
ROWS_BLOCK = 1024  # positions per block of pair_rows: float32 sums inside a block, float64 across blocks
F16, BF16, F32 = 0, 1, 2  # element kinds of pair_rows' inputs
D2, DP, L1, SQ = 1, 2, 4, 8  # what pair_rows sums (bits of ``want``)


@intrinsic
def _as_ptr(typingctx, addr):
    """An integer address as a ``void*`` (for ``numba.carray``)."""

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], ir.IntType(8).as_pointer())

    return types.voidptr(types.uint64), codegen


@intrinsic
def _f16x8(typingctx, src, dst):
    """Eight fp16 values at address ``src`` widened to float32 at ``dst``: one vector ``fpext``, which LLVM
    lowers to the CPU's half-to-float instruction (the loop vectoriser instead loads halves one by one)."""

    def codegen(context, builder, sig, args):
        vh, vf = ir.VectorType(ir.HalfType(), 8), ir.VectorType(_F32, 8)
        h = builder.load(builder.inttoptr(args[0], vh.as_pointer()), align=2)
        builder.store(builder.fpext(h, vf), builder.inttoptr(args[1], vf.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(types.uint64, types.uint64), codegen


@njit(fastmath=_FM, nogil=True, cache=True)
def _stage(y, sq, addrs, kind, start, m, want):
    """Positions ``start:start+m`` of every input row, widened to float32 into ``y``; Σx² of each row into
    ``sq`` when ``want`` asks for it."""
    for r in range(addrs.size):
        yr = y[r]
        if kind == F32:
            xf = carray(_as_ptr(addrs[r] + np.uint64(4 * start)), m, np.float32)
            for i in range(m):
                yr[i] = xf[i]
        else:
            src = addrs[r] + np.uint64(2 * start)
            xh = carray(_as_ptr(src), m, np.uint16)
            head = 0
            if kind == F16:
                head = m - m % 8
                dst = np.uint64(yr.ctypes.data)
                for i in range(0, head, 8):
                    _f16x8(src + np.uint64(2 * i), dst + np.uint64(4 * i))
            for i in range(head, m):
                yr[i] = _widen(xh[i], kind == BF16)
        if want & SQ:
            acc = np.float32(0.0)
            for i in range(m):
                acc += yr[i] * yr[i]
            sq[r] += acc


@njit(fastmath=_FM, nogil=True, inline="always")
def _term(a, b, op):
    if op == D2:
        e = a - b
        return e * e
    if op == DP:
        return (a - b) * (a + b)
    return abs(a - b)


@njit(fastmath=_FM, nogil=True, cache=True)
def _tile(a0, a1, b0, b1, b2, b3, m, op):
    """Σ term(ar, bk) for two rows ar against four rows bk (a 2×4 tile: eight independent accumulator chains,
    six loads per eight pairs); ``op`` is a compile-time constant (one compiled loop per sum)."""
    literally(op)
    s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = np.float32(0.0)
    for i in range(m):
        x0, x1 = a0[i], a1[i]
        t = b0[i]
        s00 += _term(x0, t, op)
        s10 += _term(x1, t, op)
        t = b1[i]
        s01 += _term(x0, t, op)
        s11 += _term(x1, t, op)
        t = b2[i]
        s02 += _term(x0, t, op)
        s12 += _term(x1, t, op)
        t = b3[i]
        s03 += _term(x0, t, op)
        s13 += _term(x1, t, op)
    return (s00, s01, s02, s03), (s10, s11, s12, s13)


@njit(fastmath=_FM, nogil=True, cache=True)
def _quad(a0, b0, a1, b1, a2, b2, a3, b3, m, op):
    """Σ term(ak, bk) for four independent pairs."""
    literally(op)
    s0 = s1 = s2 = s3 = np.float32(0.0)
    for i in range(m):
        s0 += _term(a0[i], b0[i], op)
        s1 += _term(a1[i], b1[i], op)
        s2 += _term(a2[i], b2[i], op)
        s3 += _term(a3[i], b3[i], op)
    return s0, s1, s2, s3


@njit(nogil=True, cache=True)
def _schedule(u):
    """Work covering every pair r < q < u exactly once: ``tiles`` (rows r, r+1 against four rows after r+1)
    and ``quads`` (the pairs (r, r+1), four at a time). Row index u stands for a zero row whose sums are
    dropped."""
    n_tiles = 0
    for r in range(0, u - 1, 2):
        n_tiles += (u - r - 2 + 3) // 4
    tiles = np.full((n_tiles, 6), u, dtype=np.int64)
    t = 0
    for r in range(0, u - 1, 2):
        for q in range(r + 2, u, 4):
            tiles[t, 0], tiles[t, 1] = r, r + 1
            for k in range(4):
                if q + k < u:
                    tiles[t, 2 + k] = q + k
            t += 1
    inner = u // 2
    quads = np.full(((inner + 3) // 4, 8), u, dtype=np.int64)
    for k in range(inner):
        quads[k // 4, 2 * (k % 4)], quads[k // 4, 2 * (k % 4) + 1] = 2 * k, 2 * k + 1
    return tiles, quads


@njit(fastmath=_FM, nogil=True, cache=True)
def _pairs(y, u, m, out, tiles, quads, op):
    """Add Σ term(yr, yq) over the first ``m`` positions into ``out[r, q]`` for every pair r < q < u."""
    literally(op)
    for t in range(tiles.shape[0]):
        a0, a1, b0, b1, b2, b3 = tiles[t]
        top, bottom = _tile(y[a0], y[a1], y[b0], y[b1], y[b2], y[b3], m, op)
        for k in range(4):
            b = tiles[t, 2 + k]
            if b < u:
                out[a0, b] += top[k]
                out[a1, b] += bottom[k]
    for t in range(quads.shape[0]):
        q = quads[t]
        sums = _quad(y[q[0]], y[q[1]], y[q[2]], y[q[3]], y[q[4]], y[q[5]], y[q[6]], y[q[7]], m, op)
        for k in range(4):
            if q[2 * k + 1] < u:
                out[q[2 * k], q[2 * k + 1]] += sums[k]


@njit(fastmath=_FM, nogil=True, cache=True)
def pair_rows(addrs, kind, start, stop, want):
    """Pairwise sums between u equally long rows over positions ``start:stop``. Rows are given by the address
    of their first element (``addrs``, uint64: the stored fp16 / bf16 / float32 values of mapped files, kept
    alive by the caller) and their ``kind``.

    Returns (d2, dp, l1, sq), each summed only when its bit is in ``want``: d2[r, q] = Σ(xr−xq)²,
    dp[r, q] = Σ(xr−xq)(xr+xq) (= ‖xr‖² − ‖xq‖², without the cancellation of subtracting two norms),
    l1[r, q] = Σ|xr−xq| (upper triangles, r < q) and sq[r] = Σxr². Every pair is differenced directly, so two
    nearly identical rows keep full precision whatever the other rows hold. float32 sums inside blocks of
    ``ROWS_BLOCK`` positions (spread over the vector lanes), float64 across blocks."""
    u = addrs.size
    d2, dp, l1 = np.zeros((u, u)), np.zeros((u, u)), np.zeros((u, u))
    sq = np.zeros(u)
    y = np.zeros((u + 1, ROWS_BLOCK), dtype=np.float32)  # row u stays zero: it pads the last tiles
    tiles, quads = _schedule(u)
    for s in range(start, stop, ROWS_BLOCK):
        m = min(ROWS_BLOCK, stop - s)
        _stage(y, sq, addrs, kind, s, m, want)
        if want & D2:
            _pairs(y, u, m, d2, tiles, quads, D2)
        if want & DP:
            _pairs(y, u, m, dp, tiles, quads, DP)
        if want & L1:
            _pairs(y, u, m, l1, tiles, quads, L1)
    return d2, dp, l1, sq
