"""``sdlens version``."""

from __future__ import annotations


def run() -> None:
    """Print the sdlens version."""
    from sdlens import __version__

    print(__version__)
