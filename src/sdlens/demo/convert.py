"""Demo section: ``sdlens convert`` of the SD1 EMA checkpoint."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console


def section(zoo_dir: Path, out_dir: Path, console: Console) -> None:
    """convert: the SD1 EMA .ckpt to an fp16, EMA-dropped .safetensors (dry run, then write + verification)."""
    import time

    from sdlens.convert import ConvertOptions, convert, make_plan
    from sdlens.convert.writer import scan_range
    from sdlens.render.convert_view import render_plan, render_result
    from sdlens.render.jsonout import dumps

    console.rule("sdlens convert")
    src = zoo_dir / "sd1_ema.ckpt"
    if not src.exists():
        console.print(f"(no {src.name} in the zoo: convert demo skipped)")
        return
    dst = out_dir / "sd1_fp16_noema.safetensors"
    dst.unlink(missing_ok=True)
    console.print(
        f"$ sdlens convert {src.name} {dst.name} --dtype fp16 --ema drop --dry-run", highlight=False
    )
    plan = make_plan(src, dst, ConvertOptions(dtype="fp16", ema="drop"))
    scan_range(plan)
    render_plan(plan, console)
    (out_dir / "convert-plan.json").write_text(dumps(plan))
    console.print(f"$ sdlens convert {src.name} {dst.name} --dtype fp16 --ema drop", highlight=False)
    t0 = time.perf_counter()
    result = convert(make_plan(src, dst, ConvertOptions(dtype="fp16", ema="drop")))
    render_result(result, console, time.perf_counter() - t0)
    (out_dir / "convert-result.json").write_text(dumps(result))
