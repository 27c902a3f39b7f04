"""Shared fixtures: small real-format files written per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_addoption(parser):
    parser.addoption(
        "--fuzz",
        action="store_true",
        default=False,
        help="long fuzz run: 50x the examples of tests/test_fuzz.py, from random seeds",
    )


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


class LazyZoo(Mapping):
    """The synthetic zoo, each entry written the first time a test asks for it (once per test session and
    worker), so a test run builds only the entries its tests use."""

    def __init__(self, root: Path):
        from sdlens.testing.zoo import zoo_table

        self.root = root
        self._names = [row[0] for row in zoo_table()]
        self._built: dict = {}

    def __getitem__(self, name: str):
        if name not in self._built:
            from sdlens.testing.zoo import build_zoo

            if name not in self._names:
                raise KeyError(name)
            self._built.update(build_zoo(self.root, [name]))
        return self._built[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def build_all(self) -> LazyZoo:
        """Every entry on disk (for tests that read the zoo folder as a whole)."""
        missing = [n for n in self._names if n not in self._built]
        if missing:
            from sdlens.testing.zoo import build_zoo

            self._built.update(build_zoo(self.root, missing))
        return self


@pytest.fixture(scope="session")
def zoo(tmp_path_factory) -> LazyZoo:
    """The synthetic zoo, its entries built on first use."""
    return LazyZoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="session")
def delta_zoo(tmp_path_factory, worker_id):
    """``testing.zoo_delta``'s model / base pairs and their truth, built once per test session (shared by the
    xdist workers through a lock). Tests must not write into its folder."""
    import json

    from filelock import FileLock

    from sdlens.testing.zoo_delta import build_delta_zoo

    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":  # the session's folder, above each worker's
        root = root.parent
    folder = root / "delta-zoo"
    with FileLock(str(root / "delta-zoo.lock")):
        truth_file = folder / "truth.json"
        if not truth_file.exists():
            truth_file.parent.mkdir(parents=True, exist_ok=True)
            truth = build_delta_zoo(folder)
            truth_file.write_text(json.dumps(truth))
        return folder, json.loads(truth_file.read_text())


@pytest.fixture(scope="session")
def merge_families(tmp_path_factory):
    """``testing.zoo_merge``'s family (known recipes), built once per test session and worker per dtype:
    ``merge_families(torch.float32)``. Tests must not write into its folder."""
    from sdlens.testing.zoo_merge import build_merge_family

    built: dict = {}

    def get(dtype):
        if dtype not in built:
            built[dtype] = build_merge_family(
                tmp_path_factory.mktemp(f"merge-{str(dtype).split('.')[-1]}"), dtype
            )
        return built[dtype]

    return get
