"""Benchmark `sdlens arch --compare all` (issue 6): the eight architectures at 1024², no weights, no network.

Runs the real command in a subprocess (`--json`, so each model's measuring time is read back), prints the time
per model, the total wall time and the peak memory of the process. Target: <= 60 s on 2 CPU cores, <= 2 GB RAM.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import cpu_line, gb, measure  # noqa: E402


def main() -> None:
    print(cpu_line())
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--res", default="1024x1024")
    args = ap.parse_args()
    cmd = [sys.executable, "-m", "sdlens.cli", "arch", "--compare", "all", "--res", args.res, "--json"]
    run = measure(cmd, env={"HF_HUB_OFFLINE": "1"})
    reports = json.loads(run.stdout)
    print(f"sdlens arch --compare all --res {args.res}  ({os.cpu_count()} CPU cores)")
    for r in reports:
        d = r["denoiser"]
        print(
            f"  {r['name']:<16} {r['seconds']:6.2f} s   {d['gemms']:5d} GEMMs   "
            f"{d['total_flops'] / d['batch'] / 1e12:7.2f} TFLOPs/forward   {r['params']:>15,} params"
        )
    measured = sum(r["seconds"] for r in reports)
    print(f"  models measured in {measured:.1f} s; whole command (imports, startup) {run.seconds:.1f} s")
    print(f"  peak RSS {gb(run.peak_rss)}, peak private memory {gb(run.peak_anon)}")
    ok = run.seconds <= 60 and run.peak_rss <= 2e9
    print("  target (<= 60 s, <= 2 GB):", "met" if ok else "NOT met")


if __name__ == "__main__":
    main()
