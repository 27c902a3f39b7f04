"""Demo section: ``sdlens delta`` on pairs whose delta is known, then a LoRA baked in, found and extracted back."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

# (model, base, what was done to the base)
CASES = (
    ("lora_r4", "base", "rank-4 Δ on every UNet attn1/attn2 projection"),
    ("lora_r8", "base", "rank-8 Δ on every UNet attn1/attn2 projection"),
    ("lora_r32", "base", "rank-32 Δ on every UNet attn1/attn2 projection"),
    ("lora_te", "base", "rank 8 on UNet attention and the text encoder's q/k/v/out"),
    ("finetune", "base", "dense Δ on every UNet tensor"),
    ("te_layer", "base", "dense Δ on one text-encoder weight (layer 3 mlp.fc1)"),
    ("base", "base_fp32", "an fp16 copy of an fp32 model"),
)


def section(zoo_dir: Path, out_dir: Path, console: Console) -> None:
    """delta over the known pairs: the truth beside the verdict; figures for a LoRA and a fine-tune."""
    from sdlens.analysis.delta import delta
    from sdlens.io.atomic import write_text_atomic
    from sdlens.render.delta_view import plot_delta, render_delta
    from sdlens.render.jsonout import dumps
    from sdlens.render.safe_text import safe
    from sdlens.testing.zoo_delta import build_delta_zoo

    console.rule("[bold]sdlens delta")
    folder = zoo_dir / "delta"
    build_delta_zoo(folder)
    out = out_dir / "delta"
    out.mkdir(parents=True, exist_ok=True)
    table = Table(title="delta: known truth vs verdict", title_justify="left")
    for col in ("model", "base", "truth", "verdict", "s"):
        table.add_column(col, overflow="fold")
    for name, base, truth in CASES:
        t0 = time.perf_counter()
        r = delta(folder / f"{name}.safetensors", folder / f"{base}.safetensors")
        dt = time.perf_counter() - t0
        if name == "lora_te":
            render_delta(r, console)
        if name in ("lora_te", "finetune"):
            plot_delta(r, out / f"{name}.png")
        write_text_atomic(out / f"{name}.json", dumps(r))
        lines = [r.verdict[0], *(v for v in r.verdict[1:] if not v.endswith(": unchanged"))]
        table.add_row(name, base, truth, "\n".join(safe(line) for line in lines), f"{dt:.2f}")
    console.print(table)
    console.print(f"JSON per pair, lora_te.png and finetune.png in {safe(out)}", soft_wrap=True)
