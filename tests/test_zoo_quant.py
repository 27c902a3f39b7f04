"""The quantisation zoo, judged by the packages: ``gguf.GGUFReader`` / ``gguf.quants.dequantize`` read back the
GGUF files (keys, shapes, types, values within one quantisation step of the source), the hand-built K-quant
blocks decode exactly as their reference says, scaled fp8 files give fp8 × scale within fp8 rounding, and
the broken GGUF files are broken in the way they claim."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from safetensors import safe_open

gguf = pytest.importorskip("gguf")

from sdlens.arch.identify import identify  # noqa: E402
from sdlens.io.base import TensorInfo  # noqa: E402
from sdlens.testing import bad_gguf, kquant, zoo_fp8, zoo_gguf  # noqa: E402

GT = gguf.GGMLQuantizationType


def _field(reader, name):
    f = reader.get_field(name)
    return None if f is None else f.contents()


def _orig_shape(reader, t) -> tuple[int, ...]:
    shape = _field(reader, f"comfy.gguf.orig_shape.{t.name}")
    return tuple(int(d) for d in shape) if shape else tuple(int(d) for d in reversed(t.shape))


# ----------------------------------------------------------------------------------------------- GGUF zoo
def test_gguf_zoo_judged_by_the_package(tmp_path):
    """One test for the whole zoo (built once: pytest-xdist would build a shared fixture per worker)."""
    from safetensors.torch import load_file

    zoo = zoo_gguf.build_gguf_zoo(tmp_path)
    readers = {e.name: gguf.GGUFReader(e.path) for e in zoo}
    sources = {e.source: {k: v.float().numpy() for k, v in load_file(e.source).items()} for e in zoo}
    _check_plan(zoo)
    _check_sources(zoo)
    _check_reads_back(zoo, readers)
    _check_values(zoo, readers, sources)


def _check_plan(gguf_zoo):
    assert {(e.family, e.qtype) for e in gguf_zoo} >= {
        ("flux_dev", "Q8_0"),
        ("flux_dev", "Q4_K"),
        ("sd3", "Q6_K"),
    }
    written = {t for e in gguf_zoo for t in e.types.values()}
    assert written == set(zoo_gguf.QTYPES)  # every type, K-quants included, holds real tensors somewhere
    flux_q4k = next(e for e in gguf_zoo if e.family == "flux_dev" and e.qtype == "Q4_K")
    assert flux_q4k.count() == {"Q4_K": 38, "F16": 266, "BF16": 10, "F32": 466}


def _check_sources(gguf_zoo):
    from safetensors import safe_open as so

    for src in {e.source: e.family for e in gguf_zoo}.items():
        with so(str(src[0]), "pt") as f:
            names = list(f.keys())  # safe_open is not iterable
            infos = {k: TensorInfo(k, tuple(f.get_slice(k).get_shape()), "F32", "", 0) for k in names}
        assert identify(infos).family == src[1]


def _check_reads_back(gguf_zoo, readers):
    for e in gguf_zoo:
        r = readers[e.name]
        assert _field(r, "general.architecture") == e.arch
        assert _field(r, "general.quantization_version") == 2
        assert _field(r, "general.file_type") == zoo_gguf.FILE_TYPE[e.qtype]
        assert [t.name for t in r.tensors] == list(e.types), e.name  # original keys, no prefix, in order
        for t in r.tensors:
            assert not t.name.startswith("model.diffusion_model.")
            assert t.tensor_type.name == e.types[t.name], (e.name, t.name)
            ne = tuple(int(d) for d in t.shape)
            stored = e.reshaped and e.reshaped.get(t.name) and (t.n_elements // 256, 256)
            assert tuple(reversed(ne)) == (stored or e.shapes[t.name]), (e.name, t.name)
            assert _orig_shape(r, t) == e.shapes[t.name]
        if e.reshaped:  # sd1: every reshaped key carries an INT32 orig_shape array (what loader.py demands)
            f = r.get_field(f"comfy.gguf.orig_shape.{next(iter(e.reshaped))}")
            assert [x.name for x in f.types] == ["ARRAY", "INT32"]


def _legacy_step(raw: np.ndarray, qtype: str) -> np.ndarray:
    """|d| of each block (the first f16 of Q8_0 / Q5_x / Q4_x blocks), repeated over its 32 values."""
    size = gguf.GGML_QUANT_SIZES[GT[qtype]][1]
    d = np.ascontiguousarray(raw.reshape(-1, size)[:, :2]).view(np.float16).astype(np.float32)
    return np.repeat(np.abs(d[:, 0]), 32)


def _check_values(gguf_zoo, readers, sources):
    """Every quantised tensor (and the first float ones of each file) against its source."""
    worst: dict[str, float] = {}
    for e in gguf_zoo:
        src = sources[e.source]
        r = readers[e.name]
        floats = 0
        for t in r.tensors:
            qt = t.tensor_type.name
            if qt in zoo_gguf.FLOAT_TYPES:
                floats += 1
                if floats > 12:
                    continue
            x = src[t.name]
            deq = gguf.quants.dequantize(t.data, t.tensor_type).reshape(_orig_shape(r, t))
            if qt == "F32":
                np.testing.assert_array_equal(deq, x)
            elif qt == "F16":
                np.testing.assert_array_equal(deq, x.astype(np.float16).astype(np.float32))
            elif qt == "BF16":
                np.testing.assert_array_equal(deq, torch.from_numpy(x).bfloat16().float().numpy())
            elif qt in kquant.K_TYPES:  # the file holds exactly the reference blocks; they decode as claimed
                ref = kquant.quantize_k(x.reshape(-1, 256), qt)
                np.testing.assert_array_equal(np.asarray(t.data).reshape(ref.raw.shape), ref.raw)
                np.testing.assert_array_equal(deq.reshape(-1, 256), ref.reconstruction)
                ratio = np.abs(deq.reshape(-1, 256) - x.reshape(-1, 256)) / np.maximum(ref.step, 1e-30)
                worst[qt] = max(worst.get(qt, 0.0), float(ratio.max()))
            else:  # legacy blocks: within one step |d| (a little over where f16 rounding of d shrank it)
                step = _legacy_step(np.asarray(t.data), qt)
                ratio = np.abs(deq - x).reshape(-1) / np.maximum(step, 1e-30)
                worst[qt] = max(worst.get(qt, 0.0), float(ratio.max()))
    assert set(worst) == {"Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q3_K", "Q2_K"}
    # K-quants: half a step (the codes keep each sub-block's range whole); legacy: one step
    assert all(worst[k] <= 0.5 * (1 + 1e-3) for k in kquant.K_TYPES), worst
    assert all(v <= 1.02 for v in worst.values()), worst


def test_policy_facts():
    q = zoo_gguf.comfy_qtype
    assert q("flux", "double_blocks.0.img_mlp.2.weight", (64, 256), "Q4_K") == "Q4_K"
    assert q("flux", "double_blocks.0.img_mlp.0.weight", (256, 64), "Q4_K") == "F16"  # row 64: F16 fallback
    assert q("flux", "double_blocks.0.img_mlp.0.weight", (256, 64), "Q8_0") == "Q8_0"
    assert q("flux", "img_in.weight", (3072, 64), "Q8_0", source="BF16") == "BF16"  # keep list, stage-1 type
    assert q("flux", "double_blocks.0.img_attn.norm.key_norm.scale", (128,), "Q8_0", source="BF16") == "F32"
    # an f16 source's 1-D tensors stay F16 (convert.py's F32 rules are for F32 / BF16 sources)
    assert q("sd3", "joint_blocks.0.x_block.attn.qkv.bias", (64,), "Q8_0", source="F16") == "F16"
    assert q("sd3", "pos_embed", (1, 36864, 1536), "Q8_0", source="F16") == "F16"
    assert q("sd3", "joint_blocks.0.x_block.attn.qkv.weight", (32, 32), "F16") == "F32"  # 1024 values: F32
    assert q("sd1", "input_blocks.1.0.in_layers.2.weight", (320, 320, 3, 3), "Q4_K") == "Q4_K"  # reshaped
    assert zoo_gguf.stored_shape("sd1", (320, 320, 3, 3)) == (3600, 256)
    assert zoo_gguf.stored_shape("flux", (320, 320, 3, 3)) == (320, 320, 3, 3)
    assert q("wan", "blocks.0.modulation", (1, 6, 1536), "Q8_0", source="BF16") == "F32"  # keys_hiprec


def _q4_k_scalar(block: bytes) -> np.ndarray:
    """ggml's dequantize_row_q4_K for one block, written as its scalar loop (a third opinion)."""
    d, dmin = np.frombuffer(block[:4], dtype=np.float16).astype(np.float32)
    sc, qs = block[4:16], block[16:]

    def scale_min(j):
        if j < 4:
            return sc[j] & 63, sc[j + 4] & 63
        return (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4), (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4)

    out = []
    for j in range(4):
        (s1, m1), (s2, m2) = scale_min(2 * j), scale_min(2 * j + 1)
        q = qs[32 * j : 32 * j + 32]
        out += [d * np.float32(s1) * np.float32(b & 0xF) - dmin * np.float32(m1) for b in q]
        out += [d * np.float32(s2) * np.float32(b >> 4) - dmin * np.float32(m2) for b in q]
    return np.array(out, dtype=np.float32)


def _hard_rows() -> np.ndarray:
    rng = np.random.default_rng(7)
    rows = [
        rng.standard_normal(256) * 0.02,
        np.zeros(256),
        np.full(256, -0.3),
        np.abs(rng.standard_normal(256)) + 5.0,  # all positive, far from 0
        -np.abs(rng.standard_normal(256)) * 1e-4,  # all negative, tiny
        np.concatenate([np.zeros(128), rng.standard_normal(128) * 40]),  # mixed ranges
        np.linspace(-1, 1, 256),
    ]
    return np.stack(rows).astype(np.float32)


@pytest.mark.parametrize("qtype", kquant.K_TYPES)
def test_kquant_blocks_decode_as_their_reference(qtype):
    x = _hard_rows()
    k = kquant.quantize_k(x, qtype)
    assert k.raw.shape == (len(x), kquant.BLOCK_BYTES[qtype]) == (len(x), gguf.GGML_QUANT_SIZES[GT[qtype]][1])
    deq = gguf.quants.dequantize(k.raw, GT[qtype])
    np.testing.assert_array_equal(deq, k.reconstruction)
    assert (np.abs(deq - x) <= 0.5 * k.step * (1 + 1e-3) + 1e-30).all()
    np.testing.assert_array_equal(deq[1], 0)  # a zero block stays zero
    if qtype == "Q4_K":
        for row in range(len(x)):
            np.testing.assert_array_equal(_q4_k_scalar(k.raw[row].tobytes()), deq[row])


def test_kquant_rejects_short_rows():
    with pytest.raises(ValueError, match="multiple of 256"):
        kquant.quantize_k(np.zeros((4, 64), np.float32), "Q4_K")


def test_write_gguf_callable_and_5d(tmp_path):
    t = {
        "a.weight": np.ones((4, 256), np.float32),
        "b.weight": np.ones((4, 64), np.float32),
        "c.weight": np.arange(2 * 3 * 4 * 5 * 6, dtype=np.float32).reshape(2, 3, 4, 5, 6),
    }
    types = zoo_gguf.write_gguf(tmp_path / "m.gguf", t, arch="wan", qtype=lambda k, s: "Q6_K")
    assert types == {"a.weight": "Q6_K", "b.weight": "F16", "c.weight": "F32"}  # F16 fallback; 5-D kept F32
    r = gguf.GGUFReader(tmp_path / "m.gguf")
    shapes = {x.name: tuple(int(d) for d in reversed(x.shape)) for x in r.tensors}
    assert shapes == {"a.weight": (4, 256), "b.weight": (4, 64), "c.weight": (2, 3, 4, 5, 6)}
    c = next(x for x in r.tensors if x.name == "c.weight")
    np.testing.assert_array_equal(np.asarray(c.data).reshape(2, 3, 4, 5, 6), t["c.weight"])


# ----------------------------------------------------------------------------------------------- fp8
def _fp8_bound(x: torch.Tensor, scale: float, st: str) -> torch.Tensor:
    """Half an fp8 ulp at x (relative 2^-4 for E4M3, 2^-3 for E5M2), floored at half the smallest subnormal."""
    rel, sub = (2.0**-4, 2.0**-10) if st == "F8_E4M3" else (2.0**-3, 2.0**-17)
    return torch.maximum(x.abs() * rel, torch.tensor(sub * scale)) * (1 + 1e-6)


def test_fp8_files_hold_what_they_claim(tmp_path):
    from safetensors.torch import load_file

    fp8_zoo = zoo_fp8.build_fp8_zoo(tmp_path)
    dtypes = {"F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
    names = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
    assert {e.truth.scheme for e in fp8_zoo} == {"scaled_fp8", "comfy_quant", "fp8"}
    for e in fp8_zoo:
        src, sd, tr = load_file(e.source), load_file(e.path), e.truth
        with safe_open(str(e.path), "pt") as f:
            meta = f.metadata() or {}
        assert set(sd) == set(src) | set(tr.companions), e.name
        if tr.scheme == "scaled_fp8":
            assert sd["scaled_fp8"].dtype == dtypes[tr.fp8] and sd["scaled_fp8"].numel() == 0
        s_name = {"scaled_fp8": "scale_weight", "comfy_quant": "weight_scale"}.get(tr.scheme)
        deq, xs, bound = [], [], []
        for i, (key, scale) in enumerate(tr.scales.items()):
            layer, w = key[: -len(".weight")], sd[key]
            assert w.dtype == dtypes[tr.fp8], (e.name, key)
            if s_name:
                s = sd[f"{layer}.{s_name}"]
                assert s.dtype == torch.float32 and s.shape == () and float(s) == scale
            if i % 4:  # the values of every 4th weight (all of them cost seconds)
                continue
            x = src[key].float().flatten()
            deq.append(w.float().flatten() * scale)
            xs.append(x)
            bound.append(_fp8_bound(x, scale, tr.fp8))
        assert (torch.cat(deq) - torch.cat(xs)).abs().le(torch.cat(bound)).all(), e.name  # fp8 rounding
        if tr.scheme == "comfy_quant" and not tr.metadata:
            layer = next(iter(tr.scales))[: -len(".weight")]
            assert json.loads(bytes(sd[f"{layer}.comfy_quant"].tolist())) == {"format": "float8_e4m3fn"}
        assert all(float(sd[f"{k[: -len('.weight')]}.scale_input"]) == 1.0 for k in tr.input_scales)
        if tr.metadata:
            layers = json.loads(meta["_quantization_metadata"])["layers"]
            assert set(layers) == {k[: -len(".weight")] for k in tr.scales}
        assert all(sd[key].dtype == names[st] for key, st in tr.kept.items())
        kept = torch.cat([sd[k].float().flatten() for k in tr.kept])
        was = torch.cat([src[k].float().flatten() for k in tr.kept])
        assert (kept - was).abs().le(was.abs() * 2**-8).all(), e.name  # a 16-bit copy of the source


# ----------------------------------------------------------------------------------------------- bad GGUF
def test_bad_gguf_files_are_broken_as_claimed(tmp_path):
    (tmp_path / "ok.gguf").write_bytes(bad_gguf.valid_gguf())
    ok = gguf.GGUFReader(tmp_path / "ok.gguf")
    assert [(t.name, tuple(int(d) for d in t.shape), t.tensor_type.name) for t in ok.tensors] == [
        ("a.weight", (8, 4), "F32"),
        ("b.bias", (16,), "F16"),
    ]
    cases = {c.name: c for c in bad_gguf.build_bad_gguf(tmp_path / "bad")}
    assert len(cases) >= 30 and all(c.mention and c.path.exists() for c in cases.values())
    valid = bad_gguf.valid_gguf()
    head = {
        n: struct.unpack("<4sIQQ", cases[n].path.read_bytes()[:24])
        for n in cases
        if n != "empty" and cases[n].path.stat().st_size >= 24
    }
    assert head["wrong_magic"][0] == b"GGUX"
    assert {n: head[n][1] for n in ("version_0", "version_1", "version_4", "version_2_31")} == {
        "version_0": 0,
        "version_1": 1,
        "version_4": 4,
        "version_2_31": 2**31,
    }
    assert head["tensor_count_huge"][2] == 2**60 and head["kv_count_huge"][3] == 2**60
    assert cases["truncated_data"].path.stat().st_size < len(valid)
    assert cases["truncated_header"].path.stat().st_size == 12
    assert b"\x1b[31m" in cases["escape_key"].path.read_bytes()
    # the package's reader refuses these too (the cheap ones: array_huge makes it loop, so it is not asked)
    for name in (
        "wrong_magic",
        "version_0",
        "version_4",
        "unknown_qtype",
        "duplicate_tensor",
        "duplicate_key",
        "alignment_0",
        "alignment_3",
        "bad_value_type",
        "invalid_utf8_key",
        "truncated_data",
    ):
        with pytest.raises((ValueError, KeyError, IndexError)):
            gguf.GGUFReader(cases[name].path)


def test_sparse_full_size_flux_q8_0(tmp_path):
    """A full-size FLUX-dev Q8_0 GGUF from shapes alone: 12.7 GB (flux1-dev-Q8_0.gguf's size) of which only
    the header is on disk; the package reads its 780 tensor infos."""
    from sdlens.testing import zoo_dit

    sd = zoo_dit.build_denoiser("flux_dev", size="full", dtype=torch.bfloat16)
    types = zoo_gguf.write_sparse_gguf(tmp_path / "flux1-dev-Q8_0.gguf", sd, arch="flux", qtype="Q8_0")
    r = gguf.GGUFReader(tmp_path / "flux1-dev-Q8_0.gguf")
    assert {t.name: t.tensor_type.name for t in r.tensors} == types
    assert sorted(set(types.values())) == ["BF16", "F32", "Q8_0"]
    last = r.tensors[-1]
    size = (tmp_path / "flux1-dev-Q8_0.gguf").stat().st_size
    assert last.data_offset + last.n_bytes == size and 12.6e9 < size < 12.8e9
    big = next(t for t in r.tensors if t.name == "double_blocks.0.img_mlp.0.weight")
    assert (
        tuple(int(d) for d in reversed(big.shape)) == (12288, 3072) and big.n_bytes == 12288 * 3072 // 32 * 34
    )
