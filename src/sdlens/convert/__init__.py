"""``sdlens convert``: checkpoint surgery that never loses data (plan, stream, verify, rename into place).

>>> from sdlens.convert import ConvertOptions, make_plan, convert
>>> plan = make_plan("model.ckpt", "model.safetensors", ConvertOptions(dtype="fp16", ema="drop"))
>>> result = convert(plan)          # verified before it is renamed into place
"""

from __future__ import annotations

from sdlens.convert.plan import ConversionPlan, ConvertOptions, make_plan
from sdlens.convert.writer import ConvertResult, convert

__all__ = ["ConversionPlan", "ConvertOptions", "ConvertResult", "convert", "make_plan"]
