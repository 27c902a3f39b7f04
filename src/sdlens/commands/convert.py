"""``sdlens convert``: format, precision, EMA, VAE, component extraction and layout, never losing data.

Importing this module is cheap (no torch): the work is imported inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sdlens.commands._options import VariantOption


def _split(values: list[str] | None) -> list[str]:
    return [v.strip() for raw in values or [] for v in raw.split(",") if v.strip()]


def run(
    inp: Annotated[
        Path,
        typer.Argument(
            metavar="IN", help="Checkpoint: .safetensors/.ckpt/.pt/.bin file or diffusers folder."
        ),
    ],
    out: Annotated[
        Path,
        typer.Argument(metavar="OUT", help="Output .safetensors file (or folder with --layout diffusers)."),
    ],
    dtype: Annotated[
        str,
        typer.Option(metavar="fp16|bf16|fp32|keep", help="fp16, bf16, fp32 or keep (float tensors only)."),
    ] = "keep",
    ema: Annotated[
        str,
        typer.Option(
            metavar="keep|drop|use",
            help="keep, drop, or use (EMA weights become the model's: EMA-only file).",
        ),
    ] = "keep",
    drop: Annotated[
        list[str] | None,
        typer.Option(
            metavar="WHAT",
            help="Drop: unknown, ema, schedule, markers, vae, te, clip_l, clip_g, "
            "openclip_h, t5, unet, controlnet, position_ids, or a key glob. Repeatable / comma list.",
        ),
    ] = None,
    fix_position_ids: Annotated[
        bool, typer.Option("--fix-position-ids", help="Restore CLIP position_ids as int64 0..N-1.")
    ] = False,
    vae: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Bake in / replace the VAE with the one in this file (VAE file or checkpoint).",
        ),
    ] = None,
    extract: Annotated[
        list[str] | None,
        typer.Option(
            metavar="COMPONENT",
            help="Keep only: unet, vae, te, clip_l, clip_g, openclip_h, t5, ... "
            "(one component: the layout its own files use).",
        ),
    ] = None,
    layout: Annotated[
        str,
        typer.Option(
            metavar="single|diffusers",
            help="single (one .safetensors) or diffusers (folder with config.json files).",
        ),
    ] = "single",
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Show what would be kept, cast, renamed and dropped; write nothing."),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Write even if fp16 would overflow (values become inf).")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing OUT (after verification).")
    ] = False,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Skip re-reading the output (benchmarks only).")
    ] = False,
    verify_full: Annotated[
        bool,
        typer.Option(
            "--verify-full",
            help="Also re-read the input and compare every tensor "
            "with it (slower; by default the output is checked against digests "
            "taken from the input while converting).",
        ),
    ] = False,
    merge_lora: Annotated[
        list[str] | None,
        typer.Option(
            "--merge-lora",
            metavar="LORA[:WEIGHT]",
            help="Bake in a LoRA (kohya, LyCORIS LoCon or PEFT / diffusers file), scaled by WEIGHT "
            "(default 1.0, may be negative). Repeatable: applied in order.",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the plan / result as JSON.")] = False,
    variant: VariantOption = None,
) -> None:
    """Checkpoint surgery that never loses data: .ckpt -> .safetensors, fp16/bf16, EMA, VAE, extract, layouts."""
    import time

    from sdlens import console
    from sdlens.convert import ConvertOptions, make_plan
    from sdlens.convert import convert as run_convert
    from sdlens.io.outputs import OutFile, OutFolder, check_outputs, remove_created_on_failure
    from sdlens.render.convert_view import render_plan, render_result
    from sdlens.render.jsonout import dumps

    target = OutFolder("OUT", out, ("**/*",), whole=True) if layout == "diffusers" else OutFile("OUT", out)
    opts = ConvertOptions(
        dtype=dtype,
        ema=ema,
        drop=_split(drop),
        fix_position_ids=fix_position_ids,
        vae=vae,
        extract=_split(extract),
        layout=layout,
        variant=variant,
        merge_lora=list(merge_lora or []),
    )
    if not dry_run:
        check_outputs([inp, vae, *(spec.path for spec in opts.lora_specs())], [target])
    plan = make_plan(inp, out, opts)
    if dry_run:
        if any(e.out_dtype == "F16" and (e.dtype != "F16" or e.bake) for e in plan.entries):
            from sdlens.convert.writer import scan_range

            bar, progress = console.progress_bar(plan.output_tensor_bytes, "fp16 range check")
            with bar:
                scan_range(plan, progress)
        if json_out:
            print(dumps(plan))
        else:
            render_plan(plan, console.out)
        return
    t0 = time.perf_counter()
    bar, progress = console.progress_bar(
        plan.output_tensor_bytes * (1 if no_verify else 2), f"convert {inp.name}"
    )
    with bar:
        verify: bool | str = False if no_verify else ("full" if verify_full else True)
        with remove_created_on_failure(folders=[out] if layout == "diffusers" else [], files=[out]):
            result = run_convert(plan, force=force, overwrite=overwrite, verify=verify, progress=progress)
    if json_out:
        print(dumps(result))
    else:
        render_result(result, console.out, time.perf_counter() - t0)
