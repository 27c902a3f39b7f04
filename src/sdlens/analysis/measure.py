"""``sdlens arch --measure``: run the denoiser ``analyse`` counts, with random weights on a real device, and set
its measured time and memory beside the estimates.

The model is the same class and config as the estimate's (``sdlens.arch.build``), built on the device with the
class's own random initialisation (nothing is downloaded), fed the inputs the pipeline passes
(``denoiser_inputs``), and run under ``torch.inference_mode()``: warm-up forwards, then timed ones. One sampling
step is one forward at the denoiser batch ``analyse`` counts (CFG: twice the images).

Memory, two activation peaks: *live* tensors and what the allocator *held*. On CUDA the caching allocator's own
counters (``max_memory_allocated`` / ``max_memory_reserved`` after ``reset_peak_memory_stats``); on Linux CPUs
the process's resident high-water mark (``VmHWM``, reset by writing ``5`` to ``/proc/self/clear_refs`` after
glibc's ``malloc_trim(0)``), for the live peak over one forward with every large allocation mapped on its own
(``mallopt``), for the held peak over the timed forwards; elsewhere the CPU peaks are reported unavailable. See
``docs/arch.md``.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from sdlens.analysis.cost import ArchReport, analyse, resolve
from sdlens.arch import build as B
from sdlens.choices import MeasureAttention, MeasureDevice, Precision, check_choice
from sdlens.errors import SdlensError

CPU_MEMORY_SHARE = 0.5  # a CPU run is refused when its estimate exceeds this share of the available memory
NOTE_ABOVE = 0.20  # measured and estimated figures further apart than this get a note saying why
SMALL = 16e6  # CPU figures under this many bytes are within the reach of the process's own noise
Unit = Literal["s", "bytes", "flop/s"]


@dataclass
class Row:
    """One line of the table: a measured figure, its estimate where one exists, and why they differ."""

    quantity: str
    unit: Unit
    measured: float | None
    estimate: float | None = None
    note: str | None = None

    @property
    def ratio(self) -> float | None:
        if self.measured is None or not self.estimate:
            return None
        return self.measured / self.estimate

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


@dataclass
class MeasureReport:
    model: str
    name: str
    cls_name: str
    source: str
    settings: dict[str, Any]  # device, device name, dtype, attention, compile, res, batches, runs, torch …
    params: int  # of the random-weight model that ran
    params_estimate: int  # the estimate's (the meta-built model's)
    times: dict[str, Any]  # forward_s (every timed run), min_s, median_s, step_s, denoise_s, compile_s
    flops_per_forward: int  # traced FLOPs of one forward at the denoiser batch
    memory: dict[str, Any]  # method, and the bytes the rows show
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    arch: ArchReport | None = field(default=None, repr=False)  # the estimate (not in to_dict: see --json)

    def row(self, quantity: str) -> Row:
        return next(r for r in self.rows if r.quantity == quantity)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "arch"}
        d["rows"] = [r.to_dict() for r in self.rows]
        return d


# --------------------------------------------------------------------------- devices


def resolve_device(device: MeasureDevice) -> torch.device:
    """``auto``: CUDA when there is one, else the CPU; ``cuda`` without one is one clear line."""
    check_choice(device, "device", MeasureDevice)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA support"
        raise SdlensError(
            None, f"--device cuda: no CUDA device is available (torch {torch.__version__}, {build})"
        )
    return torch.device(device)


def default_dtype(device: torch.device) -> Precision:
    """fp16 on a GPU; fp32 on the CPU, whose half-precision kernels are slow or missing."""
    return "fp16" if device.type == "cuda" else "fp32"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() == "model name":
                name = line.split(":", 1)[1].strip()
                break
    return f"{name} ({torch.get_num_threads()} threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- memory probes

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
MAPPED_BELOW = 64 << 10  # the live-tensor pass: every allocation from 64 KiB up is its own mapping
MAPPED_AFTER = 32 << 20  # glibc's ceiling of the dynamic threshold, where a warmed-up process sits


class _CudaMemory:
    """The caching allocator's counters: live tensors (allocated) and what it holds from the driver (reserved)."""

    method = (
        "CUDA caching allocator over the timed forwards: live tensors = max_memory_allocated, held = "
        "max_memory_reserved (after empty_cache and reset_peak_memory_stats); the CUDA context is in neither"
    )

    live_forwards = 0  # forwards live_pass runs

    def __init__(self, device: torch.device):
        self.device = device
        self.available = True

    def now(self) -> int:
        _sync(self.device)
        return torch.cuda.memory_allocated(self.device)

    def start(self) -> None:
        _sync(self.device)
        torch.cuda.empty_cache()  # so that the reserved peak is what these forwards asked for
        torch.cuda.reset_peak_memory_stats(self.device)
        self.base = (torch.cuda.memory_allocated(self.device), torch.cuda.memory_reserved(self.device))

    def prepare(self) -> None:
        pass

    def finish(self) -> None:
        pass

    def live_pass(self, call: Callable[[], Any]) -> int | None:
        return None  # read over the timed forwards (live())

    def held(self) -> int:
        _sync(self.device)
        return torch.cuda.max_memory_reserved(self.device) - self.base[1]

    def live(self) -> int:
        return torch.cuda.max_memory_allocated(self.device) - self.base[0]


class _LinuxProcessMemory:
    """The process's resident set: ``VmRSS`` now, ``VmHWM`` its peak since the last reset (``clear_refs``).

    Live tensors: from before the build, glibc maps every allocation of 64 KiB or more on its own
    (``mallopt(M_MMAP_THRESHOLD)``), so that freeing a tensor returns its pages at once; after a warm-up, one
    forward's resident peak is the peak of its live tensors. Held: then glibc's threshold goes to 32 MiB, where its
    dynamic threshold settles in a warmed-up process (the dynamic rule, once off, cannot be turned back on), and
    the peak over the timed forwards counts what the heap keeps for reuse, as in any process. In a process whose
    heap already holds freed blocks (an earlier measurement), new tensors reuse them and the live figure rises."""

    method = (
        "process resident memory (Linux): VmHWM of /proc/self/status, reset by writing 5 to /proc/self/clear_refs "
        "after glibc malloc_trim(0); live tensors = one forward after a warm-up, allocations from 64 KiB up "
        "mapped on their own (mallopt M_MMAP_THRESHOLD); held = one more forward with glibc's heap (threshold "
        "32 MiB), before the timed ones"
    )

    def __init__(self) -> None:
        self.available = self._works()
        self.libc = self._glibc()
        self.live_forwards = 0  # forwards live_pass runs

    @staticmethod
    def _status(field_name: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
        raise OSError(f"no {field_name} in /proc/self/status")

    def _works(self) -> bool:
        if not sys.platform.startswith("linux"):
            return False
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return self._status("VmHWM") > 0
        except (OSError, ValueError):
            return False

    @staticmethod
    def _glibc() -> Any:
        try:
            libc = ctypes.CDLL(None)
            libc.gnu_get_libc_version  # noqa: B018  (glibc only: musl and others have no mallopt rule)
            return libc
        except (OSError, AttributeError):
            return None

    def _trim(self) -> None:
        gc.collect()
        if self.libc is not None:
            self.libc.malloc_trim(0)

    def now(self) -> int:
        self._trim()
        return self._status("VmRSS")

    def _reset(self) -> int:
        self._trim()
        Path("/proc/self/clear_refs").write_text("5")
        return self._status("VmRSS")

    def prepare(self) -> None:
        if self.libc is not None:
            self.libc.mallopt(M_MMAP_THRESHOLD, MAPPED_BELOW)

    def finish(self) -> None:
        if self.libc is not None:  # as glibc's dynamic rule leaves them in a warmed-up process
            self.libc.mallopt(M_MMAP_THRESHOLD, MAPPED_AFTER)
            self.libc.mallopt(M_TRIM_THRESHOLD, 2 * MAPPED_AFTER)

    def live_pass(self, call: Callable[[], Any]) -> int | None:
        """Warm up, then one forward's resident peak with every tensor mapped on its own; then the held mode."""
        if self.libc is None:
            return None
        try:
            call()  # lazy initialisation (thread pools, kernel caches) outside the measured forward
            base = self._reset()
            call()
            self.live_forwards = 2
            return self._status("VmHWM") - base
        finally:
            self.finish()

    def start(self) -> None:
        self.base = self._reset()

    def held(self) -> int:
        return self._status("VmHWM") - self.base

    def live(self) -> int | None:
        return None  # measured by live_pass


def _probe(device: torch.device) -> _CudaMemory | _LinuxProcessMemory:
    return _CudaMemory(device) if device.type == "cuda" else _LinuxProcessMemory()


# --------------------------------------------------------------------------- guards


def available_memory() -> int:
    """Bytes this process may still allocate: the machine's available memory, or less where a cgroup (a
    container's memory limit: v2 ``memory.max``, v1 ``memory.limit_in_bytes``) leaves less."""
    import psutil

    available = psutil.virtual_memory().available
    for limit, used in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            cap = Path(limit).read_text().strip()
            if cap.isdigit():
                return min(available, max(int(cap) - int(Path(used).read_text().strip()), 0))
        except (OSError, ValueError):
            continue
    return available


def _check_fits(device: torch.device, need_weights: int, need_total: int, what: str) -> None:
    """Refuse before building: on CUDA when the weights alone do not fit the free memory; on the CPU when the
    estimated weights + activation peak exceed half of the memory available (never push the machine to OOM)."""
    gb = 1e9
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        if need_weights > free:
            raise SdlensError(
                None,
                f"--measure: {what}'s weights alone ({need_weights / gb:.1f} GB) do not fit the "
                f"{free / gb:.1f} GB free on {torch.cuda.get_device_name(device)}; try --dtype fp16 or a smaller config",
            )
        return
    available = available_memory()
    if need_total > CPU_MEMORY_SHARE * available:
        raise SdlensError(
            None,
            f"--measure on the CPU: {what} needs about {need_total / gb:.1f} GB (weights + activation peak, "
            f"estimated), more than half of the {available / gb:.1f} GB available; use a smaller --res or a "
            "config.json of a smaller model",
        )


# --------------------------------------------------------------------------- the run


def _bytes_of(inputs: Any) -> int:
    from torch.utils._pytree import tree_leaves

    return sum(t.untyped_storage().nbytes() for t in tree_leaves(inputs) if isinstance(t, torch.Tensor))


def _buffer_bytes(model: torch.nn.Module) -> int:
    return sum(b.numel() * b.element_size() for b in model.buffers())


def _attention(attn: str) -> contextlib.AbstractContextManager:
    if attn == "math":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _running(attn: str) -> Iterator[None]:
    with torch.inference_mode(), _attention(attn):
        yield


def _timed(call: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    out = call()
    _sync(device)
    seconds = time.perf_counter() - t0
    del out
    return seconds


def measure(
    model: str | Path | B.ArchSpec,
    *,
    device: MeasureDevice = "auto",
    res: tuple[int, int] | None = None,
    batch: int = 1,
    cfg: bool | None = None,
    dtype: Precision | None = None,
    attn: MeasureAttention = "sdpa",
    compile: bool = False,
    warmup: int = 1,
    runs: int = 3,
    tokens: int | None = None,
    seed: int = 0,
    steps: int | None = None,
) -> MeasureReport:
    """Time and measure one denoiser forward of ``model`` with random weights on ``device``, beside the
    estimates of :func:`sdlens.analysis.cost.analyse` at the same settings. ``dtype`` None: fp16 on CUDA, fp32
    on the CPU. ``attn``: ``sdpa`` (PyTorch's default dispatch, compared with the fused-attention estimate) or
    ``math`` (the unfused kernel, compared with the materialised-scores estimate). Order: compile (timed
    apart), the peaks' own untimed forwards, ``warmup`` forwards, ``runs`` timed ones.

    On a Linux CPU the measurement changes process state for good: glibc's mmap / trim thresholds stay fixed
    (32 / 64 MiB; setting them ends glibc's dynamic rule) and ``VmHWM`` / ``ru_maxrss`` are reset. A second
    measurement in the same process may see a heap that holds freed blocks; the CLI runs one per process."""
    check_choice(attn, "attn", MeasureAttention)
    dev = resolve_device(device)
    dtype = dtype or default_dtype(dev)
    check_choice(dtype, "dtype", Precision)
    if warmup < 0 or runs < 1:
        raise SdlensError(None, "--runs must be at least 1 and --warmup at least 0")
    spec = model if isinstance(model, B.ArchSpec) else resolve(model)
    est = analyse(spec, res=res, batch=batch, cfg=cfg, dtype=dtype, tokens=tokens, steps=steps)
    spec = B.with_tokens(spec, tokens)
    s = est.settings
    width, height = s["res"]
    eff = s["denoiser_batch"]
    mode = "fused" if attn == "sdpa" else "materialised"
    dt = B.DTYPES[dtype]

    meta = B.build_denoiser(spec.cls_name, spec.config, dt)  # the estimate's model, for its buffers
    est_weights = est.components[0].weight_bytes(dtype) + _buffer_bytes(meta)
    est_act = getattr(est.denoiser, f"peak_{mode}")
    what = f"{est.name} at {width}×{height}, denoiser batch {eff}{' (CFG)' if s['cfg'] else ''}, {dtype}"
    _check_fits(dev, est_weights, est_weights + est_act, what)

    probe = _probe(dev)
    if probe.available:
        probe.prepare()
    before = probe.now() if probe.available else 0
    try:
        net = B.build_denoiser(spec.cls_name, spec.config, dt, device=dev)
        weights = probe.now() - before if probe.available else None
        params = B.count_params(net)
        inputs = B.denoiser_inputs(spec, net, eff, width, height, dt, device=dev, seed=seed)
        result = _run(net, inputs, dev, attn, compile, warmup, runs, probe)
    except torch.OutOfMemoryError:
        raise SdlensError(
            None,
            f"--measure: {what} ran out of memory on {device_name(dev)} (estimate: "
            f"{(est_weights + est_act) / 1e9:.1f} GB for weights + activations)",
        ) from None
    except (RuntimeError, NotImplementedError) as e:
        if "can't allocate memory" in str(e):  # the CPU allocator's out-of-memory error
            raise SdlensError(None, f"--measure: {what} ran out of memory on the CPU") from None
        if "not implemented for" not in str(e):
            raise  # the forward ran on meta: anything else is sdlens's bug, not the user's input
        raise SdlensError(
            None, f"--measure: {dtype} on {dev.type}: {str(e).splitlines()[0]} (try another --dtype)"
        ) from None
    finally:
        net = inputs = None
        if probe.available:
            probe.finish()
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    times = result["times"]
    times["step_s"] = times["median_s"]  # one sampling step = one forward at the denoiser batch
    times["denoise_s"] = s["steps"] * times["step_s"]
    settings = {
        "device": dev.type,
        "device_name": device_name(dev),
        "dtype": dtype,
        "attn": attn,
        "compile": compile,
        "res": [width, height],
        "latent": s["latent"],
        "batch": batch,
        "cfg": s["cfg"],
        "denoiser_batch": eff,
        "steps": s["steps"],
        "text_tokens": s["text_tokens"],
        "warmup": warmup,
        "runs": runs,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "seed": seed,
    }
    live, held = result["live"], result["held"]
    memory = {
        "method": probe.method if probe.available else UNAVAILABLE,
        "estimate_mode": mode,
        "weights": weights,
        "inputs": result["inputs"],
        "activation_live": live,
        "activation_held": held,
        "peak": None if live is None or weights is None else weights + live,
        "estimate_weights": est_weights,
        "estimate_buffers": _buffer_bytes(meta),
        "estimate_activation": est_act,
    }
    rows = _rows(times, est.denoiser.total_flops, memory, dev, compile)
    notes = _notes(memory, dev, attn, params, est.params)
    return MeasureReport(
        spec.key,
        est.name,
        spec.cls_name,
        spec.source,
        settings,
        params,
        est.params,
        times,
        est.denoiser.total_flops,
        memory,
        rows,
        notes,
        est,
    )


UNAVAILABLE = (
    "unavailable: the process peak is read from Linux's /proc/self/status and clear_refs, absent here"
)


def _run(
    net: torch.nn.Module,
    inputs: dict[str, Any],
    dev: torch.device,
    attn: str,
    compile: bool,
    warmup: int,
    runs: int,
    probe: _CudaMemory | _LinuxProcessMemory,
) -> dict[str, Any]:
    """Compile (timed apart), warm up, time ``runs`` forwards; the activation peaks are over the memory resident
    before them (weights and inputs), plus the inputs' bytes (the estimate counts the inputs)."""
    fn = torch.compile(net) if compile else net

    def call() -> Any:
        return fn(**inputs, return_dict=False)

    compile_s = None
    live = held = None
    untimed = 0
    with _running(attn):
        if compile:
            compile_s = _timed(call, dev)  # the first call compiles (and runs once)
            untimed += 1
        if probe.available:  # the peaks from untimed forwards of their own
            live = probe.live_pass(call)  # CPU: every tensor mapped on its own (None on CUDA)
            untimed += probe.live_forwards
            probe.start()
            _timed(call, dev)
            untimed += 1
            held = probe.held()
            live = probe.live() if live is None else live
        for _ in range(warmup):  # in the allocator's final state, right before the timed forwards
            _timed(call, dev)
        untimed += warmup
        seconds = [_timed(call, dev) for _ in range(runs)]
    in_bytes = _bytes_of(inputs)
    return {
        "times": {
            "forward_s": seconds,
            "min_s": min(seconds),
            "median_s": statistics.median(seconds),
            "compile_s": compile_s,
            "untimed_forwards": untimed,
        },
        "inputs": in_bytes,
        "live": None if live is None else max(live, 0) + in_bytes,
        "held": None if held is None else max(held, 0) + in_bytes,
    }


# --------------------------------------------------------------------------- rows and notes

WEIGHTS = "weights + buffers"
LIVE = "activations, live"
HELD = "activations, held"
PEAK = "weights + live activations"


def _rows(
    times: dict[str, Any], flops: int, m: dict[str, Any], dev: torch.device, compile: bool
) -> list[Row]:
    mode = m["estimate_mode"]
    act = m["estimate_activation"]
    rows = [
        Row("forward, fastest", "s", times["min_s"]),
        Row("step (median forward)", "s", times["step_s"]),
        Row("achieved FLOP/s", "flop/s", flops / times["step_s"] if times["step_s"] else None),
    ]
    if compile:
        rows.append(Row("compile + first call", "s", times["compile_s"]))
    rows += [
        Row(WEIGHTS, "bytes", m["weights"], m["estimate_weights"]),
        Row(f"{LIVE} ({mode})", "bytes", m["activation_live"], act),
        Row(f"{HELD} ({mode})", "bytes", m["activation_held"], act),
        Row(PEAK, "bytes", m["peak"], m["estimate_weights"] + act),
    ]
    for r in rows:
        r.note = _why(r, dev.type == "cpu", mode, compile)
    return rows


def _why(r: Row, cpu: bool, mode: str, compile: bool) -> str | None:
    """Plain words for a gap above ``NOTE_ABOVE`` between a measured figure and its estimate."""
    if r.ratio is None or abs(r.ratio - 1) <= NOTE_ABOVE:
        return None
    over = r.ratio > 1
    small = (
        "a figure of a few MB, the size of the process's own allocations while it runs (Python objects, library "
        "pages touched for the first time): "
        if cpu and r.unit == "bytes" and r.estimate is not None and r.estimate < SMALL
        else ""
    )
    return (small + (_reason(r, cpu, mode, compile, over) or "")) or None


def _reason(r: Row, cpu: bool, mode: str, compile: bool, over: bool) -> str | None:
    if r.quantity == PEAK:
        return "the sum of the weights and the live activations: see their rows"
    if r.quantity == WEIGHTS:
        if not over:
            return "less than parameters × bytes: the process reused memory freed before the build"
        return (
            "the resident memory grew by more than the tensors while building: the initialisation's temporaries, "
            "glibc's heap and library pages touched for the first time count too"
            if cpu
            else "the allocator rounds every tensor up to a multiple of 512 bytes (many small tensors)"
        )
    if r.quantity.startswith(HELD) and over:
        return (
            "glibc's heap keeps freed blocks for reuse and cannot always fit a new tensor into the holes, so the "
            "process's resident peak is above the live tensors' (the live-tensor row measures without that)"
            if cpu
            else "the caching allocator keeps freed blocks, rounds requests up to whole blocks and segments, and "
            "cannot always reuse a freed block (fragmentation); the live-tensor row is without that"
        )
    if over:
        reasons = [
            "the estimate counts the tensors the forward's ops return; workspaces inside kernels "
            + (
                "(oneDNN copies a convolution's weight and input into its blocked layout at every call: with large "
                "convolutions the copy of the largest weight shows)"
                if cpu
                else "(cuBLAS, cuDNN, attention)"
            )
            + " are not counted"
        ]
        if mode == "materialised":
            reasons.append(
                "the math attention path holds more than the scores and probabilities the estimate counts: its "
                "softmax also builds a boolean mask of the scores (one byte each), and scaled copies of the query"
            )
        if compile:
            reasons.append("torch.compile's generated code allocates its own buffers")
        return "; ".join(reasons)
    reasons = []
    if compile:
        reasons.append(
            "torch.compile fuses ops and frees or reuses buffers sooner, so fewer tensors are live at once"
        )
    if mode == "materialised":
        reasons.append(
            "this math path never held the scores and the probabilities of every head at once (it works in place "
            "or in chunks)"
        )
    reasons.append("kernels freed intermediates sooner than the traced eager forward keeps them")
    if cpu:
        reasons.append("the resident peak counts only pages written, and misses what glibc's heap reused")
    return "; ".join(reasons)


def _notes(m: dict[str, Any], dev: torch.device, attn: str, params: int, params_estimate: int) -> list[str]:
    notes = []
    if params != params_estimate:
        notes.append(f"the model that ran has {params:,} parameters, the estimate's {params_estimate:,}")
    if m["activation_held"] is None:
        notes.append(f"memory {UNAVAILABLE}")
    elif m["activation_live"] is None:
        notes.append(
            "the live-tensor peak needs glibc's mallopt (not this C library): only the held peak is shown"
        )
    if m["estimate_buffers"]:
        notes.append(
            f"weights + buffers: the estimate is the parameters plus {m['estimate_buffers']:,} bytes of buffers "
            "(e.g. positional embeddings), which are not parameters"
        )
    if dev.type == "cuda":
        notes.append("nvidia-smi shows more: the CUDA context (~0.3-1 GB) is in neither allocator figure")
    if attn == "sdpa":
        notes.append(
            "sdpa: PyTorch's dispatch picks a fused attention kernel (flash / memory-efficient on CUDA, the flash "
            "kernel on CPUs), so the estimate beside it is the fused-attention one"
        )
    return notes
