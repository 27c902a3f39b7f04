"""JSON for scripts: dataclasses (via ``to_dict``), tuples and paths made plain."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def plain(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return plain(obj.to_dict())
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and obj != obj:  # NaN -> null
        return None
    return obj


def dumps(obj: Any) -> str:
    return json.dumps(plain(obj), indent=2, ensure_ascii=False)
