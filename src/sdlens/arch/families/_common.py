"""Features several transformer families share (widths read the same way in original and diffusers layouts)."""

from __future__ import annotations

from sdlens.arch.record import Feature

COMMON_FEATURES: tuple[Feature, ...] = (
    Feature("pos_embed_len", "dim", r"^pos_embed(\.pos_embed)?$", 1, "positional-embedding length"),
    Feature(
        "hidden", "dim", r"^(x_embedder\.proj|pos_embed\.proj|img_in|x_embedder)\.weight$", 0, "hidden width"
    ),
    Feature("dit_blocks", "count", r"^transformer_blocks\.(\d+)\."),
    Feature("img_in", "dim", r"^(img_in|x_embedder)\.weight$", 1, "img_in input width"),
)
IN_OUT = (("BASE", None), ("IN", None))
