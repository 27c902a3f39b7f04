"""The torch checkpoint reader: exact data (zip and legacy), unwrapping, views, torch-free indexing,
refusal of malicious pickles (nothing executed), and a clear error for every malformed file."""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sdlens.errors import CheckpointError, UnsafePickleError
from sdlens.io.torch_file import (
    TorchCheckpoint,
    _RestrictedUnpickler,
    is_allowed_global,
    open_torch_checkpoint,
    scan_pickle_globals,
)

LEGACY = [False, True]
IDS = ["zip", "legacy"]


def _save(obj, path: Path, legacy: bool = False, **kw) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy, **kw)
    return path


def _sd() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(3, 5, generator=g),
        "f16": torch.randn(4, 2, generator=g).half(),
        "bf16": torch.randn(7, generator=g).bfloat16(),
        "i64": torch.randint(-1000, 1000, (2, 3), generator=g),
        "bool": torch.rand(9, generator=g) > 0.5,
        "f64": torch.randn(2, generator=g).double(),
        "i8": torch.randint(-100, 100, (5,), generator=g).to(torch.int8),
        "u8": torch.randint(0, 255, (3,), generator=g).to(torch.uint8),
        "f8": torch.randn(4, generator=g).to(torch.float8_e4m3fn),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }


def _assert_same(ckpt: TorchCheckpoint, expected: dict[str, torch.Tensor]) -> None:
    assert set(ckpt.keys()) == set(expected)
    for k, t in expected.items():
        got = ckpt.read(k)
        assert got.dtype == t.dtype, k
        assert tuple(got.shape) == tuple(t.shape), k
        assert torch.equal(got.reshape(-1).view(torch.uint8), t.contiguous().reshape(-1).view(torch.uint8)), k


def _write_zip(path: Path, entries: dict[str, bytes], deflate: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data, zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED)
    return path


def _zip_entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def _pkl_name(entries: dict[str, bytes]) -> str:
    return next(n for n in entries if n.endswith("/data.pkl"))


# ------------------------------------------------------------------------------------------ exact data


@pytest.mark.parametrize("legacy", LEGACY, ids=IDS)
def test_every_dtype_round_trips_exactly(tmp_path, legacy):
    sd = _sd()
    with open_torch_checkpoint(_save(sd, tmp_path / "m.ckpt", legacy)) as ckpt:
        assert ckpt.format == ("torch-legacy" if legacy else "torch-zip")
        assert ckpt.tensors["f32"].dtype == "F32"
        assert ckpt.tensors["bf16"].dtype == "BF16"
        assert ckpt.tensors["bool"].dtype == "BOOL"
        assert ckpt.tensors["f8"].dtype == "F8_E4M3"
        assert ckpt.tensors["scalar"].shape == ()
        assert ckpt.tensors["empty"].shape == (0, 4)
        assert ckpt.extras == {}
        _assert_same(ckpt, sd)


def test_keys_keep_state_dict_order_and_offsets_follow_data_order(tmp_path):
    sd = {f"layer{i}.weight": torch.full((10,), float(i)) for i in range(5)}
    with open_torch_checkpoint(_save(sd, tmp_path / "m.pt")) as ckpt:
        assert ckpt.keys() == list(sd)
        offsets = [ckpt.tensors[k].offset for k in sd]
        assert offsets == sorted(offsets) and len(set(offsets)) == 5
        raw = Path(tmp_path / "m.pt").read_bytes()
        for k, t in sd.items():
            info = ckpt.tensors[k]
            assert raw[info.offset : info.offset + info.nbytes] == t.numpy().tobytes()
            assert info.source == str(tmp_path / "m.pt")


def test_legacy_offsets_point_at_the_data(tmp_path):
    sd = {"a": torch.arange(5, dtype=torch.int64), "b": torch.arange(3, dtype=torch.float16)}
    p = _save(sd, tmp_path / "m.pt", legacy=True)
    raw = p.read_bytes()
    with open_torch_checkpoint(p) as ckpt:
        for k, t in sd.items():
            info = ckpt.tensors[k]
            assert raw[info.offset : info.offset + info.nbytes] == t.numpy().tobytes()
            # the 8-byte little-endian element count precedes each legacy storage
            assert int.from_bytes(raw[info.offset - 8 : info.offset], "little") == t.numel()


def test_pickle_protocol_4_stack_globals_are_resolved_and_allowed(tmp_path):
    sd = _sd()
    p = _save(sd, tmp_path / "p4.pt", pickle_protocol=4)
    globals_found = scan_pickle_globals(_zip_entries(p)[_pkl_name(_zip_entries(p))])
    assert "torch._utils._rebuild_tensor_v2" in globals_found and "torch.FloatStorage" in globals_found
    with open_torch_checkpoint(p) as ckpt:
        _assert_same(ckpt, sd)


def test_scan_lists_exactly_the_globals_of_a_plain_state_dict(tmp_path):
    p = _save({"w": torch.ones(2), "h": torch.ones(2).half()}, tmp_path / "m.pt")
    data = _zip_entries(p)[_pkl_name(_zip_entries(p))]
    assert scan_pickle_globals(data) == [
        "torch._utils._rebuild_tensor_v2",
        "torch.FloatStorage",
        "collections.OrderedDict",
        "torch.HalfStorage",
    ]
    assert all(is_allowed_global(g) for g in scan_pickle_globals(data))
    assert not is_allowed_global("os.system") and not is_allowed_global("__builtin__.eval")


def test_zip_rewritten_by_another_writer_still_reads(tmp_path):
    """Offsets come from each entry's own local header, not from torch's alignment conventions."""
    sd = _sd()
    src = _save(sd, tmp_path / "m.pt")
    entries = _zip_entries(src)
    dst = _write_zip(tmp_path / "rewritten.pt", {n: entries[n] for n in reversed(list(entries))})
    with open_torch_checkpoint(dst) as ckpt:
        _assert_same(ckpt, sd)


# ------------------------------------------------------------------------------------------ unwrapping


@pytest.mark.parametrize("legacy", LEGACY, ids=IDS)
def test_lightning_style_wrapper_is_unwrapped_with_extras(tmp_path, legacy):
    sd = {"model.w": torch.randn(2, 3), "model_ema.num_updates": torch.tensor(7, dtype=torch.int32)}
    p = _save({"state_dict": sd, "epoch": 3, "global_step": 1000}, tmp_path / "m.ckpt", legacy)
    with open_torch_checkpoint(p) as ckpt:
        assert ckpt.keys() == ["model.w", "model_ema.num_updates"]
        assert ckpt.extras == {"epoch": 3, "global_step": 1000}
        _assert_same(ckpt, sd)


def test_nested_wrappers_are_unwrapped(tmp_path):
    sd = {"w": torch.randn(4)}
    with open_torch_checkpoint(_save({"model": sd}, tmp_path / "a.pt")) as ckpt:
        assert ckpt.keys() == ["w"] and ckpt.extras == {}
    p = _save({"model": {"state_dict": sd, "version": 2}, "epoch": 1}, tmp_path / "b.pt")
    with open_torch_checkpoint(p) as ckpt:
        assert ckpt.keys() == ["w"]
        assert ckpt.extras == {"epoch": 1, "model.version": 2}
        _assert_same(ckpt, sd)


def test_top_level_tensor_dict_is_used_as_is_with_non_tensors_in_extras(tmp_path):
    obj = {"a": torch.ones(2), "model": torch.zeros(3), "steps": 12, "name": "x", "lr": 0.5, "flag": None}
    with open_torch_checkpoint(_save(obj, tmp_path / "m.pt")) as ckpt:
        assert ckpt.keys() == ["a", "model"]
        assert ckpt.extras == {"steps": 12, "name": "x", "lr": 0.5, "flag": None}


def test_other_objects_are_summarised_and_numpy_scalars_decoded(tmp_path):
    obj = {
        "state_dict": {"w": torch.ones(2), "num_updates": 5},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(2)}}}],
        "lr_schedulers": [],
        "hparams": argparse.Namespace(lr=1e-4),
        "best": np.float64(0.25),
        "count": np.int64(-7),
        "ok": np.bool_(True),
        "array": np.arange(3.0),
        "torch_version": torch.__version__,
        "blob": b"\x00\x01",
        "tags": {"a", "b"},
        "ema": torch.ones(1).half(),
    }
    with open_torch_checkpoint(_save(obj, tmp_path / "m.ckpt")) as ckpt:
        assert ckpt.keys() == ["w"]
        assert ckpt.extras == {
            "num_updates": 5,
            "optimizer_states": "<list: 1 items>",
            "lr_schedulers": "<list: 0 items>",
            "hparams": "<Namespace>",
            "best": 0.25,
            "count": -7,
            "ok": True,
            "array": "<ndarray f8 [3]>",
            "torch_version": "<TorchVersion>",
            "blob": "<bytes: 2>",
            "tags": "<set: 2 items>",
            "ema": "<tensor F16 [1]>",
        }


def test_lightning_model_checkpoint_callback_is_an_inert_stub(tmp_path, monkeypatch):
    """A class allowed by name is never imported: the pickle opens where the library is not installed."""
    mod_name = "pytorch_lightning.callbacks.model_checkpoint"
    parts = mod_name.split(".")
    for i in range(1, len(parts) + 1):
        monkeypatch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))

    class ModelCheckpoint:
        def __init__(self):
            self.best_model_path = "best.ckpt"
            self.best_model_score = torch.tensor(0.5)

    ModelCheckpoint.__module__ = mod_name
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    sys.modules[mod_name].ModelCheckpoint = ModelCheckpoint
    obj = {
        "state_dict": {"w": torch.arange(4.0)},
        "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.5)}},
        "checkpoint_callback": ModelCheckpoint(),
        "pytorch-lightning_version": "1.4.2",
    }
    p = _save(obj, tmp_path / "m.ckpt")
    monkeypatch.delitem(sys.modules, mod_name)
    with open_torch_checkpoint(p) as ckpt:
        assert ckpt.keys() == ["w"]
        assert ckpt.extras == {
            "callbacks": "<dict: 1 keys>",
            "checkpoint_callback": "<ModelCheckpoint>",
            "pytorch-lightning_version": "1.4.2",
        }
        assert torch.equal(ckpt.read("w"), torch.arange(4.0))


def test_textual_inversion_embedding_flattens_nested_tensors(tmp_path):
    emb = torch.randn(2, 8)
    obj = {"string_to_token": {"*": 265}, "string_to_param": {"*": emb}, "name": "cat", "step": 500}
    with open_torch_checkpoint(_save(obj, tmp_path / "cat.pt")) as ckpt:
        assert ckpt.keys() == ["string_to_param.*"]
        assert ckpt.extras == {"string_to_token": "<dict: 1 keys>", "name": "cat", "step": 500}
        assert torch.equal(ckpt.read("string_to_param.*"), emb)


# ------------------------------------------------------------------------------------------ views


@pytest.mark.parametrize("legacy", LEGACY, ids=IDS)
def test_views_slices_transposes_and_tied_weights_read_exactly(tmp_path, legacy):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    obj = {
        "base": base,
        "tied": base,  # the same tensor under two keys
        "transposed": base.t(),
        "cols": base[:, 2:5],  # non-contiguous, offset 2
        "row": base[2],  # contiguous, offset 12
        "strided": base[::2, ::3],
        "expanded": torch.arange(3.0).expand(4, 3),  # stride 0
        "param": torch.nn.Parameter(torch.randn(3, 2)),
    }
    with open_torch_checkpoint(_save(obj, tmp_path / "v.pt", legacy)) as ckpt:
        _assert_same(ckpt, {k: v.detach() for k, v in obj.items()})
        assert ckpt.tensors["tied"].offset == ckpt.tensors["base"].offset
        assert ckpt.tensors["transposed"].offset == ckpt.tensors["base"].offset
        assert ckpt.tensors["row"].offset == ckpt.tensors["base"].offset + 12 * 4
        assert ckpt.tensors["cols"].extra.stride == (6, 1) and not ckpt.tensors["cols"].extra.contiguous
        assert ckpt.tensors["row"].extra.contiguous
        view = ckpt.read("transposed", copy=False)
        assert torch.equal(view, base.t())
        chunks = torch.cat(list(ckpt.read_chunks("cols", chunk_bytes=8)))
        assert torch.equal(chunks, base[:, 2:5].reshape(-1))
        del view, chunks


# ------------------------------------------------------------------------------------------ torch-free index


def test_index_is_built_without_importing_torch(tmp_path):
    p = _save(
        {"state_dict": {"w": torch.ones(2, 2), "b": torch.zeros(3).half()}, "epoch": 1}, tmp_path / "m.ckpt"
    )
    legacy = _save({"w": torch.ones(2)}, tmp_path / "legacy.pt", legacy=True)
    code = (
        "import sys\n"
        "from sdlens.io.torch_file import open_torch_checkpoint\n"
        "a = open_torch_checkpoint(sys.argv[1]); b = open_torch_checkpoint(sys.argv[2])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(a.keys(), a.tensors['b'].dtype, a.extras, b.keys())\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(p), str(legacy)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "['w', 'b'] F16 {'epoch': 1} ['w']"


def test_open_checkpoint_dispatches_to_the_torch_reader(tmp_path):
    from sdlens.io.open import open_checkpoint

    with open_checkpoint(_save({"w": torch.ones(2)}, tmp_path / "m.bin", legacy=True)) as ckpt:
        assert isinstance(ckpt, TorchCheckpoint) and ckpt.format == "torch-legacy"


# ------------------------------------------------------------------------------------------ malicious pickles


class _RunsCommand:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _touch(marker: Path) -> str:
    return f"touch {marker}"


@pytest.mark.parametrize("legacy", LEGACY, ids=IDS)
def test_torch_save_with_os_system_reduce_is_refused(tmp_path, legacy):
    marker = tmp_path / "MARKER"
    p = _save(
        {"w": torch.ones(2), "x": _RunsCommand(os.system, _touch(marker))}, tmp_path / "evil.pt", legacy
    )
    with pytest.raises(UnsafePickleError) as e:
        open_torch_checkpoint(p)
    assert e.value.globals_found == [f"{os.system.__module__}.system"]
    assert "nothing from the file was executed" in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_malicious_data_pkl_inside_a_torch_zip_is_refused(tmp_path, protocol):
    marker = tmp_path / "MARKER"
    entries = _zip_entries(_save({"w": torch.ones(2)}, tmp_path / "ok.pt"))
    payload = [
        _RunsCommand(os.system, _touch(marker)),
        _RunsCommand(subprocess.Popen, ["touch", str(marker)]),
        _RunsCommand(eval, f"open({str(marker)!r}, 'w')"),
        _RunsCommand(exec, f"open({str(marker)!r}, 'w')"),
    ]
    entries[_pkl_name(entries)] = pickle.dumps(payload, protocol=protocol)
    p = _write_zip(tmp_path / "evil.pt", entries)
    with pytest.raises(UnsafePickleError) as e:
        open_torch_checkpoint(p)
    assert e.value.globals_found == sorted(
        [f"{os.system.__module__}.system", "subprocess.Popen", "builtins.eval", "builtins.exec"]
    )
    assert not marker.exists()


def test_plain_malicious_pickle_file_is_refused(tmp_path):
    marker = tmp_path / "MARKER"
    p = tmp_path / "evil.ckpt"
    p.write_bytes(pickle.dumps({"a": _RunsCommand(os.system, _touch(marker))}, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"posix\.system|nt\.system"):
        open_torch_checkpoint(p)
    assert not marker.exists()


def _short_unicode(s: str) -> bytes:
    return b"\x8c" + bytes([len(s)]) + s.encode()


def test_stack_global_through_memo_is_resolved(tmp_path):
    marker = tmp_path / "MARKER"
    data = (
        b"\x80\x04"
        + _short_unicode("builtins") + b"\x94"  # MEMOIZE -> memo 0
        + _short_unicode("eval") + b"\x94"  # memo 1
        + b"00"  # POP POP
        + b"h\x00h\x01"  # BINGET 0, BINGET 1
        + b"\x93"  # STACK_GLOBAL -> builtins.eval
        + _short_unicode(f"open({str(marker)!r}, 'w')")
        + b"\x85R."
    )  # fmt: skip
    assert scan_pickle_globals(data) == ["builtins.eval"]
    entries = _zip_entries(_save({"w": torch.ones(2)}, tmp_path / "ok.pt"))
    entries[_pkl_name(entries)] = data
    with pytest.raises(UnsafePickleError) as e:
        open_torch_checkpoint(_write_zip(tmp_path / "evil.pt", entries))
    assert e.value.globals_found == ["builtins.eval"]
    assert not marker.exists()


def test_stack_global_decoy_strings_do_not_hide_the_real_global():
    data = (
        b"\x80\x04"
        + _short_unicode("runpy") + _short_unicode("_run_code")
        + _short_unicode("collections") + _short_unicode("OrderedDict")
        + b"00"  # POP POP: the decoys are gone
        + b"\x93"  # STACK_GLOBAL -> runpy._run_code
        + b")R."
    )  # fmt: skip
    assert scan_pickle_globals(data) == ["runpy._run_code"]


def test_unresolvable_stack_global_and_inst_and_ext_are_reported():
    computed = b"\x80\x04" + _short_unicode("os") + b"N\x93)R."  # the name is None: not a string
    assert scan_pickle_globals(computed) == ["<unresolved STACK_GLOBAL>"]
    inst = b"(S'xdg-open http://x'\niwebbrowser\nopen\n."
    assert scan_pickle_globals(inst) == ["webbrowser.open"]
    ext = b"\x80\x02\x82\x01)R."
    assert scan_pickle_globals(ext) == ["<extension registry code 1>"]
    assert scan_pickle_globals(b"c__builtin__\neval\n.") == ["builtins.eval"]


def test_all_offending_globals_are_named(tmp_path):
    p = tmp_path / "evil.pt"
    payload = {
        "w": torch.ones(1),
        "a": _RunsCommand(os.system, "true"),
        "b": _RunsCommand(exec, "pass"),
        "c": _RunsCommand(__import__, "os"),
    }
    _save(payload, p)
    with pytest.raises(UnsafePickleError) as e:
        open_torch_checkpoint(p)
    assert e.value.globals_found == sorted(
        ["builtins.exec", "builtins.__import__", f"{os.system.__module__}.system"]
    )


def test_find_class_refuses_even_without_the_scan():
    data = pickle.dumps(_RunsCommand(os.system, "true"), protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="system"):
        _RestrictedUnpickler(data, {}).load()


def test_truncated_malicious_pickle_is_still_reported_as_unsafe(tmp_path):
    data = pickle.dumps([_RunsCommand(os.system, "true"), "x" * 100], protocol=2)
    p = tmp_path / "evil.pt"
    p.write_bytes(data[:-20])
    with pytest.raises(UnsafePickleError):
        open_torch_checkpoint(p)


# ------------------------------------------------------------------------------------------ malformed files


def _err(path: Path) -> str:
    with pytest.raises(CheckpointError) as e:
        open_torch_checkpoint(path)
    assert not isinstance(e.value, UnsafePickleError)
    assert "\n" not in str(e.value)
    return e.value.problem


def test_missing_empty_and_directory(tmp_path):
    assert _err(tmp_path / "nope.pt") == "no such file"
    (tmp_path / "empty.pt").write_bytes(b"")
    assert _err(tmp_path / "empty.pt") == "empty file (0 bytes)"
    assert "directory" in _err(tmp_path)


def test_not_a_torch_file(tmp_path):
    (tmp_path / "text.pt").write_bytes(b"hello, this is not a checkpoint")
    assert _err(tmp_path / "text.pt").startswith("not a torch checkpoint")
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    assert _err(tmp_path / "plain.pkl") == "not a torch checkpoint (a pickle without torch's magic number)"


def test_truncated_zip(tmp_path):
    p = _save({"w": torch.randn(1000)}, tmp_path / "m.pt")
    raw = p.read_bytes()
    for cut in (len(raw) - 30, len(raw) // 2, 100):
        (tmp_path / "cut.pt").write_bytes(raw[:cut])
        assert _err(tmp_path / "cut.pt").startswith("truncated or corrupt zip archive")


def test_corrupt_central_directory(tmp_path):
    raw = bytearray(_save({"w": torch.randn(10)}, tmp_path / "m.pt").read_bytes())
    i = raw.find(b"PK\x01\x02")
    raw[i : i + 4] = b"XXXX"
    (tmp_path / "bad.pt").write_bytes(bytes(raw))
    assert _err(tmp_path / "bad.pt").startswith("truncated or corrupt zip archive")


def test_zip_without_data_pkl(tmp_path):
    p = _write_zip(tmp_path / "m.pt", {"archive/version": b"3\n", "archive/data/0": b"\x00" * 8})
    assert _err(p) == "zip archive has no data.pkl (not a torch.save checkpoint)"


def test_truncated_data_pkl(tmp_path):
    entries = _zip_entries(_save({"w": torch.ones(2)}, tmp_path / "ok.pt"))
    name = _pkl_name(entries)
    entries[name] = entries[name][:-10]
    problem = _err(_write_zip(tmp_path / "m.pt", entries))
    assert problem.startswith(f"{name} is truncated (the pickle ends before its STOP opcode")


def test_storage_missing_from_zip(tmp_path):
    entries = _zip_entries(_save({"w": torch.ones(2)}, tmp_path / "ok.pt"))
    prefix = _pkl_name(entries)[: -len("data.pkl")]
    del entries[f"{prefix}data/0"]
    problem = _err(_write_zip(tmp_path / "m.pt", entries))
    assert problem == f"storage '0' is missing from the archive (no entry {prefix}data/0)"


def test_compressed_storage_is_refused(tmp_path):
    entries = _zip_entries(_save({"w": torch.ones(64)}, tmp_path / "ok.pt"))
    prefix = _pkl_name(entries)[: -len("data.pkl")]
    p = _write_zip(tmp_path / "m.pt", entries, deflate=(f"{prefix}data/0",))
    assert "compressed" in _err(p)


def test_storage_shorter_than_the_pickle_says(tmp_path):
    entries = _zip_entries(_save({"w": torch.ones(64)}, tmp_path / "ok.pt"))
    prefix = _pkl_name(entries)[: -len("data.pkl")]
    entries[f"{prefix}data/0"] = entries[f"{prefix}data/0"][:100]
    assert (
        _err(_write_zip(tmp_path / "m.pt", entries)) == "storage '0' holds 100 bytes but the pickle says 256"
    )


def test_big_endian_zip_is_refused(tmp_path):
    entries = _zip_entries(_save({"w": torch.ones(2)}, tmp_path / "ok.pt"))
    prefix = _pkl_name(entries)[: -len("data.pkl")]
    entries[f"{prefix}byteorder"] = b"big"
    assert "only little-endian" in _err(_write_zip(tmp_path / "m.pt", entries))


def test_truncated_legacy_file(tmp_path):
    raw = _save({"a": torch.randn(100), "b": torch.randn(100)}, tmp_path / "m.pt", legacy=True).read_bytes()
    (tmp_path / "data_cut.pt").write_bytes(raw[:-10])  # inside the last storage's bytes
    assert "(truncated?)" in _err(tmp_path / "data_cut.pt")
    (tmp_path / "header_cut.pt").write_bytes(raw[: -(800 + 4)])  # inside the first storage's count
    assert "(truncated?)" in _err(tmp_path / "header_cut.pt")
    (tmp_path / "pickle_cut.pt").write_bytes(raw[:200])  # inside the main pickle
    assert _err(tmp_path / "pickle_cut.pt").startswith("the main pickle is truncated")


def test_read_of_a_file_truncated_after_indexing_is_a_clear_error(tmp_path):
    p = _save({"w": torch.randn(256)}, tmp_path / "m.pt", legacy=True)
    ckpt = open_torch_checkpoint(p)
    raw = p.read_bytes()
    p.write_bytes(raw[:-100])
    with pytest.raises(CheckpointError, match=r"truncated\?"):
        ckpt.read("w")
    ckpt.close()


def test_torchscript_archive_is_named(tmp_path):
    p = tmp_path / "jit.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(p))
    assert _err(p) == "TorchScript archive (torch.jit.save) is not supported; save a state dict"


def test_self_referencing_wrapper_terminates(tmp_path):
    d: dict = {"w": torch.ones(3)}
    d["model"] = d
    with open_torch_checkpoint(_save(d, tmp_path / "cycle.pt")) as ckpt:
        assert ckpt.keys() == ["w"]
        assert torch.equal(ckpt.read("w"), torch.ones(3))


class _Marker:
    def __init__(self, pid):
        self.pid = pid


class _Rebuild:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def test_hand_written_legacy_file_with_storage_views(tmp_path):
    """Old torch wrote storage views as ('storage', type, root_key, location, root_numel, (view_key, offset, size))."""
    from collections import OrderedDict

    from torch._utils import _rebuild_tensor, _rebuild_tensor_v2

    root = torch.arange(10, dtype=torch.float32)
    view = _Marker(("storage", torch.FloatStorage, "R", "cpu", 10, ("V", 4, 6)))
    whole = _Marker(("storage", torch.FloatStorage, "R", "cpu", 10, None))

    class LegacyPickler(pickle.Pickler):
        def persistent_id(self, obj):
            return obj.pid if isinstance(obj, _Marker) else None

    obj = {
        "view": _Rebuild(_rebuild_tensor_v2, view, 1, (3,), (1,), False, OrderedDict()),
        "view_t": _Rebuild(_rebuild_tensor, view, 0, (2, 2), (1, 2)),
        "whole": _Rebuild(_rebuild_tensor_v2, whole, 0, (10,), (1,), False, OrderedDict()),
    }
    p = tmp_path / "old.pt"
    with open(p, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, f, protocol=2)
        LegacyPickler(f, protocol=2).dump(obj)
        pickle.dump(["R"], f, protocol=2)
        f.write((10).to_bytes(8, "little") + root.numpy().tobytes())
    with open_torch_checkpoint(p) as ckpt:
        assert ckpt.format == "torch-legacy"
        assert torch.equal(ckpt.read("view"), root[5:8])
        assert torch.equal(ckpt.read("view_t"), root[4:8].reshape(2, 2).t())
        assert torch.equal(ckpt.read("whole"), root)
        assert ckpt.tensors["view"].offset == ckpt.tensors["whole"].offset + 5 * 4
