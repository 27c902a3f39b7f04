"""``sdlens demo``: build the synthetic model zoo and run every landed capability on it, writing tables,
JSON and plots to one folder. The same zoo backs the test suite, so what the demo shows is what is tested.

One module per section, each with ``section(zoo_dir, out_dir, console)``, run in the order of :data:`SECTIONS`
(``inspect`` first: it builds nothing, it checks that every zoo file is identified as built)."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

SECTIONS = (
    "diff",
    "arch",
    "schedule",
    "convert",
    "embed",
    "matrix",
    "recipe",
    "lineage",
    "delta",
    "quant",
)  # after inspect, in this order


def run_demo(out_dir: Path, console: Console) -> None:
    import importlib

    from sdlens.demo import inspect
    from sdlens.testing.zoo import build_zoo

    out_dir.mkdir(parents=True, exist_ok=True)
    zoo_dir = out_dir / "zoo"
    t0 = time.perf_counter()
    with console.status("building the synthetic model zoo (real architectures, random weights)…"):
        zoo = build_zoo(zoo_dir)
    console.print(f"[bold]zoo:[/] {len(zoo)} checkpoints in {zoo_dir} ({time.perf_counter() - t0:.1f} s)")
    wrong = inspect.section(zoo, out_dir, console)
    for name in SECTIONS:
        importlib.import_module(f"sdlens.demo.{name}").section(zoo_dir, out_dir, console)
    if wrong:
        console.print(f"[bold red]{wrong} zoo files were not identified as built[/]")
        raise SystemExit(1)
    console.print(
        f"[green]all {len(zoo)} zoo files identified as built[/] in {time.perf_counter() - t0:.1f} s"
    )
