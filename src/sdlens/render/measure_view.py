"""The table of ``sdlens arch --measure``: measured time and memory beside the estimates, and why they differ."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from sdlens.analysis.measure import MeasureReport, Row
from sdlens.render.arch_view import gb, tf
from sdlens.render.safe_text import safe


def _value(r: Row, v: float | None) -> str:
    if v is None:
        return "—"
    if r.unit == "s":
        return f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.2f} s"
    if r.unit == "flop/s":
        return tf(v) + "/s"
    return gb(v)


def _ratio(r: Row) -> str:
    if r.ratio is None:
        return ""
    text = f"{r.ratio:.2f}×"
    return f"[yellow]{text}[/]" if r.note else text


def render_measure(m: MeasureReport, console: Console) -> None:
    s = m.settings
    console.rule(f"sdlens arch --measure · {safe(m.name)}")
    console.print(
        f"[bold]{safe(m.name)}[/] · {safe(m.cls_name)} · {safe(m.source)} · {m.params:,} parameters, random weights",
        highlight=False,
    )
    console.print(
        f"{s['device']} ({safe(s['device_name'])}) · {s['dtype']} · attention {s['attn']}"
        + (" · torch.compile" if s["compile"] else "")
        + f" · {s['res'][0]}×{s['res'][1]} (latent {s['latent'][1]}×{s['latent'][0]}) · denoiser batch "
        f"{s['denoiser_batch']}"
        + (" (CFG)" if s["cfg"] else "")
        + f" · {m.times.get('untimed_forwards', s['warmup'])} untimed forwards, {s['runs']} timed",
        highlight=False,
    )
    t = Table(title="measured vs estimate (one denoiser forward = one sampling step)", title_justify="left")
    t.add_column("", no_wrap=True)
    for col in ("measured", "estimate", "ratio"):
        t.add_column(col, justify="right", no_wrap=True)
    marks: list[str] = []
    for r in m.rows:
        label = r.quantity
        if r.note:
            marks.append(r.note)
            label += f" [{len(marks)}]"
        t.add_row(label, _value(r, r.measured), _value(r, r.estimate) if r.estimate else "", _ratio(r))
    console.print(t)
    console.print(
        f"{s['steps']} steps ≈ {_value(m.row('step (median forward)'), m.times['denoise_s'])} of denoising per "
        f"{'batch' if s['batch'] > 1 else 'image'}; {tf(m.flops_per_forward)} per forward (traced)",
        highlight=False,
    )
    for i, note in enumerate(marks, 1):
        console.print(f"[yellow]\\[{i}][/] {safe(note)}", highlight=False)
    for note in m.notes:
        console.print(f"[dim]note: {safe(note)}[/]", highlight=False)
    console.print(f"[dim]memory: {safe(m.memory['method'])}[/]", highlight=False)
