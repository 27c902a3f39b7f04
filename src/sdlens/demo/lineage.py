"""Demo section: ``sdlens lineage`` drawing the family tree of the merge family (known edges)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console


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
    known = fam.meta.get("edges", [])
    found = {(e.source, e.target) for e in lin.edges if e.evidence}
    stems = {Path(p).stem for p in fam.paths.values()}
    hits = sum(
        (f"{a}.safetensors", f"{b}.safetensors") in found or (f"{b}.safetensors", f"{a}.safetensors") in found
        for a, b, *_ in (_edge(e) for e in known)
        if a in stems and b in stems
    )
    console.print(
        f"{len(fam.paths)} models in {dt:.1f} s; known relations drawn as evidence: {hits} of {len(known)} "
        f"(DARE, TIES and crossover merges are not linear: `recipe` names them); "
        f"{', '.join(p.name for p in written)} in {safe(out_dir / 'lineage')}",
        soft_wrap=True,
    )


def _edge(e) -> tuple[str, str]:
    """(parent, child) of a known edge of the family's meta, whatever form it was written in."""
    if isinstance(e, dict):
        return e.get("source") or e.get("parent"), e.get("target") or e.get("child")
    return e[0], e[1]
