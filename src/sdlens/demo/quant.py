"""Demo section: quantised files — GGUF (ComfyUI-GGUF layout), ComfyUI scaled fp8, bitsandbytes NF4 — read
as what they are: family, storage per tensor, bits per weight; diff of each source and its copy; a matrix over
the mixed folder."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table


def _zoo(folder: Path) -> list[tuple[Path, Path, str]]:
    """(copy, its source, what it is) for the quantised zoo: GGUF copies, fp8 copies, one NF4 file."""
    import torch

    from sdlens.testing.zoo_fp8 import build_fp8_zoo
    from sdlens.testing.zoo_gguf import build_gguf_zoo
    from sdlens.testing.zoo_nf4 import write_nf4

    out = [(e.path, e.source, f"{e.family} GGUF {e.qtype}") for e in build_gguf_zoo(folder)]
    fp8 = build_fp8_zoo(folder)
    out += [(e.path, e.source, f"{e.family} {e.truth.scheme} {e.truth.fp8}") for e in fp8]
    flux = fp8[0].source  # the FLUX.1-dev denoiser (the fp8 zoo's first source)
    from sdlens.io.open import open_checkpoint

    with open_checkpoint(flux) as ck:
        sd = {k: ck.read(k) for k in ck.tensors}
    nf4 = folder / "flux1-dev-bnb-nf4.safetensors"
    write_nf4(nf4, {k: v.to(torch.bfloat16) for k, v in sd.items()}, nested=True, backend="numpy")
    out.append((nf4, flux, f"{fp8[0].family} bitsandbytes NF4 (nested)"))
    return out


def section(zoo_dir: Path, out_dir: Path, console: Console) -> None:
    from sdlens.analysis.diff import diff
    from sdlens.analysis.inspect import inspect
    from sdlens.analysis.matrix import matrix
    from sdlens.render.matrix_view import write_outputs
    from sdlens.render.safe_text import safe

    console.rule("[bold]quantised files: GGUF, scaled fp8, NF4")
    folder = zoo_dir / "quant"
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    files = _zoo(folder)
    console.print(
        f"{len(files)} quantised copies of {len({s for _, s, _ in files})} sources in {safe(folder)}"
    )
    table = Table(title="inspect and diff: known truth vs what sdlens finds", title_justify="left")
    for col in ("file", "truth", "found (bits per weight)", "diff against its source"):
        table.add_column(col, overflow="fold")
    for path, source, truth in files:
        r = inspect(path)
        q = r.quantisation
        found = ", ".join(f"{s.scheme} ({s.bits_per_weight:.2f})" for s in q.schemes) if q else r.precision
        verdict = diff(source, path).verdict[0].split(":")[0].split(" (")[0]
        table.add_row(path.name, truth, f"{r.family}: {found}", safe(verdict))
    console.print(table)
    first = files[-1][1]  # the NF4 file's source: FLUX.1-dev
    picks = [p for p, s, _t in files if s == first]
    sources = sorted({s for p, s, _t in files if p in picks})
    res = matrix([*sources, *picks])
    out = out_dir / "quant"
    written = write_outputs(res, out)
    console.print(
        f"matrix over {len(res.models)} FLUX files (the source and its GGUF / fp8 / NF4 copies): "
        f"{', '.join(Path(w).name for w in written[:4])} … in {safe(out)} ({time.perf_counter() - t0:.1f} s)",
        soft_wrap=True,
    )
