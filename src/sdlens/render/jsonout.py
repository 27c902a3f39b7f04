"""JSON for scripts: dataclasses (via ``to_dict``), tuples and paths made plain."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

# what json.dumps(ensure_ascii=False) leaves raw that a terminal may act on or that cannot be encoded (it already
# escapes C0); these only occur inside strings, where \uXXXX is the same character
_RAW = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff\ud800-\udfff]")


def plain(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return plain(obj.to_dict())
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):  # NaN, ±inf -> null (JSON has neither)
        return None
    return obj


def dumps(obj: Any) -> str:
    """Readable UTF-8 JSON; the characters a terminal could act on (C1, DEL, bidi overrides, line separators)
    and lone surrogates (names that are not UTF-8) are written as ``\\uXXXX`` escapes, so the text prints and
    encodes without error and still loads back to the same strings (json already escapes C0)."""
    return _RAW.sub(_u_escape, json.dumps(plain(obj), indent=2, ensure_ascii=False))


def _u_escape(m: re.Match[str]) -> str:
    return f"\\u{ord(m.group()):04x}"
