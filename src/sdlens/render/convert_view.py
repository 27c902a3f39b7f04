"""Rich views of ``sdlens convert``: the plan (``--dry-run``) and the one-screen verification summary."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from sdlens.arch import registry as R
from sdlens.render.safe_text import ERROR_LIMIT, safe
from sdlens.render.text import plural

_COUNTS = (
    "kept",
    "cast",
    "renamed",
    "restored",
    "baked",
    "dropped",
    "bytes_in",
    "bytes_out",
)  # per component


def _hb(n: int) -> str:
    from sdlens.analysis.inspect import human_bytes

    return human_bytes(n)


def _label(cid: str) -> str:
    return {"denoiser": "denoiser", "other": "unknown keys"}.get(cid, R.COMPONENT_LABELS.get(cid, cid))


def render_plan(plan: Any, console: Console, *, dry_run: bool = True) -> None:
    from sdlens.convert.plan import nbytes, op_of

    head = "[bold]dry run[/] — nothing written" if dry_run else "[bold]plan[/]"
    console.print(
        f"{head}: {safe(plan.input)} ({safe(plan.input_format)}, {safe(plan.family)}) -> {safe(plan.output)} "
        f"({plan.layout})",
        highlight=False,
    )
    for op in plan.operations:
        console.print(f"  • {safe(op)}", highlight=False)
    comps: dict[str, dict[str, int]] = {}
    for e in plan.entries:
        c = comps.setdefault(e.component, dict.fromkeys(_COUNTS, 0))
        c["kept"] += 1
        c["cast"] += e.out_dtype != e.dtype
        c["renamed"] += op_of(e) in ("rename", "ema")
        c["restored"] += e.restore is not None
        c["baked"] += bool(e.bake)
        c["bytes_out"] += nbytes(e)
        if e.pieces:
            c["bytes_in"] += _in_bytes(e)
    for e in plan.dropped:
        c = comps.setdefault(e.component, dict.fromkeys(_COUNTS, 0))
        c["dropped"] += 1
        c["bytes_in"] += _in_bytes(e)
    t = Table(title_justify="left", show_edge=False, pad_edge=False)
    counted = ["cast", "renamed", "restored", "baked", "dropped"]
    counted = [
        k for k in counted if any(c[k] for c in comps.values())
    ]  # only the columns with something in them
    for col in ("component", "written", *counted, "in", "out"):
        t.add_column(col, justify="left" if col == "component" else "right", no_wrap=True)
    for cid, c in sorted(comps.items(), key=lambda kv: -kv[1]["bytes_in"]):
        t.add_row(
            safe(_label(cid)),
            str(c["kept"]),
            *(str(c[k] or "") for k in counted),
            _hb(c["bytes_in"]),
            _hb(c["bytes_out"]),
        )
    console.print(t)
    reasons: dict[str, list[str]] = {}
    for e in plan.dropped:
        reasons.setdefault(e.note or "dropped", []).append(e.key)
    for why, keys in reasons.items():
        console.print(
            f"  [yellow]drop[/] {plural(len(keys), 'tensor')}: {safe(why)} (e.g. {safe(keys[0])})",
            highlight=False,
        )
    renames = [e for e in plan.entries if op_of(e) == "rename"]
    for e in renames[:3]:
        src = e.pieces[0].key if e.pieces else "?"
        more = f" (+{len(e.pieces) - 1} joined)" if len(e.pieces) > 1 else ""
        console.print(f"  [cyan]rename[/] {safe(src)}{more} -> {safe(e.key)}", highlight=False)
    if len(renames) > 3:
        console.print(f"  … {len(renames) - 3} more renamed", highlight=False)
    rc = plan.range_check
    if rc:
        _range_lines(rc, console)
    for n in plan.notes:
        console.print(f"  [dim]note:[/] {safe(n)}", highlight=False)
    files = len(plan.files) + len(plan.json_files)
    console.print(
        f"  size: {_hb(plan.input_file_bytes)} -> {_hb(plan.output_size())} ({plural(files, 'file')})",
        highlight=False,
    )


def _in_bytes(e: Any) -> int:
    from sdlens.io.dtypes import DTYPES

    n = DTYPES[e.dtype].itemsize
    for s in e.shape:
        n *= s
    return n


def _range_lines(rc: dict[str, Any], console: Console) -> None:
    if rc.get("overflow"):
        worst = ", ".join(safe(f"{k} ({v})") for k, v in list(rc["tensors_overflow"].items())[:3])
        console.print(
            f"  [bold red]fp16 overflow:[/] {rc['overflow']} values beyond ±65504 (max |x| "
            f"{rc['max_abs']:.4g}) in {plural(rc['tensors_with_overflow'], 'tensor')}: {worst}",
            highlight=False,
        )
    else:
        console.print(
            "  fp16 range: no value overflows (max |x| " + f"{rc.get('max_abs', 0):.4g})", highlight=False
        )
    if rc.get("underflow"):
        console.print(
            f"  fp16 underflow: {plural(rc['underflow'], 'tiny non-zero value')} "
            f"become{'s' if rc['underflow'] == 1 else ''} 0 "
            f"(in {plural(rc['tensors_with_underflow'], 'tensor')})",
            highlight=False,
        )


def render_result(result: Any, console: Console, seconds: float | None = None) -> None:
    """The one-screen summary of what changed and how it was verified."""
    plan = result.plan
    counts = plan.counts()
    changed = ", ".join(f"{v} {k}" for k, v in counts.items() if v and k != "keep")
    console.print(
        f"[bold green]written[/] {safe(result.output)} ({_hb(result.bytes_written)}, "
        f"{plural(len(result.written_files), 'file')})"
        + (f" in {seconds:.1f} s" if seconds is not None else ""),
        highlight=False,
    )
    console.print(
        f"  tensors: {counts.get('keep', 0)} kept as they were" + (f"; {changed}" if changed else ""),
        highlight=False,
    )
    for op in plan.operations:  # what it wrote about the prediction type (scheduler config, marker keys)
        if op.startswith("prediction: "):
            console.print(f"  {safe(op)}", highlight=False)
    if any(e.out_dtype == "F16" and (e.dtype != "F16" or e.bake) for e in plan.entries):
        _range_lines(result.range_check.to_dict(), console)
    if plan.loras is not None:
        for f in plan.loras.files:
            n = sum(1 for e in plan.entries if f.name in e.bake)
            console.print(
                f"  baked {safe(f.name)} at weight {f.weight:g} into {plural(n, 'tensor')} "
                f"({plural(f.modules, 'module')}; sha256 {f.sha256})",
                highlight=False,
            )
    v = result.verification
    if v is None:
        console.print("  [yellow]not verified[/] (--no-verify)")
        return
    status = "[bold green]verified[/]" if v.ok else "[bold red]verification failed[/]"
    how = (
        "re-opened and compared with the re-read input"
        if v.mode == "full"
        else "re-opened, every tensor's bytes on disk checked against the input's"
    )
    console.print(
        f"  {status}: {how}, {plural(v.tensors, 'tensor')} "
        f"({_hb(v.bytes_compared)}): {v.bit_identical} bit-identical, {v.cast_exact} equal to the input "
        f"rounded to the target dtype, {v.restored} restored"
        + (f", {v.baked} equal to the input + the LoRAs' ΔW" if v.baked else "")
        + f"; {v.renamed} under new names",
        highlight=False,
    )
    console.print(
        f"  metadata: {plural(v.metadata_kept, 'entry', 'entries')} kept"
        + (", provenance added" if v.provenance else ""),
        highlight=False,
    )
    if result.source_sha256:
        for f, h in result.source_sha256.items():
            console.print(
                f"  source sha256 of {safe(f.rsplit('/', 1)[-1])}: {h}", highlight=False
            )  # whole: searched for
    for p in v.problems[:5]:
        console.print(f"  [red]problem:[/] {safe(p, ERROR_LIMIT)}", highlight=False)
