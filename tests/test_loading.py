"""``inspect``'s "How to load": loader per tool, ComfyUI folder and the companion files a file lacks, from the
family records (issue 18, point 4). Truth: ComfyUI's nodes.py (node classes, CLIPLoader / DualCLIPLoader
types), ComfyUI-GGUF's nodes (UnetLoaderGGUF, models/unet), diffusers' single-file loaders."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from sdlens.analysis import loading
from sdlens.analysis.inspect import inspect
from sdlens.analysis.loading import advise, how_to_load, load_kind
from sdlens.arch import families
from sdlens.arch.identify import identify
from sdlens.io.open import open_checkpoint
from sdlens.render.inspect_view import render_report

# the `type` choices of ComfyUI's CLIPLoader and DualCLIPLoader (nodes.py)
CLIP_TYPES = {
    "stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
    "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image",
}  # fmt: skip
DUAL_CLIP_TYPES = {"sdxl", "sd3", "flux", "hunyuan_video", "hidream"}
TE_FOLDER = "models/text_encoders"
DEN_FOLDER = "models/diffusion_models"


def _advice(path: Path, file_format: str | None = None):
    """The advice for a file, optionally as if its format were another (GGUF before the reader lands)."""
    with open_checkpoint(path) as ck:
        ident = identify(ck.tensors, ck.configs, ck.metadata)
        return how_to_load(ident, file_format or ck.format)


def _whats(advice) -> list[str]:
    return [c.what for c in advice.companions]


# ------------------------------------------------------------------------------------ zoo files, known truth


def test_sdxl_full_checkpoint(zoo):
    a = inspect(zoo["sdxl_fp16"].path).loading
    assert (a.known, a.kind, a.family) == (True, "checkpoint", "sdxl")
    assert a.comfy.startswith("CheckpointLoaderSimple") and a.comfy_folder == "models/checkpoints"
    assert a.diffusers == "StableDiffusionXLPipeline.from_single_file(path)"
    assert a.companions == []
    assert a.a1111.startswith("yes") and a.forge == "yes" and a.webui_folder == "models/Stable-diffusion"


def test_flux_transformer_only(zoo):
    a = _advice(zoo["flux_dev"].path)
    assert (a.kind, a.family) == ("denoiser", "flux_dev")
    assert a.comfy.startswith("UNETLoader") and a.comfy_folder.startswith(DEN_FOLDER)
    assert a.diffusers.startswith("FluxTransformer2DModel.from_single_file(path)")
    assert "FluxPipeline.from_pretrained(" in a.diffusers and "transformer=model" in a.diffusers
    te, vae = a.companions
    assert te.what == "CLIP-L + T5-XXL text encoders"
    assert te.comfy == "DualCLIPLoader (type flux)" and te.folder.startswith(TE_FOLDER)
    assert vae.what.startswith("FLUX VAE (ae.safetensors") and "16-channel" in vae.what
    assert vae.comfy.startswith("VAELoader") and vae.folder == "models/vae"
    assert a.a1111 == "no" and a.forge.startswith("yes")


def test_flux_gguf(zoo):
    """A GGUF FLUX transformer (format "gguf", as the GGUF reader reports it): ComfyUI-GGUF's loader."""
    a = _advice(zoo["flux_dev"].path, "gguf")
    assert a.kind == "gguf"
    assert a.comfy.startswith("UnetLoaderGGUF") and a.comfy_folder.startswith("models/unet")
    assert "GGUFQuantizationConfig" in a.diffusers and a.diffusers.startswith("FluxTransformer2DModel")
    assert _whats(a) == ["CLIP-L + T5-XXL text encoders", "FLUX VAE (ae.safetensors, 16-channel)"]
    assert any("ComfyUI-GGUF" in n for n in a.notes)


def test_sd35_transformer(zoo):
    a = _advice(zoo["sd35_large"].path)
    assert (a.kind, a.family) == ("denoiser", "sd35")
    te, vae = a.companions
    assert te.what == "CLIP-L + CLIP-G + T5-XXL text encoders" and te.comfy == "TripleCLIPLoader"
    assert vae.comfy.startswith("VAELoader")
    assert a.diffusers.startswith("SD3Transformer2DModel.from_single_file(path)")


def test_bare_sdxl_unet(zoo):
    a = _advice(zoo["sdxl_unet_only"].path)
    assert a.comfy.startswith("UNETLoader")
    te, vae = a.companions
    assert (te.what, te.comfy) == ("CLIP-L + CLIP-G text encoders", "DualCLIPLoader (type sdxl)")
    assert vae.what.startswith("SDXL VAE")


def test_bundled_flux_needs_nothing(zoo):
    a = _advice(zoo["flux_bundled"].path)
    assert (a.kind, a.comfy_folder, a.companions) == ("checkpoint", "models/checkpoints", [])
    assert a.diffusers == "FluxPipeline.from_single_file(path)"


def test_vae_file(zoo):
    """A 4-channel VAE fits several families: ComfyUI's node and folder hold, the rest is not told."""
    a = _advice(zoo["vae_sd"].path)
    assert (a.known, a.kind) == (False, "vae")
    assert a.comfy.startswith("VAELoader") and a.comfy_folder == "models/vae"
    assert a.diffusers == "unknown" and a.a1111 == "unknown"
    assert any(n.startswith("fits SD1.x") for n in a.notes)


def test_lora(zoo):
    a = _advice(zoo["lora_kohya_flux"].path)
    assert (a.kind, a.family) == ("lora", "flux_dev")
    assert a.comfy.startswith("LoraLoader") and a.comfy_folder == "models/loras"
    assert a.diffusers == "pipe.load_lora_weights(path) on a FluxPipeline"
    assert _whats(a) == ["a FLUX.1-dev model to apply it to"]
    assert a.webui_folder == "models/Lora"


def test_text_encoder_file(zoo):
    a = _advice(zoo["sdxl_text_encoders"].path)
    assert (a.kind, a.family) == ("text_encoder", "sdxl")
    assert a.comfy == "DualCLIPLoader (type sdxl)" and a.comfy_folder.startswith(TE_FOLDER)
    assert "CLIPTextModelWithProjection" in a.diffusers
    assert _whats(a)[0] == "the SDXL base UNet (or a full checkpoint)" and _whats(a)[1].startswith("SDXL VAE")


def test_controlnet(zoo):
    a = _advice(zoo["controlnet_sdxl"].path)
    assert a.comfy.startswith("ControlNetLoader") and a.comfy_folder == "models/controlnet"
    assert "StableDiffusionXLControlNetPipeline" in a.diffusers


def test_diffusers_folder(zoo):
    a = _advice(zoo["sdxl_diffusers"].path)
    assert (a.kind, a.diffusers) == ("diffusers", "StableDiffusionXLPipeline.from_pretrained(folder)")
    assert a.a1111.startswith("no") and a.webui_folder == ""


def test_wan_i2v_needs_the_image_encoder(zoo):
    a = _advice(zoo["wan21_i2v_14b"].path)
    te, vae, image = a.companions
    assert (te.what, te.comfy) == ("umT5-XXL text encoder", "CLIPLoader (type wan)")
    assert vae.what.startswith("Wan 2.1 VAE")
    assert (image.comfy, image.folder, image.optional) == ("CLIPVisionLoader", "models/clip_vision", False)


@pytest.fixture(scope="module")
def flux_sd():
    from sdlens.testing.zoo_dit import build_denoiser

    return {k: v.contiguous() for k, v in build_denoiser("flux_dev").items()}


def test_real_flux_gguf(flux_sd, tmp_path):
    """A FLUX transformer written as ComfyUI-GGUF writes it (Q8_0 where rows are whole blocks, F16 else)."""
    gguf = pytest.importorskip("gguf")
    import numpy as np
    from gguf.quants import quantize

    path = tmp_path / "flux1-dev-Q8_0.gguf"
    w = gguf.GGUFWriter(str(path), "flux")
    for k, v in flux_sd.items():
        a = v.float().numpy()
        if a.ndim == 2 and a.shape[-1] % 32 == 0:
            w.add_tensor(
                k, quantize(a, gguf.GGMLQuantizationType.Q8_0), raw_dtype=gguf.GGMLQuantizationType.Q8_0
            )
        else:
            w.add_tensor(k, a.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    a = inspect(path).loading
    assert (a.kind, a.family) == ("gguf", "flux_dev")
    assert a.comfy.startswith("UnetLoaderGGUF") and a.comfy_folder.startswith("models/unet")
    assert _whats(a) == ["CLIP-L + T5-XXL text encoders", "FLUX VAE (ae.safetensors, 16-channel)"]


def test_real_scaled_fp8_flux(flux_sd, tmp_path):
    """ComfyUI's scaled-fp8 layout (fp8 weights, a scale_weight each, the scaled_fp8 marker)."""
    import torch
    from safetensors.torch import save_file

    sd = {"model.diffusion_model.scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for k, v in flux_sd.items():
        if v.ndim == 2 and k.endswith(".weight"):
            s = (v.abs().max().float() / 448).clamp(min=1e-12)
            sd["model.diffusion_model." + k] = (v.float() / s).to(torch.float8_e4m3fn)
            sd["model.diffusion_model." + k.removesuffix("weight") + "scale_weight"] = s.reshape(())
        else:
            sd["model.diffusion_model." + k] = v.to(torch.bfloat16)
    path = tmp_path / "flux1-dev-fp8-scaled.safetensors"
    save_file(sd, path)
    a = inspect(path).loading
    assert (a.kind, a.family) == ("denoiser", "flux_dev") and a.comfy.startswith("UNETLoader")
    assert any(n.startswith("ComfyUI scaled-fp8 weights") for n in a.notes)


def test_real_nf4_flux(flux_sd, tmp_path):
    """Forge's NF4 FLUX layout (bitsandbytes 4-bit weights with absmax / quant_map / quant_state)."""
    from sdlens.testing.zoo_nf4 import write_nf4

    path = tmp_path / "flux1-dev-bnb-nf4.safetensors"
    write_nf4(path, {"model.diffusion_model." + k: v for k, v in flux_sd.items()}, backend="numpy")
    a = inspect(path).loading
    assert (a.kind, a.family) == ("denoiser", "flux_dev")
    assert a.comfy.startswith("UNETLoaderNF4") and a.comfy_folder == "models/unet"
    assert a.a1111 == "no" and a.forge.startswith("yes")
    assert any(n.startswith("bitsandbytes NF4 / FP4") for n in a.notes)


# ------------------------------------------------------------------------------------ records, no files


def test_every_family_has_loading_and_a_valid_clip_type():
    for fam in families.FAMILIES:
        assert fam.loading is not None, fam.id
        a = advise(fam, "text_encoder", fam.text_encoder_kinds)
        node = a.comfy.split(" ")[0]
        if a.comfy == "unknown":
            continue
        assert (
            node
            == {1: "CLIPLoader", 2: "DualCLIPLoader", 3: "TripleCLIPLoader", 4: "QuadrupleCLIPLoader"}[
                len(fam.text_encoders)
            ]
        ), fam.id
        if node in ("CLIPLoader", "DualCLIPLoader"):
            kind = a.comfy.split("(type ")[1].rstrip(")")
            assert kind in (CLIP_TYPES if node == "CLIPLoader" else DUAL_CLIP_TYPES), (fam.id, kind)


@pytest.mark.parametrize("fam", families.FAMILIES, ids=lambda f: f.id)
def test_bare_denoiser_companions_follow_the_record(fam):
    """A bare denoiser lacks exactly the record's text encoders and VAE (and its other needed slots)."""
    a = advise(fam, "denoiser", {"denoiser"})
    te = a.companions[0]
    for kind in fam.text_encoder_kinds:
        assert loading.R.COMPONENT_LABELS[kind] in te.what
    assert len(a.companions) == 1 + 1 + len(
        [s for s in fam.diffusers_slots if s not in ("denoiser", "vae", *fam.text_encoder_kinds)]
    )
    assert json.loads(json.dumps(a.to_dict()))["family"] == fam.id


def test_sd3_checkpoint_without_t5_lacks_t5():
    a = advise(
        families.get("sd3"), "checkpoint", {"denoiser", "clip_l", "clip_g", "vae_encoder", "vae_decoder"}
    )
    assert [c.what for c in a.companions] == ["T5-XXL text encoder"]
    assert a.companions[0].comfy == "TripleCLIPLoader, with the encoders it has"


def test_stable_cascade_image_encoder_is_optional():
    a = advise(families.get("stable_cascade_c"), "denoiser", {"denoiser"})
    optional = [c.what for c in a.companions if c.optional]
    assert optional == ["CLIP ViT-L/14 image encoder"]
    assert any("stage B" in c.what and "VAELoader" in c.comfy for c in a.companions)


def test_single_clip_l_text_encoder_file():
    a = advise(families.get("sd1"), "text_encoder", {"clip_l"})
    assert a.comfy == "CLIPLoader (type stable_diffusion)" and a.comfy_folder.startswith(TE_FOLDER)


def test_gguf_text_encoder_uses_the_gguf_loader():
    a = advise(families.get("flux_dev"), "text_encoder", {"t5"}, gguf=True)
    assert a.comfy == "DualCLIPLoaderGGUF (type flux)"
    assert [c.what for c in a.companions][1] == "CLIP-L text encoder"


FLUX_FULL = {"denoiser", "clip_l", "t5", "vae_encoder", "vae_decoder"}


def test_nf4_checkpoint():
    """Forge's NF4 FLUX checkpoint: ComfyUI needs the NF4 custom node, Forge loads it, A1111 does not."""
    a = advise(families.get("flux_dev"), "checkpoint", FLUX_FULL, quant={"bitsandbytes"})
    assert a.comfy.startswith("CheckpointLoaderNF4") and a.comfy_folder == "models/checkpoints"
    assert (a.a1111, a.diffusers) == ("no", "unknown") and a.forge.startswith("yes")
    d = advise(families.get("flux_dev"), "denoiser", {"denoiser"}, quant={"bitsandbytes"})
    assert d.comfy.startswith("UNETLoaderNF4") and d.comfy_folder == "models/unet"
    assert advise(families.get("sdxl"), "denoiser", {"denoiser"}, quant={"bitsandbytes"}).forge == "unknown"


def test_scaled_fp8_keeps_the_usual_comfy_loader():
    a = advise(families.get("flux_dev"), "denoiser", {"denoiser"}, quant={"scaled fp8"})
    assert a.comfy.startswith("UNETLoader") and any("scaled-fp8" in n for n in a.notes)


def test_quant_origins():
    from sdlens.io.base import TensorInfo

    plain = {"w": TensorInfo("w", (2,), "F16", "f", 0)}
    assert loading.quant_origins(plain) == set()
    pytest.importorskip("sdlens.io.quant")  # the quantisation records (issue 18's reader work)
    quant = type("Q", (), {"scheme": "NF4"})()
    assert loading.quant_origins({"w": TensorInfo("w", (2,), "F16", "f", 0, quant)}) == {"bitsandbytes"}


def test_uncertain_facts_say_unknown():
    assert advise(families.get("sana"), "denoiser", {"denoiser"}).comfy == "unknown"
    assert advise(families.get("hunyuandit"), "denoiser", {"denoiser"}).comfy == "unknown"
    assert advise(families.get("chroma"), "gguf", {"denoiser"}).comfy == "unknown"


def test_unknown_kind_cannot_tell():
    a = advise(None, "unknown")
    assert not a.known and a.comfy == a.diffusers == a.forge == "unknown" and a.companions == []
    assert not advise(None, "denoiser").known


@pytest.mark.parametrize(
    ("ident_kind", "fmt", "comps", "kind"),
    [
        ("full", "safetensors", {"denoiser", "clip_l", "vae_decoder"}, "checkpoint"),
        ("denoiser", "safetensors", {"denoiser"}, "denoiser"),
        ("denoiser", "safetensors", {"denoiser", "vae_encoder", "vae_decoder"}, "checkpoint"),  # LTX-Video
        ("denoiser", "gguf", {"denoiser"}, "gguf"),
        ("full", "diffusers-folder", {"denoiser", "clip_l", "vae_decoder"}, "diffusers"),
        ("vae", "safetensors", {"vae_decoder"}, "vae"),
        ("unknown", "safetensors", set(), "unknown"),
    ],
)
def test_load_kind(ident_kind, fmt, comps, kind):
    assert load_kind(ident_kind, fmt, comps) == kind


def test_no_family_names_in_the_analysis():
    """Everything comes from the records: the analysis names no family."""
    src = Path(loading.__file__).read_text()
    assert not [f.id for f in families.FAMILIES if f'"{f.id}"' in src or f"'{f.id}'" in src]


# ------------------------------------------------------------------------------------ report, JSON, view


def test_json_and_view(zoo):
    r = inspect(zoo["flux_dev"].path)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["loading"]["comfy"].startswith("UNETLoader")
    assert d["loading"]["companions"][0]["comfy"] == "DualCLIPLoader (type flux)"
    buf = io.StringIO()
    render_report(r, Console(file=buf, width=80, color_system=None))
    out = buf.getvalue()
    assert "How to load (FLUX.1-dev, denoiser only)" in out
    assert "also needs  CLIP-L + T5-XXL text encoders: DualCLIPLoader (type flux)" in out
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 80


def test_cli_json(zoo, cli):
    res = cli("inspect", "--json", str(zoo["sdxl_fp16"].path))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["loading"]["comfy_folder"] == "models/checkpoints"
