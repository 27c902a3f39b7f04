"""The quantised zoo (issue 18), read by sdlens: every GGUF and fp8 file identified as its family with the
right storage per tensor and its logical shapes; diff of each source and its copy says quantised (or the
precision / identity it is); matrix over the mixed folder puts each copy next to its source; every bad GGUF
file is one clear line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from sdlens.analysis.diff import diff  # noqa: E402
from sdlens.analysis.inspect import inspect  # noqa: E402
from sdlens.errors import CheckpointError  # noqa: E402
from sdlens.io.open import open_checkpoint  # noqa: E402
from sdlens.io.quant import quant_of, stored_dtype  # noqa: E402

PLAIN = ("F32", "F16", "BF16")

from sdlens.testing.zoo_gguf import ZOO_PLAN  # noqa: E402


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    from sdlens.testing.zoo_fp8 import build_fp8_zoo
    from sdlens.testing.zoo_gguf import build_gguf_zoo

    folder = tmp_path_factory.mktemp("quant_zoo")
    return build_gguf_zoo(folder), build_fp8_zoo(folder), folder


def test_every_gguf_file_is_its_family_with_each_tensor_s_type_and_shape(zoo):
    entries, _fp8, _ = zoo
    assert len(entries) == sum(len(row[3]) for row in ZOO_PLAN)
    for e in entries:
        r = inspect(e.path)
        assert (r.family, r.kind, r.format) == (e.family, "denoiser only", "gguf"), e.name
        assert not r.unknown_keys and not r.problems, (e.name, r.unknown_keys[:2], r.problems)
        with open_checkpoint(e.path) as ck:
            assert set(ck.tensors) == set(e.types)
            for key, qtype in e.types.items():
                info = ck.tensors[key]
                assert stored_dtype(info) == qtype, (e.name, key)
                assert info.shape == e.shapes[key], (e.name, key)  # orig_shape restores SD1's reshapes
        quantised = {t for t in e.types.values() if t not in PLAIN}
        assert {s.scheme for s in (r.quantisation.schemes if r.quantisation else [])} == quantised


def test_dequantised_values_are_the_gguf_package_s(zoo):
    entries, _fp8, _ = zoo
    for e in entries:
        judge = {t.name: t for t in gguf.GGUFReader(str(e.path)).tensors}
        with open_checkpoint(e.path) as ck:
            for key in list(ck.tensors)[::7]:
                t = judge[key]
                want = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
                assert np.array_equal(ck.read_numpy(key).reshape(-1), want.reshape(-1)), (e.name, key)


def test_diff_of_each_source_and_its_gguf_copy(zoo):
    entries, _fp8, _ = zoo
    for e in entries:
        r = diff(e.source, e.path)
        assert not [t for t in r.tensors if t.changed], (e.name, r.verdict)
        if e.qtype in PLAIN:  # a plain 16-bit copy of the source: the same weights
            assert r.verdict[0].startswith(("identical", "same weights at different precisions")), r.verdict
        else:
            assert r.verdict[0].startswith(f"same model, quantised: B is A quantised to {e.qtype}"), r.verdict
            assert all(t.within_quantisation for t in r.tensors if t.quantised)


def test_every_fp8_file_is_its_family_with_its_scales(zoo):
    _gg, entries, _ = zoo
    assert entries
    for e in entries:
        r = inspect(e.path)
        t = e.truth
        assert r.family == e.family and not r.unknown_keys, (e.name, r.unknown_keys[:2])
        with open_checkpoint(e.path) as ck:
            if t.scheme == "fp8":
                assert r.quantisation is None and r.precision.startswith(("fp8", "mixed: fp8")), r.precision
                continue
            (use,) = r.quantisation.schemes
            assert use.scheme == f"{t.fp8} scaled" and use.tensors == len(t.scales), e.name
            for key, scale in t.scales.items():
                q = quant_of(ck.tensors[key])
                assert q is not None and float(q.scales(ck.stored)[0]) == pytest.approx(scale, rel=0, abs=0)
        d = diff(e.source, e.path)
        assert d.verdict[0].startswith(f"same model, quantised: B is A quantised to {t.fp8} scaled"), (
            d.verdict
        )


def test_matrix_puts_each_copy_next_to_its_source(zoo):
    from sdlens.analysis.matrix import matrix
    from sdlens.io.open import expand_paths

    gg, fp8, folder = zoo
    pick = [e for e in gg if e.family in ("flux_dev", "sd3")] + [e for e in fp8 if "scaled" in e.name]
    sources = sorted({e.source for e in pick})
    res = matrix([*sources, *(e.path for e in pick)])
    names = [Path(m.path).name for m in res.models]
    m = res.matrix("denoiser")
    for e in pick:
        i = names.index(e.path.name)
        dist = {names[j]: m[i][j] for j in range(len(names)) if names[j].endswith(".safetensors") and j != i}
        dist = {k: v for k, v in dist.items() if k in {s.name for s in sources} and np.isfinite(v)}
        assert min(dist, key=dist.get) == e.source.name, (e.name, dist)
    assert {p.suffix for p in expand_paths([folder])} >= {".gguf", ".safetensors"}


def test_bad_gguf_files_are_one_clear_line(tmp_path, cli):
    from sdlens.testing.bad_gguf import build_bad_gguf

    cases = build_bad_gguf(tmp_path)
    assert len(cases) >= 30
    for case in cases:
        try:
            with open_checkpoint(case.path) as ck:
                for key in ck.tensors:
                    ck.read(key)
        except CheckpointError as e:
            msg = str(e)
            assert str(case.path) in msg and "\n" not in msg, (case.name, msg)
            assert any(w in msg.lower() for w in case.mention), (case.name, msg)
            assert getattr(e, "unexpected", None) is None, (case.name, msg)  # sdlens's own check fired
        else:
            assert case.may_open, f"{case.name} opened: {case.problem}"
    res = cli("inspect", *(str(c.path) for c in cases))
    assert res.returncode != 0 and "Traceback" not in res.stderr + res.stdout
    assert "\x1b[31m" not in res.stdout + res.stderr


def test_nf4_copies_of_the_zoo_s_flux_and_sd3(zoo, tmp_path):
    """Forge / diffusers-style NF4 files of the FLUX and SD3 denoisers: each is its family, every quantised
    weight with its logical shape, nothing unknown, and diff calls it its source quantised to NF4."""
    import torch

    from sdlens.testing.zoo_nf4 import write_nf4

    _gg, fp8, _ = zoo
    sources = {e.family: e.source for e in fp8}
    assert len(sources) == 2
    for family, source in sources.items():
        with open_checkpoint(source) as ck:
            sd = {"model.diffusion_model." + k: ck.read(k).to(torch.bfloat16) for k in ck.tensors}
        path = tmp_path / f"{source.stem}-nf4.safetensors"
        truth = write_nf4(path, sd, nested=True, backend="numpy")
        r = inspect(path)
        assert r.family == family and not r.unknown_keys, (family, r.unknown_keys[:2])
        (use,) = r.quantisation.schemes
        assert (use.scheme, use.tensors) == ("NF4", len(truth["quantised"]))
        with open_checkpoint(path) as ck:
            for key, t in truth["quantised"].items():
                assert ck.tensors[key].shape == tuple(t["shape"]) and stored_dtype(ck.tensors[key]) == "NF4"
        d = diff(source, path)
        assert d.verdict[0].startswith("same model, quantised: B is A quantised to NF4"), d.verdict
