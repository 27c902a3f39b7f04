"""bitsandbytes 4-bit (NF4 / FP4) weights: sdlens' numpy dequantiser against bitsandbytes' own (bit for bit,
where bitsandbytes is installed), hand-computed cases, the quant-state parser on hostile bytes, the companion
key finder, the layout checks, bits per weight and the bnb-4bit file builder."""

from __future__ import annotations

import contextlib
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sdlens.io import bnb4

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@pytest.fixture(scope="module")
def bnbf():
    """bitsandbytes.functional, the judge; torch.compile off (bitsandbytes compiles its fallback kernel for
    odd shapes on CPU: seconds of compiling per shape, same values as eager)."""
    functional = pytest.importorskip("bitsandbytes.functional", exc_type=ImportError)
    import torch._dynamo

    old = torch._dynamo.config.disable
    torch._dynamo.config.disable = True
    yield functional
    torch._dynamo.config.disable = old


def bits(a: np.ndarray) -> np.ndarray:
    """float32 bit patterns, with -0.0 as +0.0: bitsandbytes' CPU C kernel decodes FP4 code 8 to -0.0, its
    torch path (odd shapes, blocksize >= 2048) and its stored code book to +0.0."""
    return (np.asarray(a, dtype=np.float32) + np.float32(0)).view(np.uint32)


def decode(parts: dict[str, np.ndarray], state: bnb4.Bnb4State) -> np.ndarray:
    return bnb4.dequantise_parts(parts, state)


def bnb_quantise(bnbf, w: torch.Tensor, quant_type: str, blocksize: int, nested: bool):
    """(packed, bitsandbytes' QuantState, the serialised companions as numpy: role -> array)."""
    packed, state = bnbf.quantize_4bit(
        w, blocksize=blocksize, compress_statistics=nested, quant_type=quant_type
    )
    parts = {"weight": packed.numpy()}
    for key, value in state.as_dict(packed=True).items():
        parts["quant_state" if key.startswith("quant_state.") else key] = value.numpy()
    return packed, state, parts


# ------------------------------------------------------------------------------ against bitsandbytes


def test_code_books_are_bitsandbytes_own(bnbf):
    for quant_type, code in bnb4.CODES.items():
        ref = bnbf.get_4bit_type(quant_type, device="cpu").numpy()
        assert np.array_equal(code.view(np.uint32), ref.view(np.uint32)), quant_type


SHAPES = [(96, 40), (3, 5), (33, 65), (2, 128), (7,)]


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("blocksize", [64, 128, 256])
def test_dequantise_is_bitsandbytes_exactly(bnbf, quant_type, nested, blocksize):
    """Every element of every dtype and shape (blocks across rows, partial last block, odd counts) equals
    bitsandbytes' dequantize_4bit; the parsed state is bitsandbytes' state."""
    gen = torch.Generator().manual_seed(blocksize + nested)
    for dtype_name, dtype in DTYPES.items():
        for shape in SHAPES:
            w = (torch.randn(shape, generator=gen) * 0.03).to(dtype)
            packed, qs, parts = bnb_quantise(bnbf, w, quant_type, blocksize, nested)
            state = bnb4.parse_quant_state(parts["quant_state"], quant_type)
            assert (state.shape, state.blocksize, state.dtype, state.nested) == (
                shape,
                blocksize,
                dtype_name,
                nested,
            )
            if nested:
                assert state.nested_blocksize == qs.state2.blocksize == 256
                assert np.float32(state.nested_offset) == qs.offset.numpy()
            ref = bnbf.dequantize_4bit(packed, qs)
            mine = decode(parts, state)
            assert mine.shape == tuple(ref.shape) and mine.dtype == np.float32
            assert np.array_equal(bits(mine), bits(ref.float().numpy())), (dtype_name, shape)


@pytest.mark.parametrize("blocksize", [32, 2048, 4096])
def test_dequantise_other_blocksizes(bnbf, blocksize):
    gen = torch.Generator().manual_seed(blocksize)
    for quant_type, nested, shape in [
        ("nf4", True, (40, 130)),
        ("fp4", False, (2, 3, 4)),
        ("nf4", False, (5001,)),
    ]:
        w = (torch.randn(shape, generator=gen) * 0.03).to(torch.bfloat16)
        packed, qs, parts = bnb_quantise(bnbf, w, quant_type, blocksize, nested)
        mine = decode(parts, bnb4.parse_quant_state(parts["quant_state"]))
        assert np.array_equal(bits(mine), bits(bnbf.dequantize_4bit(packed, qs).float().numpy()))


def test_chunked_dequantisation_matches(bnbf, monkeypatch):
    """A weight decoded over many chunks (including an odd last one) equals one decoded in one step."""
    w = (torch.randn(3, 1001, generator=torch.Generator().manual_seed(1)) * 0.03).to(torch.float16)
    packed, qs, parts = bnb_quantise(bnbf, w, "nf4", 64, True)
    state = bnb4.parse_quant_state(parts["quant_state"])
    monkeypatch.setattr(bnb4, "CHUNK_BYTES", 64)
    mine = decode(parts, state)
    assert np.array_equal(bits(mine), bits(bnbf.dequantize_4bit(packed, qs).float().numpy()))


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("nested", [False, True])
def test_numpy_quantiser_decodes_the_same_in_bitsandbytes(bnbf, quant_type, nested):
    w = (torch.randn(48, 37, generator=torch.Generator().manual_seed(7)) * 0.05).to(torch.bfloat16)
    parts = bnb4.quantise_4bit_numpy(w.float().numpy(), quant_type, 64, nested, dtype="bfloat16")
    state = bnb4.parse_quant_state(parts["quant_state"], quant_type)
    qs_dict = {k: torch.from_numpy(v) for k, v in parts.items() if k not in ("weight", "quant_state")}
    qs_dict[f"quant_state.bitsandbytes__{quant_type}"] = torch.from_numpy(parts["quant_state"])
    qs = bnbf.QuantState.from_dict(qs_dict, device=torch.device("cpu"))
    ref = bnbf.dequantize_4bit(torch.from_numpy(parts["weight"]), qs)
    assert ref.dtype == torch.bfloat16
    assert np.array_equal(bits(decode(parts, state)), bits(ref.float().numpy()))


# ------------------------------------------------------------------------------ hand-computed truths


def test_hand_computed_nf4():
    """Codes (15, 0, 7 | 8, 1, 14), blocks of 4, absmax (2, 0.5): high nibble first, block = index // 4."""
    state = bnb4.Bnb4State("nf4", 4, "float32", (2, 3))
    packed = np.array([[0xF0], [0x78], [0x1E]], dtype=np.uint8)
    out = bnb4.dequantise_4bit(packed, np.array([2.0, 0.5], np.float32), bnb4.NF4_CODE, state)
    expected = [
        [2.0, -2.0, 0.0],
        [2 * 0.07958029955625534, 0.5 * -0.6961928009986877, 0.5 * 0.7229568362236023],
    ]
    assert np.array_equal(out, np.array(expected, dtype=np.float32))


def test_hand_computed_fp4_odd_count_ignores_the_padding_nibble():
    state = bnb4.Bnb4State("fp4", 2, "float32", (3,))
    packed = np.array([0x3B, 0x6F], dtype=np.uint8)  # codes 3, 11 | 6, pad 15
    out = bnb4.dequantise_4bit(packed, np.array([3.0, 6.0], np.float32), bnb4.FP4_CODE, state)
    assert out.tolist() == [3.0, -3.0, 1.0]  # 12/12 * 3, -12/12 * 3, 2/12 * 6


def test_hand_computed_nested_absmax():
    """absmax codes (0, 255) through a linear 8-bit map [-1 .. 1] times nested absmax 2, plus offset 1."""
    state = bnb4.Bnb4State("nf4", 2, "float32", (4,), nested=True, nested_blocksize=256, nested_offset=1.0)
    code8 = np.linspace(-1, 1, 256, dtype=np.float32)
    out = bnb4.dequantise_4bit(
        np.array([0xF0, 0xFF], np.uint8),
        np.array([0, 255], np.uint8),
        bnb4.NF4_CODE,
        state,
        np.array([2.0], np.float32),
        code8,
    )
    assert out.tolist() == [-1.0, 1.0, 3.0, 3.0]  # absmax (-1, 3) times codes (1, -1 | 1, 1)


def test_rounding_to_bfloat16_ties_to_even():
    state = bnb4.Bnb4State("nf4", 2, "bfloat16", (4,))
    absmax = np.array([1 + 2**-8, 1 + 3 * 2**-9], np.float32)  # a tie (-> 1.0), above one (-> 1 + 2**-7)
    out = bnb4.dequantise_4bit(np.array([0xF0, 0xFF], np.uint8), absmax, None, state)
    assert out.tolist() == [1.0, -1.0, 1 + 2**-7, 1 + 2**-7]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_round_float32_to_is_torch_cast(dtype):
    rng = np.random.default_rng(3)
    x = np.concatenate(
        [
            rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
            (rng.standard_normal(50_000) * 1e-5).astype(np.float32),  # float16 subnormals
            np.array(
                [65504, 65519.99, 65520, 2**-14, 2**-25, -(2**-25), -0.0, 3e38, np.inf, -np.inf], np.float32
            ),
        ]
    )
    ref = torch.from_numpy(x.copy()).to(DTYPES[dtype]).float().numpy()
    with np.errstate(invalid="ignore"):
        mine = bnb4.round_float32_to(x.copy(), dtype)
    same = (mine.view(np.uint32) == ref.view(np.uint32)) | (np.isnan(mine) & np.isnan(ref))
    assert same.all(), x[~same][:5]


def test_numpy_quantiser_picks_the_nearest_code():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((10, 30)).astype(np.float32)
    parts = bnb4.quantise_4bit_numpy(w, "nf4", 64, nested=False)
    flat = w.reshape(-1)
    scaled = flat / np.repeat(parts["absmax"], 64)[: flat.size]
    nibbles = np.stack([parts["weight"].reshape(-1) >> 4, parts["weight"].reshape(-1) & 15], 1).reshape(-1)
    chosen = bnb4.NF4_CODE[nibbles[: flat.size]]
    best = np.abs(scaled[:, None] - bnb4.NF4_CODE[None, :]).min(axis=1)
    assert np.allclose(np.abs(scaled - chosen), best, atol=1e-6)
    assert parts["absmax"].tolist() == [np.abs(flat[i : i + 64]).max() for i in range(0, flat.size, 64)]


# ------------------------------------------------------------------------------ hostile quant states

GOOD = {"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [96, 40]}
NESTED = GOOD | {"nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.5}


def _json(**changes) -> bytes:
    d = dict(NESTED if any(k.startswith("nested") for k in changes) else GOOD)
    for k, v in changes.items():
        if v is _DROP:
            d.pop(k)
        else:
            d[k] = v
    return json.dumps(d).encode()


_DROP = object()

HOSTILE = {
    "not utf-8": b'{"quant_type": "\xff\xfe"}',
    "not json": b"{",
    "empty": b"",
    "a list": b"[]",
    "null": b"null",
    "a string": b'"nf4"',
    "no quant_type": _json(quant_type=_DROP),
    "int4": _json(quant_type="int4"),
    "quant_type number": _json(quant_type=4),
    "float64": _json(dtype="float64"),
    "no dtype": _json(dtype=_DROP),
    "blocksize 0": _json(blocksize=0),
    "blocksize negative": _json(blocksize=-64),
    "blocksize 63": _json(blocksize=63),
    "blocksize float": _json(blocksize=64.0),
    "blocksize bool": _json(blocksize=True),
    "blocksize string": _json(blocksize="64"),
    "blocksize huge": _json(blocksize=2**40),
    "no shape": _json(shape=_DROP),
    "shape null": _json(shape=None),
    "shape empty": _json(shape=[]),
    "shape zero": _json(shape=[0, 40]),
    "shape negative": _json(shape=[-1, 40]),
    "shape float": _json(shape=[96.0, 40]),
    "shape string": _json(shape="96x40"),
    "shape nested list": _json(shape=[[96], 40]),
    "shape too many dims": _json(shape=[1] * 9),
    "shape huge": _json(shape=[2**31, 2**31]),
    "nested no offset": _json(nested_offset=_DROP),
    "nested no blocksize": _json(nested_blocksize=_DROP),
    "nested blocksize 100": _json(nested_blocksize=100),
    "nested offset NaN": _json(nested_offset=float("nan")),
    "nested offset inf": _json(nested_offset=float("inf")),
    "nested offset beyond float32": _json(nested_offset=1e39),
    "nested offset string": _json(nested_offset="0.5"),
    "nested dtype float16": _json(nested_dtype="float16"),
    "too long": _json() + b" " * 5000,
    "deep nesting": b"[" * 4000,
}


@pytest.mark.parametrize("raw", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_quant_state_is_a_value_error(raw):
    with pytest.raises(ValueError) as err:
        bnb4.parse_quant_state(raw)
    message = str(err.value)
    assert "\n" not in message and 10 < len(message) < 120


def test_quant_state_disagreeing_with_its_key():
    with pytest.raises(ValueError, match="its key says fp4"):
        bnb4.parse_quant_state(_json(), quant_type="fp4")


def test_quant_state_good_and_round_trip():
    state = bnb4.parse_quant_state(np.frombuffer(_json(nested_offset=0.1), dtype=np.uint8))
    assert state.nested and state.nested_blocksize == 256
    assert state.nested_offset == float(np.float32(0.1))  # kept as the float32 bitsandbytes adds
    assert (state.numel, state.packed_bytes, state.nblocks, state.nested_nblocks) == (3840, 1920, 60, 1)
    assert bnb4.parse_quant_state(bnb4.state_json(state)) == state


POOL = [
    None,
    True,
    False,
    0,
    -1,
    1,
    3,
    64,
    256,
    2**31,
    2**70,
    0.5,
    -0.0,
    float("nan"),
    float("inf"),
    1e39,
    "",
    "nf4",
    "fp4",
    "float16",
    "bfloat16",
    "float64",
    [],
    [0],
    [3, 5],
    [-2, 4],
    [2.5],
    ["3"],
    [[1]],
    [1] * 9,
    {},
]


def test_random_quant_states_never_raise_anything_else():
    """Random bytes, and bnb's fields given random values of any type (seeded): a valid state or ValueError."""
    rng = np.random.default_rng(11)
    names = sorted(NESTED) + ["extra"]
    for i in range(3000):
        if i % 4 == 0:
            raw = rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8).tobytes()
        else:
            d = dict((GOOD, NESTED, {})[i % 3])
            for name in rng.choice(names, int(rng.integers(1, 4))):
                d[str(name)] = POOL[int(rng.integers(len(POOL)))]
            raw = json.dumps(d).encode()
        with contextlib.suppress(ValueError):
            state = bnb4.parse_quant_state(raw)
            assert state.numel >= 1 and state.blocksize & (state.blocksize - 1) == 0


# ------------------------------------------------------------------------------ layout errors


def _parts(nested=False, shape=(6, 10)):
    w = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    parts = bnb4.quantise_4bit_numpy(w, "nf4", 16, nested)
    return parts, bnb4.parse_quant_state(parts["quant_state"])


@pytest.mark.parametrize(
    "case",
    [
        "packed short",
        "absmax count",
        "absmax dtype",
        "quant_map wrong",
        "quant_map size",
        "nested missing",
        "nested absmax not u8",
        "nested_quant_map size",
    ],
)
def test_inconsistent_companions_are_value_errors(case):
    parts, state = _parts(nested=case.startswith("nested"))
    if case == "packed short":
        parts["weight"] = parts["weight"][:-1]
    elif case == "absmax count":
        parts["absmax"] = parts["absmax"][:-1]
    elif case == "absmax dtype":
        parts["absmax"] = parts["absmax"].astype(np.int32)
    elif case == "quant_map wrong":
        parts["quant_map"] = bnb4.FP4_CODE
    elif case == "quant_map size":
        parts["quant_map"] = bnb4.NF4_CODE[:8]
    elif case == "nested missing":
        del parts["nested_absmax"]
    elif case == "nested absmax not u8":
        parts["absmax"] = parts["absmax"].astype(np.float32)
    elif case == "nested_quant_map size":
        parts["nested_quant_map"] = parts["nested_quant_map"][:255]
    with pytest.raises(ValueError):
        decode(parts, state)


def _header(parts: dict[str, np.ndarray]) -> dict[str, tuple[str, tuple[int, ...]]]:
    names = {np.dtype(np.uint8): "U8", np.dtype(np.float32): "F32"}
    return {role: (names[a.dtype], a.shape) for role, a in parts.items()}


@pytest.mark.parametrize("nested", [False, True])
def test_check_layout(nested):
    parts, state = _parts(nested)
    header = _header(parts)
    bnb4.check_layout(state, header)  # consistent: no error
    header_bf16_storage = header | {"weight": ("BF16", (15, 1))}  # quant_storage=bfloat16: same 30 bytes
    bnb4.check_layout(state, header_bf16_storage)
    for role, bad in [
        ("weight", ("U8", (31, 1))),
        ("absmax", ("F32" if nested else "U8", (4,))),
        ("quant_map", ("F32", (15,))),
    ]:
        with pytest.raises(ValueError, match=role):
            bnb4.check_layout(state, header | {role: bad})
    with pytest.raises(ValueError, match="quant_map"):
        bnb4.check_layout(state, {k: v for k, v in header.items() if k != "quant_map"})
    records = {role: SimpleNamespace(dtype=d, shape=s) for role, (d, s) in header.items()}
    weight = records.pop("weight")
    bnb4.check_parts(state, weight, records)  # the same check on reader records (TensorInfo-like)
    with pytest.raises(ValueError, match="quant_state is F32"):
        bnb4.check_parts(state, weight, records | {"quant_state": SimpleNamespace(dtype="F32", shape=(4,))})


# ------------------------------------------------------------------------------ keys and sizes

FORGE_KEYS = [
    "model.diffusion_model.double_blocks.0.img_attn.qkv.weight",
    "model.diffusion_model.double_blocks.0.img_attn.qkv.weight.absmax",
    "model.diffusion_model.double_blocks.0.img_attn.qkv.weight.quant_map",
    "model.diffusion_model.double_blocks.0.img_attn.qkv.weight.nested_absmax",
    "model.diffusion_model.double_blocks.0.img_attn.qkv.weight.nested_quant_map",
    "model.diffusion_model.double_blocks.0.img_attn.qkv.weight.quant_state.bitsandbytes__nf4",
    "model.diffusion_model.double_blocks.0.img_attn.qkv.bias",
    "model.diffusion_model.img_in.weight",
    "model.diffusion_model.img_in.weight.absmax",
    "model.diffusion_model.img_in.weight.quant_map",
    "model.diffusion_model.img_in.weight.quant_state.bitsandbytes__fp4",
    "model.diffusion_model.final_layer.linear.weight",
    "model.diffusion_model.final_layer.linear.weight.absmax",  # stray: no quant state, not bnb-4bit
    "quant_state.bitsandbytes__nf4",  # no weight key before the suffix
]


def test_find_bnb4_on_forge_keys():
    found = bnb4.find_bnb4(FORGE_KEYS)
    qkv, img_in = (
        "model.diffusion_model.double_blocks.0.img_attn.qkv.weight",
        "model.diffusion_model.img_in.weight",
    )
    assert set(found) == {qkv, img_in}
    assert found[qkv] == {role: f"{qkv}{sfx[0]}" for role, sfx in bnb4.COMPANION_SUFFIXES.items()}
    assert found[img_in] == {
        "absmax": f"{img_in}.absmax",
        "quant_map": f"{img_in}.quant_map",
        "quant_state": f"{img_in}.quant_state.bitsandbytes__fp4",
    }
    assert len(bnb4.companion_keys(found)) == 8
    assert all(k.endswith(bnb4.ALL_SUFFIXES) for k in bnb4.companion_keys(found))
    assert bnb4.companions_of("model.diffusion_model.final_layer.linear.weight", FORGE_KEYS) == {}


def test_two_quant_states_for_one_weight():
    keys = ["a.weight", "a.weight.quant_state.bitsandbytes__nf4", "a.weight.quant_state.bitsandbytes__fp4"]
    with pytest.raises(ValueError, match="more than one quant state"):
        bnb4.find_bnb4(keys)


def test_bits_per_weight():
    plain = bnb4.Bnb4State("nf4", 64, "bfloat16", (64, 64))
    json_len = len(bnb4.state_json(plain))
    assert bnb4.storage_bytes(plain) == {
        "weight": 2048,
        "absmax": 256,
        "quant_map": 64,
        "quant_state": json_len,
    }
    assert bnb4.bits_per_weight(plain) == pytest.approx(8 * (2048 + 256 + 64 + json_len) / 4096)
    nested = bnb4.Bnb4State("nf4", 64, "bfloat16", (64, 64), True, 256, 0.5)
    sizes = bnb4.storage_bytes(nested, state_json_bytes=170)
    assert sizes == {
        "weight": 2048,
        "absmax": 64,
        "quant_map": 64,
        "nested_absmax": 4,
        "nested_quant_map": 1024,
        "quant_state": 170,
    }
    assert bnb4.bits_per_weight(nested, sizes) == pytest.approx(8 * 3374 / 4096)
    big = bnb4.Bnb4State("nf4", 64, "bfloat16", (3072, 12288))
    assert math.isclose(bnb4.bits_per_weight(big), 4.5, abs_tol=1e-4)  # 4 bits + a float32 per 64


# ------------------------------------------------------------------------------ the file builder


@pytest.mark.parametrize("backend", ["numpy", "bitsandbytes"])
@pytest.mark.parametrize("nested", [False, True])
def test_write_nf4_files(tmp_path, backend, nested):
    from safetensors.torch import load_file

    from sdlens.testing import zoo_nf4

    if backend == "bitsandbytes":
        pytest.importorskip("bitsandbytes.functional", exc_type=ImportError)
    gen = torch.Generator().manual_seed(2)
    sd = {
        "model.diffusion_model.double_blocks.0.img_attn.qkv.weight": torch.randn(
            96, 40, generator=gen
        ).bfloat16(),
        "model.diffusion_model.double_blocks.0.img_attn.qkv.bias": torch.randn(96, generator=gen).bfloat16(),
        "model.diffusion_model.img_in.weight": torch.randn(3, 5, generator=gen).half(),
        "model.diffusion_model.double_blocks.0.img_attn.norm.query_norm.scale": torch.randn(8, generator=gen),
    }
    truth = zoo_nf4.write_nf4(tmp_path / "m.safetensors", sd, backend=backend, nested=nested)
    assert truth["backend"] == backend
    assert set(truth["quantised"]) == {k for k in sd if k.endswith(".weight")}
    assert truth["plain"] == [k for k in sd if not k.endswith(".weight")]
    tensors = load_file(str(tmp_path / "m.safetensors"))
    assert sorted(tensors) == truth["keys"]
    found = bnb4.find_bnb4(tensors)
    assert found == {k: q["companions"] for k, q in truth["quantised"].items()}
    for key, q in truth["quantised"].items():
        parts = {role: tensors[k].numpy() for role, k in found[key].items()} | {
            "weight": tensors[key].numpy()
        }
        state = bnb4.parse_quant_state(parts["quant_state"], "nf4")
        assert (state.shape, state.dtype, state.nested) == (q["shape"], q["dtype"], nested)
        bnb4.check_layout(state, _header(parts))
        assert np.array_equal(bits(decode(parts, state)), bits(q["values"].numpy()))
    for key in truth["plain"]:
        assert tensors[key].dtype == sd[key].dtype and torch.equal(tensors[key], sd[key])


def test_module_needs_neither_torch_nor_bitsandbytes():
    import subprocess
    import sys

    code = (
        "import sys, sdlens.io.bnb4; print(sorted(m for m in ('torch', 'bitsandbytes') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr
