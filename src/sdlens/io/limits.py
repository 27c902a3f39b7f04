"""Bounds on the work any input file can ask of sdlens, and bounded text of untrusted values for messages.

The limits are generous for real models (the largest known checkpoints have a few thousand tensors and a
header of well under a megabyte) and stop hostile files from costing unbounded time or memory. They are
listed in docs/limits.md.
"""

from __future__ import annotations

import reprlib

MAX_HEADER_BYTES = 100 * 1024 * 1024  # a safetensors JSON header: the format's own limit (100 MiB)
MAX_TENSORS = 1_000_000  # tensors in one safetensors header
MAX_DIMS = 64  # dimensions of one tensor (real weights have at most 5)
MAX_MESSAGE_VALUE = 80  # characters of an untrusted value (a key, a dtype) quoted in an error message
MAX_MESSAGE_TEXT = 200  # characters of untrusted text (an exception's message) in an error message

_repr = reprlib.Repr()
_repr.maxstring = MAX_MESSAGE_VALUE
_repr.maxother = MAX_MESSAGE_VALUE
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 6
_repr.maxlevel = 3


def short(value: object) -> str:
    """A bounded ``repr`` of an untrusted value (long strings cut in the middle, containers elided; control
    characters and lone surrogates escaped by ``repr``), for a one-line message whatever the value is."""
    try:
        text = _repr.repr(value)
    except Exception:  # a hostile __repr__ (never the case for JSON values; kept as a guard)
        text = f"<{type(value).__name__}>"
    if len(text) > 2 * MAX_MESSAGE_VALUE:
        text = text[:MAX_MESSAGE_VALUE] + "..." + text[-MAX_MESSAGE_VALUE:]
    return text


def clip(text: str, limit: int = MAX_MESSAGE_TEXT) -> str:
    """Untrusted text cut to ``limit`` characters (middle elided), control characters escaped."""
    if len(text) > limit:
        text = text[: limit // 2] + "..." + text[-(limit // 2) :]
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


_show = reprlib.Repr()
_show.maxstring = 80
_show.maxother = 80


def show(value: object) -> str:
    """A bounded, escaped ``repr`` of an untrusted value for a message."""
    return _show.repr(value)
