"""--scan finds exactly the NaN / Inf / all-zero tensors planted; --hash equals hashlib on the file."""

from __future__ import annotations

import hashlib

import pytest
import torch

from sdlens.analysis.inspect import inspect
from sdlens.testing.writers import save_safetensors


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_scan_counts_planted_values(tmp_path, dtype):
    g = torch.Generator().manual_seed(0)
    t = {f"w{i}": torch.randn(300, 7, generator=g).to(dtype) for i in range(6)}
    t["w1"].view(-1)[[3, 50, 2000]] = float("nan")
    t["w2"].view(-1)[7] = float("inf")
    t["w2"].view(-1)[8] = float("-inf")
    t["w3"].view(-1)[11] = -float("nan")
    t["w4"].zero_()
    t["w5"].view(-1)[:] = -0.0
    t["ints"] = torch.zeros(5, dtype=torch.int64)
    t["mask"] = torch.tensor([False, True])
    save_safetensors(t, tmp_path / "p.safetensors")
    r = inspect(tmp_path / "p.safetensors", scan=True)
    assert r.scan.nan == {"w1": 3, "w3": 1}
    assert r.scan.inf == {"w2": 2}
    assert sorted(r.scan.all_zero) == ["ints", "w4", "w5"]
    assert len(r.problems) == 3
    assert r.scan.bytes == sum(x.numel() * x.element_size() for x in t.values())


def test_scan_of_clean_zoo_model(zoo):
    r = inspect(zoo["sd1_fp16"].path, scan=True)
    assert r.scan.nan == {} and r.scan.inf == {}
    # the only all-zero tensors of a freshly built model are the ones initialised to zero
    assert all(
        k.endswith(("bias", "logvar")) or "zero" in k or "out" in k or "proj_out" in k
        for k in r.scan.all_zero
    )


def test_scan_of_large_tensor_in_chunks(tmp_path):
    from sdlens.io.open import open_checkpoint
    from sdlens.io.stream import stream

    big = torch.arange(3_000_000, dtype=torch.float32)
    big[2_999_999] = float("nan")
    save_safetensors({"a": torch.ones(3), "big": big}, tmp_path / "b.safetensors")
    with open_checkpoint(tmp_path / "b.safetensors") as ck:
        pieces = [(p.key, p.start, p.data.clone()) for p in stream(ck, chunk_bytes=1 << 20)]
    assert [k for k, _, _ in pieces].count("big") == 12
    joined = torch.cat([d for k, _, d in pieces if k == "big"])
    assert torch.equal(joined[:-1], big[:-1]) and joined[-1].isnan()
    r = inspect(tmp_path / "b.safetensors", scan=True)
    assert r.scan.nan == {"big": 1}


def test_hashes_match_hashlib(tmp_path):
    data = torch.randn(600_000, generator=torch.Generator().manual_seed(1))  # > 1 MiB + 64 KiB
    path = save_safetensors({"x": data}, tmp_path / "h.safetensors")
    raw = path.read_bytes()
    r = inspect(path, hashes=True)
    h = r.hashes[0]
    assert h.sha256 == hashlib.sha256(raw).hexdigest()
    assert h.autov2 == h.sha256[:10]
    assert h.a1111_old == hashlib.sha256(raw[0x100000:0x110000]).hexdigest()[:8]
