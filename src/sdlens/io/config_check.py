"""Type checks of the ``config.json`` fields sdlens reads (diffusers / transformers configs), at the folder's edge,
so that a mistyped config is one line naming the file and the field, never a crash deep in a key map."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdlens.errors import CheckpointError

_MAX_INT = 1 << 24  # widths, vocabularies, positions
_MAX_LAYERS = 1024  # layers per block / per model
_MAX_LEN = 256  # per-level lists

# field -> the shapes it may take: "int", "ints" (list of int), "intss" (list of int or list of int), "str",
# "strs", "num", "bool", "null"; the fields' own meaning is diffusers' / transformers' (config docs of each class)
FIELDS: dict[str, tuple[str, ...]] = {
    "_class_name": ("str",),
    "architectures": ("strs", "null"),
    "model_type": ("str",),
    "block_out_channels": ("ints",),
    "down_block_types": ("strs",),
    "up_block_types": ("strs",),
    "mid_block_type": ("str", "null"),
    "layers_per_block": ("int", "ints"),
    "transformer_layers_per_block": ("int", "intss"),
    "attention_head_dim": ("int", "ints", "null"),
    "num_attention_heads": ("int", "ints", "null"),
    "cross_attention_dim": ("int", "ints", "null"),
    "addition_embed_type": ("str", "null"),
    "class_embed_type": ("str", "null"),
    "num_class_embeds": ("int", "null"),
    "projection_class_embeddings_input_dim": ("int", "null"),
    "addition_time_embed_dim": ("int", "null"),
    "in_channels": ("int",),
    "out_channels": ("int", "null"),
    "latent_channels": ("int",),
    "norm_num_groups": ("int", "null"),
    "sample_size": ("int", "ints", "null"),
    "scaling_factor": ("num", "null"),
    "use_quant_conv": ("bool",),
    "use_post_quant_conv": ("bool",),
    "mid_block_add_attention": ("bool",),
    "num_hidden_layers": ("int",),
    "num_layers": ("int",),
    "num_single_layers": ("int",),
    "hidden_size": ("int",),
    "intermediate_size": ("int",),
    "projection_dim": ("int", "null"),
    "vocab_size": ("int",),
    "max_position_embeddings": ("int",),
    "d_model": ("int",),
}
_LAYER_FIELDS = {
    "layers_per_block",
    "transformer_layers_per_block",
    "num_hidden_layers",
    "num_layers",
    "num_single_layers",
}
# per-level lists: as many entries as down_block_types when both are given
_PER_LEVEL = (
    "block_out_channels",
    "layers_per_block",
    "transformer_layers_per_block",
    "attention_head_dim",
    "num_attention_heads",
    "cross_attention_dim",
    "up_block_types",
)


_WORDS = {
    "int": "an integer",
    "ints": "a list of integers",
    "intss": "a list of integers or integer lists",
    "str": "a string",
    "strs": "a list of strings",
    "num": "a number",
    "bool": "true/false",
    "null": "null",
}


def _is_int(v: Any, top: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= top


def _fits(v: Any, kind: str, top: int) -> bool:
    if kind == "int":
        return _is_int(v, top)
    if kind == "null":
        return v is None
    if kind == "str":
        return isinstance(v, str) and len(v) <= 200
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "num":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if not isinstance(v, list) or len(v) > _MAX_LEN:
        return False
    if kind == "ints":
        return all(_is_int(x, top) for x in v)
    if kind == "intss":
        return all(
            _is_int(x, top)
            or (isinstance(x, list) and len(x) <= _MAX_LEN and all(_is_int(y, top) for y in x))
            for x in v
        )
    if kind == "strs":
        return all(isinstance(x, str) and len(x) <= 200 for x in v)
    raise AssertionError(kind)


def check_config(cfg: dict[str, Any], path: Path) -> None:
    """Raise :class:`CheckpointError` about ``path`` when a field sdlens reads has the wrong type or length."""
    from sdlens.io.limits import show

    for name, kinds in FIELDS.items():
        if name in cfg:
            top = _MAX_LAYERS if name in _LAYER_FIELDS else _MAX_INT
            if not any(_fits(cfg[name], k, top) for k in kinds):
                want = " or ".join(_WORDS[k] for k in kinds)
                raise CheckpointError(path, f"field {name!r} is {show(cfg[name])}; expected {want}")
    levels = cfg.get("down_block_types")
    if isinstance(levels, list):
        for name in _PER_LEVEL:
            v = cfg.get(name)
            if isinstance(v, list) and len(v) != len(levels):
                raise CheckpointError(
                    path, f"field {name!r} has {len(v)} entries but 'down_block_types' has {len(levels)}"
                )
