"""Demo section: ``sdlens inspect`` over every zoo file, one line each, then the full report of a few."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table


def section(zoo: dict, out_dir: Path, console: Console) -> int:
    """Inspect every entry of ``zoo`` (name -> zoo entry); the number of files not identified as built."""
    from sdlens.analysis.inspect import human_bytes, inspect
    from sdlens.render.inspect_view import render_report
    from sdlens.render.jsonout import dumps
    from sdlens.render.plots import plot_component_sizes

    reports = []
    table = Table(title="sdlens inspect over the zoo", title_justify="left")
    for col in ("file", "built as", "sdlens says", "ok", "time"):
        table.add_column(col, overflow="fold")
    wrong = 0
    for entry in zoo.values():
        t = time.perf_counter()
        r = inspect(entry.path)
        dt = time.perf_counter() - t
        reports.append(r)
        ok = entry.matches(r)
        wrong += not ok
        table.add_row(
            entry.path.name,
            entry.truth_text,
            f"{r.family_name} · {r.kind}"
            + (f" · {', '.join(r.variants)}" if r.variants else "")
            + f" · {r.precision} · {human_bytes(r.file_size)}",
            "[green]✓[/]" if ok else "[red]✗[/]",
            f"{dt * 1000:.0f} ms",
        )
    console.print(table)
    (out_dir / "inspect.json").write_text(dumps(reports))
    text_console = Console(record=True, width=120, file=open((out_dir / "inspect.txt"), "w"))  # noqa: SIM115
    for r in reports:
        render_report(r, text_console)
    text_console.file.close()
    plot = plot_component_sizes(reports, out_dir / "inspect-components.png")
    for name in ("sdxl_full_fp16", "sd1_ema_ckpt", "lora_kohya_sdxl"):
        if name in zoo:
            render_report(next(r for r in reports if Path(r.path) == zoo[name].path), console)
    big = zoo.get("sdxl_full_fp16")
    if big is not None:
        console.print(
            f"(the full-size SDXL file is {human_bytes(big.path.stat().st_size)}, sparse on disk: inspect reads only its header)"
        )
    console.print(f"\n[bold]written:[/] {out_dir / 'inspect.json'}, {out_dir / 'inspect.txt'}, {plot}")
    return wrong
