"""Dequantisation speed of a bitsandbytes 4-bit weight of FLUX's largest Linear shape (3072 x 12288, 37.7 M
values): sdlens' numpy dequantiser (``sdlens.io.bnb4``) per quant type, nesting and dtype, best of 3, and
bitsandbytes' own CPU ``dequantize_4bit`` on the same data where it is installed. Prints seconds and M
values/s; no targets are asserted."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _measure import cpu_line  # noqa: E402
from sdlens.io import bnb4  # noqa: E402


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _bnb_baseline(parts: dict[str, np.ndarray], quant_type: str, repeat: int) -> float | None:
    try:
        import bitsandbytes.functional as bnbf
        import torch
    except Exception:
        return None
    qs = {k: torch.from_numpy(v) for k, v in parts.items() if k not in ("weight", "quant_state")}
    qs[f"quant_state.bitsandbytes__{quant_type}"] = torch.from_numpy(parts["quant_state"])
    state = bnbf.QuantState.from_dict(qs, device=torch.device("cpu"))
    packed = torch.from_numpy(parts["weight"])
    return _best(lambda: bnbf.dequantize_4bit(packed, state), repeat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=3072)
    ap.add_argument("--cols", type=int, default=12288)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    n = args.rows * args.cols
    w = np.random.default_rng(0).standard_normal((args.rows, args.cols), dtype=np.float32) * 0.02
    out = np.empty(n, dtype=np.float32)
    print(cpu_line())
    print(f"weight {args.rows} x {args.cols} ({n / 1e6:.1f} M values), best of {args.repeat}")
    for quant_type, nested in [("nf4", False), ("nf4", True), ("fp4", False)]:
        for dtype in ("bfloat16", "float16", "float32"):
            parts = bnb4.quantise_4bit_numpy(w, quant_type, 64, nested, dtype=dtype)
            state = bnb4.parse_quant_state(parts["quant_state"])

            def run(parts=parts, state=state):
                bnb4.dequantise_parts(parts, state, out=out)

            t = _best(run, args.repeat)
            line = f"{quant_type} nested={nested!s:5} {dtype:8}  sdlens {t:6.3f} s  {n / t / 1e6:6.0f} M/s"
            ref = _bnb_baseline(parts, quant_type, args.repeat)
            if ref is not None:
                line += f"   bitsandbytes {ref:6.3f} s  {n / ref / 1e6:6.0f} M/s"
            print(line, flush=True)


if __name__ == "__main__":
    main()
