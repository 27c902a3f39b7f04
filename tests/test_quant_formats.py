"""Quantised files (issue 18): the GGUF reader against the gguf package, scaled fp8, and what inspect / diff /
matrix / convert make of them. Ground truth: files written here with the gguf package's writer and
quantiser, values checked against its dequantiser."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402

from sdlens.analysis.diff import diff  # noqa: E402
from sdlens.analysis.inspect import inspect  # noqa: E402
from sdlens.errors import CheckpointError  # noqa: E402
from sdlens.io.gguf_file import GGML_TYPES  # noqa: E402
from sdlens.io.open import open_checkpoint  # noqa: E402
from sdlens.io.quant import SCHEMES, bits_per_weight, quant_of, steps  # noqa: E402
from sdlens.io.stream import stream  # noqa: E402


def write_gguf(path: Path, sd: dict[str, torch.Tensor], qtype: T, arch: str = "flux", meta=None) -> Path:
    """ComfyUI-GGUF's way: 2-D weights whose rows are whole blocks quantised, the rest F32 / F16."""
    w = gguf.GGUFWriter(str(path), arch)
    for k, v in (meta or {}).items():
        w.add_key_value(k, v[0], v[1])
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    for k, v in sd.items():
        a = v.float().numpy()
        if a.ndim == 2 and a.shape[-1] % block == 0:
            w.add_tensor(k, quantize(a, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(k, a if a.ndim == 1 else a.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def flux(tmp_path_factory) -> dict[str, Path]:
    from sdlens.testing.zoo_dit import build_denoiser

    d = tmp_path_factory.mktemp("quant")
    out = {}
    for name, seed in (("flux", 0), ("other", 1)):
        sd = {k: v.contiguous() for k, v in build_denoiser("flux_dev", seed=seed).items()}
        save_file(sd, d / f"{name}.safetensors")
        out[name] = d / f"{name}.safetensors"
        out[name + "-sd"] = sd
    out["q8"] = write_gguf(d / "flux-Q8_0.gguf", out["flux-sd"], T.Q8_0)
    out["q4"] = write_gguf(d / "other-Q4_0.gguf", out["other-sd"], T.Q4_0)
    out["q51"] = write_gguf(d / "flux-Q5_1.gguf", out["flux-sd"], T.Q5_1)
    return out


def test_type_table_is_the_gguf_package_s():
    assert {int(t): (t.name, *s) for t, s in gguf.GGML_QUANT_SIZES.items()} == GGML_TYPES
    plain = ("F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64")
    names = {name for name, _block, _size in GGML_TYPES.values()}
    # the gguf package cannot dequantise these three: sdlens refuses them when a file is opened
    assert names - set(SCHEMES) - set(plain) == {"Q8_1", "Q8_K", "Q1_0"}


def test_reader_agrees_with_gguf_reader(tmp_path):
    """Keys, shapes (GGML order reversed), types, offsets and metadata of every value type, as the package's
    own reader sees them; ComfyUI-GGUF's orig_shape restores a reshaped tensor's shape."""
    rng = np.random.default_rng(0)
    conv = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "sd1")
    w.add_uint32("test.u32", 7)
    w.add_int64("test.i64", -5)
    w.add_float32("test.f32", 0.5)
    w.add_bool("test.bool", True)
    w.add_string("test.text", "héllo")
    w.add_array("test.ints", [1, 2, 3])
    w.add_array("test.strings", ["a", "bc"])
    w.add_array("comfy.gguf.orig_shape.conv.weight", [8, 4, 3, 3])
    w.add_tensor("conv.weight", conv.reshape(32, 9).astype(np.float16))
    w.add_tensor(
        "lin.weight", quantize(rng.standard_normal((4, 64)).astype(np.float32), T.Q8_0), raw_dtype=T.Q8_0
    )
    w.add_tensor("lin.bias", rng.standard_normal(4).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    judge = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    with open_checkpoint(tmp_path / "m.gguf") as ck:
        assert ck.format == "gguf"
        assert ck.metadata["test.u32"] == "7" and ck.metadata["test.i64"] == "-5"
        assert ck.metadata["test.f32"] == "0.5" and ck.metadata["test.bool"] == "True"
        assert ck.metadata["test.text"] == "héllo" and ck.metadata["general.architecture"] == "sd1"
        assert ck.metadata["test.ints"] == "[1, 2, 3]" and ck.metadata["test.strings"] == "[a, bc]"
        for t in judge.tensors:
            info = ck.tensors[t.name]
            want = (8, 4, 3, 3) if t.name == "conv.weight" else tuple(reversed(t.shape.tolist()))
            assert info.shape == want
            assert (quant_of(info).scheme if quant_of(info) else info.dtype) == t.tensor_type.name
            assert (quant_of(info).main if quant_of(info) else info).offset == t.data_offset
        assert np.array_equal(ck.read_numpy("conv.weight"), conv.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1])
def test_dequantised_values_are_the_package_s(tmp_path, qtype):
    rng = np.random.default_rng(int(qtype))
    a = (rng.standard_normal((48, 96)) * rng.uniform(0.01, 2, (48, 1))).astype(np.float32)
    q = quantize(a, qtype)
    path = write_gguf(tmp_path / "x.gguf", {"w": torch.from_numpy(a)}, qtype)
    with open_checkpoint(path) as ck:
        info = ck.tensors["w"]
        assert info.shape == (48, 96) and quant_of(info).scheme == qtype.name
        got = ck.read("w").numpy()
        assert np.array_equal(got, dequantize(q, qtype))
        (piece,) = list(stream(ck))  # the streaming engines see the same values
        assert np.array_equal(piece.array.reshape(48, 96), got)
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        assert bits_per_weight(info) == pytest.approx(8 * size / block)
        s = steps(quant_of(info), got.reshape(-1)).reshape(48, 96)
        # within one step (Q4_0 / Q5_0 clamp the far end of a block: up to a whole step there)
        assert np.all(np.abs(got - a) <= s * (1 + 1e-3))
        assert np.abs(got - a).max() > s.max() / 4  # and the steps are not loose


def test_inspect_names_family_scheme_and_memory(flux):
    r = inspect(flux["q8"])
    assert (r.family, r.kind, r.format) == ("flux_dev", "denoiser only", "gguf")
    q = r.quantisation
    (use,) = q.schemes
    n2d = sum(1 for v in flux["flux-sd"].values() if v.ndim == 2 and v.shape[1] % 32 == 0)
    assert (use.scheme, use.tensors) == ("Q8_0", n2d)
    assert use.bits_per_weight == pytest.approx(8.5)
    assert q.bytes_bf16 == 2 * sum(v.numel() for v in flux["flux-sd"].values())
    assert r.dtypes["Q8_0"]["tensors"] == n2d and not r.unknown_keys
    assert r.precision.startswith("mixed: Q8_0")
    assert r.to_dict()["quantisation"]["schemes"][0]["bits_per_weight"] == 8.5


def _rel_error(sd: dict[str, torch.Tensor], path: Path) -> float:
    num = den = 0.0
    with open_checkpoint(path) as ck:
        for k, v in sd.items():
            if quant_of(ck.tensors[k]) is not None:
                a = v.double()
                num += float(((a - ck.read(k).double()) ** 2).sum())
                den += float((a**2).sum())
    return math.sqrt(num / den)


@pytest.mark.parametrize("which", ["q8", "q51"])
def test_diff_says_same_model_quantised_with_the_right_error(flux, which):
    r = diff(flux["flux"], flux[which])
    scheme = {"q8": "Q8_0", "q51": "Q5_1"}[which]
    qs = [t for t in r.tensors if t.quantised]
    assert qs and all(t.within_quantisation and t.quantised == scheme and t.quant_side == "B" for t in qs)
    assert not [t for t in r.tensors if t.changed]
    assert r.verdict[0].startswith(f"same model, quantised: B is A quantised to {scheme}")
    err = _rel_error(flux["flux-sd"], flux[which])
    assert f"relative error {100 * err:.2g}%" in r.verdict[0]
    assert r.verdict[1].startswith("relative error per block: IN ")


def test_diff_of_another_model_s_quantised_copy_is_a_change(flux):
    r = diff(flux["flux"], flux["q4"])
    assert any(t.changed and t.quantised == "Q4_0" for t in r.tensors)
    assert "differ by more than one quantisation step" in r.verdict[0]


def test_diff_of_a_dequantised_copy(flux, tmp_path, cli):
    out = tmp_path / "deq.safetensors"
    res = cli("convert", str(flux["q8"]), str(out), "--dtype", "bf16")
    assert res.returncode == 0, res.stderr
    with open_checkpoint(flux["q8"]) as a, open_checkpoint(out) as b:
        for k in a.tensors:
            assert torch.equal(b.read(k), a.read(k).to(torch.bfloat16))
    r = diff(flux["q8"], out)
    assert r.verdict[0].startswith("same model, dequantised: B holds A's Q8_0 values, stored as BF16")


def test_matrix_puts_each_quantised_copy_next_to_its_source(flux, tmp_path):
    from sdlens.analysis.matrix import matrix
    from sdlens.io.open import expand_paths

    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("flux", "other", "q8", "q4", "q51"):
        (folder / Path(flux[name]).name).symlink_to(flux[name])
    paths = expand_paths([folder])
    assert len(paths) == 5
    res = matrix(paths)
    names = [Path(m.path).name for m in res.models]
    m = res.matrix(next(iter(res.matrices)))
    source = {
        "flux-Q8_0.gguf": "flux.safetensors",
        "flux-Q5_1.gguf": "flux.safetensors",
        "other-Q4_0.gguf": "other.safetensors",
    }
    for copy, src in source.items():
        i = names.index(copy)
        row = [(m[i][j], names[j]) for j in range(len(names)) if j != i and not names[j].endswith(".gguf")]
        assert min(row)[1] == src


def _scaled_fp8(sd: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    out = {f"{prefix}scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for k, v in sd.items():
        if v.ndim == 2 and k.endswith(".weight"):
            s = (v.abs().max().float() / 448).clamp(min=1e-12)
            out[prefix + k] = (v.float() / s).to(torch.float8_e4m3fn)
            out[prefix + k[: -len("weight")] + "scale_weight"] = s.reshape(())
        else:
            out[prefix + k] = v.to(torch.bfloat16)
    return out


def test_scaled_fp8_is_recognised_and_dequantised(flux, tmp_path):
    sd = _scaled_fp8(flux["flux-sd"], "model.diffusion_model.")
    path = tmp_path / "flux-fp8-scaled.safetensors"
    save_file(sd, path)
    r = inspect(path)
    assert r.family == "flux_dev" and not r.unknown_keys
    (use,) = r.quantisation.schemes
    n = sum(1 for k in sd if k.endswith("scale_weight"))
    assert (use.scheme, use.tensors) == ("F8_E4M3 scaled", n) and r.quantisation.companions == n
    assert r.quantisation.markers == ["model.diffusion_model.scaled_fp8"]
    assert use.bits_per_weight == pytest.approx(8 + 32 * n / use.params)
    with open_checkpoint(path) as ck:
        for k in sd:
            if k.endswith(".scale_weight"):
                w = k[: -len("scale_weight")] + "weight"
                assert torch.equal(ck.read(w), sd[w].float() * sd[k])
    d = diff(flux["flux"], path)
    assert d.verdict[0].startswith("same model, quantised: B is A quantised to F8_E4M3 scaled")


def test_plain_fp8_stays_plain(flux, tmp_path):
    sd = {k: v.to(torch.float8_e5m2) for k, v in flux["flux-sd"].items()}
    save_file(sd, tmp_path / "e5m2.safetensors")
    r = inspect(tmp_path / "e5m2.safetensors")
    assert r.quantisation is None and r.precision == "fp8-e5m2" and r.family == "flux_dev"


def test_gguf_errors_name_the_file_and_the_problem(tmp_path, flux):
    raw = Path(flux["q8"]).read_bytes()
    cases = {
        "magic": b"GGUX" + raw[4:],
        "version": raw[:4] + (9).to_bytes(4, "little") + raw[8:],
        "header": raw[:200],
        "data": raw[: len(raw) // 2],
        "count": raw[:8] + (1 << 60).to_bytes(8, "little") + raw[16:],
    }
    want = {
        "magic": "not a checkpoint",
        "version": "GGUF version 9 is not supported",
        "header": "GGUF header ends inside",
        "data": "truncated?",
        "count": "limits",
    }
    for name, data in cases.items():
        p = tmp_path / f"{name}.gguf"
        p.write_bytes(data)
        with pytest.raises(CheckpointError) as e, open_checkpoint(p) as ck:
            for k in ck.tensors:
                ck.read(k)
        msg = str(e.value)
        assert str(p) in msg and want[name] in msg and "\n" not in msg, (name, msg)


@pytest.mark.parametrize(("quant_type", "nested"), [("nf4", True), ("fp4", False)])
def test_bnb4_files_are_read_as_their_logical_weights(flux, tmp_path, quant_type, nested):
    """A Forge-style NF4 / FP4 FLUX file: identified, each weight with its logical shape and scheme, its
    companions not unknown keys, values equal to what the file decodes to (bitsandbytes where installed)."""
    from sdlens.testing.zoo_nf4 import write_nf4

    sd = {"model.diffusion_model." + k: v.to(torch.bfloat16) for k, v in flux["flux-sd"].items()}
    path = tmp_path / f"flux-{quant_type}.safetensors"
    truth = write_nf4(path, sd, quant_type=quant_type, nested=nested, backend="numpy")
    r = inspect(path)
    assert r.family == "flux_dev" and not r.unknown_keys, r.unknown_keys[:2]
    (use,) = r.quantisation.schemes
    assert (use.scheme, use.tensors) == (quant_type.upper(), len(truth["quantised"]))
    with open_checkpoint(path) as ck:
        for key, t in truth["quantised"].items():
            info = ck.tensors[key]
            assert info.shape == tuple(t["shape"]) and info.dtype == "BF16"
            assert torch.equal(ck.read(key).float(), torch.as_tensor(t["values"]).float().reshape(info.shape))
    d = diff(path.with_name("src.safetensors") if False else flux["flux"], path)
    assert d.verdict[0].startswith(f"same model, quantised: B is A quantised to {quant_type.upper()}"), (
        d.verdict
    )


_TO_LLAMA_CPP = (
    (r"^shared\.weight$", "token_embd.weight"),
    (r"^encoder\.final_layer_norm\.", "enc.output_norm."),
    (
        r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.relative_attention_bias\.",
        r"enc.blk.\1.attn_rel_b.",
    ),
    (r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.([qkvo])\.", r"enc.blk.\1.attn_\2."),
    (r"^encoder\.block\.(\d+)\.layer\.0\.layer_norm\.", r"enc.blk.\1.attn_norm."),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_0\.", r"enc.blk.\1.ffn_gate."),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_1\.", r"enc.blk.\1.ffn_up."),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wo\.", r"enc.blk.\1.ffn_down."),
    (r"^encoder\.block\.(\d+)\.layer\.1\.layer_norm\.", r"enc.blk.\1.ffn_norm."),
)


def test_a_t5_gguf_in_llama_cpp_names_is_a_t5_text_encoder(tmp_path):
    """city96's T5-XXL encoder GGUFs (arch ``t5encoder``) use llama.cpp's tensor names; sdlens indexes them
    under the transformers names, so the file is a T5 text encoder with its values."""
    import re

    import transformers

    cfg = transformers.T5Config(
        vocab_size=64,
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=24,
        num_heads=4,
        feed_forward_proj="gated-gelu",
    )
    torch.manual_seed(0)
    sd = {
        k: v
        for k, v in transformers.T5EncoderModel(cfg).state_dict().items()
        if k != "encoder.embed_tokens.weight"
    }
    renamed = {}
    for k, v in sd.items():
        for pat, rep in _TO_LLAMA_CPP:
            if re.match(pat, k):
                renamed[re.sub(pat, rep, k)] = v
                break
    assert len(renamed) == len(sd)
    path = write_gguf(tmp_path / "t5-v1_1-xxl-encoder-Q8_0.gguf", renamed, T.Q8_0, arch="t5encoder")
    r = inspect(path)
    assert r.kind.startswith("text encoder") and [c.id for c in r.components] == ["t5"], (
        r.kind,
        r.components,
    )
    with open_checkpoint(path) as ck:
        assert set(ck.tensors) == set(sd)
        w = "encoder.block.3.layer.1.DenseReluDense.wi_0.weight"
        assert quant_of(ck.tensors[w]).scheme == "Q8_0"
        assert np.array_equal(ck.read_numpy(w), dequantize(quantize(sd[w].numpy(), T.Q8_0), T.Q8_0))


def test_streaming_dequantises_chunk_by_chunk(flux, tmp_path):
    """The streaming engines (scan, convert, hashing's extra reads) get a big quantised tensor in chunks of
    whole rows / blocks, equal to the whole tensor's values: GGUF, scaled fp8 and NF4 alike."""
    from sdlens.testing.zoo_nf4 import write_nf4

    fp8 = tmp_path / "fp8.safetensors"
    save_file(_scaled_fp8(flux["flux-sd"]), fp8)
    nf4 = tmp_path / "nf4.safetensors"
    write_nf4(
        nf4, {k: v.to(torch.bfloat16) for k, v in flux["flux-sd"].items()}, nested=True, backend="numpy"
    )
    for path in (flux["q8"], fp8, nf4):
        with open_checkpoint(path) as ck:
            pieces: dict[str, list] = {}
            for p in stream(ck, chunk_bytes=1024):  # 256 float32 values a chunk
                pieces.setdefault(p.key, []).append((p.start, p.data.float().clone()))
            big = [k for k, ps in pieces.items() if len(ps) > 1 and quant_of(ck.tensors[k])]
            assert big, path
            for k in big:
                starts = [s for s, _ in pieces[k]]
                assert starts == sorted(starts) and starts[0] == 0
                assert all(s % quant_of(ck.tensors[k]).unit == 0 for s in starts)
                whole = torch.cat([v for _, v in pieces[k]])
                assert torch.equal(whole, ck.read(k).float().reshape(-1)), (path.name, k)
