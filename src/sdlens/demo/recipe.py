"""Demo section: ``sdlens recipe`` recovering each member of a merge family whose recipes are known."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

# member -> candidates (the order the recipe's labels A, B, C follow)
CASES = {
    "mbw_ab": ("base_a", "base_b", "finetune_a"),
    "adddiff": ("base_b", "finetune_a", "base_a"),
    "avg3": ("base_a", "base_b", "finetune_a"),
    "dare": ("base_a", "finetune_b", "base_b"),
    "ties": ("base_a", "finetune_a", "finetune_b"),
    "crossover": ("base_a", "base_b"),
    "merge_trained": ("base_a", "base_b"),
    "unrelated": ("base_a", "base_b"),
}


def _truth(t: dict) -> str:
    kind = t["kind"]
    if kind == "weighted_sum":
        return "per-block weighted sum A*(1-α)+B*α"
    if kind == "add_difference":
        return f"A + {t['alpha']}*(B - C)"
    if kind == "weighted_average":
        return " + ".join(f"{w}*{'ABC'[i]}" for i, w in enumerate(t["weights"].values()))
    if kind == "dare":
        return f"DARE, drop {t['drop_rate']}, λ {t['lambda']}"
    if kind == "ties":
        return f"TIES, keep {t['density']:.0%}"
    if kind == "crossover":
        return f"crossover, {t['share_from_B']:.0%} from B"
    if kind == "merge+fine-tune":
        return f"0.5 A + 0.5 B, trained further (residual {t['residual_share_blockwise']:.3f})"
    return "not a merge"


def section(zoo_dir: Path, out_dir: Path, console: Console) -> None:
    """recipe over the merge family: each member's known recipe beside what sdlens recovers."""
    import time

    from sdlens.analysis.recipe import recipe
    from sdlens.io.atomic import write_text_atomic
    from sdlens.render.jsonout import dumps
    from sdlens.render.recipe_view import plot_recipe, render_recipe
    from sdlens.render.safe_text import safe
    from sdlens.testing.zoo_merge import build_merge_family

    console.rule("[bold]sdlens recipe")
    fam = build_merge_family(zoo_dir / "merge-family")
    (out_dir / "recipe").mkdir(parents=True, exist_ok=True)
    table = Table(title="recipe: known truth vs recovered", title_justify="left")
    for col in ("model", "truth", "recovered recipe", "method", "residual", "s"):
        table.add_column(col, overflow="fold")
    for name, cands in CASES.items():
        t0 = time.perf_counter()
        r = recipe(fam.paths[name], [fam.paths[c] for c in cands])
        dt = time.perf_counter() - t0
        if name == "mbw_ab":
            render_recipe(r, console, max_notes=4)
            plot_recipe(r, out_dir / "recipe" / "mbw_ab.png")
        write_text_atomic(out_dir / "recipe" / f"{name}.json", dumps(r))
        method = r.method.method + (f" p={r.method.drop_rate:.2f}" if r.method.drop_rate else "")
        share = "" if r.residual_share is None else f"{r.residual_share:.3g} ({r.verdict})"
        formula = r.formula if len(r.formula) < 90 else r.formula[:87] + "…"
        table.add_row(name, _truth(fam.truth[name]), safe(formula), method, share, f"{dt:.2f}")
    console.print(table)
    _claimed(fam, zoo_dir / "merge-family", console)
    console.print(f"JSON per model and mbw_ab.png in {safe(out_dir / 'recipe')}", soft_wrap=True)


def _claimed(fam, folder: Path, console: Console) -> None:
    """A weighted sum at 0.3 whose A1111 metadata claims 0.5: recipe checks the claim against the weights."""
    from safetensors.torch import load_file

    from sdlens.analysis.recipe import recipe
    from sdlens.render.safe_text import safe
    from sdlens.testing.merge_metadata import a1111_metadata, file_ref
    from sdlens.testing.writers import save_safetensors

    a, b = load_file(fam.paths["base_a"]), load_file(fam.paths["base_b"])
    meta = a1111_metadata(file_ref(fam.paths["base_a"]), file_ref(fam.paths["base_b"]), multiplier=0.5)
    merged = {k: 0.7 * v + 0.3 * b[k] if v.is_floating_point() else v for k, v in a.items()}
    path = save_safetensors(merged, folder / "claims_half_is_0.3.safetensors", metadata=meta)
    r = recipe(path, [fam.paths["base_a"], fam.paths["base_b"]])
    console.print(f"{safe(path.name)}: recipe {safe(r.formula)}", soft_wrap=True, highlight=False)
    for c in r.claims:
        console.print(f"  claimed {safe(c['check'])}", soft_wrap=True, highlight=False)
