"""Several inputs at once: bad files skipped with one line each, compact notes, one read for --scan --hash,
and matrix --resume after an interrupted run."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
import torch

from sdlens.analysis import matrix as M
from sdlens.analysis.inspect import inspect
from sdlens.analysis.scan import scan_and_hash, scan_tensors
from sdlens.io.hashing import hash_file
from sdlens.io.open import open_checkpoint
from sdlens.testing.writers import save_safetensors

# ----------------------------------------------------------------------------------------- one pass


def _mixed(tmp_path):
    """A file with several dtypes, planted NaN / Inf / zeros, and tensors that straddle any block size."""
    g = torch.Generator().manual_seed(3)
    t = {
        "a16": torch.randn(1001, generator=g).half(),
        "b32": torch.randn(777, 3, generator=g),
        "cbf": torch.randn(513, generator=g).bfloat16(),
        "d64": torch.randn(97, generator=g).double(),
        "zero": torch.zeros(300, dtype=torch.float16),
        "ints": torch.arange(11, dtype=torch.int64),
    }
    t["a16"][[5, 900]] = float("nan")
    t["b32"].view(-1)[2000] = float("-inf")
    t["cbf"][512] = float("inf")
    return save_safetensors(t, tmp_path / "mixed.safetensors")


class _Counting(io.FileIO):
    read_total = 0

    def readinto(self, b):
        n = super().readinto(b)
        _Counting.read_total += n or 0
        return n


def test_scan_and_hash_read_each_byte_once(tmp_path, monkeypatch):
    path = _mixed(tmp_path)
    size = path.stat().st_size
    with open_checkpoint(path) as ck:
        separate_scan = scan_tensors(ck)
    separate_hash = hash_file(path)

    import sdlens.analysis.inspect as I
    import sdlens.io.onepass as P

    def refuse(*a, **k):
        raise AssertionError("a second pass over the file")

    monkeypatch.setattr(I, "scan_tensors", refuse)
    monkeypatch.setattr(I, "hash_file", refuse)
    monkeypatch.setattr(P, "open", lambda p, mode, buffering: _Counting(p, mode), raising=False)
    _Counting.read_total = 0
    seen: list[int] = []
    r = inspect(path, hashes=True, scan=True, progress=seen.append)
    assert _Counting.read_total == size  # every byte read, none twice
    assert sum(seen) == size  # the progress total is the file size
    assert r.hashes == [separate_hash]
    assert r.hashes[0].sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert r.scan == separate_scan
    assert r.scan.nan == {"a16": 2} and r.scan.inf == {"b32": 1, "cbf": 1} and r.scan.all_zero == ["zero"]


@pytest.mark.parametrize("block", [8, 4099, 1 << 20])
def test_scan_and_hash_at_any_block_size(tmp_path, block):
    path = _mixed(tmp_path)
    with open_checkpoint(path) as ck:
        expected = scan_tensors(ck)
        got, hashes = scan_and_hash(ck, block=block)
    assert got == expected and hashes == [hash_file(path)]


def test_scan_and_hash_of_a_pickle_with_a_strided_view(tmp_path):
    base = torch.randn(40, 30, generator=torch.Generator().manual_seed(0))
    base[3, 4] = float("nan")
    path = tmp_path / "views.ckpt"
    torch.save({"state_dict": {"w": base, "wt": base.t(), "z": torch.zeros(5)}}, path)
    seen: list[int] = []
    with open_checkpoint(path) as ck:
        expected = scan_tensors(ck)
        got, hashes = scan_and_hash(ck, progress=seen.append)
        strided = [k for k in ck.tensors if not ck.is_plain(k)]
    assert strided == ["wt"]
    assert got == expected and got.nan == {"w": 1, "wt": 1} and got.all_zero == ["z"]
    assert hashes == [hash_file(path)]
    assert sum(seen) == path.stat().st_size + base.numel() * 4  # the file once, plus the view read on its own

