"""Demo section: ``sdlens lineage`` drawing the family tree of the merge family (known edges)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table


def section(zoo_dir: Path, out_dir: Path, console: Console) -> None:
    """lineage over the merge family: merges with their parents and weights, the add-difference relative,
    fine-tunes and near-duplicates, and what is only a nearest neighbour."""
    import time

    from sdlens.analysis.lineage import lineage
    from sdlens.render.lineage_view import render_lineage, write_outputs
    from sdlens.render.safe_text import safe
    from sdlens.testing.zoo_merge import build_merge_family

    console.rule("[bold]sdlens lineage")
    fam = build_merge_family(zoo_dir / "merge-family")
    t0 = time.perf_counter()
    lin = lineage(list(fam.paths.values()))
    dt = time.perf_counter() - t0
    written = write_outputs(lin, out_dir / "lineage", while_drawing=lambda: render_lineage(lin, console))
    table = Table(title="lineage: known relations vs evidence drawn", title_justify="left")
    for col in ("model", "truth", "parents", "lineage's evidence"):
        table.add_column(col, overflow="fold")
    found = 0
    known = fam.meta.get("edges", [])
    for rel in known:
        child, parents = f"{rel['child']}.safetensors", [f"{p}.safetensors" for p in rel["parents"]]
        links = sorted(
            {
                e.kind
                for e in lin.edges
                if e.evidence
                and e.kind != "same-component"
                and {e.source, e.target} & {child}
                and {e.source, e.target} & set(parents)
            }
        )
        found += bool(links)
        truth = rel["kind"] + (f" ({rel['method']})" if rel.get("method") else "")
        table.add_row(rel["child"], truth, ", ".join(rel["parents"]), ", ".join(links) or "none")
    console.print(table)
    console.print(
        f"{len(fam.paths)} models in {dt:.1f} s; {found} of {len(known)} known relations drawn as evidence "
        f"(DARE, TIES and crossover from element evidence; a fine-tune that moved its UNet by half is too "
        f"far from its base to be told from an unrelated model's nearest neighbour); "
        f"{', '.join(p.name for p in written)} in {safe(out_dir / 'lineage')}",
        soft_wrap=True,
    )
