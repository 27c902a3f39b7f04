"""``sdlens lineage`` outputs: the text tree (console and ``lineage.txt``), ``lineage.json`` and the figure
(graphviz ``dot`` where installed, matplotlib otherwise)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from rich.console import Console

from sdlens.analysis.lineage import Lineage
from sdlens.analysis.lineage_context import Edge, part_label
from sdlens.arch.blocks import block_names
from sdlens.io.atomic import atomic_path, write_text_atomic
from sdlens.render.jsonout import dumps
from sdlens.render.safe_text import plot_label, printable, safe

WRITES = ("lineage.json", "lineage.txt", "lineage.png")  # in the --out folder
_TREE_KINDS = ("merge", "fine-tune", "add-difference")


@lru_cache(maxsize=8)
def _stems(names: tuple[str, ...]) -> dict[str, str]:
    """Shown names: file names without their extension where that keeps them apart."""
    stems = {n: Path(n).stem for n in names}
    return stems if len(set(stems.values())) == len(stems) else {n: n for n in names}


def _show(lin: Lineage, name: str) -> str:
    """A model's shown name, printable (not markup-escaped)."""
    return printable(_stems(tuple(n.name for n in lin.nodes)).get(name, name))


def _pct(x: float | None) -> str:
    return "?" if x is None else f"{100 * x:.2g} %" if x < 0.1 else f"{100 * x:.0f} %"


def _w(x: float) -> str:
    return f"{x:.3g}"


@dataclass
class _Item:
    name: str
    text: str  # what links it to its parent line
    children: list[_Item] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)  # lines under it (MBW vector)


def _mbw(lin: Lineage, e: Edge) -> str | None:
    """The per-block weights of a two-parent merge (the second parent's, in the family's block order), where
    they differ between blocks."""
    rec = next((m for m in lin.merges if m["model"] == e.target), None)
    if rec is None or len(rec["parents"]) != 2 or not rec["blocks"]:
        return None
    second = list(rec["parents"])[1]
    order = [b for b in block_names(lin.family) if b in rec["blocks"]] or list(rec["blocks"])
    alphas = [None if rec["blocks"][b] is None else rec["blocks"][b][second] for b in order]
    told = [a for a in alphas if a is not None]
    if not told or max(told) - min(told) < 0.01:
        return None
    vec = ",".join("-" if a is None else f"{a:.3g}" for a in alphas)
    why = " (-: the parents are bit-identical there)" if len(told) < len(alphas) else ""
    return f"per block, weight of {_show(lin, second)} ({order[0]}…{order[-1]}): {vec}{why}"


def _link(lin: Lineage, e: Edge, child: str) -> str:
    """The words for the edge ``e`` reaching ``child``."""
    if e.kind == "merge":
        rec = next(m for m in lin.merges if m["model"] == child)
        if rec.get("method"):  # found by element evidence: no linear weights
            return f"{rec['method']} merge: {printable(rec['formula'])} (element evidence)"
        parts = " + ".join(f"{_w(w)}·{_show(lin, p)}" for p, w in rec["parents"].items())
        how = "merged, then trained further" if e.trained_further else "explained"
        return f"merge of {parts} (residual {_pct(e.residual_share)}: {how})"
    if e.kind == "fine-tune" and e.directed:
        return f"fine-tune of {_show(lin, e.source)} (named in its metadata)"
    if e.kind == "fine-tune" and e.near_duplicate:
        return (
            f"near-duplicate, direction unknown (relative distance {e.relative_distance:.2g}, {_shared(e)})"
        )
    if e.kind == "fine-tune":
        return f"fine-tune or sibling, direction unknown (relative distance {e.relative_distance:.3g}, {_shared(e)})"
    if e.kind == "add-difference":
        other = e.source if child == e.target else e.target
        b, a = e.difference or ("?", "?")
        if child == e.target:  # e.source = e.target + α(B − A), so e.target = e.source + α(A − B)
            b, a = a, b
        return (
            f"add-difference: {_show(lin, child)} = {_show(lin, other)} + {_w(e.alpha or 0)}·({_show(lin, b)} − "
            f"{_show(lin, a)}), or the other way round (direction unknown)"
        )
    return printable(e.note)


def _shared(e: Edge) -> str:
    return "same " + ", ".join(part_label(c) for c in e.components) if e.components else "no shared part"


def _links(lin: Lineage) -> dict[str, list[tuple[str, Edge]]]:
    """Per model, the tree's edges from it: merges to their children, undirected evidence both ways."""
    links: dict[str, list[tuple[str, Edge]]] = {n.name: [] for n in lin.nodes}
    for e in lin.edges:
        if e.kind in _TREE_KINDS:
            links[e.source].append((e.target, e))
            if not e.directed:
                links[e.target].append((e.source, e))
    return links


def _copy_item(lin: Lineage, name: str, copy: str) -> _Item:
    same = next((e for e in lin.edges_of("same-component") if {e.source, e.target} == {name, copy}), None)
    what = "same denoiser" if same is None else same.note
    if same is not None and same.copy:
        what = "a copy, every part bit-identical"
    return _Item(copy, f"= {_show(lin, name)}: {what}")


def tree(lin: Lineage) -> list[_Item]:
    """The lineage as nested items: roots first, each merge under the first of its parents reached (a
    reference under the others), fine-tunes and add-difference partners under the model they were reached
    from, copies under their original."""
    links = _links(lin)
    seen: set[str] = set()
    under: dict[str, str] = {}  # model -> the model it is shown under

    def visit(name: str, text: str) -> _Item:
        seen.add(name)
        item = _Item(name, text)
        for n in lin.nodes:
            if n.same_denoiser_as == name:
                seen.add(n.name)
                item.children.append(_copy_item(lin, name, n.name))
        for other, e in links[name]:
            if other in seen:
                if e.kind == "merge" and e.source == name:
                    where = _show(lin, under.get(other, "?"))
                    item.children.append(_Item(other, f"merge child (shown under {where})"))
            elif not e.directed or e.source == name:
                under[other] = name
                child = visit(other, _link(lin, e, other))
                if e.kind == "merge" and (m := _mbw(lin, e)):
                    child.extra.append(m)
                item.children.append(child)
        return item

    order = [*lin.roots, *(n.name for n in lin.nodes)]  # then anything the roots do not reach
    return [visit(r, _root_text(lin, r)) for r in dict.fromkeys(order) if r not in seen]


def _root_text(lin: Lineage, name: str) -> str:
    edges = [e for e in lin.edges if e.evidence and name in (e.source, e.target)]
    if any(e.kind != "same-component" for e in edges):
        return "root"
    shared = sorted({e.target if e.source == name else e.source for e in edges})
    if shared:
        more = f" and {len(shared) - 3} more" if len(shared) > 3 else ""
        names = ", ".join(_show(lin, x) for x in shared[:3]) + more
        return f"root (no evidence of a relation beyond bit-identical parts shared with {names})"
    return "root (no evidence of a relation to any other model)"


def tree_lines(lin: Lineage) -> list[str]:
    """The tree as text lines, with ├─ └─ connectors (names printable, not markup-escaped)."""
    lines: list[str] = []
    stems = _stems(tuple(n.name for n in lin.nodes))

    def emit(item: _Item, prefix: str, last: bool, top: bool) -> None:
        head = "" if top else prefix + ("└─ " if last else "├─ ")
        lines.append(f"{head}{printable(stems[item.name])}  — {item.text}")
        inner = "" if top else prefix + ("   " if last else "│  ")
        for x in item.extra:
            lines.append(f"{inner}{'│  ' if item.children else '   '}  {x}")
        for k, c in enumerate(item.children):
            emit(c, inner, k == len(item.children) - 1, False)

    for item in tree(lin):
        emit(item, "", True, True)
    return lines


def lineage_text(lin: Lineage) -> str:
    """``lineage.txt``: the tree, the nearest-only links, the bit-identical parts, the legend."""
    n = len(lin.nodes)
    out = [f"Lineage of {n} models ({printable(lin.family)}); names without their extension", ""]
    out += tree_lines(lin)
    nearest = lin.edges_of("nearest")
    if nearest:
        out += ["", "Nearest neighbours only (the spanning tree's links: NO evidence of a relation):"]
        out += [
            f"  {_show(lin, e.source)} ┄ {_show(lin, e.target)}  (relative distance {e.relative_distance:.3g})"
            if e.relative_distance is not None
            else f"  {_show(lin, e.source)} ┄ {_show(lin, e.target)}"
            for e in nearest
        ]
    groups = [(c, g) for c, gs in lin.identity.items() for g in gs]
    if groups:
        out += ["", "Bit-identical parts:"]
        out += [f"  {c}: {', '.join(_show(lin, x) for x in g)}" for c, g in groups]
    if lin.skipped:
        out += ["", "Not read:"] + [f"  {printable(s['path'])}: {printable(s['error'])}" for s in lin.skipped]
    out += [""] + [f"note: {printable(x)}" for x in lin.notes]
    out += [
        "Evidence: merge (a convex fit of the blocks; direction from convexity), add-difference (an affine",
        "fit M = C + α(B − A); direction unknown), fine-tune (relative distance ≤ "
        f"{lin.thresholds['fine_tune_relative_distance']:g} and a bit-identical text",
        "encoder or VAE; direction only where metadata names the base), same-component (bit-identical parts).",
        "Not evidence: nearest (only the nearest neighbour in the minimum spanning tree of denoiser distances).",
    ]
    return "\n".join(out) + "\n"


def render_lineage(lin: Lineage, console: Console) -> None:
    """The tree and a count of the edges, on the terminal."""
    for line in tree_lines(lin):
        console.print(safe(line), highlight=False, soft_wrap=True)
    kinds = {}
    for e in lin.edges:
        kinds[e.kind] = kinds.get(e.kind, 0) + 1
    summary = ", ".join(f"{v} {k}" for k, v in kinds.items())
    console.print(f"edges: {summary} (nearest: no evidence, only the nearest neighbour)", highlight=False)


def write_outputs(
    lin: Lineage, out_dir: Path, *, plots: bool = True, while_drawing: Callable[[], None] | None = None
) -> list[Path]:
    """``lineage.json``, ``lineage.txt`` and (with ``plots``) ``lineage.png``, each written atomically."""
    out_dir = Path(out_dir)
    written = [
        write_text_atomic(out_dir / "lineage.json", dumps(lin)),
        write_text_atomic(out_dir / "lineage.txt", lineage_text(lin)),
    ]
    if while_drawing:
        while_drawing()
    if plots:
        written.append(draw(lin, out_dir / "lineage.png"))
    return written


# --------------------------------------------------------------------------- the figure

_STYLE = {  # kind -> colour, line style
    "merge": ("#1F5FA8", "-"),
    "add-difference": ("#8E44AD", "-"),
    "fine-tune": ("#2E8B57", "-"),
    "same-component": ("#888888", ":"),
    "nearest": ("#999999", "--"),
}


def _short(lin: Lineage) -> dict[str, str]:
    """Figure labels: the shown names, for matplotlib."""
    return {k: plot_label(v, 40) for k, v in _stems(tuple(n.name for n in lin.nodes)).items()}


def _edge_label(e: Edge) -> str:
    if e.kind == "merge" and e.method:
        return e.method
    if e.kind == "merge":
        return _w(e.weight or 0) + (" +trained" if e.trained_further else "")
    if e.kind == "add-difference":
        return f"add-diff α={_w(e.alpha or 0)}"
    if e.kind == "fine-tune" and e.near_duplicate:
        return "near-duplicate"
    if e.kind == "fine-tune":
        return "fine-tune" if e.directed else "fine-tune?"
    if e.kind == "same-component":
        return "copy" if e.copy else ""
    return "nearest"


def _drawn(lin: Lineage) -> list[Edge]:
    """The edges drawn: every one, except a shared part between two models another edge already links."""
    linked = {frozenset((e.source, e.target)) for e in lin.edges if e.kind != "same-component"}
    return [
        e
        for e in lin.edges
        if e.kind != "same-component" or e.copy or frozenset((e.source, e.target)) not in linked
    ]


def _order_layers(depth: dict[str, int], x: dict[str, float], up: dict[str, list[str]]) -> None:
    """Each layer below the first, left to right by the mean position of the nodes above it links to, at
    least one apart (``x`` updated in place)."""
    for d in range(1, max(depth.values(), default=0) + 1):
        layer = [k for k in depth if depth[k] == d]
        if not layer:  # a level left empty where parents pushed their children further down
            continue
        key = {k: sum(x[p] for p in up[k]) / len(up[k]) if up.get(k) else x[k] for k in layer}
        layer.sort(key=lambda k: (key[k], x[k]))
        pos: list[float] = []
        for k in layer:
            pos.append(key[k] if not pos else max(key[k], pos[-1] + 1.0))
        shift = sum(p - key[k] for p, k in zip(pos, layer, strict=True)) / len(layer)
        for p, k in zip(pos, layer, strict=True):
            x[k] = p - shift


def layout(lin: Lineage) -> dict[str, tuple[float, float]]:
    """Layered positions: depth in the tree (a merge one below its lowest parent); the roots side by side as
    wide as their trees; each lower layer ordered by the mean position of the nodes above it links to (its
    parents), at least one apart."""
    items = tree(lin)
    depth: dict[str, int] = {}
    x: dict[str, float] = {}
    up: dict[str, list[str]] = {}
    slot = [0.0]

    def place(item: _Item, d: int) -> float:
        depth[item.name] = d
        kids = [c for c in item.children if not c.text.startswith("merge child")]
        for c in kids:
            up.setdefault(c.name, []).append(item.name)
        if not kids:
            x[item.name] = slot[0]
            slot[0] += 1
        else:
            xs = [place(c, d + 1) for c in kids]
            x[item.name] = sum(xs) / len(xs)
        return x[item.name]

    alone = [it.name for it in items if not it.children and _root_text(lin, it.name) != "root"]
    for it in items:
        if it.name not in alone:
            place(it, 0)
    for n in lin.nodes:
        for p in n.explained_by or []:
            if p in depth and p not in up.get(n.name, []):
                up.setdefault(n.name, []).append(p)
    for _ in range(len(lin.nodes)):  # below every parent
        moved = [k for k in depth if up.get(k) and depth[k] <= max(depth[p] for p in up[k])]
        for k in moved:
            depth[k] = max(depth[p] for p in up[k]) + 1
        if not moved:
            break
    _order_layers(depth, x, up)
    low = min(x.values(), default=0.0)
    out = {k: (x[k] - low, -float(depth[k])) for k in x}
    bottom = -float(max(depth.values(), default=-1) + 1)  # models with no evidence of a relation: a row apart
    out.update({k: (float(i), bottom) for i, k in enumerate(alone)})
    return out


def draw(lin: Lineage, path: Path) -> Path:
    """``lineage.png`` with graphviz ``dot`` where it is installed, else matplotlib."""
    dot = shutil.which("dot")
    if dot:
        try:
            return _draw_dot(lin, path, dot)
        except (OSError, subprocess.SubprocessError):
            pass
    return _draw_matplotlib(lin, path)


def _dot_source(lin: Lineage) -> str:
    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["digraph lineage {", "  rankdir=TB; node [shape=box, style=rounded, fontname=Helvetica];"]
    lines += [f"  {q(printable(n.name))} [label={q(_show(lin, n.name))}];" for n in lin.nodes]
    for e in _drawn(lin):
        colour, style = _STYLE[e.kind]
        dstyle = {"-": "solid", "--": "dashed", ":": "dotted"}[style]
        arrow = "normal" if e.directed else "none"
        lines.append(
            f"  {q(printable(e.source))} -> {q(printable(e.target))} [color={q(colour)}, style={dstyle}, arrowhead={arrow}, "
            f"label={q(_edge_label(e))}, fontsize=10{', constraint=false' if e.kind == 'nearest' else ''}];"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def _draw_dot(lin: Lineage, path: Path, dot: str) -> Path:
    with atomic_path(path) as tmp:
        subprocess.run(
            [dot, "-Tpng", "-o", str(tmp)], input=_dot_source(lin), text=True, check=True, timeout=60
        )
    return path


def _free_spot(
    taken: list[tuple[float, float, float]], points: list[tuple[float, float]], chars: int
) -> tuple[float, float]:
    """The first of ``points`` where a label of ``chars`` characters overlaps no label or node placed so far
    (the first point where none is free), recorded in ``taken``."""
    half = 0.045 * chars  # in layout units: a node slot is 1 wide at about 2.3 inches
    free = [
        p for p in points if all(abs(p[0] - tx) > half + th or abs(p[1] - ty) > 0.12 for tx, ty, th in taken)
    ]
    x, y = (free or points)[0]
    taken.append((x, y, half))
    return x, y


def _bend(pos: dict[str, tuple[float, float]], a: str, b: str) -> float:
    """How far to bow the edge a — b (0: straight): edges within a row, and edges passing over a node."""
    (x0, y0), (x1, y1) = pos[a], pos[b]
    if abs(y1 - y0) < 1e-9:
        return 0.15 if y0 >= 0 else -0.15
    for k, (x, y) in pos.items():
        if k in (a, b) or not min(y0, y1) < y < max(y0, y1):
            continue
        t = (y - y0) / (y1 - y0)
        if abs(x0 + t * (x1 - x0) - x) < 0.35:
            return 0.2
    return 0.0


def _curve(p0: tuple[float, float], p1: tuple[float, float], bend: float, ts) -> list[tuple[float, float]]:
    """Points at ``ts`` on the quadratic curve from p0 to p1 bowed by ``bend`` × their distance."""
    (x0, y0), (x1, y1) = p0, p1
    cx, cy = (x0 + x1) / 2 - bend * (y1 - y0), (y0 + y1) / 2 + bend * (x1 - x0)
    return [
        (
            (1 - t) ** 2 * x0 + 2 * (1 - t) * t * cx + t * t * x1,
            (1 - t) ** 2 * y0 + 2 * (1 - t) * t * cy + t * t * y1,
        )
        for t in ts
    ]


def _draw_edges(ax, lin: Lineage, pos: dict[str, tuple[float, float]], taken) -> None:
    """Every edge drawn: straight (arrowed from a parent where directed) or bowed around the nodes; labels
    where they overlap nothing drawn before."""
    for e in _drawn(lin):
        colour, style = _STYLE[e.kind]
        lw = 1.6 if e.evidence else 1.0
        bend = _bend(pos, e.source, e.target)
        line = _curve(pos[e.source], pos[e.target], bend, [i / 40 for i in range(41)])
        ax.plot(*zip(*line, strict=True), color=colour, ls=style, lw=lw, zorder=1)
        if e.directed:  # the head, on the last third of the line (the end lies under the child's box)
            ax.annotate(
                "", xy=line[-1], xytext=line[-14], zorder=1,
                arrowprops={"arrowstyle": "-|>", "color": colour, "lw": lw, "shrinkA": 0, "shrinkB": 13},
            )  # fmt: skip
        label = _edge_label(e)
        if label:
            first = 0.35 if e.kind == "merge" else 0.5
            ts = [first, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6]
            x, y = _free_spot(taken, _curve(pos[e.source], pos[e.target], bend, ts), len(label))
            ax.text(
                x, y, label, fontsize=8, color=colour, ha="center", va="center", zorder=3,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none"},
            )  # fmt: skip


def _draw_matplotlib(lin: Lineage, path: Path) -> Path:
    from matplotlib.lines import Line2D

    from sdlens.render.plots import _figure_module

    plt = _figure_module()
    pos = layout(lin)
    short = _short(lin)
    width = max(x for x, _ in pos.values()) + 1
    height = -min(y for _, y in pos.values()) + 1
    fig, ax = plt.subplots(figsize=(max(6.0, 2.0 * width), max(3.5, 1.6 * height + 1.2)))
    taken: list[tuple[float, float, float]] = [(x, y, 0.5) for x, y in pos.values()]  # centre, half width
    _draw_edges(ax, lin, pos, taken)
    lone = [n.name for n in lin.nodes if pos[n.name][1] == -height + 1 and _root_text(lin, n.name) != "root"]
    if lone:
        ax.text(
            -0.7, -height + 1.28, "no evidence of a relation:", fontsize=8, style="italic", color="#555555",
            ha="left", va="center",
        )  # fmt: skip
    roots = set(lin.roots)
    for n in lin.nodes:
        x, y = pos[n.name]
        face = "#FFF4D6" if n.name in roots else "#EEF3FA" if n.explained_by else "white"
        ax.text(
            x,
            y,
            short[n.name],
            ha="center",
            va="center",
            fontsize=9,
            zorder=4,
            bbox={"boxstyle": "round,pad=0.4", "fc": face, "ec": "#333333", "lw": 1.0},
        )
    ax.set_xlim(-0.8, width - 0.2)
    ax.set_ylim(-height + 0.3, 0.7)
    ax.axis("off")
    handles = [
        Line2D([], [], color=_STYLE["merge"][0], marker=">", label="merge (parent → child, weight)"),
        Line2D([], [], color=_STYLE["add-difference"][0], label="add-difference (direction unknown)"),
        Line2D([], [], color=_STYLE["fine-tune"][0], label="fine-tune (? = direction unknown)"),
        Line2D([], [], color=_STYLE["same-component"][0], ls=":", label="bit-identical part / copy"),
        Line2D([], [], color=_STYLE["nearest"][0], ls="--", label="nearest only: no evidence"),
    ]
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=3 if width >= 5 else 2,
        fontsize=8,
        frameon=False,
    )
    ax.set_title(
        f"Lineage of {len(lin.nodes)} models ({plot_label(lin.family)}): solid = evidence, dashed = nearest only",
        fontsize=10,
    )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path
