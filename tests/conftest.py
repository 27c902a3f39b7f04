"""Shared fixtures: small real-format files written per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_addoption(parser):
    parser.addoption("--fuzz", action="store_true", default=False,
                     help="long fuzz run: 50x the examples of tests/test_fuzz.py, from random seeds")


def pytest_configure(config):
    config.addinivalue_line("markers", "fuzz: property-based fuzzing (seeded and short unless --fuzz)")
    if config.getoption("--fuzz"):
        os.environ["SDLENS_FUZZ"] = "1"


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real console entry point in a subprocess (as users do)."""
    return subprocess.run(
        [sys.executable, "-m", "sdlens.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    """The whole synthetic zoo, built once per test session."""
    from sdlens.testing.zoo import build_zoo

    return build_zoo(tmp_path_factory.mktemp("zoo"))
