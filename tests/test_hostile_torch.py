"""Hostile torch files (sdlens.testing.hostile): never "clean" when torch would run code or read other bytes,
inert frozen stand-ins (no cross-file poisoning), bounded work, one clean line for every bad input."""

from __future__ import annotations

import io
import pickle
import time
import warnings
import zipfile

import pytest
import torch

from sdlens.errors import CheckpointError, UnsafeArchiveError, UnsafeFileError, UnsafePickleError
from sdlens.io.open import open_checkpoint
from sdlens.io.pickle_scan import MAX_DEPTH, looks_like_pickle, scan_pickle
from sdlens.io.torch_file import _ALLOWED, open_torch_checkpoint
from sdlens.testing.hostile import CASES, MARKER, case

_SECONDS = {"legacy_6mb": 5.0, "zip_bomb_pickle": 2.0, "deep_list": 3.0}


@pytest.mark.parametrize("c", CASES, ids=[c.name for c in CASES])
def test_every_hostile_file_gets_its_verdict_quickly_in_one_line(tmp_path, c):
    path = c.write(tmp_path)
    t0 = time.perf_counter()
    try:
        with open_checkpoint(path) as ckpt:
            got, error = "ok", None
            assert ckpt.tensors, "a benign control must index its tensors"
    except UnsafeFileError as e:
        got, error = "unsafe", e
    except CheckpointError as e:
        got, error = "error", e
    elapsed = time.perf_counter() - t0
    assert got == c.verdict, f"{c.name}: {error}"
    assert elapsed < _SECONDS.get(c.name, 1.0), f"{c.name} took {elapsed:.2f} s"
    if error is not None:
        text = str(error)
        assert "\n" not in text and len(text) < 400 + len(str(path)), text
        assert text.startswith(str(path))
    if c.names:
        assert isinstance(error, UnsafePickleError)
        assert set(c.names) <= set(error.globals_found), error.globals_found
    assert not (tmp_path / MARKER).exists()


def test_every_unsafe_case_is_named_unsafe_not_unreadable(tmp_path):
    """The issue's complaint: CRC, local-name and protocol-0 payloads were "cannot read"/"unrecognised"."""
    for name in ("zip_crc_evil", "zip_local_name_mismatch", "raw_proto0_text_global"):
        with pytest.raises(UnsafePickleError, match="unsafe pickle: references (os|posix).system"):
            open_checkpoint(case(name).write(tmp_path))
    with pytest.raises(UnsafeArchiveError, match=r"CRC-32 mismatch in 'archive/data.pkl'"):
        open_checkpoint(case("zip_crc_benign").write(tmp_path))


# ------------------------------------------------------------------------------------------ torch as judge


def test_duplicate_data_pkl_torch_and_zipfile_read_different_copies_and_sdlens_refuses(tmp_path):
    path = case("zip_duplicate_benign_pair").write(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch_keys = list(torch.load(path, weights_only=True))  # benign copies only: safe to load
        zipfile_pkl = zipfile.ZipFile(path).read("archive/data.pkl")
    assert torch_keys == ["first.w", "first.b"]  # torch (miniz) reads the first copy ...
    assert b"second.w" in zipfile_pkl and b"first.w" not in zipfile_pkl  # ... Python's zipfile the last
    with pytest.raises(UnsafeArchiveError, match="duplicate member name 'archive/data.pkl'"):
        open_torch_checkpoint(path)
    # the evil twin in the same arrangement: zipfile would show the benign copy; sdlens names the payload
    evil = case("zip_duplicate_first_evil").write(tmp_path)
    assert b"system" not in zipfile.ZipFile(evil).read("archive/data.pkl")
    with pytest.raises(UnsafePickleError, match="system"):
        open_torch_checkpoint(evil)


def test_torch_reads_archives_that_zipfile_calls_corrupt_so_they_are_refused(tmp_path):
    """torch ignores a wrong CRC and odd flag bits; sdlens must therefore not call such a file clean."""
    for name in ("zip_crc_benign", "zip_unusual_flag", "zip_gap_between_members"):
        path = case(name).write(tmp_path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert list(torch.load(path, weights_only=True)) == ["w", "b"], name
        with pytest.raises(UnsafeArchiveError):
            open_torch_checkpoint(path)


def test_polyglot_is_unpickled_by_torch_as_legacy_and_refused(tmp_path):
    path = case("polyglot_pickle_then_zip").write(tmp_path)
    assert zipfile.is_zipfile(path)  # what a zip-based scanner sees
    with pytest.raises(UnsafePickleError, match="system"):
        open_checkpoint(path)


# ------------------------------------------------------------------------------------------ poisoning


def _standins() -> dict[str, tuple]:
    return {q: (getattr(v, "dtype", None), getattr(v, "itemsize", None), getattr(v, "name", None))
            for q, v in _ALLOWED.items()}  # fmt: skip


@pytest.mark.parametrize("poison", [c.name for c in CASES if c.group == "poison"])
def test_poison_then_good_file_in_one_process(tmp_path, poison):
    before = _standins()
    with pytest.raises(CheckpointError, match="immutable|BUILD|__setstate__|attribute"):
        open_checkpoint(case(poison).write(tmp_path))
    assert _standins() == before
    with open_checkpoint(case("benign_zip").write(tmp_path)) as good:
        assert {k: (t.dtype, t.shape, t.nbytes) for k, t in good.tensors.items()} == {
            "w": ("F32", (2, 3), 24),
            "b": ("F16", (3,), 6),
        }
        assert torch.equal(good.read("w"), torch.arange(6, dtype=torch.float32).reshape(2, 3))


def test_stand_ins_refuse_attribute_setting():
    fs = _ALLOWED["torch.FloatStorage"]
    with pytest.raises(ValueError, match="sets attribute"):
        fs.dtype = "F16"
    with pytest.raises(ValueError, match="immutable"):
        fs.__setstate__({"itemsize": 2})
    with pytest.raises(ValueError):
        type(_ALLOWED["argparse.Namespace"]).__setattr__(_ALLOWED["argparse.Namespace"], "x", 1)


def test_cli_inspect_poison_then_good_reports_the_good_file_exactly(tmp_path, cli):
    poison = case("poison_storage_type").write(tmp_path)
    good = case("benign_zip").write(tmp_path)
    r = cli("inspect", "--json", str(poison), str(good))
    assert "Traceback" not in r.stderr
    import json

    report = json.loads(r.stdout)
    assert "immutable" in report[0]["error"]
    assert report[1]["dtypes"] == {"F32": {"tensors": 1, "bytes": 24}, "F16": {"tensors": 1, "bytes": 6}}


# ------------------------------------------------------------------------------------------ the scanner


@pytest.mark.parametrize("protocol", range(6))
def test_every_protocol_scans_to_the_globals_pickletools_sees(protocol):
    from collections import OrderedDict

    obj = {"a": [1, 2.5, (3, "x")], "s": {1, 2}, "b": b"\x00" * 300, "o": OrderedDict(k=1), "big": 1 << 70}
    data = pickle.dumps(obj, protocol=protocol)
    result = scan_pickle(data)
    assert result.error is None and result.end == len(data)
    assert set(result.globals) <= {"builtins.set", "_codecs.encode", "collections.OrderedDict"}
    assert "collections.OrderedDict" in result.globals


def test_binbytes8_claiming_2_62_bytes_is_truncated_without_allocating():
    data = b"\x80\x04\x8e" + (1 << 62).to_bytes(8, "little") + b"."
    result = scan_pickle(data)
    assert result.error is not None and not result.globals


def test_opcode_and_size_limits():
    data = pickle.dumps(list(range(5000)), protocol=2)
    assert scan_pickle(data, max_opcodes=100).error == "too long: more than 100 opcodes"
    assert scan_pickle(data, max_bytes=1000).error.startswith("larger than")
    assert scan_pickle(data).error is None


def test_depth_limit_and_hashed_key_limits():
    deep = b"\x80\x02" + b"]" * (MAX_DEPTH + 5) + b"a" * (MAX_DEPTH + 4) + b"."
    assert scan_pickle(deep).error == f"nested more than {MAX_DEPTH} levels deep"
    ok = b"\x80\x02" + b"]" * 50 + b"a" * 49 + b"."
    assert scan_pickle(ok).error is None
    # a 40-deep tuple as a dict key: hashed recursively in C, so refused before unpickling
    key = b"\x80\x02})" + b"\x85" * 40 + b"K\x01s."
    assert "dict key nested" in scan_pickle(key).error
    # set(...) of the same tuple through REDUCE
    via_set = b"\x80\x02cbuiltins\nset\n)" + b"\x85" * 40 + b"\x85\x85R."
    assert "to hash" in scan_pickle(via_set).error


def test_memo_dag_key_is_refused_by_size_not_depth():
    levels = b"h\x00h\x00\x86q\x00" * 20  # 20 deep, 2**20 leaves
    assert "objects to hash" in scan_pickle(b"\x80\x02}K\x01q\x00" + levels + b"K\x01s.").error


def test_stack_discipline_matches_the_c_unpickler():
    # an object below a MARK is not reachable: the C unpickler fails here, so must the scan
    assert "underflow" in scan_pickle(b"\x80\x02K\x01(\x85.").error
    # POP of a MARK pops the mark
    assert scan_pickle(b"\x80\x02K\x01(0.").error is None
    # memo read before it is written
    assert "memo" in scan_pickle(b"\x80\x02h\x05.").error


def test_protocol_0_and_1_pickles_are_recognised_as_pickles():
    assert looks_like_pickle(b"cos\nsystem\n(S'echo'\ntR.")
    assert looks_like_pickle(pickle.dumps({"a": 1}, protocol=0))
    assert looks_like_pickle(pickle.dumps({"a": 1}, protocol=1))
    assert not looks_like_pickle(b"hello, this is not a checkpoint")
    assert not looks_like_pickle(b"I am plain text\n")


def test_the_benign_controls_read_exactly(tmp_path):
    from sdlens.testing.hostile import _benign_sd

    expected = _benign_sd()
    for name in ("benign_zip", "benign_proto4", "benign_legacy", "benign_rewritten_zip"):
        with open_checkpoint(case(name).write(tmp_path)) as ckpt:
            assert ckpt.keys() == list(expected), name
            for k, t in expected.items():
                assert ckpt.read(k).dtype == t.dtype and torch.equal(ckpt.read(k), t), (name, k)


def test_dag_extra_is_summarised_without_expansion(tmp_path):
    with open_checkpoint(case("dag_bomb_extra").write(tmp_path)) as ckpt:
        assert ckpt.extras == {"bomb": "<list: 2 items>"}


def test_pickle_size_limit_applies_to_inflated_members(tmp_path):
    with pytest.raises(CheckpointError, match="limit 64 MiB"):
        open_checkpoint(case("zip_bomb_pickle").write(tmp_path))


@pytest.mark.parametrize(
    ("name", "opener"), [("pipe.ckpt", open_torch_checkpoint), ("pipe.safetensors", open_checkpoint)]
)
def test_fifo_is_refused_without_blocking(tmp_path, name, opener):
    import os

    fifo = tmp_path / name
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="not a regular file"):
        opener(fifo)


def test_stride_zero_broadcast_within_limit_still_reads(tmp_path):
    p = tmp_path / "bc.pt"
    torch.save({"e": torch.arange(3.0).expand(1000, 3)}, p)
    with open_checkpoint(p) as ckpt:
        assert torch.equal(ckpt.read("e"), torch.arange(3.0).expand(1000, 3))


def test_zip64_records_written_by_torch_are_accepted():
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf)
    raw = buf.getvalue()
    assert b"PK\x06\x06" in raw[-200:]  # torch always writes the zip64 end records


def test_legacy_pickle_limits_are_reported_as_such_not_as_truncation(tmp_path):
    deep = tmp_path / "deep.pt"
    deep.write_bytes(b"\x80\x02" + b"]" * 300 + b"a" * 299 + b"." + b"\x00" * (3 << 20))
    with pytest.raises(CheckpointError, match="nested more than 200 levels deep"):
        open_checkpoint(deep)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(pickle.dumps(list(range(400_000)), protocol=2)[:-5])  # > 1 MiB, read in steps
    with pytest.raises(CheckpointError, match="truncated"):
        open_checkpoint(cut)


def test_long_key_copied_into_many_names_is_refused_early(tmp_path):
    # one 5,000-character key over 2,000 siblings would be 10 M characters of names (k × n): refused
    p = tmp_path / "names.pt"
    torch.save({"A" * 5000: {"t": torch.ones(1), **{i: None for i in range(2000)}}}, p)
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="key path is longer than 4096 characters") as e:
        open_checkpoint(p)
    assert time.perf_counter() - t0 < 5 and len(str(e.value)) < 400 and e.value.path == str(p)
    ok = tmp_path / "ok.pt"
    torch.save(
        {"A" * 200: {"t": torch.ones(1), **{i: None for i in range(2000)}}}, ok
    )  # a long real key is fine
    with open_checkpoint(ok) as ck:
        assert list(ck.tensors) == ["A" * 200 + ".t"]
