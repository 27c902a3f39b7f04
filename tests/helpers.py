"""Small helpers shared by test modules."""

from __future__ import annotations

import threading


def within(seconds: float, fn, *args):
    """``fn(*args)`` in a daemon thread: its result or exception, or a failure if it takes longer (a hang)."""
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as e:
            box["error"] = e

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(seconds)
    assert not th.is_alive(), f"{getattr(fn, '__name__', fn)} still running after {seconds} s (a hang)"
    if "error" in box:
        raise box["error"]
    return box.get("value")


class TinyFluxTorch:
    """``torch`` as diffusers' FLUX converter sees it: its single-block split hard-codes width 3072 / MLP 12288,
    so a tiny model's split is given its own widths."""

    def __init__(self, inner: int) -> None:
        self.inner = inner

    def __getattr__(self, name: str):
        import torch

        return getattr(torch, name)

    def split(self, t, sizes, dim=0):
        import torch

        if tuple(sizes) == (3072, 3072, 3072, 12288):
            sizes = (self.inner,) * 3 + (t.shape[0] - 3 * self.inner,)
        return torch.split(t, sizes, dim=dim)
