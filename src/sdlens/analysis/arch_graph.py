"""The torchview graph of a model's denoiser (for ``sdlens arch --diagram``): the model is built on the meta
device (no weights) and traced at the report's resolution and dtype; :mod:`sdlens.render.arch_diagram` writes
and renders the DOT source."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sdlens.errors import SdlensError

if TYPE_CHECKING:
    from sdlens.analysis.cost import ArchReport


def denoiser_graph_source(model: str, r: ArchReport, *, depth: int = 1) -> str:
    """The DOT source of the torchview graph of ``model``'s denoiser at ``depth`` (1 or 2)."""
    try:
        from torchview import draw_graph
    except ImportError:
        raise SdlensError(None, "torchview is not installed: pip install torchview") from None
    from sdlens.analysis.cost import _denoiser_for, resolve
    from sdlens.arch import build as B

    spec = B.with_tokens(resolve(model), None)
    den = _denoiser_for(spec, r.settings["dtype"])
    w, h = r.settings["res"]
    inputs = B.denoiser_inputs(spec, den, 1, w, h, B.DTYPES[r.settings["dtype"]])
    inputs["return_dict"] = False
    graph = draw_graph(
        den, input_data=inputs, device="meta", depth=depth, graph_name=r.name, expand_nested=False
    )
    return graph.visual_graph.source
