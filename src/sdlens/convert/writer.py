"""Execute a :class:`~sdlens.convert.plan.ConversionPlan`: stream every tensor once, cast on the way, write to a
temporary file (or folder) beside the target, verify, and only then rename it into place.

Memory: the reader's three 64 MB buffers and one cast buffer, whatever the model size. Safety: the input is
opened read-only; any exception (KeyboardInterrupt included) removes the temporary output; a target that
already exists is only replaced after the new one has been verified.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdlens.convert.layouts import Item
from sdlens.convert.plan import PROVENANCE_META, ConversionPlan, nbytes
from sdlens.errors import SdlensError
from sdlens.io.dtypes import torch_dtype

CHUNK_BYTES = 64 << 20
CAST_ELEMS = 8 << 20
F16_MAX_ROUND = 65520.0  # the smallest magnitude that rounds to inf in fp16
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
        return {"overflow": self.overflow, "underflow": self.underflow, "max_abs": self.max_abs,
                "tensors_overflow": top(self.tensors_overflow), "tensors_underflow": top(self.tensors_underflow),
                "tensors_with_overflow": len(self.tensors_overflow), "tensors_with_underflow": len(self.tensors_underflow)}


class _Caster:
    """Casts flat tensors into a reused buffer, counting fp16 overflow / underflow."""

    def __init__(self, stats: RangeStats):
        self.stats = stats
        self.bufs: dict[Any, Any] = {}

    def buffer(self, dtype, n: int):
        import torch

        b = self.bufs.get(dtype)
        if b is None or b.numel() < n:
            b = self.bufs[dtype] = torch.empty(max(n, CAST_ELEMS), dtype=dtype)
        return b[:n]

    def cast(self, key: str, x, dtype) -> Any:
        """``x`` (flat) as ``dtype``; yields chunk views valid until the next call."""
        import torch

        y = self.buffer(dtype, x.numel())
        y.copy_(x)
        if dtype == torch.float16 and x.dtype != torch.float16 and x.numel():
            mn, mx = torch.aminmax(x)
            mn, mx = float(mn), float(mx)
            self.stats.max_abs = max(self.stats.max_abs, abs(mn), abs(mx))
            if not (mn > -F16_MAX_ROUND and mx < F16_MAX_ROUND):  # also true for NaN
                ovf = int((torch.isinf(y) & ~torch.isinf(x)).sum())
                if ovf:
                    self.stats.overflow += ovf
                    self.stats.tensors_overflow[key] = self.stats.tensors_overflow.get(key, 0) + ovf
            und = int(torch.count_nonzero(x)) - int(torch.count_nonzero(y))
            if und > 0:
                self.stats.underflow += und
                self.stats.tensors_underflow[key] = self.stats.tensors_underflow.get(key, 0) + und
        return y


def _raw(t) -> memoryview:
    """The bytes of a contiguous tensor."""
    import torch

    return memoryview(t.contiguous().view(-1).view(torch.uint8).numpy())


def assemble(item: Item, ckpts: list[Any]):
    """The whole source tensor of an item that is not a plain copy (restored, sliced, transposed, joined)."""
    import torch

    if item.restore == "arange":
        n = item.shape[-1] if item.shape else 0
        return torch.arange(n, dtype=torch.int64).reshape(item.shape)
    parts = []
    for p in item.pieces:
        t = ckpts[p.source].read(p.key)
        if p.rows:
            t = t[p.rows[0] : p.rows[1]]
        if p.transpose:
            t = t.t()
        parts.append(t.contiguous())
    t = parts[0] if len(parts) == 1 else torch.cat(parts, 0)
    return t.reshape(item.shape)


def pieces_of(it: Iterator[Any], key: str) -> Iterator[Any]:
    """The stream pieces of one tensor (flat torch views), up to and including its last one."""
    while True:
        p = next(it)
        if p.key != key:
            raise SdlensError(p.info.source, f"internal error: stream gave {p.key!r}, expected {key!r}")
        yield p.data
        if p.last:
            return


def source_streams(entries: list[Item], ckpts: list[Any]) -> dict[int, Iterator[Any]]:
    """One stream per source over the simple entries' tensors, in write order."""
    from sdlens.io.stream import stream

    keys: dict[int, list[str]] = {}
    for e in entries:
        if e.simple:
            keys.setdefault(e.pieces[0].source, []).append(e.pieces[0].key)
    return {s: stream(ckpts[s], ks, CHUNK_BYTES) for s, ks in keys.items()}


# --------------------------------------------------------------------------- hashing the sources


class _Hasher(threading.Thread):
    """sha256 of the source files, computed beside the conversion (the same bytes, mostly from page cache)."""

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


def _source_files(ckpts: list[Any]) -> list[str]:
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
        "source_sha256": {(str(Path(f).relative_to(base)) if base.is_dir() else Path(f).name): holders[f] or None
                          for f in files},
        "operations": plan.operations,
    }
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

    def to_dict(self) -> dict[str, Any]:
        return {"output": self.output, "files": self.written_files, "bytes_written": self.bytes_written,
                "range_check": self.range_check.to_dict(), "source_sha256": self.source_sha256,
                "verification": self.verification.to_dict() if self.verification is not None else None,
                "plan": self.plan.to_dict()}


def check_paths(plan: ConversionPlan, overwrite: bool) -> None:
    inp, out = Path(plan.input).resolve(), Path(plan.output).resolve()
    srcs = [Path(s).resolve() for s in plan.sources]
    if out in srcs or any(out in s.parents for s in srcs) or any(s in out.parents for s in srcs if s.is_dir()):
        raise SdlensError(plan.output, "OUT is the input (or inside it): refusing to overwrite the source")
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
        raise SdlensError(plan.output, f"not enough disk space: the output needs {need / 1e9:.2f} GB, "
                          f"{free / 1e9:.2f} GB free in {parent}")


def convert(
    plan: ConversionPlan,
    *,
    force: bool = False,
    overwrite: bool = False,
    verify: bool = True,
    hashes: bool = True,
    progress: Callable[[int], None] | None = None,
    _after_tensor: Callable[[Item], None] | None = None,  # test hook (e.g. simulate an interruption)
) -> ConvertResult:
    """Write the plan's output. Raises :class:`SdlensError` (nothing left behind) on any refusal or failure."""
    from sdlens.io.open import open_checkpoint

    check_paths(plan, overwrite)
    out = Path(plan.output)
    tmp = out.parent / f".{out.name}.tmp-{secrets.token_hex(4)}"
    ckpts: list[Any] = []
    hasher: _Hasher | None = None
    try:
        for s in plan.sources:
            ckpts.append(open_checkpoint(s))
        files = _source_files(ckpts)
        prov, holders = _provenance(plan, files, hashes)
        if hashes:
            hasher = _Hasher(files)
            hasher.start()
        stats = RangeStats()
        written: list[str] = []
        total = 0
        metadata = {**plan.metadata, PROVENANCE_META: prov}
        if plan.layout == "diffusers":
            tmp.mkdir()
        writers = []
        refused = False
        for rel, entries in plan.files.items():
            path = tmp / rel if plan.layout == "diffusers" else tmp
            path.parent.mkdir(parents=True, exist_ok=True)
            w, n, refused_here = _write_file(path, entries, ckpts, metadata, stats, force, progress, _after_tensor)
            refused = refused or refused_here
            writers.append(w)
            written.append(rel or out.name)
            total += n
        if refused:
            r = stats.to_dict()
            worst = ", ".join(f"{k} ({v})" for k, v in list(r["tensors_overflow"].items())[:3])
            raise SdlensError(plan.input, f"casting to fp16 would overflow {stats.overflow} values (|x| > 65504, "
                              f"max |x| = {stats.max_abs:.4g}) in {len(stats.tensors_overflow)} tensors, e.g. {worst}; "
                              "refused (use --dtype bf16, or --force to write inf)")
        for rel, cfg in plan.json_files.items():
            p = tmp / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(cfg, indent=2, sort_keys=False) + "\n")
            written.append(rel)
        digests: dict[str, str] = {}
        if hasher is not None:
            hasher.join()
            if hasher.error is not None:
                raise SdlensError(plan.input, f"cannot hash the source: {hasher.error}")
            digests = hasher.digests
            for w in writers:
                header = w.header
                for holder, f in holders.items():
                    header = header.replace(holder.encode(), digests[f].encode())
                w.rewrite_header(header)
        for w in writers:
            w.finish()
        result = ConvertResult(plan, str(out), written, total, stats, source_sha256=digests)
        if verify:
            from sdlens.convert.verify import verify_output

            result.verification = verify_output(plan, tmp, ckpts, progress)
            if not result.verification.ok:
                raise SdlensError(plan.output, "verification failed: " + "; ".join(result.verification.problems[:3]))
        _commit(tmp, out, overwrite)
        return result
    except BaseException:
        if hasher is not None:
            hasher.stop.set()
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        for ck in ckpts:
            ck.close()


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


def _write_file(path: Path, entries: list[Item], ckpts: list[Any], metadata: dict[str, str], stats: RangeStats,
                force: bool, progress, after_tensor) -> tuple[Any, int, bool]:
    from sdlens.io.safetensors_writer import SafetensorsStreamWriter, build_header

    header, sizes = build_header([(e.key, e.out_dtype, e.shape) for e in entries], metadata)
    w = SafetensorsStreamWriter(path, header, sizes)
    caster = _Caster(stats)
    refused = False
    try:
        streams = source_streams(entries, ckpts)
        for e in entries:
            out_dt = torch_dtype(e.out_dtype)
            if e.simple:
                chunks = pieces_of(streams[e.pieces[0].source], e.pieces[0].key)
            else:
                chunks = iter([assemble(e, ckpts).reshape(-1)])
            for x in chunks:
                for i in range(0, max(x.numel(), 1), CAST_ELEMS):
                    part = x[i : i + CAST_ELEMS]
                    y = part if part.dtype == out_dt else caster.cast(e.key, part, out_dt)
                    if stats.overflow and not force:
                        refused = True
                    if not refused:
                        w.write(_raw(y))
            if not refused:
                w.end_tensor()
            if progress:
                progress(nbytes(e))
            if after_tensor is not None:
                after_tensor(e)
        if refused:
            w.close()
            return w, 0, True
        return w, len(header) + sum(sizes), False
    except BaseException:
        w.close()
        raise


def scan_range(plan: ConversionPlan, progress: Callable[[int], None] | None = None) -> RangeStats:
    """For a dry run: read the tensors the plan casts to fp16 and count what would overflow / underflow."""
    import torch

    from sdlens.io.open import open_checkpoint

    stats = RangeStats()
    caster = _Caster(stats)
    todo = [e for e in plan.entries if e.out_dtype == "F16" and e.dtype != "F16" and e.restore is None]
    ckpts = [open_checkpoint(s) for s in plan.sources]
    try:
        streams = source_streams(todo, ckpts)
        for e in todo:
            chunks = pieces_of(streams[e.pieces[0].source], e.pieces[0].key) if e.simple else iter([assemble(e, ckpts).reshape(-1)])
            for x in chunks:
                for i in range(0, x.numel(), CAST_ELEMS):
                    caster.cast(e.key, x[i : i + CAST_ELEMS], torch.float16)
            if progress:
                progress(nbytes(e))
    finally:
        for ck in ckpts:
            ck.close()
    plan.range_check = stats.to_dict()
    return stats
