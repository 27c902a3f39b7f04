"""Canonical naming: EMA copies land on the denoiser's names; open_clip q/k/v are row slices of in_proj."""

from __future__ import annotations

import pytest
import torch

from sdlens.arch.canonical import canonical_index, read_canonical
from sdlens.io.open import open_checkpoint
from sdlens.testing.writers import save_safetensors
from sdlens.testing.zoo_unet import build_diffusers_parts, build_single_file, write_diffusers_folder


def test_ema_names_are_the_denoiser_names(tmp_path):
    path = save_safetensors(build_single_file("sd1", ema=True), tmp_path / "e.safetensors")
    with open_checkpoint(path) as ck:
        idx, family = canonical_index(ck.tensors)
    assert family == "sd1"
    den = {k.split("/", 1)[1] for k in idx if k.startswith("denoiser/")}
    ema = {k.split("/", 1)[1] for k in idx if k.startswith("ema/")} - {"decay", "num_updates"}
    assert ema == den


def test_open_clip_slices_equal_the_transformers_tensors(tmp_path):
    path = save_safetensors(build_single_file("sdxl", seed=4), tmp_path / "x.safetensors")
    hf = build_diffusers_parts("sdxl", seed=4)["text_encoder_2"]
    with open_checkpoint(path) as ck:
        idx, _ = canonical_index(ck.tensors)
        for name in (
            "text_model.encoder.layers.3.self_attn.k_proj.weight",
            "text_model.encoder.layers.3.self_attn.v_proj.bias",
            "text_projection.weight",
        ):
            ref = idx[f"clip_g/{name}"]
            assert torch.equal(read_canonical(ck, ref), hf[name]), name
        assert idx["clip_g/text_model.encoder.layers.3.self_attn.k_proj.weight"].rows is not None
        assert idx["clip_g/text_projection.weight"].transpose


# Names only one layout has (documented in sdlens.arch.canonical): the extras of LDM / sgm single files.
_SINGLE_FILE_EXTRAS = {
    "sd1": {"clip_l/text_model.embeddings.position_ids"},
    "sd2": {"openclip_h/logit_scale", "openclip_h/text_projection.weight"},
    "sdxl": {"clip_l/text_model.embeddings.position_ids", "clip_g/logit_scale"},
    "sdxl_refiner": {"clip_g/logit_scale"},
}


def _compared(name: str, family: str) -> bool:
    if name.startswith("schedule/"):
        return False  # diffusers keeps the schedule in scheduler_config.json
    if family == "sd2" and name.startswith("openclip_h/text_model.encoder.layers.23."):
        return False  # SD2 skips open_clip's last layer; diffusers drops it
    return name not in _SINGLE_FILE_EXTRAS[family]


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "sdxl_refiner"])
def test_single_file_and_diffusers_folder_align_tensor_for_tensor(tmp_path, family):
    single = save_safetensors(build_single_file(family, seed=3), tmp_path / "m.safetensors")
    folder = write_diffusers_folder(family, tmp_path / "m", seed=3)
    with open_checkpoint(single) as ca, open_checkpoint(folder) as cb:
        ia, fa = canonical_index(ca.tensors, getattr(ca, "configs", None))
        ib, fb = canonical_index(cb.tensors, getattr(cb, "configs", None))
        assert fa == fb == family
        assert {n for n in ia if _compared(n, family)} == set(ib)
        comps = {n.split("/")[0] for n in ib}
        assert {"denoiser", "vae_encoder", "vae_decoder"} <= comps and len(comps) >= 4
        for name, ref in ib.items():
            a, b = read_canonical(ca, ia[name]), read_canonical(cb, ref)
            assert tuple(a.shape) == tuple(b.shape) == ia[name].shape == ref.shape, name
            assert torch.equal(a, b), name


def test_vae_attention_is_canonically_2d(tmp_path):
    path = save_safetensors(build_single_file("sd1"), tmp_path / "v.safetensors")
    with open_checkpoint(path) as ck:
        idx, _ = canonical_index(ck.tensors)
        ref = idx["vae_decoder/decoder.mid.attn_1.q.weight"]
        assert len(ck.tensors[ref.key].shape) == 4 and len(ref.shape) == 2
        assert tuple(read_canonical(ck, ref).shape) == ref.shape


def test_nai_clip_names_equal_the_standard_ones(tmp_path):
    a = save_safetensors(build_single_file("sd1", seed=5), tmp_path / "std.safetensors")
    b = save_safetensors(build_single_file("sd1", seed=5, nai_clip=True), tmp_path / "nai.safetensors")
    with open_checkpoint(a) as ca, open_checkpoint(b) as cb:
        ia, _ = canonical_index(ca.tensors)
        ib, _ = canonical_index(cb.tensors)
        assert set(ia) == set(ib)
        assert (
            ia["clip_l/text_model.final_layer_norm.weight"].key
            != ib["clip_l/text_model.final_layer_norm.weight"].key
        )
        for name in ia:
            assert torch.equal(read_canonical(ca, ia[name]), read_canonical(cb, ib[name])), name


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_ema_without_a_denoiser_uses_the_released_layout(tmp_path, family):
    sd = build_single_file(family, seed=1, ema=True)
    full = save_safetensors(sd, tmp_path / "full.safetensors")
    only = save_safetensors(
        {k: v for k, v in sd.items() if k.startswith("model_ema.")}, tmp_path / "ema.safetensors"
    )
    with open_checkpoint(full) as cf, open_checkpoint(only) as co:
        i_full, _ = canonical_index(cf.tensors)
        i_only, _ = canonical_index(co.tensors)
    assert set(i_only) == {n for n in i_full if n.startswith("ema/")}
    assert {"ema/decay", "ema/num_updates", "ema/input_blocks.0.0.weight"} <= set(i_only)


def test_bare_diffusers_unet_file_maps_with_the_released_config(tmp_path):
    path = save_safetensors(build_diffusers_parts("sdxl", seed=2)["unet"], tmp_path / "unet.safetensors")
    ldm = save_safetensors(build_single_file("sdxl", seed=2), tmp_path / "ldm.safetensors")
    with open_checkpoint(path) as cu, open_checkpoint(ldm) as cl:
        iu, fam = canonical_index(cu.tensors)
        il, _ = canonical_index(cl.tensors)
        assert fam == "sdxl"
        assert set(iu) == {n for n in il if n.startswith("denoiser/")}
        for name in (
            "denoiser/input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight",
            "denoiser/label_emb.0.0.weight",
        ):
            assert torch.equal(read_canonical(cu, iu[name]), read_canonical(cl, il[name]))
