"""Property-based fuzzing of every reader's edge: safetensors headers (typed and raw bytes), torch zips and
legacy pickles of protocols 2–5 (container bytes and pickle bytes), the pickle scanner, shard indexes and
diffusers folders (mutated JSON). The property is always the same: the reader returns an index that holds
(every tensor inside the file, no overlaps, readable), or raises sdlens's own one-line error — never another
exception, never a hang.

By default each test is seeded (``derandomize``) with a bounded number of examples (the whole module takes
well under a minute); ``pytest --fuzz tests/test_fuzz.py`` runs 50 times as many, from fresh random seeds,
and saves any input that breaks the property into ``tests/fuzz_regressions/`` (kept there, it is replayed by
``test_regressions`` from then on).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import os
import zipfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sdlens.errors import SdlensError  # noqa: E402
from sdlens.io.dtypes import DTYPES  # noqa: E402
from sdlens.io.open import open_checkpoint  # noqa: E402
from sdlens.testing.badfiles import good_tensors, safetensors_bytes, write_safetensors  # noqa: E402
from tests.helpers import within  # noqa: E402

pytestmark = pytest.mark.fuzz

LONG = os.environ.get("SDLENS_FUZZ") == "1"  # set by ``pytest --fuzz`` (tests/conftest.py)
REGRESSIONS = Path(__file__).parent / "fuzz_regressions"
HANG_S = 10


def budget(n: int):
    """``n`` seeded examples, or 50 × n random ones with ``--fuzz``."""
    return settings(
        max_examples=n * 50 if LONG else n,
        derandomize=not LONG,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=LONG,
    )


_counter = itertools.count()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _within(fn, *args):
    return within(HANG_S, fn, *args)


_found: dict[str, bytes] = {}


def _keep(target: str, data: bytes) -> None:
    """With ``--fuzz``, the input that broke a target is kept (folders are not one file: not kept). Hypothesis
    replays the smallest failing example last, so the one saved at the end of the module is the shrunk one."""
    if LONG and target != "folder":
        _found[target] = data


@pytest.fixture(scope="module", autouse=True)
def _save_found():
    yield
    for target, data in _found.items():
        REGRESSIONS.mkdir(exist_ok=True)
        (REGRESSIONS / f"{target}-{hashlib.sha256(data).hexdigest()[:12]}.bin").write_bytes(data)


def check_file(path: Path, target: str, data: bytes, *, precise: bool = False) -> object:
    """Open ``path`` and read everything in it; only sdlens's own errors may come out. ``precise``: the
    error must also come from the reader's checks, not from the safety net catching something unforeseen."""
    try:
        return _within(_open_and_read, path)
    except SdlensError as e:
        text = str(e)
        problem = (
            "the safety net caught " + e.unexpected
            if precise and hasattr(e, "unexpected")
            else "not one line"
            if "\n" in text
            else "over 1000 characters"
            if len(text) > 1000
            else None
        )
        if problem:
            _keep(target, data)
            raise AssertionError(f"{problem}: {text[:2000]}") from None
        return e
    except BaseException:
        _keep(target, data)
        raise


def _open_and_read(path: Path) -> object:
    from sdlens.io.stream import stream

    with open_checkpoint(path) as ck:
        spans = sorted(
            (i.source, i.offset, i.offset + i.nbytes) for k, i in ck.tensors.items() if ck.is_plain(k)
        )
        for (s0, _b0, e0), (s1, b1, _e1) in itertools.pairwise(spans):
            assert s0 != s1 or b1 >= e0, "overlapping tensors accepted"
        assert all(e <= os.path.getsize(s) for s, _b, e in spans), (
            "a tensor past the end of its file accepted"
        )
        for key in ck.tensors:
            ck.read(key)
        for _piece in stream(ck, threaded=False):
            pass
        return {k: (i.shape, i.dtype) for k, i in ck.tensors.items()}


# ---------------------------------------------------------------------------------------------- strategies

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=6)
)
json_value = st.recursive(
    json_leaf,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
    max_leaves=8,
)
dtype_value = st.sampled_from(sorted(DTYPES)) | st.sampled_from(["U16", "F4", "f16", ""]) | json_value
shape_value = (
    st.lists(st.integers(0, 6), max_size=4) | st.lists(st.integers(-3, 2**64), max_size=3) | json_value
)
offsets_value = (
    st.lists(st.integers(0, 160), min_size=2, max_size=2).map(sorted)
    | st.lists(st.integers(-(2**65), 2**65), max_size=3)
    | json_value
)
entry_value = (
    st.fixed_dictionaries({"dtype": dtype_value, "shape": shape_value, "data_offsets": offsets_value})
    | json_value
)
headers = st.dictionaries(st.text(max_size=6), entry_value, max_size=5).flatmap(
    lambda h: st.one_of(st.just(h), json_value.map(lambda m: {"__metadata__": m, **h}))
)

# byte sequences worth planting in a JSON header or a pickle
INTERESTING = [
    b"[" * 3000,
    b"{" * 3000,
    b"9" * 5000,
    b'"\\ud800"',
    b"-1",
    b"1e400",
    b"true",
    b"null",
    b"[]",
    b"{}",
    b"\x00",
    b"\xff\xff\xff\xff\xff\xff\xff\x7f",
    b"\x8e\xff\xff\xff\xff\xff\xff\xff\x3f",
    b"\x80\x05",
    b"q\x00",
    b"h\x00",
    b"\x94",
    b"PK\x03\x04",
    b"PK\x01\x02",
    b"PK\x05\x06",
]


@st.composite
def mutated(draw, base: bytes, hot: tuple[int, int] | None = None) -> bytes:
    """``base`` with 1–6 edits (flips, overwrites, insertions, deletions, truncation, planted sequences);
    positions mostly inside ``hot`` (a header) when given."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        lo, hi = hot if hot and draw(st.integers(0, 4)) else (0, len(data))
        hi = max(lo + 1, min(hi, len(data)))
        pos = draw(st.integers(lo, hi - 1)) if len(data) else 0
        op = draw(st.sampled_from(["flip", "byte", "insert", "delete", "truncate", "plant", "digit"]))
        if op == "flip" and pos < len(data):
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[pos:]
        elif op == "plant":
            data[pos:pos] = draw(st.sampled_from(INTERESTING))
        elif op == "digit" and pos < len(data):
            data[pos : pos + 1] = str(draw(st.integers(-(2**64), 2**64))).encode()
    return bytes(data)


def _file(work: Path, data: bytes, suffix: str) -> Path:
    p = work / f"f{next(_counter)}{suffix}"
    p.write_bytes(data)
    return p


# ---------------------------------------------------------------------------------------------- safetensors


def _reference_index(path: Path) -> dict | None:
    """What the official safetensors library makes of the file (None if it refuses it)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "np") as f:
            return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118
    except Exception:
        return None


@budget(300)
@given(header=headers, data_len=st.integers(0, 200))
@example(header={"a": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, data_len=4)
@example(header={"a": {"dtype": "F32", "shape": True, "data_offsets": [False, True]}}, data_len=4)
def test_typed_safetensors_headers(work, header, data_len):
    raw = safetensors_bytes(json.dumps(header).encode(), bytes(range(256))[:data_len])
    path = _file(work, raw, ".safetensors")
    got = check_file(path, "safetensors", raw, precise=True)
    ref = _reference_index(path)
    known = all(
        isinstance(e, dict) and isinstance(e.get("dtype"), str) and e["dtype"] in DTYPES
        for k, e in header.items()
        if k != "__metadata__"
    )
    if ref is not None and known:  # whatever the reference library opens, sdlens opens the same way
        assert isinstance(got, dict), f"safetensors opens it, sdlens says: {got}"
        assert {k: (s, d) for k, (s, d) in got.items()} == ref


@pytest.fixture(scope="module")
def good_safetensors(work) -> bytes:
    return write_safetensors(work / "good.safetensors", good_tensors(), {"title": "fuzz"}).read_bytes()


@budget(300)
@given(data=st.data())
def test_mutated_safetensors_bytes(work, good_safetensors, data):
    n = int.from_bytes(good_safetensors[:8], "little")
    raw = data.draw(mutated(good_safetensors, hot=(0, 8 + n)))
    check_file(_file(work, raw, ".safetensors"), "safetensors", raw, precise=True)


# ---------------------------------------------------------------------------------------------- torch


def _torch_bytes(protocol: int, legacy: bool) -> bytes:
    import torch

    sd = {
        "state_dict": {
            "w": torch.arange(6, dtype=torch.float16).view(2, 3),
            "t": torch.arange(4.0).view(2, 2).t(),
            "b": torch.ones(3, dtype=torch.bfloat16),
        },
        "epoch": 3,
        "name": "fuzz",
    }
    buf = io.BytesIO()
    torch.save(sd, buf, pickle_protocol=protocol, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


@pytest.fixture(scope="module")
def torch_files() -> dict[str, bytes]:
    return {
        f"{'legacy' if legacy else 'zip'}{p}": _torch_bytes(p, legacy)
        for p in (2, 3, 4, 5)
        for legacy in (False, True)
    }


def _zip_members(raw: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        return {n: z.read(n) for n in z.namelist()}


def _zip_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, blob in members.items():
            z.writestr(name, blob)
    return buf.getvalue()


@budget(150)
@given(
    data=st.data(),
    which=st.sampled_from(["zip2", "zip3", "zip4", "zip5", "legacy2", "legacy3", "legacy4", "legacy5"]),
)
def test_mutated_torch_files(work, torch_files, data, which):
    """Raw bytes of zips (the container checks) and of legacy files (pickles and storages)."""
    base = torch_files[which]
    raw = data.draw(mutated(base, hot=(0, 1200) if which.startswith("legacy") else None))
    check_file(_file(work, raw, ".ckpt"), "torch", raw)


@budget(150)
@given(data=st.data(), which=st.sampled_from(["zip2", "zip3", "zip4", "zip5"]))
def test_mutated_pickles_in_a_valid_zip(work, torch_files, data, which):
    """The pickle mutated, the zip around it rewritten valid (right CRCs): the unpickler is what is tested."""
    members = _zip_members(torch_files[which])
    pkl = next(n for n in members if n.endswith("/data.pkl"))
    members[pkl] = data.draw(mutated(members[pkl]))
    raw = _zip_of(members)
    check_file(_file(work, raw, ".ckpt"), "torch", raw)


@budget(200)
@given(data=st.data(), protocol=st.integers(0, 5))
def test_pickle_scanner(torch_files, data, protocol):
    """The scanner never runs anything and fails only with its documented ValueError."""
    import pickle

    from sdlens.io.torch_file import scan_pickle_globals

    base = pickle.dumps({"a": [1, 2.5, "x", b"y", (3, None)], "b": {"c": True}}, protocol=protocol)
    if data.draw(st.booleans()):
        base = next(b for n, b in _zip_members(torch_files["zip2"]).items() if n.endswith("/data.pkl"))
    blob = data.draw(mutated(base))
    try:
        found = _within(scan_pickle_globals, blob)
    except ValueError:
        return
    except BaseException:
        _keep("pickle", blob)
        raise
    assert all(isinstance(g, str) for g in found)


# ---------------------------------------------------------------------------------------------- folders


@pytest.fixture(scope="module")
def shard_dir(work) -> Path:
    d = work / "shards"
    d.mkdir()
    t = good_tensors()
    keys = list(t)
    write_safetensors(d / "a.safetensors", {k: t[k] for k in keys[:2]})
    write_safetensors(d / "b.safetensors", {k: t[k] for k in keys[2:]})
    return d


def _index_value(keys: list[str]):
    files = st.sampled_from(["a.safetensors", "b.safetensors", "c.safetensors", "", ".", "a.safetensors/x"])
    weight_map = st.dictionaries(st.sampled_from(keys) | st.text(max_size=5), files | json_value, max_size=5)
    return (
        st.fixed_dictionaries({"weight_map": weight_map}, optional={"metadata": json_value})
        | st.fixed_dictionaries({"weight_map": json_value})
        | json_value
    )


@budget(150)
@given(data=st.data())
def test_shard_indexes(shard_dir, data):
    keys = list(good_tensors())
    if data.draw(st.booleans()):
        text = json.dumps(data.draw(_index_value(keys))).encode()
    else:
        valid = {
            "metadata": {"total_size": 1},
            "weight_map": {k: "a.safetensors" if i < 2 else "b.safetensors" for i, k in enumerate(keys)},
        }
        text = data.draw(mutated(json.dumps(valid).encode()))
    path = shard_dir / f"m{next(_counter)}.safetensors.index.json"
    path.write_bytes(text)
    check_file(path, "index", text)


@budget(60)
@given(data=st.data())
def test_diffusers_folders(work, data):
    """model_index.json and a component's config.json mutated; opening and inspecting give a report or one
    line."""
    from sdlens.analysis.inspect import inspect

    d = work / f"pipe{next(_counter)}"
    unet = d / "unet"
    unet.mkdir(parents=True)
    write_safetensors(
        unet / "diffusion_pytorch_model.safetensors",
        {"conv_in.weight": good_tensors()["model.diffusion_model.input_blocks.0.0.weight"]},
    )
    config = {
        "_class_name": "UNet2DConditionModel",
        "in_channels": 4,
        "block_out_channels": [8, 16],
        "cross_attention_dim": 32,
        "sample_size": 8,
    }
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}
    for where, base in ((unet / "config.json", config), (d / "model_index.json", index)):
        text = (
            json.dumps(data.draw(json_value)).encode()
            if data.draw(st.booleans())
            else data.draw(mutated(json.dumps(base).encode()))
        )
        where.write_bytes(text)
    try:
        _within(inspect, d)
    except SdlensError as e:
        assert "\n" not in str(e)
    check_file(d, "folder", b"")


# ---------------------------------------------------------------------------------------------- regressions


def _regression_cases() -> list[Path]:
    return sorted(REGRESSIONS.glob("*.bin")) if REGRESSIONS.is_dir() else []


@pytest.mark.parametrize("case", _regression_cases(), ids=lambda p: p.name)
def test_regressions(work, shard_dir, case):
    """Inputs fuzzing once broke, replayed: the target is the file name's prefix."""
    target = case.name.split("-", 1)[0]
    raw = case.read_bytes()
    if target == "pickle":
        from sdlens.io.torch_file import scan_pickle_globals

        with contextlib.suppress(ValueError):
            assert all(isinstance(g, str) for g in _within(scan_pickle_globals, raw))
        return
    suffix = {"safetensors": ".safetensors", "torch": ".ckpt", "index": ".safetensors.index.json"}[target]
    where = shard_dir if target == "index" else work  # an index names the shards beside it
    check_file(_file(where, raw, suffix), target, raw, precise=target == "safetensors")
