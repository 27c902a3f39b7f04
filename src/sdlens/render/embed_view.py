"""``sdlens embed`` output: the console tables and the files (CSV matrices and drift tables, JSON, figures)."""

from __future__ import annotations

import re
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sdlens.analysis.embed import METRICS, Drift, EmbedResult, drift_csv, matrix_csv
from sdlens.choices import EmbedMethod, check_choice
from sdlens.io.atomic import write_text_atomic
from sdlens.render.safe_text import NAME_LIMIT, printable, safe
from sdlens.render.text import path_line, plural, wrap_items


def safe_name(name: str) -> str:
    """A file-name-safe version of a model or encoder name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


WRITES = ("*.csv", "*.png", "embed.json")  # what write_embed_outputs writes in its folder


def write_embed_outputs(result: EmbedResult, out_dir: str | Path, method: EmbedMethod = "pca") -> list[Path]:
    """Per model and encoder ``<metric>-<encoder>-<model>.csv``; per encoder ``pca-<encoder>.png`` (and
    ``tsne-<encoder>.png``), ``drift-<encoder>-<model>.csv`` and ``drift-<encoder>.png``; ``embed.json``."""
    check_choice(method, "method", EmbedMethod)
    from sdlens.render.embed_plots import plot_drift, plot_maps
    from sdlens.render.jsonout import dumps

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    labels = result.labels
    for e in result.embeddings:
        for metric in METRICS:
            p = out / f"{metric}-{safe_name(e.encoder)}-{safe_name(e.model)}.csv"
            written.append(write_text_atomic(p, matrix_csv(labels, e.matrices[metric])))
    for d in result.drift:
        p = out / f"drift-{safe_name(d.encoder)}-{safe_name(d.model)}.csv"
        written.append(write_text_atomic(p, drift_csv(d)))
    for enc in result.encoders():
        written.append(plot_maps(result, enc, out / f"pca-{safe_name(enc)}.png", "pca"))
        if method == "tsne":
            written.append(plot_maps(result, enc, out / f"tsne-{safe_name(enc)}.png", "tsne"))
        p = plot_drift(result, enc, out / f"drift-{safe_name(enc)}.png")
        if p is not None:
            written.append(p)
    written.append(write_text_atomic(out / "embed.json", dumps(result)))
    return written


def render_drift(d: Drift, console: Console, top: int = 10) -> None:
    t = Table(
        title=f"{safe(d.model)} vs {safe(d.ref)} · {safe(d.encoder)}: mean cosine {d.mean_cosine:.6f}",
        title_justify="left",
    )
    t.add_column("prompt", overflow="fold")
    t.add_column("text", overflow="fold", max_width=60)
    t.add_column("cosine", justify="right")
    t.add_column("drift", justify="right")
    for r in d.rows[:top]:
        t.add_row(safe(r.label), safe(r.text), f"{r.cosine:.6f}", f"{r.drift:.2e}")
    if len(d.rows) > top:
        t.caption = f"{len(d.rows) - top} more prompts drifted less (all in the CSV)"
    console.print(t)


def render_embed(result: EmbedResult, console: Console, top: int = 10) -> None:
    console.print(f"sdlens embed: {plural(len(result.prompts), 'prompt')}", style="bold")
    notes: list[str] = []
    for m in result.models:  # one model a line (its name whole), its encoders under it
        path_line(console, "", printable(m.name, NAME_LIMIT) + (" (ref)" if m.name == result.ref else ""))
        for e in (e for e in result.embeddings if e.model == m.name):
            wrap_items(
                console,
                [
                    safe(f"{m.family}: {e.label} ({e.encoder})"),
                    safe(f"layer {e.layer}"),
                    safe(f"pool {e.pool}"),
                    f"dim {e.dim}",
                ],
                indent=2,
            )
            notes += [f"{m.name} · {e.label}: {n}" for n in e.notes]
        notes += [f"{m.name}: skipped {s}" for s in m.skipped]
    for n in dict.fromkeys(notes):
        console.print(f"  [dim]note:[/] {safe(n)}", highlight=False)
    truncated = {lab for e in result.embeddings for lab in e.truncated}
    if truncated:
        console.print(
            f"[yellow]cut at the encoder's length:[/] {', '.join(safe(t) for t in sorted(truncated))}",
            highlight=False,
        )
    for d in result.drift:
        render_drift(d, console, top)
