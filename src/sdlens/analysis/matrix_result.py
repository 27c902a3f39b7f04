"""The matrix engine's results: the final matrices with their notes, as plain JSON-friendly data, from a plan
and the sums of its tasks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sdlens.analysis.matrix_plan import Plan
from sdlens.analysis.matrix_state import ModelInfo, Partial
from sdlens.analysis.notes import listing, note, plural


@dataclass
class MatrixResult:
    models: list[ModelInfo]
    metric: str
    by: str
    ref: int
    matrices: dict[str, list[list[float | None]]]  # group -> N×N, None where not comparable
    notes: dict[str, str]  # group -> who was left out and why
    identity: dict[str, list[list[str]]]  # component -> groups (≥ 2 models) with bit-identical tensors
    keys: dict[str, int]  # group -> number of tensors compared
    skipped: list[dict[str, str]] = field(default_factory=list)  # inputs that could not be read: path, error
    resumed_bytes: int = 0  # of the work, bytes already done by an interrupted run (``resume``)
    total_bytes: int = 0

    def note_lines(self) -> list[str]:
        """The notes, one line per distinct note: groups with the same note (blocks, usually) share one."""
        by_text: dict[str, list[str]] = {}
        for g, text in self.notes.items():
            by_text.setdefault(text, []).append(g.removeprefix("block:"))
        lines = []
        for text, groups in by_text.items():
            where = (
                groups[0] if len(groups) == 1 else listing(groups, "block" if self.by == "block" else "group")
            )
            lines.append(f"{where}: {text}")
        if self.skipped:
            lines.append(
                note("not read (see the errors)", [Path(s["path"]).name for s in self.skipped], "input")
            )
        return lines

    def matrix(self, group: str) -> np.ndarray:
        return np.array([[np.nan if v is None else v for v in row] for row in self.matrices[group]])

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": [m.to_dict() for m in self.models],
            "metric": self.metric,
            "by": self.by,
            "ref": self.models[self.ref].name,
            "matrices": self.matrices,
            "notes": self.notes,
            "identity": self.identity,
            "keys": self.keys,
            "skipped": self.skipped,
            "resumed_bytes": self.resumed_bytes,
            "total_bytes": self.total_bytes,
        }


def _cosine_distance(acc: dict[str, np.ndarray]) -> np.ndarray:
    """1 − cos from sums that keep their precision for nearly identical models:
    1 − cos = (‖a−b‖² − (‖a‖−‖b‖)²) / (2‖a‖‖b‖), with ‖a‖−‖b‖ = (Σ‖a‖²−‖b‖² term by term) / (‖a‖+‖b‖)."""
    na, nb = np.sqrt(acc["sq"]), np.sqrt(acc["sq"].T)
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = acc["dp"] / (na + nb)
        m = np.clip((acc["d2"] - gap * gap) / (2 * na * nb), 0.0, 2.0)
    m[np.diag_indices(len(m))] = 0.0
    return m


def finish(pl: Plan, total: Partial, *, metric: str, by: str, ref: int = 0) -> MatrixResult:
    """Matrices, notes and identity groups from the summed partial results."""
    names = [m.name for m in pl.models]
    n = len(names)
    matrices: dict[str, list[list[float | None]]] = {}
    notes: dict[str, str] = {}
    identity: dict[str, list[list[str]]] = {}
    keys: dict[str, int] = {}
    wanted = [g for g in pl.groups if g.startswith("block:") == (by == "block")]
    for g in wanted:
        sig = pl.signatures[g]
        acc = total.group(g)
        present = [i for i in range(n) if sig[i] is not None]
        common = max({sig[i] for i in present}, key=[sig[i] for i in present].count)
        valid = np.array([[sig[i] is not None and sig[i] == sig[j] for j in range(n)] for i in range(n)])
        if metric == "l2":
            m = np.sqrt(acc["d2"])
        elif metric == "l1":
            m = acc["l1"].copy()
        else:
            m = _cosine_distance(acc)
        broken = [
            f"{names[i]}: {plural(int(acc['bad'][i, i]), 'tensor')}" for i in range(n) if acc["bad"][i, i] > 0
        ]
        m[~valid | ~np.isfinite(m)] = np.nan
        matrices[g] = [[None if math.isnan(v) else float(v) for v in row] for row in m]
        absent = [names[i] for i in range(n) if sig[i] is None]
        other = [names[i] for i in present if sig[i] != common]
        parts = []
        if broken:
            parts.append(note("NaN or Inf weights, distances left empty", broken))
        if absent:
            parts.append(note("missing", absent))
        if other:
            parts.append(note("other architecture or key set, compared only with each other", other))
        if parts:
            notes[g] = "; ".join(parts)
        keys[g] = int(acc["both"].max()) if acc["both"].size else 0
    for g in pl.groups:
        if g.startswith("block:"):
            continue
        acc = total.group(g)
        sig = pl.signatures[g]
        same = (acc["same"] == acc["both"]) & (acc["both"] > 0)
        seen: set[int] = set()
        groups: list[list[str]] = []
        for i in range(n):
            if i in seen or sig[i] is None:
                continue
            members = [j for j in range(n) if sig[j] == sig[i] and same[i, j]]
            seen.update(members)
            if len(members) > 1:
                groups.append([names[j] for j in members])
        identity[g] = groups
    return MatrixResult(
        pl.models, metric, by, ref, matrices, notes, identity, keys, list(pl.skipped), total_bytes=pl.nbytes
    )
