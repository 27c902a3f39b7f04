"""``extract-lora``: a LoRA from a model and its base (Δ = M − B), one module at a time, with its fidelity.

Per LoRA target (:mod:`sdlens.analysis.lora_names`) the float32 delta, as the 2-D matrix LoRAs see (conv
kernels [out, in·kh·kw]), is factorised by a truncated SVD (:func:`sdlens.analysis.spectrum.factorize`) at
``rank`` (``conv_rank`` for kernels larger than 1×1, which are extracted only when it is given: LoCon), or
at the fewest singular values keeping the share ``energy`` of ‖Δ‖²_F (capped at ``rank`` / ``conv_rank``
where given). Modules whose delta is rounding alone (every element within one step of the coarser stored
dtype, as ``sdlens delta`` judges it) are left out and listed, as are the changed tensors no LoRA can hold
(norms, biases, embeddings, the VAE...).

The loaders scale ``up @ down`` by alpha / rank; that scale is folded into ``up`` so the loaded LoRA adds
the factorised delta exactly, whatever the alpha. One alpha serves every module (``--rank`` by default: scale
1 at that rank, as sd-scripts' extractor; 1.0 with ``--energy`` alone, sd-scripts' training default):
diffusers 0.42's kohya loader drops per-module alphas of attention and flattened text-encoder modules (its
``alpha_pattern`` keys match no module), so a file whose alphas differ would load at the wrong scale there.
Factors are written in float32 by default (sd-scripts' extractor saves in float unless ``--save_precision``
says otherwise).

Memory: one tensor pair at a time (pairs with the same bytes are not even converted; deltas are measured in
blocks); the factors go to an anonymous spool file beside the output, the header is written once every rank
is known, then the spool is copied behind it into a temporary file renamed onto the output.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sdlens.choices import check_choice
from sdlens.errors import SdlensError
from sdlens.io.base import Checkpoint
from sdlens.io.dtypes import DTYPES

if TYPE_CHECKING:
    import torch

    from sdlens.analysis.delta_pairs import Pair
    from sdlens.analysis.lora_names import LoraNames

LoraFormat = Literal["kohya", "peft"]
LoraDtype = Literal["fp32", "fp16", "bf16"]
_ST_DTYPE = {"fp32": "F32", "fp16": "F16", "bf16": "BF16"}
SPOOL_CHUNK = 16 << 20
BLOCK = 1 << 22  # values per block when measuring a delta (16 MB of float32)
# why a changed tensor is left out
ROUNDING = "rounding only (every value within one step of its stored precision)"
NOT_TARGET = "not extracted (not a LoRA target)"
NEEDS_CONV = "not extracted (ResNet / sampler module: give --conv-rank)"
NON_FINITE = "not extracted (NaN or Inf values in the model or the base)"


def _check_settings(
    rank: int | None, energy: float | None, conv_rank: int | None, alpha: float | None
) -> None:
    if rank is None and energy is None:
        raise SdlensError(None, "give --rank R or --energy SHARE")
    if rank is not None and rank < 1:
        raise SdlensError(None, f"--rank must be at least 1 (got {rank})")
    if conv_rank is not None and conv_rank < 1:
        raise SdlensError(None, f"--conv-rank must be at least 1 (got {conv_rank})")
    if energy is not None and not 0.0 < energy <= 1.0:
        raise SdlensError(None, f"--energy must be a share in (0, 1] (got {energy:g})")
    if alpha is not None and not (alpha > 0 and math.isfinite(alpha)):
        raise SdlensError(None, f"--alpha must be a positive number (got {alpha:g})")


def _open(p: Checkpoint | str | Path, stack: ExitStack) -> Checkpoint:
    if isinstance(p, Checkpoint):
        return p
    from sdlens.io.open import open_checkpoint

    return stack.enter_context(open_checkpoint(p))


class _Spool:
    """The output's tensors as they come (bytes in a temporary file), written behind the header at the end."""

    def __init__(self, folder: Path, stack: ExitStack):
        self.f = stack.enter_context(tempfile.TemporaryFile(dir=folder, prefix=".sdlens-lora-"))  # noqa: SIM115
        self.entries: list[tuple[str, str, tuple[int, ...]]] = []

    def add(self, key: str, t: Any, st_dtype: str) -> None:
        import torch

        self.entries.append((key, st_dtype, tuple(t.shape)))
        self.f.write(memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy()))

    def write(self, out: Path, metadata: dict[str, str]) -> None:
        from sdlens.io.atomic import atomic_path
        from sdlens.io.safetensors_writer import SafetensorsStreamWriter, build_header

        header, sizes = build_header(self.entries, metadata)
        self.f.seek(0)
        with atomic_path(out) as tmp:
            w = SafetensorsStreamWriter(tmp, header, sizes)
            try:
                for n in sizes:
                    while n:
                        chunk = self.f.read(min(n, SPOOL_CHUNK))
                        if not chunk:
                            raise SdlensError(out, "internal error: the spool file ended early")
                        w.write(chunk)
                        n -= len(chunk)
                    w.end_tensor()
                w.finish()
            finally:
                w.close()


@dataclass(frozen=True)
class Settings:
    """What to extract: ranks (``rank`` for linears and 1×1 convs, ``conv_rank`` for larger kernels, which are
    extracted only when it is given), or the ``energy`` share (the ranks then caps), the one ``alpha``,
    the layout and the written dtype."""

    rank: int | None
    energy: float | None
    conv_rank: int | None
    alpha: float
    fmt: str
    dtype: str

    def factorize_args(self, kernel: bool) -> dict[str, Any]:
        """sd-scripts' rule: 3×3 kernels take ``conv_rank``, linears and 1×1 convs ``rank``; with ``energy``
        those are caps."""
        r = self.conv_rank if kernel else self.rank
        return {"energy": self.energy, "max_rank": r} if self.energy is not None else {"rank": r}

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("rank", "energy", "conv_rank", "alpha")}


def _sumsq(t: Any) -> float:
    from sdlens.analysis.spectrum import sumsq

    return sumsq(t.contiguous())


def _measure(m: torch.Tensor, b: torch.Tensor, dtype_m: str, dtype_b: str) -> tuple[float, float, bool]:
    """(‖Δ‖²_F, ‖B‖²_F, Δ is rounding alone — as ``delta`` judges it), in blocks of :data:`BLOCK` values so
    that a large tensor no LoRA holds (a token embedding) needs no full-size temporaries."""
    from sdlens.analysis.spectrum import rounding_only

    fm, fb = m.reshape(-1), b.reshape(-1)
    e = base_sq = 0.0
    rounding = True
    for i in range(0, fm.numel(), BLOCK):
        xm, xb = fm[i : i + BLOCK], fb[i : i + BLOCK]
        d = xm - xb
        e += _sumsq(d)
        base_sq += _sumsq(xb)
        rounding = rounding and rounding_only(d, xm, dtype_m, xb, dtype_b)
    return e, base_sq, rounding and e > 0.0


class _Extraction:
    """The pass: each pair's delta measured, factorised or left out (with the reason), the factors spooled."""

    def __init__(self, names: LoraNames, settings: Settings, spool: _Spool):
        self.names, self.s, self.spool = names, settings, spool
        self.modules: list[dict[str, Any]] = []
        self.left_out: list[dict[str, Any]] = []
        self.unchanged: list[str] = []  # LoRA targets equal in both files
        self.counts: Counter[str] = Counter()
        self.total_energy = 0.0  # ‖Δ‖²_F of every tensor changed beyond rounding

    def _leave(self, name: str, reason: str, e: float, rel: float | None) -> None:
        self.left_out.append({"name": name, "reason": reason, "energy": e, "rel_delta": rel})

    def add(self, model: Checkpoint, base: Checkpoint, pair: Pair) -> None:
        """Measure one pair (read once); factorise it if it is a LoRA target changed beyond rounding."""
        from sdlens.analysis.delta_pairs import read_pair, same_bytes
        from sdlens.analysis.lora_names import CONV, target_kind
        from sdlens.analysis.spectrum import noise_energy

        kind = target_kind(pair.name, pair.shape, self.names.family)
        e = 0.0
        if not same_bytes(model, base, pair):
            m, b = read_pair(model, base, pair)
            e, base_sq, rounding = _measure(m, b, pair.dtype_model, pair.dtype_base)
        if e == 0.0:
            self.counts["unchanged"] += 1
            if kind is not None:
                self.unchanged.append(pair.name)
            return
        if not (math.isfinite(e) and math.isfinite(base_sq)):  # never factorised, never called rounding
            self.counts["non-finite"] += 1
            self._leave(pair.name, NON_FINITE, 0.0, None)
            return
        rel = math.sqrt(e / base_sq) if base_sq > 0 else None
        if rounding:
            self.counts["rounding"] += 1
            if kind is not None:
                self._leave(pair.name, ROUNDING, e, rel)
            return
        self.total_energy += e
        if kind is None:
            self._leave(pair.name, NOT_TARGET, e, rel)
        elif kind == CONV and self.s.conv_rank is None:
            self._leave(pair.name, NEEDS_CONV, e, rel)
        else:
            noise = noise_energy(m, pair.dtype_model, b, pair.dtype_base)
            self._factorize(pair, m - b, e, rel, kind == CONV, math.sqrt(noise / e))

    def _factorize(
        self, pair: Pair, d: torch.Tensor, e: float, rel: float | None, conv: bool, floor: float
    ) -> None:
        import torch

        from sdlens.analysis.spectrum import as_matrix, factorize

        mat = as_matrix(d)
        kernel = len(pair.shape) == 4 and math.prod(pair.shape[2:]) > 1
        f = factorize(mat, **self.s.factorize_args(kernel))
        r, a = f.rank, self.s.alpha
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.s.dtype]
        up = (f.up * (r / a)).to(dtype)  # the loaders' alpha / rank, folded in
        down = f.down.to(dtype)
        # the error of what is written (after the cast), as the loaders will apply it
        resid = _sumsq(mat - (up.float() * (a / r)) @ down.float())
        lora = self.names.kohya(pair.name) if self.s.fmt == "kohya" else self.names.peft(pair.name)
        mod = {
            "name": pair.name,
            "lora": lora,
            "shape": list(pair.shape),
            "rank": r,
            "alpha": a,
            "kept": f.kept,
            "rel_error": math.sqrt(resid / e),
            # ‖rounding‖ / ‖Δ‖ the files' precision implies (both files' rounding: an upper bound); no
            # factorisation of the stored delta can be more faithful than this to the change itself
            "rounding_floor": floor,
            "energy": e,
            "rel_delta": rel,
            "conv": conv,
        }
        self.modules.append(mod)
        self._write(mod, up, down, pair.shape)

    def _write(
        self, mod: dict[str, Any], up: torch.Tensor, down: torch.Tensor, shape: tuple[int, ...]
    ) -> None:
        """down [r, in(, kh, kw)], up [out, r(, 1, 1)] (conv as LoCon); kohya adds the module's ``alpha``."""
        import torch

        r, st = mod["rank"], _ST_DTYPE[self.s.dtype]
        if len(shape) == 4:
            down = down.reshape(r, *shape[1:])
            up = up.reshape(shape[0], r, 1, 1)
        name = mod["lora"]
        if self.s.fmt == "kohya":
            self.spool.add(f"{name}.lora_down.weight", down, st)
            self.spool.add(f"{name}.lora_up.weight", up, st)
            self.spool.add(f"{name}.alpha", torch.tensor(mod["alpha"], dtype=torch.float32), "F32")
        else:
            self.spool.add(f"{name}.lora_A.weight", down, st)
            self.spool.add(f"{name}.lora_B.weight", up, st)

    def overall(self) -> dict[str, Any]:
        """Totals, energy-weighted: share of ‖Δ‖²_F kept, relative error ‖Δ − ΔLoRA‖_F / ‖Δ‖_F over the
        extracted modules, and the share of the model's whole change (beyond rounding) they hold."""
        mods = self.modules
        extracted = sum(x["energy"] for x in mods)
        kept = sum(x["kept"] * x["energy"] for x in mods)
        resid = sum(x["rel_error"] ** 2 * x["energy"] for x in mods)
        ranks = Counter(x["rank"] for x in mods)
        return {
            "modules": len(mods),
            "conv_modules": sum(1 for x in mods if x["conv"]),
            "ranks": {str(k): v for k, v in sorted(ranks.items())},
            "alpha": self.s.alpha,
            "kept": kept / extracted if extracted else 1.0,
            "rel_error": math.sqrt(resid / extracted) if extracted else 0.0,
            "delta_in_targets": extracted / self.total_energy if self.total_energy else 1.0,
            "params": sum(x["rank"] * (x["shape"][0] + math.prod(x["shape"][1:])) for x in mods),
        }


def extract_lora(
    model: Checkpoint | str | Path,
    base: Checkpoint | str | Path,
    *,
    rank: int | None = None,
    energy: float | None = None,
    conv_rank: int | None = None,
    alpha: float | None = None,
    fmt: str = "kohya",
    dtype: str = "fp32",
    out: str | Path,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Extract a LoRA of ``model`` over ``base`` into ``out`` (.safetensors); the report as plain data.

    ``rank`` / ``energy``: one of them (both: the energy's rank capped at ``rank``); ``conv_rank``: also
    the ResNet / sampler modules (LoCon), 3×3 kernels at this rank; ``alpha``: the alpha of every module
    (default ``rank``, else 1; the scale is folded into ``up``); ``fmt``: ``kohya`` or ``peft``;
    ``dtype``: of the written factors. ``progress`` is called with the bytes of each tensor pair read."""
    from sdlens.analysis.delta_pairs import aligned, paths_differ
    from sdlens.analysis.lora_names import lora_names
    from sdlens.analysis.spectrum import free_threads
    from sdlens.io.outputs import OutFile, check_outputs

    check_choice(fmt, "format", LoraFormat)
    check_choice(dtype, "dtype", LoraDtype)
    _check_settings(rank, energy, conv_rank, alpha)
    one_alpha = float(alpha) if alpha is not None else float(rank) if rank is not None else 1.0
    settings = Settings(rank, energy, conv_rank, one_alpha, fmt, dtype)
    out = Path(out)
    with ExitStack() as stack:
        m_ck, b_ck = _open(model, stack), _open(base, stack)
        paths_differ(m_ck.path, b_ck.path)
        check_outputs([m_ck.path, b_ck.path], [OutFile("-o", out)])
        al = aligned(m_ck, b_ck)
        _same_family(m_ck, b_ck, al.family)
        names = lora_names(m_ck, al.family)
        if fmt == "kohya" and not names.has_kohya:
            raise SdlensError(
                m_ck.path, f"{names.family.name} has no kohya LoRA layout here; use --format peft"
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        # the free cores only, as ``delta``: OpenMP threads on shared cores make small factorisations 5-30x slower
        stack.enter_context(free_threads())
        run = _Extraction(names, settings, _Spool(out.parent, stack))
        for pair in al.pairs:
            run.add(m_ck, b_ck, pair)
            if progress:
                progress(pair.numel * (DTYPES[pair.dtype_model].itemsize + DTYPES[pair.dtype_base].itemsize))
        if not run.modules:
            why = "no LoRA target differs from the base beyond rounding"
            if not al.pairs or al.mismatched:
                why = (
                    f"it shares {len(al.pairs)} tensors with the base and {len(al.mismatched)} differ in "
                    "shape: is BASE the model's base?"
                )
            raise SdlensError(m_ck.path, f"nothing to extract: {why}")
        report: dict[str, Any] = {
            "model": str(m_ck.path),
            "base": str(b_ck.path),
            "family": al.family,
            "out": str(out),
            "format": fmt,
            "dtype": dtype,
            "settings": {**settings.to_dict(), "alpha": alpha},
            "overall": run.overall(),
            "modules": run.modules,
            "left_out": run.left_out,
            "unchanged_targets": run.unchanged,
            "unchanged": run.counts["unchanged"],
            "rounding_only": run.counts["rounding"],
            "only_model": len(al.only_model),
            "only_base": len(al.only_base),
            "mismatched": al.mismatched,
        }
        run.spool.write(out, _metadata(report, b_ck, names, run.modules, fmt))
        report["bytes"] = out.stat().st_size
    return report


def _same_family(model: Checkpoint, base: Checkpoint, family: str) -> None:
    """Refuse a base of another architecture (a record and the one it refines count as one)."""
    from sdlens.arch import families
    from sdlens.arch.identify import identify

    other = identify(base.tensors, base.configs).denoiser_family
    if "unknown" in (family, other) or family == other:
        return
    fm, fb = families.get(family), families.get(other)
    if (fm and fm.base == other) or (fb and fb.base == family):
        return
    label = {f: (r.name if r else f) for f, r in ((family, fm), (other, fb))}
    raise SdlensError(
        base.path,
        f"the base is {label[other]}, the model {label[family]}: extract against the model's own base",
    )


def _metadata(
    report: dict[str, Any], base: Checkpoint, names: Any, modules: list[dict[str, Any]], fmt: str
) -> dict[str, str]:
    """sd-scripts' ``ss_*`` keys (what A1111 / ComfyUI / Civitai read), the base's hashes, sdlens's own
    (``sdlens_*``: version, per-module ranks, fidelity); PEFT files add diffusers' ``lora_adapter_metadata``."""
    from sdlens import __version__

    s = report["settings"]
    ranks = Counter(x["rank"] for x in modules)
    alphas = Counter(x["alpha"] for x in modules)
    dim = ranks.most_common(1)[0][0]
    meta: dict[str, str] = {
        "ss_network_module": "networks.lora",
        # resize_lora's word for per-module ranks: "Dynamic"
        "ss_network_dim": "Dynamic" if len(ranks) > 1 or s["energy"] is not None else str(dim),
        "ss_network_alpha": "Dynamic" if len(alphas) > 1 else f"{alphas.most_common(1)[0][0]:g}",
        "ss_base_model_version": names.family.lora_hints[0] if names.family.lora_hints else names.family.id,
        "ss_sd_model_name": base.path.name,
        "sdlens_version": __version__,
        "sdlens_source": "extract-lora",
        "sdlens_model": Path(report["model"]).name,
        "sdlens_settings": json.dumps(s, sort_keys=True),
        "sdlens_fidelity": json.dumps(
            {k: report["overall"][k] for k in ("kept", "rel_error", "delta_in_targets")}, sort_keys=True
        ),
    }
    if s["conv_rank"] is not None:
        conv_alpha = next((x["alpha"] for x in modules if x["conv"]), s["conv_rank"])
        meta["ss_network_args"] = json.dumps(
            {"conv_dim": str(s["conv_rank"]), "conv_alpha": f"{conv_alpha:g}"}
        )
    if s["energy"] is not None or len(ranks) > 1:
        meta["sdlens_ranks"] = json.dumps({x["lora"]: x["rank"] for x in modules})
    files = base.files
    if len(files) == 1 and files[0].is_file():
        from sdlens.io.hashing import hash_file

        h = hash_file(files[0])
        meta["ss_sd_model_hash"] = h.a1111_old
        meta["ss_new_sd_model_hash"] = h.sha256
        report["base_hashes"] = h.to_dict()
    if fmt == "peft":
        meta["lora_adapter_metadata"] = json.dumps(_peft_configs(modules), sort_keys=True)
    return meta


def _peft_configs(modules: list[dict[str, Any]]) -> dict[str, Any]:
    """diffusers' ``lora_adapter_metadata``: per pipeline slot (``unet.``, ``text_encoder.``...) the
    LoraConfig arguments: the most common rank / alpha, the others as rank / alpha patterns."""
    from sdlens.analysis.lora_names import peft_config_name

    by_slot: dict[str, list[tuple[str, int, float]]] = {}
    for x in modules:
        slot, _, module = x["lora"].partition(".")
        by_slot.setdefault(slot, []).append((peft_config_name(module), x["rank"], x["alpha"]))
    out: dict[str, Any] = {}
    for slot, mods in by_slot.items():
        r = Counter(m[1] for m in mods).most_common(1)[0][0]
        a = Counter(m[2] for m in mods).most_common(1)[0][0]
        out[f"{slot}.r"] = r
        out[f"{slot}.lora_alpha"] = a
        out[f"{slot}.target_modules"] = sorted(m[0] for m in mods)
        out[f"{slot}.rank_pattern"] = {m[0]: m[1] for m in mods if m[1] != r}
        out[f"{slot}.alpha_pattern"] = {m[0]: m[2] for m in mods if m[2] != a}
    return out
