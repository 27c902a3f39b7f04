"""Benchmark `sdlens matrix` against the original notebook's method (issue 5).

N generated full-size SD1-layout fp16 checkpoints (about 2.1 GB each): every model has its own UNet, odd ones
their own text encoder, one its own VAE (as in a real folder of fine-tunes). In the same run:
  * the notebook method (v2): every model loaded whole and kept, then every pair compared with `torch.dist`
    per key in float32, summed per component;
  * `sdlens matrix` (one pass, Gram matrices, memory bounded), with its outputs and plots;
  * the time to read all files once (page cache warm; with --cold also with a cold cache).
Prints the time ratio, sdlens time / read time, peak private memory (RssAnon of the process tree, polled)
and bytes read by each, and projects private memory and bytes read to 220 SDXL models.
Targets: >= 10x faster than the notebook, <= 3x the read time, each file read once, <= 24 GB at 220 SDXL.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _measure import (  # noqa: E402
    cpu_line,
    evict,
    f16_ranges,
    fill_with_normals,
    gb,
    mb,
    measure,
    python_cmd,
    read_once_seconds,
)
from sdlens.testing.writers import save_safetensors  # noqa: E402
from sdlens.testing.zoo import realise_small_buffers  # noqa: E402
from sdlens.testing.zoo_unet import build_single_file  # noqa: E402

SDXL_FP16_BYTES = 6_938_000_000  # a full SDXL checkpoint in fp16 (UNet + both text encoders + VAE)


def make_models(workdir: Path, n: int) -> list[Path]:
    paths = [workdir / f"sd1_model{i}_fp16.safetensors" for i in range(n)]
    if all(p.exists() for p in paths):
        return paths
    base = paths[0]
    if not base.exists():
        save_safetensors(
            realise_small_buffers(build_single_file("sd1", size="full", dtype=torch.float16)), base
        )
        everything = f16_ranges(base, "")
        fill_with_normals(base, [(min(a for a, _ in everything), max(b for _, b in everything))], seed=0)
    unet, te, vae = (
        f16_ranges(base, p) for p in ("model.diffusion_model.", "cond_stage_model.", "first_stage_model.")
    )
    for i, p in enumerate(paths[1:], start=1):
        if p.exists():
            continue
        os.system(f"cp --reflink=auto {base} {p}")
        fill_with_normals(p, unet, seed=100 + i)
        if i % 2:
            fill_with_normals(p, te, seed=200 + i)
        if i == 3:
            fill_with_normals(p, vae, seed=300 + i)
    return paths


NOTEBOOK = """
import itertools, sys, torch
from pathlib import Path
from safetensors.torch import load
paths = PATHS
models = [load(Path(p).read_bytes()) for p in paths]   # every model kept loaded
def comp(k):
    return "unet" if k.startswith("model.diffusion_model.") else "te" if k.startswith("cond_stage_model.") else \\
        "vae" if k.startswith("first_stage_model.") else "other"
out = {}
for i, j in itertools.combinations(range(len(models)), 2):
    a, b = models[i], models[j]
    acc = {}
    for k in a:
        if k in b and a[k].shape == b[k].shape and a[k].is_floating_point():
            acc[comp(k)] = acc.get(comp(k), 0.0) + float(torch.dist(a[k].float(), b[k].float(), 2)) ** 2
    out[(i, j)] = {c: v ** 0.5 for c, v in acc.items()}
print(len(out))
"""


def main() -> None:
    print(cpu_line())
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dir", default=None)
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("--keep", action="store_true", help="keep the generated models")
    ap.add_argument("--repeat", type=int, default=2, help="sdlens runs per variant (the fastest is reported)")
    ap.add_argument(
        "--cold", action="store_true", help="also time a read and an sdlens run with a cold cache"
    )
    args = ap.parse_args()
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="sdlens-bench-matrix-"))
    workdir.mkdir(parents=True, exist_ok=True)
    paths = make_models(workdir, args.n)
    size = sum(p.stat().st_size for p in paths)
    print(f"{len(paths)} models, {gb(size)} together")
    t_read = min(sum(read_once_seconds(str(p)) for p in paths) for _ in range(2))

    out_dir = workdir / "out"
    cmd = [sys.executable, "-m", "sdlens.cli", "matrix", *map(str, paths), "--out", str(out_dir)]
    sd = min((measure(cmd) for _ in range(args.repeat)), key=lambda r: r.seconds)
    sd_np = min((measure([*cmd, "--no-plots"]) for _ in range(args.repeat)), key=lambda r: r.seconds)
    if args.cold:  # page cache dropped for the files (no root needed): disk-bound, informative
        evict(paths)
        t_read_cold = sum(read_once_seconds(str(p)) for p in paths)
        evict(paths)
        sd_cold = measure(cmd)
    plan_bytes = _plan_bytes(paths)

    # the notebook keeps every model in RAM: run it on as many models as fit, and scale by pairs if fewer
    avail = psutil.virtual_memory().available
    n_nb = len(paths)
    while n_nb > 2 and n_nb * paths[0].stat().st_size * 1.25 > avail:
        n_nb -= 1
    nb = measure(python_cmd(NOTEBOOK.replace("PATHS", repr([str(p) for p in paths[:n_nb]]))))
    nb_seconds = nb.seconds
    if n_nb < len(paths):
        n = len(paths)
        load = t_read * n_nb / n  # loading scales with models, comparing with pairs
        nb_seconds = load * n / n_nb + (nb.seconds - load) * (n * (n - 1)) / (n_nb * (n_nb - 1))
        print(f"(notebook method run on {n_nb} of {n} models to fit in RAM; time scaled by pairs)")

    print(f"read all files once  : {t_read:7.2f} s")
    print(f"notebook method      : {nb_seconds:7.2f} s  private {mb(nb.peak_anon)} ({n_nb} models loaded)")
    print(
        f"sdlens matrix        : {sd.seconds:7.2f} s  private {mb(sd.peak_anon)} (CLI, incl. CSV, JSON and plots)"
    )
    print(f"  --no-plots         : {sd_np.seconds:7.2f} s  private {mb(sd_np.peak_anon)} (CLI, CSV and JSON)")
    print(
        f"speed-up vs notebook : {nb_seconds / sd.seconds:.1f}x with plots, {nb_seconds / sd_np.seconds:.1f}x "
        "without (target >= 10x)"
    )
    print(
        f"sdlens / read time   : {sd.seconds / t_read:.2f}x with plots, {sd_np.seconds / t_read:.2f}x without "
        "(target <= 3x)"
    )
    if args.cold:
        print(
            f"cold cache           : read once {t_read_cold:.2f} s, sdlens {sd_cold.seconds:.2f} s "
            f"({sd_cold.seconds / t_read_cold:.2f}x)"
        )
    print(
        f"bytes read           : sdlens {gb(plan_bytes)} (each tensor once, from its mapped file: "
        f"{plan_bytes / size:.3f} of the files); notebook {gb(size)} (whole files, then kept in RAM)"
    )
    n220 = 220
    chunk = 512 << 20
    sums = n220 * n220 * 8 * 7 * 30  # 7 N×N float64 sums for ~30 groups
    print(
        f"projection, 220 SDXL : sdlens reads {n220 * SDXL_FP16_BYTES / 1e12:.2f} TB once, private memory "
        f"<= {(chunk + sums + n220 * 4_000_000) / 1e9:.2f} GB (chunk + sums + headers); notebook keeps "
        f"{n220 * SDXL_FP16_BYTES / 1e12:.2f} TB in RAM, or, with 24 GB, re-reads files per pair: "
        f"{n220 * (n220 - 1) * SDXL_FP16_BYTES / 1e12:.0f} TB read"
    )
    if not args.keep and args.dir is None:
        shutil.rmtree(workdir, ignore_errors=True)


def _plan_bytes(paths: list[Path]) -> int:
    from sdlens.analysis.matrix import plan

    return plan(paths).nbytes


if __name__ == "__main__":
    main()
