"""Benchmark `sdlens embed` (issue 7): 50 prompts x 3 full-size SDXL text-encoder checkpoints (CLIP-L + bigG,
fp16, sgm keys, random weights at the real sizes), both encoders, the tokenizer made on the spot.

The files are generated once in --workdir (about 1.6 GB each): A; B = A with bigG's layers 16-31 re-drawn;
C = all re-drawn. `sdlens embed A B C` runs in a subprocess (as users run it), with the default pooling (eos)
and optionally --flatten (the whole 77-token sequence). Prints wall time and peak memory.
Target: <= 120 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _measure import cpu_line, fill_with_normals, gb, measure  # noqa: E402
from sdlens.io.open import open_checkpoint  # noqa: E402
from sdlens.testing.tokenizer import write_clip_tokenizer  # noqa: E402
from sdlens.testing.writers import save_safetensors  # noqa: E402
from sdlens.testing.zoo import realise_small_buffers  # noqa: E402
from sdlens.testing.zoo_unet import build_single_file  # noqa: E402

SUBJECTS = [
    "a cat",
    "a dog",
    "an old man",
    "a young woman",
    "a red car",
    "a castle",
    "a forest",
    "a city street",
    "a bowl of fruit",
    "a mountain lake",
]
STYLES = [
    "oil painting",
    "photo, sharp focus, highly detailed",
    "anime style",
    "watercolor, soft light",
    "pixel art",
]


def prompts() -> list[str]:
    return [f"{s}, {st}" for s in SUBJECTS for st in STYLES]  # 50 prompts


def make_files(workdir: Path) -> list[Path]:
    paths = [workdir / f"sdxl_te_{c}.safetensors" for c in "abc"]
    if all(p.exists() for p in paths):
        return paths
    full = build_single_file("sdxl", size="full", dtype=torch.float16)
    sd = realise_small_buffers({k: v for k, v in full.items() if k.startswith("conditioner.")})
    a = save_safetensors(sd, paths[0])
    with open_checkpoint(a) as ck:
        infos = [t for t in ck.tensors.values() if t.dtype == "F16"]
        begin, end = min(t.offset for t in infos), max(t.offset + t.nbytes for t in infos)
        late = [
            (t.offset, t.offset + t.nbytes)
            for t in infos
            if t.key.startswith("conditioner.embedders.1.model.transformer.resblocks.")
            and int(t.key.split(".")[6]) >= 16
        ]
    fill_with_normals(a, [(begin, end)], seed=0)
    os.system(f"cp --reflink=auto {a} {paths[1]}")
    fill_with_normals(paths[1], late, seed=1)
    os.system(f"cp --reflink=auto {a} {paths[2]}")
    fill_with_normals(paths[2], [(begin, end)], seed=2)
    return paths


def gflops(threads: int) -> float:
    """fp32 matmul throughput of this machine right now (a bigG-sized MLP matmul), for reading the timing."""
    import time

    torch.set_num_threads(threads)
    a, w = torch.randn(512, 1280), torch.randn(5120, 1280)
    torch.nn.functional.linear(a, w)
    t0 = time.perf_counter()
    for _ in range(10):
        torch.nn.functional.linear(a, w)
    return 10 * 2 * 512 * 1280 * 5120 / (time.perf_counter() - t0) / 1e9


def main() -> None:
    print(cpu_line())
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "sdlens-bench-embed")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for torch (the target is for 2)")
    ap.add_argument("--flatten", action="store_true", help="also time --pool flatten (77 tokens per prompt)")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    files = make_files(args.workdir)
    tok = write_clip_tokenizer(args.workdir / "tokenizer")
    prompt_file = args.workdir / "prompts.txt"
    prompt_file.write_text("\n".join(prompts()) + "\n")
    print(
        f"3 files of {gb(files[0].stat().st_size)} (CLIP-L + bigG fp16), {len(prompts())} prompts, "
        f"{args.threads} threads"
    )
    env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    print(
        f"fp32 matmul now: {gflops(args.threads):.0f} GFLOPS on {args.threads} threads "
        "(the run needs about 2.1 TFLOP with --pool eos: bigG's forward dominates)"
    )
    pools = ["eos", "flatten"] if args.flatten else ["eos"]
    for pool in pools:
        cmd = [
            sys.executable,
            "-m",
            "sdlens.cli",
            "embed",
            *map(str, files),
            "--prompts",
            str(prompt_file),
            "--tokenizer",
            str(tok),
            "--pool",
            pool,
            "--out",
            str(args.workdir / f"out-{pool}"),
        ]
        load0 = os.getloadavg()[0]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        run = measure(cmd, env=env)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        ok = "meets" if run.seconds <= 120 else "misses"
        print(
            f"sdlens embed --pool {pool}: {run.seconds:.1f} s wall ({ok} the 120 s target), {cpu:.1f} s CPU, "
            f"peak RSS {gb(run.peak_rss)}, peak private memory {gb(run.peak_anon)}; "
            f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
            "(other processes slow a shared machine down)"
        )


if __name__ == "__main__":
    main()
