"""``sdlens recipe`` outputs: the recipe in words, the per-group weight table, the notes, and a figure of the
weights and residual shares per group."""

from __future__ import annotations

import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sdlens.analysis.merge_fit import EXPLAINED, TRAINED
from sdlens.analysis.merge_signature import NONLINEAR
from sdlens.analysis.recipe import GroupRecipe, RecipeResult
from sdlens.render.safe_text import plot_label, safe
from sdlens.render.text import bullets

_VERDICT = {
    "DARE": "a linear fit cannot rebuild random drops: the element counts explain it",
    "TIES": "a linear fit cannot rebuild trimmed deltas: the element counts explain it",
    "crossover": "a linear fit cannot rebuild element-wise picks: the element counts explain it",
    "explained": "explained: the model is this combination, to rounding",
    "trained further": "merged and then trained further: the combination explains most of it, not all",
    "not a merge": "not a merge of these candidates",
    "copy": "a copy of one candidate",
    "identical": "identical to the nearest candidate",
}


def _w(x: float) -> str:
    return "0" if abs(x) < 5e-4 else f"{x:.3f}"


def _row(g: GroupRecipe, shown: list[int]) -> list[str]:
    if g.fit is None:
        return [safe(g.group), *("" for _ in shown), "", "", safe(g.note or ""), ""]
    by = dict(zip(g.fit.candidates, g.fit.affine.weights, strict=True))
    cells = [_w(by[i]) if i in by else "—" for i in shown]
    share = "0" if g.fit.verdict == "copy" else f"{g.fit.affine.share:.3g}"
    verdict = g.fit.verdict + (" (low confidence)" if g.fit.confidence == "low" else "")
    if g.signature.method in NONLINEAR:
        verdict = f"{g.signature.method}, drop {g.signature.drop_rate or 0:.2f}"
    return [safe(g.group), *cells, f"{g.fit.affine.total:.3f}", share, verdict, g.signature.method]


def group_table(result: RecipeResult, groups: list[GroupRecipe], title: str) -> Table:
    """One row per group: weights, their sum, residual share, verdict, and the method where the groups'
    methods differ from the model's."""
    methods = {g.signature.method for g in groups if g.fit is not None}
    show_method = bool(methods - {result.method.method, "copy", "no evidence"})
    shown = _weighing(result, groups)
    hidden = len(result.labels) - len(shown)
    if hidden:
        title += f"; {hidden} candidates of weight 0 everywhere not shown"
    t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    t.add_column("group", no_wrap=True)
    for i in shown:
        t.add_column(result.labels[i - 1], justify="right", no_wrap=True)
    t.add_column("Σw", justify="right", no_wrap=True)
    t.add_column("residual", justify="right", no_wrap=True)
    t.add_column("verdict")
    if show_method:
        t.add_column("method")
    for g in groups:
        t.add_row(*_row(g, shown)[: None if show_method else -1])
    return t


def _weighing(result: RecipeResult, groups: list[GroupRecipe]) -> list[int]:
    """The candidates (model indices) to give a column: all of up to four, else those with a weight
    anywhere (a folder of candidates would not fit a terminal)."""
    every = list(range(1, len(result.labels) + 1))
    if len(every) <= 4:
        return every
    used = {
        c
        for g in groups
        if g.fit
        for c, w in zip(g.fit.candidates, g.fit.affine.weights, strict=True)
        if abs(w) >= 5e-4
    }
    return [i for i in every if i in used] or every


def notes(result: RecipeResult) -> list[str]:
    """What the table alone does not say: ill-conditioned groups, identical candidates, weights that do not
    sum to 1, non-negative fits, left-out groups."""
    lines: list[str] = list(result.notes)
    names = {i + 1: lab for i, lab in enumerate(result.labels)}
    for g in [*result.groups, *result.components]:
        f = g.fit
        if f is None:
            continue
        if f.confidence == "low" and f.closest:
            a, b, rel = f.closest
            lines.append(
                f"{g.group}: {names[a]} and {names[b]} are nearly the same here (their distance is {rel:.2g} of "
                "the largest between candidates): the weights between them are meaningless, their sum is not"
            )
        for same in f.identical:
            lines.append(
                f"{g.group}: {' = '.join(names[i] for i in same)} here (bit-identical): their weights add"
            )
        if (
            f.free
            and abs(f.free.total - 1) > 0.02
            and f.verdict != "copy"
            and f.free.share < 0.5 * f.affine.share
        ):
            lines.append(f"{g.group}: the best fit has weights summing to {f.free.total:.3f} (scaled)")
        if f.convex and f.verdict != "copy":
            w = " + ".join(f"{_w(x)}*{names[c]}" for c, x in zip(f.candidates, f.convex.weights, strict=True))
            lines.append(
                f"{g.group}: with no negative weights the best is {w} (residual {f.convex.share:.3g})"
            )
    seen: set[str] = set()
    return [x for x in lines if not (x in seen or seen.add(x))]


def render_recipe(result: RecipeResult, console: Console, *, max_notes: int = 12) -> None:
    console.print(f"[bold]{safe(result.model.name)}[/] ({safe(result.model.family)})", highlight=False)
    for lab, c in zip(result.labels, result.candidates, strict=True):
        console.print(f"  {lab} = {safe(c.name)}", highlight=False, soft_wrap=True)
    console.print(f"[bold]Recipe:[/] {safe(result.formula)}", highlight=False, soft_wrap=True)
    console.print(f"[bold]Method:[/] {safe(result.method.text)}", highlight=False, soft_wrap=True)
    if result.residual_share is not None:
        words = _VERDICT.get(result.verdict, result.verdict)
        console.print(
            f"[bold]Residual share:[/] {result.residual_share:.3g} — {safe(words)}",
            highlight=False,
            soft_wrap=True,
        )
    if result.mbw:
        console.print(
            f"[bold]MBW[/] ({safe(result.mbw.a)}→{safe(result.mbw.b)}, {len(result.mbw.blocks)} weights in "
            f"supermerger / sd-mecha order {result.mbw.blocks[0]}…{result.mbw.blocks[-1]}): {result.mbw.vector}",
            highlight=False,
            soft_wrap=True,
        )
    for claim in result.claims:
        console.print(f"[bold]Claimed[/] {safe(claim.get('check', ''))}", highlight=False, soft_wrap=True)
    title = {"block": "per merge block", "component": "per component", "key": "per tensor"}[result.by]
    console.print(group_table(result, result.groups, f"Weights {title} (affine fit: Σw = 1)"))
    if result.by != "component":
        console.print(group_table(result, result.components, "Weights per component"))
    lines = notes(result)
    if lines:
        bullets(console, [safe(x) for x in lines[:max_notes]])
        if len(lines) > max_notes:
            console.print(f"  … and {len(lines) - max_notes} more notes in the JSON", highlight=False)


def plot_recipe(result: RecipeResult, path: str | Path) -> Path:
    """Write :func:`recipe_figure` to ``path`` (PNG or SVG by its suffix), atomically."""
    from sdlens.render.figure_file import save_figure

    return save_figure(recipe_figure(result), path)


def recipe_figure(result: RecipeResult):
    """Weights per group, one line per candidate that weighs anywhere (top), and the residual share per group
    on a log scale with the verdicts' thresholds (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in result.groups if g.fit is not None]
    width = min(20.0, max(7.0, 0.32 * len(groups) + 3))
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(width, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]}
    )
    x = list(range(len(groups)))
    for i in _weighing(result, groups):  # candidates of weight 0 everywhere are left out, as in the table
        ys = [dict(zip(g.fit.candidates, g.fit.affine.weights, strict=True)).get(i, math.nan) for g in groups]
        label = f"{result.labels[i - 1]} = {result.candidates[i - 1].name}"
        top.plot(x, ys, marker="o", ms=4, label=plot_label(label, 40))
    top.axhline(0, color="#999", lw=0.8)
    top.axhline(1, color="#999", lw=0.8, ls=":")
    top.set_ylabel("weight (Σ = 1)")
    top.set_title(plot_label(f"{result.model.name}: {result.formula}", 110), fontsize=10, loc="left")
    top.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.005, 1.0), borderaxespad=0)
    top.grid(alpha=0.3)
    floor = 1e-5
    shares = [max(floor, 0.0 if g.fit.verdict == "copy" else g.fit.affine.share) for g in groups]
    colours = ["#55A868" if s <= EXPLAINED else "#DD8452" if s <= TRAINED else "#C44E52" for s in shares]
    bottom.bar(x, shares, color=colours, bottom=floor * 0.5)
    bottom.set_yscale("log")
    bottom.set_ylim(floor * 0.5, 2.0)
    for level, words in ((EXPLAINED, "explained below"), (TRAINED, "not a merge above")):
        bottom.axhline(level, color="#666", lw=0.8, ls="--")
        bottom.text(len(x) - 0.5, level, words, fontsize=7, ha="right", va="bottom", color="#444")
    bottom.set_ylabel("residual share (log)")
    bottom.set_xticks(x, [plot_label(g.group, 24) for g in groups], rotation=90, fontsize=8)
    bottom.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig
