"""What the LDM schedule buffers and SDXL-era marker keys say about how a model was trained."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

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


def analyse_schedule(betas=None, alphas_cumprod=None, buffers: list[str] | None = None) -> ScheduleInfo | None:
    """Classify the noise schedule from ``betas`` (preferred) or ``alphas_cumprod`` (1-D tensors)."""
    import torch

    if betas is None and alphas_cumprod is None:
        return None
    if betas is None:
        ac = alphas_cumprod.double()
        prev = torch.cat([ac.new_ones(1), ac[:-1]])
        betas = 1 - ac / prev
    betas = betas.double()
    n = betas.numel()
    ac = torch.cumprod(1 - betas, 0) if alphas_cumprod is None else alphas_cumprod.double()
    scaled = torch.linspace(STANDARD_BETA_START**0.5, STANDARD_BETA_END**0.5, n, dtype=torch.float64) ** 2
    linear = torch.linspace(float(betas[0]), float(betas[-1]), n, dtype=torch.float64)
    if torch.allclose(betas, scaled, rtol=2e-3, atol=1e-7):
        kind = "scaled-linear (standard SD, 0.00085 → 0.012)"
    elif torch.allclose(betas, linear, rtol=2e-3, atol=1e-7):
        kind = "linear"
    else:
        kind = "non-standard"
    ztsnr = bool(ac[-1].abs() < 1e-6) or bool(betas[-1] >= 0.999)
    return ScheduleInfo(n, kind, float(betas[0]), float(betas[-1]), ztsnr, sorted(buffers or []))
