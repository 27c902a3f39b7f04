"""Benchmark header-only `sdlens inspect` of a full-size FLUX.1-dev Q8_0 GGUF (issue 18: target < 0.5 s).

The file is sparse: the real header and tensor table of a ComfyUI-GGUF style FLUX.1-dev Q8_0 file (780
tensors, BFL keys, 2-D weights Q8_0, the rest F32), its data region a hole (no disk cost). Prints, in one run:

  * ``inspect()`` (the Python API, in-process, warm) against the gguf package's own ``GGUFReader`` on the
    same file (the baseline: parsing the container alone);
  * the CLI ``sdlens inspect --brief`` wall time (a fresh process: Python, imports and all).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _measure import cpu_line, gb, measure  # noqa: E402


def write_sparse_flux_q8(path: Path) -> int:
    """The header of a full-size FLUX.1-dev Q8_0 GGUF with a sparse data region; returns the tensor count."""
    from gguf import GGMLQuantizationType as T
    from gguf import GGUFWriter
    from gguf.quants import quant_shape_to_byte_shape

    from sdlens.testing.zoo_dit import denoiser_config, meta_state_dict, to_original

    cls, cfg = denoiser_config("flux_dev", size="full")
    sd = to_original("flux_dev", meta_state_dict(cls, cfg))
    w = GGUFWriter(str(path), "flux")
    w.add_quantization_version(2)
    w.add_file_type(7)  # MOSTLY_Q8_0
    total = 0
    for key, t in sd.items():
        shape = tuple(t.shape)
        if len(shape) == 2 and shape[-1] % 32 == 0:
            byte_shape = quant_shape_to_byte_shape(shape, T.Q8_0)
            nbytes = int(np.prod(byte_shape))
            w.add_tensor_info(key, byte_shape, np.dtype(np.uint8), nbytes, raw_dtype=T.Q8_0)
        else:
            nbytes = int(np.prod(shape)) * 4
            w.add_tensor_info(key, shape, np.dtype(np.float32), nbytes)
        total += -(-nbytes // 32) * 32
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    header = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(-(-header // 32) * 32 + total)
    return len(sd)


def best_of(fn, repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def main() -> None:
    print(cpu_line())
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dir", default=None, help="where to write the file (default: a temp dir)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="sdlens-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "flux1-dev-Q8_0.gguf"
    n = write_sparse_flux_q8(path)
    print(f"file: {path} ({gb(path.stat().st_size)}, {n} tensors, sparse)")

    from gguf import GGUFReader

    from sdlens.analysis.inspect import inspect

    report = inspect(path)
    print(f"  {report.summary}")
    api = best_of(lambda: inspect(path), args.repeat)
    base = best_of(lambda: GGUFReader(str(path)), args.repeat)
    print(
        f"inspect() in-process   : min {api[0] * 1e3:7.1f} ms  median {api[1] * 1e3:7.1f} ms   (target < 500 ms)"
    )
    print(
        f"gguf.GGUFReader alone  : min {base[0] * 1e3:7.1f} ms  median {base[1] * 1e3:7.1f} ms   (baseline)"
    )
    print(f"ratio inspect / GGUFReader: {api[0] / base[0]:.2f}x")
    cli = [sys.executable, "-m", "sdlens.cli", "inspect", "--brief", str(path)]
    runs = [measure(cli) for _ in range(args.repeat)]
    secs = sorted(r.seconds for r in runs)
    print(
        f"sdlens inspect --brief : min {secs[0]:6.2f} s  median {statistics.median(secs):6.2f} s (a fresh process)"
    )


if __name__ == "__main__":
    main()
