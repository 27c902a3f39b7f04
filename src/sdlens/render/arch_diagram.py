"""Diagrams for ``sdlens arch``: a compact block diagram drawn by sdlens itself (plain SVG text: UNet blocks with
resolution, channels and skip connections; DiT stream layout with double / single blocks), and torchview
graphs (graphviz ``dot`` from the system)."""

from __future__ import annotations

import re
import shutil
from html import escape
from pathlib import Path

from sdlens.analysis.cost import ArchReport
from sdlens.errors import SdlensError

DOT_MISSING = "graphviz's `dot` is not installed: install it with `apt-get install graphviz` (macOS: `brew install graphviz`)"

_FONT = "font-family='DejaVu Sans, Arial, sans-serif'"


def _m(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def _fill(share: float, hue: int) -> str:
    light = 92 - min(50, int(share * 400))
    return f"hsl({hue},60%,{light}%)"


def _box(x: float, y: float, w: float, h: float, fill: str, lines: list[str], size: int = 11) -> str:
    out = [f"<rect x='{x:.1f}' y='{y:.1f}' width='{w:.1f}' height='{h:.1f}' rx='4' fill='{fill}' stroke='#333'/>"]
    step = size + 2
    y0 = y + h / 2 - (len(lines) - 1) * step / 2 + size / 3
    for i, line in enumerate(lines):
        weight = " font-weight='bold'" if i == 0 else ""
        out.append(f"<text x='{x + w / 2:.1f}' y='{y0 + i * step:.1f}' font-size='{size}' text-anchor='middle'{weight} "
                   f"{_FONT}>{escape(line)}</text>")
    return "\n".join(out)


def _svg(width: float, height: float, body: list[str], title: str) -> str:
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width:.0f}' height='{height:.0f}' "
            f"viewBox='0 0 {width:.0f} {height:.0f}'>\n<rect width='100%' height='100%' fill='white'/>\n"
            f"<text x='12' y='22' font-size='15' font-weight='bold' {_FONT}>{escape(title)}</text>\n"
            + "\n".join(body) + "\n</svg>\n")


def unet_svg(r: ArchReport) -> str:
    blocks = {b.name: b for b in r.blocks}
    ins = [b for b in r.blocks if re.fullmatch(r"IN\d+", b.name)]
    outs = [b for b in r.blocks if re.fullmatch(r"OUT\d+", b.name)]
    mid = blocks.get("M00")
    n = max(len(ins), len(outs))
    bw, bh, gap, top = 190, 46, 10, 60
    xl, xr = 20, 20 + bw + 220
    body = []
    ys_in = {b.name: top + i * (bh + gap) for i, b in enumerate(ins)}
    ys_out = {b.name: top + (n - 1 - i) * (bh + gap) for i, b in enumerate(outs)}
    for b in ins:
        body.append(_box(xl, ys_in[b.name], bw, bh, _fill(b.share, 210),
                         [b.name, f"{b.resolution} · {b.channels} ch · {_m(b.params)}"]))
    for b in outs:
        body.append(_box(xr, ys_out[b.name], bw, bh, _fill(b.share, 20),
                         [b.name, f"{b.resolution} · {b.channels} ch · {_m(b.params)}"]))
    # skip connections: IN i feeds OUT (n-1-i) (LDM UNets concatenate the matching input block's output)
    for i, b in enumerate(ins):
        j = len(outs) - 1 - i
        if 0 <= j < len(outs):
            y1 = ys_in[b.name] + bh / 2
            y2 = ys_out[outs[j].name] + bh / 2
            body.append(f"<path d='M{xl + bw},{y1:.1f} C{xl + bw + 80},{y1:.1f} {xr - 80},{y2:.1f} {xr},{y2:.1f}' "
                        "fill='none' stroke='#888' stroke-dasharray='4 3'/>")
    bottom = top + n * (bh + gap)
    if mid is not None:
        mx = (xl + xr + bw) / 2 - bw / 2
        body.append(_box(mx, bottom + 10, bw, bh, _fill(mid.share, 120),
                         ["M00", f"{mid.resolution} · {mid.channels} ch · {_m(mid.params)}"]))
        last_in = ins[-1].name if ins else None
        first_out = outs[0].name if outs else None
        if last_in:
            body.append(f"<line x1='{xl + bw / 2}' y1='{ys_in[last_in] + bh}' x2='{mx}' y2='{bottom + 10 + bh / 2}' stroke='#333'/>")
        if first_out:
            body.append(f"<line x1='{mx + bw}' y1='{bottom + 10 + bh / 2}' x2='{xr + bw / 2}' y2='{ys_out[first_out] + bh}' stroke='#333'/>")
        bottom += bh + 20
    legend = (f"<text x='20' y='{bottom + 24}' font-size='11' {_FONT}>blue: input blocks (down), green: middle, "
              "orange: output blocks (up); darker = larger share of parameters; dashed: skip connections</text>")
    body.append(legend)
    title = f"{r.name} · {r.cls_name} · {_m(r.params)} parameters · latent {r.settings['latent'][0]}×{r.settings['latent'][1]}"
    return _svg(xr + bw + 20, bottom + 40, body, title)


def dit_svg(r: ArchReport) -> str:
    groups: dict[str, list] = {}
    for b in r.blocks:
        m = re.fullmatch(r"([A-Z]+)(\d+)", b.name)
        groups.setdefault(m.group(1) if m else b.name, []).append(b)
    labels = {"D": "double-stream blocks (image | text, joint attention)", "J": "joint blocks (image | text, joint attention)",
              "S": "single-stream blocks (image + text concatenated)", "B": "DiT blocks (self-attn, cross-attn to text)"}
    per_row, cw, ch, gap = 10, 62, 40, 6
    width = 20 + per_row * (cw + gap) + 20
    y = 50
    body = []
    for head, items in groups.items():
        if head in ("IN", "OUT", "BASE"):
            b = items[0]
            text = "embedders (patchify, timestep, text projections)" if head == "IN" else "final layer (norm, unpatchify)"
            body.append(_box(20, y, width - 40, 36, "#eee", [f"{head}: {text}", f"{_m(b.params)} · {', '.join(b.keys)}"[:110]], 10))
            y += 36 + 14
            continue
        body.append(f"<text x='20' y='{y + 12}' font-size='12' font-weight='bold' {_FONT}>"
                    f"{escape(labels.get(head, head))}: {len(items)} × {_m(items[0].params)}</text>")
        y += 20
        two = head in ("D", "J")
        for i, b in enumerate(items):
            x = 20 + (i % per_row) * (cw + gap)
            yy = y + (i // per_row) * (ch + gap)
            if two:
                body.append(_box(x, yy, cw / 2, ch, "hsl(210,60%,80%)", ["img"], 9))
                body.append(_box(x + cw / 2, yy, cw / 2, ch, "hsl(40,70%,80%)", ["txt"], 9))
                body.append(f"<text x='{x + cw / 2}' y='{yy - 2}' font-size='9' text-anchor='middle' {_FONT}>{b.name}</text>")
            else:
                body.append(_box(x, yy, cw, ch, _fill(b.share, 280), [b.name], 10))
        rows = (len(items) + per_row - 1) // per_row
        y += rows * (ch + gap) + 16
    title = f"{r.name} · {r.cls_name} · {_m(r.params)} parameters · {r.settings['text_tokens']} text tokens"
    return _svg(width, y + 10, body, title)


def block_diagram_svg(r: ArchReport) -> str:
    return unet_svg(r) if any(b.resolution for b in r.blocks) else dit_svg(r)


def diagram_paths(path: Path | None, depth: int = 1) -> list[Path]:
    """The files ``--diagram PATH`` may write: PATH as named, the block diagram, the torchview DOT and SVG."""
    if path is None:
        return []
    path = Path(path)
    tv = path.with_name(f"{path.stem}-torchview-depth{depth}")
    svg = path if path.suffix.lower() == ".svg" else path.with_suffix(".svg")
    return list(dict.fromkeys([path, svg, tv.with_suffix(".gv"), tv.with_suffix(".svg")]))


def write_block_diagram(r: ArchReport, path: Path) -> Path:
    from sdlens.io.atomic import write_text_atomic

    path = Path(path)
    if path.suffix.lower() != ".svg":
        path = path.with_suffix(".svg")
    write_text_atomic(path, block_diagram_svg(r))
    return path


def write_torchview(model: str, r: ArchReport, stem: Path, *, depth: int = 1) -> Path:
    """A torchview graph of the denoiser at ``depth`` (1 or 2): ``stem``.svg rendered with graphviz ``dot``;
    without ``dot`` the DOT source is written to ``stem``.gv and a one-line error says how to install it."""
    try:
        from torchview import draw_graph
    except ImportError:
        raise SdlensError(None, "torchview is not installed: pip install torchview") from None
    from sdlens.analysis.cost import _denoiser_for, resolve
    from sdlens.arch import build as B

    spec = B.with_tokens(resolve(model), None)
    den = _denoiser_for(spec, r.settings["dtype"])
    w, h = r.settings["res"]
    inputs = B.denoiser_inputs(spec, den, 1, w, h, B.DTYPES[r.settings["dtype"]])
    inputs["return_dict"] = False
    graph = draw_graph(den, input_data=inputs, device="meta", depth=depth, graph_name=r.name, expand_nested=False)
    import subprocess

    from sdlens.io.atomic import atomic_path, write_text_atomic

    stem = Path(stem)
    gv = write_text_atomic(stem.with_suffix(".gv"), graph.visual_graph.source)
    if shutil.which("dot") is None:
        raise SdlensError(None, f"{DOT_MISSING}; the DOT source is in {gv}")
    svg = stem.with_suffix(".svg")
    with atomic_path(svg) as tmp:
        done = subprocess.run(["dot", "-Tsvg", str(gv), "-o", str(tmp)], capture_output=True, text=True)
        if done.returncode != 0:
            raise SdlensError(gv, f"graphviz dot failed: {done.stderr.strip().splitlines()[-1:]}")
    return svg
