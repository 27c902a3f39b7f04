"""``sdlens schedule --plot``: ᾱ_t, log SNR_t and σ_t of every schedule in one figure, against t / T."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sdlens.render.figure_file import save_figure
from sdlens.render.safe_text import plot_label

if TYPE_CHECKING:
    from sdlens.analysis.schedule_report import ScheduleView

LOG_SNR_FLOOR = -20.0  # zero terminal SNR (log SNR = −∞) drawn at the panel's floor, marked


def plot_schedules(views: Sequence[ScheduleView], path: str | Path) -> Path:
    """Three panels side by side (ᾱ linear, log SNR, σ on a log axis), one line per schedule, one legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 5.2), constrained_layout=True)
    cmap = plt.get_cmap("tab10")
    styles = ("-", "--", "-.", ":")
    groups: list[tuple[list[str], ScheduleView]] = []  # identical curves drawn once, named together
    for v in views:
        name = v.schedule.name if v.file is None else f"{v.schedule.name} ({Path(v.file['path']).name})"
        if v.schedule.config.get("use_dynamic_shifting"):
            name += f" at {v.res[0]}×{v.res[1]}"
        same = next((g for g in groups if np.array_equal(g[1].curve.alpha_bar, v.curve.alpha_bar)), None)
        if same is None:
            groups.append(([name], v))
        else:
            same[0].append(name)
    for i, (names, v) in enumerate(groups):
        c = v.curve
        x = (c.t + 1) / len(c.t)  # t / T, 1 = most noise
        colour, style = cmap(i % 10), styles[i % len(styles)]
        finite = np.isfinite(c.alpha_bar)
        label = plot_label(" = ".join(names) + ("" if finite.any() else " (no finite values)"), 90)
        axes[0].plot(x, c.alpha_bar, style, color=colour, lw=1.8, label=label)
        log_snr = np.clip(c.log_snr, LOG_SNR_FLOOR, None)
        axes[1].plot(x, log_snr, style, color=colour, lw=1.8)
        zero = ~np.isfinite(c.log_snr) | (c.log_snr < LOG_SNR_FLOOR)
        if zero.any():  # markers staggered so that several zero-SNR schedules stay visible
            axes[1].plot(x[zero], log_snr[zero] + 0.6 * i, "v", color=colour, ms=7)
        sigma = np.where(np.isfinite(c.sigma), c.sigma, np.nan)
        axes[2].plot(x, sigma, style, color=colour, lw=1.8)
    axes[0].set(title="ᾱ_t (signal kept)", xlabel="t / T", ylabel="ᾱ_t", ylim=(-0.02, 1.02))
    axes[1].set(
        title="log SNR_t (▼ = zero terminal SNR, drawn at the floor)",
        xlabel="t / T",
        ylabel="ln(ᾱ / (1 − ᾱ))",
        ylim=(LOG_SNR_FLOOR - 1, None),
    )
    axes[2].set(title="σ_t = √((1 − ᾱ) / ᾱ)", xlabel="t / T", ylabel="σ_t (log scale)", yscale="log")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.set_xlim(0, 1)
    fig.legend(loc="outside lower center", ncol=min(len(groups), 3), fontsize=9, frameon=False)
    fig.suptitle(
        "Noise schedules: variance-preserving equivalents (flow: ᾱ = (1−s)² / ((1−s)² + s²); EDM: ᾱ = 1 / (1 + σ²), over its Karras σ ramp)",
        fontsize=11,
    )
    return save_figure(fig, path)
