"""sdlens: see inside Stable Diffusion family checkpoints.

The public Python API mirrors the CLI; every function returns plain data (dataclasses with ``to_dict()``).
Heavy libraries (torch, diffusers) are imported only by the functions that need them.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "open_checkpoint", "inspect"]


def __getattr__(name: str):  # lazy re-exports keep `import sdlens` cheap
    if name == "open_checkpoint":
        from sdlens.io.open import open_checkpoint

        return open_checkpoint
    if name == "inspect":
        from sdlens.analysis.inspect import inspect

        return inspect
    raise AttributeError(name)
