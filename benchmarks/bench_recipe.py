"""Benchmark `sdlens recipe` and `sdlens lineage` (issue 16).

recipe: full-size SD1-layout fp16 checkpoints (about 2.1 GB each): three candidates C1 (its own weights
everywhere), C2 (its own UNet and text encoder; C1's VAE) and C3 (its own UNet; C1's text encoder and VAE),
and MODEL, a real per-block weighted sum ``C1*(1-α_b) + C2*α_b`` (α per merge block, block copies at 0 and 1
included), written tensor by tensor (never a whole model in memory). Times
``sdlens recipe MODEL --from C1 C2 C3 --json out.json`` against reading the four files once (page cache warm),
reports its peak private memory, and checks the weights it recovers against the known α.
Targets: <= 1.5x the read time, <= 1 GB private memory.

lineage: 16 full-size SD1 files that are *sparse where data is not needed*: the shared base is a hole (reads
as zeros, costs no disk; this filesystem has no reflinks to share real bytes), and every model's own data —
fine-tunes, merges, a merge trained further, a text encoder / VAE swap — is written for real in a fixed set
of UNet blocks (IN01, IN04, M00, OUT05: 0.42 GB, a quarter of the UNet) and, for the swaps, in that
component: about 6.7 GB on disk for 34 GB of files. Reading a hole costs the page cache's zero-filling and
copying, not the disk: the read time is memory-bound, so the ratio is, if anything, harsher than on real
files; the engine's work per byte is the same (unless it skips zeros or identical bytes, which real models
would not give it). Times ``sdlens lineage FILES... --out DIR`` against reading the 16 files once.
Target: <= 3x the read time.

Where a command is not there yet the harness times a stand-in (the ``recipe()`` API, else ``sdlens matrix``)
and says so. ``--cold`` also times the recipe read and run with the files dropped from the page cache;
``--small`` runs the whole harness on tiny models (seconds) to check it; ``--keep`` keeps (and reuses) the
generated files; ``--only recipe|lineage``. Disk: about 8.5 GB (recipe) + 6.7 GB (lineage), checked first.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _measure import cpu_line, evict, f16_ranges, gb, mb, measure, read_once_seconds  # noqa: E402
from sdlens.testing.writers import save_safetensors  # noqa: E402
from sdlens.testing.zoo import realise_small_buffers  # noqa: E402
from sdlens.testing.zoo_unet import build_single_file  # noqa: E402

UNET, TE, VAE = "model.diffusion_model.", "cond_stage_model.", "first_stage_model."
MBW = {
    "BASE": 0.35, "IN00": 0.1, "IN01": 0.2, "IN02": 0.3, "IN03": 1.0, "IN04": 0.0, "IN05": 0.45,
    "IN06": 0.55, "IN07": 0.65, "IN08": 0.0, "IN09": 0.8, "IN10": 0.9, "IN11": 0.25, "M00": 1.0,
    "OUT00": 0.15, "OUT01": 0.35, "OUT02": 0.5, "OUT03": 0.7, "OUT04": 0.85, "OUT05": 1.0, "OUT06": 0.05,
    "OUT07": 0.6, "OUT08": 0.4, "OUT09": 0.0, "OUT10": 0.75, "OUT11": 0.95,
}  # fmt: skip
LINEAGE_BLOCKS = ("IN01", "IN04", "M00", "OUT05")  # where the lineage models' own data lives
GENERATED = ("cand", "model_mbw", "recipe.json", "lin_", "lineage", "mx")  # what --dir receives
Combine = Callable[[str, list[torch.Tensor]], torch.Tensor]


# --- files -------------------------------------------------------------------------------------------------


def fill_stream(path: Path, ranges: list[tuple[int, int]], seed: int) -> None:
    """Like ``_measure.fill_with_normals`` (normal values, std 0.05, fp16), but one stream continued across
    the ranges, so tensors do not all start with the same values (the stream repeats every 16 Mi values)."""
    block = (torch.randn(16 << 20, generator=torch.Generator().manual_seed(seed)) * 0.05).half().numpy()
    raw = block.tobytes()
    pos = 0
    with open(path, "r+b") as f:
        for begin, end in sorted(ranges):
            f.seek(begin)
            at = begin
            while at < end:
                n = min(len(raw) - pos, end - at)
                f.write(raw[pos : pos + n])
                at += n
                pos = (pos + n) % len(raw)
        f.flush()
        os.fsync(f.fileno())


def _template(path: Path, small: bool) -> Path:
    """An SD1 fp16 file with every weight a hole (full size) or zero (small), the schedule buffers real."""
    if not path.exists():
        sd = build_single_file("sd1", size="tiny" if small else "full", dtype=torch.float16)
        if small:
            sd = {k: torch.zeros_like(v) if k.startswith((UNET, TE, VAE)) else v for k, v in sd.items()}
        save_safetensors(realise_small_buffers(sd), path)
    return path


def key_blocks(path: Path) -> dict[str, str]:
    """File key -> merge block, as the matrix engine groups them (everything outside the UNet: BASE)."""
    from sdlens.analysis.matrix_plan import plan

    out: dict[str, str] = {}
    for task in plan([path, path]).tasks:
        for kp in task.keys:
            ref = kp.refs[0]
            if ref is not None:
                blocks = [g[6:] for g in kp.groups if g.startswith("block:")]
                out[ref.key] = blocks[0] if blocks else "BASE"
    return out


def derive(
    dst: Path, like: Path, parents: Sequence[Path], combine: Combine, keys: set[str] | None = None
) -> Path:
    """Write ``dst`` with ``like``'s header, tensor by tensor in offset order: each float tensor is
    ``combine(key, parent tensors as float32)`` cast to the stored dtype, the others are the first parent's.
    With ``keys``, ``dst`` starts as a sparse copy of ``like`` and only those keys are computed (and only
    they are read from the parents). Memory: one tensor per parent at a time."""
    from safetensors import safe_open

    tmp = dst.with_name(dst.name + ".tmp")
    with open(like, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = f.read(n)
    meta = json.loads(header)
    meta.pop("__metadata__", None)
    if keys is None:
        with open(tmp, "wb") as out:
            out.write(n.to_bytes(8, "little") + header)
            out.truncate(8 + n + max(v["data_offsets"][1] for v in meta.values()))
    else:
        subprocess.run(["cp", "--sparse=always", str(like), str(tmp)], check=True)
    handles = [safe_open(str(p), framework="pt") for p in parents]
    with open(tmp, "r+b") as out:
        for key, info in sorted(meta.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            if keys is not None and key not in keys:
                continue
            ts = [h.get_tensor(key) for h in handles]
            value = combine(key, [t.float() for t in ts]) if ts[0].is_floating_point() else ts[0]
            out.seek(8 + n + info["data_offsets"][0])
            out.write(value.to(ts[0].dtype).contiguous().view(torch.uint8).numpy().tobytes())
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(dst)
    return dst


def _noise(key: str, t: torch.Tensor, seed: int, std: float = 0.05) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 100_003 + zlib.crc32(key.encode()))
    return std * torch.randn(t.shape, generator=g)


def make_recipe_models(work: Path, small: bool) -> tuple[Path, list[Path]]:
    c1, c2, c3 = (work / f"cand{i}_fp16.safetensors" for i in (1, 2, 3))
    model = work / "model_mbw_fp16.safetensors"
    if not c1.exists():
        _template(c1, small)
        fill_stream(c1, [r for p in (UNET, TE, VAE) for r in f16_ranges(c1, p)], seed=0)
    for path, parts, seed in ((c2, (UNET, TE), 2), (c3, (UNET,), 3)):
        if not path.exists():
            shutil.copyfile(c1, path)
            fill_stream(path, [r for p in parts for r in f16_ranges(path, p)], seed=seed)
    if not model.exists():
        blocks = key_blocks(c1)
        derive(
            model,
            c1,
            [c1, c2],
            lambda k, t: t[0] * (1 - MBW[blocks.get(k, "BASE")]) + t[1] * MBW[blocks.get(k, "BASE")],
        )
    return model, [c1, c2, c3]


def make_lineage_models(work: Path, small: bool) -> tuple[list[Path], dict[str, str]]:
    """16 models and their known relations (name -> how it is made). Outside the data blocks every model
    is the (hole) base, bit-identical: per-block weights there are not identifiable, only the data blocks
    carry a merge's weights."""
    base = _template(work / "lin_00_base.safetensors", small)
    blocks = key_blocks(base)
    own = {k for k, b in blocks.items() if b in LINEAGE_BLOCKS}
    te = {k for k in blocks if k.startswith(TE)}
    vae = {k for k in blocks if k.startswith(VAE)}
    p = {"base": base}
    truth: dict[str, str] = {"base": "root (all weights a hole: zeros); the data blocks of m1..m5 are theirs"}

    def make(name: str, parents: list[str], combine: Combine, what: str, keys: set[str] = own) -> None:
        path = work / f"lin_{len(p):02d}_{name}.safetensors"
        if not path.exists():
            derive(path, base, [p[x] for x in parents] or [base], combine, keys)
        p[name] = path
        truth[name] = what

    for i in range(1, 6):
        make(f"m{i}", [], lambda k, t, i=i: _noise(k, t[0], i), "own weights in the data blocks (a root)")
    make("merge_12", ["m1", "m2"], lambda k, t: 0.5 * t[0] + 0.5 * t[1], "0.5 m1 + 0.5 m2")
    make("merge_34", ["m3", "m4"], lambda k, t: 0.3 * t[0] + 0.7 * t[1], "0.3 m3 + 0.7 m4")
    alpha = {"IN01": 0.2, "IN04": 0.0, "M00": 1.0, "OUT05": 0.6}
    make(
        "mbw_15",
        ["m1", "m5"],
        lambda k, t: t[0] * (1 - alpha[blocks[k]]) + t[1] * alpha[blocks[k]],
        f"per block m1*(1-a) + m5*a, a = {alpha}",
    )
    make("adddiff", ["m2", "m3", "base"], lambda k, t: t[0] + 0.5 * (t[1] - t[2]), "m2 + 0.5 (m3 - base)")
    make(
        "merge_12_trained",
        ["merge_12"],
        lambda k, t: t[0] + _noise(k, t[0], 40, 0.002),
        "merge_12 trained further (change std 0.002: 6 % of its values' 0.035)",
    )
    for j, parent in enumerate(("merge_12", "merge_34", "m1"), start=1):
        make(
            f"ft_of_{parent}",
            [parent],
            lambda k, t, j=j: t[0] + _noise(k, t[0], 50 + j, 0.001),
            f"fine-tune of {parent} (change std 0.001)",
        )
    make(
        "te_swap",
        ["m2"],
        lambda k, t: _noise(k, t[0], 60) if k.startswith(TE) else t[0],
        "m2 with its own text encoder",
        own | te,
    )
    make(
        "vae_swap",
        ["m4"],
        lambda k, t: _noise(k, t[0], 61) if k.startswith(VAE) else t[0],
        "m4 with its own VAE",
        own | vae,
    )
    return list(p.values()), truth


# --- runs --------------------------------------------------------------------------------------------------


def _has_command(name: str) -> bool:
    r = subprocess.run([sys.executable, "-m", "sdlens.cli", name, "--help"], capture_output=True)
    return r.returncode == 0


def _read_time(paths: Sequence[Path]) -> float:
    return min(sum(read_once_seconds(str(p)) for p in paths) for _ in range(2))


def bench_recipe(work: Path, small: bool, cold: bool = False) -> None:
    model, cands = make_recipe_models(work, small)
    paths = [model, *cands]
    size = sum(q.stat().st_size for q in paths)
    t_read = _read_time(paths)
    out = work / "recipe.json"
    if _has_command("recipe"):
        cmd = [sys.executable, "-m", "sdlens.cli", "recipe", str(model), "--from", *map(str, cands)]
        cmd += ["--json", str(out)]
        what = "sdlens recipe"
    elif importlib.util.find_spec("sdlens.analysis.recipe") is not None:
        code = (
            "import json, sys; from sdlens.analysis.recipe import recipe; "
            "r = recipe(sys.argv[1], sys.argv[2:-1]); open(sys.argv[-1], 'w').write(json.dumps(r.to_dict()))"
        )
        cmd = [sys.executable, "-c", code, str(model), *map(str, cands), str(out)]
        what = "recipe() API (STAND-IN: no `recipe` command in this tree yet)"
    else:
        cmd = [sys.executable, "-m", "sdlens.cli", "matrix", *map(str, paths), "--out", str(work / "mx")]
        cmd += ["--no-plots"]
        what = "sdlens matrix (STAND-IN: no `recipe` command nor API in this tree yet)"
    run = measure(cmd)
    if cold:  # page cache dropped for the files (posix_fadvise, no root needed): disk-bound
        evict(paths)
        t_read_cold = sum(read_once_seconds(str(q)) for q in paths)
        evict(paths)
        run_cold = measure(cmd)
    print(cpu_line())
    print(f"recipe: MODEL + 3 candidates, {gb(size)} together ({'tiny' if small else 'full-size SD1 fp16'})")
    print(f"  read the 4 files once : {t_read:7.2f} s")
    print(f"  {what}: {run.seconds:.2f} s, private {mb(run.peak_anon)}")
    print(f"  ratio                 : {run.seconds / t_read:.2f}x the read time (target <= 1.5x)")
    print(f"  private memory        : {mb(run.peak_anon)} (target <= 1000 MB)")
    if cold:
        print(
            f"  cold cache            : read once {t_read_cold:.2f} s, {what.split(' (')[0]} "
            f"{run_cold.seconds:.2f} s ({run_cold.seconds / t_read_cold:.2f}x)"
        )
    if out.exists():
        check_recipe(json.loads(out.read_text()))


def check_recipe(doc: dict) -> None:
    """Print the recovered per-block weights (C1, C2, C3) against the known (1 − α, α, 0)."""
    worst = 0.0
    method = doc.get("method") or {}
    print(f"  formula: {doc.get('formula')}")
    print(f"  verdict: {doc.get('verdict')}; method: {method.get('method')} ({method.get('text')})")
    print("  (truth: per-block weighted sum C1*(1-a) + C2*a, copies at a = 0 and 1; C3 not used)")
    print(f"  {'block':6} {'truth a':>8}  {'C1':>8} {'C2':>8} {'C3':>8}  verdict")
    for g in doc.get("groups", []):
        fit = g.get("fit") or {}
        w = (fit.get("affine") or {}).get("weights")
        a = MBW.get(g["group"])
        if w is None or a is None:
            print(f"  {g['group']:6} {'-':>8}  (no fit: {g.get('note')})")
            continue
        err = max(abs(w[0] - (1 - a)), abs(w[1] - a), abs(w[2]) if len(w) > 2 else 0.0)
        worst = max(worst, err)
        print(
            f"  {g['group']:6} {a:8.3f}  " + " ".join(f"{x:8.4f}" for x in w) + f"  {fit.get('verdict', '')}"
        )
    print(f"  largest weight error over the blocks: {worst:.2e} (target <= 1e-3)")


def bench_lineage(work: Path, small: bool) -> None:
    paths, truth = make_lineage_models(work, small)
    size = sum(q.stat().st_size for q in paths)
    disk = sum(q.stat().st_blocks * 512 for q in paths)
    t_read = _read_time(paths)
    out = work / "lineage"
    if _has_command("lineage"):
        cmd = [sys.executable, "-m", "sdlens.cli", "lineage", *map(str, paths), "--out", str(out)]
        what = "sdlens lineage"
    elif importlib.util.find_spec("sdlens.analysis.lineage") is not None:
        code = (
            "import json, sys, pathlib; from sdlens.analysis.lineage import lineage; r = lineage(sys.argv[2:]); "
            "o = pathlib.Path(sys.argv[1]); o.mkdir(exist_ok=True); "
            "(o / 'lineage.json').write_text(json.dumps(r.to_dict()))"
        )
        cmd = [sys.executable, "-c", code, str(out), *map(str, paths)]
        what = "lineage() API (STAND-IN: no `lineage` command in this tree yet)"
    else:
        cmd = [sys.executable, "-m", "sdlens.cli", "matrix", *map(str, paths), "--out", str(out)]
        what = "sdlens matrix (STAND-IN: no `lineage` command nor API in this tree yet)"
    run = measure(cmd)
    print(cpu_line())
    print(
        f"lineage: {len(paths)} models, {gb(size)} apparent, {gb(disk)} on disk "
        f"({'tiny' if small else 'full-size SD1 fp16, sparse where data is not needed'})"
    )
    print(f"  read the {len(paths)} files once: {t_read:7.2f} s")
    print(f"  {what}: {run.seconds:.2f} s, private {mb(run.peak_anon)}")
    print(f"  ratio                 : {run.seconds / t_read:.2f}x the read time (target <= 3x)")
    print("  known relations:")
    for name, how in truth.items():
        print(f"    {name:18} {how}")
    for f in sorted(out.glob("*.json")) if out.exists() else []:
        doc = json.loads(f.read_text())
        if isinstance(doc, dict) and "edges" in doc:
            print_edges(doc)


def _short(name: str | None) -> str:
    """``lin_06_merge_12.safetensors`` -> ``merge_12``."""
    stem = Path(str(name)).name.removesuffix(".safetensors")
    return stem[7:] if stem.startswith("lin_") else stem


def print_edges(doc: dict) -> None:
    """The tree ``lineage`` found, in short names (edges to the all-zero base by identity summed up)."""
    print(f"  found: roots {[_short(r) for r in doc.get('roots', [])]}")
    to_base = 0
    for e in doc["edges"]:
        a, b = _short(e.get("source", e.get("a"))), _short(e.get("target", e.get("b")))
        if e.get("kind") == "same-component" and "base" in (a, b):
            to_base += 1
            continue
        arrow = "->" if e.get("directed") else "--"
        keys = ("method", "weight", "alpha", "residual_share", "verdict", "components")
        extra = {k: e[k] for k in keys if e.get(k) not in (None, [], "")}
        evidence = "evidence" if e.get("evidence", True) else "nearest only"
        print(f"    {a} {arrow} {b}: {e.get('kind')} ({evidence}) {json.dumps(extra, default=str)}")
    print(f"    (+ {to_base} same-component edges to the base: every model shares its hole TE / VAE)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=None, help="work folder (default: a new one under /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the generated models (and reuse them)")
    ap.add_argument("--small", action="store_true", help="tiny models: check the harness in seconds")
    ap.add_argument("--only", choices=("recipe", "lineage"), default=None)
    ap.add_argument(
        "--cold", action="store_true", help="recipe: also time a read and a run with a cold cache"
    )
    args = ap.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="sdlens-bench-recipe-"))
    work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free
    need = (
        0
        if args.small
        else (4 * 2.2e9 if args.only != "lineage" else 0) + (7e9 if args.only != "recipe" else 0)
    )
    print(f"work folder {work}: {gb(free)} free, about {gb(int(need))} needed")
    if free < need + 5e9:
        raise SystemExit("not enough free disk space (keep 5 GB spare)")
    try:
        if args.only != "lineage":
            bench_recipe(work, args.small, args.cold)
        if args.only != "recipe":
            bench_lineage(work, args.small)
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
        elif not args.keep:  # a folder of the user's: only what this script made
            for q in work.glob("*"):
                if q.name.startswith(GENERATED) and q.is_dir():
                    shutil.rmtree(q, ignore_errors=True)
                elif q.name.startswith(GENERATED):
                    q.unlink()
        else:
            used = sum(q.stat().st_blocks * 512 for q in work.rglob("*") if q.is_file())
            print(f"kept {work} ({gb(used)} on disk)")


if __name__ == "__main__":
    main()
