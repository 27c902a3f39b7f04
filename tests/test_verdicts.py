"""Honest verdicts (issue 14.3), each against a truth built here: zero-by-design tensors in --scan, copies at
different precisions, a part file (VAE / text encoder / UNet) against a full checkpoint, LoRA files."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sdlens.analysis.diff import DiffResult, diff
from sdlens.analysis.inspect import inspect
from sdlens.analysis.precision import FORMATS, consistent, intervals
from sdlens.analysis.scan import zero_by_design
from sdlens.errors import SdlensError
from sdlens.testing.writers import save_safetensors
from sdlens.testing.zoo_unet import build_diffusers_parts, build_single_file

_TORCH = {
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "F32": torch.float32,
}
_INT = {8: (np.uint8, np.int8, torch.uint8), 16: (np.uint16, np.int16, torch.int16)}


@pytest.fixture(scope="module")
def sd1():
    return build_single_file("sd1", seed=3)


@pytest.fixture(scope="module")
def full(sd1, tmp_path_factory):
    return save_safetensors(sd1, tmp_path_factory.mktemp("full") / "model.safetensors")


def _sums_hold(r: DiffResult) -> None:
    groups = [
        *r.by_component.values(),
        *r.by_type.values(),
        *(g for b in r.by_block.values() for g in b.values()),
    ]
    for g in groups:
        assert g.tensors == g.changed + g.identical + g.within_precision
    assert sum(g.tensors for g in r.by_component.values()) == len(r.tensors)


# --------------------------------------------------------------------------- --scan: zero by design


def test_scan_tells_zero_by_design_from_zeroed(tmp_path, sd1):
    sd = dict(sd1)
    assert not sd["logvar"].any()  # LDM: zeros at release
    key = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
    sd[key] = torch.zeros_like(sd[key])  # a weight that should never be zero
    r = inspect(save_safetensors(sd, tmp_path / "m.safetensors"), scan=True)
    assert r.scan.all_zero == [key]
    assert list(r.scan.zero_by_design) == ["logvar"]
    assert "log-variance" in r.scan.zero_by_design["logvar"]
    zero_problems = [p for p in r.problems if "zeros" in p]
    assert zero_problems == [f"1 tensors are all zeros (e.g. {key})"] or zero_problems == [
        f"1 tensor is all zeros (e.g. {key})"
    ]
    assert not any("logvar" in p for p in r.problems)


def test_scan_controlnet_zero_convs_and_family_rule(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {
        "control_model.input_blocks.0.0.weight": torch.randn(8, 4, 3, 3, generator=g),
        "control_model.zero_convs.0.0.weight": torch.zeros(8, 8, 1, 1),
        "control_model.zero_convs.0.0.bias": torch.zeros(8),
        "control_model.middle_block_out.0.bias": torch.zeros(8),
        "control_model.input_blocks.0.0.bias": torch.zeros(8),
    }
    r = inspect(save_safetensors(sd, tmp_path / "cn.safetensors"), scan=True)
    assert sorted(r.scan.zero_by_design) == [
        "control_model.middle_block_out.0.bias",
        "control_model.zero_convs.0.0.bias",
        "control_model.zero_convs.0.0.weight",
    ]
    assert r.scan.all_zero == ["control_model.input_blocks.0.0.bias"]
    # the registry says per family: logvar is expected in SD1/SD2 files only
    assert zero_by_design("logvar", "sd1") and zero_by_design("logvar", "sdxl") is None


def test_scan_view_shows_logvar_as_information(tmp_path, sd1):
    from rich.console import Console

    from sdlens.render.inspect_view import render_report

    console = Console(record=True, width=200)
    render_report(inspect(save_safetensors(sd1, tmp_path / "m.safetensors"), scan=True), console)
    text = console.export_text()
    assert "no NaN/Inf, no all-zero tensors" in text
    assert (
        "zero by design (not a problem): 1 tensor — LDM per-timestep log-variance" in text
        and "logvar" in text
    )


# --------------------------------------------------------------------------- precision


@pytest.mark.parametrize("dtype", ["F16", "BF16", "F8_E4M3", "F8_E5M2"])
def test_rounding_intervals_agree_with_torch_casts(dtype):
    """Every bit pattern: the reals just inside each bound round (torch, RNE) to the value, just outside do
    not, and a bound itself rounds to it exactly when the interval is closed."""
    nb = FORMATS[dtype].bits
    u, s, tu = _INT[nb]
    bits = np.arange(1 << nb, dtype=np.uint64).astype(u)
    lo, hi, closed, nan = intervals(bits, dtype)
    vals = torch.from_numpy(bits.view(s)).view(_TORCH[dtype]).float().numpy()

    def rounds_to_value(x32: np.ndarray, which: np.ndarray) -> np.ndarray:
        r = torch.from_numpy(x32).to(_TORCH[dtype])
        same_bits = r.view(tu).numpy().view(u) == bits[which]
        return np.where(vals[which] == 0, r.float().numpy() == 0, same_bits)  # ±0: by value

    checked = 0
    for bound, outwards in ((lo, -np.inf), (hi, np.inf)):
        ok = ~nan & np.isfinite(bound)
        b32 = bound[ok].astype(np.float32)
        assert np.array_equal(b32.astype(np.float64), bound[ok])  # exact
        inside = np.nextafter(b32, np.float32(-outwards))
        outside = np.nextafter(b32, np.float32(outwards))
        assert rounds_to_value(inside, ok).all()
        assert not rounds_to_value(outside, ok).any()
        assert np.array_equal(rounds_to_value(b32, ok), closed[ok])
        checked += int(ok.sum())
    assert checked > (1 << nb)  # both bounds of nearly every pattern


def test_adjacent_values_of_one_format_are_never_consistent():
    a = np.arange(0, 0x7BFF, dtype=np.uint16)  # positive finite fp16
    assert not consistent(a, "F16", a + 1, "F16").any()
    assert consistent(a, "F16", a, "F16").all()


def test_double_rounding_and_underflow_are_consistent():
    """fp16 and bf16 of one fp32 value x, where the fp16 copy rounded to bf16 is not bf16(x)."""
    x = torch.tensor([1 + 2**-8 + 2**-12, 1e-6, -3e-8, 1e-30, 70000.0])
    f16, b16 = x.half(), x.bfloat16()
    assert not torch.equal(f16.bfloat16().float(), b16.float())
    bits = lambda t: t.view(torch.int16).numpy().view(np.uint16)  # noqa: E731
    assert consistent(bits(f16), "F16", bits(b16), "BF16").all()
    wrong = b16.clone()
    wrong[1] = 1.1e-6  # outside fp16's subnormal interval around 17·2⁻²⁴
    assert consistent(bits(f16), "F16", bits(wrong), "BF16").tolist() == [True, False, True, True, True]


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {
        f"model.diffusion_model.input_blocks.{i}.0.weight": torch.randn(32, 100, generator=g) * 0.05
        for i in range(1, 7)
    }
    sd["model.diffusion_model.input_blocks.1.0.weight"].view(-1)[:4] = torch.tensor([1e-7, -2e-9, 3e-5, 0.0])
    return sd


@pytest.mark.parametrize("da,db", [("F16", "BF16"), ("F16", "F8_E4M3"), ("BF16", "F8_E5M2"), ("F32", "F16")])
def test_precision_copies_are_same_weights_until_perturbed(tmp_path, da, db):
    src = _weights()
    a = {k: v.to(_TORCH[da]) for k, v in src.items()}
    b = {k: v.to(_TORCH[db]) for k, v in src.items()}
    pa = save_safetensors(a, tmp_path / "a.safetensors")
    r = diff(pa, save_safetensors(b, tmp_path / "b.safetensors"))
    assert r.verdict == [
        f"same weights at different precisions ({da} vs {db}: every pair of values is "
        "consistent with one common source)"
    ]
    g = r.by_component["denoiser"]
    assert (g.tensors, g.changed, g.identical, g.within_precision) == (6, 0, 0, 6)
    _sums_hold(r)
    key = "model.diffusion_model.input_blocks.4.0.weight"
    b[key] = b[key].clone()
    b[key].view(-1)[[5, 77]] = (-src[key].view(-1)[[5, 77]]).to(_TORCH[db])  # sign flips: beyond any rounding
    r = diff(pa, save_safetensors(b, tmp_path / "b2.safetensors"))
    assert [t.key for t in r.tensors if t.changed] == ["denoiser/input_blocks.4.0.weight"]
    assert r.verdict == [
        "denoiser: changed — 1 of 6 tensors (RMS of Δ "
        f"{r.by_component['denoiser'].rms:.3g}); 5 more the same at different precisions"
    ]
    _sums_hold(r)


# --------------------------------------------------------------------------- a part of a model vs a full one


def _parts(sd1):
    diffusers = build_diffusers_parts("sd1", seed=3)  # the same weights in diffusers layout
    vae_ldm = {
        k.removeprefix("first_stage_model."): v for k, v in sd1.items() if k.startswith("first_stage_model.")
    }
    return {
        "vae_ldm": ("VAE", vae_ldm),
        "vae_diffusers": ("VAE", diffusers["vae"]),
        "text_encoder": ("CLIP-L", diffusers["text_encoder"]),
        "unet": ("UNet", diffusers["unet"]),
    }


@pytest.mark.parametrize("which", ["vae_ldm", "vae_diffusers", "text_encoder", "unet"])
def test_part_file_is_compared_with_that_part(tmp_path, sd1, full, which):
    label, part = _parts(sd1)[which]
    path = save_safetensors(part, tmp_path / f"{which}.safetensors")
    rest = {
        "VAE": "UNet, CLIP-L, schedule buffers",
        "CLIP-L": "UNet, VAE, schedule buffers",
        "UNet": "CLIP-L, VAE, schedule buffers",
    }[label]
    r = diff(path, full)
    assert (
        r.verdict[0] == f"{label}: bit-identical to B's {label} (B's other components not compared: {rest})"
    )
    assert all("no " not in line for line in r.verdict)  # no "no UNet in A" for what was never asked
    r = diff(full, path)
    assert (
        r.verdict[0] == f"{label}: bit-identical to A's {label} (A's other components not compared: {rest})"
    )
    _sums_hold(r)


def test_part_file_changed_or_at_another_precision(tmp_path, sd1, full):
    _, vae = _parts(sd1)["vae_diffusers"]
    half = save_safetensors({k: v.half() for k, v in vae.items()}, tmp_path / "vae16.safetensors")
    r = diff(half, full)
    assert r.verdict[0].startswith("VAE: same weights as B's VAE at different precisions (B's other")
    other = dict(vae)
    other["decoder.conv_out.weight"] = other["decoder.conv_out.weight"] + 0.01
    r = diff(save_safetensors(other, tmp_path / "vae2.safetensors"), full)
    assert r.verdict[0].startswith(f"VAE: changed vs B's VAE — 1 of {len(vae)} tensors")


def test_cli_is_the_baked_vae_this_one(tmp_path, sd1, full, cli):
    """A fp16 diffusers-layout VAE file against the fp32 LDM checkpoint it was taken from."""
    _, vae = _parts(sd1)["vae_diffusers"]
    half = save_safetensors({k: v.half() for k, v in vae.items()}, tmp_path / "vae.safetensors")
    p = cli("diff", str(half), str(full), "--json", str(tmp_path / "d.json"))
    assert p.returncode == 0, p.stderr
    assert "VAE: same weights as B's VAE at different precisions" in " ".join(p.stdout.split())
    assert "within" in p.stdout  # the table's column of same-within-precision tensors
    d = json.loads((tmp_path / "d.json").read_text())["by_component"]
    enc, dec = d["vae_encoder"], d["vae_decoder"]
    assert enc["same_within_precision"] + dec["same_within_precision"] == len(vae)
    assert enc["changed"] == dec["changed"] == enc["identical"] == dec["identical"] == 0


# --------------------------------------------------------------------------- LoRA files


def _kohya(arch="sd1", seed=1):
    from sdlens.testing.zoo_lora import build_lora

    return build_lora("kohya", arch=arch, rank=4, seed=seed, targets="attn")


def _peft_by_diffusers(kohya: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """The independent judge: diffusers' own conversion of a kohya LoRA to the PEFT key format."""
    conv_utils = pytest.importorskip("diffusers.loaders.lora_conversion_utils")
    from diffusers.utils import convert_state_dict_to_peft, convert_unet_state_dict_to_peft

    from sdlens.arch.configs import DENOISERS

    sd = dict(kohya)
    if arch == "sdxl":  # sd-scripts' SDXL names are the sgm (LDM) ones
        sd = conv_utils._maybe_map_sgm_blocks_to_diffusers(
            sd, SimpleNamespace(**{"layers_per_block": 2, **DENOISERS["sdxl"][1]})
        )
    conv, _alphas = conv_utils._convert_non_diffusers_lora_to_diffusers(sd)
    out = convert_unet_state_dict_to_peft({k: v for k, v in conv.items() if k.startswith("unet.")})
    return out | convert_state_dict_to_peft({k: v for k, v in conv.items() if not k.startswith("unet.")})


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_kohya_and_peft_copies_of_one_lora_are_identical(tmp_path, arch):
    k, meta = _kohya(arch)
    peft = _peft_by_diffusers(k, arch)
    assert next(iter(peft)).endswith((".lora_A.weight", ".lora_B.weight")) and not set(peft) & set(k)
    r = diff(
        save_safetensors(k, tmp_path / "k.safetensors", meta),
        save_safetensors(peft, tmp_path / "p.safetensors"),
    )
    n = sum(1 for key in k if not key.endswith(".alpha"))
    assert r.kind == "lora" and len(r.tensors) == n and not r.only_a and not r.only_b
    assert r.verdict[-1] == "identical: every tensor bit-identical"


def test_one_lora_module_changed_is_named(tmp_path):
    k, meta = _kohya("sd1")
    peft = _peft_by_diffusers(k, "sd1")
    key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight"
    peft[key] = peft[key] + 0.01
    r = diff(
        save_safetensors(k, tmp_path / "k.safetensors", meta),
        save_safetensors(peft, tmp_path / "p.safetensors"),
    )
    assert [t.key for t in r.tensors if t.changed] == [
        "denoiser/input_blocks.4.1.transformer_blocks.0.attn2.to_k.lora_up.weight"
    ]
    unet = next(line for line in r.verdict if line.startswith("UNet: changed"))
    assert "only cross-attention (attn2)" in unet and "blocks changed: IN04;" in unet
    assert "CLIP-L: bit-identical" in r.verdict


def test_lora_alpha_difference_is_reported(tmp_path):
    k, meta = _kohya("sd1")
    k2 = dict(k)
    alpha_key = next(key for key in k if key.endswith(".alpha") and key.startswith("lora_unet_"))
    k2[alpha_key] = torch.tensor(8.0, dtype=k[alpha_key].dtype)
    r = diff(
        save_safetensors(k, tmp_path / "a.safetensors", meta),
        save_safetensors(k2, tmp_path / "b.safetensors", meta),
    )
    assert len(r.alpha_diff) == 1 and (r.alpha_diff[0]["a"], r.alpha_diff[0]["b"]) == (4.0, 8.0)
    assert r.verdict[-1].startswith("alpha differs in 1 module (e.g. denoiser/")


def test_lora_against_a_checkpoint_is_refused(tmp_path, full, cli):
    k, meta = _kohya("sd1")
    lora = save_safetensors(k, tmp_path / "style.safetensors", meta)
    with pytest.raises(SdlensError) as e:
        diff(lora, full)
    assert str(e.value) == (
        "A (style.safetensors) is a LoRA (kohya, SD1.x, rank 4) — compare it with another "
        "LoRA, or apply it first"
    )
    p = cli("diff", str(full), str(lora))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [
        "sdlens: error: B (style.safetensors) is a LoRA (kohya, SD1.x, rank 4) — compare it with another LoRA, "
        "or apply it first"
    ]
