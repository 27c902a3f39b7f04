"""``sdlens schedule`` output: one comparison table, then per schedule its curve summary, its steps under the
chosen spacing, the spacings compared, and — for a checkpoint — its buffers and prediction-type evidence."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.table import Table

from sdlens.render.safe_text import safe
from sdlens.render.text import bullets, print_wide_or_narrow

if TYPE_CHECKING:
    from sdlens.analysis.schedule_report import ScheduleView

MAX_ROWS = 30  # step tables longer than this show their first and last steps


def _g(x: float | None, digits: int = 4) -> str:
    if x is None or x != x:
        return "—"
    if x == float("inf"):
        return "∞"
    return f"{x:.{digits}g}"


def _spacing_of(v: ScheduleView, spacing: str | None) -> str:
    own = str(v.schedule.config.get("timestep_spacing", "leading"))
    return spacing or own if v.schedule.kind == "discrete" else "own"


def _prediction(pred: Any, console: Console) -> None:
    """The prediction type's one line, then its evidence, one bullet each."""
    if pred is None:
        return
    if not hasattr(pred, "summary"):  # a family's default, in words
        console.print(f"prediction: {safe(pred)}", highlight=False)
        return
    console.print(f"prediction: {safe(pred.summary())}", highlight=False)
    bullets(
        console,
        [
            f"{safe(e.source)}: {safe(e.says)} ({safe(e.strength)}){' — ' + safe(e.detail) if e.detail else ''}"
            for e in pred.evidence
        ],
        mark="·",
        indent=4,
    )


def comparison_table(views: Sequence[ScheduleView], spacing: str | None, wide: bool = True) -> Table:
    """One row per schedule; the narrow form leaves out T and the β range (each schedule's section has them)."""
    t = Table(title="schedules", title_justify="left", header_style="bold", box=box.SIMPLE_HEAD)
    t.add_column("schedule", no_wrap=True)
    cols = (
        ("T", "β", "ᾱ_T", "SNR_T", "σ_max", "first t", "first σ")
        if wide
        else ("ᾱ_T", "SNR_T", "σ_max", "first t", "first σ")
    )
    for col in cols:
        t.add_column(col, justify="right", no_wrap=True)
    for v in views:
        tr = v.train
        row = v.row(_spacing_of(v, spacing))
        beta = f"{_g(tr['beta_start'], 3)}–{_g(tr['beta_end'], 3)}" if v.schedule.kind == "discrete" else "—"
        cells = [
            _g(tr["alpha_bar_T"], 3),
            "0" if tr["zero_terminal_snr"] else _g(tr["terminal_snr"], 2),
            _g(tr["sigma_max"], 3),
            _g(row.first_t, 4),
            _g(row.sigmas[0], 3),
        ]
        t.add_row(safe(v.schedule.name, 28), *([str(tr["timesteps"]), beta] if wide else []), *cells)
    return t


def steps_table(v: ScheduleView, spacing: str) -> Table:
    row = v.row(spacing)
    t = Table(
        title=f"{v.steps} steps, {row.spacing} spacing" if row.spacing != "own" else f"{v.steps} steps",
        title_justify="left",
        header_style="bold",
    )
    t.add_column("step", justify="right")
    t.add_column("t", justify="right")
    t.add_column("σ (Euler)" if v.schedule.kind == "discrete" else "σ", justify="right")
    ddim = bool(row.ddim_timesteps)
    if ddim:
        t.add_column("DDIM t", justify="right")
        t.add_column("DDIM σ(η=1)", justify="right")
    n = len(row.timesteps)
    shown = list(range(n)) if n <= MAX_ROWS else [*range(8), -1, *range(n - 4, n)]
    for i in shown:
        if i < 0:
            t.add_row("…", "…", "…", *(["…", "…"] if ddim else []))
            continue
        cells = [str(i + 1), _g(row.timesteps[i], 6), _g(row.sigmas[i])]
        if ddim:
            cells += [str(row.ddim_timesteps[i]), _g(row.ddim_sigma["eta=1"][i])]
        t.add_row(*cells)
    t.add_row("end", "", _g(row.sigmas[-1]), *(["", ""] if ddim else []))
    return t


def spacing_table(v: ScheduleView) -> Table:
    t = Table(title="spacings compared", title_justify="left", header_style="bold")
    for col in ("spacing", "first t", "last t", "reaches t = T−1", "first σ"):
        t.add_column(col, justify="left" if col == "spacing" else "right")
    for r in v.sampling:
        t.add_row(
            r.spacing,
            _g(r.first_t, 6),
            _g(r.timesteps[-1], 6),
            "yes" if r.reaches_end else "no",
            _g(r.sigmas[0]),
        )
    return t


def render_schedules(views: Sequence[ScheduleView], console: Console, *, spacing: str | None = None) -> None:
    if len(views) > 1:
        print_wide_or_narrow(console, lambda wide: comparison_table(views, spacing, wide))
    for v in views:
        s = v.schedule
        console.print()
        console.rule(f"[bold]{safe(s.name)}[/] — {safe(s.label)}", align="left")
        lines = [f"source: {safe(s.source)}"]
        if v.file is not None:
            f = v.file
            fam = f.get("family_name") or "unknown family"
            lines.append(f"file: {safe(f['path'])} ({safe(fam)})")
            lines += [f"marker {safe(m)}" for m in f.get("markers") or []]
        for line in lines:
            console.print(line, highlight=False)
        _prediction(v.prediction, console)
        tr = v.train
        console.print(
            f"training: {tr['timesteps']} timesteps, β {_g(tr['beta_start'])} → {_g(tr['beta_end'])}, "
            f"ᾱ {_g(tr['alpha_bar_0'])} → {_g(tr['alpha_bar_T'])}, σ {_g(tr['sigma_min'])} → {_g(tr['sigma_max'])}; "
            f"terminal SNR {'0 (zero terminal SNR)' if tr['zero_terminal_snr'] else _g(tr['terminal_snr'], 3)}",
            highlight=False,
        )
        chosen = _spacing_of(v, spacing)
        console.print(steps_table(v, chosen))
        if s.kind == "discrete":
            console.print(spacing_table(v))
        notes = [safe(n) for n in v.notes] + [safe(r.note) for r in v.sampling if r.note]
        bullets(console, notes)
