"""numba kernels (imported lazily by ``sdlens.analysis.kernels``; compiled once, cached on disk).

Exact on every CPU numba targets (x86-64 with or without AVX2 / AVX-512 / F16C, aarch64, numba's ``generic``
model), by construction rather than by testing on one machine:

* Only the fast-math flags that reorder and fuse arithmetic are used (``_FM``: reassoc, contract, nsz, arcp),
  never ``nnan`` / ``ninf`` / ``afn``: with those, LLVM may fold a chain of constant multiplies into one that
  overflows and then assume the NaN it makes cannot exist (that is how a branch-free float "is non-zero" count
  once counted every value as changed on AVX-512 machines).
* Counts are integers computed on the stored bits (``a ≠ b`` and not both ±0), independent of the float
  environment (flush-to-zero / denormals-are-zero cannot hide a 2^-149 difference).
* fp16 is widened by exact integer operations, or by the CPU's half-to-float instruction where the target
  has one (x86 F16C, aarch64); the target is the one numba compiles for, so ``NUMBA_CPU_NAME=generic`` takes
  the integer path. Both are exact for all 65 536 bit patterns (tested on the host and the generic target).
  bf16 is a 16-bit shift. Loops are written over float32 blocks so LLVM vectorises them."""

from __future__ import annotations

import platform

import numpy as np
from llvmlite import binding as ll
from llvmlite import ir
from numba import carray, literally, njit, types
from numba.core import config
from numba.core.extending import intrinsic

BLOCK = 512  # float32 partial sums over this many elements, float64 across blocks
_F32, _I32 = ir.FloatType(), ir.IntType(32)


def native_half() -> bool:
    """Does the compile target convert half to float in hardware (so LLVM needs no library call)?"""
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return True
    if machine not in ("x86_64", "amd64"):
        return False
    features = (
        config.CPU_FEATURES if config.CPU_FEATURES is not None else ll.get_host_cpu_features().flatten()
    )
    return "+f16c" in features.split(",")


NATIVE_HALF = native_half()


def _c(v: int) -> ir.Constant:
    return ir.Constant(_I32, v)


def _half_bits_to_f32(builder: ir.IRBuilder, bits: ir.Value) -> ir.Value:
    """fp16 bits (i16) to float32 with integer operations only: exact for every pattern, no denormal arithmetic
    (so flush-to-zero modes cannot change it), no library call."""
    x = builder.zext(bits, _I32)
    em = builder.and_(x, _c(0x7FFF))
    sign = builder.shl(builder.and_(x, _c(0x8000)), _c(16))
    shifted = builder.shl(em, _c(13))
    normal = builder.add(shifted, _c((127 - 15) << 23))  # rebias the exponent
    sub = builder.fmul(builder.uitofp(em, _F32), ir.Constant(_F32, 2.0**-24))  # em·2^-24, a normal float32
    r = builder.select(builder.icmp_unsigned("<", em, _c(0x400)), builder.bitcast(sub, _I32), normal)
    r = builder.select(builder.icmp_unsigned(">=", em, _c(0x7C00)), builder.or_(shifted, _c(0x7F800000)), r)
    return builder.bitcast(builder.or_(r, sign), _F32)


@intrinsic
def _h2f(typingctx, x):
    """float32 value of fp16 bits (uint16), by integer operations."""

    def codegen(context, builder, sig, args):
        return _half_bits_to_f32(builder, args[0])

    return types.float32(types.uint16), codegen


@intrinsic
def _b2f(typingctx, x):
    """float32 value of bf16 bits (uint16)."""

    def codegen(context, builder, sig, args):
        return builder.bitcast(builder.shl(builder.zext(args[0], _I32), _c(16)), _F32)

    return types.float32(types.uint16), codegen


@intrinsic
def _u2f(typingctx, x):
    """float32 value of float32 bits (uint32)."""

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], _F32)

    return types.float32(types.uint32), codegen


@intrinsic
def _f2u(typingctx, x):
    """The bits of a float32 as uint32: for values ≥ 0 their order is the values' order, so a max over them is
    an integer max, which LLVM vectorises (a float max reduction needs ``nnan``, which is not used)."""

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], _I32)

    return types.uint32(types.float32), codegen


@intrinsic
def _differs(typingctx, x, y):
    """1.0 when two stored values (the same unsigned bit width) differ as numbers, else 0.0: bits not equal and
    not both ±0. Integer work at the stored width (no widening to int64 lanes), so it vectorises; exact whatever
    the float environment (denormals-are-zero cannot hide a difference)."""
    width = x.bitwidth

    def codegen(context, builder, sig, args):
        a, b = args
        magnitude = ir.Constant(ir.IntType(width), (1 << (width - 1)) - 1)
        zero = ir.Constant(ir.IntType(width), 0)
        ne = builder.icmp_unsigned("!=", a, b)
        nonzero = builder.icmp_unsigned("!=", builder.and_(builder.or_(a, b), magnitude), zero)
        return builder.uitofp(builder.and_(ne, nonzero), _F32)

    return types.float32(x, y), codegen


@intrinsic
def _as_ptr(typingctx, addr):
    """An integer address as a ``void*`` (for ``numba.carray``)."""

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], ir.IntType(8).as_pointer())

    return types.voidptr(types.uint64), codegen


@intrinsic
def _f16x8(typingctx, src, dst):
    """Eight fp16 values at address ``src`` widened to float32 at ``dst``: one vector ``fpext``, which LLVM
    lowers to the CPU's half-to-float instruction (only used where ``NATIVE_HALF``; elsewhere LLVM would need a
    library call that numba does not link)."""

    def codegen(context, builder, sig, args):
        vh, vf = ir.VectorType(ir.HalfType(), 8), ir.VectorType(_F32, 8)
        h = builder.load(builder.inttoptr(args[0], vh.as_pointer()), align=2)
        builder.store(builder.fpext(h, vf), builder.inttoptr(args[1], vf.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(types.uint64, types.uint64), codegen


_FM = {
    "reassoc",
    "nsz",
    "contract",
    "arcp",
}  # reorder sums (vectorise), fused multiply-add; no NaN/Inf tricks
F16, BF16, F32 = 0, 1, 2  # element kinds of the stored inputs


@njit(fastmath=_FM, nogil=True, cache=True)
def _widen(src, m, dst, kind):
    """``m`` stored values of ``kind`` at address ``src`` as float32 into ``dst[:m]``."""
    if kind == F32:
        xf = carray(_as_ptr(src), m, np.uint32)
        for i in range(m):
            dst[i] = _u2f(xf[i])
        return
    xh = carray(_as_ptr(src), m, np.uint16)
    if kind == BF16:
        for i in range(m):
            dst[i] = _b2f(xh[i])
        return
    head = 0
    if NATIVE_HALF:
        head = m - m % 8
        out = np.uint64(dst.ctypes.data)
        for i in range(0, head, 8):
            _f16x8(src + np.uint64(2 * i), out + np.uint64(4 * i))
    for i in range(head, m):
        dst[i] = _h2f(xh[i])


@njit(fastmath=_FM, nogil=True, cache=True)
def pair_sums(a, b, kind):
    """(‖a‖², ‖b‖², ⟨a,b⟩, ‖a−b‖², Σ|a−b|, #(a≠b), max|a−b|) of two equally long 1-D arrays of stored bits
    (uint16 for fp16 / bf16, uint32 for float32) in one pass.

    A NaN or Inf input makes the plain sums non-finite, which the caller treats as "take the exact path"
    (tested). The count is exact: values that differ, by their bits (+0 and −0 are equal)."""
    saa = sbb = sab = sdd = sl1 = l0 = 0.0
    mx = np.uint32(0)  # bits of max|a−b|
    n = a.size
    ya = np.empty(BLOCK, np.float32)
    yb = np.empty(BLOCK, np.float32)
    pa, pb, width = np.uint64(a.ctypes.data), np.uint64(b.ctypes.data), np.uint64(a.itemsize)
    for s in range(0, n, BLOCK):
        m = min(n, s + BLOCK) - s
        _widen(pa + width * np.uint64(s), m, ya, kind)
        _widen(pb + width * np.uint64(s), m, yb, kind)
        paa = pbb = pab = pdd = pl1 = pc = np.float32(0.0)  # pc: a count < 2^24, exact in float32
        pm = np.uint32(0)
        xa, xb = a[s : s + m], b[s : s + m]
        for i in range(m):
            fa, fb = ya[i], yb[i]
            d = fa - fb
            ad = abs(d)
            paa += fa * fa
            pbb += fb * fb
            pab += fa * fb
            pdd += d * d
            pl1 += ad
            pm = max(pm, _f2u(ad))
            pc += _differs(xa[i], xb[i])
        saa += paa
        sbb += pbb
        sab += pab
        sdd += pdd
        sl1 += pl1
        l0 += pc
        mx = max(mx, pm)
    return saa, sbb, sab, sdd, sl1, int(l0), _u2f(mx)


@njit(fastmath=_FM, nogil=True, cache=True)
def delta_sums(a, b, kind, d):
    """Δ = a − b of two equally long 1-D arrays of stored bits (uint16 for fp16 / bf16, uint32 for float32)
    written into the float32 array ``d``, and (‖Δ‖², ‖b‖², Σ (2^⌊log₂|b|⌋)²) in the same pass: the sums
    ``sdlens delta`` needs (the last is the rounding floor's) without six passes over memory. Δ is exact
    (both widenings are, and the difference of two such values rounds once to float32, as torch's does)."""
    sdd = sbb = spp = 0.0
    n = a.size
    yb = np.empty(BLOCK, np.float32)
    pa, pb, width = np.uint64(a.ctypes.data), np.uint64(b.ctypes.data), np.uint64(a.itemsize)
    for s in range(0, n, BLOCK):
        m = min(n, s + BLOCK) - s
        out = d[s : s + m]
        _widen(pa + width * np.uint64(s), m, out, kind)
        _widen(pb + width * np.uint64(s), m, yb, kind)
        pdd = pbb = ppp = np.float32(0.0)
        for i in range(m):
            fb = yb[i]
            x = out[i] - fb
            out[i] = x
            pdd += x * x
            pbb += fb * fb
            p2 = _u2f(_f2u(fb) & np.uint32(0x7F800000))
            ppp += p2 * p2
        sdd += pdd
        sbb += pbb
        spp += ppp
    return sdd, sbb, spp


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


ROWS_BLOCK = 1024  # positions per block of pair_rows: float32 sums inside a block, float64 across blocks
D2, DP, L1, SQ = 1, 2, 4, 8  # what pair_rows sums (bits of ``want``)


@njit(fastmath=_FM, nogil=True, cache=True)
def _stage(y, sq, addrs, kind, start, m, want):
    """Positions ``start:start+m`` of every input row, widened to float32 into ``y``; Σx² of each row into
    ``sq`` when ``want`` asks for it."""
    width = np.uint64(4 if kind == F32 else 2)
    for r in range(addrs.size):
        yr = y[r]
        _widen(addrs[r] + width * np.uint64(start), m, yr, kind)
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


SIG_FIELDS = ("values", "equal_base", "equal_candidate", "delta_dropped", "delta_kept", "outside", "agree")
SIG_LO, SIG_WIDTH = -1.0, 0.01  # ratio histogram: bins of 0.01 from −1 (400 bins to 3)


@njit(nogil=True, cache=True)
def element_signature(addrs, kind, start, stop, stride, tol, resolve, out, hist):
    """Element-level evidence of how a model M (row 0 of ``addrs``) was made from candidates (rows 1…c):
    for each ordered pair (base b, candidate j), over the positions of blocks ``start + k·stride·ROWS_BLOCK``
    where the candidate's delta δ = Pⱼ − P_b is resolvable (|δ| > ``resolve`` · max(|P_b|, |M|), so a rescaled
    δ is told from rounding), adds into ``out[b, j]`` (fields ``SIG_FIELDS``): the count of such values; how
    many equal P_b (within ``tol`` relative: 0 = exactly) and how many equal Pⱼ; Σ|δ| over those equal to P_b
    and over the others; and, for the rest, into ``hist[b, j]`` the ratio r = (M − P_b) / δ (bins of
    ``SIG_WIDTH`` from ``SIG_LO``; outside that range counted in "outside") and how often M − P_b has δ's sign.
    Weighted sums give one ratio everywhere, DARE drops a share of deltas regardless of their size and
    rescales the rest, TIES drops the small ones, crossover copies each value from one parent.

    No fast-math here: every comparison and ratio is plain IEEE float64 arithmetic on the exactly widened
    values, so a count (and the bin of a ratio on a bin edge) is the same on every CPU."""
    c = addrs.size - 1
    y = np.zeros((c + 1, ROWS_BLOCK), dtype=np.float32)
    sq = np.zeros(c + 1)
    nb = hist.shape[2]
    step = ROWS_BLOCK * stride
    for s in range(start, stop, step):
        m = min(ROWS_BLOCK, stop - s)
        _stage(y, sq, addrs, kind, s, m, 0)
        ym = y[0]
        for b in range(c):
            yb = y[b + 1]
            for j in range(c):
                if j == b:
                    continue
                yj = y[j + 1]
                o = out[b, j]
                h = hist[b, j]
                for i in range(m):
                    pb, pm, pj = np.float64(yb[i]), np.float64(ym[i]), np.float64(yj[i])
                    d = pj - pb
                    ad = abs(d)
                    if not ad > resolve * max(abs(pb), abs(pm)):
                        continue
                    o[0] += 1.0
                    e = pm - pb
                    if abs(e) <= tol * abs(pb):
                        o[1] += 1.0
                        o[3] += ad
                        continue
                    o[4] += ad
                    if abs(pm - pj) <= tol * abs(pj):
                        o[2] += 1.0
                        continue
                    if (e > 0) == (d > 0):
                        o[6] += 1.0
                    k = int(np.floor((e / d - SIG_LO) / SIG_WIDTH))
                    if 0 <= k < nb:
                        h[k] += 1.0
                    else:
                        o[5] += 1.0
