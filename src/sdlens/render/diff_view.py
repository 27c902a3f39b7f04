"""The human view of a DiffResult: the verdict first, then a table at the chosen granularity."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from sdlens.analysis.diff import DiffResult, GroupDiff, component_label, part_file
from sdlens.choices import DiffBy, DiffMetric, check_choice
from sdlens.render.safe_text import NAME_LIMIT, printable, safe
from sdlens.render.text import bullets, fits, path_line, plural, wrap_items

_METRICS = ("l2", "l1", "l0", "cos")


def _fmt(x: float) -> str:
    return "0" if x == 0 else f"{x:.4g}"


def _per_key(r: DiffResult, console: Console, metric: str) -> None:
    """Changed tensors: a table when the key names fit whole beside the numbers, else one key a line with its
    numbers under it."""
    metrics = list(_METRICS) if metric == "all" else [metric]
    cols = ["key", "block", "type", *metrics, "rel", "max |Δ|"]
    rows = []
    for d in r.tensors:
        if d.changed:
            vals = {"l2": _fmt(d.l2), "l1": _fmt(d.l1), "l0": str(d.l0), "cos": f"{d.cos:.6f}"}
            rows.append(
                [
                    printable(d.key, NAME_LIMIT),
                    printable(d.block),
                    printable(d.layer_type),
                    *(vals[m] for m in metrics),
                    _fmt(d.rel),
                    _fmt(d.max_abs),
                ]
            )
    t = Table(title="Per tensor (changed only)", title_justify="left")
    for c in cols:
        t.add_column(c, no_wrap=True, justify="left" if c in ("key", "block", "type") else "right")
    for row in rows:
        t.add_row(*(Text(v) for v in row))  # Text: keys are never read as markup
    if fits(console, t):
        console.print(t)
        return
    console.print(f"[italic]Per tensor (changed only): {plural(len(rows), 'tensor')}[/]")
    for row in rows:
        path_line(console, "", row[0])
        wrap_items(
            console,
            [
                escape(f"{c} {v}" if c not in ("block", "type") else v)
                for c, v in zip(cols[1:], row[1:], strict=True)
                if v
            ],
        )


def render_diff(
    r: DiffResult, console: Console, by: DiffBy = "component", metric: DiffMetric = "all"
) -> None:
    check_choice(metric, "metric", DiffMetric)
    check_choice(by, "by", DiffBy)
    path_line(console, "A", printable(r.a, NAME_LIMIT))
    path_line(console, "B", printable(r.b, NAME_LIMIT))
    bullets(console, [safe(line) for line in r.verdict])
    fam = r.family_a if r.family_a != "unknown" else r.family_b
    if by == "key":
        _per_key(r, console, metric)
        return
    groups: list[tuple[str, GroupDiff]]
    if by == "block":
        groups = [
            (f"{component_label(c, fam)} {b}", g)
            for c, blocks in r.by_block.items()
            for b, g in blocks.items()
        ]
    elif by == "type":
        groups = list(r.by_type.items())
    else:
        groups = [(component_label(c, fam), g) for c, g in r.by_component.items()]
    # tensors = changed + identical + within precision (different dtypes, consistent values; shown when any)
    within = any(g.within_precision for _, g in groups)
    cols = (
        "group",
        "tensors",
        "changed",
        "identical",
        *(("within precision",) if within else ()),
        "√Σ‖Δ‖²",
        "RMS Δ",
        "max |Δ|",
    )
    rows = [
        [
            safe(name),
            *map(str, [g.tensors, g.changed, g.identical] + ([g.within_precision] if within else [])),
            _fmt(g.l2),
            _fmt(g.rms),
            _fmt(g.max_abs),
        ]
        for name, g in groups
    ]
    t = Table(title=f"By {by}", title_justify="left")
    for c in cols:
        t.add_column(c, justify="left" if c == "group" else "right", no_wrap=True)
    for row, (_, g) in zip(rows, groups, strict=True):
        t.add_row(*row, style=None if g.changed else "dim")
    if fits(console, t):
        console.print(t)
    else:  # narrow: a group a line, its figures wrapped between items (never a number cut)
        console.print(f"[italic]By {by}[/]")
        for row in rows:
            items = [f"{v} {c}" for c, v in zip(cols[1:], row[1:], strict=True)]
            wrap_items(console, [f"{row[0]}: {items[0]}", *items[1:]], indent=2)
    part = part_file(r)
    if part is not None:
        other, rest = ("B", r.only_b) if part == "A" else ("A", r.only_a)
        shared = {t.component for t in r.tensors}
        n = sum(1 for k in rest if k.split("/", 1)[0] not in shared)
        console.print(
            f"{other}'s other components: {plural(n, 'tensor')}, not compared (listed in --json)",
            highlight=False,
        )
    elif r.only_a or r.only_b:
        console.print(
            f"only in A: {plural(len(r.only_a), 'tensor')} · only in B: {plural(len(r.only_b), 'tensor')} "
            "(listed in --json)",
            highlight=False,
        )
