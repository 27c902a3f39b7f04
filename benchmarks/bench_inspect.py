"""Benchmark `sdlens inspect` on a full-size SDXL single file (issue 3).

Prints, in one run:
  * CLI wall time and peak memory of `sdlens inspect FILE` (header only), against the common approach of
    loading the whole state dict (safetensors.torch.load_file) — targets <= 1.0 s and <= 250 MB;
  * `sdlens inspect --scan` time as a ratio to reading the file once (target <= 1.5x).

The header-only part uses a sparse file (no disk cost). The scan part writes a real 6.9 GB fp16 file of
normal-distributed values (skip it with --no-scan).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _measure import cpu_line, fill_with_normals, gb, mb, measure, python_cmd, read_once_seconds  # noqa: E402
from sdlens.testing.writers import save_safetensors  # noqa: E402
from sdlens.testing.zoo import realise_small_buffers  # noqa: E402
from sdlens.testing.zoo_unet import build_single_file  # noqa: E402


def main() -> None:
    print(cpu_line())
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dir", default=None, help="where to write the files (default: a temp dir)")
    ap.add_argument("--no-scan", action="store_true", help="skip the --scan part (needs ~7 GB of disk)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="sdlens-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "sdxl_full_fp16.safetensors"
    sd = realise_small_buffers(build_single_file("sdxl", size="full", dtype=torch.float16))
    save_safetensors(sd, path)
    size = path.stat().st_size
    print(f"file: {path} ({gb(size)}, {len(sd)} tensors, sparse)")

    sdlens = [sys.executable, "-m", "sdlens.cli", "inspect", "--brief", str(path)]
    runs = [measure(sdlens) for _ in range(args.repeat)]
    best = min(runs, key=lambda r: r.seconds)
    print(
        f"sdlens inspect        : {best.seconds:6.2f} s  peak RSS {mb(best.peak_rss)}  private {mb(best.peak_anon)}"
        f"   (targets <= 1.0 s, <= 250 MB)"
    )
    print("  " + best.stdout.strip().splitlines()[1].strip("│ ") if best.stdout else "")
    # the common approach (A1111 Model Toolkit, the notebooks): the whole state dict in RAM, then look at it
    base = measure(
        python_cmd(
            "from pathlib import Path; from safetensors.torch import load; "
            f"sd = load(Path({str(path)!r}).read_bytes()); print(sum(t.numel() for t in sd.values()))"
        )
    )
    print(
        f"baseline load to RAM  : {base.seconds:6.2f} s  peak RSS {mb(base.peak_rss)}  private {mb(base.peak_anon)}"
    )
    print(
        f"ratio baseline/sdlens : time {base.seconds / best.seconds:.1f}x, memory {base.peak_rss / max(best.peak_rss, 1):.1f}x"
    )

    if args.no_scan:
        return
    data_start = min(t.offset for t in _index(path))
    fill_with_normals(path, [(data_start, size)])
    read_once_seconds(str(path))  # warm the page cache
    t_read = min(read_once_seconds(str(path)) for _ in range(2))
    scan = min((measure(sdlens + ["--scan"]) for _ in range(2)), key=lambda r: r.seconds)
    print(f"read file once        : {t_read:6.2f} s  ({size / t_read / 1e9:.2f} GB/s, page cache warm)")
    print(
        f"sdlens inspect --scan : {scan.seconds:6.2f} s  private {mb(scan.peak_anon)}  "
        f"ratio to read once {scan.seconds / t_read:.2f}x (target <= 1.5x)"
    )


def _index(path: Path):
    from sdlens.io.open import open_checkpoint

    with open_checkpoint(path) as ck:
        return list(ck.tensors.values())


if __name__ == "__main__":
    main()
