"""What a matrix run knows of each model, and the additive per-group sums its tasks accumulate (saved and
loaded for ``resume``): the data the plan, the run and the result share."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sdlens.errors import SdlensError


@dataclass
class ModelInfo:
    path: str
    name: str
    family: str
    size: int
    header_sha256: str  # of the key/shape/dtype/offset table: cheap, changes whenever the layout does

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Partial:
    """Additive sums per group, each an N×N float64 array, over the keys both models have: ``d2`` Σ‖xi−xj‖²,
    ``dp`` Σ(‖xi‖²−‖xj‖²) (summed term by term, without cancellation), ``sq`` Σ‖xi‖², ``l1`` Σ|xi−xj|,
    ``same`` keys bit-identical, ``both`` keys both have; on the diagonal, ``bad`` counts a model's tensors
    holding NaN or Inf. Only the sums the metric needs are filled."""

    n: int
    sums: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    done: set[int] = field(default_factory=set)

    FIELDS = ("d2", "dp", "sq", "l1", "same", "both", "bad")

    def group(self, g: str) -> dict[str, np.ndarray]:
        if g not in self.sums:
            self.sums[g] = {f: np.zeros((self.n, self.n)) for f in self.FIELDS}
        return self.sums[g]

    def add(self, g: str, name: str, value: np.ndarray) -> None:
        """Add ``value`` into a group's sum ``name`` (a field of any shape beyond ``FIELDS``, such as the
        element signature's counts)."""
        acc = self.group(g)
        acc[name] = acc[name] + value if name in acc else np.array(value, dtype=np.float64)

    def __add__(self, other: Partial) -> Partial:
        out = Partial(self.n, done=self.done | other.done)
        for src in (self, other):
            for g, fs in src.sums.items():
                for f, v in fs.items():
                    out.add(g, f, v)
        return out

    def save(self, path: Path, fingerprint: str) -> None:
        """Atomically: write beside, then rename."""
        arrays = {f"{g}|{f}": v for g, fs in self.sums.items() for f, v in fs.items()}
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez(
            tmp,
            __meta__=np.array(json.dumps({"fingerprint": fingerprint, "done": sorted(self.done)})),
            **arrays,
        )
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, n: int, fingerprint: str) -> Partial:
        with np.load(path) as z:
            meta = json.loads(str(z["__meta__"]))
            if meta["fingerprint"] != fingerprint:
                raise SdlensError(
                    path, "saved partial results belong to another run (models or options differ)"
                )
            p = cls(n, done=set(meta["done"]))
            for k in z.files:
                if k != "__meta__":
                    g, f = k.rsplit("|", 1)
                    p.group(g)[f] = z[k].copy()
        return p
