"""The ``sdlens`` command line: a thin layer over the Python API (``sdlens.analysis``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from sdlens.errors import SdlensError

app = typer.Typer(
    name="sdlens",
    help="See inside Stable Diffusion family checkpoints: what a file is, what changed, how models relate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


def _fail(e: SdlensError) -> None:
    from rich.markup import escape

    err.print(f"[bold red]sdlens: error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)


def _as_error(path: Path, e: Exception) -> SdlensError:
    """The safety net of a per-file loop: an unexpected exception while handling ``path`` becomes one line
    naming it (``SDLENS_DEBUG=1`` re-raises instead, traceback and all)."""
    from sdlens.io.base import as_checkpoint_error, debug

    if debug():
        raise e
    return as_checkpoint_error(path, e, "cannot handle this file")


def _progress_bar(total: int, description: str):
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    p = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    task = p.add_task(description, total=total)
    return p, lambda n: p.advance(task, n)


@app.command()
def inspect(
    paths: Annotated[list[Path], typer.Argument(help="Checkpoint files (.safetensors .ckpt .pt .bin), diffusers folders, *.index.json, or folders of models.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON (schema in docs/inspect-json.md).")] = False,
    hashes: Annotated[bool, typer.Option("--hash", help="sha256, AutoV2 and the old A1111 hash (reads the whole file).")] = False,
    scan: Annotated[bool, typer.Option("--scan", help="Read all data: NaN/Inf and all-zero tensors.")] = False,
    brief: Annotated[bool, typer.Option("--brief", help="Only the one-line summary per file.")] = False,
) -> None:
    """What is this file? Family, layout, components, precision, EMA, metadata, problems: from the header."""
    from sdlens.analysis.inspect import inspect as run_inspect
    from sdlens.io.open import expand_paths, open_checkpoint
    from sdlens.render.jsonout import dumps

    results: list[dict | object] = []
    failed = 0
    for path in expand_paths(paths):
        try:
            progress = None
            bar = None
            if hashes or scan:
                with open_checkpoint(path) as ck:
                    total = (ck.file_size if hashes else 0) + (ck.tensor_bytes if scan else 0)
                bar, progress = _progress_bar(total, path.name)
                bar.start()
            try:
                report = run_inspect(path, hashes=hashes, scan=scan, progress=progress)
            finally:
                if bar is not None:
                    bar.stop()
        except Exception as e:  # sdlens's own errors, and the safety net for anything else
            failed += 1
            if not isinstance(e, SdlensError):
                e = _as_error(path, e)
            _fail(e)
            if json_out:
                results.append({"path": str(path), "error": e.problem})
            continue
        if json_out:
            results.append(report)
        else:
            from sdlens.render.inspect_view import render_report

            render_report(report, out, brief=brief)
    if json_out:
        print(dumps(results[0] if len(results) == 1 else results))
    if failed:
        raise typer.Exit(1)


@app.command()
def diff(
    a: Annotated[Path, typer.Argument(help="First checkpoint (any format or layout).")],
    b: Annotated[Path, typer.Argument(help="Second checkpoint.")],
    metric: Annotated[str, typer.Option(help="Metric shown per tensor with --by key: l2, l1, l0, cos or all.")] = "all",
    by: Annotated[str, typer.Option(help="Table granularity: component, block, type or key.")] = "component",
    json_file: Annotated[Path | None, typer.Option("--json", help="Write every number to this JSON file.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write plots: FILE.png/.svg (histograms) and FILE-blocks.png/.svg.")] = None,
    time_embed: Annotated[str, typer.Option(help="Merge block of time_embed / label_emb: IN00 (A1111 mergers) or BASE (sd-mecha).")] = "IN00",
) -> None:
    """What changed between two checkpoints: verdict in plain words, then per component / block / type / tensor."""
    from sdlens.analysis.diff import diff as run_diff
    from sdlens.io.open import open_checkpoint
    from sdlens.render.diff_view import render_diff

    if metric not in ("l2", "l1", "l0", "cos", "all") or by not in ("component", "block", "type", "key"):
        raise SdlensError(None, f"unknown --metric {metric!r} or --by {by!r}")
    if time_embed not in ("IN00", "BASE"):
        raise SdlensError(None, "--time-embed must be IN00 or BASE")
    with open_checkpoint(a) as ck:
        total = ck.tensor_bytes
    bar, progress = _progress_bar(total, f"diff {a.name}")
    with bar:
        result = run_diff(a, b, time_embed=time_embed, progress=progress)
    render_diff(result, out, by=by, metric=metric)
    if json_file is not None:
        from sdlens.io.atomic import write_text_atomic
        from sdlens.render.jsonout import dumps

        write_text_atomic(json_file, dumps(result))
        out.print(f"JSON written to {json_file}", soft_wrap=True)
    if plot is not None:
        from sdlens.render.diff_figures import write_diff_plots

        for p in write_diff_plots(result, plot):
            out.print(f"plot written to {p}", soft_wrap=True)


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Where to write the zoo, tables and plots.")] = Path("demo-out"),
) -> None:
    """Build a small synthetic model zoo and run every landed capability on it."""
    from sdlens.demo import run_demo

    run_demo(out_dir, out)


@app.command()
def version() -> None:
    """Print the sdlens version."""
    from sdlens import __version__

    print(__version__)


def _register_commands() -> None:
    """Commands that live in their own modules (``sdlens.commands.<name>.register(app)``); importing them is
    cheap: each imports its heavy dependencies inside the command body."""
    import importlib
    import pkgutil

    import sdlens.commands as pkg

    for m in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if not m.name.startswith("_"):
            importlib.import_module(f"sdlens.commands.{m.name}").register(app)


_register_commands()


EXIT_CODES = {0: "success", 1: "inspect: some of the files could not be read (each named on its own line)",
              2: "bad input: a file, folder or option (one line naming it and the problem)",
              3: "internal error: a bug in sdlens (one line; SDLENS_DEBUG=1 shows the traceback)",
              130: "interrupted"}


def main(argv: list[str] | None = None) -> None:
    """The console entry point; exit codes in ``EXIT_CODES``. Whatever happens, one line, no traceback
    (unless ``SDLENS_DEBUG=1``)."""
    from sdlens.io.base import debug

    try:
        app(args=argv, prog_name="sdlens")
    except SdlensError as e:  # anything the commands did not catch themselves
        _fail(e)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as e:  # the last safety net: a bug, reported in one line
        if debug():
            raise
        from sdlens.io.limits import clip

        _fail(SdlensError(None, f"internal error: {type(e).__name__}: {clip(str(e))} "
                                "(a bug in sdlens; SDLENS_DEBUG=1 shows the traceback)"))
        sys.exit(3)


if __name__ == "__main__":
    main()
