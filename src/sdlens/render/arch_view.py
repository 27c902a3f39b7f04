"""Rich tables for ``sdlens arch``: one architecture in detail, or the comparison of several (§7 done right)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from sdlens.analysis.cost import TORCHINFO_NOTE, ArchReport
from sdlens.render.safe_text import safe


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def num(n: int) -> str:
    return f"{n:,}"


def tf(n: float) -> str:
    """FLOPs in a readable unit."""
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} FLOP"


def _settings(r: ArchReport) -> str:
    s = r.settings
    return (f"{s['res'][0]}×{s['res'][1]} (latent {s['latent'][0]}×{s['latent'][1]}) · batch {s['batch']} · "
            f"{'CFG (denoiser batch ' + str(s['denoiser_batch']) + ')' if s['cfg'] else 'no CFG'} · {s['steps']} steps · "
            f"{s['dtype']} · text tokens {s['text_tokens']}" + (" · img2img" if s["img2img"] else ""))


def render_arch(r: ArchReport, console: Console) -> None:
    console.rule(f"sdlens arch · {safe(r.name)}")
    console.print(f"[bold]{safe(r.name)}[/] · {safe(r.cls_name)} · {safe(r.source)} · [bold]{num(r.params)}[/] denoiser parameters")
    console.print(_settings(r), highlight=False)
    for n in r.notes:
        console.print(f"[yellow]note:[/] {safe(n)}", highlight=False)

    t = Table(title="parameters (built on the meta device)", title_justify="left")
    for col in ("component", "parameters", "reference (architectures.md)", "", "fp16/bf16", "fp32"):
        t.add_column(col, justify="right" if col not in ("component", "") else "left")
    for c in r.components:
        mark = "" if c.matches is None else ("[green]✓ exact[/]" if c.matches else "[red]✗[/]")
        t.add_row(c.label, num(c.params), num(c.reference) if c.reference else "—", mark, gb(c.weight_bytes("fp16")),
                  gb(c.weight_bytes("fp32")))
        for k, v in c.detail.items():
            t.add_row(f"  {k}", num(v), "", "", "", "")
    console.print(t)
    console.print(f"[dim]¹ {TORCHINFO_NOTE}[/]")

    bt = Table(title=f"merge blocks: {r.mbw_blocks} functional blocks"
               + (f" (notebook's MBW layers: {r.mbw_expected})" if r.mbw_expected else ""), title_justify="left")
    unet = any(b.resolution for b in r.blocks)
    cols = ["block", "parameters", "share", "FLOPs / forward"] + (["latent", "channels"] if unet else [])
    cols.append("original keys" + (" (model.diffusion_model.…)" if unet else ""))
    for col in cols:
        bt.add_column(col, justify="left" if col == "block" or col.startswith("original") else "right", overflow="fold")
    for b in r.blocks:
        row = [b.name, num(b.params), f"{100 * b.share:.2f}%", tf(b.flops)]
        if unet:
            row += [b.resolution or "", str(b.channels or "")]
        row.append(", ".join(k.removeprefix("model.diffusion_model.") for k in b.keys))
        bt.add_row(*row)
    total_p = sum(b.params for b in r.blocks)
    total_f = sum(b.flops for b in r.blocks)
    bt.add_row("[bold]sum[/]", num(total_p), "100%" if total_p == r.params else "[red]≠ total[/]", tf(total_f),
               *([""] * (3 if unet else 1)))
    console.print(bt)

    d = r.denoiser
    ct = Table(title=f"one denoiser forward (batch {d.batch}): {d.gemms} GEMMs / convolutions", title_justify="left")
    for col in ("part", "FLOPs", "MACs", "share"):
        ct.add_column(col, justify="right" if col != "part" else "left")
    labels = {"conv": "convolution", "linear": "linear", "attn_qk": "attention QKᵀ", "attn_pv": "attention softmax·V"}
    for k, v in d.flops.items():
        ct.add_row(labels[k], tf(v), f"{v / 2e12:.3f} T", f"{100 * v / max(d.total_flops, 1):.1f}%")
    ct.add_row("[bold]total[/]", tf(d.total_flops), f"{d.macs / 1e12:.3f} T", "100%")
    ct.add_row("total without attention", tf(d.total_flops - d.attention_flops), "", "")
    console.print(ct)
    console.print("inputs: " + ", ".join(f"{k} {list(v)}" for k, v in d.inputs.items()), highlight=False)

    pt = Table(title="per image", title_justify="left")
    pt.add_column("part")
    pt.add_column("FLOPs", justify="right")
    pt.add_column("how", overflow="fold")
    s = r.settings
    g = "×2 (CFG) " if s["cfg"] else ""
    pt.add_row("denoiser", tf(r.per_image["denoiser"]), f"{s['steps']} steps × one forward {g}per image")
    pt.add_row("text encoders", tf(r.per_image["text_encoders"]),
               "once per prompt" + (" and negative prompt" if s["cfg"] else "") + ": "
               + ", ".join(f"{k} ({n} tokens)" for k, n in s["text_encoder_tokens"]))
    pt.add_row("VAE decode", tf(r.per_image["vae_decode"]), "once")
    if s["img2img"]:
        pt.add_row("VAE encode", tf(r.per_image["vae_encode"]), "once (img2img)")
    pt.add_row("[bold]total[/]", tf(r.per_image["total"]), "")
    console.print(pt)

    m = r.memory
    mt = Table(title=f"memory ({m['dtype']})", title_justify="left")
    for col in ("stage", "activation peak, fused attention", "materialised scores", "peak at"):
        mt.add_column(col, justify="left" if col in ("stage", "peak at") else "right", overflow="fold")
    for k, v in m["activations"].items():
        mt.add_row(k, gb(v["fused"]), gb(v["materialised"]), v["at"])
    console.print(mt)
    vt = Table(title="VRAM estimate for the pipeline", title_justify="left")
    for col in ("", "fused attention", "materialised scores"):
        vt.add_column(col, justify="right" if col else "left")
    vt.add_row("everything on the GPU", gb(m["vram_fused"]["all_on_gpu"]), gb(m["vram_materialised"]["all_on_gpu"]))
    vt.add_row("text encoders offloaded", gb(m["vram_fused"]["text_encoders_offloaded"]),
               gb(m["vram_materialised"]["text_encoders_offloaded"]))
    if r.notebook:
        vt.add_row("notebook's estimate (§7)", f"{r.notebook['est_total_gb_fp16']:.2f} GB", "")
    console.print(vt)
    console.print(f"[dim]{m['assumptions']}[/]")


def render_compare(reports: list[ArchReport], console: Console) -> None:
    res = {tuple(r.settings["res"]) for r in reports}
    title = "architectures compared" + (f" at {next(iter(res))[0]}×{next(iter(res))[1]}" if len(res) == 1 else " at native resolutions")
    t = Table(title=title, title_justify="left")
    cols = ("model", "MBW blocks", "params (exact)", "notebook: torchinfo", "TFLOPs / forward", "attention",
            "TFLOPs / image", "weights", "activations fused / mat.", "VRAM all / TE offl.", "notebook est.")
    for col in cols:
        t.add_column(col, justify="left" if col == "model" else "right")
    for r in reports:
        nb = r.notebook or {}
        d = r.denoiser
        m = r.memory
        weights = sum(c.weight_bytes(m["dtype"]) for c in r.components)
        act = m["activations"]["denoiser"]
        t.add_row(
            safe(r.name) + ("" if len(res) == 1 else f" ({r.settings['res'][0]}²)"),
            f"{r.mbw_blocks}" + ("" if r.mbw_expected in (None, r.mbw_blocks) else f" [red]≠ {r.mbw_expected}[/]"),
            f"{r.params / 1e9:.3f} B" + (" ✓" if r.components[0].matches else ""),
            f"{nb['params_torchinfo_b']} B" if nb else "—",
            f"{d.total_flops / d.batch / 1e12:.2f}",
            f"{100 * d.attention_flops / max(d.total_flops, 1):.0f}%",
            f"{r.per_image['total'] / 1e12:.1f} ({r.settings['steps']} st{', CFG' if r.settings['cfg'] else ''})",
            gb(weights),
            f"{act['fused'] / 1e9:.2f} / {act['materialised'] / 1e9:.2f} GB",
            f"{m['vram_fused']['all_on_gpu'] / 1e9:.1f} / {m['vram_fused']['text_encoders_offloaded'] / 1e9:.1f} GB",
            f"{nb['est_total_gb_fp16']:.2f} GB" if nb else "—",
        )
    console.print(t)
    console.print(
        "[dim]TFLOPs / forward: one denoiser forward per image (batch 1), convolution + linear + attention "
        "(QKᵀ and softmax·V), 2 FLOPs per multiply-add; elementwise ops, norms and softmax not counted. "
        "TFLOPs / image: steps × forward (×2 with CFG) + text encoders + VAE decode. Activations: peak of one "
        "denoiser forward (with CFG: batch 2) with fused / materialised attention. VRAM: weights of every component "
        "+ the largest activation peak (fused attention); 'TE offl.': text encoders off the GPU. "
        f"Notebook: architectures.md §7.[/]\n[dim]¹ {TORCHINFO_NOTE}[/]"
    )
