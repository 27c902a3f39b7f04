"""Words for counts in messages: ``plural(1, "tensor") == "1 tensor"``, ``plural(2, "tensor") == "2 tensors"``."""

from __future__ import annotations


def plural(n: int, word: str, many: str | None = None) -> str:
    """``"1 tensor"``, ``"2 tensors"``, ``"0 tensors"`` (``many`` for irregular plurals: ``"entries"``)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"
