"""sdlens against the pickle scanners people use (picklescan, modelscan, fickling) on one hostile corpus.

The corpus is :mod:`sdlens.testing.hostile`: malicious pickles and torch zips (every protocol, memo-built
names, allowed-looking gadgets, the scanners' published bypass classes: non-standard member names, zip flag
bits, CRC tricks, duplicate members, polyglots), work bombs, malformed references and benign controls.
Each scanner runs in its own worker process, one file at a time, with a per-file timeout; a worker that
crashes or hangs is restarted on the next file. Prints one row per file:

    FLAG     the scanner calls it unsafe / malicious (sdlens: UnsafeFileError)
    refused  sdlens refuses it with a one-line error (bombs, malformed files)
    -        called clean (sdlens: opened)
    err      the scanner gave up with an error, without a verdict
    skip     the scanner did not look at the file
    timeout / crash

and checks that sdlens flags every payload any other scanner flags, plus the ones they miss.

Install the scanners with ``pip install -e .[bench]``. Run: ``python benchmarks/bench_scan_security.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCANNERS = ("sdlens", "picklescan", "modelscan", "fickling")


# ---------------------------------------------------------------------------------------------- verdicts


def _sdlens(path: str) -> str:
    from sdlens.errors import CheckpointError, UnsafeFileError
    from sdlens.io.open import open_checkpoint

    try:
        with open_checkpoint(path):
            return "-"
    except UnsafeFileError:
        return "FLAG"
    except CheckpointError:
        return "refused"


def _picklescan(path: str) -> str:
    from picklescan.scanner import scan_file_path

    r = scan_file_path(path)
    if r.infected_files or r.issues_count:
        return "FLAG"
    if r.scan_err:
        return "err"
    return "-" if r.scanned_files else "skip"


def _modelscan(path: str) -> str:
    from modelscan.modelscan import ModelScan

    r = ModelScan().scan(Path(path))
    if r.get("issues"):
        return "FLAG"
    if r.get("errors"):
        return "err"
    return "-" if r["summary"]["scanned"]["total_scanned"] else "skip"


def _fickling(path: str) -> str:
    import zipfile

    from fickling.loader import scan_file, scan_zip_archive

    if zipfile.is_zipfile(path):
        results = list(scan_zip_archive(path, graceful=True).values())
    else:
        results = [scan_file(path, graceful=True)]
    if not results:
        return "skip"
    if any(not r.is_safe for r in results):
        return "FLAG"
    return "err" if any(r.errors for r in results) else "-"


_VERDICT = {"sdlens": _sdlens, "picklescan": _picklescan, "modelscan": _modelscan, "fickling": _fickling}


def _worker(scanner: str, paths: list[str]) -> None:
    """Print one JSON line per file, as each finishes (the parent times each one)."""
    import logging

    logging.disable(logging.CRITICAL)
    fn = _VERDICT[scanner]
    for p in paths:
        sink = io.StringIO()
        try:
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                verdict = fn(p)
        except Exception as e:  # the scanner itself failed on this file
            verdict = f"err:{type(e).__name__}"
        print(json.dumps({"path": p, "verdict": verdict}), flush=True)


# ---------------------------------------------------------------------------------------------- driver


def _run_scanner(scanner: str, paths: list[str], timeout: float) -> dict[str, str]:
    out: dict[str, str] = {}
    todo = list(paths)
    while todo:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", scanner, *todo],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout + 30  # the first file also pays for the imports
        while todo:
            if not sel.select(max(0.0, deadline - time.monotonic())):
                out[todo.pop(0)] = "timeout"
                proc.kill()
                break
            line = proc.stdout.readline()
            if not line:
                proc.wait()
                out[todo.pop(0)] = "crash" if proc.returncode else "err"
                break
            rec = json.loads(line)
            out[rec["path"]] = rec["verdict"]
            todo.remove(rec["path"])
            deadline = time.monotonic() + timeout
        proc.stdout.close()
        with contextlib.suppress(Exception):
            proc.kill()
            proc.wait()
    return out


def _available(scanner: str) -> bool:
    if scanner == "sdlens":
        return True
    try:
        __import__({"picklescan": "picklescan.scanner", "modelscan": "modelscan.modelscan",
                    "fickling": "fickling.loader"}[scanner])  # fmt: skip
        return True
    except ImportError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=None, help="where to write the corpus (default: a temp dir)")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per file per scanner")
    ap.add_argument("--json", default=None, help="also write the table as JSON here")
    args = ap.parse_args()

    from sdlens.testing.hostile import build_corpus

    folder = Path(args.dir or tempfile.mkdtemp(prefix="sdlens-hostile-"))
    corpus = build_corpus(folder)
    paths = [str(p) for _, p in corpus]
    scanners = [s for s in SCANNERS if _available(s)]
    for s in SCANNERS:
        if s not in scanners:
            print(f"note: {s} is not installed (pip install -e .[bench]); its column is empty")
    results = {}
    for s in scanners:
        t0 = time.perf_counter()
        results[s] = _run_scanner(s, paths, args.timeout)
        print(f"{s}: {len(paths)} files in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    head = f"{'case':28} {'group':9} {'expect':7} " + " ".join(f"{s:10}" for s in SCANNERS)
    print(head)
    print("-" * len(head))
    rows = []
    for c, p in corpus:
        cells = {s: results.get(s, {}).get(str(p), "n/a") for s in SCANNERS}
        rows.append({"case": c.name, "group": c.group, "expected": c.verdict, **cells})
        print(f"{c.name:28} {c.group:9} {c.verdict:7} " + " ".join(f"{cells[s]:10}" for s in SCANNERS))

    payloads = [r for r in rows if r["expected"] == "unsafe"]
    others = [s for s in scanners if s != "sdlens"]
    flagged_by = {s: sum(r[s] == "FLAG" for r in payloads) for s in scanners}
    print()
    print(
        f"{len(payloads)} payloads (expected unsafe): "
        + ", ".join(f"{s} flags {n}" for s, n in flagged_by.items())
    )
    benign = [r for r in rows if r["expected"] == "ok"]
    print(
        f"{len(benign)} benign files: "
        + ", ".join(f"{s} flags {sum(r[s] == 'FLAG' for r in benign)}" for s in scanners)
    )
    missed_by_all = [r["case"] for r in payloads if others and all(r[s] != "FLAG" for s in others)]
    print(f"payloads no other scanner flags ({len(missed_by_all)}): {', '.join(missed_by_all) or 'none'}")
    sdlens_misses = [r["case"] for r in payloads if r["sdlens"] != "FLAG"]
    # hostile files another scanner flags but sdlens opens as clean (benign controls excluded: a scanner's
    # false positive there is not a payload; fickling's default analysis flags every torch import)
    behind = [r["case"] for r in rows if r["expected"] != "ok" and r["sdlens"] == "-"
              and any(r[s] == "FLAG" for s in others)]  # fmt: skip
    wrong = [
        r["case"]
        for r in rows
        if {"unsafe": "FLAG", "error": "refused", "ok": "-"}[r["expected"]] != r["sdlens"]
    ]
    print(f"sdlens misses: {sdlens_misses or 'none'}; flagged elsewhere but called clean by sdlens: {behind or 'none'}; "
          f"verdicts differing from the corpus: {wrong or 'none'}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 1 if sdlens_misses or wrong or behind else 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(main())
