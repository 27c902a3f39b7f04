"""Real diffusers / transformers layouts, written by their own ``save_pretrained`` (sharded components, ``.bin``
shards, fp16 variants, ``model_index.json``); paths confined to the folder; malformed folder JSON as one line."""

from __future__ import annotations

import builtins
import io
import json
import os
import shutil
import threading
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sdlens.errors import CheckpointError, SdlensError
from sdlens.io.open import open_checkpoint

# --------------------------------------------------------------------------- real writers (ground truth)


def _save(model, folder: Path, **kw) -> None:
    model.save_pretrained(folder, **kw)


def _index(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text())


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """Tiny models saved by diffusers / transformers: the SD and FLUX pipeline layouts, sharded and not.

    ``truth[name]``: the component's tensors as its unsharded ``save_pretrained`` wrote them."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("real")
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4, layers_per_block=1)
    clip = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=16,
            intermediate_size=24,
            num_hidden_layers=2,
            num_attention_heads=2,
            vocab_size=64,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
        )
    )
    t5 = T5EncoderModel(T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=2))
    flux = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        pooled_projection_dim=16,
        axes_dims_rope=(2, 2, 4),
    )
    models = {"unet": unet, "vae": vae, "clip": clip, "t5": t5, "flux": flux}
    truth = {}
    for name, m in models.items():
        _save(m, root / "single" / name)
        (f,) = (root / "single" / name).glob("*.safetensors")
        truth[name] = load_file(f)

    sd = (
        root / "sd"
    )  # StableDiffusionPipeline: sharded UNet (+ sharded fp16 variant), CLIP (+ fp16), VAE (full only)
    _save(unet, sd / "unet", max_shard_size="40KB")
    _save(clip, sd / "text_encoder")
    _save(vae, sd / "vae")
    (sd / "scheduler").mkdir()
    (sd / "scheduler" / "scheduler_config.json").write_text('{"_class_name": "PNDMScheduler"}')
    (sd / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionPipeline",
                "_diffusers_version": "0.30.0",
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "scheduler": ["diffusers", "PNDMScheduler"],
                "safety_checker": [None, None],
                "feature_extractor": [None, None],
                "requires_safety_checker": False,
            }
        )
    )

    fx = (
        root / "flux"
    )  # FluxPipeline: sharded transformer and T5 (text_encoder_2), as in the FLUX.1 repositories
    _save(flux, fx / "transformer", max_shard_size="20KB")
    _save(t5, fx / "text_encoder_2", max_shard_size="10KB")
    _save(clip, fx / "text_encoder")
    _save(vae, fx / "vae")
    (fx / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "FluxPipeline",
                "_diffusers_version": "0.30.0",
                "transformer": ["diffusers", "FluxTransformer2DModel"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "text_encoder_2": ["transformers", "T5EncoderModel"],
                "vae": ["diffusers", "AutoencoderKL"],
                "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "tokenizer_2": ["transformers", "T5TokenizerFast"],
            }
        )
    )
    _save(unet, root / "unet_bin", max_shard_size="40KB", safe_serialization=False)
    _save(unet.half(), sd / "unet", max_shard_size="40KB", variant="fp16")
    _save(clip.half(), sd / "text_encoder", variant="fp16")
    truth["unet_fp16"], truth["clip_fp16"] = (
        unet.state_dict(),
        load_file(sd / "text_encoder" / "model.fp16.safetensors"),
    )
    return root, truth


def _same(ck, truth: dict, prefix: str = "") -> None:
    """Every tensor of ``truth`` in ``ck`` (under ``prefix``), same shape and values, and nothing else there."""
    keys = {k for k in ck.tensors if k.startswith(prefix)}
    assert keys == {prefix + k for k in truth}
    for k, t in truth.items():
        assert ck.tensors[prefix + k].shape == tuple(t.shape)
        assert torch.equal(ck.read(prefix + k), t), k


def test_sharded_component_folder_alone_equals_the_unsharded_model(real):
    root, truth = real
    folder = root / "sd" / "unet"
    shards = set(_index(folder, "diffusion_pytorch_model.safetensors.index.json")["weight_map"].values())
    assert len(shards) > 2
    with open_checkpoint(folder) as ck:
        _same(ck, truth["unet"])
        assert set(truth["unet"]) == set(truth["unet_fp16"])  # = the module's own state_dict()
        assert {f.name for f in ck.files} == shards  # the full-precision shards only, never the fp16 ones
        assert {t.dtype for t in ck.tensors.values()} == {"F32"} and ck.notes == [] and ck.variant is None
    with open_checkpoint(folder, variant="fp16") as ck:
        assert {f.name for f in ck.files} == set(
            _index(folder, "diffusion_pytorch_model.safetensors.index.fp16.json")["weight_map"].values()
        )
        _same(ck, truth["unet_fp16"])
        assert {t.dtype for t in ck.tensors.values()} == {"F16"} and ck.variant == "fp16"
    with open_checkpoint(folder / "diffusion_pytorch_model.safetensors.index.fp16.json") as ck:
        _same(ck, truth["unet_fp16"])


def test_bin_shards_are_read_through_the_restricted_unpickler(real):
    root, truth = real
    folder = root / "unet_bin"
    shards = set(_index(folder, "diffusion_pytorch_model.bin.index.json")["weight_map"].values())
    assert len(shards) > 2 and all(s.endswith(".bin") for s in shards)
    with open_checkpoint(folder) as ck:
        _same(ck, truth["unet"])
        assert {f.name for f in ck.files} == shards
        assert {type(p).__name__ for p in ck.parts.values()} == {"TorchCheckpoint"}


def test_flux_pipeline_with_sharded_transformer_and_t5_is_one_model(real):
    root, truth = real
    fx = root / "flux"
    assert len(set(_index(fx / "text_encoder_2", "model.safetensors.index.json")["weight_map"].values())) == 2
    with open_checkpoint(fx) as ck:
        for prefix, name in (
            ("transformer.", "flux"),
            ("text_encoder.", "clip"),
            ("text_encoder_2.", "t5"),
            ("vae.", "vae"),
        ):
            _same(ck, truth[name], prefix)
        assert len(ck.tensors) == sum(len(truth[n]) for n in ("flux", "clip", "t5", "vae"))
        assert ck.pipeline == "FluxPipeline" and ck.extras["pipeline"] == "FluxPipeline"
        assert set(ck.configs) >= {"transformer", "text_encoder_2", "model_index"}
    with open_checkpoint(fx / "text_encoder_2") as ck:  # the sharded T5 folder alone
        _same(ck, truth["t5"])


def test_sd_pipeline_full_precision_by_default_and_fp16_only_when_asked(real):
    root, truth = real
    sd = root / "sd"
    with open_checkpoint(sd) as ck:
        _same(ck, truth["unet"], "unet.")
        _same(ck, truth["clip"], "text_encoder.")
        _same(ck, truth["vae"], "vae.")
        assert {t.dtype for t in ck.tensors.values()} == {"F32"}
        assert ck.pipeline == "StableDiffusionPipeline" and ck.variant is None and ck.notes == []
    with open_checkpoint(sd, variant="fp16") as ck:
        _same(ck, truth["unet_fp16"], "unet.")
        _same(ck, truth["clip_fp16"], "text_encoder.")
        _same(ck, truth["vae"], "vae.")  # no fp16 file: its full-precision weights, and it says so
        assert ck.variant == "fp16"
        assert ck.notes == ["no fp16 variant in vae/: read the full-precision weights"]
        assert "no fp16 variant in vae/" in ck.extras["folder notes"]
    with pytest.raises(CheckpointError, match="no bf16 variant in this folder"):
        open_checkpoint(sd, variant="bf16")
    with pytest.raises(SdlensError, match="--variant"):
        open_checkpoint(sd, variant="../fp16")


def test_variant_reaches_inspect_convert_and_the_cli(real, tmp_path):
    from typer.testing import CliRunner

    from sdlens.analysis.diff import diff
    from sdlens.analysis.inspect import inspect
    from sdlens.analysis.matrix import plan as matrix_plan
    from sdlens.cli import app
    from sdlens.convert import ConvertOptions, make_plan

    root, truth = real
    sd = root / "sd"
    rep = inspect(sd, variant="fp16")
    f16 = [t for n in ("unet_fp16", "clip_fp16") for t in truth[n].values() if t.dtype == torch.float16]
    assert rep.extras["pipeline"] == "StableDiffusionPipeline" and rep.extras["variant files"] == "fp16"
    assert rep.dtypes["F16"]["bytes"] == sum(t.numel() * 2 for t in f16)
    plan = make_plan(sd, tmp_path / "out.safetensors", ConvertOptions(variant="fp16"))
    unet_entries = [e for e in plan.entries if e.key.startswith(("model.diffusion_model.", "unet."))]
    assert len(unet_entries) == len(truth["unet"]) and {e.dtype for e in unet_entries} == {"F16"}
    pl = matrix_plan([sd, sd], variant="fp16")
    assert pl.models[0].size == sum(f.stat().st_size for f in open_checkpoint(sd, "fp16").files)
    assert pl.models[0].size != sum(f.stat().st_size for f in open_checkpoint(sd).files)
    d = diff(sd, sd, variant="fp16")
    names = {torch.float16: "F16", torch.float32: "F32", torch.int64: "I64"}
    read = [t for n in ("unet_fp16", "clip_fp16", "vae") for t in truth[n].values()]
    assert Counter(t.dtype_a for t in d.tensors) == Counter(names[t.dtype] for t in read)
    res = CliRunner().invoke(app, ["inspect", str(sd), "--variant", "fp16", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["dtypes"]["F16"]["bytes"] == rep.dtypes["F16"]["bytes"]
    res = CliRunner().invoke(app, ["inspect", str(sd), "--json"])
    assert set(json.loads(res.stdout)["dtypes"]) == {"F32"}


# --------------------------------------------------------------------------- variants and model_index.json (fast)


def _component(
    folder: Path, names: dict[str, torch.dtype], cfg: dict | None = None
) -> dict[str, torch.Tensor]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg or {"_class_name": "AutoencoderKL"}))
    sd = {}
    for name, dtype in names.items():
        sd = {"w": torch.arange(6, dtype=dtype).reshape(2, 3)}
        save_file(sd, folder / name)
    return sd


def test_only_a_variant_present_is_read_and_noted(tmp_path):
    _component(tmp_path / "vae", {"diffusion_pytorch_model.fp16.safetensors": torch.float16})
    with open_checkpoint(tmp_path / "vae") as ck:
        assert ck.tensors["w"].dtype == "F16" and ck.variant == "fp16"
        assert ck.notes == [
            "only the fp16 variant in this folder: read it (pass --variant fp16 to choose it)"
        ]
    _component(
        tmp_path / "two", {"model.fp16.safetensors": torch.float16, "model.bf16.safetensors": torch.bfloat16}
    )
    with pytest.raises(
        CheckpointError, match=r"several variants \(bf16, fp16\) and no full-precision weights"
    ):
        open_checkpoint(tmp_path / "two")
    with open_checkpoint(tmp_path / "two", variant="bf16") as ck:
        assert ck.tensors["w"].dtype == "BF16" and ck.notes == []


def test_model_index_says_which_folders_are_the_pipeline(tmp_path):
    _component(tmp_path / "unet", {"diffusion_pytorch_model.safetensors": torch.float32})
    _component(tmp_path / "text_encoder", {"model.safetensors": torch.float32})  # listed as [null, null]
    _component(tmp_path / "safety_checker", {"model.safetensors": torch.float32})
    (tmp_path / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionXLImg2ImgPipeline",
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
                "text_encoder": [None, None],
                "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
                "requires_aesthetics_score": True,
            }
        )
    )
    with open_checkpoint(tmp_path) as ck:
        assert set(ck.tensors) == {"unet.w"}
        assert ck.pipeline == "StableDiffusionXLImg2ImgPipeline"
        assert ck.notes == [
            "model_index.json lists vae but the folder has no vae/",
            "not read: text_encoder/ (not in model_index.json)",
            "not read: safety_checker (StableDiffusionSafetyChecker)",
        ]


def test_a_plain_folder_of_shards_is_one_model(tmp_path):
    from huggingface_hub import save_torch_state_dict

    from sdlens.io.open import expand_paths

    sd = {f"layer{i}.weight": torch.full((64,), float(i)) for i in range(6)}
    (tmp_path / "llm").mkdir()
    save_torch_state_dict(sd, tmp_path / "llm", max_shard_size=600)  # no config.json
    assert len(list((tmp_path / "llm").glob("model-0000*-of-0000*.safetensors"))) > 1
    assert expand_paths([tmp_path]) == [tmp_path / "llm"]
    with open_checkpoint(tmp_path / "llm") as ck:
        assert set(ck.tensors) == set(sd) and torch.equal(ck.read("layer5.weight"), sd["layer5.weight"])


def test_shards_without_their_index_are_named(tmp_path):
    _component(tmp_path / "unet", {"diffusion_pytorch_model-00001-of-00002.safetensors": torch.float32})
    with pytest.raises(CheckpointError, match="shard files .* but no index"):
        open_checkpoint(tmp_path / "unet")


# --------------------------------------------------------------------------- paths confined to the folder

SECRET = "TOPSECRET-0xdeadbeef"


@pytest.fixture
def outside(tmp_path) -> Path:
    """A valid checkpoint outside the model folder whose bytes must never show up (nor be read)."""
    p = tmp_path / "outside.safetensors"
    save_file({"z": torch.zeros(3)}, p, metadata={"secret": SECRET})
    return p


@pytest.fixture
def opened(monkeypatch):
    """Every path sdlens opens (builtins / io / os level), resolved."""
    seen: list[Path] = []
    real_open, real_os_open = builtins.open, os.open

    def rec_open(file, *a, **k):
        if isinstance(file, (str, Path)):
            seen.append(Path(file).resolve())
        return real_open(file, *a, **k)

    def rec_os_open(path, *a, **k):
        seen.append(Path(path).resolve())
        return real_os_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", rec_open)
    monkeypatch.setattr(io, "open", rec_open)
    monkeypatch.setattr(os, "open", rec_os_open)
    return seen


def _sharded(folder: Path, second: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"_class_name": "CLIPTextModel"}')
    save_file({"x": torch.ones(2)}, folder / "model-00001-of-00002.safetensors")
    index = {
        "metadata": {"total_size": 8 + 12},
        "weight_map": {"x": "model-00001-of-00002.safetensors", "z": second},
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder / "model.safetensors.index.json"


@pytest.mark.parametrize(
    "name, why",
    [
        ("../outside.safetensors", "points outside the folder"),
        ("sub/../../outside.safetensors", "points outside the folder"),
        ("/etc/passwd", "is an absolute path"),
        ("ABS", "is an absolute path"),
        ("link.safetensors", "is a link to outside the folder"),
        ("sub/link.safetensors", "is a link to outside the folder"),
    ],
)
def test_index_cannot_name_a_file_outside_its_folder(tmp_path, outside, opened, name, why):
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    os.symlink(outside, folder / "link.safetensors")
    os.symlink(tmp_path, folder / "sub" / "up")
    os.symlink("up/outside.safetensors", folder / "sub" / "link.safetensors")
    name = str(outside) if name == "ABS" else name
    index = _sharded(folder, name)
    for target in (index, folder):
        opened.clear()
        with pytest.raises(CheckpointError) as e:
            open_checkpoint(target)
        msg = str(e.value)
        assert why in msg and "refused" in msg
        assert SECRET not in msg and "root:" not in msg and "\n" not in msg
        assert outside.resolve() not in opened and Path("/etc/passwd") not in opened
        assert not any(
            p.name == "model-00001-of-00002.safetensors" for p in opened
        )  # checked before any read


def test_component_folder_weights_config_and_model_index_links_out_are_refused(tmp_path, outside, opened):
    elsewhere = tmp_path / "elsewhere"
    _component(elsewhere / "unet", {"diffusion_pytorch_model.safetensors": torch.float32})
    (elsewhere / "model_index.json").write_text('{"_class_name": "' + SECRET + '"}')
    cases = {}
    p = cases["folder"] = tmp_path / "p1"
    p.mkdir()
    os.symlink(elsewhere / "unet", p / "unet")
    p = cases["weights"] = tmp_path / "p2"
    _component(p / "unet", {})
    os.symlink(outside, p / "unet" / "diffusion_pytorch_model.safetensors")
    p = cases["config"] = tmp_path / "p3"
    _component(p / "unet", {"diffusion_pytorch_model.safetensors": torch.float32})
    (p / "unet" / "config.json").unlink()
    os.symlink(elsewhere / "model_index.json", p / "unet" / "config.json")
    p = cases["model_index"] = tmp_path / "p4"
    _component(p / "unet", {"diffusion_pytorch_model.safetensors": torch.float32})
    os.symlink(elsewhere / "model_index.json", p / "model_index.json")
    for what, folder in cases.items():
        opened.clear()
        with pytest.raises(CheckpointError, match="link to outside the folder; refused") as e:
            open_checkpoint(folder)
        assert SECRET not in str(e.value), what
        assert not any(elsewhere in q.parents or q == outside.resolve() for q in opened), what


def test_hugging_face_cache_snapshot_links_into_blobs_are_followed(tmp_path):
    repo = tmp_path / "hub" / "models--org--tiny"
    blobs, snap = repo / "blobs", repo / "snapshots" / "0123abc"
    blobs.mkdir(parents=True)
    save_file({"w": torch.arange(4.0)}, blobs / "aa11")
    (blobs / "bb22").write_text('{"_class_name": "UNet2DConditionModel"}')
    (snap / "unet").mkdir(parents=True)
    os.symlink("../../../blobs/aa11", snap / "unet" / "diffusion_pytorch_model.safetensors")
    os.symlink("../../../blobs/bb22", snap / "unet" / "config.json")
    with open_checkpoint(snap) as ck:
        assert torch.equal(ck.read("unet.w"), torch.arange(4.0))
        assert ck.configs["unet"]["_class_name"] == "UNet2DConditionModel"


def test_symlink_loop_is_an_error_not_a_hang(tmp_path):
    folder = tmp_path / "m"
    index = _sharded(folder, "a.safetensors")
    os.symlink("b.safetensors", folder / "a.safetensors")
    os.symlink("a.safetensors", folder / "b.safetensors")
    with pytest.raises(CheckpointError, match="'a.safetensors' cannot be resolved"):
        open_checkpoint(index)


def _within(seconds: float, fn) -> BaseException | None:
    """Run ``fn`` in a daemon thread; fail if it blocks (a FIFO ``open()`` would block forever)."""
    box: list[BaseException | None] = [None]

    def run():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box[0] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "blocked on a named pipe"
    return box[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_named_pipes_are_refused_without_blocking(tmp_path):
    folder = tmp_path / "m"
    index = _sharded(folder, "model-00002-of-00002.safetensors")
    os.mkfifo(folder / "model-00002-of-00002.safetensors")
    comp = tmp_path / "c"
    _component(comp / "unet", {})
    os.mkfifo(comp / "unet" / "diffusion_pytorch_model.safetensors")
    cfg = tmp_path / "cfg"
    _component(cfg / "vae", {"diffusion_pytorch_model.safetensors": torch.float32})
    (cfg / "vae" / "config.json").unlink()
    os.mkfifo(cfg / "vae" / "config.json")
    mi = tmp_path / "mi"
    _component(mi / "vae", {"diffusion_pytorch_model.safetensors": torch.float32})
    os.mkfifo(mi / "model_index.json")
    os.mkfifo(tmp_path / "direct.safetensors")
    os.mkfifo(tmp_path / "direct.safetensors.index.json")
    for target in (
        index,
        folder,
        comp,
        cfg,
        mi,
        tmp_path / "direct.safetensors",
        tmp_path / "direct.safetensors.index.json",
    ):
        e = _within(5, lambda t=target: open_checkpoint(t))
        assert isinstance(e, CheckpointError), (target, e)
        assert "named pipe" in str(e) and "refused" in str(e), str(e)


# --------------------------------------------------------------------------- malformed JSON: one line, file named

DEEP = "[" * 100_000 + "]" * 100_000
HUGE = "9" * 5000


@pytest.mark.parametrize(
    "text, why",
    [
        ('{"weight_map": ["x", "a.safetensors"]}', "not a valid shard index"),
        ('["weight_map"]', "not a valid shard index"),
        ('{"weight_map": {}}', "lists no tensors"),
        ('{"weight_map": {"x": 7}}', "not a file name"),
        ('{"weight_map": {"x": ["a.safetensors"]}}', "not a file name"),
        ('{"weight_map": {"x": {"f": "a.safetensors"}}}', "not a file name"),
        ('{"weight_map": {"x": ""}}', "not a file name"),
        ('{"weight_map": {"x": "a\\u0000.safetensors"}}', "not a file name"),
        ('{"weight_map": ' + DEEP + "}", "nested too deeply"),
        (
            '{"metadata": {"total_size": ' + HUGE + '}, "weight_map": {"x": "a.safetensors"}}',
            "not valid JSON",
        ),
        ('{"weight_map": {"x": "a.safetensors"}', "not valid JSON"),
        (b'{"weight_map": {"x": "\xff.safetensors"}}', "not valid JSON"),
        (
            '{"weight_map": {"x": "a.safetensors"}, "metadata": ' + "[" * 80 + "]" * 80 + "}",
            "deeper than 64 levels",
        ),
    ],
)
def test_bad_shard_index_is_one_line_naming_it(tmp_path, text, why):
    folder = tmp_path / "unet"
    folder.mkdir()
    (folder / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    save_file({"x": torch.ones(2)}, folder / "a.safetensors")
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    index.write_bytes(text if isinstance(text, bytes) else text.encode())
    for target in (index, folder):
        with pytest.raises(CheckpointError) as e:
            open_checkpoint(target)
        assert why in e.value.problem and e.value.path == str(index)
        assert "\n" not in str(e.value) and len(str(e.value)) < 300


@pytest.mark.parametrize(
    "file, text, why",
    [
        ("config.json", DEEP, "nested too deeply"),
        ("config.json", "[1, 2]", "not a model config"),
        ("config.json", '{"sample_size": ' + HUGE + "}", "not valid JSON"),
        ("config.json", "{", "not valid JSON"),
        ("model_index.json", DEEP, "nested too deeply"),
        ("model_index.json", '"StableDiffusionPipeline"', "not a diffusers model index"),
        ("model_index.json", '{"_class_name": ["x"]}', "not a class name"),
        ("model_index.json", '{"unet": [1, 2]}', "not [library, class]"),
        ("model_index.json", '{"_class_name": ' + HUGE + "}", "not valid JSON"),
    ],
)
def test_bad_config_or_model_index_is_one_line_naming_it(tmp_path, file, text, why):
    _component(tmp_path / "unet", {"diffusion_pytorch_model.safetensors": torch.float32})
    bad = tmp_path / ("unet" if file == "config.json" else "") / file
    bad.write_text(text)
    with pytest.raises(CheckpointError) as e:
        open_checkpoint(tmp_path)
    assert why in e.value.problem and Path(e.value.path) == bad
    assert "\n" not in str(e.value) and len(str(e.value)) < 300


@pytest.mark.parametrize(
    "cfg, why",
    [
        ({"block_out_channels": "abc"}, "field 'block_out_channels' is 'abc'; expected a list of integers"),
        (
            {"block_out_channels": [1e400, -5]},
            "field 'block_out_channels' is [inf, -5]; expected a list of integers",
        ),
        (
            {"layers_per_block": True},
            "field 'layers_per_block' is True; expected an integer or a list of integers",
        ),
        ({"layers_per_block": 10**8}, "field 'layers_per_block' is 100000000"),
        ({"down_block_types": 5}, "field 'down_block_types' is 5; expected a list of strings"),
        ({"attention_head_dim": {"a": 1}}, "field 'attention_head_dim' is {'a': 1}"),
        ({"transformer_layers_per_block": [[1, "x"]]}, "field 'transformer_layers_per_block'"),
        (
            {"down_block_types": ["A", "B"], "layers_per_block": [1]},
            "field 'layers_per_block' has 1 entries but 'down_block_types' has 2",
        ),
        ({"use_quant_conv": "yes"}, "field 'use_quant_conv' is 'yes'; expected true/false"),
    ],
)
def test_mistyped_config_fields_are_one_line_naming_file_and_field(tmp_path, cfg, why):
    _component(tmp_path / "unet", {"diffusion_pytorch_model.safetensors": torch.float32}, cfg)
    with pytest.raises(CheckpointError) as e:
        open_checkpoint(tmp_path)
    assert why in e.value.problem and e.value.path == str(tmp_path / "unet" / "config.json")


def test_cli_prints_one_line_for_a_bad_folder(tmp_path):
    from typer.testing import CliRunner

    from sdlens.cli import app

    _component(tmp_path / "unet", {"diffusion_pytorch_model.safetensors": torch.float32})
    (tmp_path / "model_index.json").write_text(DEEP)
    res = CliRunner().invoke(app, ["inspect", str(tmp_path)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "model_index.json" in lines[0] and "nested too deeply" in lines[0]
    (tmp_path / "model_index.json").write_text('{"unet": [1, 2]}')
    res = CliRunner().invoke(app, ["inspect", str(tmp_path)])
    assert (
        res.exit_code == 1 and "entry 'unet' is [1, 2], not [library, class]" in res.output
    )  # brackets kept


def test_copy_of_a_pipeline_elsewhere_is_read_the_same(real, tmp_path):
    """Sanity for the confinement rule: a plain copy (no links) of a real folder reads identically."""
    root, truth = real
    shutil.copytree(root / "flux", tmp_path / "flux")
    with open_checkpoint(tmp_path / "flux") as ck:
        _same(ck, truth["t5"], "text_encoder_2.")
