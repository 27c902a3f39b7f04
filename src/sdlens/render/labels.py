"""Point labels that never overprint: each label goes to the first free spot around its point (then further
out, with a leader line); a label with no free spot left becomes a small number, named in a key beside the
plot. Geometry is in display pixels, measured with the figure's renderer, so call this after the axes'
limits and size are final."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# directions tried in order: right, above, left, below, then the diagonals
_DIRS = ((1, 0), (0, 1), (-1, 0), (0, -1), (1, 1), (-1, 1), (-1, -1), (1, -1))
_HA = {1: "left", 0: "center", -1: "right"}
_VA = {1: "bottom", 0: "center", -1: "top"}


@dataclass
class Box:
    x0: float
    y0: float
    x1: float
    y1: float

    def overlaps(self, o: Box, pad: float = 1.0) -> bool:
        return not (
            self.x1 + pad <= o.x0 or o.x1 + pad <= self.x0 or self.y1 + pad <= o.y0 or o.y1 + pad <= self.y0
        )

    def inside(self, o: Box) -> bool:
        return self.x0 >= o.x0 and self.y0 >= o.y0 and self.x1 <= o.x1 and self.y1 <= o.y1


def _extent(ax, text: str, fontsize: float) -> tuple[float, float]:
    t = ax.text(0, 0, text, fontsize=fontsize)
    bb = t.get_window_extent(ax.figure.canvas.get_renderer())
    t.remove()
    return bb.width, bb.height


def _candidate(px: float, py: float, w: float, h: float, d: tuple[int, int], r: float) -> Box:
    dx, dy = d
    cx, cy = px + dx * r, py + dy * r  # the anchor; the box extends away from the point
    x0 = cx if dx > 0 else cx - w if dx < 0 else cx - w / 2
    y0 = cy if dy > 0 else cy - h if dy < 0 else cy - h / 2
    return Box(x0, y0, x0 + w, y0 + h)


def place_labels(
    ax,
    xy: np.ndarray,
    texts: Sequence[str],
    *,
    fontsize: float = 8,
    marker_px: float = 6.0,
    obstacles: Sequence[Box] = (),
    rings: int = 4,
    background: bool = False,
) -> tuple[list, list[tuple[int, str]], list[Box]]:
    """Label the points ``xy`` (data coordinates) of ``ax`` with ``texts`` without any two labels, or a label
    and a point, overlapping. Returns the Text artists, the (number, text) key of labels shown as numbers,
    and the boxes now taken (for further labels, such as edge labels). A point with no free spot even for a
    number gets no label: its key entry has number 0."""
    fig = ax.figure
    fig.canvas.draw()  # final limits and layout (aspect, margins) before measuring
    px = ax.transData.transform(np.asarray(xy, dtype=float).reshape(-1, 2))
    frame = Box(*ax.get_window_extent().extents)
    taken = [Box(x - marker_px, y - marker_px, x + marker_px, y + marker_px) for x, y in px] + list(obstacles)
    scale = fig.dpi / 72.0
    artists, key, crowded = [], [], []
    # the most crowded points first: they have the fewest free spots
    crowd = [int((np.hypot(*(px - p).T) < 40 * scale).sum()) for p in px]
    for i in sorted(range(len(px)), key=lambda i: (-crowd[i], i)):
        placed = None
        # the label itself close by; else a number, further out if need be
        for text, tries in ((texts[i], rings), (str(len(key) + 1), 3 * rings)):
            w, h = _extent(ax, text, fontsize)
            for ring in range(tries):
                r = marker_px + 2 * scale + ring * (h + 4 * scale)
                for d in _DIRS:
                    box = _candidate(*px[i], w, h, d, r if d[0] == 0 or d[1] == 0 else r * 0.75)
                    if box.inside(frame) and not any(box.overlaps(t) for t in taken):
                        placed = (text, box, d, ring)
                        break
                if placed:
                    break
            if placed:
                break
        if (
            placed is None
        ):  # nowhere free, even for a number: named in the key, never drawn over another label
            crowded.append(texts[i])
            continue
        text, box, (dx, dy), ring = placed
        if text != texts[i]:
            key.append((int(text), texts[i]))
        taken.append(box)
        anchor = (
            box.x0 if dx > 0 else box.x1 if dx < 0 else (box.x0 + box.x1) / 2,
            box.y0 if dy > 0 else box.y1 if dy < 0 else (box.y0 + box.y1) / 2,
        )
        at = ax.transData.inverted().transform(anchor)
        arrow = (
            {"arrowstyle": "-", "color": "#999999", "lw": 0.6, "shrinkA": 0, "shrinkB": marker_px * 0.8}
            if ring > 0
            else None
        )
        patch = (
            {"boxstyle": "square,pad=0.05", "fc": "white", "ec": "none", "alpha": 0.8} if background else None
        )
        artists.append(
            ax.annotate(
                text,
                xy[i],
                xytext=at,
                textcoords="data",
                fontsize=fontsize,
                ha=_HA[dx],
                va=_VA[dy],
                arrowprops=arrow,
                annotation_clip=False,
                bbox=patch,
                zorder=4,
            )
        )
    key += [(0, t) for t in crowded]  # number 0: too crowded to label at all
    return artists, key, taken


def text_boxes(artists: Sequence) -> list[Box]:
    """Display-pixel boxes of drawn texts, without an annotation's leader line (for tests and placement)."""
    from matplotlib.text import Text

    if not artists:
        return []
    renderer = artists[0].figure.canvas.get_renderer()
    return [Box(*Text.get_window_extent(a, renderer).extents) for a in artists]
