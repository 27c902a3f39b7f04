"""A model and its base aligned tensor by tensor (canonical names, any layout), for one streaming pass.

``delta`` and ``extract-lora`` walk :attr:`Alignment.pairs` in the model file's offset order and read one pair at
a time (:func:`read_pair`), so memory is bounded by the largest tensor, not the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sdlens.arch.canonical import CanonRef, canonical_index, read_canonical
from sdlens.errors import SdlensError
from sdlens.io.base import Checkpoint

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Pair:
    """One canonical tensor both files hold with the same shape."""

    name: str  # canonical: <component>/<key>
    model: CanonRef
    base: CanonRef
    dtype_model: str
    dtype_base: str

    @property
    def component(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def key(self) -> str:
        """The name inside its component."""
        return self.name.split("/", 1)[1]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.model.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.model.shape)


@dataclass
class Alignment:
    family: str
    pairs: list[Pair]
    only_model: list[str] = field(default_factory=list)
    only_base: list[str] = field(default_factory=list)
    mismatched: list[dict] = field(default_factory=list)  # {"key", "model", "base"} shapes


def _refuse_lora(ckpt: Checkpoint, role: str) -> None:
    from sdlens.analysis.lora import is_lora

    if is_lora(ckpt.tensors):
        raise SdlensError(
            ckpt.path,
            f"the {role} is a LoRA file, not a checkpoint — bake it into its base first "
            "(sdlens convert BASE OUT --merge-lora LORA) or compare it with another LoRA (sdlens diff)",
        )


def aligned(model: Checkpoint, base: Checkpoint) -> Alignment:
    """The canonical tensors both checkpoints hold, in the model file's offset order."""
    _refuse_lora(model, "model")
    _refuse_lora(base, "base")
    idx_m, fam_m = canonical_index(model.tensors, model.configs)
    idx_b, fam_b = canonical_index(base.tensors, base.configs)
    order = {k: i for i, k in enumerate(model.in_file_order())}
    common = sorted((k for k in idx_m if k in idx_b), key=lambda k: order.get(idx_m[k].key, 0))
    pairs: list[Pair] = []
    mismatched: list[dict] = []
    for name in common:
        rm, rb = idx_m[name], idx_b[name]
        if tuple(rm.shape) != tuple(rb.shape):
            mismatched.append({"key": name, "model": list(rm.shape), "base": list(rb.shape)})
            continue
        pairs.append(Pair(name, rm, rb, model.tensors[rm.key].dtype, base.tensors[rb.key].dtype))
    return Alignment(
        family=fam_m if fam_m != "unknown" else fam_b,
        pairs=pairs,
        only_model=sorted(set(idx_m) - set(idx_b)),
        only_base=sorted(set(idx_b) - set(idx_m)),
        mismatched=mismatched,
    )


def same_bytes(model: Checkpoint, base: Checkpoint, pair: Pair) -> bool:
    """The pair stores the same bytes, compared raw without a float conversion (False where the raw path
    cannot decide: other dtypes, transposed refs)."""
    from sdlens.analysis.diff import raw_view
    from sdlens.analysis.kernels import bits_equal

    if pair.dtype_model != pair.dtype_base:
        return False
    xm, xb = raw_view(model, pair.model), raw_view(base, pair.base)
    return xm is not None and xb is not None and bits_equal(xm, xb)


class Buffers:
    """Float32 work buffers reused from pair to pair (grown on demand): writing into pages already touched is
    3–7× faster than into a fresh allocation, which the kernel must fault in and zero first."""

    def __init__(self, count: int = 4) -> None:
        self.count = count
        self.size = 0
        self.bufs: list[torch.Tensor] = []

    def get(self, shape: tuple[int, ...]) -> list[torch.Tensor]:
        """``count`` float32 tensors of ``shape`` (views of the buffers)."""
        import torch

        n = math.prod(shape)
        if n > self.size:
            self.size = n
            self.bufs = [torch.empty(n, dtype=torch.float32) for _ in range(self.count)]
        return [b[:n].view(shape) for b in self.bufs]


def read_pair(
    model: Checkpoint, base: Checkpoint, pair: Pair, buffers: Buffers | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both tensors of a pair as float32, in the canonical shape (in the first two of ``buffers`` if given,
    else freshly allocated)."""
    import torch

    m = read_canonical(model, pair.model, copy=False)
    b = read_canonical(base, pair.base, copy=False)
    if buffers is None:
        return m.to(torch.float32), b.to(torch.float32)
    bm, bb = buffers.get(pair.shape)[:2]
    bm.copy_(m)
    bb.copy_(b)
    return bm, bb


def paths_differ(*paths: str | Path) -> None:
    """Refuse a model compared with itself (the same file twice)."""
    resolved = [Path(p).resolve() for p in paths]
    if len(set(resolved)) < len(resolved):
        raise SdlensError(paths[0], "the model and its base are the same file")
