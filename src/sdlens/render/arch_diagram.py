"""Diagrams for ``sdlens arch``: a compact block diagram drawn by sdlens itself (plain SVG text: UNet blocks with
resolution, channels and skip connections; DiT stream layout with double / single blocks), and torchview
graphs (graphviz ``dot`` from the system).

Colours are written as hex (``#rrggbb``: some SVG renderers draw ``hsl()`` as black) and the canvas is sized
from a conservative estimate of each text's width, so titles and legends are never clipped."""

from __future__ import annotations

import colorsys
import re
import shutil
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from sdlens.choices import DiagramDepth, check_choice
from sdlens.errors import SdlensError

if TYPE_CHECKING:  # the diagram needs only the report's fields, not torch (which cost imports)
    from sdlens.analysis.cost import ArchReport

DOT_MISSING = "graphviz's `dot` is not installed: install it with `apt-get install graphviz` (macOS: `brew install graphviz`)"

_FONT = "font-family='DejaVu Sans, Arial, sans-serif'"
_EM = {False: 0.6, True: 0.66}  # a little above DejaVu Sans' mean advance per character (normal, bold), in em
_MARGIN = 20


def _m(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def text_width(text: str, size: float, bold: bool = False) -> float:
    """A width (px) no narrower than ``text`` set in DejaVu Sans at ``size`` px."""
    return len(text) * size * _EM[bold]


def _hsl(hue: float, sat: float, light: float) -> str:
    r, g, b = colorsys.hls_to_rgb(hue / 360, light, sat)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def _fill(share: float, hue: int) -> str:
    """Lighter for a small share of the parameters, darker for a large one."""
    return _hsl(hue, 0.6, (92 - min(50, int(share * 400))) / 100)


def _text(x: float, y: float, text: str, size: int, *, bold: bool = False, anchor: str = "start") -> str:
    weight = " font-weight='bold'" if bold else ""
    return (
        f"<text x='{x:.1f}' y='{y:.1f}' font-size='{size}' text-anchor='{anchor}'{weight} {_FONT}>"
        f"{escape(text)}</text>"
    )


def _fit(text: str, width: float, size: int, bold: bool = False) -> str:
    """``text`` shortened with "…" to fit ``width`` px."""
    if text_width(text, size, bold) <= width:
        return text
    keep = max(1, int(width / (size * _EM[bold])) - 1)
    return text[:keep] + "…"


def _box(x: float, y: float, w: float, h: float, fill: str, lines: list[str], size: int = 11) -> str:
    out = [
        f"<rect x='{x:.1f}' y='{y:.1f}' width='{w:.1f}' height='{h:.1f}' rx='4' fill='{fill}' stroke='#333333'/>"
    ]
    step = size + 2
    y0 = y + h / 2 - (len(lines) - 1) * step / 2 + size / 3
    for i, line in enumerate(lines):
        out.append(
            _text(
                x + w / 2, y0 + i * step, _fit(line, w - 4, size, i == 0), size, bold=i == 0, anchor="middle"
            )
        )
    return "\n".join(out)


def _legend(
    x: float, y: float, items: list[tuple[str, str]], notes: list[str]
) -> tuple[list[str], float, float]:
    """Colour swatches with their meaning on one line, then one line per note: (SVG, width, height)."""
    body, cx = [], x
    for fill, label in items:
        body.append(f"<rect x='{cx:.1f}' y='{y:.1f}' width='12' height='12' fill='{fill}' stroke='#333333'/>")
        body.append(_text(cx + 17, y + 10, label, 11))
        cx += 17 + text_width(label, 11) + 14
    width, yy = cx - x, y + 12
    for note in notes:
        yy += 16
        body.append(_text(x, yy, note, 11))
        width = max(width, text_width(note, 11))
    return body, width, yy - y + 4


def _svg(width: float, height: float, body: list[str], title: str) -> str:
    width = max(width, text_width(title, 15, True) + 2 * 12)
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width:.0f}' height='{height:.0f}' "
        f"viewBox='0 0 {width:.0f} {height:.0f}'>\n<rect width='100%' height='100%' fill='#ffffff'/>\n"
        + _text(12, 22, title, 15, bold=True)
        + "\n"
        + "\n".join(body)
        + "\n</svg>\n"
    )


def unet_svg(r: ArchReport) -> str:
    blocks = {b.name: b for b in r.blocks}
    ins = [b for b in r.blocks if re.fullmatch(r"IN\d+", b.name)]
    outs = [b for b in r.blocks if re.fullmatch(r"OUT\d+", b.name)]
    mid = blocks.get("M00")
    n = max(len(ins), len(outs))
    bw, bh, gap, top = 190, 46, 10, 60
    xl, xr = _MARGIN, _MARGIN + bw + 220
    body = []
    ys_in = {b.name: top + i * (bh + gap) for i, b in enumerate(ins)}
    ys_out = {b.name: top + (n - 1 - i) * (bh + gap) for i, b in enumerate(outs)}
    for b in ins:
        body.append(
            _box(
                xl,
                ys_in[b.name],
                bw,
                bh,
                _fill(b.share, 210),
                [b.name, f"{b.resolution} · {b.channels} ch · {_m(b.params)}"],
            )
        )
    for b in outs:
        body.append(
            _box(
                xr,
                ys_out[b.name],
                bw,
                bh,
                _fill(b.share, 20),
                [b.name, f"{b.resolution} · {b.channels} ch · {_m(b.params)}"],
            )
        )
    # skip connections: IN i feeds OUT (n-1-i) (LDM UNets concatenate the matching input block's output)
    for i, b in enumerate(ins):
        j = len(outs) - 1 - i
        if 0 <= j < len(outs):
            y1 = ys_in[b.name] + bh / 2
            y2 = ys_out[outs[j].name] + bh / 2
            body.append(
                f"<path d='M{xl + bw},{y1:.1f} C{xl + bw + 80},{y1:.1f} {xr - 80},{y2:.1f} {xr},{y2:.1f}' "
                "fill='none' stroke='#888888' stroke-dasharray='4 3'/>"
            )
    bottom = top + n * (bh + gap)
    if mid is not None:
        mx = (xl + xr + bw) / 2 - bw / 2
        body.append(
            _box(
                mx,
                bottom + 10,
                bw,
                bh,
                _fill(mid.share, 120),
                ["M00", f"{mid.resolution} · {mid.channels} ch · {_m(mid.params)}"],
            )
        )
        last_in = ins[-1].name if ins else None
        first_out = outs[0].name if outs else None
        if last_in:
            body.append(
                f"<line x1='{xl + bw / 2}' y1='{ys_in[last_in] + bh}' x2='{mx}' y2='{bottom + 10 + bh / 2}' "
                "stroke='#333333'/>"
            )
        if first_out:
            body.append(
                f"<line x1='{mx + bw}' y1='{bottom + 10 + bh / 2}' x2='{xr + bw / 2}' "
                f"y2='{ys_out[first_out] + bh}' stroke='#333333'/>"
            )
        bottom += bh + 20
    legend, lw, lh = _legend(
        _MARGIN,
        bottom + 12,
        [
            (_fill(0.1, 210), "input blocks (down)"),
            (_fill(0.1, 120), "middle"),
            (_fill(0.1, 20), "output blocks (up)"),
        ],
        ["darker = larger share of the parameters", "dashed: skip connections"],
    )
    body += legend
    title = f"{r.name} · {r.cls_name} · {_m(r.params)} parameters · latent {r.settings['latent'][0]}×{r.settings['latent'][1]}"
    return _svg(max(xr + bw, _MARGIN + lw) + _MARGIN, bottom + 12 + lh + 12, body, title)


def dit_svg(r: ArchReport) -> str:
    groups: dict[str, list] = {}
    for b in r.blocks:
        m = re.fullmatch(r"([A-Z]+)(\d+)", b.name)
        groups.setdefault(m.group(1) if m else b.name, []).append(b)
    labels = {
        "D": "double-stream blocks (image | text, joint attention)",
        "J": "joint blocks (image | text, joint attention)",
        "S": "single-stream blocks (image + text concatenated)",
        "B": "DiT blocks (self-attn, cross-attn to text)",
    }
    per_row, cw, ch, gap = 10, 62, 40, 6
    width = _MARGIN + per_row * (cw + gap) - gap + _MARGIN
    inner = width - 2 * _MARGIN
    y = 46
    body = []
    for head, items in groups.items():
        if head in ("IN", "OUT", "BASE"):
            b = items[0]
            text = (
                "embedders (patchify, timestep, text projections)"
                if head == "IN"
                else "final layer (norm, unpatchify)"
            )
            body.append(
                _box(
                    _MARGIN,
                    y,
                    inner,
                    36,
                    "#eeeeee",
                    [f"{head}: {text}", f"{_m(b.params)} · {', '.join(b.keys)}"],
                    10,
                )
            )
            y += 36 + 14
            continue
        body.append(
            _text(
                _MARGIN,
                y + 12,
                _fit(f"{labels.get(head, head)}: {len(items)} × {_m(items[0].params)}", inner, 12, True),
                12,
                bold=True,
            )
        )
        y += 20
        two = head in ("D", "J")
        pitch = ch + gap + (12 if two else 0)  # two-stream blocks carry their name above the box
        y += 12 if two else 0
        for i, b in enumerate(items):
            x = _MARGIN + (i % per_row) * (cw + gap)
            yy = y + (i // per_row) * pitch
            if two:
                body.append(_box(x, yy, cw / 2, ch, _hsl(210, 0.6, 0.8), ["img"], 9))
                body.append(_box(x + cw / 2, yy, cw / 2, ch, _hsl(40, 0.7, 0.8), ["txt"], 9))
                body.append(_text(x + cw / 2, yy - 3, b.name, 9, anchor="middle"))
            else:
                body.append(_box(x, yy, cw, ch, _fill(b.share, 280), [b.name], 10))
        rows = (len(items) + per_row - 1) // per_row
        y += (rows - 1) * pitch + ch + 16
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


def write_torchview(model: str, r: ArchReport, stem: Path, *, depth: DiagramDepth = 1) -> Path:
    """A torchview graph of the denoiser at ``depth`` (1 or 2): ``stem``.svg rendered with graphviz ``dot``;
    without ``dot`` the DOT source is written to ``stem``.gv and a one-line error says how to install it."""
    check_choice(depth, "depth", DiagramDepth)
    import subprocess

    from sdlens.analysis.arch_graph import denoiser_graph_source
    from sdlens.io.atomic import atomic_path, write_text_atomic

    source = denoiser_graph_source(model, r, depth=depth)
    stem = Path(stem)
    gv = write_text_atomic(stem.with_suffix(".gv"), source)
    if shutil.which("dot") is None:
        raise SdlensError(None, f"{DOT_MISSING}; the DOT source is in {gv}")
    svg = stem.with_suffix(".svg")
    with atomic_path(svg) as tmp:
        done = subprocess.run(["dot", "-Tsvg", str(gv), "-o", str(tmp)], capture_output=True, text=True)
        if done.returncode != 0:
            raise SdlensError(gv, f"graphviz dot failed: {done.stderr.strip().splitlines()[-1:]}")
    return svg
