"""Shared benchmark helpers: run a command, measure wall time and peak memory of its process tree."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Run:
    seconds: float
    peak_rss: int  # bytes, VmHWM of the child (polled; includes mapped file pages)
    peak_anon: int  # bytes, max RssAnon of the process tree, polled (private memory, not page cache)
    stdout: str


def _mem(pid: int) -> tuple[int, int]:
    """(RssAnon of the process tree, VmHWM of the process) in bytes."""
    total = hwm = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    total += int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:") and p == pid:
                    hwm = int(line.split()[1]) * 1024
        except OSError:
            pass
    return total, hwm


def measure(cmd: list[str], env: dict[str, str] | None = None, poll: float = 0.02) -> Run:
    """Run ``cmd``; wall seconds, peak RSS (rusage) and peak private memory (polled RssAnon)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})}
    )
    peak = hwm = 0
    stop = False

    def watch() -> None:
        nonlocal peak, hwm
        while not stop:
            anon, h = _mem(proc.pid)
            peak, hwm = max(peak, anon), max(hwm, h)
            time.sleep(poll)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    out, errb = proc.communicate()
    seconds = time.perf_counter() - t0
    stop = True
    th.join()
    if proc.returncode != 0:
        sys.stderr.write(errb.decode())
        raise SystemExit(f"command failed: {' '.join(cmd)}")
    return Run(seconds, hwm, peak, out.decode())


def cpu_line() -> str:
    """The machine a figure was measured on: CPU model, cores and the vector features the kernels can use."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown CPU":
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    import platform

    wanted = [
        f
        for f in ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_fp16", "asimd", "fphp")
        if f in flags
    ]
    return (
        f"CPU: {model} ({platform.machine()}, {os.cpu_count()} cores; {' '.join(wanted) or 'no AVX2/F16C'})"
    )


def python_cmd(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def read_once_seconds(path: str, block: int = 16 << 20) -> float:
    """Time to read a file front to back once (the floor for any tool that must see every byte)."""
    buf = bytearray(block)
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
    return time.perf_counter() - t0


def gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB"


def fill_with_normals(
    path: str | Path, ranges: list[tuple[int, int]], seed: int = 0, dtype: str = "fp16"
) -> None:
    """Overwrite byte ranges of a (sparse) file with normal values (std 0.05) stored as ``dtype`` (fp16 or
    fp32), then fsync: real data for benchmarks."""
    import torch

    values = torch.randn(16 << 20, generator=torch.Generator().manual_seed(seed)) * 0.05
    block = (values.half() if dtype == "fp16" else values).numpy().tobytes()
    with open(path, "r+b") as f:
        for begin, end in ranges:
            f.seek(begin)
            pos = begin
            while pos < end:
                n = min(len(block), end - pos)
                f.write(block[:n])
                pos += n
        f.flush()
        os.fsync(f.fileno())


def f16_ranges(path: str | Path, prefix: str) -> list[tuple[int, int]]:
    """Byte ranges of a checkpoint's fp16 tensors whose keys start with ``prefix`` (for filling with data)."""
    from sdlens.io.open import open_checkpoint

    with open_checkpoint(path) as ck:
        return [
            (t.offset, t.offset + t.nbytes)
            for t in ck.tensors.values()
            if t.key.startswith(prefix) and t.dtype == "F16"
        ]


def evict(paths: list[Path]) -> None:
    """Drop the files' pages from the page cache (posix_fadvise DONTNEED: no root needed)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
