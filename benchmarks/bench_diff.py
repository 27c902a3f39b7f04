"""Benchmark `sdlens diff` against the original notebook's method (issue 4).

Two full-size SD1-layout fp16 checkpoints (about 2 GB each) are generated: B is A with the UNet re-drawn
(changed) and everything else identical. In the same run:
  * the notebook method: both state dicts loaded whole, `torch.dist` per common key in float32;
  * `sdlens diff A B --json` (streamed, every metric per tensor, aggregates, verdict);
  * the time to read both files once (page cache warm).
Prints the time ratio, sdlens time / read time, and the peak private memory (RssAnon of the process tree,
polled; mmapped input pages are page cache, not the tool's memory) of each.
Targets: >= 3x faster than the notebook, <= 2x the read time, private memory <= the notebook's.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _measure import cpu_line, fill_with_normals, gb, mb, measure, python_cmd, read_once_seconds  # noqa: E402
from sdlens.io.open import open_checkpoint  # noqa: E402
from sdlens.testing.writers import save_safetensors  # noqa: E402
from sdlens.testing.zoo import realise_small_buffers  # noqa: E402
from sdlens.testing.zoo_unet import build_single_file  # noqa: E402


def make_pair(workdir: Path) -> tuple[Path, Path]:
    a, b = workdir / "sd1_a_fp16.safetensors", workdir / "sd1_b_fp16.safetensors"
    if a.exists() and b.exists():
        return a, b
    sd = realise_small_buffers(build_single_file("sd1", size="full", dtype=torch.float16))
    save_safetensors(sd, a)
    with open_checkpoint(a) as ck:
        infos = [t for t in ck.tensors.values() if t.dtype == "F16"]
        unet = [(t.offset, t.offset + t.nbytes) for t in infos if t.key.startswith("model.diffusion_model.")]
        begin, end = min(t.offset for t in infos), max(t.offset + t.nbytes for t in infos)
    fill_with_normals(a, [(begin, end)], seed=0)
    os.system(f"cp --reflink=auto {a} {b}")
    fill_with_normals(b, unet, seed=1)  # the UNet re-drawn: every UNet tensor changed
    return a, b


NOTEBOOK = """
import sys, torch
from pathlib import Path
from safetensors.torch import load
a = load(Path(sys.argv[1]).read_bytes())
b = load(Path(sys.argv[2]).read_bytes())
out = {}
for k in a:
    if k in b and a[k].shape == b[k].shape:
        out[k] = float(torch.dist(a[k].float(), b[k].float(), 2))
print(len(out))
"""


API = """
import sys, time
import numpy as np
from sdlens.analysis.diff import diff
t0 = time.perf_counter()
from sdlens.analysis import _jit  # noqa: F401  (numba's start-up and the cached kernels, once per process)
from sdlens.analysis.kernels import pair_stats
pair_stats(np.zeros(1 << 17, np.float16), np.zeros(1 << 17, np.float16), "F16")
warm = time.perf_counter() - t0
best = min(_time(diff, sys.argv[1], sys.argv[2]) for _ in range(2))
print(f"{warm:.3f} {best:.3f}")
"""

TIMER = """
def _time(f, *args):
    t0 = time.perf_counter()
    f(*args)
    return time.perf_counter() - t0
"""


def main() -> None:
    print(cpu_line())
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="sdlens-bench-diff-"))
    workdir.mkdir(parents=True, exist_ok=True)
    a, b = make_pair(workdir)
    size = a.stat().st_size + b.stat().st_size
    print(f"files: {a.name} + {b.name} ({gb(size)} together)")
    for _ in range(2):
        read_once_seconds(str(a)), read_once_seconds(str(b))
    t_read = min(read_once_seconds(str(a)) + read_once_seconds(str(b)) for _ in range(2))
    code = NOTEBOOK.replace("sys.argv[1]", repr(str(a))).replace("sys.argv[2]", repr(str(b)))
    nb = measure(python_cmd(code))
    out_json = workdir / "diff.json"
    sd = min(
        (
            measure([sys.executable, "-m", "sdlens.cli", "diff", str(a), str(b), "--json", str(out_json)])
            for _ in range(2)
        ),
        key=lambda r: r.seconds,
    )
    api_code = (
        API.replace("best =", TIMER + "best =")
        .replace("sys.argv[1]", repr(str(a)))
        .replace("sys.argv[2]", repr(str(b)))
    )
    api = measure(python_cmd(api_code))
    warm, t_api = (float(x) for x in api.stdout.split()[-2:])
    print(f"read both files once : {t_read:6.2f} s")
    print(f"notebook method      : {nb.seconds:6.2f} s  private {mb(nb.peak_anon)}")
    print(f"sdlens diff          : {sd.seconds:6.2f} s  private {mb(sd.peak_anon)}")
    print(
        f"sdlens diff() API    : {t_api:6.2f} s  in a running process (+{warm:.2f} s once per process to "
        "load the compiled kernels)"
    )
    print(
        f"speed-up vs notebook : {nb.seconds / sd.seconds:.1f}x CLI, {nb.seconds / t_api:.1f}x API (target >= 3x)"
    )
    print(f"sdlens / read time   : {sd.seconds / t_read:.2f}x CLI, {t_api / t_read:.2f}x API (target <= 2x)")
    print(f"private memory ratio : {sd.peak_anon / nb.peak_anon:.2f} of the notebook's")
    print(
        "verdict: "
        + " | ".join(ln.strip(" •") for ln in sd.stdout.splitlines() if ln.lstrip().startswith("•"))
    )


if __name__ == "__main__":
    main()
