"""A fit's weights in the merging community's words: weighted sum ``A*(1-α) + B*α``, add-difference
``A + α(B − C)``, n-model average, block copy; and one formula for a whole model (the same recipe in every
block, or a per-block weighted sum with its MBW vector in supermerger / sd-mecha order)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

ZERO = 0.005  # |weight| below this: the candidate takes no part
SAME = 0.01  # weights closer than this are "the same" (across blocks, or within an average)


@dataclass
class Term:
    form: str  # "copy", "same", "weighted sum", "add difference", "average", "linear"
    text: str  # e.g. "A*(1-0.3) + B*0.3"
    labels: tuple[str, ...]  # the candidates taking part, in the form's order (A, B for a weighted sum)
    alpha: float | None = None  # the weighted sum's / add-difference's α

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _num(x: float) -> str:
    return f"{x:.3g}" if abs(x) >= 1e-3 else "0"


def describe(weights: Sequence[float], labels: Sequence[str], copy_of: str | None = None) -> Term:
    """The recipe a set of weights (one per candidate, labelled) reads as."""
    if copy_of is not None:
        return Term("copy", f"{copy_of} (copied whole)", (copy_of,), None)
    part = [(lab, float(w)) for lab, w in zip(labels, weights, strict=True) if abs(w) >= ZERO]
    if not part:
        return Term("linear", "none of the candidates", ())
    if len(part) == 1:
        ((lab, w),) = part
        return Term("same", lab if abs(w - 1) < SAME else f"{_num(w)}*{lab}", (lab,))
    pos = [p for p in part if p[1] > 0]
    neg = [p for p in part if p[1] < 0]
    total = sum(w for _, w in part)
    if len(part) == 2 and not neg:
        (a, _), (b, wb) = part
        return Term("weighted sum", f"{a}*(1-{_num(wb)}) + {b}*{_num(wb)}", (a, b), wb)
    if len(part) == 3 and len(neg) == 1 and abs(total - 1) < SAME:
        one = [p for p in pos if abs(p[1] - 1) < SAME]
        plus = [p for p in pos if p not in one]
        if len(one) == 1 and len(plus) == 1 and abs(plus[0][1] + neg[0][1]) < SAME:
            a, b, c, alpha = one[0][0], plus[0][0], neg[0][0], plus[0][1]
            return Term("add difference", f"{a} + {_num(alpha)}*({b} - {c})", (a, b, c), alpha)
    if not neg and max(w for _, w in part) - min(w for _, w in part) < SAME and abs(total - 1) < SAME:
        names = ", ".join(lab for lab, _ in part)
        return Term("average", f"average of {names}", tuple(lab for lab, _ in part), None)
    text = " + ".join(f"{_num(w)}*{lab}" for lab, w in part).replace("+ -", "- ")
    return Term("linear", text, tuple(lab for lab, _ in part), None)


@dataclass
class Mbw:
    """A per-block weighted sum ``A*(1-α) + B*α``: α per block, in the family's block order (BASE, IN00…,
    M00, OUT00… for SD1: the order supermerger and sd-mecha take)."""

    a: str
    b: str
    blocks: list[str]
    alphas: list[float]

    @property
    def vector(self) -> str:
        return ",".join(f"{x:.4g}" for x in self.alphas)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "vector": self.vector}


def _as_pair_alpha(t: Term, a: str, b: str) -> float | None:
    """α of a block's term in the weighted sum of ``a`` and ``b`` (a copy of either is α = 0 or 1)."""
    if t.form == "weighted sum" and t.labels == (a, b):
        return t.alpha
    if t.form in ("copy", "same") and t.labels in ((a,), (b,)) and (t.form == "copy" or t.text in (a, b)):
        return 0.0 if t.labels == (a,) else 1.0
    return None


def whole_model(terms: dict[str, Term], order: Sequence[str]) -> tuple[str, Mbw | None]:
    """One formula for the model from the blocks' terms (``order``: the blocks, in the family's order)."""
    blocks = [b for b in order if b in terms]
    if not blocks:
        return "no blocks", None
    texts = {terms[b].text for b in blocks}
    if len(texts) == 1:
        return next(iter(texts)), None
    pairs = [terms[b].labels for b in blocks if terms[b].form == "weighted sum"]
    if pairs:
        a, b = max(set(pairs), key=pairs.count)
        alphas = [_as_pair_alpha(terms[x], a, b) for x in blocks]
        if all(al is not None for al in alphas):
            mbw = Mbw(a, b, blocks, [float(al) for al in alphas])
            return f"{a}*(1-α) + {b}*α per block, α = {mbw.vector}", mbw
    forms = {terms[b].form for b in blocks}
    if forms == {"add difference"}:
        return "add difference per block: " + "; ".join(f"{b}: {terms[b].text}" for b in blocks), None
    return "per block: " + "; ".join(f"{b}: {terms[b].text}" for b in blocks), None
