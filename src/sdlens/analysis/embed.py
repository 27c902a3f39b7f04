"""How each model's text encoder places prompts: embeddings, distance matrices, drift against a reference.

Per model, each text encoder is built from the file alone (``sdlens.arch.text_encoders``), run on the prompts
and freed before the next one: one encoder in memory at a time. A prompt's embedding is one hidden layer
(``last``: the final layer after the final norm; ``penultimate``: the layer before, without the norm, as SDXL
and SD3 use; or hidden state ``N``, 0 being the token + position embeddings) pooled over its tokens:

* ``eos`` — the hidden state at the end-of-text token (CLIP's summary position);
* ``mean`` — the mean over the prompt's tokens (CLIP's start token left out);
* ``flatten`` — the whole padded sequence (77 × width), flattened, as the original notebook did.

CLIP attention is causal and the pipelines pass no attention mask, so positions up to the end token do not
depend on the padding: ``eos`` / ``mean`` run only as many positions as the longest prompt of a batch (the
same numbers as padding to 77, at a fraction of the cost). ``flatten`` runs all 77, padded as the pipeline pads
(SD1's tokenizer pads with the end token, SD2's and SDXL's second with ``!``). T5 runs with an attention mask.

Matrices (float64): cosine similarity, Euclidean and Manhattan distance between the (by default
L2-normalised) embeddings. Drift: per prompt, the cosine between a model's embedding and the reference's
(``drift = 1 - cosine``), for encoders of the same kind and width.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sdlens.arch.text_encoders import ENCODER_KINDS, EncoderSpec
from sdlens.errors import CheckpointError, SdlensError
from sdlens.io.prompts import Prompt

POOLS = ("eos", "mean", "flatten")
METRICS = ("cosine", "euclidean", "manhattan")


# --------------------------------------------------------------------------- results


@dataclass
class EncoderEmbedding:
    """One encoder of one model: the prompts' embeddings and their matrices."""

    model: str
    path: str
    encoder: str  # clip_l | clip_g | openclip_h | t5 | clip (+ "@…" for a second encoder of one kind)
    label: str  # CLIP-L, CLIP-G, …
    layer: str  # how the layer was chosen, e.g. "penultimate (hidden state 31 of 32)"
    pool: str
    normalized: bool
    dim: int
    tokens: list[int]  # tokens per prompt (with start / end tokens)
    truncated: list[str]  # labels of prompts cut at the encoder's length
    vectors: np.ndarray = field(repr=False)  # (prompts, dim) float32
    matrices: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "path": self.path,
            "encoder": self.encoder,
            "label": self.label,
            "layer": self.layer,
            "pool": self.pool,
            "normalized": self.normalized,
            "dim": self.dim,
            "tokens": list(self.tokens),
            "truncated": list(self.truncated),
            "notes": list(self.notes),
            "matrices": {k: np.round(v, 6).tolist() for k, v in self.matrices.items()},
        }


@dataclass
class DriftRow:
    label: str
    text: str
    cosine: float

    @property
    def drift(self) -> float:
        return 1.0 - self.cosine

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "text": self.text, "cosine": self.cosine, "drift": self.drift}


@dataclass
class Drift:
    """How far each prompt moved in ``model`` relative to ``ref``, for one encoder; rows sorted by drift."""

    model: str
    ref: str
    encoder: str
    rows: list[DriftRow]

    @property
    def mean_cosine(self) -> float:
        return float(np.mean([r.cosine for r in self.rows])) if self.rows else float("nan")

    @property
    def max_drift(self) -> float:
        return max((r.drift for r in self.rows), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "ref": self.ref,
            "encoder": self.encoder,
            "mean_cosine": self.mean_cosine,
            "max_drift": self.max_drift,
            "rows": [r.to_dict() for r in self.rows],
        }


@dataclass
class ModelInfo:
    name: str
    path: str
    family: str
    encoders: list[dict[str, Any]]  # what was found (EncoderSpec.to_dict)
    skipped: list[str] = field(default_factory=list)  # encoders present but not embedded, with the reason

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "family": self.family,
            "encoders": self.encoders,
            "skipped": list(self.skipped),
        }


@dataclass
class EmbedResult:
    prompts: list[Prompt]
    models: list[ModelInfo]
    embeddings: list[EncoderEmbedding]
    drift: list[Drift]
    ref: str | None
    tokenizers: dict[str, str] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)  # inputs that could not be read: path, error

    @property
    def labels(self) -> list[str]:
        return [p.label for p in self.prompts]

    def encoders(self) -> list[str]:
        """Encoder ids in first-seen order."""
        out: list[str] = []
        for e in self.embeddings:
            if e.encoder not in out:
                out.append(e.encoder)
        return out

    def by_encoder(self, encoder: str) -> list[EncoderEmbedding]:
        return [e for e in self.embeddings if e.encoder == encoder]

    def get(self, model: str, encoder: str) -> EncoderEmbedding | None:
        return next((e for e in self.embeddings if e.model == model and e.encoder == encoder), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompts": [p.to_dict() for p in self.prompts],
            "models": [m.to_dict() for m in self.models],
            "ref": self.ref,
            "tokenizers": dict(self.tokenizers),
            "embeddings": [e.to_dict() for e in self.embeddings],
            "drift": [d.to_dict() for d in self.drift],
            "skipped": list(self.skipped),
        }


# --------------------------------------------------------------------------- matrices


def distance_matrices(vectors: np.ndarray) -> dict[str, np.ndarray]:
    """Cosine similarity (in [-1, 1], diagonal 1), Euclidean and Manhattan distance (diagonal 0); symmetric."""
    from scipy.spatial.distance import cdist

    x = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit = x / np.where(norms == 0, 1.0, norms)
    cos = unit @ unit.T
    cos = np.clip((cos + cos.T) / 2, -1.0, 1.0)
    np.fill_diagonal(cos, np.where(norms[:, 0] == 0, 0.0, 1.0))
    out = {"cosine": cos}
    for name, metric in (("euclidean", "euclidean"), ("manhattan", "cityblock")):
        d = cdist(x, x, metric=metric)
        d = (d + d.T) / 2
        np.fill_diagonal(d, 0.0)
        out[name] = d
    return out


def matrix_csv(labels: Sequence[str], matrix: np.ndarray, digits: int = 6) -> str:
    """A labelled square matrix as CSV (header row and first column are the labels)."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["", *labels])
    for label, row in zip(labels, matrix, strict=True):
        w.writerow([label, *(f"{v:.{digits}f}" for v in row)])
    return buf.getvalue()


def drift_csv(d: Drift) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["label", "text", "cosine", "drift"])
    for r in d.rows:
        w.writerow([r.label, r.text, f"{r.cosine:.6f}", f"{r.drift:.6f}"])
    return buf.getvalue()


def compute_drift(model: EncoderEmbedding, ref: EncoderEmbedding, prompts: Sequence[Prompt]) -> Drift:
    a = model.vectors.astype(np.float64)
    b = ref.vectors.astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = np.einsum("ij,ij->i", a, b) / np.where(na * nb == 0, 1.0, na * nb)
    cos = np.clip(cos, -1.0, 1.0)
    cos[np.all(a == b, axis=1)] = 1.0  # identical vectors: exactly no drift
    rows = [DriftRow(p.label, p.text, float(c)) for p, c in zip(prompts, cos, strict=True)]
    rows.sort(key=lambda r: (-r.drift, r.label))
    return Drift(model.model, ref.model, model.encoder, rows)


# --------------------------------------------------------------------------- running encoders


def resolve_layer(layer: str | int, n: int) -> tuple[int, bool, str]:
    """(hidden-state index, apply final norm, description) of ``last`` / ``penultimate`` / ``N`` (negative
    counts from the end: -1 is the last layer's output before the final norm)."""
    if layer == "last":
        return n, True, f"last ({n}/{n} + final norm)"
    if layer == "penultimate":
        return n - 1, False, f"penultimate ({n - 1}/{n})"
    try:
        k = int(layer)
    except (TypeError, ValueError):
        raise SdlensError(None, f"--layer must be last, penultimate or a number, not {layer!r}") from None
    idx = k if k >= 0 else n + 1 + k
    if not 0 <= idx <= n:
        raise SdlensError(None, f"--layer {k}: the encoder has hidden states 0..{n} (or -1..-{n + 1})")
    return idx, False, f"hidden state {idx}/{n}"


def _layer_list(model: Any, arch: str):
    suffix = "encoder.block" if arch == "t5" else "encoder.layers"
    for name, _ in model.named_modules():
        if name.endswith(suffix):
            return model, name
    raise RuntimeError(f"no {suffix} in {type(model).__name__}")


def _truncate(model: Any, arch: str, keep: int) -> None:
    import torch

    _, name = _layer_list(model, arch)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    layers = getattr(parent, attr)
    if keep < len(layers):
        setattr(parent, attr, torch.nn.ModuleList(list(layers)[:keep]))


def _pad_id(tok: Any, spec: EncoderSpec) -> int:
    if spec.arch == "t5":
        return int(tok.pad_token_id or 0)
    if spec.kind in ("clip_g", "openclip_h"):
        bang = tok.convert_tokens_to_ids("!")
        if isinstance(bang, int) and bang != tok.unk_token_id:
            return bang
        return 0
    return int(tok.eos_token_id)


def tokenize(tok: Any, spec: EncoderSpec, texts: Sequence[str]) -> list[list[int]]:
    enc = tok(list(texts), add_special_tokens=True, truncation=True, max_length=spec.max_length)
    ids = [list(map(int, x)) for x in enc["input_ids"]]
    top = max(max(x) for x in ids)
    if top >= spec.vocab_size:
        raise SdlensError(
            None,
            f"the tokenizer gives token id {top} but {spec.label} has a vocabulary of "
            f"{spec.vocab_size}: pass the tokenizer made for this model (--tokenizer DIR)",
        )
    return ids


def encode(
    model: Any,
    spec: EncoderSpec,
    ids: list[list[int]],
    *,
    layer: str | int,
    pool: str,
    pad_id: int,
    batch_size: int = 16,
) -> tuple[np.ndarray, str]:
    """(prompts × dim float32 embeddings, layer description) of token id lists, with ``model`` from
    :func:`sdlens.arch.text_encoders.load_text_encoder` (its layer list may be shortened in place)."""
    import torch

    if pool not in POOLS:
        raise SdlensError(None, f"--pool must be one of {', '.join(POOLS)}, not {pool!r}")
    n = spec.num_layers
    idx, final_norm, desc = resolve_layer(layer, n)
    if spec.arch == "t5":
        final_norm = final_norm or idx == n  # T5's last hidden state is only exposed after its final norm
        if not final_norm:
            _truncate(model, "t5", idx + 1)
    elif not final_norm:
        _truncate(model, "clip", idx)
    start = 1 if spec.arch == "clip" else 0  # CLIP's start token is the same for every prompt
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[np.ndarray | None] = [None] * len(ids)
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            batch = order[b : b + batch_size]
            length = spec.max_length if pool == "flatten" else max(len(ids[i]) for i in batch)
            x = torch.full((len(batch), length), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), length), dtype=torch.long)
            for r, i in enumerate(batch):
                x[r, : len(ids[i])] = torch.tensor(ids[i])
                mask[r, : len(ids[i])] = 1
            kwargs: dict[str, Any] = {"input_ids": x, "output_hidden_states": not final_norm}
            if spec.arch == "t5":
                kwargs["attention_mask"] = mask
            res = model(**kwargs)
            h = res.last_hidden_state if final_norm else res.hidden_states[idx]
            h = h.float()
            for r, i in enumerate(batch):
                end = len(ids[i])
                if pool == "eos":
                    v = h[r, end - 1]
                elif pool == "mean":
                    v = h[r, min(start, end - 1) : end].mean(dim=0)
                else:
                    v = h[r].reshape(-1)
                out[i] = v.numpy().copy()
            del res, h
    return np.stack(out).astype(np.float32), desc  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the whole run


def model_names(paths: Sequence[Path]) -> list[str]:
    """Short unique names: the file stem (or folder name), with a parent folder or a number when they clash."""
    names: list[str] = []
    for p in paths:
        p = Path(p)
        name = p.name if p.is_dir() else p.stem
        if name in names:
            alt = f"{p.parent.name}-{name}" if p.parent.name else name
            name = alt
            k = 2
            while name in names:
                name = f"{alt}-{k}"
                k += 1
        names.append(name)
    return names


def _parse_encoders(encoder: str | Sequence[str]) -> set[str] | None:
    items = [encoder] if isinstance(encoder, str) else list(encoder)
    wanted = {e.strip() for item in items for e in item.split(",") if e.strip()}
    if not wanted or "all" in wanted:
        return None
    bad = wanted - set(ENCODER_KINDS)
    if bad:
        raise SdlensError(
            None, f"unknown --encoder {', '.join(sorted(bad))}: use {', '.join(ENCODER_KINDS)} or all"
        )
    return wanted


_Plan = tuple[Path, str, list[EncoderSpec], str, list[str]]  # path, name, chosen specs, family, skipped


def _check_options(pool: str, layer: str | int | None, batch_size: int) -> None:
    if pool not in POOLS:
        raise SdlensError(None, f"--pool must be one of {', '.join(POOLS)}, not {pool!r}")
    if layer is not None and layer not in ("last", "penultimate"):
        resolve_layer(layer, 10**6)  # validates the number
    if batch_size < 1:
        raise SdlensError(None, "--batch-size must be at least 1")


def _resolve_ref(ref: str | Path | None, paths: list[Path], names: list[str]) -> tuple[list[str], str]:
    """The reference model's name; a ``ref`` path outside ``paths`` is appended to them (names returned anew)."""
    if ref is None:
        return names, names[0]
    rp = Path(ref)
    if str(ref) in names:
        return names, str(ref)
    if any(rp.exists() and p.exists() and rp.resolve() == p.resolve() for p in paths):
        return names, names[
            next(i for i, p in enumerate(paths) if p.exists() and rp.resolve() == p.resolve())
        ]
    if rp.exists():
        paths.append(rp)
        names = model_names(paths)
        return names, names[-1]
    raise SdlensError(ref, "--ref is neither one of the models nor an existing file")


def _plan_model(
    path: Path, name: str, wanted: set[str] | None, must_read: bool, unreadable: list[dict[str, str]]
) -> _Plan | None:
    """The encoders of one model to run (headers only); None (listed in ``unreadable``) if it cannot be read."""
    from sdlens.arch.text_encoders import find_text_encoders
    from sdlens.io.open import open_checkpoint

    try:
        ck = open_checkpoint(path)
    except CheckpointError as e:  # left out, listed in the result; the reference must be readable
        if must_read:
            raise
        unreadable.append({"path": str(path), "error": e.problem})
        return None
    with ck:
        specs, family = find_text_encoders(ck)
    skipped: list[str] = []
    chosen = []
    for s in specs:
        if wanted is not None and s.kind not in wanted:
            skipped.append(f"{s.label}: not selected")
        else:
            chosen.append(s)
    if not specs:
        raise SdlensError(path, "no text encoder in this checkpoint (nothing to embed)")
    if wanted is not None and not chosen:
        have = ", ".join(s.kind for s in specs)
        raise SdlensError(path, f"no {'/'.join(sorted(wanted))} text encoder here (it has {have})")
    return path, name, chosen, family, skipped


def _find_plan_tokenizers(plans: list[_Plan], tokenizer_dirs: Sequence[str | Path], wanted: set[str] | None):
    """The tokenizers the plans need; T5 encoders are skipped (or, if asked for, an error) without one."""
    from sdlens.io.tokenizers import find_tokenizers

    need_t5 = any(s.arch == "t5" for _, _, specs, _, _ in plans for s in specs)
    need_clip = any(s.arch == "clip" for _, _, specs, _, _ in plans for s in specs)
    toks = find_tokenizers([Path(d) for d in tokenizer_dirs], need_clip=need_clip, need_t5=need_t5)
    if need_t5 and toks.t5 is None:
        if wanted is not None and "t5" in wanted:
            raise SdlensError(
                None,
                "no T5 tokenizer found offline: pass --tokenizer DIR (a T5 tokenizer folder "
                "with tokenizer.json, or a SD3/FLUX diffusers repo); sdlens never downloads",
            )
        for plan in plans:
            plan[4].extend(
                f"{s.label}: no T5 tokenizer (pass --tokenizer DIR)" for s in plan[2] if s.arch == "t5"
            )
            plan[2][:] = [s for s in plan[2] if s.arch != "t5"]
    return toks


def _embed_one(
    ck: Any,
    spec: EncoderSpec,
    tok: Any,
    name: str,
    path: Path,
    family: str,
    prompts: list[Prompt],
    *,
    layer: str | int | None,
    pool: str,
    normalize: bool,
    batch_size: int,
    log: Callable[[str], None] | None,
) -> EncoderEmbedding:
    """Build one encoder of ``ck``, embed the prompts, free it."""
    from sdlens.arch.text_encoders import load_text_encoder

    ids = tokenize(tok, spec, [p.text for p in prompts])
    chosen_layer = layer if layer is not None else spec.default_layer(family)
    if log:
        log(f"{name}: {spec.label} ({spec.cls_name}, {spec.num_layers} layers, layer {chosen_layer})")
    model = load_text_encoder(ck, spec)
    vecs, desc = encode(
        model, spec, ids, layer=chosen_layer, pool=pool, pad_id=_pad_id(tok, spec), batch_size=batch_size
    )
    del model
    gc.collect()
    if normalize:
        norms = np.linalg.norm(vecs.astype(np.float64), axis=1, keepdims=True)
        vecs = (vecs / np.where(norms == 0, 1.0, norms)).astype(np.float32)
    emb = EncoderEmbedding(
        model=name,
        path=str(path),
        encoder=spec.cid,
        label=spec.label,
        layer=desc,
        pool=pool,
        normalized=normalize,
        dim=int(vecs.shape[1]),
        tokens=[len(x) for x in ids],
        truncated=[
            p.label
            for p, x in zip(prompts, ids, strict=True)
            if len(x) >= spec.max_length
            and len(tok(p.text, add_special_tokens=True)["input_ids"]) > spec.max_length
        ],
        vectors=vecs,
        notes=list(spec.notes),
    )
    emb.matrices = distance_matrices(vecs)
    return emb


def _drift_all(
    embeddings: list[EncoderEmbedding], models: list[ModelInfo], ref_name: str, prompts: list[Prompt]
) -> list[Drift]:
    """Drift of every embedding against the reference model's of the same encoder; the incomparable skipped."""
    drift: list[Drift] = []
    for enc in dict.fromkeys(e.encoder for e in embeddings):
        base = next((e for e in embeddings if e.model == ref_name and e.encoder == enc), None)
        if base is None:
            continue
        for e in embeddings:
            if e.encoder != enc or e.model == ref_name:
                continue
            if e.dim != base.dim or e.layer != base.layer:
                info = next(m for m in models if m.name == e.model)
                info.skipped.append(
                    f"drift of {e.label} vs {ref_name}: not comparable ({e.layer}, {e.dim} dims vs "
                    f"{base.layer}, {base.dim} dims; pass the same --layer)"
                )
                continue
            drift.append(compute_drift(e, base, prompts))
    return drift


def embed(
    paths: Sequence[str | Path],
    prompts: Sequence[Prompt],
    *,
    encoder: str | Sequence[str] = "all",
    layer: str | int | None = None,
    pool: str = "eos",
    tokenizer_dirs: Sequence[str | Path] = (),
    ref: str | Path | None = None,
    normalize: bool = True,
    batch_size: int = 16,
    log: Callable[[str], None] | None = None,
) -> EmbedResult:
    """Embed ``prompts`` with the text encoder(s) of every model in ``paths``; matrices per model and encoder;
    drift of each model against ``ref`` (a model name or path among ``paths``, or another path; default: the
    first model). ``layer=None`` takes the layer each family's pipeline uses."""
    from sdlens.arch.text_encoders import find_text_encoders
    from sdlens.io.open import open_checkpoint

    _check_options(pool, layer, batch_size)
    wanted = _parse_encoders(encoder)
    prompts = list(prompts)
    paths = [Path(p) for p in paths]
    if not paths:
        raise SdlensError(None, "no models given")
    names, ref_name = _resolve_ref(ref, paths, model_names(paths))

    # what each model holds (headers only), so the tokenizers needed are known before any heavy work
    plans: list[_Plan] = []
    unreadable: list[dict[str, str]] = []
    for path, name in zip(paths, names, strict=True):
        plan = _plan_model(path, name, wanted, name == ref_name or len(paths) == 1, unreadable)
        if plan is not None:
            plans.append(plan)
    toks = _find_plan_tokenizers(plans, tokenizer_dirs, wanted)

    models: list[ModelInfo] = []
    embeddings: list[EncoderEmbedding] = []
    for path, name, specs, family, skipped in plans:
        models.append(ModelInfo(name, str(path), family, [s.to_dict() for s in specs], skipped))
        with open_checkpoint(path) as ck:
            specs_now, _ = find_text_encoders(ck)
            by_cid = {s.cid: s for s in specs_now}
            for planned in specs:
                spec = by_cid[planned.cid]
                embeddings.append(
                    _embed_one(
                        ck,
                        spec,
                        toks.for_arch(spec.arch),
                        name,
                        path,
                        family,
                        prompts,
                        layer=layer,
                        pool=pool,
                        normalize=normalize,
                        batch_size=batch_size,
                        log=log,
                    )
                )
            models[-1].encoders = [by_cid[s.cid].to_dict() for s in specs]

    drift = _drift_all(embeddings, models, ref_name, prompts)
    return EmbedResult(prompts, models, embeddings, drift, ref_name, dict(toks.sources), unreadable)
