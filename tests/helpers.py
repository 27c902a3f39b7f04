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
