"""`sdlens convert` (issue 8): lossless format / layout conversion, casts, EMA, VAE, extraction, safety."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from sdlens.convert import ConvertOptions, convert, make_plan
from sdlens.errors import SdlensError
from sdlens.io.open import open_checkpoint
from sdlens.testing.writers import save_safetensors


def _run(src, dst, **kw):
    force = kw.pop("force", False)
    overwrite = kw.pop("overwrite", False)
    return convert(make_plan(src, dst, ConvertOptions(**kw)), force=force, overwrite=overwrite)


def _tensors(path) -> dict[str, torch.Tensor]:
    with open_checkpoint(path) as ck:
        return {k: ck.read(k) for k in ck.tensors}


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.contiguous().view(ints), b.contiguous().view(ints))


def _assert_identical(a: dict, b: dict) -> None:
    assert set(a) == set(b), (sorted(set(a) ^ set(b)))[:5]
    bad = [k for k in a if not _same(a[k], b[k])]
    assert not bad, bad[:5]


def _no_leftovers(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if ".tmp-" in p.name]


# --------------------------------------------------------------------------- format, metadata


def test_ckpt_to_safetensors_round_trip_identical_and_metadata(zoo, tmp_path):
    from sdlens.io.hashing import hash_file

    src = zoo["sd1_ema_ckpt"].path
    out = tmp_path / "sd1.safetensors"
    res = _run(src, out)
    assert res.verification.ok and res.verification.bit_identical == len(res.plan.entries)
    _assert_identical(_tensors(src), _tensors(out))
    with open_checkpoint(out) as ck:
        meta = ck.metadata
    assert json.loads(meta["sdlens.source_extras"]) == {"epoch": 6, "global_step": 470000}
    prov = json.loads(meta["sdlens.provenance"])
    assert len(prov) == 1 and prov[0]["source_sha256"] == {src.name: hash_file(src).sha256}
    assert prov[0]["version"] and prov[0]["operations"][0].startswith("format:")
    # a second conversion keeps the metadata and extends the provenance
    out2 = tmp_path / "sd1_fp16.safetensors"
    _run(out, out2, dtype="fp16")
    with open_checkpoint(out2) as ck:
        meta2 = ck.metadata
    assert meta2["sdlens.source_extras"] == meta["sdlens.source_extras"]
    assert len(json.loads(meta2["sdlens.provenance"])) == 2


def test_safetensors_metadata_preserved_and_cast_exact(zoo, tmp_path):
    src = zoo["sdxl_fp16"].path
    out = tmp_path / "sdxl_fp32.safetensors"
    res = convert(
        make_plan(src, out, ConvertOptions(dtype="fp32")), verify="full"
    )  # input re-read and compared
    assert res.verification.mode == "full"
    with open_checkpoint(src) as a, open_checkpoint(out) as b:
        for k, v in a.metadata.items():
            assert b.metadata[k] == v
        assert {t.dtype for t in b.tensors.values()} == {"F32", "I64"}
    assert res.verification.cast_exact > 0 and res.verification.ok
    back = tmp_path / "sdxl_back.safetensors"
    _run(out, back, dtype="fp16")
    _assert_identical(_tensors(src), _tensors(back))  # fp16 -> fp32 -> fp16 is exact


# --------------------------------------------------------------------------- EMA


def test_ema_use_output_equals_ema_weights(zoo, tmp_path):
    src = zoo["sd1_ema_ckpt"].path
    out = tmp_path / "ema_only.safetensors"
    res = _run(src, out, ema="use")
    assert res.verification.ok
    a, b = _tensors(src), _tensors(out)
    assert not [k for k in b if k.startswith("model_ema.")]
    den = [k for k in b if k.startswith("model.diffusion_model.")]
    assert len(den) == len([k for k in a if k.startswith("model.diffusion_model.")])
    for k in den:
        ema = "model_ema.diffusion_model" + k[len("model.diffusion_model.") :].replace(".", "")
        assert _same(b[k], a[ema]), k
        assert not torch.equal(b[k], a[k])  # the zoo's EMA is a perturbed copy
    for k in b:
        if not k.startswith("model.diffusion_model."):
            assert _same(a[k], b[k])


def test_ema_drop_and_use_without_ema(zoo, tmp_path):
    out = tmp_path / "noema.safetensors"
    _run(zoo["sd1_ema_ckpt"].path, out, ema="drop", dtype="fp16")
    assert not [k for k in _tensors(out) if k.startswith("model_ema.")]
    with pytest.raises(SdlensError, match="no EMA"):
        make_plan(zoo["sd1_fp16"].path, tmp_path / "x.safetensors", ConvertOptions(ema="use"))


# --------------------------------------------------------------------------- VAE


def test_bake_vae_then_diff_shows_only_the_vae_changed(zoo, tmp_path):
    from sdlens.analysis.diff import diff
    from sdlens.testing.zoo_unet import build_single_file

    other = {
        k[len("first_stage_model.") :]: v
        for k, v in build_single_file("sd1", seed=5, dtype=torch.float16).items()
        if k.startswith("first_stage_model.")
    }
    vae = save_safetensors(other, tmp_path / "other.vae.safetensors")
    src = zoo["sd1_fp16"].path
    out = tmp_path / "baked.safetensors"
    res = _run(src, out, vae=vae)
    assert res.verification.ok
    d = diff(src, out)
    assert not d.only_a and not d.only_b
    changed = {c for c, g in d.by_component.items() if g.changed}
    assert changed == {"vae_encoder", "vae_decoder"}
    assert all(g.changed == g.tensors for c, g in d.by_component.items() if c in changed)


def test_vae_from_diffusers_folder_is_mapped(zoo, tmp_path):
    from sdlens.analysis.diff import diff

    out = tmp_path / "sdxl_vae_from_folder.safetensors"
    # the folder's VAE is the same model (fp32) as the fp16 file's: same weights at another precision
    _run(zoo["sdxl_fp16"].path, out, vae=zoo["sdxl_diffusers"].path / "vae", dtype="fp16")
    d = diff(zoo["sdxl_fp16"].path, out)
    assert d.verdict == ["identical: every tensor bit-identical"]


# --------------------------------------------------------------------------- safe defaults


def test_unknown_keys_survive_by_default(zoo, tmp_path):
    src = zoo["sd1_extra_keys"].path
    out = tmp_path / "kept.safetensors"
    _run(src, out, dtype="fp32")
    b = _tensors(out)
    assert "my_trainer.step_scale" in b and torch.equal(b["my_trainer.step_scale"], torch.ones(3))
    dropped = tmp_path / "dropped.safetensors"
    res = _run(src, dropped, drop=["unknown"])
    assert "my_trainer.step_scale" not in _tensors(dropped)
    assert [e.key for e in res.plan.dropped] == ["my_trainer.step_scale"]
    # in a diffusers folder they live in the extras file, and come back
    folder = tmp_path / "extra_dif"
    _run(src, folder, layout="diffusers")
    back = tmp_path / "extra_back.safetensors"
    _run(folder, back)
    _assert_identical(_tensors(src), _tensors(back))


def test_fp16_overflow_is_refused_unless_forced(zoo, tmp_path):
    from rich.console import Console

    from sdlens.convert.writer import scan_range
    from sdlens.render.convert_view import render_plan

    sd = {k: v.float() for k, v in _tensors(zoo["sd1_fp16"].path).items()}
    key = "model.diffusion_model.out.2.bias"
    sd[key] = sd[key].clone()
    sd[key][0] = 1e6
    src = save_safetensors(sd, tmp_path / "hot_fp32.safetensors")
    out = tmp_path / "hot_fp16.safetensors"
    with pytest.raises(SdlensError, match="overflow 1 values"):
        _run(src, out, dtype="fp16")
    assert not out.exists()
    _no_leftovers(tmp_path)
    plan = make_plan(src, out, ConvertOptions(dtype="fp16"))
    assert scan_range(plan).overflow == 1
    console = Console(record=True, width=200)
    render_plan(plan, console)
    assert "fp16 overflow: 1 values" in console.export_text() and not out.exists()
    res = _run(src, out, dtype="fp16", force=True)
    assert res.range_check.overflow == 1 and res.verification.ok
    assert torch.isinf(_tensors(out)[key][0])
    bf = tmp_path / "hot_bf16.safetensors"
    _run(src, bf, dtype="bf16")  # bf16 has the range
    assert float(_tensors(bf)[key][0]) == pytest.approx(1e6, rel=1e-2)


def test_fix_position_ids(zoo, tmp_path):
    from sdlens.analysis.inspect import inspect

    src = zoo["sdxl_broken_pos"].path
    plan = make_plan(src, tmp_path / "x.safetensors", ConvertOptions())
    assert any("--fix-position-ids" in n for n in plan.notes)
    out = tmp_path / "fixed.safetensors"
    res = _run(src, out, fix_position_ids=True)
    assert res.verification.restored == 1
    b = _tensors(out)
    pos = b["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"]
    assert pos.dtype == torch.int64 and torch.equal(pos.reshape(-1), torch.arange(pos.numel()))
    assert not inspect(out).problems


# --------------------------------------------------------------------------- never lose data


def test_interrupted_write_leaves_target_absent(zoo, tmp_path):
    src = zoo["sd1_ema_ckpt"].path
    out = tmp_path / "out.safetensors"
    seen = []

    def interrupt(item):
        seen.append(item.key)
        if len(seen) == 50:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(make_plan(src, out, ConvertOptions(dtype="fp16")), _after_tensor=interrupt)
    assert not out.exists()
    _no_leftovers(tmp_path)


def test_failing_write_leaves_target_absent_and_old_target_intact(zoo, tmp_path, monkeypatch):
    from sdlens.io import safetensors_writer

    src = zoo["sd1_fp16"].path
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"previous version")
    calls = {"n": 0}
    real = safetensors_writer.SafetensorsStreamWriter.write

    def failing(self, data):
        calls["n"] += 1
        if calls["n"] == 30:
            raise OSError(28, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(safetensors_writer.SafetensorsStreamWriter, "write", failing)
    with pytest.raises(OSError):
        _run(src, out, dtype="fp32", overwrite=True)
    assert out.read_bytes() == b"previous version"
    _no_leftovers(tmp_path)
    folder = tmp_path / "dif"
    calls["n"] = 0
    with pytest.raises(OSError):
        _run(src, folder, layout="diffusers")
    assert not folder.exists()
    _no_leftovers(tmp_path)


def test_out_equals_in_is_refused(zoo, tmp_path):
    src = tmp_path / "model.safetensors"
    shutil.copy(zoo["sd1_fp16"].path, src)
    before = src.read_bytes()
    with pytest.raises(SdlensError, match="OUT is the input"):
        _run(src, src, dtype="fp32", overwrite=True)
    with pytest.raises(SdlensError, match="OUT is the input"):
        _run(src, tmp_path / "." / "model.safetensors", overwrite=True)
    assert src.read_bytes() == before


def test_existing_target_and_disk_space(zoo, tmp_path, monkeypatch):
    import collections

    out = tmp_path / "exists.safetensors"
    out.write_bytes(b"x")
    with pytest.raises(SdlensError, match="already exists"):
        _run(zoo["sd1_fp16"].path, out)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9, 1000))
    with pytest.raises(SdlensError, match="not enough disk space"):
        _run(zoo["sd1_fp16"].path, tmp_path / "new.safetensors")
    assert not (tmp_path / "new.safetensors").exists()


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("name", ["sd1_ema_ckpt", "sdxl_fp16", "sd2_fp16"])
def test_single_to_diffusers_to_single_is_lossless(zoo, tmp_path, name):
    from sdlens.analysis.diff import diff

    src = zoo[name].path
    folder = tmp_path / "dif"
    res = _run(src, folder, layout="diffusers")
    assert res.verification.ok
    assert (folder / "unet" / "config.json").is_file() and (folder / "model_index.json").is_file()
    d = diff(src, folder)  # the diff engine aligns the two layouts: the model tensors are the same
    assert not [t.key for t in d.tensors if t.changed]
    back = tmp_path / "back.safetensors"
    _run(folder, back)
    _assert_identical(_tensors(src), _tensors(back))


def test_diffusers_folder_round_trip_keeps_files_and_configs(zoo, tmp_path):
    src = zoo["sdxl_diffusers"].path
    single = tmp_path / "sdxl.safetensors"
    _run(src, single)
    from sdlens.analysis.inspect import inspect

    r = inspect(single)
    assert r.family == "sdxl" and r.kind == "full model"
    folder = tmp_path / "again"
    _run(single, folder, layout="diffusers")
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a = next((src / part).glob("*.safetensors"))
        _assert_identical(_tensors(a), _tensors(folder / part / a.name))
        assert json.loads((folder / part / "config.json").read_text()) == json.loads(
            (src / part / "config.json").read_text()
        )
    from diffusers import AutoencoderKL, UNet2DConditionModel

    UNet2DConditionModel.from_pretrained(folder / "unet")
    AutoencoderKL.from_pretrained(folder / "vae")


# --------------------------------------------------------------------------- extraction, dry run, CLI


def test_extract_components_in_their_own_layouts(zoo, tmp_path):
    from sdlens.analysis.inspect import inspect

    src = zoo["sdxl_fp16"].path
    vae = tmp_path / "sdxl.vae.safetensors"
    _run(src, vae, extract=["vae"])
    r = inspect(vae)
    assert r.kind == "VAE" and all(
        k.startswith(("encoder.", "decoder.", "quant_conv", "post_quant_conv")) for k in _tensors(vae)
    )
    unet = tmp_path / "unet.safetensors"
    _run(src, unet, extract=["unet"])
    assert inspect(unet).kind == "denoiser only" and inspect(unet).family == "sdxl"
    clip_g = tmp_path / "clip_g.safetensors"
    _run(src, clip_g, extract=["clip_g"])
    keys = _tensors(clip_g)
    assert "text_model.encoder.layers.0.self_attn.q_proj.weight" in keys and "text_projection.weight" in keys
    assert inspect(clip_g).kind == "text encoder"
    te = tmp_path / "te.safetensors"
    _run(src, te, extract=["te"])
    assert inspect(te).kind == "text encoders"


def test_dry_run_writes_nothing_and_json_plan(zoo, tmp_path, cli):
    from rich.console import Console

    from sdlens.render.convert_view import render_result

    out = tmp_path / "x.safetensors"
    r = cli(
        "convert", str(zoo["sd1_ema_ckpt"].path), str(out), "--dtype", "fp16", "--ema", "drop", "--dry-run"
    )
    assert r.returncode == 0, r.stderr
    assert "dry run" in r.stdout and "EMA dropped" in r.stdout and "fp16 range" in r.stdout
    assert not out.exists()
    from sdlens.render.jsonout import dumps

    plan = json.loads(
        dumps(make_plan(zoo["sd1_ema_ckpt"].path, out, ConvertOptions(drop=["schedule", "unknown"])))
    )
    assert plan["counts"]["drop"] == 13 and plan["output_size"] > 0 and plan["entries"][0]["sources"]
    res = _run(zoo["sd1_ema_ckpt"].path, out, dtype="fp16", ema="drop")
    console = Console(record=True, width=200)
    render_result(res, console, 1.0)
    assert "verified" in console.export_text() and out.exists()
    with pytest.raises(SdlensError, match="--drop 'bogus'"):
        make_plan(zoo["sd1_ema_ckpt"].path, tmp_path / "y.safetensors", ConvertOptions(drop=["bogus"]))


def test_cli_convert_and_refusal(zoo, tmp_path, cli):
    sd = {k: v.float() for k, v in _tensors(zoo["sd1_fp16"].path).items()}
    sd["model.diffusion_model.out.2.bias"][0] = 1e6
    src = save_safetensors(sd, tmp_path / "hot_fp32.safetensors")
    out = tmp_path / "hot_fp16.safetensors"
    r = cli("convert", str(src), str(out), "--dtype", "fp16")
    assert r.returncode == 2 and "overflow" in r.stderr and not out.exists()
    from sdlens.render.jsonout import dumps

    res = json.loads(dumps(_run(src, out, dtype="bf16")))  # what --json prints
    assert res["verification"]["ok"] and res["verification"]["mode"] == "digest" and out.exists()
    assert res["source_sha256"] and res["timings"]["pass_wall"] > 0
    _no_leftovers(tmp_path)


# --------------------------------------------------------------------------- the I/O engine, verification


def test_source_pass_small_blocks_odd_offsets_and_hash(tmp_path):
    import hashlib

    from sdlens.convert.passes import SourcePass

    sd = {
        "a_f16_odd": torch.randn(7).half(),  # odd byte count: every later tensor is misaligned
        "b_f32": torch.randn(33, 5),
        "c_empty": torch.empty(0, 4),
        "d_bf16": torch.randn(101).bfloat16(),
        "e_i64": torch.arange(13),
        "f_u8": torch.arange(9, dtype=torch.uint8),
        "g_f32": torch.randn(257),
    }
    path = save_safetensors(sd, tmp_path / "odd.safetensors")
    with open_checkpoint(path) as ck:
        keys = [k for k in ck.in_file_order() if k != "d_bf16"]  # one dropped tensor
        for block in (8, 24, 64, 4096):
            sp = SourcePass(ck, keys, {str(path)}, block_bytes=block, blocks=3)
            try:
                for k in keys:
                    got = torch.cat([c.data.clone() for c in sp.tensor(k)])
                    assert _same(got, ck.read(k).reshape(-1)), (block, k)
                digests = sp.finish()
            finally:
                sp.close()
            assert digests == {str(path): hashlib.sha256(path.read_bytes()).hexdigest()}


def test_small_blocks_end_to_end_and_corruption_detected(zoo, tmp_path, monkeypatch):
    from sdlens.convert import passes
    from sdlens.io import safetensors_writer

    monkeypatch.setattr(passes, "BLOCK_BYTES", 1 << 12)
    src = zoo["sd1_ema_ckpt"].path
    out = tmp_path / "small_blocks.safetensors"
    res = convert(make_plan(src, out, ConvertOptions(dtype="fp16", ema="drop")), verify="full")
    assert res.verification.ok and res.verification.cast_exact > 0
    monkeypatch.undo()
    # tensors that are not one contiguous run (strided .ckpt views): the stream reader, the file hashed apart
    from sdlens.io.hashing import hash_file
    from sdlens.io.open import open_checkpoint as _open

    with _open(src) as ck:
        monkeypatch.setattr(type(ck), "is_plain", lambda self, key: False)
    strided = tmp_path / "strided.safetensors"
    res = _run(src, strided, dtype="fp16", ema="drop")
    assert res.verification.ok and res.source_sha256 == {str(src): hash_file(src).sha256}
    monkeypatch.undo()
    real = safetensors_writer.SafetensorsStreamWriter.finish

    def corrupting(self, drop_cache=False):
        with open(self.path, "r+b") as f:  # one flipped byte near the end of the data
            f.seek(-3, 2)
            b = f.read(1)
            f.seek(-3, 2)
            f.write(bytes([b[0] ^ 0x10]))
        return real(self, drop_cache)

    monkeypatch.setattr(safetensors_writer.SafetensorsStreamWriter, "finish", corrupting)
    bad = tmp_path / "corrupt.safetensors"
    with pytest.raises(SdlensError, match="verification failed"):
        _run(src, bad, dtype="fp16", ema="drop")
    assert not bad.exists()
    _no_leftovers(tmp_path)
