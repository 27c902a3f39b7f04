"""What the LDM schedule buffers and SDXL-era marker keys say about how a model was trained."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

STANDARD_BETA_START = 0.00085
STANDARD_BETA_END = 0.012


@dataclass
class ScheduleInfo:
    timesteps: int
    kind: str  # "scaled-linear (standard SD)" | "linear" | "non-standard"
    beta_start: float
    beta_end: float
    zero_terminal_snr: bool
    buffers: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def analyse_schedule(
    betas=None, alphas_cumprod=None, buffers: list[str] | None = None
) -> ScheduleInfo | None:
    """Classify the noise schedule from ``betas`` (preferred) or ``alphas_cumprod`` (1-D numpy arrays)."""
    if betas is None and alphas_cumprod is None:
        return None
    if betas is None:
        ac = np.asarray(alphas_cumprod, dtype=np.float64)
        betas = 1 - ac / np.concatenate([[1.0], ac[:-1]])
    betas = np.asarray(betas, dtype=np.float64).reshape(-1)
    n = betas.size
    ac = (
        np.cumprod(1 - betas)
        if alphas_cumprod is None
        else np.asarray(alphas_cumprod, dtype=np.float64).reshape(-1)
    )
    scaled = np.linspace(STANDARD_BETA_START**0.5, STANDARD_BETA_END**0.5, n) ** 2
    linear = np.linspace(betas[0], betas[-1], n)
    if np.allclose(betas, scaled, rtol=2e-3, atol=1e-7):
        kind = "scaled-linear (standard SD, 0.00085 → 0.012)"
    elif np.allclose(betas, linear, rtol=2e-3, atol=1e-7):
        kind = "linear"
    else:
        kind = "non-standard"
    ztsnr = bool(abs(ac[-1]) < 1e-6 or betas[-1] >= 0.999)
    return ScheduleInfo(n, kind, float(betas[0]), float(betas[-1]), ztsnr, sorted(buffers or []))
