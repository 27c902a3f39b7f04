"""``sdlens arch``: the anatomy of a diffusion architecture with no weights. Imports stay cheap here: torch,
diffusers and transformers are imported inside the command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sdlens.choices import DiagramDepth, MeasureAttention, MeasureDevice, Precision, metavar
from sdlens.commands._options import TimeEmbedOption
from sdlens.console import checked
from sdlens.errors import SdlensError

MODELS_HELP = "sd1, sd2, sdxl, sd3, sd35, hunyuandit, auraflow, flux (aliases welcome), a diffusers config.json or a checkpoint"


def run(
    model: Annotated[str | None, typer.Argument(metavar="MODEL", help=MODELS_HELP)] = None,
    res: Annotated[
        str | None, typer.Option(metavar="WxH", help="Image size WIDTHxHEIGHT (default: the model's own).")
    ] = None,
    batch: Annotated[int, typer.Option(help="Images per batch.")] = 1,
    cfg: Annotated[
        bool | None,
        typer.Option("--cfg/--no-cfg", help="Classifier-free guidance (default: the pipeline's)."),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps (default: the pipeline's).")] = None,
    dtype: Annotated[
        str | None,
        typer.Option(
            metavar=metavar(Precision),
            callback=checked("dtype", Precision),
            help="Precision of weights and activations (default fp16; with --measure fp16 on CUDA, fp32 on the "
            "CPU, whose half-precision kernels are slow or missing).",
        ),
    ] = None,
    tokens: Annotated[int | None, typer.Option(help="Length of the (longest) text sequence.")] = None,
    img2img: Annotated[bool, typer.Option("--img2img", help="Count the VAE encode too.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    gemm: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE", help="Write every GEMM / convolution of one denoiser forward to FILE.csv."
        ),
    ] = None,
    diagram: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Write FILE.svg (sdlens's block diagram) and FILE-torchview-depthN.svg (torchview, needs graphviz dot).",
        ),
    ] = None,
    depth: Annotated[
        int,
        typer.Option(
            metavar=metavar(DiagramDepth),
            callback=checked("depth", DiagramDepth),
            help="torchview depth for --diagram.",
        ),
    ] = 1,
    compare: Annotated[
        str | None,
        typer.Option(
            metavar="all|MODEL,MODEL,...", help="'all' or a comma list of models: the comparison table."
        ),
    ] = None,
    time_embed: TimeEmbedOption = "IN00",
    measure: Annotated[
        bool,
        typer.Option(
            "--measure",
            help="Run the denoiser with random weights (no download) and show measured time and memory beside "
            "the estimates.",
        ),
    ] = False,
    device: Annotated[
        str,
        typer.Option(
            metavar=metavar(MeasureDevice),
            callback=checked("device", MeasureDevice),
            help="--measure: where to run (auto: CUDA when there is one, else the CPU).",
        ),
    ] = "auto",
    attn: Annotated[
        str,
        typer.Option(
            metavar=metavar(MeasureAttention),
            callback=checked("attn", MeasureAttention),
            help="--measure: PyTorch's SDPA dispatch (fused kernels) or the math kernel (scores materialised).",
        ),
    ] = "sdpa",
    compile_model: Annotated[
        bool,
        typer.Option(
            "--compile", help="--measure: wrap the denoiser in torch.compile (compile timed apart)."
        ),
    ] = False,
    runs: Annotated[int, typer.Option(metavar="N", help="--measure: timed forwards.")] = 3,
    warmup: Annotated[int, typer.Option(metavar="N", help="--measure: warm-up forwards before them.")] = 1,
) -> None:
    """Parameters, merge blocks, every GEMM, FLOPs, memory and diagrams of an architecture — no weights needed;
    --measure runs its denoiser with random weights and sets measured time and memory beside the estimates."""
    from sdlens.analysis.cost import analyse, parse_res, write_gemm_csv
    from sdlens.analysis.cost import compare as compare_models
    from sdlens.console import err, out, output_path
    from sdlens.io.outputs import OutFile, check_outputs, remove_created_on_failure
    from sdlens.render.arch_diagram import diagram_paths
    from sdlens.render.jsonout import dumps
    from sdlens.render.safe_text import safe

    for path, option in ((gemm, "--gemm"), (diagram, "--diagram")):
        if path is not None:
            output_path(path, option)
    outputs = ([OutFile("--gemm", gemm)] if gemm else []) + [
        OutFile("--diagram", p) for p in diagram_paths(diagram, depth)
    ]
    check_outputs([model] if model is not None and Path(model).exists() else [], outputs)
    if measure:
        if compare is not None or gemm is not None or diagram is not None:
            raise SdlensError(
                None, "--measure runs one model: use it without --compare, --gemm and --diagram"
            )
        if model is None:
            raise SdlensError(None, f"--measure: name a model ({MODELS_HELP})")
        if img2img:
            raise SdlensError(None, "--measure times one denoiser forward: --img2img does not apply")
        _measure(
            model, res, batch, cfg, dtype, tokens, device, attn, compile_model, warmup, runs, json_out, steps
        )
        return
    dtype = dtype or "fp16"
    kw = {
        "res": parse_res(res),
        "batch": batch,
        "cfg": cfg,
        "steps": steps,
        "dtype": dtype,
        "tokens": tokens,
        "img2img": img2img,
        "time_embed": time_embed,
    }
    if compare is not None:
        names = (
            "all"
            if compare.strip().lower() == "all"
            else [m.strip() for m in compare.split(",") if m.strip()]
        )
        with out.status("measuring…") as status:
            reports = compare_models(names, on_model=lambda name: status.update(f"measuring {name}…"), **kw)
        if json_out:
            print(dumps(reports))
        else:
            from sdlens.render.arch_view import render_compare

            render_compare(reports, out)
        return
    if model is None:
        raise SdlensError(None, f"name a model ({MODELS_HELP}) or use --compare all")
    report = analyse(model, **kw)
    if json_out:
        print(dumps(report))
    else:
        from sdlens.render.arch_view import render_arch

        render_arch(report, out)
    notes = err if json_out else out
    with remove_created_on_failure(files=[o.path for o in outputs]):
        if gemm is not None:
            write_gemm_csv(report, gemm)
            notes.print(
                f"GEMM table written to {safe(gemm)} ({len(report.ops)} rows)",
                soft_wrap=True,
                highlight=False,
            )
        if diagram is not None:
            from sdlens.render.arch_diagram import write_block_diagram, write_torchview

            notes.print(
                f"block diagram written to {safe(write_block_diagram(report, diagram))}",
                soft_wrap=True,
                highlight=False,
            )
            tv = diagram.with_name(f"{diagram.stem}-torchview-depth{depth}")
            notes.print(
                f"torchview graph written to {safe(write_torchview(model, report, tv, depth=depth))}",
                soft_wrap=True,
                highlight=False,
            )


def _measure(
    model: str,
    res: str | None,
    batch: int,
    cfg: bool | None,
    dtype: str | None,
    tokens: int | None,
    device: str,
    attn: str,
    compile_model: bool,
    warmup: int,
    runs: int,
    json_out: bool,
    steps: int | None,
) -> None:
    from sdlens.analysis.cost import parse_res
    from sdlens.analysis.measure import measure
    from sdlens.console import out
    from sdlens.render.jsonout import dumps

    with out.status("measuring… (building the model with random weights)"):
        m = measure(
            model,
            device=device,
            res=parse_res(res),
            batch=batch,
            cfg=cfg,
            dtype=dtype,
            attn=attn,
            compile=compile_model,
            warmup=warmup,
            runs=runs,
            tokens=tokens,
            steps=steps,
        )
    if json_out:
        print(dumps({**m.arch.to_dict(), "measured": m.to_dict()}))
    else:
        from sdlens.render.measure_view import render_measure

        render_measure(m, out)
