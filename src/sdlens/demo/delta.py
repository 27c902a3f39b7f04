"""Demo section: ``sdlens delta`` on pairs whose delta is known, then a LoRA baked in, found and extracted back."""

from __future__ import annotations

import re
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
    bake_find_extract(folder, out, console)


ATTN = re.compile(r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$")
TE_ATTN = re.compile(r"\.self_attn\.(q|k|v|out)_proj$")


def bake_find_extract(folder: Path, out: Path, console: Console) -> None:
    """A kohya rank-8 LoRA baked into the base with ``convert --merge-lora``, found by ``delta`` at rank 8 in
    exactly its modules, extracted back with ``extract-lora --rank 8``, and the extracted ΔW beside the LoRA's."""
    import torch
    from safetensors.torch import load_file

    from sdlens.analysis.delta import delta
    from sdlens.analysis.lora_extract import extract_lora
    from sdlens.convert import ConvertOptions, convert, make_plan
    from sdlens.io.atomic import write_text_atomic
    from sdlens.render.jsonout import dumps
    from sdlens.render.safe_text import safe
    from sdlens.testing import zoo_bake
    from sdlens.testing.writers import save_safetensors

    unet = [m for m in zoo_bake.module_shapes("sd1", "unet", "medium") if ATTN.search(m)]
    te = [m for m in zoo_bake.module_shapes("sd1", "text_encoder", "medium") if TE_ATTN.search(m)]
    tensors, truth = zoo_bake.kohya_lora(
        "sd1", {"unet": unet, "text_encoder": te}, rank=8, alpha=2.0, size="medium", dtype=torch.float32
    )
    lora = save_safetensors(tensors, folder / "kohya_r8.safetensors", {"ss_base_model_version": "sd_v1"})
    baked = folder / "baked.safetensors"
    if baked.exists():
        baked.unlink()
    t0 = time.perf_counter()
    res = convert(make_plan(folder / "base.safetensors", baked, ConvertOptions(merge_lora=[str(lora)])))
    rep = res.verification
    t_bake = time.perf_counter() - t0
    t0 = time.perf_counter()
    found = delta(baked, folder / "base.safetensors")
    t_delta = time.perf_counter() - t0
    extracted = out / "extracted_r8.safetensors"
    if extracted.exists():
        extracted.unlink()
    t0 = time.perf_counter()
    report = extract_lora(baked, folder / "base.safetensors", rank=8, out=extracted)
    t_extract = time.perf_counter() - t0
    write_text_atomic(out / "extracted_r8.json", dumps(report))
    back = load_file(extracted)
    worst = 0.0
    for name, want in truth.items():
        part, module = name.split("/", 1)
        stem = ("lora_unet_" if part == "unet" else "lora_te_") + module.replace(".", "_")
        up, down = back[f"{stem}.lora_up.weight"].float(), back[f"{stem}.lora_down.weight"].float()
        scale = float(back[f"{stem}.alpha"]) / down.shape[0]
        got = (up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)).reshape(want.shape) * scale
        worst = max(worst, float((got - want).norm() / want.norm()))
    ranks = found.components["denoiser"].ranks
    table = Table(title="a LoRA baked in, found, and extracted back", title_justify="left")
    for col in ("step", "result", "s"):
        table.add_column(col, overflow="fold")
    table.add_row(
        "convert base --merge-lora kohya_r8",
        f"{len(truth)} modules baked (UNet attn1/attn2 q/k/v/out, CLIP-L q/k/v/out) into "
        f"{rep.baked} fp16 tensors; verification {'passed' if rep.ok else 'FAILED'}",
        f"{t_bake:.2f}",
    )
    table.add_row("delta baked --base base", "\n".join(safe(v) for v in found.verdict[:3]), f"{t_delta:.2f}")
    o = report["overall"]
    table.add_row(
        "extract-lora baked --base base --rank 8",
        f"{o['modules']} modules, ranks {o['ranks']}, kept {o['kept']:.4%} of ‖Δ‖², relative error "
        f"{o['rel_error']:.2g} (fp16 rounding of the baked file)",
        f"{t_extract:.2f}",
    )
    table.add_row(
        "extracted ΔW vs the LoRA's own",
        f"worst module off by {worst:.2g} relative (the baked file's fp16 rounding)",
        "",
    )
    console.print(table)
    if set(ranks) != {8}:
        console.print(f"[bold red]delta found ranks {dict(ranks)}, not 8[/]")
    console.print(f"extracted LoRA and its report in {safe(out)}", soft_wrap=True)
