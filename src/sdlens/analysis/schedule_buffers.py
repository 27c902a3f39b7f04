"""What a checkpoint's own schedule buffers say: LDM files (SD 1 / SD 2) store ``betas`` and ``alphas_cumprod``
(and ten tables derived from them); these are compared with the named schedules of
:mod:`sdlens.analysis.schedules` ("scaled_linear, 1000 steps, β 0.00085 → 0.012; terminal SNR 0.0047, not zero")."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sdlens.analysis import schedules as S

# ᾱ within this relative difference (plus 1e-6 absolute, for ᾱ near 0) of a named schedule is that schedule:
# buffers stored in fp16 round ᾱ by up to 2⁻¹¹ ≈ 4.9e-4 relative; a tampered or retrained schedule differs by more.
# bf16 rounds by up to 2⁻⁸ ≈ 0.4 %: its tolerance is its machine epsilon (2⁻⁷), below which it cannot tell.
MATCH_RTOL = 2e-3
MATCH_ATOL = 1e-6
DTYPE_RTOL = {"BF16": 2.0**-7}
MAX_TIMESTEPS = 100_000
MAX_BUFFER_BYTES = 1 << 20  # a schedule buffer larger than this is not read (a real one is 4-8 kB)
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
KEYS = ("betas", "alphas_cumprod")


@dataclass
class ScheduleInfo:
    timesteps: int
    kind: str  # the named schedule the buffers equal, or "non-standard"
    match: str | None  # NAMED key, None when no named schedule matches
    closest: str  # the nearest candidate, in words
    max_rel_error: float  # of ᾱ against the closest candidate
    beta_start: float
    beta_end: float
    alpha_bar_T: float
    terminal_snr: float
    zero_terminal_snr: bool
    consistent: bool | None  # betas and alphas_cumprod agree (None: only one of them is stored)
    buffers: list[str]
    description: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _candidates(n: int, betas: np.ndarray) -> list[tuple[str | None, str, np.ndarray]]:
    """(NAMED key or None, words, ᾱ) of each schedule the buffers could be: the named ones at ``n`` steps, then
    linear / scaled-linear with the file's own β endpoints."""
    out: list[tuple[str | None, str, np.ndarray]] = []
    for name in S.DISCRETE_NAMED:
        cfg = {**S.NAMED[name].config, "num_train_timesteps": n}
        out.append((name, name, S.train_curve(S.Schedule(name, name, "discrete", cfg)).alpha_bar))
    b0, b1 = float(betas[0]), float(betas[-1])
    if 0 < b0 < 1 and 0 < b1 < 1:
        for kind in ("linear", "scaled_linear"):
            cfg = {**S.NAMED[kind].config, "num_train_timesteps": n, "beta_start": b0, "beta_end": b1}
            words = f"{kind} with its own β endpoints"
            out.append((None, words, S.train_curve(S.Schedule(kind, words, "discrete", cfg)).alpha_bar))
    return out


def _rel_error(ac: np.ndarray, ref: np.ndarray, rtol: float = MATCH_RTOL) -> float:
    return float(np.max(np.abs(ac - ref) / (np.abs(ref) + MATCH_ATOL / rtol)))


def analyse_schedule(
    betas=None, alphas_cumprod=None, buffers: list[str] | None = None, dtype: str = "F32"
) -> ScheduleInfo | None:
    """Name the schedule of ``betas`` and / or ``alphas_cumprod`` (1-D arrays as stored, in ``dtype``; ᾱ
    preferred, since it is what the LDM sampler reads). None when neither is given or they are not a usable
    1-D table."""
    rtol = max(MATCH_RTOL, DTYPE_RTOL.get(dtype, 0.0))
    arrays = [
        None if a is None else np.asarray(a, dtype=np.float64).reshape(-1) for a in (betas, alphas_cumprod)
    ]
    b, ac = arrays
    if b is None and ac is None:
        return None
    n = (ac if ac is not None else b).size
    if not 2 <= n <= MAX_TIMESTEPS or (b is not None and ac is not None and b.size != ac.size):
        return None
    consistent = None
    if b is not None and ac is not None:
        consistent = bool(np.all(np.isfinite(b))) and _rel_error(ac, np.cumprod(1 - b), rtol) <= rtol
    if ac is None:
        ac = np.cumprod(1 - b)
    if b is None:
        b = 1 - ac / np.concatenate([[1.0], ac[:-1]])
    if not (np.all(np.isfinite(ac)) and np.all(np.isfinite(b))):
        return ScheduleInfo(
            n,
            "non-standard",
            None,
            "none (the buffers hold NaN or infinite values)",
            float("nan"),
            float("nan"),
            float("nan"),
            float("nan"),
            float("nan"),
            False,
            consistent,
            sorted(buffers or []),
            f"{n} steps; the buffers hold NaN or infinite values",
        )
    scored = sorted(
        ((_rel_error(ac, ref, rtol), key, words) for key, words, ref in _candidates(n, b)), key=lambda x: x[0]
    )
    err, key, words = scored[0]
    matched = err <= rtol
    a_t = float(ac[-1])
    snr_t = a_t / (1 - a_t) if a_t < 1 else float("inf")
    ztsnr = abs(a_t) <= MATCH_ATOL
    kind = (key or words) if matched else "non-standard"
    snr_words = "zero" if ztsnr else f"{snr_t:.2g}, not zero"
    head = f"{key or words}" if matched else f"non-standard (closest: {words}, ᾱ off by up to {err:.1%})"
    desc = f"{head}, {n} steps, β {b[0]:.3g} → {b[-1]:.3g}; terminal SNR {snr_words}"
    if consistent is False:
        desc += "; betas and alphas_cumprod disagree (edited or corrupted buffers)"
    return ScheduleInfo(
        n,
        kind,
        key if matched else None,
        words,
        err,
        float(b[0]),
        float(b[-1]),
        a_t,
        snr_t,
        ztsnr,
        consistent,
        sorted(buffers or []),
        desc,
    )


@dataclass
class Buffers:
    """A checkpoint's schedule buffers as one verdict, for every reader (``schedule``, ``inspect``, the
    prediction evidence): what they are named, the β table when it is a usable schedule, else why not."""

    info: ScheduleInfo | None
    betas: np.ndarray | None  # float64 β, t = 0 … T−1, only when usable
    problem: str | None = None  # why stored buffers are not a usable schedule
    zero_terminal_snr: bool = False  # a usable table whose ᾱ ends at exactly 0

    @property
    def present(self) -> bool:
        return self.info is not None or self.problem is not None


def read_buffers(ckpt: Any) -> Buffers:
    """Read and check ``betas`` / ``alphas_cumprod`` (top-level keys): a float dtype, 1-D, 2 … 100 000 values,
    at most 1 MB; usable when finite, 0 ≤ β ≤ 1 and ᾱ in [0, 1] and not increasing."""
    from sdlens.io.quant import stored_dtype

    present = [k for k in KEYS if k in ckpt.tensors]
    if not present:
        return Buffers(None, None)
    arrays: dict[str, np.ndarray] = {}
    dtype = "F32"
    for key in present:
        t = ckpt.tensors[key]
        dt = stored_dtype(t)
        if dt not in FLOAT_DTYPES:
            return Buffers(None, None, f"{key} is stored as {dt}, not a float table")
        if len(t.shape) != 1 or not 2 <= t.shape[0] <= MAX_TIMESTEPS or t.nbytes > MAX_BUFFER_BYTES:
            return Buffers(
                None, None, f"{key} has shape {list(t.shape)[:4]}, not a table of 2 to {MAX_TIMESTEPS} steps"
            )
        arrays[key] = ckpt.read_numpy(key).astype(np.float64).reshape(-1)
        dtype = dt if dt == "BF16" else dtype
    b, ac = arrays.get("betas"), arrays.get("alphas_cumprod")
    if b is not None and ac is not None and b.size != ac.size:
        return Buffers(None, None, f"betas ({b.size}) and alphas_cumprod ({ac.size}) differ in length")
    if ac is None:
        ac = np.cumprod(1 - b)
    if b is None:
        with np.errstate(divide="ignore", invalid="ignore"):
            b = 1 - ac / np.concatenate([[1.0], ac[:-1]])
    if not (np.all(np.isfinite(b)) and np.all(np.isfinite(ac))):
        return Buffers(None, None, "the buffers hold NaN or infinite values")
    if np.any(b < 0) or np.any(b > 1) or np.any(ac < 0) or np.any(ac > 1) or np.any(np.diff(ac) > 1e-7):
        return Buffers(None, None, "the buffers are not a noise schedule (β outside [0, 1] or ᾱ increasing)")
    info = analyse_schedule(arrays.get("betas"), arrays.get("alphas_cumprod"), present, dtype)
    return Buffers(info, b, None, bool(ac[-1] == 0.0))
