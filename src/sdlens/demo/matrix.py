"""Demo section: ``sdlens matrix`` over a family with known relations."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console


def section(zoo_dir: Path, out_dir: Path, console: Console) -> None:
    """matrix over a family with known relations (fine-tunes, a merge at 0.3, a VAE swap, fp16, SDXL)."""
    import time

    from sdlens.analysis.matrix import matrix as run_matrix
    from sdlens.render.matrix_view import render_matrix, write_outputs
    from sdlens.testing.zoo_matrix import MERGE_ALPHA, build_matrix_zoo

    console.rule("[bold]sdlens matrix")
    models = build_matrix_zoo(zoo_dir / "matrix-family")
    t0 = time.perf_counter()
    result = run_matrix(list(models.values()))
    dt = time.perf_counter() - t0
    render_matrix(result, console)
    written = write_outputs(result, out_dir / "matrix")
    m = result.matrix("denoiser")
    i = {Path(n).stem: k for k, n in enumerate(result.names)}
    ratio = m[i["base"], i["merge"]] / m[i["base"], i["unet_ft"]]
    console.print(
        f"merge at α={MERGE_ALPHA}: d(base, merge) / d(base, unet_ft) = {ratio:.6f} "
        f"(expected {1 - MERGE_ALPHA:.6f}); {len(models)} models in {dt:.1f} s; "
        f"{len(written)} files in {out_dir / 'matrix'}",
        soft_wrap=True,
    )
