"""Plan a conversion before touching any data: every output tensor, where its bytes come from, what happens
to it (keep / cast / rename / restore / replace / EMA / drop), its dtype and size.

The plan is built from headers (plus the few tiny ``position_ids`` tensors) by the passes of
:data:`PASSES`, applied in that order; ``--dry-run`` renders it and the writer executes it tensor by tensor.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdlens.analysis.prediction import prediction_of
from sdlens.arch import families
from sdlens.convert.diffusers_layout import from_diffusers
from sdlens.convert.items import assign_components, is_arange
from sdlens.convert.layouts import Item, Piece
from sdlens.convert.options import (
    CONFIGS_META,
    DTYPE_CHOICES,
    EMA_CHOICES,
    EXTRAS_FILE,
    LAYOUTS,
    PROVENANCE_META,
    SELECTORS,
    ConvertOptions,
)
from sdlens.convert.plan_passes import (
    PlanState,
    bake_check,
    drop_pass,
    dtype_pass,
    ema_pass,
    extract_pass,
    layout_pass,
    lora_pass,
    position_ids_pass,
    prediction_pass,
    vae_pass,
)
from sdlens.errors import SdlensError
from sdlens.io.dtypes import DTYPES

__all__ = [
    "CONFIGS_META", "DTYPE_CHOICES", "EMA_CHOICES", "EXTRAS_FILE", "LAYOUTS", "PASSES", "PROVENANCE_META",
    "SELECTORS", "ConversionPlan", "ConvertOptions", "check_output_name", "entry_dict", "make_plan", "nbytes",
    "op_of",
]  # fmt: skip

# the passes, in the order they apply: each changes the plan state in place
PASSES: tuple[Callable[[PlanState], None], ...] = (
    vae_pass, ema_pass, drop_pass, position_ids_pass, extract_pass, dtype_pass, layout_pass, prediction_pass,
)  # fmt: skip


def op_of(it: Item) -> str:
    if it.op != "keep":
        return it.op
    p = it.pieces[0] if it.pieces else None
    if p is None or len(it.pieces) > 1 or p.rows or p.transpose or p.key != it.key:
        return "rename"
    return "keep"


def entry_dict(it: Item, sources: list[str]) -> dict[str, Any]:
    d: dict[str, Any] = {
        "key": it.key,
        "file": it.file,
        "op": op_of(it),
        "cast": bool(it.out_dtype) and it.out_dtype != it.dtype and it.op != "drop",
        "component": it.component,
        "shape": list(it.shape),
        "dtype_in": it.dtype,
        "dtype_out": it.out_dtype or it.dtype,
        "bytes": nbytes(it),
        "sources": [{**p.to_dict(), "file": sources[p.source]} for p in it.pieces],
    }
    if it.note:
        d["note"] = it.note
    if it.bake:
        d["lora"] = list(it.bake)
    return d


def nbytes(it: Item) -> int:
    n = DTYPES[it.out_dtype or it.dtype].itemsize
    for s in it.shape:
        n *= s
    return n


@dataclass
class ConversionPlan:
    input: str
    output: str
    sources: list[str]
    input_format: str
    family: str
    layout: str
    options: ConvertOptions
    entries: list[Item]  # written, grouped by file, in write order
    dropped: list[Item]
    json_files: dict[str, dict[str, Any]]
    metadata: dict[str, str]
    operations: list[str]
    notes: list[str]
    input_tensor_bytes: int = 0
    input_file_bytes: int = 0
    range_check: dict[str, Any] | None = None  # filled by a dry-run scan or by the write
    loras: Any = None  # LoraPlan (--merge-lora)

    @property
    def files(self) -> dict[str, list[Item]]:
        out: dict[str, list[Item]] = {}
        for e in self.entries:
            out.setdefault(e.file, []).append(e)
        return out

    @property
    def output_tensor_bytes(self) -> int:
        return sum(nbytes(e) for e in self.entries)

    def output_size(self) -> int:
        """Bytes of every output file (headers included; the provenance entry estimated)."""
        from sdlens.io.safetensors_writer import build_header

        meta = {**self.metadata, PROVENANCE_META: "x" * 1024}
        total = sum(len(json.dumps(v, indent=2)) for v in self.json_files.values())
        for entries in self.files.values():
            header, sizes = build_header([(e.key, e.out_dtype, e.shape) for e in entries], meta)
            total += len(header) + sum(sizes)
        return total

    def counts(self) -> dict[str, int]:
        c: dict[str, int] = {}
        for e in self.entries:
            op = op_of(e)
            if e.bake:  # a baked tensor is not "kept"; it may be renamed and cast as well
                c["baked"] = c.get("baked", 0) + 1
                if op == "keep":
                    if e.out_dtype != e.dtype:
                        c["cast"] = c.get("cast", 0) + 1
                    continue
            if "dequantised" in e.tags:
                c["dequantised"] = c.get("dequantised", 0) + 1
                if op == "keep":
                    continue
            if op == "keep" and e.out_dtype != e.dtype:
                op = "cast"
            elif e.out_dtype != e.dtype:
                c["cast"] = c.get("cast", 0) + 1
            c[op] = c.get(op, 0) + 1
        c["drop"] = len(self.dropped)
        return c

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "output": self.output,
            "sources": self.sources,
            "input_format": self.input_format,
            "family": self.family,
            "layout": self.layout,
            "options": self.options.to_dict(),
            "operations": self.operations,
            "notes": self.notes,
            "counts": self.counts(),
            "input_tensor_bytes": self.input_tensor_bytes,
            "input_file_bytes": self.input_file_bytes,
            "output_tensor_bytes": self.output_tensor_bytes,
            "output_size": self.output_size(),
            "files": sorted(self.files) + sorted(self.json_files),
            "range_check": self.range_check,
            "merge_lora": self.loras.to_dict() if self.loras is not None else None,
            "entries": [entry_dict(e, self.sources) for e in self.entries],
            "dropped": [entry_dict(e, self.sources) for e in self.dropped],
        }


def check_output_name(out: Path, layout: str) -> None:
    """OUT names what is written: a ``.safetensors`` file (never safetensors bytes under ``.ckpt``; sdlens writes
    no pickles), or with ``--layout diffusers`` a folder; its parent folder must exist."""
    from sdlens.io.folders import WEIGHT_SUFFIXES

    suffix = out.suffix.lower()
    if layout == "single" and suffix != ".safetensors":
        raise SdlensError(
            out,
            "OUT must end in .safetensors: sdlens writes safetensors files only"
            + (f" (not {out.suffix} pickles)" if suffix in WEIGHT_SUFFIXES else ""),
        )
    if layout == "diffusers" and suffix in WEIGHT_SUFFIXES:
        raise SdlensError(out, f"--layout diffusers writes a folder: name OUT without {out.suffix}")
    if not out.parent.is_dir():
        raise SdlensError(out, f"OUT: folder {str(out.parent)!r} does not exist")


def make_plan(input_path: str | Path, output_path: str | Path, opts: ConvertOptions) -> ConversionPlan:
    """Everything the conversion will do, from headers (and a few tiny tensors), without writing anything."""
    opts.validate()
    inp, out = Path(input_path), Path(output_path)
    check_output_name(out, opts.layout)
    st = _read_input(inp, opts)
    lora_pass(st)  # --merge-lora: resolved first (refusals before any other work) ...
    for pass_ in PASSES:
        pass_(st)
    bake_check(st)  # ... and marked on the written tensors last
    if st.fmt != "safetensors":
        st.operations.insert(0, f"format: {st.fmt} -> safetensors")
    final = _in_write_order(st)
    return ConversionPlan(
        input=str(inp),
        output=str(out),
        sources=st.sources,
        input_format=st.fmt,
        family=st.family,
        layout=opts.layout,
        options=opts,
        entries=final,
        dropped=st.dropped,
        json_files=st.json_files,
        metadata=st.metadata,
        operations=st.operations,
        notes=st.notes,
        input_tensor_bytes=st.input_tensor_bytes,
        input_file_bytes=st.input_file_bytes,
        loras=st.loras,
    )


def _tag_dequantised(items: dict[str, Item], ck: Any) -> list[str]:
    """Tag the items read from quantised tensors (GGUF blocks, scaled fp8, NF4: written as their values);
    returns the schemes met."""
    from sdlens.io.quant import quant_of

    schemes: set[str] = set()
    for it in items.values():
        for p in it.pieces:
            info = ck.tensors.get(p.key) if p.source == 0 else None
            q = quant_of(info) if info is not None else None
            if q is not None:
                it.tags.add("dequantised")
                schemes.add(q.scheme)
    return sorted(schemes)


def _read_input(inp: Path, opts: ConvertOptions) -> PlanState:
    """The plan state before any pass: the input's items (a diffusers folder's mapped to single-file keys),
    components, family, metadata and the source offsets that fix the write order."""
    from sdlens.io.open import open_checkpoint

    sources = [str(inp)]
    notes: list[str] = []
    operations: list[str] = []
    with open_checkpoint(inp, opts.variant) as ck:
        fmt = ck.format
        folder_configs: dict[str, Any] = {}
        if fmt == "diffusers-folder":
            items, folder_configs, more = from_diffusers(ck, inp, sources)
            notes += more
            operations.append("read diffusers folder (keys mapped to the single-file layout)")
        else:
            items = {k: Item(k, i.shape, i.dtype, (Piece(0, k),)) for k, i in ck.tensors.items()}
        family, comps = assign_components(items)
        prediction = prediction_of(ck, families.get(family))
        schemes = _tag_dequantised(items, ck)
        if schemes:
            n = sum("dequantised" in it.tags for it in items.values())
            notes.append(
                f"{n} quantised tensors ({', '.join(schemes)}) are written dequantised: their exact values "
                "in float32 (--dtype keep) or rounded once to --dtype"
            )
            operations.append(f"dequantise {', '.join(schemes)}")
        metadata = dict(ck.metadata)
        if ck.extras:
            metadata.setdefault("sdlens.source_extras", json.dumps(ck.extras, default=str, sort_keys=True))
        if folder_configs:
            metadata[CONFIGS_META] = json.dumps(folder_configs, sort_keys=True)
        input_tensor_bytes, input_file_bytes = ck.tensor_bytes, ck.file_size
        broken_pos = [
            k
            for k, it in items.items()
            if k.endswith("position_ids")
            and it.pieces
            and it.pieces[0].source == 0
            and it.pieces[0].key in ck.tensors
            and not is_arange(ck, it.pieces[0].key)
        ]
        arange_pos = {
            k
            for k, it in items.items()
            if k.endswith("position_ids")
            and (
                it.restore == "arange"
                or (it.pieces and it.pieces[0].source == 0 and is_arange(ck, it.pieces[0].key))
            )
        }
        offsets = {k: (i.source, i.offset) for k, i in ck.tensors.items()}
    for extra_source in sources[1:]:
        with open_checkpoint(extra_source, opts.variant) as ex:
            offsets.update({f"\0{extra_source}\0{k}": (i.source, i.offset) for k, i in ex.tensors.items()})
    return PlanState(
        inp,
        opts,
        fmt,
        items,
        family,
        comps,
        metadata,
        sources,
        offsets,
        broken_pos,
        arange_pos,
        input_tensor_bytes,
        input_file_bytes,
        notes,
        operations,
        prediction=prediction,
    )


def _in_write_order(st: PlanState) -> list[Item]:
    """The layout's items sorted by file, then by where their bytes lie in the sources; two tensors written
    under one name are refused."""

    def order(it: Item) -> tuple:
        if not it.pieces:
            return (it.file, -1, "", -1)
        p = it.pieces[0]
        src, off = st.offsets[p.key if p.source == 0 else f"\0{st.sources[p.source]}\0{p.key}"]
        return (it.file, p.source, src, off)

    final = sorted(st.final, key=order)
    keys_seen: dict[tuple[str, str], Item] = {}
    for it in final:
        if (it.file, it.key) in keys_seen:
            raise SdlensError(st.inp, f"two tensors would be written as {it.key!r}")
        keys_seen[(it.file, it.key)] = it
    return final
