"""sdlens embed: zoo text encoders (real architecture, random weights) and a tokenizer made in the test."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from sdlens.analysis.embed import distance_matrices, embed, encode, tokenize
from sdlens.arch.text_encoders import find_text_encoders, load_text_encoder
from sdlens.errors import SdlensError
from sdlens.io.open import open_checkpoint
from sdlens.io.prompts import Prompt, read_prompts
from sdlens.testing.tokenizer import DEMO_PROMPTS, write_clip_tokenizer
from sdlens.testing.writers import save_safetensors
from sdlens.testing.zoo_unet import build_single_file, write_diffusers_folder

PROMPTS = [Prompt(*p) for p in DEMO_PROMPTS[:8]]
SD1_LAYER5 = "cond_stage_model.transformer.text_model.encoder.layers.5."


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("embed")
    sd1 = build_single_file("sd1")
    out = {
        "tok": write_clip_tokenizer(d / "tok"),
        "sd1": save_safetensors(sd1, d / "sd1.safetensors"),
        "sd1_nai": save_safetensors(build_single_file("sd1", nai_clip=True), d / "sd1_nai.safetensors"),
        "sd1_diffusers": write_diffusers_folder("sd1", d / "sd1_diffusers"),
        "sdxl": save_safetensors(build_single_file("sdxl"), d / "sdxl.safetensors"),
        "sdxl_diffusers": write_diffusers_folder("sdxl", d / "sdxl_diffusers"),
    }
    copy = d / "copy" / "sd1.safetensors"
    copy.parent.mkdir()
    shutil.copy(out["sd1"], copy)
    out["sd1_copy"] = copy
    g = torch.Generator().manual_seed(3)
    tuned = dict(sd1)
    key = SD1_LAYER5 + "mlp.fc1.weight"
    tuned[key] = sd1[key] + 0.05 * torch.randn(sd1[key].shape, generator=g)
    out["sd1_tuned"] = save_safetensors(tuned, d / "sd1_tuned.safetensors")
    return out


def _state(path, kind):
    with open_checkpoint(path) as ck:
        specs, _ = find_text_encoders(ck)
        spec = next(s for s in specs if s.kind == kind)
        model = load_text_encoder(ck, spec)
    sd = model.state_dict()
    return {k.removeprefix("text_model."): v for k, v in sd.items()}


def test_nai_and_diffusers_layouts_load_the_same_weights(files):
    ref = _state(files["sd1"], "clip_l")
    for other in ("sd1_nai", "sd1_diffusers"):
        sd = _state(files[other], "clip_l")
        assert sd.keys() == ref.keys()
        assert all(torch.equal(sd[k], ref[k]) for k in ref), other
    # open_clip (fused q/k/v, transposed projection) vs transformers' layout
    g_ref = _state(files["sdxl_diffusers"], "clip_g")
    g = _state(files["sdxl"], "clip_g")
    assert g.keys() == g_ref.keys() and "text_projection.weight" in g
    assert all(torch.equal(g[k], g_ref[k]) for k in g_ref)


def test_layouts_give_identical_embeddings(files, tmp_path):
    r = embed(
        [files["sd1"], files["sd1_nai"], files["sd1_diffusers"], files["sd1_copy"]],
        PROMPTS,
        tokenizer_dirs=[files["tok"]],
    )
    base = r.embeddings[0].vectors
    assert len(r.embeddings) == 4 and r.ref == "sd1"
    for e in r.embeddings[1:]:
        assert np.array_equal(e.vectors, base), e.model
    assert len(r.drift) == 3
    for d in r.drift:
        assert d.max_drift == 0.0 and all(row.cosine == 1.0 for row in d.rows)


def test_one_changed_layer_shows_drift(files):
    r = embed([files["sd1"], files["sd1_tuned"]], PROMPTS, tokenizer_dirs=[files["tok"]], layer="last")
    (d,) = r.drift
    assert d.model == "sd1_tuned" and d.ref == "sd1"
    assert all(row.drift > 1e-6 for row in d.rows)
    assert [row.drift for row in d.rows] == sorted((row.drift for row in d.rows), reverse=True)
    # hidden state 5 is the output of layers 0..4: before the changed layer, nothing moves
    before = embed([files["sd1"], files["sd1_tuned"]], PROMPTS, tokenizer_dirs=[files["tok"]], layer="5")
    assert before.drift[0].max_drift == 0.0
    after = embed([files["sd1"], files["sd1_tuned"]], PROMPTS, tokenizer_dirs=[files["tok"]], layer="6")
    assert after.drift[0].max_drift > 1e-6


def test_matrices_satisfy_their_definitions(files):
    r = embed([files["sd1"]], PROMPTS, tokenizer_dirs=[files["tok"]], pool="mean")
    e = r.embeddings[0]
    x = e.vectors.astype(np.float64)
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-6)  # normalised by default
    m = e.matrices
    n = len(PROMPTS)
    for name in ("cosine", "euclidean", "manhattan"):
        assert m[name].shape == (n, n)
        assert np.array_equal(m[name], m[name].T), name
    assert np.all(np.diag(m["euclidean"]) == 0) and np.all(np.diag(m["manhattan"]) == 0)
    assert np.all(np.diag(m["cosine"]) == 1.0)
    assert m["cosine"].min() >= -1.0 and m["cosine"].max() <= 1.0
    assert np.all(m["euclidean"] >= 0) and np.all(m["manhattan"] >= 0)
    for i in range(n):
        for j in range(n):
            a, b = x[i], x[j]
            assert m["cosine"][i, j] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b), abs=1e-9)
            assert m["euclidean"][i, j] == pytest.approx(np.sqrt(((a - b) ** 2).sum()), abs=1e-9)
            assert m["manhattan"][i, j] == pytest.approx(np.abs(a - b).sum(), abs=1e-9)
    # not normalised: the distances follow the raw vectors
    raw = embed(
        [files["sd1"]], PROMPTS, tokenizer_dirs=[files["tok"]], pool="mean", normalize=False
    ).embeddings[0]
    assert not np.allclose(np.linalg.norm(raw.vectors, axis=1), 1.0)
    assert np.allclose(distance_matrices(raw.vectors)["euclidean"], raw.matrices["euclidean"])


def test_short_sequences_match_the_pipeline_padding(files):
    """eos / mean run only up to the longest prompt; a direct run on the 77-token padded batch agrees."""
    from sdlens.io.tokenizers import find_tokenizers

    tok = find_tokenizers([files["tok"]]).clip
    with open_checkpoint(files["sdxl"]) as ck:
        specs, family = find_text_encoders(ck)
        spec = next(s for s in specs if s.kind == "clip_g")
        ids = tokenize(tok, spec, [p.text for p in PROMPTS])
        fast, desc = encode(load_text_encoder(ck, spec), spec, ids, layer="penultimate", pool="eos", pad_id=0)
        model = load_text_encoder(ck, spec)
    assert family == "sdxl" and desc.startswith("penultimate")
    x = torch.zeros((len(ids), 77), dtype=torch.long)  # SDXL's second tokenizer pads with "!" (id 0)
    for i, row in enumerate(ids):
        x[i, : len(row)] = torch.tensor(row)
    with torch.no_grad():
        h = model(input_ids=x, output_hidden_states=True).hidden_states[-2]
    direct = torch.stack([h[i, len(row) - 1] for i, row in enumerate(ids)]).numpy()
    assert np.allclose(fast, direct, atol=1e-5)
    flat, _ = encode(model, spec, ids, layer="penultimate", pool="flatten", pad_id=0)
    assert flat.shape == (len(ids), 77 * spec.config["hidden_size"])
    assert np.allclose(flat, h.reshape(len(ids), -1).numpy(), atol=1e-5)


def test_figures_and_csv_are_written(files, tmp_path):
    from sdlens.render.embed_view import write_embed_outputs

    prompts = [Prompt(*p) for p in DEMO_PROMPTS]
    r = embed(
        [files["sdxl"], files["sdxl_diffusers"]], prompts, tokenizer_dirs=[files["tok"]], encoder="clip_g"
    )
    assert {e.encoder for e in r.embeddings} == {"clip_g"}
    written = write_embed_outputs(r, tmp_path / "out", method="tsne")
    names = {p.name for p in written}
    for enc in ("clip_g",):
        for fig in (f"pca-{enc}.png", f"tsne-{enc}.png", f"drift-{enc}.png"):
            assert fig in names
            assert (tmp_path / "out" / fig).read_bytes()[:4] == b"\x89PNG"
        rows = list(csv.reader((tmp_path / "out" / f"cosine-{enc}-sdxl.csv").open()))
        assert rows[0][1:] == [p.label for p in prompts]
        assert [row[0] for row in rows[1:]] == [p.label for p in prompts]
        drift = list(csv.reader((tmp_path / "out" / f"drift-{enc}-sdxl_diffusers.csv").open()))
        assert drift[0] == ["label", "text", "cosine", "drift"] and len(drift) == len(prompts) + 1
    data = json.loads((tmp_path / "out" / "embed.json").read_text())
    assert data["ref"] == "sdxl" and len(data["embeddings"]) == 2
    assert not any(p.name.startswith(".") for p in (tmp_path / "out").iterdir())  # no temporary files left


def test_t5_and_clips_of_an_sd3_file(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from sdlens.testing.zoo_dit import build_single_file as dit_file

    path = save_safetensors(dit_file("sd3", with_encoders=True), tmp_path / "sd3.safetensors")
    words = sorted({w for p in PROMPTS for w in p.text.split()})
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(tmp_path / "t5tok")
    r = embed([path], PROMPTS, tokenizer_dirs=[write_clip_tokenizer(tmp_path / "clip"), tmp_path / "t5tok"])
    assert [e.encoder for e in r.embeddings] == ["clip_l", "clip_g", "t5"]
    t5 = r.embeddings[2]
    assert t5.layer.startswith("last") and r.embeddings[0].layer.startswith("penultimate")
    assert t5.vectors.shape == (len(PROMPTS), 16) and np.isfinite(t5.vectors).all()
    assert r.models[0].family == "sd3"


def test_prompt_files(tmp_path):
    (tmp_path / "p.txt").write_text("# comment\na cat\n\na dog\na cat\n")
    assert [p.label for p in read_prompts(tmp_path / "p.txt")] == ["a cat", "a dog", "a cat #2"]
    (tmp_path / "p.csv").write_text("label,text,group,marker\ncat,a cat,animals,o\ncity,a city,places,\n")
    ps = read_prompts(tmp_path / "p.csv")
    assert (
        ps[0] == Prompt("cat", "a cat", "animals", "o") and ps[1].marker is None and ps[1].group == "places"
    )
    (tmp_path / "p.json").write_text(
        json.dumps({"cat": "a cat", "city": {"text": "a city", "group": "places"}})
    )
    assert [p.group for p in read_prompts(tmp_path / "p.json")] == [None, "places"]
    (tmp_path / "dup.csv").write_text("label,text\ncat,a cat\ncat,another cat\n")
    with pytest.raises(SdlensError, match="twice"):
        read_prompts(tmp_path / "dup.csv")
    (tmp_path / "one.txt").write_text("only one\n")
    with pytest.raises(SdlensError, match="at least 2"):
        read_prompts(tmp_path / "one.txt")


def test_cli_embed(files, tmp_path, cli):
    (tmp_path / "prompts.txt").write_text("\n".join(p.text for p in PROMPTS[:5]))
    r = cli(
        "embed",
        str(files["sd1"]),
        str(files["sd1_tuned"]),
        "--prompts",
        str(tmp_path / "prompts.txt"),
        "--tokenizer",
        str(files["tok"]),
        "--out",
        str(tmp_path / "out"),
    )
    assert r.returncode == 0, r.stderr
    assert "sd1_tuned vs sd1" in r.stdout
    assert (tmp_path / "out" / "pca-clip_l.png").is_file()
    assert (tmp_path / "out" / "drift-clip_l-sd1_tuned.csv").is_file()


def test_no_tokenizer_is_one_clear_error(files, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from sdlens.io.tokenizers import find_tokenizers

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(SdlensError) as e:
        embed([files["sd1"]], PROMPTS)
    assert "--tokenizer" in str(e.value) and "never downloads" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SdlensError, match="no tokenizer here"):
        find_tokenizers([tmp_path])
