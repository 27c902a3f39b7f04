"""``sdlens demo``: the synthetic zoo and every command on it (the sections live in ``sdlens.demo``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def run(
    out_dir: Annotated[
        Path, typer.Option("--out", metavar="DIR", help="Where to write the zoo, tables and plots.")
    ] = Path("demo-out"),
) -> None:
    """Build a small synthetic model zoo and run every landed capability on it."""
    from sdlens import console
    from sdlens.demo import run_demo

    console.output_path(out_dir, "--out")
    run_demo(out_dir, console.out)
