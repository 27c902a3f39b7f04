"""``sdlens extract-lora`` output: what was written, its fidelity (overall, per component, worst modules) and
what was left out and why."""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.console import Console
from rich.table import Table

from sdlens.analysis.diff import component_label
from sdlens.render.safe_text import safe
from sdlens.render.text import bullets

WORST = 10  # modules shown in the worst-fidelity table
LEFT_SHOWN = 5  # left-out tensors named per reason


def _pct(x: float) -> str:
    return f"{100 * x:.4g} %"


def _err(x: float) -> str:
    return f"{x:.2g}"


def _ranks(ranks: dict[str, int]) -> str:
    return ", ".join(f"{k} ×{v}" for k, v in ranks.items())


def _mb(n: int) -> str:
    return f"{n / 1e6:.3g} MB"


def component_table(report: dict[str, Any]) -> Table:
    """Per component: modules, ranks, share of ‖Δ‖²_F kept, relative error (energy-weighted)."""
    t = Table(title="fidelity per component", title_justify="left", show_edge=False, pad_edge=False)
    for col, just in (("component", "left"), ("modules", "right"), ("ranks", "left")):
        t.add_column(col, justify=just, no_wrap=True)
    t.add_column("kept ‖Δ‖²", justify="right", no_wrap=True)
    t.add_column("rel. error", justify="right", no_wrap=True)
    groups: dict[str, list[dict[str, Any]]] = {}
    for m in report["modules"]:
        groups.setdefault(m["name"].split("/", 1)[0], []).append(m)
    for comp, mods in groups.items():
        e = sum(m["energy"] for m in mods)
        kept = sum(m["kept"] * m["energy"] for m in mods) / e if e else 1.0
        err = (sum(m["rel_error"] ** 2 * m["energy"] for m in mods) / e) ** 0.5 if e else 0.0
        ranks = Counter(m["rank"] for m in mods)
        t.add_row(
            safe(component_label(comp, report.get("family", ""))),
            str(len(mods)),
            _ranks({str(k): v for k, v in sorted(ranks.items())}),
            _pct(kept),
            _err(err),
        )
    return t


def worst_table(report: dict[str, Any], n: int = WORST) -> Table:
    """The modules reconstructed worst (largest relative error), next to the error the files' rounding alone
    implies (an extraction at or below it is as faithful as the stored weights allow)."""
    mods = sorted(report["modules"], key=lambda m: -m["rel_error"])[:n]
    total = sum(m["energy"] for m in report["modules"]) or 1.0
    t = Table(
        title=f"worst {len(mods)} of {len(report['modules'])} modules",
        title_justify="left",
        show_edge=False,
        pad_edge=False,
    )
    t.add_column("module", overflow="fold")
    for col in ("rank", "kept ‖Δ‖²", "rel. error", "rounding floor", "share of Δ"):
        t.add_column(col, justify="right", no_wrap=True)
    for m in mods:
        t.add_row(
            safe(m["name"]),
            str(m["rank"]),
            _pct(m["kept"]),
            _err(m["rel_error"]),
            _err(m["rounding_floor"]),
            _pct(m["energy"] / total),
        )
    return t


def left_out_lines(report: dict[str, Any]) -> list[str]:
    """One line per reason: how many tensors, the largest few by ‖Δ‖ relative to the base."""
    by: dict[str, list[dict[str, Any]]] = {}
    for x in report["left_out"]:
        by.setdefault(x["reason"], []).append(x)
    lines = []
    for reason, items in by.items():
        items = sorted(items, key=lambda x: -x["energy"])
        named = ", ".join(
            safe(x["name"]) + (f" (‖Δ‖/‖B‖ {x['rel_delta']:.2g})" if x["rel_delta"] is not None else "")
            for x in items[:LEFT_SHOWN]
        )
        more = f" and {len(items) - LEFT_SHOWN} more" if len(items) > LEFT_SHOWN else ""
        lines.append(f"{reason}: {len(items)} — {named}{more}")
    lines.append(
        f"unchanged: {report['unchanged']} tensors ({len(report['unchanged_targets'])} LoRA targets); "
        f"rounding only: {report['rounding_only']}"
        + (
            f"; in one file only: {report['only_model']} / {report['only_base']}"
            if report["only_model"] or report["only_base"]
            else ""
        )
    )
    return lines


def render_extract(report: dict[str, Any], console: Console) -> None:
    o = report["overall"]
    conv = f" ({o['conv_modules']} LoCon)" if o["conv_modules"] else ""
    bullets(
        console,
        [
            f"LoRA written to {safe(report['out'])}: {o['modules']} modules{conv}, ranks {_ranks(o['ranks'])}, "
            f"alpha {o['alpha']:g}, {report['format']} layout, {report['dtype']}, {_mb(report.get('bytes', 0))}",
            f"fidelity: {_pct(o['kept'])} of ‖Δ‖²_F kept in the extracted modules, relative error "
            f"{_err(o['rel_error'])} (energy-weighted); they hold {_pct(o['delta_in_targets'])} of the model's "
            "change beyond rounding",
        ],
    )
    console.print(component_table(report))
    console.print(worst_table(report))
    console.print("left out:", highlight=False)
    bullets(console, left_out_lines(report))
