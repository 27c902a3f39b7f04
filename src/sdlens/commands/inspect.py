"""``sdlens inspect``: what a file is, from its header (with ``--hash`` / ``--scan``: from all its bytes)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from sdlens.commands._options import VariantOption
from sdlens.errors import SdlensError


def run(
    paths: Annotated[
        list[Path],
        typer.Argument(
            metavar="PATH...",
            help="Checkpoint files (.safetensors .ckpt .pt .bin), diffusers folders, *.index.json, or folders of models.",
        ),
    ],
    json_out: Annotated[
        bool, typer.Option("--json", help="Print JSON (schema in docs/inspect-json.md).")
    ] = False,
    hashes: Annotated[
        bool, typer.Option("--hash", help="sha256, AutoV2 and the old A1111 hash (reads the whole file).")
    ] = False,
    scan: Annotated[
        bool, typer.Option("--scan", help="Read all data: NaN/Inf and all-zero tensors.")
    ] = False,
    brief: Annotated[bool, typer.Option("--brief", help="Only the one-line summary per file.")] = False,
    variant: VariantOption = None,
) -> None:
    """What is this file? Family, layout, components, precision, EMA, metadata, problems: from the header.

    Exit 1 when a file cannot be read or has problems (with --scan: NaN / Inf, all-zero tensors), 2 when a path does not exist."""
    from sdlens import console
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
            console.fail(SdlensError(path, "no such file or folder"))
            if json_out:
                results.append({"path": str(path), "error": "no such file or folder"})
            continue
        try:
            progress = None
            bar = None
            if hashes or scan:
                with open_checkpoint(path, variant) as ck:
                    total = read_bytes(ck, hashes=hashes, scan=scan)
                bar, progress = console.progress_bar(total, path.name)
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
                e = console.as_error(path, e)
            console.fail(e)
            if json_out:
                results.append({"path": str(path), "error": e.problem})
            continue
        failed += bool(report.problems)
        if json_out:
            results.append(report)
        else:
            from sdlens.render.inspect_view import render_report

            render_report(report, console.out, brief=brief)
    if json_out:
        print(dumps(results[0] if len(results) == 1 else results))
    if internal or missing or failed:  # a bug outranks a missing input, which outranks a finding
        raise typer.Exit(
            console.EXIT_INTERNAL if internal else console.EXIT_USAGE if missing else console.EXIT_PROBLEMS
        )
