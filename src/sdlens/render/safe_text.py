"""Untrusted text made safe for the terminal: tensor keys, metadata, paths, pickle names, error messages.

Everything that comes from a file (or a file name) goes through :func:`safe` (for rich markup strings) or
:func:`printable` / :func:`safe_text` (for ``rich.text.Text``) before it is printed:

- control characters (C0 including newline and tab, DEL, C1), lone surrogates (file names that are not UTF-8),
  bidirectional overrides / isolates and line separators are shown as ``\\x1b`` / ``\\u202e`` escapes, so a
  key cannot clear the screen, move the cursor, forge a line or reorder what is shown;
- rich markup is escaped (``[bold red]`` is shown, not applied; ``[/]`` cannot raise ``MarkupError``);
- long text is cut at ``limit`` characters with ``… (N more characters)``.

JSON output stays faithful: :mod:`sdlens.render.jsonout` escapes the same characters as ``\\uXXXX``.
"""

from __future__ import annotations

import re

from rich.markup import escape

TEXT_LIMIT = 500  # keys, metadata values, paths in tables and lines
NAME_LIMIT = 4096  # a path or key printed whole (PATH_MAX): whole for real names, bounded for hostile ones
ERROR_LIMIT = 300  # one error line

# C0, DEL, C1; Arabic letter mark, LRM/RLM; line/paragraph separators, bidi embeddings/overrides (U+202A-E) and
# isolates (U+2066-9); BOM / zero-width no-break space; lone surrogates
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff\ud800-\udfff]")


def _escape_char(c: str) -> str:
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}"


def _sub(m: re.Match[str]) -> str:
    return _escape_char(m.group())


def printable(s: object, limit: int | None = TEXT_LIMIT) -> str:
    """``s`` (``str()`` of it if not a string) with unsafe characters escaped and cut at ``limit`` characters
    (escapes count as what they show), plus ``… (N more characters)`` counting the characters left out."""
    text = s if isinstance(s, str) else str(s)
    if limit is None:
        return UNSAFE.sub(_sub, text)
    if len(text) <= limit:
        shown = UNSAFE.sub(_sub, text)
        if len(shown) <= limit:
            return shown
    parts: list[str] = []
    used = 0  # characters of ``text`` consumed
    width = 0  # characters shown
    for c in text:
        piece = _escape_char(c) if UNSAFE.match(c) else c
        if width + len(piece) > limit:
            break
        parts.append(piece)
        width += len(piece)
        used += 1
    return "".join(parts) + f"… ({len(text) - used} more characters)"


def safe(s: object, limit: int | None = TEXT_LIMIT) -> str:
    """:func:`printable`, with rich markup escaped: for f-strings passed to ``console.print`` or table cells."""
    return escape(printable(s, limit))


def plot_label(s: object, limit: int = 120) -> str:
    """:func:`printable` for matplotlib text: also ``$`` escaped, so a name is never parsed as mathtext."""
    return printable(s, limit).replace("$", "\\$")


def safe_error(e: object, limit: int = ERROR_LIMIT) -> str:
    """An error message (an exception or a string), markup-escaped, on one line of at most ``limit``
    characters (plus the count of those left out)."""
    return safe(e, limit)
