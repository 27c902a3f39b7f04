"""Demo section: ``sdlens arch --compare`` and block diagrams (no weights)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console


def section(zoo_dir: Path, out_dir: Path, console: Console) -> None:
    """The comparison of the eight architectures at 512×512 (quick; ``sdlens arch --compare all`` for the native
    sizes), and two block diagrams."""
    import time

    from sdlens.analysis.cost import compare
    from sdlens.render.arch_diagram import write_block_diagram
    from sdlens.render.arch_view import render_compare
    from sdlens.render.jsonout import dumps

    console.rule("sdlens arch")
    t0 = time.perf_counter()
    reports = compare("all", res=(512, 512))
    render_compare(reports, console)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "arch-compare.json").write_text(dumps(reports))
    by_id = {r.model: r for r in reports}
    svg = write_block_diagram(by_id["sdxl"], out_dir / "arch-sdxl.svg")
    flux = write_block_diagram(by_id["flux_dev"], out_dir / "arch-flux.svg")
    console.print(
        f"\n[bold]written:[/] {out_dir / 'arch-compare.json'}, {svg}, {flux} "
        f"({time.perf_counter() - t0:.1f} s, no weights)"
    )
    _measure(out_dir, console)


def _measure(out_dir: Path, console: Console) -> None:
    """``sdlens arch CONFIG --measure`` of a tiny UNet on the CPU: measured time and memory beside the estimates
    (the released configs are measured on a GPU: ``benchmarks/bench_measure.py``)."""
    import json

    from sdlens.analysis.measure import measure
    from sdlens.render.jsonout import dumps
    from sdlens.render.measure_view import render_measure
    from sdlens.testing.measure_configs import UNET

    config = out_dir / "arch-measure-tiny-unet.json"
    config.write_text(json.dumps(UNET))
    report = measure(config, device="cpu", res=(256, 256), warmup=1, runs=3)
    render_measure(report, console)
    (out_dir / "arch-measure.json").write_text(dumps(report))
