"""The safetensors reader: exact data for every dtype, offset order, metadata, and every malformed header."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from sdlens.errors import CheckpointError
from sdlens.io.open import open_checkpoint

ALL_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _tensor(dt: torch.dtype, shape=(3, 5)) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if dt == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dt.is_floating_point:
        return (torch.randn(shape, generator=g) * 3).to(dt)
    return torch.randint(0, 100, shape, generator=g).to(dt)


def test_every_dtype_reads_back_exactly(tmp_path):
    tensors = {f"t.{name}": _tensor(dt) for name, dt in ALL_DTYPES.items()}
    path = tmp_path / "all.safetensors"
    save_file(tensors, path, metadata={"modelspec.title": "zoo", "ss_network_dim": "8"})
    with open_checkpoint(path) as ck:
        assert ck.format == "safetensors"
        assert ck.metadata == {"modelspec.title": "zoo", "ss_network_dim": "8"}
        for name, dt in ALL_DTYPES.items():
            info = ck.tensors[f"t.{name}"]
            assert info.dtype == name and info.shape == (3, 5)
            got = ck.read(f"t.{name}")
            assert got.dtype == dt
            assert torch.equal(got.view(torch.uint8), tensors[f"t.{name}"].view(torch.uint8))


def test_index_is_in_offset_order_and_chunks_cover_the_tensor(tmp_path):
    tensors = {"b": torch.arange(1000, dtype=torch.float32), "a": torch.ones(7, dtype=torch.float16)}
    path = tmp_path / "x.safetensors"
    save_file(tensors, path)
    with open_checkpoint(path) as ck:
        offsets = [ck.tensors[k].offset for k in ck.tensors]
        assert offsets == sorted(offsets)
        assert ck.in_file_order() == list(ck.tensors)
        chunks = list(ck.read_chunks("b", chunk_bytes=400))
        assert [c.numel() for c in chunks] == [100] * 10
        assert torch.equal(torch.cat(chunks), tensors["b"])
        seen = dict(ck.iter_tensors())
        assert torch.equal(seen["a"], tensors["a"])


def _write_raw(path, header: dict | bytes, data: bytes = b"", length: int | None = None):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw) if length is None else length))
        f.write(raw)
        f.write(data)
    return path


@pytest.mark.parametrize(
    ("name", "header", "data", "length", "message"),
    [
        (
            "badlen",
            {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
            b"\0" * 4,
            10**12,
            "bad safetensors header length",
        ),
        ("badjson", b"{not json", b"", None, "not valid JSON"),
        ("oob", {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, None, "truncated"),
        (
            "overlap",
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\0" * 12,
            None,
            "overlap",
        ),
        (
            "dtype",
            {"a": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}},
            b"\0" * 16,
            None,
            "unknown dtype 'F128'",
        ),
        (
            "span",
            {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
            b"\0" * 8,
            None,
            "needs 12 bytes",
        ),
        (
            "shape",
            {"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}},
            b"\0" * 4,
            None,
            "invalid shape",
        ),
    ],
)
def test_malformed_headers_are_one_clear_error(tmp_path, name, header, data, length, message):
    path = _write_raw(tmp_path / f"{name}.safetensors", header, data, length)
    with pytest.raises(CheckpointError) as e:
        open_checkpoint(path)
    assert message in str(e.value)
    assert str(path) in str(e.value)


def test_missing_empty_and_unknown_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        open_checkpoint(tmp_path / "nope.safetensors")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty file"):
        open_checkpoint(tmp_path / "empty.ckpt")
    (tmp_path / "text.bin").write_bytes(b"hello world, not weights")
    with pytest.raises(CheckpointError, match="unrecognised format"):
        open_checkpoint(tmp_path / "text.bin")
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "readme.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="no model weights"):
        open_checkpoint(tmp_path / "nothing")


def test_truncated_file_fails_at_open(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file({"a": torch.zeros(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="truncated"):
        open_checkpoint(path)


def test_sharded_index_and_diffusers_folder(tmp_path):
    a = {"x.weight": torch.randn(4, 4)}
    b = {"y.weight": torch.randn(2)}
    save_file(a, tmp_path / "model-00001-of-00002.safetensors")
    save_file(b, tmp_path / "model-00002-of-00002.safetensors")
    index = {
        "weight_map": {
            "x.weight": "model-00001-of-00002.safetensors",
            "y.weight": "model-00002-of-00002.safetensors",
        }
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with open_checkpoint(tmp_path / "model.safetensors.index.json") as ck:
        assert set(ck.tensors) == {"x.weight", "y.weight"}
        assert torch.equal(ck.read("x.weight"), a["x.weight"])
        assert len(ck.files) == 2

    pipe = tmp_path / "pipe"
    (pipe / "unet").mkdir(parents=True)
    (pipe / "vae").mkdir()
    save_file(a, pipe / "unet" / "diffusion_pytorch_model.safetensors")
    (pipe / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    save_file(b, pipe / "vae" / "diffusion_pytorch_model.safetensors")
    (pipe / "model_index.json").write_text("{}")
    with open_checkpoint(pipe) as ck:
        assert set(ck.tensors) == {"unet.x.weight", "vae.y.weight"}
        assert ck.configs["unet"]["_class_name"] == "UNet2DConditionModel"
        assert torch.equal(ck.read("vae.y.weight"), b["y.weight"])


def test_shard_missing_is_reported(tmp_path):
    index = {"weight_map": {"x": "gone.safetensors"}}
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="shard 'gone.safetensors' listed in the index is missing"):
        open_checkpoint(tmp_path / "m.safetensors.index.json")


def test_reading_never_modifies_the_input(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"a": torch.ones(100)}, path)
    before = path.read_bytes()
    with open_checkpoint(path) as ck:
        view = ck.read("a", copy=False)
        view.mul_(5)  # copy-on-write map: the file must stay as it was
    assert path.read_bytes() == before
