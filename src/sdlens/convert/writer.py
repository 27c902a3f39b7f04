"""Execute a :class:`~sdlens.convert.plan.ConversionPlan`: stream every tensor once, cast on the way, write to a
temporary file (or folder) beside the target, verify, and only then rename it into place.

One sequential pass per source file (:mod:`sdlens.convert.passes`): the bytes read are hashed (sha256 for the
provenance), cast and handed to a writer thread, which records a digest of each tensor's bytes for the
verification. Memory: six 32 MB read blocks and four cast buffers, whatever the model size. Safety: the input is
opened read-only; any exception (KeyboardInterrupt included) removes the temporary output; a target that
already exists is only replaced after the new one has been verified.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import queue
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdlens.convert import verify as verification
from sdlens.convert.layouts import Item
from sdlens.convert.plan import PROVENANCE_META, ConversionPlan, nbytes
from sdlens.convert.sources import assemble, open_passes, pieces_of, source_streams
from sdlens.errors import ProblemsFound, SdlensError
from sdlens.io.dtypes import torch_dtype
from sdlens.words import plural

if TYPE_CHECKING:
    from sdlens.io.base import Checkpoint

CAST_ELEMS = 8 << 20
F16_INF_BITS = 0x7C00  # fp16 magnitude bits of inf (NaN above)
_PLACEHOLDER = "~" * 56


@dataclass
class RangeStats:
    """fp16 range problems found while casting."""

    overflow: int = 0  # finite values that become inf
    underflow: int = 0  # non-zero values that become 0
    tensors_overflow: dict[str, int] = field(default_factory=dict)
    tensors_underflow: dict[str, int] = field(default_factory=dict)
    max_abs: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        top = lambda d: dict(sorted(d.items(), key=lambda kv: -kv[1])[:10])  # noqa: E731
        return {
            "overflow": self.overflow,
            "underflow": self.underflow,
            "max_abs": self.max_abs,
            "tensors_overflow": top(self.tensors_overflow),
            "tensors_underflow": top(self.tensors_underflow),
            "tensors_with_overflow": len(self.tensors_overflow),
            "tensors_with_underflow": len(self.tensors_underflow),
        }


class _Caster:
    """Casts flat tensors into pooled buffers, counting fp16 overflow / underflow.

    :meth:`cast` returns the cast chunk and a ``release`` callback: the buffer goes back to the pool when the
    writer thread is done with it (``depth`` buffers per dtype bound the memory and pace the reader)."""

    def __init__(self, stats: RangeStats, depth: int = 4):
        import torch

        self.stats = stats
        self.depth = depth
        self.pools: dict[Any, queue.Queue] = {}
        self.wait = 0.0  # seconds waiting for a buffer the writer has not given back yet
        self._mag = torch.empty(CAST_ELEMS, dtype=torch.int16)

    def _buffer(self, dtype, n: int):
        import torch

        q = self.pools.get(dtype)
        if q is None:
            q = self.pools[dtype] = queue.Queue()
            for _ in range(self.depth):
                q.put(torch.empty(CAST_ELEMS, dtype=dtype))
        t0 = time.perf_counter()
        b = q.get()
        self.wait += time.perf_counter() - t0
        if b.numel() < n:  # a chunk larger than CAST_ELEMS (callers split; kept for safety)
            b = torch.empty(n, dtype=dtype)
        return b, (lambda: q.put(b))

    def cast(self, key: str, x, dtype) -> tuple[Any, Callable[[], None]]:
        """``x`` (flat) as ``dtype`` in a pooled buffer, and the callback that gives the buffer back."""
        import torch

        buf, release = self._buffer(dtype, x.numel())
        y = buf[: x.numel()]
        y.copy_(x)
        if x.numel() > self._mag.numel():
            self._mag = torch.empty(x.numel(), dtype=torch.int16)
        if dtype == torch.float16 and x.dtype != torch.float16 and x.numel():
            self.check_f16(key, x, y)
        return y, release

    def check_f16(self, key: str, x, y) -> None:
        """Count finite values of ``x`` that became inf in ``y`` and non-zero values that became 0.

        Cheap in the common case: one pass over ``y``'s magnitude bits (fp16 bit patterns order like their
        magnitudes) gives max |y| (>= inf: something overflowed or is NaN) and min |y| (0: a zero, maybe an
        underflow); the exact counts are only taken for the chunks where one of those is hit."""
        import torch

        st = self.stats
        mag = self._mag[: y.numel()]
        torch.bitwise_and(y.view(torch.int16), 0x7FFF, out=mag)
        lo, hi = (int(v) for v in torch.aminmax(mag))
        if hi >= F16_INF_BITS:  # inf or NaN in y: the exact count, and max |x| from x itself
            mn, mx = (float(v) for v in torch.aminmax(x))
            st.max_abs = max(st.max_abs, abs(mn), abs(mx))
            ovf = int((torch.isinf(y) & ~torch.isinf(x)).sum())
            if ovf:
                st.overflow += ovf
                st.tensors_overflow[key] = st.tensors_overflow.get(key, 0) + ovf
        else:  # max |x| to fp16 precision
            st.max_abs = max(st.max_abs, float(torch.tensor(hi, dtype=torch.int16).view(torch.float16)))
        if lo == 0:  # some y is (+-)0 (usually a handful): count the non-zero x among them
            import numpy as np

            at = torch.from_numpy(np.flatnonzero(mag.numpy() == 0))
            und = int(torch.count_nonzero(x[at]))
            if und > 0:
                st.underflow += und
                st.tensors_underflow[key] = st.tensors_underflow.get(key, 0) + und


def _raw(t) -> memoryview:
    """The bytes of a contiguous tensor."""
    import torch

    return memoryview(t.contiguous().view(-1).view(torch.uint8).numpy())


# --------------------------------------------------------------------------- hashing the sources


class _Hasher(threading.Thread):
    """sha256 of source files that no conversion pass read in full (run inline: one sequential read each)."""

    def __init__(self, files: list[str]):
        super().__init__(daemon=True, name="sdlens-hash")
        self.files = files
        self.digests: dict[str, str] = {}
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            buf = bytearray(8 << 20)
            view = memoryview(buf)
            for f in self.files:
                h = hashlib.sha256()
                with open(f, "rb", buffering=0) as fh:
                    while (n := fh.readinto(buf)) and not self.stop.is_set():
                        h.update(view[:n])
                self.digests[f] = h.hexdigest()
        except BaseException as e:  # reported by the caller
            self.error = e


def _source_files(ckpts: list[Checkpoint]) -> list[str]:
    files: list[str] = []
    for ck in ckpts:
        files += [str(f) for f in ck.files]
    return list(dict.fromkeys(files))


def _provenance(plan: ConversionPlan, files: list[str], hashes: bool) -> tuple[str, dict[str, str]]:
    """The provenance list (JSON) with placeholders for the hashes; placeholder -> file."""
    from sdlens import __version__

    holders = {f: (_PLACEHOLDER + f"{i:08d}") if hashes else "" for i, f in enumerate(files)}
    base = Path(plan.input)
    entry = {
        "tool": "sdlens",
        "version": __version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": base.name,
        "source_sha256": {
            (str(Path(f).relative_to(base)) if base.is_dir() else Path(f).name): holders[f] or None
            for f in files
        },
        "operations": plan.operations,
    }
    if plan.loras is not None:
        entry["merged_loras"] = [f.provenance() for f in plan.loras.files]
    prev = plan.metadata.get(PROVENANCE_META)
    history: list[Any] = []
    if prev:
        try:
            loaded = json.loads(prev)
            history = loaded if isinstance(loaded, list) else [loaded]
        except ValueError:
            history = [prev]
    return json.dumps([*history, entry], separators=(",", ":")), {v: k for k, v in holders.items() if v}


# --------------------------------------------------------------------------- the conversion


@dataclass
class ConvertResult:
    plan: ConversionPlan
    output: str
    written_files: list[str]
    bytes_written: int
    range_check: RangeStats
    verification: Any = None  # VerifyReport
    source_sha256: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(
        default_factory=dict
    )  # seconds, per stage (see passes.py); for profiling

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "files": self.written_files,
            "bytes_written": self.bytes_written,
            "range_check": self.range_check.to_dict(),
            "source_sha256": self.source_sha256,
            "verification": self.verification.to_dict() if self.verification is not None else None,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "plan": self.plan.to_dict(),
        }


def check_paths(plan: ConversionPlan, overwrite: bool) -> None:
    inp, out = Path(plan.input).resolve(), Path(plan.output).resolve()
    srcs = [Path(s).resolve() for s in plan.sources]
    if plan.loras is not None:
        srcs += [Path(f.path).resolve() for f in plan.loras.files]
    if (
        out in srcs
        or any(out in s.parents for s in srcs)
        or any(s in out.parents for s in srcs if s.is_dir())
    ):
        raise SdlensError(
            plan.output, "OUT is the input (or inside it) or a LoRA to merge: refusing to overwrite a source"
        )
    if inp.is_file() and out.exists() and out.is_file() and os.path.samefile(inp, out):
        raise SdlensError(plan.output, "OUT is the input: refusing to overwrite the source")
    if out.exists() and not overwrite:
        raise SdlensError(plan.output, "already exists (pass --overwrite to replace it after verification)")
    if plan.layout == "single" and out.is_dir():
        raise SdlensError(plan.output, "is a folder; --layout single writes one file")
    need = plan.output_size()
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(parent).free
    if need + (64 << 20) > free:
        raise SdlensError(
            plan.output,
            f"not enough disk space: the output needs {need / 1e9:.2f} GB, "
            f"{free / 1e9:.2f} GB free in {parent}",
        )


def convert(
    plan: ConversionPlan,
    *,
    force: bool = False,
    overwrite: bool = False,
    verify: bool | str = True,
    hashes: bool = True,
    progress: Callable[[int], None] | None = None,
    _after_tensor: Callable[[Item], None] | None = None,  # test hook (e.g. simulate an interruption)
) -> ConvertResult:
    """Write the plan's output. Raises :class:`SdlensError` (nothing left behind) on any refusal or failure.

    ``verify``: ``True`` (re-open the output, check its structure and every tensor's bytes on disk against the
    digests taken from the input while converting), ``"full"`` (also re-read the input and compare every tensor
    with it), ``False``."""
    from sdlens.io.open import open_checkpoint

    if verify not in (True, False, "full"):
        raise ValueError(f"verify must be True, False or 'full' (got {verify!r})")
    import torch

    check_paths(plan, overwrite)
    out = Path(plan.output)
    tmp = out.parent / f".{out.name}.tmp-{secrets.token_hex(4)}"
    ckpts: list[Checkpoint] = []
    bakers = _Bakers(plan)
    threads = torch.get_num_threads()
    # one thread for the casts: the other core hashes (sha256 of the input), reads and writes; two torch threads
    # would fight those (and, on a loaded machine, wait for each other)
    torch.set_num_threads(1)
    try:
        for s in plan.sources:
            ckpts.append(open_checkpoint(s, plan.options.variant))
        files = _source_files(ckpts)
        prov, holders = _provenance(plan, files, hashes)
        to_hash = set(files) if hashes else set()
        digests: dict[str, str] = {}
        stats = RangeStats()
        metadata = {**plan.metadata, PROVENANCE_META: prov}
        if plan.layout == "diffusers":
            tmp.mkdir()
        timings: dict[str, float] = {}
        writers, tensor_digests, written, total, refused = _write_tensor_files(
            plan,
            tmp,
            ckpts,
            metadata,
            stats,
            force,
            progress,
            _after_tensor,
            to_hash,
            digests,
            timings,
            bakers.new(),
        )
        if refused:
            _refuse_overflow(plan, stats)
        _write_json_files(plan, tmp, written)
        t0 = time.perf_counter()
        if hashes:
            digests = _fill_hashes(plan, files, digests, holders, writers)
        for w in writers:
            w.finish(
                drop_cache=bool(verify)
            )  # the verification then reads what is on disk, not the page cache
        timings["finish"] = time.perf_counter() - t0
        result = ConvertResult(plan, str(out), written, total, stats, source_sha256=digests, timings=timings)
        t0 = time.perf_counter()
        if verify:
            if verify == "full":
                # the LoRAs' ΔW recomputed by a baker of its own
                result.verification = verification.verify_output(plan, tmp, ckpts, progress, bakers.new())
            else:
                result.verification = verification.verify_written(plan, tmp, tensor_digests, progress)
            if not result.verification.ok:
                raise ProblemsFound(
                    plan.output, "verification failed: " + "; ".join(result.verification.problems[:3])
                )
            timings["verify"] = time.perf_counter() - t0
        _commit(tmp, out, overwrite)
        return result
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        torch.set_num_threads(threads)
        bakers.close()
        for ck in ckpts:
            ck.close()


class _Bakers:
    """The :class:`~sdlens.analysis.lora_apply.LoraBaker` s of a conversion (none without --merge-lora)."""

    def __init__(self, plan: ConversionPlan):
        self.plan = plan
        self.made: list[Any] = []

    def new(self) -> Any:
        if self.plan.loras is None:
            return None
        from sdlens.analysis.lora_apply import LoraBaker

        self.made.append(LoraBaker(self.plan.loras))
        return self.made[-1]

    def close(self) -> None:
        for b in self.made:
            b.close()


def _write_tensor_files(
    plan: ConversionPlan,
    tmp: Path,
    ckpts: list[Checkpoint],
    metadata: dict[str, str],
    stats: RangeStats,
    force: bool,
    progress,
    after_tensor,
    to_hash: set[str],
    digests: dict[str, str],
    timings: dict[str, float],
    baker: Any = None,
) -> tuple[list[Any], dict[str, dict[str, str]], list[str], int, bool]:
    """Every weights file of the plan, one source pass each (the sources' sha256 added to ``digests``).
    Returns the writers (headers still to fill), each file's tensor digests, the files written, the bytes
    written and whether a cast was refused."""
    out = Path(plan.output)
    writers: list[Any] = []
    tensor_digests: dict[str, dict[str, str]] = {}
    written: list[str] = []
    total = 0
    refused = False
    for rel, entries in plan.files.items():
        path = tmp / rel if plan.layout == "diffusers" else tmp
        path.parent.mkdir(parents=True, exist_ok=True)
        passes = open_passes(entries, ckpts, to_hash - set(digests))
        try:
            t0 = time.perf_counter()
            w, aw, n, refused_here = _write_file(
                path, entries, ckpts, passes, metadata, stats, force, progress, after_tensor, timings, baker
            )
            for sp in passes.values():
                digests.update(sp.finish())
                _add(timings, getattr(sp, "timings", {}))
        except BaseException:
            for sp in passes.values():
                sp.close()
            raise
        _add(timings, aw.timings)
        timings["pass_wall"] = timings.get("pass_wall", 0.0) + time.perf_counter() - t0
        refused = refused or refused_here
        writers.append(w)
        tensor_digests[rel] = aw.digests
        written.append(rel or out.name)
        total += n
    return writers, tensor_digests, written, total, refused


def _refuse_overflow(plan: ConversionPlan, stats: RangeStats) -> None:
    r = stats.to_dict()
    worst = ", ".join(f"{k} ({v})" for k, v in list(r["tensors_overflow"].items())[:3])
    raise SdlensError(
        plan.input,
        f"casting to fp16 would overflow {stats.overflow} values (|x| > 65504, "
        f"max |x| = {stats.max_abs:.4g}) in {plural(len(stats.tensors_overflow), 'tensor')}, e.g. {worst}; "
        "refused (use --dtype bf16, or --force to write inf)",
    )


def _write_json_files(plan: ConversionPlan, tmp: Path, written: list[str]) -> None:
    for rel, cfg in plan.json_files.items():
        p = tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(cfg, indent=2, sort_keys=False) + "\n")
        written.append(rel)


def _fill_hashes(
    plan: ConversionPlan,
    files: list[str],
    digests: dict[str, str],
    holders: dict[str, str],
    writers: list[Any],
) -> dict[str, str]:
    """Hash the source files no pass read in full, and write every file's sha256 into the headers'
    placeholders; the digests, in file order."""
    left = [f for f in files if f not in digests]  # source files no pass read in full
    if left:
        hasher = _Hasher(left)
        hasher.run()
        if hasher.error is not None:
            raise SdlensError(plan.input, f"cannot hash the source: {hasher.error}")
        digests.update(hasher.digests)
    digests = {f: digests[f] for f in files}
    for w in writers:
        header = w.header
        for holder, f in holders.items():
            header = header.replace(holder.encode(), digests[f].encode())
        w.rewrite_header(header)
    return digests


def _commit(tmp: Path, out: Path, overwrite: bool) -> None:
    if out.exists() and overwrite and out.is_dir():
        aside = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
        os.replace(out, aside)
        os.replace(tmp, out)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        if out.is_dir() and not tmp.is_dir():
            raise SdlensError(out, "is a folder; cannot replace it with a file")
        os.replace(tmp, out)
    fd = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _add(into: dict[str, float], more: dict[str, float]) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0.0) + v


def _write_file(
    path: Path,
    entries: list[Item],
    ckpts: list[Checkpoint],
    passes: dict[int, Any],
    metadata: dict[str, str],
    stats: RangeStats,
    force: bool,
    progress,
    after_tensor,
    timings: dict[str, float],
    baker: Any = None,
) -> tuple[Any, Any, int, bool]:
    from sdlens.convert.passes import AsyncWriter, Chunk
    from sdlens.io.safetensors_writer import SafetensorsStreamWriter, build_header

    header, sizes = build_header([(e.key, e.out_dtype, e.shape) for e in entries], metadata)
    w = SafetensorsStreamWriter(path, header, sizes)
    aw = AsyncWriter(w)
    caster = _Caster(stats)
    refused = False
    try:
        for e in entries:
            out_dt = torch_dtype(e.out_dtype)
            if e.simple:
                chunks = passes[e.pieces[0].source].tensor(e.pieces[0].key)
            else:
                chunks = iter([Chunk(e.key, assemble(e, ckpts, baker).reshape(-1), True, None)])
            for c in chunks:
                x = c.data
                for i in range(0, max(x.numel(), 1), CAST_ELEMS):
                    part = x[i : i + CAST_ELEMS]
                    if part.dtype == out_dt:
                        y, release = part, None
                        if c.block is not None:  # written straight from the read block: keep it until then
                            c.block.retain()
                            release = c.block.release
                    else:
                        t0 = time.perf_counter()
                        y, release = caster.cast(e.key, part, out_dt)
                        timings["cast_and_check"] = (
                            timings.get("cast_and_check", 0.0) + time.perf_counter() - t0
                        )
                    if stats.overflow and not force:
                        refused = True
                    if refused:
                        if release is not None:
                            release()
                        continue
                    aw.write(_raw(y), release)
            if not refused:
                aw.end_tensor(e.key)
            if progress:
                progress(nbytes(e))
            if after_tensor is not None:
                after_tensor(e)
        aw.join()
        timings["cast_buffer_wait"] = timings.get("cast_buffer_wait", 0.0) + caster.wait
        if refused:
            w.close()
            return w, aw, 0, True
        return w, aw, len(header) + sum(sizes), False
    except BaseException:
        aw.abort()
        w.close()
        raise


def scan_range(plan: ConversionPlan, progress: Callable[[int], None] | None = None) -> RangeStats:
    """For a dry run: read the tensors the plan casts to fp16 and count what would overflow / underflow."""
    import torch

    from sdlens.io.open import open_checkpoint

    stats = RangeStats()
    caster = _Caster(stats)
    todo = [
        e for e in plan.entries if e.out_dtype == "F16" and (e.dtype != "F16" or e.bake) and e.restore is None
    ]
    ckpts = [open_checkpoint(s, plan.options.variant) for s in plan.sources]
    bakers = _Bakers(plan)
    baker = bakers.new()
    try:
        streams = source_streams(todo, ckpts)
        for e in todo:
            chunks = (
                pieces_of(streams[e.pieces[0].source], e.pieces[0].key)
                if e.simple
                else iter([assemble(e, ckpts, baker).reshape(-1)])
            )
            for x in chunks:
                for i in range(0, x.numel(), CAST_ELEMS):
                    _, release = caster.cast(e.key, x[i : i + CAST_ELEMS], torch.float16)
                    release()
            if progress:
                progress(nbytes(e))
    finally:
        bakers.close()
        for ck in ckpts:
            ck.close()
    plan.range_check = stats.to_dict()
    return stats
