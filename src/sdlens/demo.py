"""``sdlens demo``: build the synthetic model zoo and run every landed capability on it, writing tables,
JSON and plots to one folder. The same zoo backs the test suite, so what the demo shows is what is tested."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table


def run_demo(out_dir: Path, console: Console) -> None:
    from sdlens.analysis.inspect import human_bytes, inspect
    from sdlens.render.inspect_view import render_report
    from sdlens.render.jsonout import dumps
    from sdlens.render.plots import plot_component_sizes
    from sdlens.testing.zoo import build_zoo

    out_dir.mkdir(parents=True, exist_ok=True)
    zoo_dir = out_dir / "zoo"
    t0 = time.perf_counter()
    with console.status("building the synthetic model zoo (real architectures, random weights)…"):
        zoo = build_zoo(zoo_dir)
    console.print(f"[bold]zoo:[/] {len(zoo)} checkpoints in {zoo_dir} ({time.perf_counter() - t0:.1f} s)")

    # ---- inspect: every zoo file, one line each, then the full report of a few
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
            f"{r.family_name} · {r.kind}" + (f" · {', '.join(r.variants)}" if r.variants else "")
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
        console.print(f"(the full-size SDXL file is {human_bytes(big.path.stat().st_size)}, sparse on disk: inspect reads only its header)")
    console.print(f"\n[bold]written:[/] {out_dir / 'inspect.json'}, {out_dir / 'inspect.txt'}, {plot}")
    _demo_diff(zoo_dir, out_dir, console)
    for section in _command_demo_sections():
        section(zoo_dir, out_dir, console)
    if wrong:
        console.print(f"[bold red]{wrong} zoo files were not identified as built[/]")
        raise SystemExit(1)
    console.print(f"[green]all {len(zoo)} zoo files identified as built[/] in {time.perf_counter() - t0:.1f} s")


def _command_demo_sections():
    """``demo_section(zoo_dir, out_dir, console)`` of every module in ``sdlens.commands`` that has one."""
    import importlib
    import pkgutil

    import sdlens.commands as pkg

    for m in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        section = getattr(importlib.import_module(f"sdlens.commands.{m.name}"), "demo_section", None)
        if section is not None:
            yield section


def _demo_diff(zoo_dir: Path, out_dir: Path, console: Console) -> None:
    """diff: a fine-tune that touched only cross-attention, an fp16 copy, one model in two layouts."""
    import torch

    from sdlens.analysis.diff import diff
    from sdlens.render.diff_figures import write_diff_plots
    from sdlens.render.diff_view import render_diff
    from sdlens.render.jsonout import dumps
    from sdlens.testing.writers import save_safetensors
    from sdlens.testing.zoo_unet import build_single_file

    console.rule("sdlens diff")
    base = build_single_file("sd1", seed=0)
    g = torch.Generator().manual_seed(1)
    tuned = {k: (v + 0.02 * torch.randn(v.shape, generator=g) if ".attn2." in k and k.startswith("model.") else v)
             for k, v in base.items()}
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in base.items()}
    a = save_safetensors(base, zoo_dir / "diff_base.safetensors")
    pairs = {
        "finetune-attn2": (a, save_safetensors(tuned, zoo_dir / "diff_attn2_finetune.safetensors")),
        "fp16-copy": (a, save_safetensors(half, zoo_dir / "diff_fp16_copy.safetensors")),
        "ldm-vs-diffusers": (zoo_dir / "sdxl_fp16.safetensors", zoo_dir / "sdxl_diffusers"),
    }
    for name, (x, y) in pairs.items():
        r = diff(x, y)
        render_diff(r, console, by="block" if name == "finetune-attn2" else "component")
        (out_dir / f"diff-{name}.json").write_text(dumps(r))
        if name == "finetune-attn2":
            for p in write_diff_plots(r, out_dir / f"diff-{name}.png"):
                console.print(f"plot written to {p}")
