"""Benchmark `sdlens delta` and `sdlens extract-lora` (issue 17) against reading the files once and against
kohya's extraction method.

Models (full-size SD1 fp16 single files, real key names, about 2.1 GB each, written tensor by tensor):
  base      every UNet / text-encoder / VAE weight seeded normal, std 0.02..0.05 per tensor (norm scales
            1 + N(0, 0.02)); the schedule buffers real;
  lora      base + a baked rank-16 LoRA (B @ A, ‖Δ‖ = 1..5 % of ‖W‖ per module) on the UNet attention
            (attn1 / attn2 to_q, to_k, to_v, to_out.0) and the text encoder's q / k / v / out projections,
            rounded to fp16; every other tensor bit-identical to base;
  finetune  base + a dense perturbation (‖Δ‖ = 0.5..2 % of ‖W‖) on every weight: a high-rank "full
            fine-tune".

Timed, page cache evicted before each cold run (posix_fadvise, no root) and warm, min / median over
``--runs``: (a) reading BASE and MODEL once (``cat`` to /dev/null), timed just before every run of a command
in the same cache state (the machine may be shared: a read timed apart would see another load; the ratio is
the fastest run over the fastest read), (b) ``sdlens delta MODEL --base BASE --json OUT``,
(c) ``sdlens extract-lora MODEL --base BASE --rank 32 -o OUT``, (d) kohya sd-scripts' method reproduced
without its package (``--kohya-worker``: both whole models loaded, Δ in float32 for every LoRA target
module kept in memory, then ``torch.linalg.svd`` per module truncated to the rank, quantile clamp, saved);
(e) peak private memory (RssAnon of the process tree) of each. Targets: delta <= 3x the read time,
extract-lora <= 10x, <= 1.5 GB private memory.

A command the CLI does not have yet is skipped with a line saying so. ``--small``: tiny zoo models (LoRA
rank 2, extraction rank 4), seconds; ``--only delta|extract``; ``--keep`` keeps (and reuses) the models in
``--dir`` (default /tmp/bench-delta, removed afterwards unless --keep). Disk: about 6.6 GB, checked first.
A full run (models written in about 25 s, 3 + 3 runs of each command, one kohya run) takes about 8 minutes
on 2 cores, twice that when they are shared; peak memory of the whole run is the kohya baseline's (6.5 GB).

    PYTHONPATH=src python benchmarks/bench_delta.py [--runs 3] [--keep] [--only delta|extract] [--small]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _measure import Run, cpu_line, evict, gb, mb, measure  # noqa: E402

UNET, TE, VAE = "model.diffusion_model.", "cond_stage_model.", "first_stage_model."
LORA_TARGETS = re.compile(r"(\.attn[12]\.to_(q|k|v|out\.0)|\.self_attn\.(q|k|v|out)_proj)\.weight$")
# kohya's default LoRA targets (lora.py): Transformer2DModel's Linear / 1x1 conv (attention, ff,
# proj_in / proj_out) and the text encoder's CLIPAttention / CLIPMLP; with a conv rank, also the
# ResnetBlock2D / Downsample2D / Upsample2D layers (3x3 convs, skip 1x1 convs, time_emb_proj Linear).
KOHYA_UNET = re.compile(r"\.(transformer_blocks\.\d+\.(attn[12]|ff)\..+|proj_in|proj_out)\.weight$")
KOHYA_UNET_CONV = re.compile(
    r"\.\d+\.\d+\.(in_layers\.2|out_layers\.3|emb_layers\.1|skip_connection|op|conv)\.weight$"
)
KOHYA_TE = re.compile(r"\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])\.weight$")
STAMP = "models.json"
GENERATED = ("base.safetensors", "lora.safetensors", "finetune.safetensors", STAMP, "out_")
DTYPES = {"F16": torch.float16, "F32": torch.float32, "BF16": torch.bfloat16}
BUILD_VERSION = 1


# --- models ------------------------------------------------------------------------------------------------


def _unit(key: str, salt: str) -> float:
    """A fixed number in [0, 1) per key and purpose."""
    return zlib.crc32(f"{salt}:{key}".encode()) / 2**32


def _gen(key: str, salt: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(f"{salt}:{key}".encode()))


def base_value(key: str, shape: Sequence[int]) -> torch.Tensor:
    """Seeded float32 weight: N(0, σ), σ in 0.02..0.05 per tensor; norm scales 1 + N(0, 0.02)."""
    x = torch.randn(tuple(shape), generator=_gen(key, "base"))
    if len(shape) == 1 and "norm" in key and key.endswith(".weight"):
        return 1 + 0.02 * x
    return (0.02 + 0.03 * _unit(key, "std")) * x


def _scaled(delta: torch.Tensor, w: torch.Tensor, share: float) -> torch.Tensor:
    """``delta`` rescaled so that ‖delta‖_F = share · ‖w‖_F."""
    n = float(torch.linalg.vector_norm(delta))
    return delta * (share * float(torch.linalg.vector_norm(w)) / n) if n else delta


def lora_delta(key: str, w: torch.Tensor, rank: int) -> torch.Tensor:
    """A rank-``rank`` Δ = B @ A with ‖Δ‖ = 1..5 % of ‖W‖ (a LoRA merged at some weight)."""
    g = _gen(key, "lora")
    b = torch.randn(w.shape[0], rank, generator=g)
    a = torch.randn(rank, w[0].numel(), generator=g)
    return _scaled((b @ a).reshape(w.shape), w, 0.01 + 0.04 * _unit(key, "lora-share"))


def finetune_delta(key: str, w: torch.Tensor) -> torch.Tensor:
    """A dense (full-rank) Δ with ‖Δ‖ = 0.5..2 % of ‖W‖."""
    noise = torch.randn(w.shape, generator=_gen(key, "ft"))
    return _scaled(noise, w, 0.005 + 0.015 * _unit(key, "ft-share"))


def read_header(path: Path) -> tuple[int, dict]:
    """(data start, tensor entries) of a safetensors file."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        meta = json.loads(f.read(n))
    meta.pop("__metadata__", None)
    return 8 + n, meta


def _template(path: Path, small: bool) -> None:
    """The SD1 fp16 layout with real key names: a sparse file (full size) whose schedule buffers and
    position ids are real; the weights are filled afterwards."""
    from sdlens.testing.writers import save_safetensors
    from sdlens.testing.zoo import realise_small_buffers
    from sdlens.testing.zoo_unet import build_single_file

    sd = build_single_file("sd1", size="tiny" if small else "full", dtype=torch.float16)
    save_safetensors(realise_small_buffers(sd), path)


def build_models(work: Path, small: bool, lora_rank: int) -> dict[str, Path]:
    """base / lora / finetune in ``work`` (reused when they exist with the same settings), written in one
    pass in offset order, one tensor at a time."""
    paths = {name: work / f"{name}.safetensors" for name in ("base", "lora", "finetune")}
    stamp = {"version": BUILD_VERSION, "size": "tiny" if small else "full", "lora_rank": lora_rank}
    ready = all(p.exists() for p in paths.values()) and (work / STAMP).exists()
    if ready and json.loads((work / STAMP).read_text()).get("build") == stamp:
        print(f"reusing the models in {work}")
        return paths
    tpl = work / "template.st"
    _template(tpl, small)
    tmp = {name: p.with_name(p.name + ".tmp") for name, p in paths.items()}
    for t in tmp.values():
        subprocess.run(["cp", "--sparse=always", str(tpl), str(t)], check=True)
    start, meta = read_header(tpl)
    tpl.unlink()
    counts = {"lora modules": 0, "fine-tuned tensors": 0}
    files = {name: open(t, "r+b") for name, t in tmp.items()}  # noqa: SIM115 (closed below)
    try:
        for key, info in sorted(meta.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            dtype = DTYPES.get(info["dtype"])
            if dtype is None or not key.startswith((UNET, TE, VAE)):
                continue  # integer ids and the schedule buffers: the template's values
            w = base_value(key, info["shape"]).to(dtype)
            wf = w.float()
            values = {"base": w, "lora": w, "finetune": (wf + finetune_delta(key, wf)).to(dtype)}
            counts["fine-tuned tensors"] += 1
            if LORA_TARGETS.search(key):
                values["lora"] = (wf + lora_delta(key, wf, lora_rank)).to(dtype)
                counts["lora modules"] += 1
            for name, v in values.items():
                files[name].seek(start + info["data_offsets"][0])
                files[name].write(v.contiguous().view(torch.uint8).numpy())
    finally:
        for f in files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
    for name, p in paths.items():
        tmp[name].replace(p)
    (work / STAMP).write_text(json.dumps({"build": stamp, "counts": counts}))
    return paths


# --- kohya's method (run as a subprocess of this script) -----------------------------------------------------


def kohya_targets(key: str, conv: bool) -> bool:
    if key.startswith(UNET):
        return bool(KOHYA_UNET.search(key) or (conv and KOHYA_UNET_CONV.search(key)))
    return key.startswith(TE) and bool(KOHYA_TE.search(key))


def kohya_worker(base: str, model: str, out: str, rank: int, conv: bool) -> None:
    """sd-scripts' extract_lora_from_models.py, reproduced without its package: both whole models in
    memory, Δ (float32) of every target module kept, then an exact SVD per module, truncated to ``rank``,
    U·S and Vh clamped at their 0.99 quantile, saved (float32, its default). Prints its timings as JSON."""
    import time

    from safetensors.torch import load_file, save_file

    t0 = time.perf_counter()
    # load_file maps the file; kohya copies the weights into (float32) modules: private copies here, kept
    # at the file's fp16 (half what kohya's modules hold: in its favour)
    org, tuned = ({k: v.clone() for k, v in load_file(p).items()} for p in (base, model))
    t_load = time.perf_counter() - t0
    keys = [k for k in tuned if k.endswith(".weight") and tuned[k].ndim in (2, 4) and kohya_targets(k, conv)]
    diffs = {k: tuned[k].float() - org[k].float() for k in keys}
    te = [k for k in keys if k.startswith(TE)]
    if te and max(float(diffs[k].abs().max()) for k in te) <= 1e-6:  # "Text encoder is same"
        for k in te:
            del diffs[k]
    t1 = time.perf_counter()
    lora: dict[str, torch.Tensor] = {}
    kinds: dict[str, int] = {}
    with torch.no_grad():
        for key, mat in diffs.items():
            shape = mat.shape
            kind = "linear" if mat.ndim == 2 else f"conv{shape[2]}x{shape[3]}"
            kinds[kind] = kinds.get(kind, 0) + 1
            u, s, vh = torch.linalg.svd(mat.reshape(shape[0], -1), full_matrices=False)
            r = min(rank, s.numel())
            u, vh = u[:, :r] * s[:r], vh[:r]
            hi = float(torch.quantile(torch.cat([u.flatten(), vh.flatten()]), 0.99))
            up, down = u.clamp(-hi, hi), vh.clamp(-hi, hi)
            if mat.ndim == 4:  # LoCon: up (out, r, 1, 1), down (r, in, kh, kw)
                up, down = up[:, :, None, None], down.reshape(r, *shape[1:])
            name = key.removesuffix(".weight")
            lora[f"{name}.lora_up.weight"], lora[f"{name}.lora_down.weight"] = up, down
            lora[f"{name}.alpha"] = torch.tensor(float(r))
    t2 = time.perf_counter()
    meta = {"ss_network_dim": str(rank), "ss_network_alpha": str(rank)}
    save_file({k: v.contiguous() for k, v in lora.items()}, out, metadata=meta)  # float32: its default
    t3 = time.perf_counter()
    print(json.dumps({"load_s": t_load, "svd_s": t2 - t1, "save_s": t3 - t2, "modules": kinds}))


# --- runs --------------------------------------------------------------------------------------------------


@dataclass
class Timing:
    """Cold and warm runs of one command, each with the time to read its inputs once just before it, in
    the same cache state (the machine is shared: a read timed apart would see another load)."""

    name: str
    cold: list[Run] = field(default_factory=list)
    warm: list[Run] = field(default_factory=list)
    reads: dict[str, list[float]] = field(default_factory=lambda: {"cold": [], "warm": []})
    note: str = ""

    def best(self, which: str) -> float | None:
        runs = getattr(self, which)
        return min(r.seconds for r in runs) if runs else None

    def read(self, which: str) -> float | None:
        return min(self.reads[which]) if self.reads[which] else None

    def ratio(self, which: str) -> float | None:
        """Fastest run over the fastest read of the inputs, in one cache state."""
        a, b = self.best(which), self.read(which)
        return None if a is None or b is None else a / b

    def median(self, which: str) -> float | None:
        runs = getattr(self, which)
        return statistics.median(r.seconds for r in runs) if runs else None

    def peak(self) -> int:
        return max((r.peak_anon for r in self.cold + self.warm), default=0)

    def peak_rss(self) -> int:
        return max((r.peak_rss for r in self.cold + self.warm), default=0)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sdlens.cli", *args]


def has_command(name: str) -> bool:
    return subprocess.run(_cli(name, "--help"), capture_output=True).returncode == 0


def timed(
    name: str,
    cmd: list[str],
    inputs: Sequence[Path],
    runs: int,
    warm_runs: int | None = None,
    before: Callable[[], None] | None = None,
) -> Timing:
    """``runs`` cold runs (inputs evicted first), then ``warm_runs`` (default ``runs``) warm ones; before
    each, the read of the inputs (``cat`` to /dev/null) is timed in the same state."""
    t = Timing(name)
    read = ["sh", "-c", 'cat "$@" > /dev/null', "cat", *map(str, inputs)]
    try:
        for which, n in (("cold", runs), ("warm", runs if warm_runs is None else warm_runs)):
            for _ in range(n):
                if before:
                    before()
                if which == "cold":
                    evict(list(inputs))
                t.reads[which].append(measure(read).seconds)
                if which == "cold":
                    evict(list(inputs))
                getattr(t, which).append(measure(cmd))
    except SystemExit as e:  # measure: the command failed (its stderr already printed)
        t.note = f"FAILED: {e}"
    return t


def _load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def _size(n: int) -> str:
    return gb(n) if n >= 1e8 else mb(n)


def _fmt(x: float | None, width: int = 7) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:{width}.2f}"


def _ratio(r: float | None) -> str:
    return f"{'-':>7}" if r is None else f"{r:6.1f}x"


def report(rows: list[Timing]) -> None:
    """Seconds (min, median), the inputs' read time (min) and the ratio, cold then warm; memory."""
    cols = f"{'min':>7} {'median':>7} {'read':>6} {'ratio':>7}"
    print(f"  {'':38}  cold: {cols}  warm: {cols}  {'private':>8} {'peak RSS':>8}")
    for t in rows:
        if t.note and not (t.cold or t.warm):
            print(f"  {t.name:38} {t.note}")
            continue
        cells = [
            f"{_fmt(t.best(w))} {_fmt(t.median(w))} {_fmt(t.read(w), 6)} {_ratio(t.ratio(w))}"
            for w in ("cold", "warm")
        ]
        print(
            f"  {t.name:38}        {cells[0]}        {cells[1]}  {mb(t.peak()):>8} {mb(t.peak_rss()):>8}"
            + (f"  {t.note}" if t.note else "")
        )


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def check_ratio(t: Timing, target: float) -> str:
    parts = []
    for which in ("cold", "warm"):
        r = t.ratio(which)
        if r is not None:
            parts.append(f"{which} {r:.2f}x {verdict(r <= target)}")
    return f"  {t.name:44} <= {target:g}x the read time: " + ("; ".join(parts) or "not measured")


def check_memory(t: Timing, limit: float = 1.5e9) -> str:
    if not (t.cold or t.warm):
        return f"  {t.name:44} memory: not measured"
    return f"  {t.name:44} private memory {mb(t.peak())} <= {mb(int(limit))}: {verdict(t.peak() <= limit)}"


def _summary(doc: object) -> str:
    """A line of what ``delta`` concluded, whatever the exact shape of its JSON."""
    if not isinstance(doc, dict):
        return ""
    for key in ("verdict", "overall", "summary", "conclusion"):
        v = doc.get(key)
        if isinstance(v, str):
            return v
        if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
            return "\n      ".join(v)
        if isinstance(v, dict):
            for k2 in ("verdict", "text", "words"):
                if isinstance(v.get(k2), str):
                    return v[k2]
    return "(no top-level verdict; keys: " + ", ".join(sorted(doc)[:12]) + ")"


def _fidelity(doc: object) -> str:
    """What ``extract-lora`` says of the LoRA it wrote, overall."""
    overall = doc.get("overall") if isinstance(doc, dict) else None
    if not isinstance(overall, dict):
        return "(no overall figures in its JSON)"
    parts = [f"{k} {overall[k]:.4g}" for k in ("kept", "rel_error", "delta_in_targets") if k in overall]
    return ", ".join(parts + [f"{k} {overall[k]}" for k in ("modules", "ranks") if k in overall])


def lora_kinds(path: Path) -> dict[str, int]:
    """Module count per kind (linear / conv1x1 / conv3x3) of a LoRA file, from its down weights."""
    _, meta = read_header(path)
    kinds: dict[str, int] = {}
    for key, info in meta.items():
        if key.endswith("lora_down.weight"):
            s = info["shape"]
            kind = "linear" if len(s) == 2 else f"conv{s[2]}x{s[3]}"
            kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def bench_delta(work: Path, m: dict[str, Path], runs: int) -> list[str]:
    rows: list[Timing] = []
    checks: list[str] = []
    if not has_command("delta"):
        print("  sdlens delta: command not available in this tree (skipped)")
        return checks
    for name in ("lora", "finetune"):
        out = work / f"out_delta_{name}.json"
        cmd = _cli("delta", str(m[name]), "--base", str(m["base"]), "--json", str(out))
        t = timed(
            f"sdlens delta ({name})",
            cmd,
            [m["base"], m[name]],
            runs,
            before=lambda o=out: o.unlink(missing_ok=True),
        )
        rows.append(t)
        checks += [check_ratio(t, 3), check_memory(t)]
        if out.exists():
            checks.append(f"  delta says ({name}): {_summary(json.loads(out.read_text()))}")
    report(rows)
    return checks


def bench_extract(
    work: Path,
    m: dict[str, Path],
    runs: int,
    rank: int,
    kohya_runs: tuple[int, int],
) -> list[str]:
    rows: list[Timing] = []
    checks: list[str] = []
    conv = False
    sdlens_t: Timing | None = None
    if has_command("extract-lora"):
        for name in ("lora", "finetune"):
            out = work / f"out_extract_{name}.safetensors"
            report_json = work / f"out_extract_{name}.json"
            cmd = _cli("extract-lora", str(m[name]), "--base", str(m["base"]), "--rank", str(rank))
            cmd += ["-o", str(out), "--json", str(report_json)]
            t = timed(
                f"sdlens extract-lora --rank {rank} ({name})", cmd, [m["base"], m[name]], runs,
                before=lambda o=out: o.unlink(missing_ok=True),
            )  # fmt: skip
            rows.append(t)
            checks += [check_ratio(t, 10), check_memory(t)]
            if out.exists():
                kinds = lora_kinds(out)
                checks.append(f"  extract-lora ({name}) wrote {kinds} modules, {mb(out.stat().st_size)}")
                conv = conv or any(k.startswith("conv3") for k in kinds)
            if report_json.exists():
                checks.append(
                    f"  extract-lora ({name}) fidelity: {_fidelity(json.loads(report_json.read_text()))}"
                )
            if name == "lora":
                sdlens_t = t
    else:
        print("  sdlens extract-lora: command not available in this tree (skipped)")
    out = work / "out_kohya_lora.safetensors"
    cmd = [sys.executable, __file__, "--kohya-worker", str(m["base"]), str(m["lora"]), str(out)]
    cmd += ["--rank", str(rank)] + (["--kohya-conv"] if conv else [])
    k = timed(
        f"kohya method --dim {rank}{' +conv' if conv else ''} (lora)",
        cmd,
        [m["base"], m["lora"]],
        *kohya_runs,
    )
    rows.append(k)
    report(rows)
    runs_k = k.cold + k.warm
    if runs_k:
        parts = json.loads(runs_k[-1].stdout.strip().splitlines()[-1])
        print(
            f"  kohya method, last run: load {parts['load_s']:.1f} s, SVDs {parts['svd_s']:.1f} s, "
            f"save {parts['save_s']:.1f} s; modules {parts['modules']}"
        )
    checks.append(check_memory(k))
    if sdlens_t is not None and runs_k:
        for which in ("cold", "warm"):
            a, b = sdlens_t.best(which), k.best(which)
            if a is not None and b is not None:
                checks.append(f"  sdlens extract-lora / kohya method ({which}, lora): {a / b:.2f}x")
    return checks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/tmp/bench-delta", help="work folder (default /tmp/bench-delta)")
    ap.add_argument("--keep", action="store_true", help="keep the generated models (and reuse them)")
    ap.add_argument("--small", action="store_true", help="tiny models: check the harness in seconds")
    ap.add_argument("--only", choices=("delta", "extract"), default=None)
    ap.add_argument("--runs", type=int, default=3, help="cold and warm runs per command (default 3)")
    ap.add_argument("--kohya-runs", type=int, default=1, help="cold runs of the kohya method (default 1)")
    ap.add_argument("--kohya-warm", type=int, default=0, help="warm runs of the kohya method (default 0)")
    ap.add_argument("--rank", type=int, default=None, help="extraction rank (default 32; --small: 4)")
    ap.add_argument("--kohya-worker", nargs=3, metavar=("BASE", "MODEL", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--kohya-conv", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    rank = args.rank or (4 if args.small else 32)
    if args.kohya_worker:
        kohya_worker(*args.kohya_worker, rank=rank, conv=args.kohya_conv)
        return
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free
    need = 0 if args.small else 3 * 2.2e9
    print(f"{cpu_line()}; {_load()} (a shared machine slows every figure)")
    print(f"work folder {work}: {gb(free)} free, about {gb(int(need))} needed")
    if free < need + 5e9 and not (work / STAMP).exists():
        raise SystemExit("not enough free disk space (keep 5 GB spare)")
    lora_rank = 2 if args.small else 16
    try:
        import time

        t0 = time.perf_counter()
        m = build_models(work, args.small, lora_rank)
        counts = json.loads((work / STAMP).read_text())["counts"]
        print(
            f"models: {', '.join(m)}; {_size(m['base'].stat().st_size)} each "
            f"({'tiny zoo' if args.small else 'full-size SD1 fp16'}; LoRA rank {lora_rank} baked into "
            f"{counts['lora modules']} attention modules, dense fine-tune of {counts['fine-tuned tensors']} "
            f"tensors); ready in {time.perf_counter() - t0:.0f} s"
        )
        print(
            f"runs: {args.runs} cold (page cache evicted) + {args.runs} warm per command, each after a timed read"
            " of its two inputs (cat) in the same cache state; ratio = fastest run / fastest read; seconds"
        )
        checks: list[str] = []
        if args.only != "extract":
            checks += bench_delta(work, m, args.runs)
        if args.only != "delta":
            checks += bench_extract(work, m, args.runs, rank, (args.kohya_runs, args.kohya_warm))
        print("targets:")
        for line in checks:
            print(line)
        print(f"total {time.perf_counter() - t0:.0f} s (models, reads and runs); {_load()}")
    finally:
        if not args.keep:
            for q in work.glob("*"):
                if q.name.startswith(GENERATED) or q.name.endswith(".tmp") or q.name == "template.st":
                    q.unlink()
            if not any(work.iterdir()):
                work.rmdir()
        else:
            used = sum(q.stat().st_blocks * 512 for q in work.rglob("*") if q.is_file())
            print(f"kept {work} ({gb(used)} on disk)")


if __name__ == "__main__":
    main()
