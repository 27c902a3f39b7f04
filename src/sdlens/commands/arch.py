"""``sdlens arch``: the anatomy of a diffusion architecture with no weights. Imports stay cheap here: torch,
diffusers and transformers are imported inside the command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sdlens.choices import DiagramDepth, Precision, metavar
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
        str,
        typer.Option(
            metavar=metavar(Precision),
            callback=checked("dtype", Precision),
            help="Precision of weights and activations.",
        ),
    ] = "fp16",
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
) -> None:
    """Parameters, merge blocks, every GEMM, FLOPs, memory and diagrams of an architecture — no weights needed."""
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
