"""Benchmark `sdlens convert` (issue 8): a full-size SDXL-layout fp32 checkpoint with a full UNet EMA copy
(about 24 GB) -> fp16 with the EMA dropped (about 7 GB).

Baseline: the time to read the input once plus the time to write the output's number of bytes once (with
fsync, as convert does). Then `sdlens convert IN OUT --dtype fp16 --ema drop` without (`--no-verify`) and with
verification (the output re-opened and every tensor compared with the input). Prints the time ratios and the
peak memory of each run: VmHWM (peak RSS of the process) and the peak private memory (RssAnon).
Targets: <= 1.5x the baseline without verification, <= 2.5x with; peak RSS <= 1 GB.

Use --scale-ema 0 to leave the EMA out when the disk is small (the result says so); --verify-full also times
`--verify-full` (the input re-read and compared too). The load average is printed before each run: on a shared
machine, timings taken under a load above the core count are not comparable.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _measure import cpu_line, fill_with_normals, gb, mb, measure, read_once_seconds  # noqa: E402
from sdlens.io.open import open_checkpoint  # noqa: E402
from sdlens.testing.writers import save_safetensors  # noqa: E402
from sdlens.testing.zoo import realise_small_buffers  # noqa: E402
from sdlens.testing.zoo_unet import build_single_file  # noqa: E402


def make_input(workdir: Path, ema: bool) -> Path:
    path = workdir / f"sdxl_full_fp32{'_ema' if ema else ''}.safetensors"
    if path.exists():
        return path
    sd = realise_small_buffers(build_single_file("sdxl", size="full", dtype=torch.float32, ema=ema))
    save_safetensors(sd, path)
    with open_checkpoint(path) as ck:
        spans = sorted(
            (t.offset, t.offset + t.nbytes) for t in ck.tensors.values() if t.dtype == "F32" and t.nbytes > 64
        )
    merged: list[list[int]] = []
    for b, e in spans:
        if merged and b <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([b, e])
    fill_with_normals(path, [(b, e) for b, e in merged], dtype="fp32")
    return path


def write_once_seconds(path: Path, nbytes: int, block: int = 16 << 20) -> float:
    buf = bytes(block)
    t0 = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        left = nbytes
        while left > 0:
            left -= f.write(buf[: min(block, left)])
        os.fsync(f.fileno())
    dt = time.perf_counter() - t0
    path.unlink()
    return dt


def drop_caches() -> None:
    """Best effort (needs root): start each measured run with a cold page cache, as users do."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass


def main() -> None:
    print(cpu_line())
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--scale-ema", type=int, default=1, help="1: full UNet EMA copy; 0: no EMA (small disks)")
    ap.add_argument("--keep", action="store_true", help="keep the generated input")
    ap.add_argument("--verify-full", action="store_true", help="also time --verify-full")
    args = ap.parse_args()
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="sdlens-bench-convert-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"disk free in {workdir}: {gb(shutil.disk_usage(workdir).free)}")
    t = time.perf_counter()
    src = make_input(workdir, bool(args.scale_ema))
    print(f"input: {src.name} {gb(src.stat().st_size)} (generated in {time.perf_counter() - t:.0f} s)")
    out = workdir / "sdxl_fp16.safetensors"
    try:
        cmd = [
            sys.executable,
            "-m",
            "sdlens.cli",
            "convert",
            str(src),
            str(out),
            "--dtype",
            "fp16",
            "--ema",
            "drop",
        ]
        load = {}
        drop_caches()
        load["nv"] = os.getloadavg()[0]
        nv = measure([*cmd, "--no-verify"])
        out_size = out.stat().st_size
        out.unlink()
        drop_caches()
        load["base"] = os.getloadavg()[0]
        t_read = read_once_seconds(str(src))
        t_write = write_once_seconds(workdir / "write-test.bin", out_size)
        base = t_read + t_write
        drop_caches()
        load["v"] = os.getloadavg()[0]
        v = measure(cmd)
        print(v.stdout.strip())
        out.unlink()
        vf = None
        if args.verify_full:
            drop_caches()
            load["vf"] = os.getloadavg()[0]
            vf = measure([*cmd, "--verify-full"])
            out.unlink()
        print(f"output: {gb(out_size)}")
        print(
            f"{os.cpu_count()} cores; 1-min load average before each run: "
            + ", ".join(f"{k} {v:.2f}" for k, v in load.items())
        )
        print(f"baseline read input once   : {t_read:7.1f} s ({src.stat().st_size / t_read / 1e9:.2f} GB/s)")
        print(f"baseline write output once : {t_write:7.1f} s ({out_size / t_write / 1e9:.2f} GB/s)")
        print(
            f"convert, no verification   : {nv.seconds:7.1f} s = {nv.seconds / base:.2f}x baseline (target <= 1.5x); "
            f"peak RSS {mb(nv.peak_rss)}, private {mb(nv.peak_anon)}"
        )
        print(
            f"convert + verification     : {v.seconds:7.1f} s = {v.seconds / base:.2f}x baseline (target <= 2.5x); "
            f"peak RSS {mb(v.peak_rss)}, private {mb(v.peak_anon)}"
        )
        if vf is not None:
            print(
                f"convert + --verify-full    : {vf.seconds:7.1f} s = {vf.seconds / base:.2f}x baseline; "
                f"peak RSS {mb(vf.peak_rss)}, private {mb(vf.peak_anon)}"
            )
    finally:
        out.unlink(missing_ok=True)
        if not args.keep:
            src.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
