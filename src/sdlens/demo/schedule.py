"""Demo section: ``sdlens schedule`` — the named schedules side by side, the released families', and zoo files
whose schedule evidence is known (their own buffers, a tampered copy, zero-terminal-SNR and v-prediction
markers), each beside what sdlens finds."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

# (zoo file, copy to make, what it was built as)
CASES = (
    ("sd1_fp16.safetensors", None, "scaled_linear buffers (fp16), epsilon"),
    ("sd2_fp16.safetensors", None, "scaled_linear buffers, SD 2, random weights (probe bias std ≈ 0.02)"),
    ("sd2_fp16.safetensors", "vbias", "SD 2 with the probe bias spread as a v model's (std 0.5)"),
    ("sd1_fp16.safetensors", "tampered", "buffers edited: β × 1.2 from t = 800"),
    ("sdxl_fp16.safetensors", "ztsnr_vpred", "no buffers; ztsnr + v_pred markers"),
    ("flux1-dev.safetensors", None, "no buffers; FLUX.1-dev (flow, dynamic shift)"),
    ("playground_v25.safetensors", None, "no buffers; EDM markers (Playground v2.5)"),
)


def _copy(src: Path, how: str, out: Path) -> Path:
    import torch
    from safetensors.torch import load_file

    from sdlens.testing.writers import save_safetensors

    sd = load_file(src)
    if how == "vbias":  # ComfyUI's SD 2 heuristic reads this bias: std > 0.09 means v-prediction
        key = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
        sd[key] = (torch.randn(sd[key].shape, generator=torch.Generator().manual_seed(0)) * 0.5).to(
            sd[key].dtype
        )
    elif how == "tampered":
        betas = sd["betas"].double()
        betas[800:] *= 1.2
        sd["betas"] = betas.to(sd["betas"].dtype)
        sd["alphas_cumprod"] = torch.cumprod(1 - betas, 0).to(sd["alphas_cumprod"].dtype)
    else:  # ztsnr_vpred
        sd["ztsnr"] = torch.tensor([])
        sd["v_pred"] = torch.tensor([])
    path = out / f"{src.stem}-{how}.safetensors"
    save_safetensors(sd, path)
    return path


def section(zoo_dir: Path, out_dir: Path, console: Console) -> None:
    """All named schedules in one table and one figure; then the zoo's files, built truth beside the finding."""
    import time

    from sdlens.analysis.schedule_report import schedule_report
    from sdlens.render.jsonout import dumps
    from sdlens.render.schedule_plot import plot_schedules
    from sdlens.render.schedule_view import comparison_table
    from sdlens.render.text import print_wide_or_narrow

    console.rule("sdlens schedule")
    t0 = time.perf_counter()
    folder = out_dir / "schedule"
    folder.mkdir(parents=True, exist_ok=True)
    views = schedule_report([], steps=30)
    print_wide_or_narrow(console, lambda wide: comparison_table(views, None, wide))
    png = plot_schedules(views, folder / "schedules.png")
    releases = schedule_report(["sd1", "sdxl", "sd3", "flux", "playground"])
    print_wide_or_narrow(console, lambda wide: comparison_table(releases, None, wide))

    files = [_copy(zoo_dir / name, how, folder) if how else zoo_dir / name for name, how, _ in CASES]
    found = schedule_report([str(f) for f in files])
    table = Table(title="zoo files: built as / sdlens finds", title_justify="left", header_style="bold")
    for col in ("file", "built as", "schedule", "prediction"):
        table.add_column(col)
    for (_, _, built), f, v in zip(CASES, files, found, strict=True):
        buf = v.file["buffers"]
        sched = buf.description if buf is not None else v.schedule.name
        table.add_row(f.name, built, sched, v.prediction.summary() if v.prediction else "—")
    console.print(table)
    (folder / "schedule.json").write_text(dumps([*views, *releases, *found]))
    console.print(
        f"[bold]written:[/] {png}, {folder / 'schedule.json'} ({time.perf_counter() - t0:.1f} s)",
        highlight=False,
    )
