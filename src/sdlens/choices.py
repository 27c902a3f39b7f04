"""The fixed choices of the API's options, as ``Literal`` types, and the one check of a value against them.

Each API function that takes one of these values checks it at its entry (:func:`check_choice`); the CLI shows
the choices (:func:`metavar`) and runs the same check while it parses, so that a typo fails before any work.
A wrong value is a :class:`ChoiceError`: one line naming the option, its choices and the value, exit 2.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from sdlens.errors import SdlensError

TimeEmbed = Literal["IN00", "BASE"]  # merge block of time_embed / label_emb: A1111 mergers or sd-mecha
DiffMetric = Literal["l2", "l1", "l0", "cos", "all"]  # per-tensor metric shown by ``diff --by key``
DiffBy = Literal["component", "block", "type", "key"]  # granularity of the diff table
MatrixMetric = Literal["l2", "cos", "l1"]
MatrixBy = Literal["component", "block"]
RecipeBy = Literal["block", "component", "key"]
DeltaBy = Literal["block", "layer", "key"]  # groups of ``delta``: merge blocks / layers, layer types, tensors
EmbedMethod = Literal["pca", "tsne"]  # the embedding maps drawn
DiagramDepth = Literal[1, 2]  # torchview depth of ``arch --diagram``
Precision = Literal["fp16", "bf16", "fp32"]  # weights and activations of ``arch``
Spacing = Literal["leading", "trailing", "linspace"]  # timestep spacing of ``schedule`` (diffusers' names)
MeasureDevice = Literal["auto", "cpu", "cuda"]  # where ``arch --measure`` runs (auto: CUDA when there is one)
MeasureAttention = Literal["sdpa", "math"]  # ``arch --measure``: PyTorch's SDPA dispatch, or the math kernel


class ChoiceError(SdlensError):
    """An option value that is not one of its choices (``name`` as the CLI spells it: ``time_embed`` ->
    ``--time-embed``)."""

    def __init__(self, name: str, value: object, allowed: tuple[Any, ...]):
        self.option, self.value, self.allowed = option_name(name), value, allowed
        words = [str(a) for a in allowed]
        listed = f"{', '.join(words[:-1])} or {words[-1]}" if len(words) > 1 else words[0]
        super().__init__(None, f"{self.option} must be {listed} (got {str(value)!r})")


def choices(allowed: Any) -> tuple[Any, ...]:
    """The values of a ``Literal`` type (or of a tuple / list of values)."""
    args = get_args(allowed)
    return args if args else tuple(allowed)


def check_choice(value: Any, name: str, allowed: Any) -> Any:
    """``value`` if it is one of ``allowed`` (a ``Literal`` type or a tuple), else :class:`ChoiceError`."""
    options = choices(allowed)
    if value not in options:
        raise ChoiceError(name, value, options)
    return value


def metavar(allowed: Any) -> str:
    """``a|b|c``: the choices as the CLI's help shows them."""
    return "|".join(str(a) for a in choices(allowed))


def option_name(name: str) -> str:
    """``time_embed`` -> ``--time-embed`` (an option name given with its dashes is kept)."""
    return name if name.startswith("-") else "--" + name.replace("_", "-")
