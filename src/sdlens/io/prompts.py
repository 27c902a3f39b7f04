"""Prompt files for ``sdlens embed``: ``.txt`` (one prompt a line), ``.csv`` or ``.json`` (label, text, optional
group and marker). Labels are unique; a ``.txt`` prompt is its own label (shortened)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sdlens.errors import SdlensError
from sdlens.io.limits import short

# matplotlib marker codes accepted in a prompts file
MARKERS = ("o", "s", "^", "v", "<", ">", "D", "d", "x", "X", "P", "p", "*", "h", "H", "+", ".", "8")


@dataclass(frozen=True)
class Prompt:
    label: str
    text: str
    group: str | None = None
    marker: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _short(text: str, n: int = 32) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def _unique_labels(prompts: list[Prompt]) -> list[Prompt]:
    seen: dict[str, int] = {}
    out = []
    for p in prompts:
        label = p.label
        if label in seen:
            seen[label] += 1
            label = f"{label} #{seen[p.label]}"
        else:
            seen[label] = 1
        out.append(Prompt(label, p.text, p.group, p.marker))
    return out


def _make(path: Path, where: str, label: Any, text: Any, group: Any = None, marker: Any = None) -> Prompt:
    if not isinstance(text, str) or not text.strip():
        raise SdlensError(path, f"{where}: no prompt text")
    label = _short(text) if label is None or str(label).strip() == "" else str(label).strip()
    group = None if group is None or str(group).strip() == "" else str(group).strip()
    marker = None if marker is None or str(marker).strip() == "" else str(marker).strip()
    if marker is not None and marker not in MARKERS:
        raise SdlensError(path, f"{where}: unknown marker {marker!r} (use one of {' '.join(MARKERS)})")
    return Prompt(label, " ".join(text.split()), group, marker)


def _check_labels(path: Path, prompts: list[Prompt]) -> None:
    seen: set[str] = set()
    for p in prompts:
        if p.label in seen:
            raise SdlensError(path, f"label {p.label!r} is used twice: labels must be unique")
        seen.add(p.label)


def _from_txt(path: Path, text: str) -> list[Prompt]:
    lines = [ln.strip() for ln in text.splitlines()]
    prompts = [
        _make(path, f"line {i}", None, ln) for i, ln in enumerate(lines, 1) if ln and not ln.startswith("#")
    ]
    return _unique_labels(prompts)


def _from_csv(path: Path, text: str) -> list[Prompt]:
    rows = [r for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)]
    if not rows:
        return []
    head = [c.strip().lower() for c in rows[0]]
    if "text" in head or "prompt" in head:
        col = {
            name: head.index(name) for name in ("label", "text", "prompt", "group", "marker") if name in head
        }
        tcol = col.get("text", col.get("prompt"))

        def cell(r: list[str], name: str) -> str | None:
            i = tcol if name == "text" else col.get(name)
            return r[i] if i is not None and i < len(r) else None

        prompts = [
            _make(path, f"row {n}", cell(r, "label"), cell(r, "text"), cell(r, "group"), cell(r, "marker"))
            for n, r in enumerate(rows[1:], 2)
        ]
    else:  # no header: text | label,text | label,text,group | label,text,group,marker
        prompts = []
        for n, r in enumerate(rows, 1):
            if len(r) == 1:
                prompts.append(_make(path, f"row {n}", None, r[0]))
            else:
                prompts.append(_make(path, f"row {n}", r[0], r[1], *(r[2:4])))
    if all(p.label == _short(p.text) for p in prompts):
        return _unique_labels(prompts)
    _check_labels(path, prompts)
    return prompts


def _no_duplicate_keys(path: Path, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a key given twice (``json`` would keep the last silently): labels are keys."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise SdlensError(path, f"{short(k)} is given twice: labels must be unique")
        out[k] = v
    return out


def _from_json(path: Path, text: str) -> list[Prompt]:
    try:
        data = json.loads(text, object_pairs_hook=lambda pairs: _no_duplicate_keys(path, pairs))
    except ValueError as e:
        raise SdlensError(path, f"not valid JSON: {e}") from None
    prompts: list[Prompt] = []
    if isinstance(data, dict) and isinstance(data.get("prompts"), (list, dict)):
        data = data["prompts"]
    if isinstance(data, dict):  # label -> text, or label -> {text, group, marker}
        for label, v in data.items():
            if isinstance(v, dict):
                prompts.append(
                    _make(
                        path,
                        f"entry {label!r}",
                        label,
                        v.get("text", v.get("prompt")),
                        v.get("group"),
                        v.get("marker"),
                    )
                )
            else:
                prompts.append(_make(path, f"entry {label!r}", label, v))
    elif isinstance(data, list):
        for i, v in enumerate(data, 1):
            if isinstance(v, str):
                prompts.append(_make(path, f"item {i}", None, v))
            elif isinstance(v, dict):
                prompts.append(
                    _make(
                        path,
                        f"item {i}",
                        v.get("label"),
                        v.get("text", v.get("prompt")),
                        v.get("group"),
                        v.get("marker"),
                    )
                )
            else:
                raise SdlensError(path, f"item {i}: expected a string or an object with label and text")
    else:
        raise SdlensError(path, "expected a list of prompts or an object label -> text")
    if all(p.label == _short(p.text) for p in prompts):
        return _unique_labels(prompts)
    _check_labels(path, prompts)
    return prompts


def read_prompts(path: str | Path) -> list[Prompt]:
    """The prompts of a ``.txt``, ``.csv`` or ``.json`` file, in file order."""
    path = Path(path)
    if not path.is_file():
        raise SdlensError(path, "no such prompts file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise SdlensError(path, f"cannot read prompts: {e}") from None
    suffix = path.suffix.lower()
    if suffix == ".json":
        prompts = _from_json(path, text)
    elif suffix == ".csv":
        prompts = _from_csv(path, text)
    elif suffix in (".txt", ""):
        prompts = _from_txt(path, text)
    else:
        raise SdlensError(path, f"unknown prompts format {suffix!r}: use .txt (one per line), .csv or .json")
    if len(prompts) < 2:
        raise SdlensError(
            path,
            f"{len(prompts)} prompt{'' if len(prompts) == 1 else 's'}: at least 2 are needed to compare embeddings",
        )
    return prompts
