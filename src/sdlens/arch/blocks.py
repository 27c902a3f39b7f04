"""Merge blocks ("MBW" names: BASE, IN00…, M00, OUT…; D/S for FLUX; J for SD3) from the registry's rules."""

from __future__ import annotations

import re
from functools import cache

from sdlens.arch import families


@cache
def _compiled(family: str) -> tuple[tuple[re.Pattern[str], str], ...]:
    fam = families.get(family)
    return tuple((re.compile(rx), tpl) for rx, tpl in (fam.blocks.rules if fam else ()))


def block_of(canonical_name: str, family: str, *, time_embed: str = "IN00") -> str:
    """The merge block of a canonical tensor name (``component/key``). Everything outside the denoiser
    (text encoders, VAE, EMA, schedule) is BASE; ``time_embed`` ("IN00" or "BASE") places the UNet's
    time / label embeddings, on which merging tools disagree."""
    component, _, key = canonical_name.partition("/")
    if component != "denoiser":
        return "BASE"
    rules = _compiled(family)
    if not rules:
        return "ALL"
    for rx, tpl in rules:
        m = rx.search(key)
        if m is None:
            continue
        if tpl == "TIME":
            return time_embed
        if "{last}" in tpl:
            fam = families.get(family)
            return tpl.format(last=f"{fam.blocks.last_out if fam else 11:02d}")
        return tpl.format(int(m.group(1))) if "{0" in tpl else tpl
    return "BASE"


def block_names(family: str) -> list[str]:
    """A family's merge-block names in display order (BASE first); ``["BASE", "ALL"]`` for an unknown family."""
    fam = families.get(family)
    layout = fam.blocks.layout if fam else None
    if not layout:
        return ["BASE", "ALL"]
    return [head if n is None else f"{head}{i:02d}" for head, n in layout for i in range(n or 1)]
