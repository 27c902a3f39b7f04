"""``convert --merge-lora``: LoRAs baked into tiny zoo models, judged by diffusers' own loading and fusing
(``load_lora_weights`` + ``fuse_lora``, its kohya converter included) and by the arithmetic of known ΔW."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from sdlens.analysis.lora_apply import LoraSpec, parse_merge_lora
from sdlens.convert import ConvertOptions, convert, make_plan
from sdlens.errors import SdlensError
from sdlens.io.open import open_checkpoint
from sdlens.testing import zoo_bake, zoo_unet
from sdlens.testing.writers import save_safetensors

ATOL = 1e-6  # float32 rounding at the zoo's weight scale (|w| ~ 0.1 .. 1)

# kohya LoRA of the SD1 tests: UNet attention, a LoCon 3x3 conv, a 1x1 conv (proj_in), text-encoder attn + MLP
KOHYA_MODULES = {
    "unet": [
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
        "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0",
        "up_blocks.1.resnets.0.conv1",
        "down_blocks.1.attentions.0.proj_in",
    ],
    "text_encoder": [
        "text_model.encoder.layers.0.self_attn.q_proj",
        "text_model.encoder.layers.0.self_attn.out_proj",
        "text_model.encoder.layers.1.mlp.fc1",
        "text_model.encoder.layers.1.mlp.fc2",
    ],
}
PEFT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_all(path: Path) -> dict[str, torch.Tensor]:
    with open_checkpoint(path) as ck:
        return {k: ck.read(k) for k in ck.tensors}


def _bake(base: Path, out: Path, *loras: str, **opts) -> dict:
    result = convert(make_plan(base, out, ConvertOptions(merge_lora=list(loras), **opts)))
    assert result.verification.ok
    return result.to_dict()


def _fused(folder: Path, lora: Path, *, single: bool = True) -> dict[str, torch.Tensor]:
    """diffusers' answer: the tiny SD1 pipeline with ``lora`` loaded and fused, in single-file key names
    (``single``), else the UNet's state dict as diffusers names it."""
    import diffusers
    import transformers

    from sdlens.arch.keymap.clip import normalize_hf_clip
    from sdlens.arch.keymap.unet import unet_diffusers_to_ldm

    unet = diffusers.UNet2DConditionModel.from_pretrained(folder / "unet")
    te = transformers.CLIPTextModel.from_pretrained(folder / "text_encoder")
    pipe = diffusers.StableDiffusionPipeline(
        vae=None, text_encoder=te, tokenizer=None, unet=unet, scheduler=None, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.load_lora_weights(str(lora))
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    if not single:
        return unet.state_dict()
    cfg = zoo_unet.tiny_config("sd1")["unet"]
    out = {f"model.diffusion_model.{k}": v for k, v in unet_diffusers_to_ldm(unet.state_dict(), cfg).items()}
    te_sd = normalize_hf_clip(te.state_dict())
    out.update({f"cond_stage_model.transformer.{k}": v for k, v in te_sd.items()})
    return out


def _changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in a if k in b and not torch.equal(a[k], b[k])}


@pytest.fixture(scope="module")
def sd1(tmp_path_factory) -> dict[str, Path]:
    """The tiny SD1 model as a single file and a diffusers folder; a PEFT and a kohya LoRA for it."""
    root = tmp_path_factory.mktemp("bake")
    base = root / "base.safetensors"
    save_safetensors(zoo_unet.build_single_file("sd1"), base)
    folder = zoo_unet.write_diffusers_folder("sd1", root / "folder")
    tensors, truth = zoo_bake.kohya_lora("sd1", KOHYA_MODULES, rank=4, alpha=2.0, seed=1)
    kohya = save_safetensors(tensors, root / "kohya.safetensors", {"ss_network_dim": "4"})
    tensors2, truth2 = zoo_bake.kohya_lora(
        "sd1", {"unet": KOHYA_MODULES["unet"][:2]}, rank=2, alpha=8.0, seed=2
    )
    kohya2 = save_safetensors(tensors2, root / "kohya2.safetensors")
    return {
        "root": root, "base": base, "folder": folder, "kohya": kohya, "kohya2": kohya2,
        "peft": _peft_lora(folder, root / "peft"), "truth": truth, "truth2": truth2,
    }  # fmt: skip


def _peft_lora(folder: Path, out: Path, **config) -> Path:
    """A LoRA made by PEFT on the tiny diffusers UNet (r=4, lora_alpha=8, non-zero B; ``config`` overrides),
    saved as diffusers does (its LoraConfig in the ``lora_adapter_metadata``)."""
    import diffusers
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = diffusers.UNet2DConditionModel.from_pretrained(folder / "unet")
    cfg = {"r": 4, "lora_alpha": 8, "target_modules": PEFT_TARGETS, "init_lora_weights": "gaussian", **config}
    unet.add_adapter(LoraConfig(**cfg))
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    diffusers.StableDiffusionPipeline.save_lora_weights(
        out, unet_lora_layers=layers, unet_lora_adapter_metadata=unet.peft_config["default"].to_dict()
    )
    return out / "pytorch_lora_weights.safetensors"


# --------------------------------------------------------------------------- diffusers as the judge


def test_peft_lora_baked_equals_diffusers_fuse_lora(sd1):
    out = sd1["root"] / "peft_baked.safetensors"
    res = _bake(sd1["base"], out, str(sd1["peft"]))
    base, baked, fused = _read_all(sd1["base"]), _read_all(out), _fused(sd1["folder"], sd1["peft"])
    with open_checkpoint(sd1["peft"]) as lora:
        n_modules = sum(k.endswith((".lora_A.weight", ".lora.down.weight")) for k in lora.tensors)
    changed = _changed(base, fused)
    assert len(changed) == n_modules > 40  # every attention projection and ResNet conv1 of the UNet
    assert _changed(base, baked) == changed
    for k in changed:
        torch.testing.assert_close(baked[k], fused[k], atol=ATOL, rtol=0)
    assert res["verification"]["baked"] == n_modules


def test_peft_rslora_rank_and_alpha_patterns_equal_diffusers(sd1, tmp_path):
    """Per-module ranks and alphas (PEFT's rank_pattern / alpha_pattern) and rsLoRA's alpha / sqrt(rank)."""
    lora = _peft_lora(
        sd1["folder"], tmp_path / "rs", use_rslora=True, rank_pattern={"to_v": 2}, alpha_pattern={"to_k": 3}
    )
    out = tmp_path / "rs_baked.safetensors"
    _bake(sd1["base"], out, str(lora))
    base, baked, fused = _read_all(sd1["base"]), _read_all(out), _fused(sd1["folder"], lora)
    changed = _changed(base, fused)
    assert len(changed) > 40 and _changed(base, baked) == changed
    for k in changed:
        torch.testing.assert_close(baked[k], fused[k], atol=ATOL, rtol=0)


def test_kohya_lora_with_locon_and_text_encoder_equals_diffusers(sd1):
    out = sd1["root"] / "kohya_baked.safetensors"
    _bake(sd1["base"], out, str(sd1["kohya"]))
    base, baked, fused = _read_all(sd1["base"]), _read_all(out), _fused(sd1["folder"], sd1["kohya"])
    changed = _changed(base, fused)
    assert len(changed) == len(KOHYA_MODULES["unet"]) + len(KOHYA_MODULES["text_encoder"])
    assert sum(k.startswith("cond_stage_model.") for k in changed) == 4  # diffusers fused the TE part too
    assert _changed(base, baked) == changed
    for k in changed:
        torch.testing.assert_close(baked[k], fused[k], atol=ATOL, rtol=0)


# --------------------------------------------------------------------------- arithmetic of known ΔW


def _single_key(name: str) -> str:
    """``unet/<diffusers module>`` / ``text_encoder/<module>`` -> the tiny SD1 single-file weight key."""
    from sdlens.arch.keymap.unet import unet_diffusers_key_to_ldm

    part, module = name.split("/", 1)
    if part == "unet":
        cfg = zoo_unet.tiny_config("sd1")["unet"]
        return "model.diffusion_model." + unet_diffusers_key_to_ldm(module + ".weight", cfg)
    return f"cond_stage_model.transformer.{module}.weight"


def test_weights_and_stacked_loras_add_up(sd1):
    out = sd1["root"] / "stacked.safetensors"
    _bake(sd1["base"], out, f"{sd1['kohya']}:0.5", f"{sd1['kohya2']}:-1.5")
    base, baked = _read_all(sd1["base"]), _read_all(out)
    want = {}
    for truth, w in ((sd1["truth"], 0.5), (sd1["truth2"], -1.5)):
        for name, delta in truth.items():
            key = _single_key(name)
            want[key] = want.get(key, base[key]) + w * delta
    assert _changed(base, baked) == set(want)
    for k, v in want.items():
        torch.testing.assert_close(baked[k], v, atol=ATOL, rtol=0)


def test_diffusers_folder_in_and_out(sd1):
    """The folder gives the same baked tensors as the single file; a diffusers-layout output holds what
    diffusers fuses, under its own names."""
    single = sd1["root"] / "from_single.safetensors"
    from_folder = sd1["root"] / "from_folder.safetensors"
    _bake(sd1["base"], single, str(sd1["peft"]))
    _bake(sd1["folder"], from_folder, str(sd1["peft"]))
    a, b = _read_all(single), _read_all(from_folder)
    assert set(b) <= set(a) and len(b) > 1000  # the folder has no schedule buffers
    assert not _changed(a, b)
    out = sd1["root"] / "baked_folder"
    _bake(sd1["base"], out, str(sd1["peft"]), layout="diffusers")
    got = _read_all(out / "unet" / "diffusion_pytorch_model.safetensors")
    ref = _fused(sd1["folder"], sd1["peft"], single=False)
    assert got.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=ATOL, rtol=0)


def test_fused_open_clip_in_proj_gets_delta_on_its_rows(tmp_path):
    """SD2's open_clip stores q/k/v as one in_proj_weight: a q_proj / v_proj LoRA changes those rows only,
    and the diffusers-layout output (q/k/v apart) holds the same values."""
    base = save_safetensors(zoo_unet.build_single_file("sd2"), tmp_path / "sd2.safetensors")
    mods = {
        "text_encoder": [
            "text_model.encoder.layers.0.self_attn.q_proj",
            "text_model.encoder.layers.0.self_attn.v_proj",
        ]
    }
    tensors, truth = zoo_bake.kohya_lora("sd2", mods, rank=3, alpha=1.5)
    lora = save_safetensors(tensors, tmp_path / "te.safetensors")
    out = tmp_path / "baked.safetensors"
    _bake(base, out, str(lora))
    key = "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"
    b, o = _read_all(base), _read_all(out)
    assert _changed(b, o) == {key}
    w = b[key].shape[0] // 3
    dq, dv = (truth[f"text_encoder/text_model.encoder.layers.0.self_attn.{p}_proj"] for p in "qv")
    torch.testing.assert_close(o[key][:w], b[key][:w] + dq, atol=ATOL, rtol=0)
    assert torch.equal(o[key][w : 2 * w], b[key][w : 2 * w])
    torch.testing.assert_close(o[key][2 * w :], b[key][2 * w :] + dv, atol=ATOL, rtol=0)
    folder = tmp_path / "baked_folder"
    _bake(base, folder, str(lora), layout="diffusers")
    te = _read_all(folder / "text_encoder" / "model.safetensors")
    for i, p in enumerate("qkv"):
        assert torch.equal(
            te[f"text_model.encoder.layers.0.self_attn.{p}_proj.weight"], o[key][i * w : (i + 1) * w]
        )


def test_diff_shows_the_lora_modules_only(sd1):
    from sdlens.analysis.diff import diff

    out = sd1["root"] / "diffed.safetensors"
    _bake(sd1["base"], out, str(sd1["kohya"]))
    res = diff(sd1["base"], out)
    changed = {t.key for t in res.tensors if t.changed}
    want = {
        *(f"clip_l/{m}.weight" for m in KOHYA_MODULES["text_encoder"]),
        *(
            "denoiser/" + _single_key(f"unet/{m}").removeprefix("model.diffusion_model.")
            for m in KOHYA_MODULES["unet"]
        ),
    }
    assert changed == want
    assert not res.only_a and not res.only_b


def test_fp16_output_provenance_and_report(sd1):
    out = sd1["root"] / "fp16.safetensors"
    res = json.loads(json.dumps(_bake(sd1["base"], out, f"{sd1['kohya']}:0.5", dtype="fp16")))  # as --json
    n = len(sd1["truth"])
    assert res["verification"]["ok"] and res["verification"]["baked"] == n
    assert res["plan"]["counts"]["baked"] == n
    with open_checkpoint(out) as ck:
        prov = json.loads(ck.metadata["sdlens.provenance"])[-1]
        base = _read_all(sd1["base"])
        for name, delta in sd1["truth"].items():
            k = _single_key(name)
            assert ck.tensors[k].dtype == "F16"
            assert torch.equal(ck.read(k), (base[k] + 0.5 * delta).half())
    assert prov["merged_loras"] == [
        {"file": "kohya.safetensors", "sha256": _sha(sd1["kohya"]), "weight": 0.5, "modules": n}
    ]


# --------------------------------------------------------------------------- refusals


def _refused(cli, sd1, out: Path, lora: Path, *extra: str) -> str:
    before = {p: _sha(p) for p in (sd1["base"], lora)}
    r = cli("convert", str(sd1["base"]), str(out), "--merge-lora", str(lora), *extra)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert {p: _sha(p) for p in before} == before
    return lines[0]


def test_refusal_is_one_line_and_leaves_inputs_alone(sd1, cli, tmp_path):
    """An SDXL LoRA (its metadata says so) on the SD1 file, through the CLI."""
    xl_mods = {"unet": ["down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"]}
    xl, _ = zoo_bake.kohya_lora("sdxl", xl_mods)
    xl_path = save_safetensors(xl, tmp_path / "xl.safetensors", {"ss_base_model_version": "sdxl_base_v1-0"})
    out = tmp_path / "out.safetensors"
    line = _refused(cli, sd1, out, xl_path)
    assert "xl.safetensors" in line and "a LoRA for SDXL" in line
    assert not out.exists()


def _plan_refused(sd1, path: Path) -> str:
    with pytest.raises(SdlensError) as e:
        make_plan(sd1["base"], path.parent / "o.safetensors", ConvertOptions(merge_lora=[str(path)]))
    assert path.name in str(e.value)
    return str(e.value)


def test_other_family_and_unsupported_networks_refused(sd1, tmp_path):
    # SDXL modules without metadata: te1/te2 scopes and LDM names SD1 lacks match nothing
    xl, _ = zoo_bake.kohya_lora(
        "sdxl",
        {
            "unet": ["down_blocks.2.attentions.0.transformer_blocks.1.attn1.to_q"],
            "text_encoder_2": ["text_model.encoder.layers.0.self_attn.q_proj"],
        },
    )
    why = _plan_refused(sd1, save_safetensors(xl, tmp_path / "xl.safetensors"))
    assert "2 of 2 LoRA modules match no tensor" in why and "lora_te2_text_model" in why
    # SDXL cross-attention (context 80 wide, SD1's is 32): a shape mismatch
    xl, _ = zoo_bake.kohya_lora(
        "sdxl", {"unet": ["down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"]}
    )
    assert "change but" in _plan_refused(sd1, save_safetensors(xl, tmp_path / "xl2.safetensors"))
    loha = {
        f"lora_unet_down_blocks_0_attentions_0_proj_in.{r}": torch.zeros(s)
        for r, s in (
            ("hada_w1_a", (8, 2)),
            ("hada_w1_b", (2, 8)),
            ("hada_w2_a", (8, 2)),
            ("hada_w2_b", (2, 8)),
        )
    }
    loha["lora_unet_down_blocks_0_attentions_0_proj_in.alpha"] = torch.tensor(2.0)
    assert "LoHa is not supported yet" in _plan_refused(
        sd1, save_safetensors(loha, tmp_path / "loha.safetensors")
    )
    dora, _ = zoo_bake.kohya_lora("sd1", {"unet": KOHYA_MODULES["unet"][:1]})
    stem = next(iter(dora)).rsplit(".", 2)[0]
    dora[f"{stem}.dora_scale"] = torch.ones(8, 1)
    assert "DoRA is not supported yet" in _plan_refused(
        sd1, save_safetensors(dora, tmp_path / "dora.safetensors")
    )


def test_bad_lora_files_refused_naming_them(sd1, tmp_path):
    tensors, _ = zoo_bake.kohya_lora("sd1", {"unet": KOHYA_MODULES["unet"][:1]})
    nan = dict(tensors)
    k = next(k for k in nan if k.endswith("lora_up.weight"))
    nan[k] = nan[k].clone()
    nan[k][0, 0] = float("nan")
    cases = {
        "nan.safetensors": (nan, "non-finite"),
        "wide.safetensors": ({k2: torch.cat([v, v], 1) if "up" in k2 else v for k2, v in tensors.items()},
                             "are no LoRA pair"),
    }  # fmt: skip
    for name, (t, why) in cases.items():
        path = save_safetensors(t, tmp_path / name)
        with pytest.raises(SdlensError) as e:
            make_plan(sd1["base"], tmp_path / "o.safetensors", ConvertOptions(merge_lora=[str(path)]))
        assert name in str(e.value) and why in str(e.value), str(e.value)


def test_targets_dropped_by_extract_and_out_onto_the_lora_refused(sd1, tmp_path):
    opts = ConvertOptions(merge_lora=[str(sd1["kohya"])], extract=["unet"])
    with pytest.raises(SdlensError, match="would not be written"):
        make_plan(sd1["base"], tmp_path / "o.safetensors", opts)
    lora = tmp_path / "mine.safetensors"
    lora.write_bytes(sd1["kohya"].read_bytes())
    before = _sha(lora)
    plan = make_plan(sd1["base"], lora, ConvertOptions(merge_lora=[str(lora)]))
    with pytest.raises(SdlensError, match="or a LoRA to merge"):
        convert(plan, overwrite=True)
    assert _sha(lora) == before


def test_parse_merge_lora_windows_safe():
    assert parse_merge_lora("a.safetensors") == LoraSpec(Path("a.safetensors"), 1.0)
    assert parse_merge_lora("a.safetensors:0.5") == LoraSpec(Path("a.safetensors"), 0.5)
    assert parse_merge_lora("a.safetensors:-1.25") == LoraSpec(Path("a.safetensors"), -1.25)
    assert parse_merge_lora(r"C:\loras\x.safetensors") == LoraSpec(Path(r"C:\loras\x.safetensors"), 1.0)
    assert parse_merge_lora(r"C:\loras\x.safetensors:2") == LoraSpec(Path(r"C:\loras\x.safetensors"), 2.0)
    with pytest.raises(SdlensError, match="finite"):
        parse_merge_lora("a.safetensors:nan")


XL_MODULES = {
    "unet": [
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
        "down_blocks.2.attentions.0.transformer_blocks.1.attn2.to_k",
        "up_blocks.0.resnets.0.conv1",
    ],
    "text_encoder": ["text_model.encoder.layers.0.self_attn.q_proj", "text_model.encoder.layers.0.self_attn.out_proj",
                     "text_model.encoder.layers.1.mlp.fc1"],
    "text_encoder_2": ["text_model.encoder.layers.1.self_attn.k_proj", "text_model.encoder.layers.1.self_attn.out_proj",
                       "text_model.encoder.layers.0.mlp.fc2"],
}  # fmt: skip


def _canonical(path: Path) -> dict[str, torch.Tensor]:
    from sdlens.arch.canonical import canonical_index, read_canonical

    with open_checkpoint(path) as ck:
        index, _ = canonical_index(ck.tensors, ck.configs)
        return {name: read_canonical(ck, ref) for name, ref in index.items()}


def test_kohya_sdxl_lora_ldm_names_and_two_text_encoders_equals_diffusers(tmp_path):
    """SDXL: kohya's LDM UNet names, lora_te1_ / lora_te2_, the single file's open_clip bigG with fused q/k/v."""
    import diffusers
    import transformers

    from sdlens.arch.keymap.clip import normalize_hf_clip
    from sdlens.arch.keymap.unet import unet_diffusers_to_ldm

    base = save_safetensors(zoo_unet.build_single_file("sdxl"), tmp_path / "xl.safetensors")
    folder = zoo_unet.write_diffusers_folder("sdxl", tmp_path / "xl_folder")
    tensors, _ = zoo_bake.kohya_lora("sdxl", XL_MODULES, rank=4, alpha=3.0, seed=3)
    lora = save_safetensors(tensors, tmp_path / "xl_lora.safetensors")
    out = tmp_path / "baked.safetensors"
    _bake(base, out, str(lora))

    unet = diffusers.UNet2DConditionModel.from_pretrained(folder / "unet")
    te1 = transformers.CLIPTextModel.from_pretrained(folder / "text_encoder")
    te2 = transformers.CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2")
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=None, text_encoder=te1, text_encoder_2=te2, tokenizer=None, tokenizer_2=None, unet=unet,
        scheduler=None,
    )  # fmt: skip
    pipe.load_lora_weights(str(lora))
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    cfg = zoo_unet.tiny_config("sdxl")["unet"]
    fused = {f"denoiser/{k}": v for k, v in unet_diffusers_to_ldm(unet.state_dict(), cfg).items()}
    for comp, te in (("clip_l", te1), ("clip_g", te2)):
        fused.update({f"{comp}/{k}": v for k, v in normalize_hf_clip(te.state_dict()).items()})
    b, o = _canonical(base), _canonical(out)
    changed = _changed(b, fused)
    assert len(changed) == sum(len(v) for v in XL_MODULES.values())
    assert _changed(b, o) == changed
    for k in changed:
        torch.testing.assert_close(o[k], fused[k], atol=ATOL, rtol=0)


def test_peft_lora_on_a_flux_original_layout_file_changes_the_fused_rows(tmp_path):
    """A diffusers-named FLUX LoRA on a BFL-layout file: to_q / to_v are rows of ``img_attn.qkv``, a single
    block's to_k rows of ``linear1``; everything else stays bit-identical."""
    from sdlens.testing import zoo_dit

    base = save_safetensors(zoo_dit.build_single_file("flux_dev"), tmp_path / "flux.safetensors")
    ref = zoo_dit.build_denoiser("flux_dev", layout="diffusers")
    gen = torch.Generator().manual_seed(5)
    lora, truth = {}, {}
    for m in (
        "transformer_blocks.0.attn.to_q",
        "transformer_blocks.0.attn.to_v",
        "single_transformer_blocks.0.attn.to_k",
    ):
        w = ref[f"{m}.weight"]
        a, b = (
            torch.randn(2, w.shape[1], generator=gen) * 0.1,
            torch.randn(w.shape[0], 2, generator=gen) * 0.1,
        )
        lora |= {f"transformer.{m}.lora_A.weight": a, f"transformer.{m}.lora_B.weight": b}
        truth[m] = b @ a  # no alpha anywhere: alpha = rank, scale 1
    path = save_safetensors(lora, tmp_path / "flux_lora.safetensors")
    out = tmp_path / "baked.safetensors"
    _bake(base, out, str(path))
    b, o = _read_all(base), _read_all(out)
    assert _changed(b, o) == {"double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight"}
    qkv, lin = "double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight"
    w = ref["transformer_blocks.0.attn.to_q.weight"].shape[0]
    want = b[qkv].clone()
    want[:w] += truth["transformer_blocks.0.attn.to_q"]
    want[2 * w : 3 * w] += truth["transformer_blocks.0.attn.to_v"]
    torch.testing.assert_close(o[qkv], want, atol=ATOL, rtol=0)
    want = b[lin].clone()
    want[w : 2 * w] += truth["single_transformer_blocks.0.attn.to_k"]
    torch.testing.assert_close(o[lin], want, atol=ATOL, rtol=0)


_S = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
_P = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
_PAIR = {f"{_S}.lora_down.weight": torch.ones(2, 8), f"{_S}.lora_up.weight": torch.ones(8, 2)}
_PEFT = {f"{_P}.lora_A.weight": torch.ones(2, 8), f"{_P}.lora_B.weight": torch.ones(8, 2)}


@pytest.mark.parametrize(
    ("tensors", "meta", "weight", "why"),
    [
        ({f"{_S}.lora_down.weight": torch.zeros(0, 8), f"{_S}.lora_up.weight": torch.zeros(8, 0)}, None, "",
         "are no LoRA pair"),
        ({**_PAIR, f"{_S}.alpha": torch.zeros(0)}, None, "", "alpha holds 0 values, not one"),
        ({**_PAIR, f"{_S}.alpha": torch.ones(2)}, None, "", "alpha holds 2 values, not one"),
        (_PEFT, {"unet.alpha_pattern": {"(": 3}}, "", "is not a pattern"),
        (_PEFT, {"unet.lora_alpha": None}, "", "lora_alpha 'None' is not a number"),
        (_PEFT, {"unet.lora_alpha": "x"}, "", "lora_alpha 'x' is not a number"),
        (_PAIR, None, ":1e39", "overflows float32"),
    ],
)  # fmt: skip
def test_crafted_loras_are_refused_in_one_line(sd1, tmp_path, tensors, meta, weight, why):
    """Rank 0, odd alphas, hostile PEFT metadata, an overflowing weight: refused, nothing written."""
    import json

    from sdlens.convert import convert

    lora = save_safetensors(
        tensors, tmp_path / "h.safetensors", {"lora_adapter_metadata": json.dumps(meta)} if meta else None
    )
    out = tmp_path / "o.safetensors"
    with pytest.raises(SdlensError, match=why) as e:
        convert(make_plan(sd1["base"], out, ConvertOptions(merge_lora=[f"{lora}{weight}"], dtype="keep")))
    assert "h.safetensors" in str(e.value) and "\n" not in str(e.value)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["h.safetensors"]


@pytest.mark.parametrize("fmt", ["kohya", "peft"])
def test_sdxl_refiner_lora_extracted_then_baked_back(tmp_path, fmt):
    """The refiner's one text encoder sits in diffusers' text_encoder_2 slot (kohya te2): an extracted LoRA
    bakes back into the refiner (its metadata names the refiner, not SDXL base)."""
    from safetensors.torch import load_file

    from sdlens.analysis.lora_extract import extract_lora
    from sdlens.convert import convert
    from sdlens.testing.zoo_delta import low_rank

    q = "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"
    fc = "conditioner.embedders.0.model.transformer.resblocks.0.mlp.c_fc.weight"
    base = zoo_unet.build_single_file("sdxl_refiner")
    model = dict(base)
    g = torch.Generator().manual_seed(3)
    for key in (q, fc):
        model[key] = base[key] + low_rank(tuple(base[key].shape), 2, 0.1 * float(base[key].norm()), g)
    bpath = save_safetensors(base, tmp_path / "base.safetensors")
    mpath = save_safetensors(model, tmp_path / "model.safetensors")
    lora = tmp_path / "lora.safetensors"
    extract_lora(mpath, bpath, rank=2, fmt=fmt, out=lora)
    baked = tmp_path / "baked.safetensors"
    convert(make_plan(bpath, baked, ConvertOptions(merge_lora=[str(lora)])))
    out = load_file(baked)
    for key in (q, fc):
        d = model[key] - base[key]
        assert float((out[key] - model[key]).norm() / d.norm()) < 1e-4, key
