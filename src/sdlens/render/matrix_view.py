"""``sdlens matrix`` outputs: console tables, CSV per group, one JSON, and the figures."""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from sdlens.analysis.matrix import MatrixResult
from sdlens.io.atomic import write_text_atomic
from sdlens.render.jsonout import dumps
from sdlens.render.safe_text import NAME_LIMIT, plot_label, printable, safe
from sdlens.render.text import fits, path_line, plural, wrap_items

_DETAIL = ("vae_encoder", "vae_decoder", "schedule", "other")  # CSV and JSON only
WRITES = (
    "matrix-*.csv",
    "matrix.json",
    "identity.csv",
    "*.png",
    ".matrix-partial.npz",
)  # in the --out folder
_METRIC = {"l2": "L2 distance ‖a−b‖₂", "l1": "L1 distance Σ|a−b|", "cos": "cosine distance 1 − cos(a, b)"}


def _fname(group: str) -> str:
    return group.replace("block:", "block-").replace("/", "_")


def matrix_csv(result: MatrixResult, group: str) -> str:
    """Labelled N×N CSV; NaN where two models are not comparable."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model", *result.names])
    for name, row in zip(result.names, result.matrix(group), strict=True):
        w.writerow([name, *("NaN" if np.isnan(v) else repr(float(v)) for v in row)])
    return buf.getvalue()


def identity_csv(result: MatrixResult) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["component", "group", "models"])
    for comp, groups in result.identity.items():
        for k, grp in enumerate(groups):
            w.writerow([comp, k + 1, " | ".join(grp)])
    return buf.getvalue()


def _worth_plotting(group: str, m: np.ndarray) -> bool:
    """Figures for the main groups that have something to show: the parts (VAE encoder / decoder), buffers and
    groups whose models are all identical are in the CSVs, the JSON and the identity table only."""
    if group in _DETAIL or np.isnan(m).all() or (~np.isnan(m)).sum(axis=1).max() < 2:
        return False
    return bool(np.nanmax(m) > 0)


def figure_jobs(result: MatrixResult, out_dir: Path) -> list[tuple[str, tuple]]:
    """The figures to draw, as (``matrix_plots`` function name, arguments)."""
    label = _METRIC[result.metric]
    mats = {g: result.matrix(g) for g in result.matrices}
    names = [plot_label(n) for n in result.names]  # file names may hold control characters or "$"
    identity = {
        plot_label(c): [[plot_label(n) for n in grp] for grp in groups]
        for c, groups in result.identity.items()
    }
    jobs: list[tuple[str, tuple]] = []
    for g, m in mats.items():
        if not _worth_plotting(g, m):
            continue
        title = plot_label(f"{g}: {label}")
        jobs.append(("plot_heatmap", (m, names, title, out_dir / f"heatmap-{_fname(g)}.png")))
        if not g.startswith("block:"):
            jobs.append(("plot_graph", (m, names, title, out_dir / f"graph-{_fname(g)}.png")))
            jobs.append(
                (
                    "plot_mds",
                    (
                        m,
                        names,
                        plot_label(f"{g}: 2-D map (MDS) of {label}"),
                        out_dir / f"mds-{_fname(g)}.png",
                    ),
                )
            )
    main = {g: m for g, m in mats.items() if not g.startswith("block:") and g not in _DETAIL}
    jobs.append(("plot_from_ref", (main or mats, names, result.ref, out_dir / "from-ref.png")))
    jobs.append(("plot_identity", (identity, names, out_dir / "identity.png")))
    return jobs


def write_outputs(
    result: MatrixResult,
    out_dir: Path,
    *,
    plots: bool = True,
    figures: FigureWorkers | None = None,
    while_drawing: Callable[[], None] | None = None,
) -> list[Path]:
    """CSV per group, matrix.json, identity.csv and (with ``plots``) the figures, drawn by ``figures`` (started
    early by the caller) or by workers started here; each file written atomically. The figures are handed out
    first; the data files are written (and ``while_drawing`` runs) while they are drawn."""
    out_dir = Path(out_dir)
    own = None
    if plots and figures is None:
        figures = own = FigureWorkers()
    try:
        if plots:
            figures.submit(figure_jobs(result, out_dir))
        written = [
            write_text_atomic(out_dir / f"matrix-{_fname(g)}.csv", matrix_csv(result, g))
            for g in result.matrices
        ]
        written.append(write_text_atomic(out_dir / "matrix.json", dumps(result)))
        written.append(write_text_atomic(out_dir / "identity.csv", identity_csv(result)))
        if while_drawing:
            while_drawing()
        return written + (figures.results() if plots else [])
    finally:
        if own is not None:
            own.close()


def _render(job: tuple[str, tuple]) -> Path:
    from sdlens.render import matrix_plots

    name, args = job
    return getattr(matrix_plots, name)(*args)


def _figure_server(conn, workers: int) -> None:
    """Runs in a process forked at start-up: imports what the figures need once (while the parent reads and
    computes), waits for the figure list, then draws it with ``workers`` processes forked from here, so none
    of them imports anything again."""
    import signal
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    import scipy.cluster.hierarchy  # noqa: F401
    import scipy.sparse.csgraph  # noqa: F401

    from sdlens.render import matrix_plots

    matrix_plots._plt()
    with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
        pool.submit(int)  # the workers are forked now, ready before the figures arrive
        try:
            jobs = conn.recv()
        except EOFError:  # the parent has gone
            return
        if not jobs:
            return
        # the slowest figures first, so that the workers finish together
        order = sorted(range(len(jobs)), key=lambda k: _COST.get(jobs[k][0], 1))
        try:
            drawn = dict(zip(order, pool.map(_render, [jobs[k] for k in order]), strict=True))
            conn.send(("ok", [drawn[k] for k in range(len(jobs))]))
        except Exception as e:  # noqa: BLE001 - handed to the parent, which raises it
            conn.send(("error", e))


_COST = {"plot_heatmap": 0, "plot_graph": 1, "plot_identity": 2, "plot_from_ref": 2, "plot_mds": 3}


class FigureWorkers:
    """Figure drawing off the main process, prepared early: matplotlib is single-threaded and slow to import.
    ``sdlens matrix`` forks one server before any thread of its own starts; it imports matplotlib and scipy
    while the parent reads headers and computes, then draws the figures with workers forked from it.
    Where fork is unavailable or unsafe (one core, or threads already running here) the figures are drawn in
    this process, one by one."""

    def __init__(self, workers: int | None = None):
        import multiprocessing as mp
        import os
        import threading

        self.server = self.conn = None
        self._jobs: list[tuple[str, tuple]] = []
        workers = workers or min(os.cpu_count() or 1, 4)
        if workers >= 2 and "fork" in mp.get_all_start_methods() and threading.active_count() == 1:
            ctx = mp.get_context("fork")
            self.conn, theirs = ctx.Pipe()
            self.server = ctx.Process(target=_figure_server, args=(theirs, workers))  # not daemonic: it forks
            self.server.start()
            theirs.close()

    def submit(self, jobs: list[tuple[str, tuple]]) -> None:
        """Hand the figures to the workers (drawn here, now, when there are none)."""
        self._jobs = jobs
        if self.server is not None and jobs:
            self.conn.send(jobs)

    def results(self) -> list[Path]:
        """The files of the submitted figures, once drawn."""
        jobs, self._jobs = self._jobs, []
        if self.server is None or not jobs:
            return [_render(j) for j in jobs]
        status, value = self.conn.recv()
        self.close()
        if status == "error":
            raise value
        return value

    def close(self) -> None:
        if self.server is None:
            return
        if self.server.is_alive():
            with contextlib.suppress(OSError):
                self.conn.send([])  # nothing (more) to draw
            self.server.join(5)
            if self.server.is_alive():
                self.server.terminate()
        self.conn.close()
        self.server = None

    def __enter__(self) -> FigureWorkers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def render_matrix(result: MatrixResult, console: Console, *, max_cols: int = 12) -> None:
    """Notes, the identity groups, the numbered models, then each group's matrix (models as numbered rows; at most
    ``max_cols`` columns a table, fewer when the console is narrow)."""
    console.print(
        f"[bold]{plural(len(result.models), 'model')}[/] · {_METRIC[result.metric]} · by {result.by}"
    )
    for line in result.note_lines():
        console.print(f"[yellow]note[/] {safe(line)}", soft_wrap=True, highlight=False)
    console.print("models:", style="bold")
    width = len(str(len(result.names)))
    for i, name in enumerate(result.names, 1):
        path_line(console, f"  {i:>{width}}", printable(Path(name).name, NAME_LIMIT))
    _identity(result, console)
    for g in result.matrices:
        _matrix_tables(
            console, result.matrix(g), f"{safe(g)} ({plural(result.keys.get(g, 0), 'tensor')})", max_cols
        )


def _identity(result: MatrixResult, console: Console) -> None:
    """Bit-identical groups, one a line, by model number: ``vae: 1 2 5``."""
    rows = [(comp, grp) for comp, groups in result.identity.items() for grp in groups]
    if not rows:
        return
    number = {name: i for i, name in enumerate(result.names, 1)}
    console.print("bit-identical components (models sharing the same bytes):", style="bold")
    for comp, grp in rows:
        wrap_items(console, [f"{safe(comp)}:", *(safe(number.get(n, n)) for n in grp)], indent=2, sep=" ")


def _cell(v: float) -> str:
    return "—" if np.isnan(v) else ("0" if v == 0 else f"{v:.4g}")


def _matrix_tables(console: Console, m: np.ndarray, title: str, max_cols: int) -> None:
    """One group's matrix with models as numbered rows (names in the ``models:`` list above); the columns are
    split over several tables when they do not all fit the console's width."""
    n = len(m)
    cols = list(range(n))
    per = min(max_cols, n)
    while per > 1 and not fits(console, _table(m, title, cols[:per])):
        per -= 1
    for start in range(0, n, per):
        chunk = cols[start : start + per]
        part = title if per >= n else f"{title}: models {chunk[0] + 1}–{chunk[-1] + 1}"
        console.print(_table(m, part, chunk))


def _table(m: np.ndarray, title: str, chunk: list[int]) -> Table:
    t = Table(title=title, title_justify="left")
    t.add_column("#", justify="right", no_wrap=True)
    for j in chunk:
        t.add_column(str(j + 1), justify="right", no_wrap=True)
    for i in range(len(m)):
        t.add_row(str(i + 1), *(_cell(m[i, j]) for j in chunk))
    return t
