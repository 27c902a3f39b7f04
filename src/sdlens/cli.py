"""The ``sdlens`` command line: a thin layer over the Python API (``sdlens.analysis``).

Exit codes (the same for every command, documented in the README): 0 done; 1 the command ran and found problems
in what it was asked to check (a file that cannot be read or that has NaN/Inf with ``inspect``, a failed
verification with ``convert``); 2 usage or input error (a wrong option, a missing or unusable input, an output
that may not be written); 3 internal error (a bug, in one line); 130 interrupted.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from sdlens.errors import SdlensError
from sdlens.render.safe_text import safe, safe_error

EXIT_PROBLEMS = 1  # the file has problems (asked to check)
EXIT_USAGE = 2  # usage or input error
EXIT_INTERNAL = 3  # a bug in sdlens (reported in one line)


def _plain_help(params: list[Any]) -> list[Any]:
    """Help text with words, not Python types: no ``<bool>`` after flags, ``PATH...`` rather than
    ``{paths}... <list[Path]>``. Arguments and options get an upper-case metavar (their own where set)."""
    for p in params:
        if getattr(p, "_sdlens_plain", False):
            continue
        p._sdlens_plain = True
        if getattr(p, "param_type_name", "") == "argument":
            name = (p.metavar or p.name.upper()) + ("..." if p.nargs != 1 and not (p.metavar or "").endswith("...") else "")
            p.metavar = name
            usage = name if p.required else f"[{name}]"
            p.display_type_rich = lambda ctx=None: None
            p._usage_display_name = lambda usage=usage: usage
            p.get_usage_pieces = lambda ctx=None, usage=usage: [usage]
        elif getattr(p, "is_flag", False) or getattr(p, "count", False):
            p.metavar = ""
        elif p.metavar is None:
            p.metavar = "N" if _is_int(p) else p.name.upper()
    return params


def _is_int(p: Any) -> bool:
    annotation = getattr(getattr(p, "type_descriptor", None), "annotation", None)
    if annotation is not None:
        return annotation in (int, int | None)
    return getattr(getattr(p, "type", None), "name", "") == "integer"


class _Command(TyperCommand):
    def get_params(self, ctx):  # noqa: ANN001, ANN201 - click's signature
        return _plain_help(super().get_params(ctx))


class _Group(TyperGroup):
    """Every command's :class:`SdlensError` becomes one line on stderr and exit 2; Ctrl-C exit 130."""

    def get_params(self, ctx):  # noqa: ANN001, ANN201
        return _plain_help(super().get_params(ctx))

    def invoke(self, ctx):  # noqa: ANN001, ANN201
        try:
            return super().invoke(ctx)
        except SdlensError as e:
            _fail(e)
            raise typer.Exit(getattr(e, "exit_code", EXIT_USAGE)) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None


app = typer.Typer(
    name="sdlens",
    cls=_Group,
    help="See inside Stable Diffusion family checkpoints: what a file is, what changed, how models relate.\n\n"
    "Exit codes: 0 done; 1 problems found in what was checked; 2 usage or input error; 3 internal error (a bug); 130 interrupted.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(emoji=False)  # emoji=False: ":name:" in a key or a path is shown as written
err = Console(stderr=True, emoji=False)


def choice(value: str, option: str, allowed: tuple[str, ...] | list[str]) -> str:
    """``value`` if it is one of ``allowed``, else a usage error that names only ``option``."""
    if value not in allowed:
        raise SdlensError(None, f"{option} must be {', '.join(allowed[:-1])} or {allowed[-1]} (got {value!r})")
    return value


def output_path(path: Path, option: str) -> Path:
    """An output file or folder: its parent folder must exist (sdlens never creates folder trees by surprise)."""
    parent = path.parent
    if not parent.is_dir():
        raise SdlensError(path, f"{option}: folder {str(parent)!r} does not exist")
    return path


def _fail(e: SdlensError) -> None:
    err.print(f"[bold red]sdlens: error:[/] {safe_error(e)}", highlight=False, soft_wrap=True)


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
    task = p.add_task(safe(description, 80), total=total)
    return p, lambda n: p.advance(task, n)


@app.command()
def inspect(
    paths: Annotated[list[Path], typer.Argument(metavar="PATH...", help="Checkpoint files (.safetensors .ckpt .pt .bin), diffusers folders, *.index.json, or folders of models.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON (schema in docs/inspect-json.md).")] = False,
    hashes: Annotated[bool, typer.Option("--hash", help="sha256, AutoV2 and the old A1111 hash (reads the whole file).")] = False,
    scan: Annotated[bool, typer.Option("--scan", help="Read all data: NaN/Inf and all-zero tensors.")] = False,
    brief: Annotated[bool, typer.Option("--brief", help="Only the one-line summary per file.")] = False,
    variant: Annotated[str | None, typer.Option(help="Diffusers folders: read this variant's files (fp16 -> *.fp16.safetensors); default: the full-precision ones.")] = None,
) -> None:
    """What is this file? Family, layout, components, precision, EMA, metadata, problems: from the header.

    Exit 1 when a file cannot be read or has problems (with --scan: NaN / Inf, all-zero tensors), 2 when a path does not exist."""
    from sdlens.analysis.inspect import inspect as run_inspect
    from sdlens.analysis.inspect import read_bytes
    from sdlens.io.folders import check_variant
    from sdlens.io.open import expand_paths, open_checkpoint
    from sdlens.render.jsonout import dumps

    check_variant(variant)  # a wrong option value is a usage error (2), not a finding about a file
    results: list[dict | object] = []
    failed = missing = internal = 0
    for path in expand_paths(paths):
        if not os.path.lexists(path):  # (a symlink loop exists: the reader names it)
            missing += 1
            _fail(SdlensError(path, "no such file or folder"))
            if json_out:
                results.append({"path": str(path), "error": "no such file or folder"})
            continue
        try:
            progress = None
            bar = None
            if hashes or scan:
                with open_checkpoint(path, variant) as ck:
                    total = read_bytes(ck, hashes=hashes, scan=scan)
                bar, progress = _progress_bar(total, path.name)
                bar.start()
            try:
                report = run_inspect(path, hashes=hashes, scan=scan, progress=progress, variant=variant)
            finally:
                if bar is not None:
                    bar.stop()
        except Exception as e:  # sdlens's own errors, and the safety net for anything else
            failed += 1
            if not isinstance(e, SdlensError):
                internal += 1  # a bug met on this file: still one line, and the other files go on
                e = _as_error(path, e)
            _fail(e)
            if json_out:
                results.append({"path": str(path), "error": e.problem})
            continue
        failed += bool(report.problems)
        if json_out:
            results.append(report)
        else:
            from sdlens.render.inspect_view import render_report

            render_report(report, out, brief=brief)
    if json_out:
        print(dumps(results[0] if len(results) == 1 else results))
    if internal or missing or failed:  # a bug outranks a missing input, which outranks a finding
        raise typer.Exit(EXIT_INTERNAL if internal else EXIT_USAGE if missing else EXIT_PROBLEMS)


@app.command()
def diff(
    a: Annotated[Path, typer.Argument(metavar="A", help="First checkpoint (any format or layout).")],
    b: Annotated[Path, typer.Argument(metavar="B", help="Second checkpoint.")],
    metric: Annotated[str, typer.Option(metavar="l2|l1|l0|cos|all", help="Metric shown per tensor with --by key.")] = "all",
    by: Annotated[str, typer.Option(metavar="component|block|type|key", help="Table granularity.")] = "component",
    json_file: Annotated[Path | None, typer.Option("--json", metavar="FILE", help="Write every number to this JSON file.")] = None,
    plot: Annotated[Path | None, typer.Option(metavar="FILE", help="Write plots: FILE.png/.svg (histograms) and FILE-blocks.png/.svg.")] = None,
    time_embed: Annotated[str, typer.Option(metavar="IN00|BASE", help="Merge block of time_embed / label_emb: IN00 (A1111 mergers) or BASE (sd-mecha).")] = "IN00",
    variant: Annotated[str | None, typer.Option(metavar="NAME", help="Diffusers folders: read this variant's files (fp16 -> *.fp16.safetensors); default: the full-precision ones.")] = None,
) -> None:
    """What changed between two checkpoints: verdict in plain words, then per component / block / type / tensor."""
    from sdlens.analysis.diff import diff as run_diff
    from sdlens.io.open import open_checkpoint
    from sdlens.io.outputs import OutFile, check_outputs, remove_created_on_failure
    from sdlens.render.diff_figures import diff_plot_paths
    from sdlens.render.diff_view import render_diff

    choice(metric, "--metric", ("l2", "l1", "l0", "cos", "all"))
    choice(by, "--by", ("component", "block", "type", "key"))
    choice(time_embed, "--time-embed", ("IN00", "BASE"))
    for path, option in ((json_file, "--json"), (plot, "--plot")):
        if path is not None:
            output_path(path, option)
    outputs = ([OutFile("--json", json_file)] if json_file else []) + [OutFile("--plot", p) for p in diff_plot_paths(plot)]
    check_outputs([a, b], outputs)
    with open_checkpoint(a, variant) as ck:
        total = ck.tensor_bytes
    bar, progress = _progress_bar(total, f"diff {a.name}")
    with bar:
        result = run_diff(a, b, time_embed=time_embed, progress=progress, variant=variant)
    render_diff(result, out, by=by, metric=metric)
    with remove_created_on_failure(files=[o.path for o in outputs]):
        if json_file is not None:
            from sdlens.io.atomic import write_text_atomic
            from sdlens.render.jsonout import dumps

            write_text_atomic(json_file, dumps(result))
            out.print(f"JSON written to {safe(json_file)}", soft_wrap=True, highlight=False)
        if plot is not None:
            from sdlens.render.diff_figures import write_diff_plots

            for p in write_diff_plots(result, plot):
                out.print(f"plot written to {safe(p)}", soft_wrap=True, highlight=False)


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", metavar="DIR", help="Where to write the zoo, tables and plots.")] = Path("demo-out"),
) -> None:
    """Build a small synthetic model zoo and run every landed capability on it."""
    from sdlens.demo import run_demo

    output_path(out_dir, "--out")
    run_demo(out_dir, out)


def _print_version(value: bool) -> None:
    if value:
        from sdlens import __version__

        print(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the sdlens version and exit.", is_eager=True,
                                          callback=_print_version)] = False,
) -> None:
    """See inside Stable Diffusion family checkpoints: what a file is, what changed, how models relate.

    Exit codes: 0 done; 1 problems found in what was checked; 2 usage or input error; 3 internal error (a bug); 130 interrupted."""


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
for _info in app.registered_commands:
    if _info.cls in (None, TyperCommand):
        _info.cls = _Command


def main(argv: list[str] | None = None) -> None:
    """The console entry point; exit codes in the README (0 done, 1 problems found, 2 usage, 3 internal). Whatever happens, one line, no traceback
    (unless ``SDLENS_DEBUG=1``)."""
    from sdlens.io.base import debug

    try:
        app(args=argv, prog_name="sdlens")
    except SdlensError as e:  # raised outside a command (the group catches the commands' own)
        _fail(e)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as e:  # the last safety net: a bug, reported in one line
        if debug():
            raise
        from sdlens.io.limits import clip

        _fail(SdlensError(None, f"internal error: {type(e).__name__}: {clip(str(e))} "
                                "(a bug in sdlens; SDLENS_DEBUG=1 shows the traceback)"))
        sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":
    main()
