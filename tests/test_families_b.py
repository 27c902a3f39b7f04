"""HiDream-I1, Chroma, Wan 2.1 and LTX-Video: records, key maps checked against diffusers' own converters,
detection from zoo files in each layout (and not confused with their neighbours), released parameter counts."""

from __future__ import annotations

import pytest
import torch
from diffusers.loaders import single_file_utils as sfu

from sdlens.analysis.inspect import inspect
from sdlens.arch import build as B
from sdlens.arch import families
from sdlens.arch import registry as R
from sdlens.arch.blocks import block_names, block_of
from sdlens.arch.keymap.chroma import chroma_diffusers_to_original, chroma_original_to_diffusers
from sdlens.arch.keymap.ltx_video import ltx_diffusers_to_original, ltx_original_to_diffusers
from sdlens.arch.keymap.wan import wan_diffusers_to_original, wan_original_to_diffusers
from sdlens.testing import zoo_dit
from sdlens.testing.writers import save_safetensors
from sdlens.testing.zoo_dit import meta_state_dict
from sdlens.testing.zoo_new_b import FAMILY_IDS, build_denoiser, write_denoiser

COMFY = "model.diffusion_model."
# (family, layout, key prefix): every layout each family is released in
CASES = [
    ("hidream_i1", "diffusers", ""),
    ("hidream_i1", "diffusers", COMFY),
    ("chroma", "original", ""),
    ("chroma", "original", COMFY),
    ("chroma", "diffusers", ""),
    *(
        (w, lay, "")
        for w in ("wan21_t2v_1_3b", "wan21_t2v_14b", "wan21_i2v_14b")
        for lay in ("original", "diffusers")
    ),
    ("wan21_t2v_14b", "original", COMFY),
    ("ltx_video", "original", ""),
    ("ltx_video", "original", COMFY),
    ("ltx_video", "diffusers", ""),
]


def _random(sd: dict[str, torch.Tensor], *, rows_only: bool = False) -> dict[str, torch.Tensor]:
    """Seeded values for a meta state dict; ``rows_only`` keeps only dim 0 (enough for maps that slice rows)."""
    g = torch.Generator().manual_seed(0)
    return {
        k: torch.randn((v.shape[0],) + (1,) * (v.ndim - 1) if rows_only else tuple(v.shape), generator=g)
        for k, v in sd.items()
    }


def _check_map(sd, to_original, to_diffusers, converter):
    original = to_original(sd)
    assert original.keys() != sd.keys()
    back = to_diffusers(original)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    theirs = converter(dict(original))  # diffusers' single-file converter, from our original layout
    assert set(theirs) == set(sd)
    assert all(torch.equal(theirs[k], sd[k]) for k in sd)
    return original


def test_wan_map_matches_diffusers_converter():
    sd = build_denoiser("wan21_i2v_14b", layout="diffusers")  # I2V: all of T2V's keys plus the image ones
    original = _check_map(
        sd, wan_diffusers_to_original, wan_original_to_diffusers, sfu.convert_wan_transformer_to_diffusers
    )
    assert {
        "head.modulation",
        "blocks.0.cross_attn.k_img.weight",
        "blocks.0.norm3.weight",
        "img_emb.proj.4.bias",
        "time_projection.1.weight",
    } <= set(original)
    assert sfu.infer_diffusers_model_type({COMFY + k: v for k, v in original.items()}) == "wan-i2v-14B"


def test_ltx_map_matches_diffusers_converter():
    sd = build_denoiser("ltx_video", layout="diffusers")
    original = _check_map(
        sd,
        ltx_diffusers_to_original,
        ltx_original_to_diffusers,
        sfu.convert_ltx_transformer_checkpoint_to_diffusers,
    )
    assert {
        "patchify_proj.weight",
        "adaln_single.linear.weight",
        "transformer_blocks.27.attn1.q_norm.weight",
    } <= set(original)


def test_chroma_map_matches_diffusers_converter():
    # diffusers' converter hard-codes the released width (3072): build at that width, few blocks, and keep only
    # each tensor's rows (the map and the converter only cut and join rows)
    meta = meta_state_dict(
        "ChromaTransformer2DModel",
        {"num_layers": 2, "num_single_layers": 2, "approximator_layers": 2, "approximator_hidden_dim": 32},
    )
    original = _check_map(
        _random(meta, rows_only=True),
        chroma_diffusers_to_original,
        chroma_original_to_diffusers,
        sfu.convert_chroma_transformer_checkpoint_to_diffusers,
    )
    assert original["single_blocks.0.linear1.weight"].shape[0] == 3 * 3072 + 4 * 3072
    assert not any(".img_mod." in k or ".modulation." in k for k in original)


@pytest.fixture(scope="module")
def full_files(tmp_path_factory):
    """Released shapes, sparse files (headers only), written once for the module."""
    root = tmp_path_factory.mktemp("famb")
    cache = {}

    def get(family: str, layout: str, prefix: str = ""):
        key = (family, layout, prefix)
        if key not in cache:
            cache[key] = write_denoiser(
                root / f"{family}-{layout}-{len(prefix)}.safetensors",
                family,
                size="full",
                layout=layout,
                prefix=prefix,
            )
        return cache[key]

    return get


@pytest.mark.parametrize(("family", "layout", "prefix"), CASES)
def test_detected_from_released_shapes(full_files, family, layout, prefix):
    r = inspect(full_files(family, layout, prefix))
    assert (r.family, r.confidence, r.kind) == (family, "high", "denoiser only")
    assert r.nonstandard == [] and r.unknown_keys == []
    assert r.conventions == ["ldm" if prefix else ("diffusers" if layout == "diffusers" else "bare")]


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_tiny_files_keep_family_and_say_widths_differ(tmp_path, family):
    for layout in ("diffusers",) if family == "hidream_i1" else ("diffusers", "original"):
        r = inspect(write_denoiser(tmp_path / f"{layout}.safetensors", family, layout=layout))
        assert (r.family, r.confidence) == (family, "medium")
        assert r.nonstandard and all("released model" in n for n in r.nonstandard)
        assert not any("blocks" in n for n in r.nonstandard)  # depths are the released ones


def test_chroma_and_flux_not_confused(full_files, tmp_path):
    for fam in ("flux_dev", "flux_schnell"):
        for layout in ("original", "diffusers"):
            sd = zoo_dit.build_denoiser(fam, size="full", layout=layout)
            r = inspect(save_safetensors(sd, tmp_path / f"{fam}-{layout}.safetensors"))
            assert (r.family, r.confidence) == (fam, "high")
            assert "Chroma approximator (distilled_guidance_layer): absent" in r.reasons
    for layout in ("original", "diffusers"):
        r = inspect(full_files("chroma", layout))
        assert r.family == "chroma" and "Chroma approximator (distilled_guidance_layer): present" in r.reasons
        assert "per-block modulation layers: absent" in r.reasons


def test_wan_sizes_and_tasks_not_confused(full_files, tmp_path):
    got = {
        f: inspect(full_files(f, "original")) for f in ("wan21_t2v_1_3b", "wan21_t2v_14b", "wan21_i2v_14b")
    }
    assert {f: r.family for f, r in got.items()} == {f: f for f in got}
    assert "hidden width = 1536" in got["wan21_t2v_1_3b"].reasons
    assert "DiT blocks = 40" in got["wan21_t2v_14b"].reasons
    assert "CLIP image embedding (img_emb): present" in got["wan21_i2v_14b"].reasons
    # at tiny widths the released depth still decides the size
    for family, depth in (("wan21_t2v_1_3b", 40), ("wan21_t2v_14b", 30)):
        r = inspect(write_denoiser(tmp_path / f"{family}.safetensors", family, config={"num_layers": depth}))
        assert r.family == ("wan21_t2v_14b" if depth == 40 else "wan21_t2v_1_3b")


def test_ltx_and_pixart_not_confused(full_files, tmp_path):
    for fam in ("pixart_alpha", "pixart_sigma"):
        for layout in ("original", "diffusers"):
            sd = zoo_dit.build_denoiser(fam, size="full", layout=layout)
            r = inspect(save_safetensors(sd, tmp_path / f"{fam}-{layout}.safetensors"))
            assert r.family == fam
    r = inspect(full_files("ltx_video", "original"))  # adaln_single and 28 blocks, as PixArt has
    assert (r.family, r.confidence) == ("ltx_video", "high")
    assert "query/key RMS norms: present" in r.reasons


def test_unknown_variant_stays_unknown(tmp_path):
    # a Wan 2.2 TI2V-5B-like transformer: 48 latent channels in and out, no image embedding
    r = inspect(
        write_denoiser(
            tmp_path / "wan22.safetensors", "wan21_t2v_1_3b", config={"in_channels": 48, "out_channels": 48}
        )
    )
    assert (r.family, r.confidence) == ("unknown", "low")
    assert r.reasons == ["denoiser structure matches no known family"]
    # a FLUX-style file that has both the approximator and per-block modulation is neither FLUX nor Chroma
    flux = zoo_dit.build_denoiser("flux_schnell", layout="original")
    chroma = build_denoiser("chroma", layout="original")
    hybrid = {**flux, **{k: v for k, v in chroma.items() if k.startswith("distilled_guidance_layer.")}}
    r = inspect(save_safetensors(hybrid, tmp_path / "hybrid.safetensors"))
    assert r.family == "unknown"


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_meta_build_equals_released_count(family):
    fam = families.get(family)
    model = B.build_denoiser(fam.denoiser.cls_name, dict(fam.denoiser.config))
    assert sum(p.numel() for p in model.parameters()) == fam.denoiser.params
    assert fam.denoiser.params_source


def test_records_complete():
    for family in FAMILY_IDS:
        fam = families.get(family)
        assert fam.pipeline.prediction == "flow" and fam.pipeline.scheduler and fam.pipeline.diffusers_class
        assert all(t.kind in R.COMPONENT_LABELS for t in fam.text_encoders)
        assert all(slot in R.COMPONENT_LABELS or slot in ("denoiser", "vae") for slot in fam.diffusers_slots)
        assert families.resolve(fam.pipeline.name) == family
    assert families.get("hidream_i1").text_encoder_kinds == ("clip_l", "clip_g", "t5", "llama31_8b")
    assert families.get("chroma").text_encoder_kinds == ("t5",)
    assert families.get("wan21_i2v_14b").diffusers_slots["clip_vision_h"] == "image_encoder"
    assert (families.get("ltx_video").latent_channels, families.get("wan21_t2v_14b").latent_channels) == (
        128,
        16,
    )
    assert families.resolve("flux") == "flux_dev" and families.resolve("wan") == "wan21_t2v_1_3b"


def test_merge_blocks():
    assert block_names("wan21_t2v_1_3b") == ["BASE", "IN", *(f"B{i:02d}" for i in range(30)), "OUT"]
    assert block_of("denoiser/blocks.29.self_attn.q.weight", "wan21_t2v_1_3b") == "B29"
    assert block_of("denoiser/head.head.weight", "wan21_t2v_14b") == "OUT"
    assert block_of("denoiser/time_projection.1.weight", "wan21_t2v_14b") == "IN"
    assert block_of("denoiser/distilled_guidance_layer.layers.3.in_layer.weight", "chroma") == "IN"
    assert block_of("denoiser/single_blocks.37.linear1.weight", "chroma") == "S37"
    assert block_of("denoiser/double_stream_blocks.15.block.ff_i.gate.weight", "hidream_i1") == "D15"
    assert block_of("denoiser/single_stream_blocks.31.block.attn1.to_q.weight", "hidream_i1") == "S31"
    assert block_of("denoiser/transformer_blocks.27.attn2.k_norm.weight", "ltx_video") == "B27"
    assert block_of("denoiser/scale_shift_table", "ltx_video") == "OUT"


def test_cli_inspect_names_family(cli, tmp_path):
    path = write_denoiser(tmp_path / "wan.safetensors", "wan21_t2v_1_3b", layout="original")
    out = cli("inspect", str(path))
    assert out.returncode == 0, out.stderr
    assert "Wan 2.1 T2V 1.3B" in out.stdout


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_config_from_shapes_rebuilds_the_file(tmp_path, family):
    """A tiny file's shapes give back the config it was built with: the class built from it has the file's
    parameters exactly, in both layouts."""
    from sdlens.arch.detect import split_components
    from sdlens.io.open import open_checkpoint
    from sdlens.testing.zoo_new_b import denoiser_config

    fam = families.get(family)
    _, built_cfg = denoiser_config(family, "tiny")
    for layout in ("diffusers",) if fam.denoiser.keymap is None else ("diffusers", "original"):
        with open_checkpoint(write_denoiser(tmp_path / f"{layout}.safetensors", family, layout=layout)) as ck:
            keys = split_components(dict(ck.tensors)).components["denoiser"].keys
        cfg = fam.denoiser.config_from_shapes(keys)
        model = B.build_denoiser(fam.denoiser.cls_name, cfg)
        assert sum(p.numel() for p in model.parameters()) == sum(t.numel for t in keys.values())
        for k in ("num_layers", "num_attention_heads", "attention_head_dim", "in_channels"):
            assert cfg[k] == built_cfg.get(k, cfg[k]), k
    # on the released shapes it gives the released config
    full = build_denoiser(family, size="full")
    assert (
        B.count_params(B.build_denoiser(fam.denoiser.cls_name, fam.denoiser.config_from_shapes(full)))
        == fam.denoiser.params
    )


def test_diffusers_folder_names_its_missing_parts(tmp_path):
    import json

    from sdlens.testing.zoo_new_b import denoiser_config

    root = tmp_path / "Wan2.1-T2V-1.3B-Diffusers"
    (root / "transformer").mkdir(parents=True)
    cls_name, cfg = denoiser_config("wan21_t2v_1_3b", "full")
    write_denoiser(
        root / "transformer" / "diffusion_pytorch_model.safetensors", "wan21_t2v_1_3b", size="full"
    )
    (root / "transformer" / "config.json").write_text(json.dumps({"_class_name": cls_name, **cfg}))
    (root / "model_index.json").write_text(
        json.dumps({"_class_name": "WanPipeline", "transformer": ["diffusers", cls_name]})
    )
    r = inspect(root)
    assert (r.family, r.confidence, r.kind) == ("wan21_t2v_1_3b", "high", "denoiser only")
    assert r.missing == ["umT5-XXL text encoder (load it separately)", "VAE (load one separately)"]
