"""Merge recipes that merge tools write into safetensors ``__metadata__``, read as *claims* to be checked.

Tools and the fields they write (the code that writes them):

- A1111's checkpoint merger (AUTOMATIC1111/stable-diffusion-webui ``modules/extras.py`` ``run_modelmerger``):
  ``sd_merge_recipe`` (JSON, ``"type": "webui"``, ``interp_method``, ``multiplier``, the parents' sha256) and
  ``sd_merge_models`` (JSON, sha256 -> ``{name, legacy_hash, sd_merge_recipe}``: the parents' own recipes
  nest there); weighted sum ``A*(1-M) + B*M``, add difference ``A + M*(B - C)``;
- supermerger (hako-mikan/sd-webui-supermerger ``scripts/mergers/mergers.py`` ``smerge``): the same two keys,
  ``"type": "sd-webui-supermerger"``, ``mode``, ``calcmode``, ``base_alpha`` / ``base_beta`` and with MBW
  ``weights_alpha`` (25 values IN00..OUT11 for SD1, 20 for SDXL; BASE is ``base_alpha``);
- sd-mecha (ljleb/sd-mecha ``sd_mecha/recipe_serializer.py``, written by ``OutSafetensorsDict`` as
  ``mecha_recipe``): ``version 0.1.0`` then ``model "…"``, ``dict …``, ``literal …``, ``merge "weighted_sum" &0
  &1 alpha=0.5`` lines (``call`` in older files);
- ComfyUI (comfyanonymous/ComfyUI ``comfy_extras/nodes_model_merging.py`` ``save_checkpoint``): ``prompt`` (the
  API-format graph) and ``workflow``; ModelMergeSimple keeps ``ratio`` of model1: ``model1*r + model2*(1-r)``.

Everything read here is hostile input: sizes, depths and counts are bounded, nothing recurses without a bound,
odd types are skipped, and :func:`read_claims` never raises. Text is kept as written; it goes through
``sdlens.render.safe_text`` when shown.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_TEXT = 4 << 20  # characters of one metadata value parsed (a JSON recipe, a graph, a recipe text)
MAX_NAME = 1024  # characters kept of a name
MAX_RAW = 300  # characters kept of a raw string field
MAX_CLAIMS = 64  # claims in all, nested ones included
MAX_DEPTH = 8  # nesting of recipes inside recipes
MAX_TERMS = 64  # models one claim combines

LINEAR_METHODS = ("weighted_sum", "add_difference", "average", "triple_sum", "sum_twice", "linear")
_HEX = re.compile(r"[0-9a-fA-F]+")
_HASH_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]{8,64}\]\s*$")
_MODEL_EXT = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".gguf")


# --------------------------------------------------------------------------- coefficients


@dataclass
class Coef:
    """A weight that may differ per merge block: ``blocks`` (exact names: ``BASE``, ``IN03``), else ``groups``
    (a name prefix followed by digits: ``IN`` covers ``IN00``..), else ``default``."""

    default: float
    blocks: dict[str, float] = field(default_factory=dict)
    groups: dict[str, float] = field(default_factory=dict)

    def at(self, block: str) -> float:
        if block in self.blocks:
            return self.blocks[block]
        for prefix, v in self.groups.items():
            if block.startswith(prefix) and block[len(prefix) :].isdigit():
                return v
        return self.default

    def _group(self, prefix: str) -> float:
        return self.groups.get(prefix, self.default)

    def combine(self, other: Coef, op) -> Coef:
        """``op`` block by block (rounded to 12 digits: ratios, not float noise; keys in block order)."""

        def f(a: float, b: float) -> float:
            return round(op(a, b), 12)

        blocks = sorted(self.blocks.keys() | other.blocks.keys(), key=block_order)
        groups = sorted(self.groups.keys() | other.groups.keys(), key=block_order)
        return Coef(
            f(self.default, other.default),
            {k: f(self.at(k), other.at(k)) for k in blocks},
            {g: f(self._group(g), other._group(g)) for g in groups},
        )

    def __add__(self, other: Coef) -> Coef:
        return self.combine(other, lambda a, b: a + b)

    def __mul__(self, other: Coef | float) -> Coef:
        other = other if isinstance(other, Coef) else Coef(float(other))
        return self.combine(other, lambda a, b: a * b)

    def uniform(self) -> bool:
        return all(v == self.default for v in (*self.blocks.values(), *self.groups.values()))

    def to_dict(self) -> dict[str, Any]:
        return {"default": self.default, "blocks": dict(self.blocks), "groups": dict(self.groups)}


Terms = dict[str, Coef]  # parent label -> its coefficient: M = sum of coef * parent


def lin(*pairs: tuple[Coef | float, Terms]) -> Terms:
    """The linear combination sum of ``k * terms``."""
    out: Terms = {}
    for k, terms in pairs:
        kc = k if isinstance(k, Coef) else Coef(float(k))
        for label, c in terms.items():
            prod = c * kc
            out[label] = out[label] + prod if label in out else prod
    if len(out) > MAX_TERMS:
        raise ClaimError(f"more than {MAX_TERMS} models combined")
    return out


class ClaimError(ValueError):
    """A recipe that cannot be read as a linear merge (the message says why)."""


# --------------------------------------------------------------------------- the claim


@dataclass
class Parent:
    label: str  # "A", "B", "C" (A1111 / supermerger / sd-mecha), "model1", "model2", ... (ComfyUI)
    name: str | None  # model name / file name as the tool wrote it
    sha256: str | None = None  # full sha256 where given
    short_hash: str | None = None  # AutoV2 = sha256[:10] (A1111 shorthash), where given
    legacy_hash: str | None = None  # A1111's old 8-hex hash, where given

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class Claim:
    """One recipe as a tool claims it: ``M = Σ w_label · P_label`` where the method is linear."""

    tool: str  # "A1111 checkpoint merger", "supermerger", "sd-mecha", "ComfyUI"
    method: str  # weighted_sum | add_difference | average | triple_sum | sum_twice | linear | no_interpolation | unknown
    parents: list[Parent]
    alpha: float | None  # global ratio where the tool has one (weighted sum: the second parent's share)
    block_alphas: (
        dict[str, float] | None
    )  # per merge block (BASE, IN00.., M00, OUT00..; "IN*" = every IN block)
    formula: str  # the community's words, e.g. "A*(1-0.3) + B*0.3" or "A + 0.5*(B - C)"
    raw: dict[str, Any]  # the parsed fields (shortened, safe for JSON)
    parents_claims: list[Claim] = field(default_factory=list)  # the parents' own recipes (A1111 nests them)
    beta: float | None = None  # supermerger's second ratio (triple sum, sum twice)
    block_betas: dict[str, float] | None = None
    subject: str | None = None  # for a nested claim: the label, in the enclosing claim, of the model it made
    notes: list[str] = field(default_factory=list)  # what the claim leaves out or cannot say
    terms: Terms | None = None  # the linear weights per parent label; None when the method is not linear

    def weights(self, blocks: Sequence[str]) -> dict[str, dict[str, float]] | None:
        """Per block name -> parent label -> the weight the claim implies in ``M = Σ w_label · P_label``
        (weighted sum: A 1-α, B α; add difference: A 1, B α, C -α; average 1/n each); None when the method has
        no linear weights (unknown, no_interpolation)."""
        if self.terms is None or self.method not in LINEAR_METHODS:
            return None
        return {b: {label: c.at(b) for label, c in self.terms.items()} for b in blocks}

    def parent(self, label: str) -> Parent | None:
        return next((p for p in self.parents if p.label == label), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "method": self.method,
            "formula": self.formula,
            "parents": [p.to_dict() for p in self.parents],
            "alpha": self.alpha,
            "block_alphas": self.block_alphas,
            "beta": self.beta,
            "block_betas": self.block_betas,
            "coefficients": None if self.terms is None else {k: c.to_dict() for k, c in self.terms.items()},
            "subject": self.subject,
            "notes": list(self.notes),
            "raw": self.raw,
            "parents_claims": [c.to_dict() for c in self.parents_claims],
        }


class Budget:
    """How many more claims may be made (nested recipes share one budget)."""

    def __init__(self, n: int = MAX_CLAIMS):
        self.left = n

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


# --------------------------------------------------------------------------- small readers of hostile values


def text(v: Any, limit: int = MAX_NAME) -> str | None:
    """A string field, cut at ``limit`` characters; None for anything else."""
    return v[:limit] if isinstance(v, str) else None


def num(v: Any) -> float | None:
    """A finite number (JSON number or numeric string; never a bool)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, str) and len(v) < 64:
        try:
            v = float(v)
        except ValueError:
            return None
    if isinstance(v, (int, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    return None


def hexstr(v: Any, lengths: Iterable[int] = (8, 10, 12, 64)) -> str | None:
    if isinstance(v, str) and len(v) in set(lengths) and _HEX.fullmatch(v):
        return v.lower()
    return None


def json_value(v: Any) -> Any:
    """A JSON text (bounded) parsed, or an already-parsed mapping; None when neither."""
    if isinstance(v, Mapping):
        return v
    if not isinstance(v, str) or len(v) > MAX_TEXT:
        return None
    try:
        return json.loads(v)
    except (ValueError, RecursionError):
        return None


def safe_raw(v: Any, depth: int = 0) -> Any:
    """A JSON-safe, bounded copy of a parsed field (for ``Claim.raw``)."""
    if v is None or isinstance(v, (bool, int)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, str):
        return v if len(v) <= MAX_RAW else v[:MAX_RAW] + f"… ({len(v)} chars)"
    if depth >= 3:
        return "…"
    if isinstance(v, Mapping):
        items = list(v.items())
        out = {str(k)[:MAX_RAW]: safe_raw(x, depth + 1) for k, x in items[:40]}
        if len(items) > 40:
            out["…"] = f"{len(items) - 40} more fields"
        return out
    if isinstance(v, (list, tuple)):
        return [safe_raw(x, depth + 1) for x in v[:40]] + ([f"… {len(v) - 40} more"] if len(v) > 40 else [])
    return str(type(v).__name__)


def g(x: float) -> str:
    """A number as people write it in a formula."""
    return f"{x:.6g}"


def unknown(tool: str, why: str, raw: Any = None, parents: list[Parent] | None = None) -> Claim:
    return Claim(
        tool, "unknown", parents or [], None, None, f"unknown ({why})", safe_raw(raw) or {}, notes=[why]
    )


# --------------------------------------------------------------------------- formulas and block vectors


def block_order(name: str) -> tuple[int, str, int]:
    m = re.fullmatch(r"([A-Z]+)(\d*)\*?", name)
    head, digits = (m.group(1), m.group(2)) if m else (name, "")
    rank = {"BASE": 0, "IN": 1, "M": 2, "MID": 2, "OUT": 4, "VAE": 5}.get(head, 3)
    return rank, head, int(digits) if digits else -1


def mbw_text(values: Mapping[str, float]) -> str:
    """``BASE,IN00,…`` = ``0.5,0.1,…``: the vector in the order supermerger and sd-mecha take."""
    names = sorted(values, key=block_order)
    return f"({_runs(names)}) = {','.join(g(values[n]) for n in names)}"


def _runs(names: Sequence[str]) -> str:
    """``BASE,IN00..IN11,M00,OUT00..OUT11``: consecutive numbered names of one head written as a range."""
    parts: list[list[str]] = []
    for n in names:
        m = re.fullmatch(r"([A-Z]+)(\d+)", n)
        prev = parts[-1][-1] if parts else None
        pm = re.fullmatch(r"([A-Z]+)(\d+)", prev) if prev else None
        if m and pm and m.group(1) == pm.group(1) and int(m.group(2)) == int(pm.group(2)) + 1:
            parts[-1].append(n)
        else:
            parts.append([n])
    return ",".join(p[0] if len(p) == 1 else f"{p[0]}..{p[-1]}" for p in parts)


def formula_of(method: str, labels: Sequence[str], alpha: float | None, beta: float | None = None) -> str:
    """The community's words for a linear method with global ratios (α written as "α" when per block)."""
    a = "α" if alpha is None else g(alpha)
    b = "β" if beta is None else g(beta)
    A, B, C = (list(labels) + ["?", "?", "?"])[:3]
    if method == "weighted_sum":
        return f"{A}*(1-{a}) + {B}*{a}"
    if method == "add_difference":
        return f"{A} + {a}*({B} - {C})"
    if method == "triple_sum":
        return f"{A}*(1-{a}-{b}) + {B}*{a} + {C}*{b}"
    if method == "sum_twice":
        return f"({A}*(1-{a}) + {B}*{a})*(1-{b}) + {C}*{b}"
    if method == "average":
        return f"({' + '.join(labels)})/{len(labels)}"
    if method == "no_interpolation":
        return f"{A} (no interpolation)"
    return "unknown"


def linear_formula(terms: Terms) -> str:
    """``0.25*A + 0.75*B`` from the coefficients (their defaults; "per block" when they vary)."""
    parts = []
    for label, c in terms.items():
        parts.append(f"{g(c.default)}*{label}")
    text_ = " + ".join(parts).replace("+ -", "- ") or "0"
    return text_ + ("" if all(c.uniform() for c in terms.values()) else " (weights vary per block)")


def classify(terms: Terms) -> tuple[str, float | None]:
    """Name a linear combination of parents when it is one the community names (weights the same in all
    blocks): ("weighted_sum", α) for (1-α)·A + α·B, ("average", None) for n equal shares, else ("linear", None)."""
    if not all(c.uniform() for c in terms.values()):
        return "linear", None
    w = [c.default for c in terms.values()]
    if len(w) == 2 and math.isclose(sum(w), 1.0, abs_tol=1e-9):
        return "weighted_sum", w[1]
    if len(w) >= 3 and all(math.isclose(x, 1 / len(w), abs_tol=1e-9) for x in w):
        return "average", None
    return "linear", None


# --------------------------------------------------------------------------- entry point


def read_claims(metadata: Mapping[str, str]) -> list[Claim]:
    """Every merge recipe the metadata claims (one per tool record). Never raises: unreadable fields are
    skipped or give a claim with method "unknown" saying why."""
    if not isinstance(metadata, Mapping):
        return []
    from sdlens.analysis import merge_claims_graphs as graphs

    budget = Budget()
    claims: list[Claim] = []
    readers = (  # keys: sdlens.analysis.inspect.CLAIM_KEYS
        ("sd_merge_recipe", "sd_merge_recipe", _read_webui_family),
        ("mecha_recipe", "sd-mecha", graphs.read_mecha),
        ("prompt", "ComfyUI", graphs.read_comfy),
    )
    for key, tool, reader in readers:
        if key not in metadata:
            continue
        try:
            claims += reader(metadata, budget)
        except Exception as e:  # a parser bug must not turn hostile metadata into a crash of inspect
            claims.append(unknown(tool, f"metadata {key!r} could not be read ({type(e).__name__})"))
    return claims[:MAX_CLAIMS]


# --------------------------------------------------------------------------- A1111 and supermerger


def _read_webui_family(metadata: Mapping[str, Any], budget: Budget) -> list[Claim]:
    recipe = json_value(metadata.get("sd_merge_recipe"))
    models = json_value(metadata.get("sd_merge_models"))
    models = models if isinstance(models, Mapping) else {}
    if not isinstance(recipe, Mapping):
        if metadata.get("sd_merge_recipe") in (None, "", "null"):
            return []
        return [unknown("sd_merge_recipe", "sd_merge_recipe is not a JSON object")]
    if not budget.take():
        return []
    return [_webui_claim(recipe, models, budget, 0, frozenset())]


def _webui_claim(
    recipe: Mapping[str, Any], models: Mapping[str, Any], budget: Budget, depth: int, path: frozenset[str]
) -> Claim:
    kind = recipe.get("type")
    if kind == "webui":
        claim = _a1111(recipe, models)
    elif kind == "sd-webui-supermerger":
        claim = _supermerger(recipe, models)
    else:
        shown = text(kind, 80) if isinstance(kind, str) else type(kind).__name__
        claim = unknown(f"sd_merge_recipe type {shown!r}", "a merge tool sdlens does not know", recipe)
        claim.parents = _hash_parents(recipe, models)
    if depth < MAX_DEPTH:
        for p in claim.parents:
            entry = models.get(p.sha256) if p.sha256 else None
            nested = json_value(entry.get("sd_merge_recipe")) if isinstance(entry, Mapping) else None
            if not isinstance(nested, Mapping) or p.sha256 in path:
                continue
            if not budget.take():
                claim.notes.append("more nested recipes than sdlens reads")
                break
            sub = _webui_claim(nested, models, budget, depth + 1, path | {p.sha256})
            sub.subject = p.label
            claim.parents_claims.append(sub)
    return claim


def _parent(label: str, h: Any, models: Mapping[str, Any], name: Any = None) -> Parent | None:
    sha = hexstr(h, (64,))
    short = hexstr(h, (10, 12))
    if sha is None and short is None and not isinstance(name, str):
        return None
    entry = models.get(h) if isinstance(h, str) else None
    entry = entry if isinstance(entry, Mapping) else {}
    return Parent(
        label,
        text(entry.get("name")) or text(name),
        sha,
        (sha[:10] if sha else short),
        hexstr(entry.get("legacy_hash"), (8,)),
    )


def _hash_parents(recipe: Mapping[str, Any], models: Mapping[str, Any]) -> list[Parent]:
    keys = ("primary_model_hash", "secondary_model_hash", "tertiary_model_hash")
    out = [_parent(label, recipe.get(k), models) for label, k in zip("ABC", keys, strict=True)]
    return [p for p in out if p is not None]


_A1111_METHODS = {
    "Weighted sum": "weighted_sum",
    "Add difference": "add_difference",
    "No interpolation": "no_interpolation",
}
_NEEDS = {"weighted_sum": 2, "add_difference": 3, "no_interpolation": 1}


def _a1111(recipe: Mapping[str, Any], models: Mapping[str, Any]) -> Claim:
    tool = "A1111 checkpoint merger"
    parents = _hash_parents(recipe, models)
    interp = recipe.get("interp_method")
    method = _A1111_METHODS.get(interp) if isinstance(interp, str) else None
    m = num(recipe.get("multiplier"))
    raw = safe_raw(recipe)
    if method is None:
        return unknown(tool, f"interp_method {safe_raw(interp)!r}", recipe, parents)
    if (
        len(parents) < _NEEDS[method]
        or [p.label for p in parents][: _NEEDS[method]] != list("ABC")[: _NEEDS[method]]
    ):
        return unknown(tool, f"{interp} without the models it needs", recipe, parents)
    parents = parents[: _NEEDS[method]]
    if method != "no_interpolation" and m is None:
        return unknown(tool, "no numeric multiplier", recipe, parents)
    one = Coef(1.0)
    terms: Terms | None
    if method == "weighted_sum":
        terms = {"A": Coef(1 - m), "B": Coef(m)}
    elif method == "add_difference":
        terms = {"A": one, "B": Coef(m), "C": Coef(-m)}
    else:
        terms = None
    claim = Claim(
        tool,
        method,
        parents,
        m if terms else None,
        None,
        formula_of(method, [p.label for p in parents], m),
        raw,
        terms=terms,
    )
    vae = recipe.get("bake_in_vae")
    if isinstance(vae, str) and vae not in ("", "None"):
        claim.notes.append(f"VAE replaced by {vae[:MAX_NAME]} (not part of the formula)")
    dw = recipe.get("discard_weights")
    if isinstance(dw, str) and dw:
        claim.notes.append(f"weights matching {dw[:MAX_RAW]!r} discarded")
    if recipe.get("is_inpainting") is True or recipe.get("is_instruct_pix2pix") is True:
        claim.notes.append("A's extra input channels kept from A (inpainting / instruct-pix2pix)")
    return claim


# supermerger's MBW vectors after its BASE value (scripts/mergers/mergers.py BLOCKID / BLOCKIDXLL)
_SM_SD1 = [f"IN{i:02d}" for i in range(12)] + ["M00"] + [f"OUT{i:02d}" for i in range(12)]
_SM_XL = [f"IN{i:02d}" for i in range(9)] + ["M00"] + [f"OUT{i:02d}" for i in range(9)] + ["VAE"]


def _sm_blocks(values: Any, orig: Any) -> tuple[dict[str, float] | None, float | None]:
    """The per-block list supermerger writes (25 values SD1, 20 SDXL, BASE apart), or its original
    ``BASE,IN00,…`` text; returns (block -> value without BASE, BASE value from the text)."""
    base = None
    if not isinstance(values, list) and isinstance(orig, str) and len(orig) < 10_000 and "," in orig:
        parts = [num(x.strip()) for x in orig.split(",")]
        if parts and parts[0] is not None:
            base, values = parts[0], parts[1:]
    if not isinstance(values, list) or any(num(v) is None for v in values):
        return None, base
    names = {25: _SM_SD1, 20: _SM_XL, 19: _SM_XL[:-1]}.get(len(values))
    if names is None:
        return None, base
    return {n: num(v) for n, v in zip(names, values, strict=True)}, base


def _supermerger(recipe: Mapping[str, Any], models: Mapping[str, Any]) -> Claim:
    tool = "supermerger"
    parents = [
        _parent(label, recipe.get(k), models)
        for label, k in zip("ABC", ("model_a", "model_b", "model_c"), strict=True)
    ]
    mode = recipe.get("mode") if isinstance(recipe.get("mode"), str) else ""
    method = (
        "add_difference"
        if "Add" in mode
        else "triple_sum"
        if "Triple" in mode
        else "sum_twice"
        if "Twice" in mode
        else "weighted_sum"
        if "Weight" in mode
        else None
    )
    need = 2 if method == "weighted_sum" else 3
    parents = [p for p in parents[:need] if p is not None]
    raw = safe_raw(recipe)
    if method is None:
        return unknown(tool, f"mode {safe_raw(mode)!r}", recipe, parents)
    if len(parents) < need:
        return unknown(tool, f"{mode} without the models it needs", recipe, parents)
    alpha, beta = num(recipe.get("base_alpha")), num(recipe.get("base_beta"))
    notes: list[str] = []
    mbw = recipe.get("mbw") in (True, "True")
    blocks_a = blocks_b = None
    if mbw:
        blocks_a, base_a = _sm_blocks(recipe.get("weights_alpha"), recipe.get("weights_alpha_orig"))
        blocks_b, base_b = _sm_blocks(recipe.get("weights_beta"), recipe.get("weights_beta_orig"))
        alpha = alpha if alpha is not None else base_a
        beta = beta if beta is not None else base_b
        if blocks_a is None:
            notes.append("MBW on, but its weights_alpha could not be read")
    uses_beta = method in ("triple_sum", "sum_twice")
    if alpha is None or (uses_beta and beta is None):
        return unknown(tool, "no numeric base_alpha / base_beta", recipe, parents)
    a = Coef(alpha, dict(blocks_a or {}, BASE=alpha) if blocks_a else {})
    b = Coef(
        beta if beta is not None else 0.0,
        dict(blocks_b or {}, BASE=beta) if blocks_b and beta is not None else {},
    )
    one = Coef(1.0)
    if method == "weighted_sum":
        terms = {"A": one + a * -1.0, "B": a}
    elif method == "add_difference":
        terms = {"A": one, "B": a, "C": a * -1.0}
    elif method == "triple_sum":
        terms = {"A": one + a * -1.0 + b * -1.0, "B": a, "C": b}
    else:
        keep = one + b * -1.0
        terms = {"A": (one + a * -1.0) * keep, "B": a * keep, "C": b}
    labels = [p.label for p in parents]
    formula = formula_of(method, labels, None if blocks_a else alpha, None if blocks_b else beta)
    block_alphas = dict(a.blocks) if blocks_a else None
    block_betas = dict(b.blocks) if blocks_b and uses_beta else None
    if block_alphas:
        formula += f"; MBW α {mbw_text(block_alphas)}"
    if block_betas:
        formula += f"; MBW β {mbw_text(block_betas)}"
    calc = recipe.get("calcmode")
    if isinstance(calc, str) and calc not in ("normal", ""):
        notes.append(f"calcmode {calc[:80]!r}: not a plain linear merge; the weights are only nominal")
        method_out, terms_out = "unknown", None
        formula = f"{formula} [calcmode {calc[:80]}]"
    else:
        method_out, terms_out = method, terms
    notes += _sm_notes(recipe, block_alphas)
    return Claim(
        tool,
        method_out,
        parents,
        alpha,
        block_alphas,
        formula,
        raw,
        beta=beta if uses_beta else None,
        block_betas=block_betas,
        notes=notes,
        terms=terms_out,
    )


def _sm_notes(recipe: Mapping[str, Any], block_alphas: Mapping[str, float] | None) -> list[str]:
    """What a supermerger recipe does beyond its ratios: elemental ratios, included / excluded blocks."""
    notes = []
    if isinstance(recipe.get("elemental_merge"), str) and recipe["elemental_merge"].strip():
        notes.append("elemental merge: some keys have their own ratios (the block weights are only nominal)")
    for k in ("Include", "Exclude"):
        value = recipe.get(k)
        listed = [x for x in value if isinstance(x, str) and x] if isinstance(value, list) else []
        if listed:
            notes.append(f"{k.lower()}d blocks / keys: {', '.join(x[:40] for x in listed[:30])}")
    if "VAE" in (block_alphas or {}):  # mergers.py blockfromkey, SDXL branch
        notes.append(
            "SDXL: supermerger leaves the time / label embeddings unmerged (A's) and gives the VAE BASE's "
            "ratio; the vector's VAE value is not used"
        )
    elif block_alphas:  # SD1 branch: time_embed gets weight index -2, i.e. BLOCKID[-1]
        notes.append("supermerger gives the time embedding OUT11's ratio (not IN00's)")
    return notes


# --------------------------------------------------------------------------- matching parents to files


def name_keys(name: str) -> set[str]:
    """The forms a model name can be matched by: lower-case, without folders, A1111's `` [hash]`` suffix or
    the extension."""
    base = _HASH_SUFFIX.sub("", name).replace("\\", "/").rsplit("/", 1)[-1].strip().lower()
    keys = {base} if base else set()
    for ext in _MODEL_EXT:
        if base.endswith(ext) and len(base) > len(ext):
            keys.add(base[: -len(ext)])
    return keys


def match_parents(claim: Claim, files: Sequence[str | Path]) -> dict[str, int | None]:
    """Parent label -> the index in ``files`` of the file that is that parent: by A1111's legacy hash (64 KiB
    read at 1 MiB of each regular file, only when a parent gives one), else by file name / stem
    (case-insensitive, with or without extension and A1111's `` [hash]`` suffix); a file whose legacy hash
    differs from the one the parent gives is not that parent, whatever its name. Never reads a whole file.
    A label is None when no file, or more than one, fits."""
    paths = [Path(f) for f in files]
    legacy: list[str | None] | None = None
    if any(p.legacy_hash for p in claim.parents):
        from sdlens.io.hashing import legacy_hash

        legacy = []
        for p in paths:
            try:
                legacy.append(legacy_hash(p) if p.is_file() else None)
            except Exception:  # unreadable: no hash, no match by hash
                legacy.append(None)
    file_keys = [name_keys(p.name) for p in paths]
    out: dict[str, int | None] = {}
    for parent in claim.parents:
        pool = list(range(len(paths)))
        if legacy is not None and parent.legacy_hash:
            by_hash = [i for i in pool if legacy[i] == parent.legacy_hash]
            if len(by_hash) == 1:
                out[parent.label] = by_hash[0]
                continue
            # a file whose old hash differs is another file, whatever its name
            pool = by_hash or [i for i in pool if legacy[i] is None]
        keys = name_keys(parent.name) if parent.name else set()
        by_name = [i for i in pool if keys & file_keys[i]]
        out[parent.label] = by_name[0] if len(by_name) == 1 else None
    return out


def weights_by_file(
    claim: Claim, files: Sequence[str | Path], blocks: Sequence[str]
) -> tuple[dict[str, dict[int, float]] | None, list[str]]:
    """The claimed weights with each parent replaced by the index of its file in ``files``
    (:func:`match_parents`): block -> file index -> weight, and the labels of the parents no file matched
    (their weights are left out). None when the claim has no linear weights."""
    weights = claim.weights(blocks)
    if weights is None:
        return None, []
    where = match_parents(claim, files)
    missing = [label for label in (claim.terms or {}) if where.get(label) is None]
    out: dict[str, dict[int, float]] = {}
    for b, per_label in weights.items():
        row: dict[int, float] = {}
        for label, w in per_label.items():
            i = where.get(label)
            if i is not None:
                row[i] = row.get(i, 0.0) + w
        out[b] = row
    return out, missing
