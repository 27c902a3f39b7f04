"""Benchmark `sdlens arch --measure` (issue 19): measured time and memory of the denoisers beside the estimates.

On CUDA: the eight released configs (`sdlens.arch.build.measured_models()`) at 1024², random weights, in fp16 and
bf16, SDPA vs math attention, eager and torch.compile (`--quick`: fp16 and bf16 with SDPA, fp16 with math, and
torch.compile for SDXL and FLUX only; a time budget skips what would not finish). Runs in one process: the CUDA
allocator's counters are reset for every measurement.

On the CPU: a small UNet config and SD 1.5 at 256², fp32, SDPA vs math, each in a fresh process (the CLI with
`--json`), so that glibc's heap holds no freed blocks from an earlier measurement.

Prints one table (time per step, achieved FLOP/s, weights and activation peaks measured / estimated, ratios) and
the notes that say why a figure is more than 20 % off its estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _measure import cpu_line  # noqa: E402
from sdlens.testing.measure_configs import UNET as SMALL_UNET  # noqa: E402


def gpu_lines() -> list[str]:
    if shutil.which("nvidia-smi") is None:
        return ["nvidia-smi: not found"]
    q = "--query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit"
    p = subprocess.run(["nvidia-smi", q, "--format=csv,noheader"], capture_output=True, text=True)
    return [f"GPU: {line.strip()}" for line in p.stdout.splitlines() if line.strip()] or [p.stderr.strip()]


def lscpu_line() -> str:
    if shutil.which("lscpu") is None:
        return cpu_line()
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")
    return f"lscpu: {name}; {os.cpu_count()} logical CPUs"


def row_of(m: dict[str, Any], label: str) -> dict[str, Any]:
    rows = {r["quantity"]: r for r in m["rows"]}
    mode = m["memory"]["estimate_mode"]
    s = m["settings"]
    return {
        "model": label,
        "dtype": s["dtype"],
        "attn": s["attn"],
        "compile": "yes" if s["compile"] else "",
        "res": f"{s['res'][0]}²" if s["res"][0] == s["res"][1] else f"{s['res'][0]}×{s['res'][1]}",
        "batch": s["denoiser_batch"],
        "step": m["times"]["step_s"],
        "compile_s": m["times"]["compile_s"],
        "flops": rows["achieved FLOP/s"]["measured"],
        "weights": rows["weights + buffers"],
        "live": rows[f"activations, live ({mode})"],
        "held": rows[f"activations, held ({mode})"],
        "peak": rows["weights + live activations"],
        "notes": [r["note"] for r in m["rows"] if r["note"]],
    }


def _gb(v: float | None) -> str:
    return "—" if v is None else f"{v / 1e9:.2f}" if v >= 1e8 else f"{v / 1e9:.3f}"


def _ratio(r: dict[str, Any]) -> str:
    return "—" if r["ratio"] is None else f"{r['ratio']:.2f}"


def print_table(rows: list[dict[str, Any]], held_label: str, flops_unit: str = "TFLOP/s") -> None:
    scale = {"TFLOP/s": 1e12, "GFLOP/s": 1e9}[flops_unit]
    head = (
        f"{'model':<14} {'dtype':<5} {'attn':<5} {'cmp':<3} {'res':>6} {'B':>2} {'ms/step':>9} {flops_unit:>8} "
        f"{'weights GB':>15} {'act. live GB':>16} {'ratio':>5} {held_label:>6} {'peak':>5}  notes"
    )
    print(head)
    print("-" * len(head))
    legend: list[str] = []
    for r in rows:
        if "error" in r:
            print(
                f"{r['model']:<14} {r.get('dtype', ''):<5} {r.get('attn', ''):<5} {r.get('compile', ''):<3} {r['error']}"
            )
            continue
        marks: list[str] = []
        for n in r["notes"]:
            if n not in legend:
                legend.append(n)
            if str(legend.index(n) + 1) not in marks:
                marks.append(str(legend.index(n) + 1))
        w, live = r["weights"], r["live"]
        print(
            f"{r['model']:<14} {r['dtype']:<5} {r['attn']:<5} {r['compile']:<3} {r['res']:>6} {r['batch']:>2} "
            f"{r['step'] * 1e3:9.1f} {r['flops'] / scale:8.1f} "
            f"{_gb(w['measured']) + ' / ' + _gb(w['estimate']):>15} "
            f"{_gb(live['measured']) + ' / ' + _gb(live['estimate']):>16} {_ratio(live):>5} "
            f"{_ratio(r['held']):>6} {_ratio(r['peak']):>5}  {','.join(marks)}"
            + (f"  (compile {r['compile_s']:.0f} s)" if r["compile_s"] else "")
        )
    for i, n in enumerate(legend, 1):
        print(f"[{i}] {n}")


def run_cuda(quick: bool, budget: float) -> list[dict[str, Any]]:
    import torch

    from sdlens.analysis.measure import measure
    from sdlens.arch.build import measured_models

    plans = []
    for model in measured_models():
        for dtype in ("fp16", "bf16"):
            for attn in ("sdpa", "math"):
                for comp in (False, True):
                    if quick and (
                        (attn == "math" and dtype != "fp16")
                        or (comp and (dtype != "fp16" or attn != "sdpa" or model not in ("sdxl", "flux_dev")))
                    ):
                        continue
                    plans.append((model, dtype, attn, comp))
    plans.sort(key=lambda p: p[3])  # every eager run first: compiles last, where the budget may cut them
    t0 = time.perf_counter()
    rows = []
    for model, dtype, attn, comp in plans:
        base = {"model": model, "dtype": dtype, "attn": attn, "compile": "yes" if comp else ""}
        if time.perf_counter() - t0 > budget:
            rows.append({**base, "error": f"skipped: over the {budget:.0f} s budget"})
            continue
        try:
            m = measure(model, device="cuda", res=(1024, 1024), dtype=dtype, attn=attn, compile=comp, runs=5)
            rows.append(row_of(m.to_dict(), model))
        except Exception as e:  # one failed configuration is a row, not the end of the benchmark
            rows.append({**base, "error": f"failed: {type(e).__name__}: {str(e)[:120]}"})
        finally:
            if comp:
                torch._dynamo.reset()
            torch.cuda.empty_cache()
        print(
            f"  done {model} {dtype} {attn}{' compile' if comp else ''} ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    return rows


def run_cpu(res: int) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp) / "small-unet.json"
        small.write_text(json.dumps(SMALL_UNET))
        for model, label, r in ((str(small), "small UNet", 384), ("sd1", "sd1", res)):
            for attn in ("sdpa", "math"):
                cmd = [sys.executable, "-m", "sdlens.cli", "arch", model, "--measure", "--device", "cpu"]
                cmd += ["--res", f"{r}x{r}", "--attn", attn, "--json"]
                p = subprocess.run(
                    cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
                )
                if p.returncode != 0:
                    rows.append({"model": label, "attn": attn, "error": p.stderr.strip()[-200:]})
                    continue
                rows.append(row_of(json.loads(p.stdout)["measured"], label))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CUDA: the short plan (under ~8 minutes on an H200)")
    ap.add_argument(
        "--budget", type=float, default=None, help="CUDA: seconds after which the rest is skipped"
    )
    ap.add_argument("--cpu-res", type=int, default=256, help="CPU: SD 1.5's resolution")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = ap.parse_args()
    import torch

    cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    print(f"torch {torch.__version__}; {lscpu_line()}")
    print(cpu_line())
    if cuda:
        for line in gpu_lines():
            print(line)
        budget = args.budget if args.budget is not None else (330.0 if args.quick else 3600.0)
        t0 = time.perf_counter()
        rows = run_cuda(args.quick, budget)
        print(f"\nsdlens arch --measure on CUDA at 1024², random weights ({time.perf_counter() - t0:.0f} s)")
        print_table(rows, "resv.")
    else:
        t0 = time.perf_counter()
        rows = run_cpu(args.cpu_res)
        print(
            f"\nsdlens arch --measure on the CPU, fp32, {torch.get_num_threads()} threads ({time.perf_counter() - t0:.0f} s)"
        )
        print_table(rows, "held", "GFLOP/s")
    print(
        "ratios: measured / estimate. act. live: CUDA max_memory_allocated / CPU resident peak with every tensor "
        "mapped on its own; resv./held: the allocator's reserved peak / the process peak with glibc's heap; "
        "peak: weights + live activations."
    )


if __name__ == "__main__":
    main()
