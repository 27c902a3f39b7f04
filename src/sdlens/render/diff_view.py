"""The human view of a DiffResult: the verdict first, then a table at the chosen granularity."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from sdlens.analysis.diff import DiffResult, GroupDiff, _label, part_file
from sdlens.render.safe_text import safe

_METRICS = ("l2", "l1", "l0", "cos")


def _fmt(x: float) -> str:
    return "0" if x == 0 else f"{x:.4g}"


def render_diff(r: DiffResult, console: Console, by: str = "component", metric: str = "all") -> None:
    console.print(f"[bold]A[/] {safe(r.a)}\n[bold]B[/] {safe(r.b)}")
    for line in r.verdict:
        console.print(f"  • {safe(line)}", highlight=False, soft_wrap=True)
    fam = r.family_a if r.family_a != "unknown" else r.family_b
    if by == "key":
        t = Table(title="Per tensor (changed only)", title_justify="left")
        cols = ["key", "block", "type"] + (list(_METRICS) if metric == "all" else [metric]) + ["rel", "max |Δ|"]
        for c in cols:
            t.add_column(c, overflow="fold")
        for d in r.tensors:
            if not d.changed:
                continue
            vals = {"l2": _fmt(d.l2), "l1": _fmt(d.l1), "l0": str(d.l0), "cos": f"{d.cos:.6f}"}
            row = [safe(d.key), safe(d.block), safe(d.layer_type)] + [vals[m] for m in (_METRICS if metric == "all" else [metric])]
            t.add_row(*row, _fmt(d.rel), _fmt(d.max_abs))
        console.print(t)
        return
    groups: list[tuple[str, GroupDiff]]
    if by == "block":
        groups = [(f"{_label(c, fam)} {b}", g) for c, blocks in r.by_block.items() for b, g in blocks.items()]
    elif by == "type":
        groups = list(r.by_type.items())
    else:
        groups = [(_label(c, fam), g) for c, g in r.by_component.items()]
    t = Table(title=f"By {by}", title_justify="left")
    # tensors = changed + identical + within precision (different dtypes, consistent values; shown when any)
    within = any(g.within_precision for _, g in groups)
    counts = ("tensors", "changed", "identical") + (("within precision",) if within else ())
    for c in ("group", *counts, "√Σ‖Δ‖²", "RMS Δ", "max |Δ|"):
        t.add_column(c, justify="left" if c == "group" else "right")
    for name, g in groups:
        style = None if g.changed else "dim"
        n = [g.tensors, g.changed, g.identical] + ([g.within_precision] if within else [])
        t.add_row(safe(name), *map(str, n), _fmt(g.l2), _fmt(g.rms), _fmt(g.max_abs), style=style)
    console.print(t)
    part = part_file(r)
    if part is not None:
        other, rest = ("B", r.only_b) if part == "A" else ("A", r.only_a)
        shared = {t.component for t in r.tensors}
        n = sum(1 for k in rest if k.split("/", 1)[0] not in shared)
        console.print(f"{other}'s other components: {n} tensors, not compared (listed in --json)")
    elif r.only_a or r.only_b:
        console.print(f"only in A: {len(r.only_a)} tensors · only in B: {len(r.only_b)} tensors (listed in --json)")
