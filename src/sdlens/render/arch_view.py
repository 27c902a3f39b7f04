"""Rich tables for ``sdlens arch``: one architecture in detail, or the comparison of several. Every table fits
the console: names (component labels, key prefixes, module paths) are never folded; when they do not fit beside
the numbers they are listed under the table, and the comparison turns vertical (one column per model)."""

from __future__ import annotations

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from sdlens.analysis.cost import TORCHINFO_NOTE, ArchReport
from sdlens.render.safe_text import safe
from sdlens.render.text import fits, path_line, print_wide_or_narrow, wrap_items

RELEASED_NOTE = (
    "released: the parameter count of the released weights (the model's published diffusers config, "
    "counted with diffusers' num_parameters())."
)


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
    return (
        f"{s['res'][0]}×{s['res'][1]} (latent {s['latent'][0]}×{s['latent'][1]}) · batch {s['batch']} · "
        f"{'CFG (denoiser batch ' + str(s['denoiser_batch']) + ')' if s['cfg'] else 'no CFG'} · {s['steps']} steps · "
        f"{s['dtype']} · text tokens {s['text_tokens']}" + (" · img2img" if s["img2img"] else "")
    )


def render_arch(r: ArchReport, console: Console) -> None:
    console.rule(f"sdlens arch · {safe(r.name)}")
    console.print(
        f"[bold]{safe(r.name)}[/] · {safe(r.cls_name)} · {safe(r.source)} · [bold]{num(r.params)}[/] denoiser parameters"
    )
    console.print(_settings(r), highlight=False)
    for n in r.notes:
        console.print(f"[yellow]note:[/] {safe(n)}", highlight=False)

    t = Table(title="parameters (built on the meta device)", title_justify="left")
    for col in ("component", "parameters", "released", "fp16/bf16", "fp32"):
        t.add_column(col, justify="left" if col == "component" else "right", no_wrap=col != "component")
    for c in r.components:
        if c.reference is None or c.matches is None:
            released = "—"
        else:
            released = "[green]✓ exact[/]" if c.matches else f"[red]✗ {num(c.reference)}[/]"
        t.add_row(c.label, num(c.params), released, gb(c.weight_bytes("fp16")), gb(c.weight_bytes("fp32")))
        for k, v in c.detail.items():
            t.add_row(f"  {k}", num(v), "", "", "")
    console.print(t)
    console.print(f"[dim]{RELEASED_NOTE}[/]")
    console.print(f"[dim]¹ {TORCHINFO_NOTE}[/]")
    _blocks(r, console)

    d = r.denoiser
    ct = Table(
        title=f"one denoiser forward (batch {d.batch}): {d.gemms} GEMMs / convolutions", title_justify="left"
    )
    for col in ("part", "FLOPs", "MACs", "share"):
        ct.add_column(col, justify="right" if col != "part" else "left")
    labels = {
        "conv": "convolution",
        "linear": "linear",
        "attn_qk": "attention QKᵀ",
        "attn_pv": "attention softmax·V",
    }
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
    pt.add_row(
        "text encoders",
        tf(r.per_image["text_encoders"]),
        "once per prompt"
        + (" and negative prompt" if s["cfg"] else "")
        + ": "
        + ", ".join(f"{k} ({n} tokens)" for k, n in s["text_encoder_tokens"]),
    )
    pt.add_row("VAE decode", tf(r.per_image["vae_decode"]), "once")
    if s["img2img"]:
        pt.add_row("VAE encode", tf(r.per_image["vae_encode"]), "once (img2img)")
    pt.add_row("[bold]total[/]", tf(r.per_image["total"]), "")
    console.print(pt)

    m = r.memory
    _memory(m, console)
    vt = Table(title="VRAM estimate for the pipeline", title_justify="left")
    for col in ("", "fused attention", "materialised scores"):
        vt.add_column(col, justify="right" if col else "left")
    vt.add_row(
        "everything on the GPU", gb(m["vram_fused"]["all_on_gpu"]), gb(m["vram_materialised"]["all_on_gpu"])
    )
    vt.add_row(
        "text encoders offloaded",
        gb(m["vram_fused"]["text_encoders_offloaded"]),
        gb(m["vram_materialised"]["text_encoders_offloaded"]),
    )
    if r.notebook:
        vt.add_row("torchinfo's estimate ¹", f"{r.notebook['est_total_gb_fp16']:.2f} GB", "")
    console.print(vt)
    console.print(f"[dim]{m['assumptions']}[/]")


def _blocks(r: ArchReport, console: Console) -> None:
    """The merge-block table; the original key prefixes in a column when they fit whole, else listed under it."""
    title = f"merge blocks: {r.mbw_blocks} functional blocks" + (
        f" (MBW layers: {r.mbw_expected})" if r.mbw_expected else ""
    )
    unet = any(b.resolution for b in r.blocks)
    keys_head = "original keys" + (" (model.diffusion_model.…)" if unet else "")
    keys = {b.name: ", ".join(k.removeprefix("model.diffusion_model.") for k in b.keys) for b in r.blocks}

    def table(with_keys: bool) -> Table:
        bt = Table(title=title, title_justify="left")
        cols = ["block", "parameters", "share", "FLOPs / forward"] + (["latent", "channels"] if unet else [])
        for col in cols:
            bt.add_column(col, justify="left" if col == "block" else "right", no_wrap=True)
        if with_keys:
            bt.add_column(keys_head, no_wrap=True)
        for b in r.blocks:
            row = [b.name, num(b.params), f"{100 * b.share:.2f}%", tf(b.flops)]
            if unet:
                row += [b.resolution or "", str(b.channels or "")]
            bt.add_row(*row, *([keys[b.name]] if with_keys else []))
        total_p = sum(b.params for b in r.blocks)
        total_f = sum(b.flops for b in r.blocks)
        bt.add_row(
            "[bold]sum[/]",
            num(total_p),
            "100%" if total_p == r.params else "[red]≠ total[/]",
            tf(total_f),
            *([""] * ((2 if unet else 0) + with_keys)),
        )
        return bt

    if print_wide_or_narrow(console, table):
        return
    console.print(f"[italic]{keys_head}[/]:")
    for b in r.blocks:
        wrap_items(console, [f"{b.name}:", *keys[b.name].split(" ")], indent=2, sep=" ")


def _memory(m: dict, console: Console) -> None:
    """Activation peaks per stage; the module where each peak happens beside them when it fits, else under."""

    def table(with_at: bool) -> Table:
        mt = Table(title=f"memory ({m['dtype']})", title_justify="left")
        for col in ("stage", "activation peak, fused attention", "materialised scores") + (
            ("peak at",) if with_at else ()
        ):
            mt.add_column(
                col,
                justify="left" if col in ("stage", "peak at") else "right",
                no_wrap=col in ("stage", "peak at"),
            )
        for k, v in m["activations"].items():
            mt.add_row(k, gb(v["fused"]), gb(v["materialised"]), *([v["at"]] if with_at else []))
        return mt

    if print_wide_or_narrow(console, table):
        return
    for k, v in m["activations"].items():
        path_line(console, f"  {k} peaks at", v["at"])


def _compare_rows(r: ArchReport, same_res: bool) -> dict[str, str]:
    """One model's cells of the comparison, by row label."""
    nb = r.notebook or {}
    d = r.denoiser
    m = r.memory
    act = m["activations"]["denoiser"]
    s = r.settings
    return {
        "model": safe(r.name) + ("" if same_res else f" ({s['res'][0]}²)"),
        "MBW blocks": f"{r.mbw_blocks}"
        + ("" if r.mbw_expected in (None, r.mbw_blocks) else f" [red]≠ {r.mbw_expected}[/]"),
        "params (exact)": f"{r.params / 1e9:.3f} B" + (" ✓" if r.components[0].matches else ""),
        "torchinfo ¹": f"{nb['params_torchinfo_b']} B" if nb else "—",
        "TFLOPs / forward": f"{d.total_flops / d.batch / 1e12:.2f}",
        "attention": f"{100 * d.attention_flops / max(d.total_flops, 1):.0f}%",
        "TFLOPs / image": f"{r.per_image['total'] / 1e12:.1f}",
        "steps": f"{s['steps']}{', CFG' if s['cfg'] else ''}",
        "weights": gb(sum(c.weight_bytes(m["dtype"]) for c in r.components)),
        "act. fused": f"{act['fused'] / 1e9:.2f} GB",
        "act. materialised": f"{act['materialised'] / 1e9:.2f} GB",
        "VRAM all": f"{m['vram_fused']['all_on_gpu'] / 1e9:.1f} GB",
        "VRAM TE offl.": f"{m['vram_fused']['text_encoders_offloaded'] / 1e9:.1f} GB",
        "torchinfo est. ¹": f"{nb['est_total_gb_fp16']:.2f} GB" if nb else "—",
    }


def render_compare(reports: list[ArchReport], console: Console) -> None:
    """One row per model when that fits the console; else one column per model (rows are the measures), as
    many models side by side as fit."""
    res = {tuple(r.settings["res"]) for r in reports}
    title = "architectures compared" + (
        f" at {next(iter(res))[0]}×{next(iter(res))[1]}" if len(res) == 1 else " at native resolutions"
    )
    rows = [_compare_rows(r, len(res) == 1) for r in reports]
    labels = list(rows[0]) if rows else []
    wide = Table(title=title, title_justify="left")
    for col in labels:
        wide.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    for row in rows:
        wide.add_row(*row.values())
    if fits(console, wide):
        console.print(wide)
    else:

        def col_width(
            row: dict[str, str],
        ) -> int:  # the model's name may wrap at its spaces, the figures never
            return max(
                max(cell_len(w) for w in row["model"].split()),
                *(cell_len(Text.from_markup(v).plain) for k, v in row.items() if k != "model"),
            )

        def tall(chunk: list[dict[str, str]], part: str) -> Table:
            t = Table(title=part, title_justify="left")
            t.add_column("", no_wrap=True)
            for row in chunk:
                t.add_column(row["model"], justify="right", width=col_width(row))
            for label in labels[1:]:
                t.add_row(label, *(row[label] for row in chunk))
            return t

        def width(
            chunk: list[dict[str, str]],
        ) -> int:  # a boxed table: 2 of padding + 1 of rule per column, + 1
            cols = [max(map(cell_len, labels[1:]))] + [col_width(row) for row in chunk]
            return sum(c + 3 for c in cols) + 1

        per = len(rows)
        while per > 1 and width(rows[:per]) > console.width:
            per -= 1
        for start in range(0, len(rows), per):
            console.print(tall(rows[start : start + per], title if start == 0 else f"{title} (continued)"))
    console.print(
        "[dim]TFLOPs / forward: one denoiser forward per image (batch 1), convolution + linear + attention "
        "(QKᵀ and softmax·V), 2 FLOPs per multiply-add; elementwise ops, norms and softmax not counted. "
        "TFLOPs / image: steps × forward (×2 with CFG) + text encoders + VAE decode. Activations (act.): peak of one "
        "denoiser forward (with CFG: batch 2) with fused / materialised attention. VRAM: weights of every component "
        "+ the largest activation peak (fused attention); 'TE offl.': text encoders off the GPU. "
        "✓: equal to the parameter count of the released weights (the model's published diffusers config, "
        f"counted with diffusers' num_parameters()).[/]\n[dim]¹ {TORCHINFO_NOTE} The torchinfo "
        "figures are its summaries of the diffusers models.[/]"
    )
