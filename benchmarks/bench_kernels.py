"""The fused pair kernel's throughput per stored dtype, on this CPU and on numba's ``generic`` target (issue 14).

For each of fp16 / bf16 / fp32, two 32 M-element arrays in memory (b = a + small noise): ``pair_stats`` (every
sum diff needs: ‖a‖², ‖b‖², ⟨a,b⟩, ‖a−b‖², Σ|a−b|, the exact count of differing values, max|a−b|), one thread,
best of 5, against a torch baseline doing the notebooks' ``torch.dist(a.float(), b.float())`` (one sum only)
in the same run. Then the matrix kernel (``pair_rows``, 8 rows). The same measurements are repeated in a
subprocess with ``NUMBA_CPU_NAME=generic`` (no AVX / F16C: the integer fp16 path), so one run shows both the
host's and a baseline CPU's code. Prints G elements/s and the ratios; no targets are asserted."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _measure import cpu_line  # noqa: E402

N = 1 << 25


def _arrays(n: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    a = rng.standard_normal(n, dtype=np.float32)
    b = a + np.float32(1e-3) * rng.standard_normal(n, dtype=np.float32)

    def bf16(x: np.ndarray) -> np.ndarray:
        return (x.view(np.uint32) >> 16).astype(np.uint16)

    return {"F16": (a.astype(np.float16), b.astype(np.float16)), "BF16": (bf16(a), bf16(b)), "F32": (a, b)}


def _best(f, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(n: int, repeat: int) -> dict[str, float]:
    """G elements/s of pair_stats and M positions/s of pair_rows (8 rows) per dtype, in this process."""
    from sdlens.analysis import kernels

    kernels.set_threads(1)
    out: dict[str, float] = {}
    data = _arrays(n)
    for dt, (a, b) in data.items():
        kernels.pair_stats(a[: 1 << 17], b[: 1 << 17], dt)  # compile / load once
        out[f"pair_stats {dt}"] = (
            n / _best(lambda a=a, b=b, dt=dt: kernels.pair_stats(a, b, dt), repeat) / 1e9
        )
        m = n // 8
        rows = [np.roll(a, k)[:m] for k in range(8)]
        kernels.pair_rows([r[:2048] for r in rows], dt, 0, 2048, 15)
        out[f"pair_rows {dt}"] = (
            m
            / _best(
                lambda rows=rows, dt=dt, m=m: kernels.pair_rows(rows, dt, 0, m, 1 | 2 | 8),
                max(1, repeat // 2),
            )
            / 1e6
        )
    return out


def torch_baseline(n: int, repeat: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(1)
    out = {}
    for dt, (a, b) in _arrays(n).items():
        if dt == "BF16":
            ta, tb = (torch.from_numpy(x.view(np.int16)).view(torch.bfloat16) for x in (a, b))
        else:
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        out[f"torch.dist {dt}"] = (
            n / _best(lambda ta=ta, tb=tb: torch.dist(ta.float(), tb.float()), repeat) / 1e9
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=N, help="elements per array")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.n, args.repeat)))
        return
    print(cpu_line())
    host = measure(args.n, args.repeat)
    env = dict(os.environ, NUMBA_CPU_NAME="generic")
    env.pop("NUMBA_CPU_FEATURES", None)
    run = subprocess.run(
        [sys.executable, __file__, "--child", "-n", str(args.n), "--repeat", str(args.repeat)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    generic = json.loads(run.stdout.splitlines()[-1])
    base = torch_baseline(args.n, args.repeat)
    print(f"{'kernel (1 thread)':<18} {'host':>10} {'generic':>10}   {'torch.dist':>10}  host/torch")
    for dt in ("F16", "BF16", "F32"):
        k = f"pair_stats {dt}"
        t = base[f"torch.dist {dt}"]
        print(
            f"{k:<18} {host[k]:>8.2f} G {generic[k]:>8.2f} G   {t:>8.2f} G  {host[k] / t:>6.2f}x   (elements/s)"
        )
    for dt in ("F16", "BF16", "F32"):
        k = f"pair_rows {dt}"
        print(
            f"{k:<18} {host[k]:>8.0f} M {generic[k]:>8.0f} M   (positions/s, 8 rows = 28 pairs, d2 + dp + sq)"
        )


if __name__ == "__main__":
    main()
