"""Verification after every write: the output is re-opened (``open_checkpoint``) and checked against the plan
(key set, dtypes, shapes, metadata, provenance) and tensor by tensor:

* :func:`verify_written` (the default): every tensor's bytes on disk (the output's pages are dropped from the page
  cache after the fsync, so this reads the disk) have the sha256 of the bytes the conversion computed from the
  input (copied, or cast to the target dtype). One sequential read of the output; the input is not re-read.
* :func:`verify_output` (``verify="full"``, ``--verify-full``): the input is re-read too and every tensor compared
  with it, streamed, bit for bit: unchanged and renamed tensors bit-identical, cast tensors equal to the input
  cast again to the target dtype (the rounding check), restored tensors 0..N-1, baked tensors (``--merge-lora``)
  equal to the input + the LoRAs' ΔW recomputed from the files, cast to the target dtype.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdlens.convert.layouts import Item
from sdlens.convert.plan import PROVENANCE_META, ConversionPlan, nbytes, op_of
from sdlens.convert.sources import CHUNK_BYTES, assemble, pieces_of, source_streams

if TYPE_CHECKING:
    from sdlens.io.base import Checkpoint


@dataclass
class VerifyReport:
    files: int = 0
    tensors: int = 0
    bit_identical: int = 0  # same dtype, same bytes (kept, renamed, replaced, EMA)
    cast_exact: int = 0  # equal to the input rounded to the target dtype
    restored: int = 0
    baked: int = 0  # equal to the input + the LoRAs' ΔW (--merge-lora), rounded to the target dtype
    renamed: int = 0
    bytes_compared: int = 0
    metadata_kept: int = 0
    provenance: bool = False
    mode: str = (
        "digest"  # "digest": output bytes vs digests taken from the input; "full": vs the re-read input
    )
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "files": self.files,
            "tensors": self.tensors,
            "bit_identical": self.bit_identical,
            "cast_exact": self.cast_exact,
            "restored": self.restored,
            "baked": self.baked,
            "renamed": self.renamed,
            "bytes_compared": self.bytes_compared,
            "metadata_kept": self.metadata_kept,
            "provenance": self.provenance,
            "mode": self.mode,
            "problems": self.problems,
        }


def _aligned(xs: Iterator[Any], ys: Iterator[Any]) -> Iterator[tuple[Any, Any]]:
    """Pairs of equally long flat views walking two chunkings of the same elements."""
    xs = (x for x in xs if x.numel())
    ys = (y for y in ys if y.numel())
    x, y = next(xs, None), next(ys, None)
    i = j = 0
    while x is not None and y is not None:
        n = min(x.numel() - i, y.numel() - j)
        yield x[i : i + n], y[j : j + n]
        i += n
        j += n
        if i == x.numel():
            x, i = next(xs, None), 0
        if j == y.numel():
            y, j = next(ys, None), 0
    if x is not None or y is not None:
        raise ValueError("element counts differ")


class _Compare:
    def __init__(self) -> None:
        self.buf: dict[Any, Any] = {}

    def same(self, src, out) -> bool:
        """``out`` equals ``src`` cast to ``out``'s dtype, bit for bit (flat views)."""
        import torch

        if src.dtype != out.dtype:
            b = self.buf.get(out.dtype)
            if b is None or b.numel() < src.numel():
                b = self.buf[out.dtype] = torch.empty(max(src.numel(), 1 << 20), dtype=out.dtype)
            b = b[: src.numel()]
            b.copy_(src)
            src = b
        ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[out.element_size()]
        return bool(torch.equal(src.view(ints), out.view(ints)))


def _reopen(plan: ConversionPlan, rel: str, path: Path, entries: list[Item], rep: VerifyReport) -> Any:
    """The re-opened output file if its keys, dtypes, shapes and metadata are as planned; else ``None`` (the
    problems are in ``rep``)."""
    from sdlens.errors import SdlensError
    from sdlens.io.open import open_checkpoint

    rep.files += 1
    try:
        out = open_checkpoint(path)
    except SdlensError as e:
        rep.problems.append(f"{rel or path.name}: cannot re-open ({e.problem})")
        return None
    before = len(rep.problems)
    want = {e.key: e for e in entries}
    extra, missing = set(out.tensors) - set(want), set(want) - set(out.tensors)
    if extra or missing:
        rep.problems.append(
            f"{rel or path.name}: keys differ from the plan ({len(missing)} missing, {len(extra)} unexpected)"
        )
        out.close()
        return None
    for k, v in plan.metadata.items():
        if k == PROVENANCE_META:  # extended by this conversion, checked below
            continue
        if out.metadata.get(k) != v:
            rep.problems.append(f"metadata {k!r} not preserved")
        else:
            rep.metadata_kept += 1
    rep.provenance = PROVENANCE_META in out.metadata
    if not rep.provenance:
        rep.problems.append("provenance entry missing")
    for e in entries:
        info = out.tensors[e.key]
        if info.dtype != e.out_dtype or tuple(info.shape) != tuple(e.shape):
            rep.problems.append(
                f"{e.key}: {info.dtype}{list(info.shape)} written, planned {e.out_dtype}{list(e.shape)}"
            )
    if len(rep.problems) > before:
        out.close()
        return None
    return out


def _count(rep: VerifyReport, e: Item, ok: bool) -> None:
    rep.tensors += 1
    rep.bytes_compared += nbytes(e)
    if not ok:
        rep.problems.append(f"{e.key}: data differs from the input" + (" + LoRA" if e.bake else ""))
    elif e.bake:
        rep.baked += 1
    elif e.restore:
        rep.restored += 1
    elif e.out_dtype != e.dtype:
        rep.cast_exact += 1
    else:
        rep.bit_identical += 1
    if op_of(e) == "rename":
        rep.renamed += 1


def _json_files(plan: ConversionPlan, root: Path, rep: VerifyReport) -> None:
    for rel in plan.json_files:
        try:
            json.loads((root / rel).read_text())
        except (OSError, ValueError):
            rep.problems.append(f"{rel}: not written or not valid JSON")


def _reopened(plan: ConversionPlan, root: Path, rep: VerifyReport):
    """(relative name, planned entries, re-opened checkpoint) of every output file that opened as planned
    (``_reopen`` records those that did not in ``rep``)."""
    for rel, entries in plan.files.items():
        out = _reopen(plan, rel, root / rel if plan.layout == "diffusers" else root, entries, rep)
        if out is not None:
            yield rel, entries, out


def verify_written(
    plan: ConversionPlan,
    root: Path,
    expected: dict[str, dict[str, str]],
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Re-open every output file and check it against the plan and against what the conversion computed from
    the input: keys, dtypes, shapes and metadata as planned, and each tensor's bytes on disk (one sequential
    read of the output) with the same digest (sha256) as the bytes computed from the input while converting
    (copied, cast to the target dtype, or baked: input + the LoRAs' ΔW). Restored ``position_ids`` are also
    checked to be 0..N-1."""
    import torch

    from sdlens.convert.passes import digest
    from sdlens.io.stream import stream

    rep = VerifyReport()
    for rel, entries, out in _reopened(plan, root, rep):
        with out:
            want = expected.get(rel, {})
            by_key = {e.key: e for e in entries}
            h = digest()
            for p in stream(out, None, CHUNK_BYTES):
                h.update(memoryview(p.array).cast("B"))
                if not p.last:
                    continue
                e = by_key[p.key]
                ok = want.get(e.key) == h.hexdigest()
                h = digest()
                if ok and e.restore == "arange":
                    t = out.read(e.key).reshape(-1)
                    ok = torch.equal(t, torch.arange(t.numel(), dtype=t.dtype))
                elif ok and e.restore == "value":
                    ok = bool((out.read(e.key) == (e.value or 0.0)).all())
                _count(rep, e, ok)
                if progress:
                    progress(nbytes(e))
    _json_files(plan, root, rep)
    return rep


def verify_output(
    plan: ConversionPlan,
    root: Path,
    ckpts: list[Checkpoint],
    progress: Callable[[int], None] | None = None,
    baker: Any = None,
) -> VerifyReport:
    """The full check: re-open every output file and compare every tensor with the input, re-read from its
    files: bit-identical, or equal to the input cast to the target dtype (cast again here), restored 0..N-1;
    baked tensors equal to the input + the LoRAs' ΔW (recomputed by ``baker``) cast to the target dtype."""
    from sdlens.io.stream import stream

    rep = VerifyReport(mode="full")
    cmp = _Compare()
    for _rel, entries, out in _reopened(plan, root, rep):
        with out:
            srcs = source_streams(entries, ckpts)
            outs = stream(out, [e.key for e in entries if e.simple], CHUNK_BYTES)
            for e in entries:
                _count(rep, e, _check(e, srcs, outs, out, ckpts, cmp, baker))
                if progress:
                    progress(nbytes(e))
    _json_files(plan, root, rep)
    return rep


def _check(
    e: Item,
    srcs: dict[int, Iterator[Any]],
    outs: Iterator[Any],
    out: Any,
    ckpts: list[Checkpoint],
    cmp: _Compare,
    baker: Any = None,
) -> bool:
    if e.simple:
        pairs = _aligned(pieces_of(srcs[e.pieces[0].source], e.pieces[0].key), pieces_of(outs, e.key))
        try:
            ok = True
            for a, b in pairs:
                ok = ok and cmp.same(a, b)  # keep both streams in step even after a mismatch
            return ok
        except ValueError:
            return False
    expected = assemble(e, ckpts, baker).reshape(-1)
    got = out.read(e.key).reshape(-1)
    return expected.numel() == got.numel() and cmp.same(expected, got)
