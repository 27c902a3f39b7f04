"""Hostile and malformed files: one CheckpointError line naming the file and the problem — never a traceback,
a hang, or work out of proportion to the file; and every command walked over a corpus of such files."""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import time
from pathlib import Path

import pytest

from sdlens.errors import CheckpointError
from sdlens.io.base import Checkpoint, TensorInfo
from sdlens.io.open import open_checkpoint
from sdlens.testing.badfiles import (
    HEADER_CASES,
    build_corpus,
    good_tensors,
    many_tensors_header,
    safetensors_bytes,
    write_safetensors,
)
from tests.helpers import within

# cases read by another helper's code (zip container, pickles, shard indexes): their message is theirs
OTHER_READERS = {"zip_truncated", "zip_garbage_tail", "pickle_garbage", "index_not_map", "index_deep"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def good(corpus) -> Path:
    return next(iter(corpus.values())).path.parent / "good.safetensors"


# ---------------------------------------------------------------------------------------------- readers


@pytest.mark.parametrize("name", [c[0] for c in HEADER_CASES])
def test_bad_header_value_is_one_precise_line(corpus, name):
    bad = corpus[name]
    with pytest.raises(CheckpointError) as e:
        within(10, open_checkpoint, bad.path)
    text = str(e.value)
    assert bad.message in text
    assert text.startswith(f"{bad.path}: ")
    assert "\n" not in text and len(text) < 600
    assert not hasattr(e.value, "unexpected"), "caught by the safety net, not by the header checks"


@pytest.mark.parametrize(
    "name",
    [
        "zero_length",
        "zero_length_ckpt",
        "seven_bytes",
        "truncated_header",
        "truncated_data",
        "length_too_big",
        "garbage",
        "garbage_safetensors",
        "fifo",
        "symlink_loop",
        "device",
        *sorted(OTHER_READERS),
    ],
)
def test_bad_file_is_one_line_naming_it(corpus, name):
    if name not in corpus:
        pytest.skip(f"{name}: not possible on this platform")
    bad = corpus[name]
    with pytest.raises(CheckpointError) as e:
        within(10, open_checkpoint, bad.path)
    text = str(e.value)
    assert bad.message in text and text.startswith(f"{bad.path}: ")
    assert "\n" not in text and len(text) < 600
    if name not in OTHER_READERS:
        assert not hasattr(e.value, "unexpected")


def test_seven_byte_safetensors_is_too_short(corpus):
    with pytest.raises(CheckpointError, match=r"too short to be safetensors \(7 bytes\)"):
        open_checkpoint(corpus["seven_bytes"].path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_file_swapped_for_a_fifo_after_opening_is_refused_at_read(tmp_path):
    """The tensor reads re-open the file: a FIFO put in its place is refused, not waited on forever."""
    from sdlens.io.safetensors_file import SafetensorsCheckpoint
    from sdlens.io.stream import stream

    path = write_safetensors(tmp_path / "m.safetensors", good_tensors())
    ck = open_checkpoint(path)
    key = next(iter(ck.tensors))
    os.replace(path, tmp_path / "moved.safetensors")
    os.mkfifo(path)
    for read in (lambda: SafetensorsCheckpoint(path), lambda: ck.read(key), lambda: list(stream(ck))):
        with pytest.raises(CheckpointError, match="is a named pipe") as e:
            within(10, read)
        assert str(e.value).startswith(f"{path}: ")
    ck.close()


def test_every_offset_is_checked_against_the_file(tmp_path):
    """The last tensor ends one byte past the data region: refused, naming it, at open."""
    tensors = {
        "a": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]},
        "b": {"dtype": "F16", "shape": [3], "data_offsets": [4, 10]},
    }
    p = tmp_path / "x.safetensors"
    p.write_bytes(safetensors_bytes(tensors, b"\0" * 9))
    with pytest.raises(CheckpointError, match="tensor 'b' ends at byte 10 of a 9-byte data region"):
        open_checkpoint(p)
    p.write_bytes(safetensors_bytes(tensors, b"\0" * 10))
    with open_checkpoint(p) as ck:
        assert [(k, i.offset - ck.tensors["a"].offset) for k, i in ck.tensors.items()] == [("a", 0), ("b", 4)]


def test_zero_length_tensors_share_offsets_without_overlapping(tmp_path):
    """Empty tensors at a tensor's start or end touch it but do not overlap it (order: by begin, then end)."""
    header = {
        "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "e1": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]},
        "e2": {"dtype": "F32", "shape": [0, 3], "data_offsets": [8, 8]},
    }
    p = tmp_path / "z.safetensors"
    p.write_bytes(safetensors_bytes(header, struct.pack("<2f", 1.5, -2.0)))
    with open_checkpoint(p) as ck:
        assert list(ck.tensors) == ["e1", "w", "e2"]
        assert ck.read("w").tolist() == [1.5, -2.0]
        assert ck.tensors["e2"].nbytes == 0 and ck.read("e2").shape == (0, 3)


def test_limits_on_tensor_count_and_header_size(tmp_path, monkeypatch):
    import sdlens.io.safetensors_file as sf

    p = tmp_path / "m.safetensors"
    p.write_bytes(many_tensors_header(50))
    monkeypatch.setattr(sf, "MAX_TENSORS", 49)
    with pytest.raises(CheckpointError, match="lists 50 tensors \\(limit 49\\)"):
        open_checkpoint(p)
    monkeypatch.setattr(sf, "MAX_TENSORS", 50)
    assert len(open_checkpoint(p)) == 50
    monkeypatch.setattr(sf, "MAX_HEADER_BYTES", 1000)
    with pytest.raises(CheckpointError, match="limit 1000"):
        sf.SafetensorsCheckpoint(p)


def test_200k_tensor_header_opens_in_about_the_time_of_its_json_parse(tmp_path):
    """A 200,000-tensor header (~18 MB) costs little beyond ``json.loads`` itself (measured side by side, so
    that a loaded machine slows both); unloaded that is well under a second."""
    data = many_tensors_header(200_000)
    n = int.from_bytes(data[:8], "little")
    assert n > 14_000_000
    p = tmp_path / "many.safetensors"
    p.write_bytes(data)
    t0 = time.process_time()
    json.loads(data[8 : 8 + n])
    parse = time.process_time() - t0
    t0 = time.process_time()
    ck = open_checkpoint(p)
    took = time.process_time() - t0
    assert took < 2.5 * parse + 0.1, f"open {took:.2f} s vs json.loads {parse:.2f} s"
    assert took < 8
    keys = list(ck.tensors)
    assert (
        len(keys) == 200_000
        and keys[0] == "blocks.0.attn1.to_q.weight"
        and keys[-1] == "blocks.24999.norm1.weight"
    )
    assert ck.tensor_bytes == 800_000 and ck.tensors[keys[-1]].offset == 8 + n + 799_996
    assert ck.read(keys[-1]).tolist() == [0.0, 0.0]


def test_tensor_infos_built_in_bulk_equal_the_dataclass():
    from sdlens.io.base import tensor_infos

    bulk = tensor_infos(["a", "b"], [(2, 3), ()], ["F16", "F32"], "/f", [8, 20], [6, 1], [12, 4])
    assert bulk == {"a": TensorInfo("a", (2, 3), "F16", "/f", 8), "b": TensorInfo("b", (), "F32", "/f", 20)}
    assert [(t.numel, t.nbytes, t.extra) for t in bulk.values()] == [(6, 12, None), (1, 4, None)]
    with pytest.raises(AttributeError):
        bulk["a"].offset = 0  # frozen like the dataclass


# ---------------------------------------------------------------------------------------------- views


@pytest.fixture(scope="module")
def stride0(tmp_path_factory) -> Path:
    """4 bytes of storage seen as a 100 MB tensor (stride 0), and two honest views of small storages."""
    import torch

    p = tmp_path_factory.mktemp("views") / "stride0.ckpt"
    torch.save(
        {
            "big": torch.zeros(1).expand(25 * 10**6),
            "small": torch.arange(3.0).expand(4, 3),
            "pos": torch.arange(77).expand((1, -1)),
        },
        p,
    )
    return p


@pytest.fixture(scope="module")
def stride0_4tb(tmp_path_factory) -> Path:
    """4 bytes of storage seen as a 4 TB tensor: refused when the file is indexed."""
    import torch

    p = tmp_path_factory.mktemp("views4tb") / "stride0_4tb.ckpt"
    torch.save({"big": torch.zeros(1).expand(10**12)}, p)
    return p


def test_broadcast_view_is_refused_before_any_allocation(stride0, stride0_4tb):
    from sdlens.analysis.scan import scan_tensors
    from sdlens.io.stream import stream

    with pytest.raises(CheckpointError, match="claims 4,000,000,000,000 bytes from a 4-byte storage"):
        within(10, lambda: open_checkpoint(stride0_4tb))  # at index time: over the 1 GiB view limit
    with open_checkpoint(stride0) as ck:  # under it: indexed, but never materialised
        assert ck.tensors["big"].nbytes == 10**8 and not ck.is_plain("big")
        for fn in (
            lambda: ck.read("big"),
            lambda: ck.read_numpy("big"),
            lambda: list(stream(ck)),
            lambda: scan_tensors(ck),
        ):
            with pytest.raises(
                CheckpointError, match="'big' is a view of 100000000 bytes over a 4-byte storage"
            ):
                within(10, fn)
        # honest views read exactly; a small broadcast is allowed
        assert ck.read("small").tolist() == [[0.0, 1.0, 2.0]] * 4
        assert ck.read("pos").tolist() == [list(range(77))]
        got = {p.key: p.array.tolist() for p in stream(ck, ["small", "pos"])}
        assert got == {"small": [0.0, 1.0, 2.0] * 4, "pos": list(range(77))}


def test_broadcast_view_fails_commands_in_one_line(stride0, stride0_4tb, tmp_path):
    for argv, code, message in (
        (["inspect", "--scan", str(stride0)], 1, "'big' is a view of 100000000 bytes"),
        (["diff", str(stride0), str(stride0)], 2, "'big' is a view of 100000000 bytes"),
        (["inspect", str(stride0_4tb)], 1, "claims 4,000,000,000,000 bytes"),
        (["diff", str(stride0_4tb), str(stride0_4tb)], 2, "claims 4,000,000,000,000 bytes"),
        (["convert", str(stride0_4tb), str(tmp_path / "o.safetensors")], 2, "claims 4,000,000,000,000 bytes"),
    ):
        got, _out, err, _dt = run_main(argv)
        assert got == code, (argv, err)
        assert _error_lines(err) == 1 and message in err, err


# ---------------------------------------------------------------------------------------------- safety nets


def test_unexpected_reader_exception_becomes_one_line(tmp_path, monkeypatch):
    from sdlens.io.safetensors_file import SafetensorsCheckpoint

    path = write_safetensors(tmp_path / "m.safetensors", good_tensors())

    def boom(self):
        raise TypeError("unhashable type: 'list'")

    monkeypatch.setattr(SafetensorsCheckpoint, "_open", boom)
    with pytest.raises(CheckpointError) as e:
        open_checkpoint(path)
    assert str(e.value) == f"{path}: cannot read: TypeError: unhashable type: 'list'"
    assert e.value.unexpected == "TypeError"
    monkeypatch.setenv("SDLENS_DEBUG", "1")
    with pytest.raises(TypeError):  # developers see the real exception and its traceback
        open_checkpoint(path)


def test_every_readers_tensor_reads_are_guarded(tmp_path, monkeypatch):
    """A reader subclass's own ``read`` is wrapped automatically: its struct.error becomes one line."""

    class Broken(Checkpoint):
        def read(self, key, *, copy=True):
            struct.unpack("<Q", b"\0")

    ck = Broken(tmp_path / "x.bin")
    ck.tensors["k"] = TensorInfo("k", (1,), "F32", str(tmp_path / "x.bin"), 0)
    with pytest.raises(CheckpointError) as e:
        ck.read("k")
    assert str(e.value).startswith(f"{tmp_path / 'x.bin'}: cannot read tensor 'k': error: unpack requires")
    with pytest.raises(KeyError):  # a key not in the index stays a KeyError, as for any mapping
        ck.read("nope")
    monkeypatch.setenv("SDLENS_DEBUG", "1")
    with pytest.raises(struct.error):
        ck.read("k")


def run_main(argv: list[str], timeout: float = 10) -> tuple[int, str, str, float]:
    """``sdlens ARGV`` in process, as the console script runs it: (exit code, stdout, stderr, seconds)."""
    from sdlens.cli import main

    out, err = io.StringIO(), io.StringIO()

    def target() -> int:
        try:
            main(argv)
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else int(e.code is not None)
        return 0

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = within(timeout, target)
    return code, out.getvalue(), err.getvalue(), time.perf_counter() - t0


def _error_lines(err: str) -> int:
    return sum(1 for line in err.splitlines() if line.startswith("sdlens: error:"))


def test_cli_safety_net(good, monkeypatch):
    import sdlens.analysis.diff as diff_mod
    import sdlens.analysis.inspect as inspect_mod

    def boom(*a, **k):
        raise ValueError("x" * 10_000)

    monkeypatch.setattr(inspect_mod, "inspect", boom)
    code, out, err, _ = run_main(
        ["inspect", str(good)]
    )  # a bug met on a file: one line naming it, exit 3 (README)
    assert code == 3 and _error_lines(err) == 1 and "Traceback" not in out + err
    assert f"{good}: cannot handle this file: ValueError: xxx" in err and len(err) < 600
    monkeypatch.setattr(diff_mod, "diff", boom)
    code, out, err, _ = run_main(["diff", str(good), str(good)])
    assert (
        code == 3
        and _error_lines(err) == 1
        and "internal error: ValueError" in err
        and "SDLENS_DEBUG=1" in err
    )
    monkeypatch.setenv("SDLENS_DEBUG", "1")
    with pytest.raises(ValueError):
        run_main(["diff", str(good), str(good)])


# ---------------------------------------------------------------------------------------------- commands


def _commands(bad: str, good: Path, tmp: Path, prompts: Path) -> dict[str, tuple[list[str], int]]:
    """Every command that reads a checkpoint, with the exit code documented for a bad input."""
    return {
        "inspect": (["inspect", bad], 1),
        "inspect --json": (["inspect", "--json", bad], 1),
        "inspect --scan --hash": (["inspect", "--scan", "--hash", bad], 1),
        "inspect good bad": (["inspect", "--brief", str(good), bad], 1),
        "diff bad good": (["diff", bad, str(good)], 2),
        "diff good bad": (["diff", str(good), bad], 2),
        "matrix": (["matrix", bad, str(good), "--out", str(tmp / "m"), "--no-plots"], 2),
        "convert": (["convert", bad, str(tmp / "o.safetensors")], 2),
        "convert --vae": (["convert", str(good), str(tmp / "v.safetensors"), "--vae", bad], 2),
        "arch": (["arch", bad], 2),
        "embed": (["embed", bad, "--prompts", str(prompts), "--out", str(tmp / "e")], 2),
    }


WALKED = [
    "dtype_list",
    "dtype_object",
    "shape_true",
    "offsets_floats",
    "overlap",
    "deep_json",
    "huge_int",
    "lone_surrogate_key",
    "long_key_dtype",
    "zero_length",
    "truncated_data",
    "garbage",
    "zip_truncated",
    "pickle_garbage",
    "fifo",
    "symlink_loop",
    "device",
    "index_deep",
]


@pytest.mark.parametrize("name", WALKED)
def test_every_command_gives_one_line_on_a_bad_file(corpus, good, tmp_path, name):
    if name not in corpus:
        pytest.skip(f"{name}: not possible on this platform")
    bad = corpus[name]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\n")
    for label, (argv, expected) in _commands(str(bad.path), good, tmp_path, prompts).items():
        code, out, err, seconds = run_main(argv)
        where = f"sdlens {label} on {name}: exit {code}, {seconds:.1f} s\n{err[-2000:]}"
        assert "Traceback" not in out + err, where
        assert code == expected, where
        assert _error_lines(err) == 1 and str(bad.path) in err, where
        if name not in OTHER_READERS:
            assert bad.message in err, where


def test_inspect_every_corpus_file_at_once(corpus, good):
    """One run over the whole corpus: a line per bad file, the good one reported, exit 1."""
    paths = [str(b.path) for b in corpus.values()]
    code, out, err, _ = run_main(["inspect", "--json", str(good), *paths], timeout=30)
    assert code == 1 and "Traceback" not in out + err
    assert _error_lines(err) == len(paths)
    reports = json.loads(out)
    assert reports[0]["path"] == str(good) and reports[0]["tensor_count"] == 4
    assert [r["path"] for r in reports[1:]] == paths and all("error" in r for r in reports[1:])


def test_the_good_file_passes_every_command(good, tmp_path):
    code, out, err, _ = run_main(["inspect", "--scan", "--hash", str(good)])
    assert code == 0 and "sdlens: error" not in err
    code, out, err, _ = run_main(["diff", str(good), str(good)])
    assert code == 0, err


def test_the_hostile_corpus_of_sdlens_testing_hostile_if_present(good, tmp_path):
    """``sdlens.testing.hostile`` (malicious pickles and zips, built by another part of the project) walked
    the same way when it is there: any exit but a traceback, a hang or an internal error."""
    hostile = pytest.importorskip("sdlens.testing.hostile")
    build = getattr(hostile, "build_corpus", None)
    if build is None:
        pytest.skip("sdlens.testing.hostile has no build_corpus(folder)")
    paths = [path for _case, path in build(tmp_path / "hostile")]
    for p in paths:
        for argv, allowed in ((["inspect", str(p)], {0, 1}), (["diff", str(good), str(p)], {0, 2})):
            code, out, err, seconds = run_main(argv)
            assert code in allowed and "Traceback" not in out + err, f"{argv}: exit {code}\n{err[-2000:]}"
