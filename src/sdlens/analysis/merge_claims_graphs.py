"""Recipes that are graphs: sd-mecha's ``mecha_recipe`` text and ComfyUI's ``prompt`` graph, evaluated as linear
combinations of the models they load (``merge_claims.Terms``); anything not linear names what it is."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sdlens.analysis.merge_claims import (
    MAX_NAME,
    Budget,
    Claim,
    ClaimError,
    Coef,
    Parent,
    Terms,
    classify,
    formula_of,
    g,
    json_value,
    lin,
    linear_formula,
    mbw_text,
    num,
    safe_raw,
    text,
    unknown,
)

MAX_LINES = 2000  # sd-mecha recipe lines
MAX_TOKENS = 128  # tokens on one sd-mecha line
MAX_RECIPE = 1 << 20  # characters of an sd-mecha recipe (real ones are a few kB)
MAX_NODES = 5000  # ComfyUI graph nodes
MAX_GRAPH_DEPTH = 200
MAX_SAVES = 4


@dataclass
class Lin:
    """A model-valued node: its linear weights and its shape (for naming the recipe)."""

    terms: Terms
    shape: tuple


@dataclass
class Bad:
    """A value that could not be evaluated; an error only where it is used."""

    why: str


def _labels(n: int, prefix: str = "") -> str:
    return f"{prefix}{n + 1}" if prefix else (chr(ord("A") + n) if n < 26 else f"M{n + 1}")


def _leaf_label(shape: tuple) -> str | None:
    return shape[1] if shape and shape[0] == "leaf" else None


def _block_values(c: Coef) -> dict[str, float]:
    return {**{f"{k}*": v for k, v in c.groups.items()}, **c.blocks}


# --------------------------------------------------------------------------- sd-mecha


def read_mecha(metadata: Mapping[str, Any], budget: Budget) -> list[Claim]:
    """sd-mecha's ``mecha_recipe`` (sd_mecha/recipe_serializer.py: ``version``, ``model``, ``dict``,
    ``literal``, ``merge`` lines; ``&n`` refers to line n after the version line)."""
    recipe = metadata.get("mecha_recipe")
    if not isinstance(recipe, str) or not recipe.strip():
        return []
    if not budget.take():
        return []
    if len(recipe) > MAX_RECIPE:
        return [unknown("sd-mecha", "recipe text too long")]
    try:
        return [_mecha_claim(recipe)]
    except ClaimError as e:
        return [unknown("sd-mecha", str(e), {"recipe": recipe})]


def _tokens(line: str) -> list[tuple[str, str | None]]:
    """Space-separated tokens; a double-quoted part (backslash escapes) is kept apart:
    ``alpha=0.5`` -> ("alpha=0.5", None), ``model_config="sd1-ldm"`` -> ("model_config=", "sd1-ldm")."""
    out: list[tuple[str, str | None]] = []
    plain: list[str] = []
    quoted: list[str] | None = None
    in_quote = escape = False
    for ch in line:
        if in_quote:
            if escape:
                quoted.append(ch)
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_quote = False
            else:
                quoted.append(ch)
        elif ch == '"':
            in_quote, quoted = True, []
        elif ch == " ":
            if plain or quoted is not None:
                out.append(("".join(plain), None if quoted is None else "".join(quoted)))
            plain, quoted = [], None
        else:
            plain.append(ch)
    if in_quote:
        raise ClaimError("mismatched quotes")
    if plain or quoted is not None:
        out.append(("".join(plain), None if quoted is None else "".join(quoted)))
    return out


def _value(tok: tuple[str, str | None], results: list[Any]) -> Any:
    plain, quoted = tok
    if quoted is not None:
        return quoted[:MAX_NAME]
    if plain in ("null", "true", "false"):
        return {"null": None, "true": True, "false": False}[plain]
    if plain.startswith("&"):
        if not plain[1:].isdigit() or int(plain[1:]) >= len(results):
            raise ClaimError(f"reference {plain[:20]} to no earlier line")
        return results[int(plain[1:])]
    f = num(plain)
    if f is None:
        raise ClaimError(f"cannot read the value {plain[:40]!r}")
    return f


def _args(toks: list[tuple[str, str | None]], results: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    pos: list[Any] = []
    kw: dict[str, Any] = {}
    for plain, quoted in toks:
        if "=" in plain:
            key, rest = plain.split("=", 1)
            kw[key[:80]] = _value((rest, quoted), results)
        else:
            pos.append(_value((plain, quoted), results))
    return pos, kw


_BLOCK = re.compile(r"BASE|VAE|IN\d\d|M\d\d|OUT\d\d|[A-Z]\d\d")
_OLD_BLOCK = re.compile(r"_block_(in|out|mid|middle|m)(\d*)$", re.IGNORECASE)


def _param(v: Any, default: float, what: str) -> Coef:
    """A ratio: a number, or per-block values (a ``dict`` / ``literal`` with block names, possibly through a
    ``convert_*`` node)."""
    if isinstance(v, Bad):
        raise ClaimError(v.why)
    if isinstance(v, Coef):
        return v
    f = num(v)
    if f is not None:
        return Coef(f)
    if isinstance(v, Mapping) and set(v) == {"key"} and num(v["key"]) is not None:
        return Coef(num(v["key"]))  # sd-mecha ≥ 1.0: a number as a "singleton-mecha" literal {key: value}
    if isinstance(v, Mapping):
        c = Coef(default)
        for k, x in v.items():
            val = num(x)
            if val is None:
                raise ClaimError(f"{what}: block {str(k)[:40]!r} is not a number")
            if _BLOCK.fullmatch(k):
                c.blocks[k] = val
            elif m := _OLD_BLOCK.search(k):
                head = m.group(1).lower()
                idx = int(m.group(2) or 0)
                name = "M00" if head in ("mid", "middle", "m") else f"{head.upper()}{idx:02d}"
                c.blocks["BASE" if "_txt" in k else name] = val
            elif k.endswith("_default"):
                if "_txt" in k:
                    c.blocks["BASE"] = val
                else:
                    c.default = val
            else:
                raise ClaimError(f"{what}: block name {str(k)[:40]!r} not understood")
        return c
    if isinstance(v, Lin):
        raise ClaimError(f"{what} is computed from models (not a ratio)")
    raise ClaimError(f"{what} is not a ratio")


def _model(v: Any, what: str) -> Lin:
    if isinstance(v, Lin):
        return v
    if isinstance(v, Bad):
        raise ClaimError(v.why)
    raise ClaimError(f"{what} is not a model")


def _mecha_merge(method: str, pos: list[Any], kw: dict[str, Any]) -> Any:
    if method.startswith("convert_") and len(pos) == 1 and not kw:  # key-format / block conversions
        return pos[0]
    if method == "fallback" and pos and isinstance(pos[0], Lin):  # sd-mecha ≥ 1.0: A where a key is missing
        return pos[0]
    if method == "weighted_sum":
        a, b = (_model(x, method) for x in pos[:2]) if len(pos) >= 2 else (None, None)
        if a is None:
            raise ClaimError("weighted_sum without two models")
        alpha = _param(kw.get("alpha", pos[2] if len(pos) > 2 else 0.5), 0.5, "alpha")
        return Lin(
            lin((Coef(1.0) + alpha * -1.0, a.terms), (alpha, b.terms)), ("ws", a.shape, b.shape, alpha)
        )
    if method == "add_difference":
        models = [x for x in pos if isinstance(x, (Lin, Bad))]
        rest = [x for x in pos if not isinstance(x, (Lin, Bad))]
        alpha = _param(kw.get("alpha", rest[0] if rest else 1.0), 1.0, "alpha")
        if len(models) == 3:
            a, b, c = (_model(x, method) for x in models)
            delta = Lin(lin((1.0, b.terms), (-1.0, c.terms)), ("sub", b.shape, c.shape))
        elif len(models) == 2:
            a, delta = (_model(x, method) for x in models)
        else:
            raise ClaimError("add_difference without its models")
        return Lin(lin((1.0, a.terms), (alpha, delta.terms)), ("ad", a.shape, delta.shape, alpha))
    if method == "subtract" and len(pos) == 2:
        a, b = (_model(x, method) for x in pos)
        return Lin(lin((1.0, a.terms), (-1.0, b.terms)), ("sub", a.shape, b.shape))
    if method == "n_average" and pos:
        models = [_model(x, method) for x in pos]
        k = 1.0 / len(models)
        return Lin(lin(*((k, m.terms) for m in models)), ("avg", *(m.shape for m in models)))
    return Bad(f"merge method {method[:60]!r} is not a linear merge")


def _mecha_claim(recipe: str) -> Claim:
    results: list[Any] = []
    parents: list[Parent] = []
    raw: dict[str, Any] = {"recipe": safe_raw(recipe)}
    methods: list[str] = []
    lines = recipe.split("\n")
    if len(lines) > MAX_LINES:
        raise ClaimError(f"more than {MAX_LINES} lines")
    for n, line in enumerate(lines):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("version") and not results and n == 0:
            raw["version"] = line[len("version") :].strip()[:40]
            continue
        toks = _tokens(line)
        command = toks[0][0]
        if len(toks) > MAX_TOKENS:
            results.append(Bad(f"line {n + 1}: more than {MAX_TOKENS} arguments"))
            continue
        try:
            pos, kw = _args(toks[1:], results)
        except ClaimError as e:
            results.append(Bad(f"line {n + 1}: {e}"))
            continue
        if command in ("model", "parameter"):
            label = _labels(len(parents))
            name = pos[0] if pos and isinstance(pos[0], str) else None
            name = name if command == "model" else f"parameter {name}"
            parents.append(Parent(label, name))
            results.append(Lin({label: Coef(1.0)}, ("leaf", label)))
        elif command == "dict":
            results.append(dict(kw))
        elif command == "literal":
            v = pos[0] if pos else None
            if isinstance(v, Mapping) and any(isinstance(x, (Lin, Bad)) for x in v.values()):
                v = Bad("a literal made of models (component-wise recipe)")
            results.append(v)
        elif command in ("merge", "call"):
            method = pos[0] if pos and isinstance(pos[0], str) else ""
            methods.append(method[:60])
            try:
                results.append(_mecha_merge(method, pos[1:], kw))
            except ClaimError as e:
                results.append(Bad(f"line {n + 1} ({method[:60]}): {e}"))
        else:
            results.append(Bad(f"line {n + 1}: unknown command {command[:40]!r}"))
    if not results:
        raise ClaimError("empty recipe")
    raw["methods"] = methods[:40]
    root = results[-1]
    if not isinstance(root, Lin):
        why = root.why if isinstance(root, Bad) else "the recipe does not end in a model"
        claim = unknown("sd-mecha", why, raw, parents)
        claim.formula = f"unknown ({', '.join(dict.fromkeys(methods)) or 'no merge'})"
        return claim
    return _named("sd-mecha", root, parents, raw)


def _named(tool: str, root: Lin, parents: list[Parent], raw: dict[str, Any]) -> Claim:
    """The claim for a model-valued root: the community's name when the root is one (weighted sum of two
    loaded models, add difference, n-average, a model saved as it was), else the linear weights."""
    shape = root.shape
    used = [p for p in parents if p.label in root.terms]
    kind = shape[0]
    leaves = [_leaf_label(s) for s in shape[1:] if isinstance(s, tuple)]
    if kind == "leaf":
        return Claim(
            tool, "no_interpolation", used, None, None, formula_of("no_interpolation", [shape[1]], None), raw
        )
    if kind == "ws" and all(leaves):
        return _ratio_claim(tool, "weighted_sum", used, leaves, shape[3], raw, root.terms)
    if kind == "ad" and _leaf_label(shape[1]) and shape[2][0] == "sub":
        abc = [_leaf_label(shape[1]), _leaf_label(shape[2][1]), _leaf_label(shape[2][2])]
        if all(abc):
            return _ratio_claim(tool, "add_difference", used, abc, shape[3], raw, root.terms)
    if kind == "avg" and all(leaves) and len(set(leaves)) == len(leaves):
        return Claim(
            tool, "average", used, None, None, formula_of("average", leaves, None), raw, terms=root.terms
        )
    method, alpha = classify(root.terms)
    labels = list(root.terms)
    formula = formula_of(method, labels, alpha) if method != "linear" else linear_formula(root.terms)
    return Claim(tool, method, used, alpha, None, formula, raw, terms=root.terms)


def _ratio_claim(
    tool: str,
    method: str,
    used: list[Parent],
    labels: list[str],
    alpha: Coef,
    raw: dict[str, Any],
    terms: Terms,
) -> Claim:
    """Weighted sum / add difference with α (a number or per block) of the named labels."""
    order = {label: i for i, label in enumerate(labels)}
    used = sorted(used, key=lambda p: order.get(p.label, len(order)))
    per_block = not alpha.uniform()
    formula = formula_of(method, labels, None if per_block else alpha.default)
    blocks = _block_values(alpha) if per_block else None
    if blocks:
        formula += f"; MBW α {mbw_text(blocks)}"
    return Claim(tool, method, used, alpha.default, blocks, formula, raw, terms=terms)


# --------------------------------------------------------------------------- ComfyUI


_SAVE_NODES = ("CheckpointSave", "ModelSave")
_CKPT_SLOTS = {0: "model", 1: "clip", 2: "vae"}


def read_comfy(metadata: Mapping[str, Any], budget: Budget) -> list[Claim]:
    """ComfyUI's ``prompt`` (comfy_extras/nodes_model_merging.py save_checkpoint: the API-format graph, node id
    -> ``{class_type, inputs}``, links ``[node id, output slot]``), walked back from each save node."""
    prompt = json_value(metadata.get("prompt"))
    if not isinstance(prompt, Mapping) or not prompt:
        return []
    nodes = {str(k): v for k, v in list(prompt.items())[: MAX_NODES + 1] if isinstance(v, Mapping)}
    classes = {k: n.get("class_type") for k, n in nodes.items() if isinstance(n.get("class_type"), str)}
    if not classes:
        return []  # not a ComfyUI graph
    if len(prompt) > MAX_NODES:
        return [unknown("ComfyUI", f"graph of more than {MAX_NODES} nodes")] if budget.take() else []
    saves = [k for k, c in classes.items() if c in _SAVE_NODES]
    if not saves:
        merges = sorted({c for c in classes.values() if "Merge" in c})
        if merges and budget.take():
            return [unknown("ComfyUI", f"no CheckpointSave node; merge nodes {', '.join(merges)[:300]}")]
        return []
    out = []
    for sid in saves[:MAX_SAVES]:
        if not budget.take():
            break
        claim = _Comfy(nodes).claim(sid)
        if len(saves) > 1:
            claim.notes.append(
                f"the graph has {len(saves)} save nodes; which one wrote this file is not recorded"
            )
        out.append(claim)
    return out


class _Comfy:
    def __init__(self, nodes: Mapping[str, Mapping[str, Any]]):
        self.nodes = nodes
        self.parents: dict[str, Parent] = {}  # file name -> parent
        self.active: set[tuple[str, int]] = set()
        self.memo: dict[tuple[str, int, str], Lin] = {}
        self.steps = 0
        self.notes: list[str] = []
        self.unknown_classes: set[str] = set()

    # ---- graph access
    def _node(self, ref: Any) -> tuple[str, int, Mapping[str, Any], str, Mapping[str, Any]]:
        if not (isinstance(ref, (list, tuple)) and len(ref) == 2 and isinstance(ref[1], int)):
            raise ClaimError("an input that is not a link")
        nid = str(ref[0])[:40]
        node = self.nodes.get(nid)
        if node is None:
            raise ClaimError(f"link to missing node {nid}")
        cls = node.get("class_type")
        inputs = node.get("inputs")
        if not isinstance(cls, str) or not isinstance(inputs, Mapping):
            raise ClaimError(f"node {nid} without class_type / inputs")
        return nid, ref[1], node, cls[:80], inputs

    def _leaf(self, name: Any, what: str) -> Lin:
        name = text(name) or f"(unnamed {what})"
        if name not in self.parents:
            label = _labels(len(self.parents), "model")
            self.parents[name] = Parent(label, name)
        label = self.parents[name].label
        return Lin({label: Coef(1.0)}, ("leaf", label))

    def eval(self, ref: Any, kind: str, depth: int = 0) -> Lin:
        nid, slot, _node, cls, inputs = self._node(ref)
        key = (nid, slot, kind)
        if key in self.memo:
            return self.memo[key]
        self.steps += 1
        if depth > MAX_GRAPH_DEPTH or self.steps > 4 * MAX_NODES:
            raise ClaimError("graph too deep")
        if (nid, slot) in self.active:
            raise ClaimError(f"cycle through node {nid}")
        self.active.add((nid, slot))
        try:
            out = self._eval(cls, slot, inputs, kind, depth + 1)
        finally:
            self.active.discard((nid, slot))
        self.memo[key] = out
        return out

    def _eval(self, cls: str, slot: int, inputs: Mapping[str, Any], kind: str, depth: int) -> Lin:
        if "ckpt_name" in inputs:  # CheckpointLoaderSimple, CheckpointLoader, ...: MODEL, CLIP, VAE
            if _CKPT_SLOTS.get(slot) != kind:
                raise ClaimError(f"{cls} output {slot} used as {kind}")
            return self._leaf(inputs.get("ckpt_name"), "checkpoint")
        for field_, k in (("unet_name", "model"), ("clip_name", "clip"), ("vae_name", "vae")):
            if field_ in inputs and kind == k:
                return self._leaf(inputs.get(field_), k)
        if kind == "clip" and "clip_name1" in inputs:
            names = [text(inputs.get(f"clip_name{i}")) for i in (1, 2, 3)]
            return self._leaf(" + ".join(n for n in names if n), "clip")
        one = "model" if kind == "model" else "clip"
        a, b = f"{one}1", f"{one}2"
        if cls in ("ModelMergeSimple", "CLIPMergeSimple"):
            r = self._ratio(inputs, "ratio", cls)
            m1, m2 = self.eval(inputs.get(a), kind, depth), self.eval(inputs.get(b), kind, depth)
            return Lin(lin((r, m1.terms), (1 - r, m2.terms)), ("simple", m1.shape, m2.shape, Coef(r)))
        if cls in ("ModelMergeSubtract", "CLIPMergeSubtract"):
            k = self._ratio(inputs, "multiplier", cls)
            m1, m2 = self.eval(inputs.get(a), kind, depth), self.eval(inputs.get(b), kind, depth)
            return Lin(lin((k, m1.terms), (-k, m2.terms)), ("sub", m1.shape, m2.shape, k))
        if cls in ("ModelMergeAdd", "CLIPMergeAdd"):
            m1, m2 = self.eval(inputs.get(a), kind, depth), self.eval(inputs.get(b), kind, depth)
            return Lin(lin((1.0, m1.terms), (1.0, m2.terms)), ("add", m1.shape, m2.shape))
        if kind == "model" and cls.startswith("ModelMerge") and a in inputs and b in inputs:
            r = self._block_ratios(cls, inputs)
            m1, m2 = self.eval(inputs.get(a), kind, depth), self.eval(inputs.get(b), kind, depth)
            return Lin(
                lin((r, m1.terms), (Coef(1.0) + r * -1.0, m2.terms)), ("simple", m1.shape, m2.shape, r)
            )
        passthrough = {"model": "model", "clip": "clip"}.get(kind)
        if (
            passthrough
            and (cls.startswith("ModelSampling") or cls == "CLIPSetLastLayer")
            and passthrough in inputs
        ):
            return self.eval(inputs.get(passthrough), kind, depth)
        self.unknown_classes.add(cls)
        raise ClaimError(f"node {cls} is not a merge sdlens can follow")

    def _ratio(self, inputs: Mapping[str, Any], name: str, cls: str) -> float:
        v = num(inputs.get(name))
        if v is None:
            raise ClaimError(f"{cls} {name} is not a number")
        return v

    def _block_ratios(self, cls: str, inputs: Mapping[str, Any]) -> Coef:
        """ModelMergeBlocks (input / middle / out) and the per-block ModelMergeSD1 / SD2 / SDXL ... nodes: the
        ratio kept of model1 per merge block (ComfyUI: longest matching key prefix; other keys the first)."""
        values = [(k, num(v)) for k, v in inputs.items() if k not in ("model1", "model2")]
        if not values or any(v is None for _, v in values):
            raise ClaimError(f"{cls} with a ratio that is not a number")
        c = Coef(values[0][1])
        mids: list[float] = []
        extra: dict[str, float] = {}
        heads = {
            "input_blocks": "IN",
            "output_blocks": "OUT",
            "double_blocks": "D",
            "single_blocks": "S",
            "joint_blocks": "J",
        }
        for k, v in values:
            m = re.fullmatch(r"([a-z_]+)\.(\d+)\.?", k)
            if k in ("input", "middle", "out"):
                c.groups[{"input": "IN", "middle": "M", "out": "OUT"}[k]] = v
            elif m and m.group(1) in heads:
                c.blocks[f"{heads[m.group(1)]}{int(m.group(2)):02d}"] = v
            elif m and m.group(1) == "middle_block":
                mids.append(v)
            else:
                extra[k] = v
        if mids:
            c.blocks["M00"] = sum(mids) / len(mids)
            if len(set(mids)) > 1:
                self.notes.append(f"M00 mixes ratios {', '.join(g(x) for x in mids)} (middle_block parts)")
        time = [v for k, v in extra.items() if k.startswith(("time_embed", "label_emb"))]
        if time and any(x != c.at("IN00") for x in time):
            self.notes.append(
                f"time / label embeddings kept at ratio {g(time[0])} (placed in IN00 or BASE by tool)"
            )
        outs = [int(b[3:]) for b in c.blocks if b.startswith("OUT")]
        if "out." in extra and outs and extra["out."] != c.blocks[f"OUT{max(outs):02d}"]:
            self.notes.append(f"final out. layer at ratio {g(extra['out.'])} (inside the last OUT block)")
        rest = [k for k in extra if not k.startswith(("time_embed", "label_emb", "out."))]
        if rest:
            self.notes.append(f"ratios not placed in a merge block: {', '.join(k[:40] for k in rest[:10])}")
        return c

    # ---- the claim
    def claim(self, save_id: str) -> Claim:
        save = self.nodes[save_id]
        inputs = save.get("inputs") if isinstance(save.get("inputs"), Mapping) else {}
        raw: dict[str, Any] = {"save_node": save_id, "class_type": save.get("class_type")}
        try:
            root = self.eval(inputs.get("model"), "model")
        except ClaimError as e:
            claim = unknown("ComfyUI", str(e), raw, list(self.parents.values()))
            if self.unknown_classes:
                claim.raw["node_classes"] = sorted(self.unknown_classes)[:40]
            return claim
        clip_terms = None
        if "clip" in inputs:
            try:
                clip_terms = self.eval(inputs.get("clip"), "clip").terms
            except ClaimError as e:
                self.notes.append(f"text encoders: {e}; the BASE weights are the UNet's")
        vae = None
        if "vae" in inputs:
            try:
                vae = self.eval(inputs.get("vae"), "vae")
            except ClaimError as e:
                self.notes.append(f"VAE: {e}")
        terms = dict(root.terms)
        if clip_terms is not None:
            for label in terms.keys() | clip_terms.keys():
                u = terms.get(label, Coef(0.0))
                base = clip_terms[label].default if label in clip_terms else 0.0
                terms[label] = Coef(u.default, {**u.blocks, "BASE": base}, dict(u.groups))
        parents = list(self.parents.values())
        claim = _comfy_named(Lin(terms, root.shape), parents, raw)
        if vae is not None:
            label = next(iter(vae.terms))
            name = next((p.name for p in parents if p.label == label), None)
            where = f"{label} ({name})" if label in root.terms else f"{name} (not one of the merged models)"
            claim.notes.append(f"VAE from {where}")
        if clip_terms is not None and any(
            abs(clip_terms.get(k, Coef(0.0)).default - root.terms.get(k, Coef(0.0)).at("BASE")) > 1e-12
            for k in clip_terms.keys() | root.terms.keys()
        ):
            claim.notes.append(
                "text encoders (BASE): " + ", ".join(f"{g(c.default)}*{k}" for k, c in clip_terms.items())
            )
        claim.notes += self.notes
        return claim


def _comfy_named(root: Lin, parents: list[Parent], raw: dict[str, Any]) -> Claim:
    """ComfyUI's words: ModelMergeSimple keeps ``ratio`` of model1 (``model1*r + model2*(1-r)``); α below is the
    second model's share, as in ``A*(1-α) + B*α``."""
    shape = root.shape
    kind = shape[0]
    used = [p for p in parents if p.label in root.terms]
    if kind == "leaf":
        return Claim("ComfyUI", "no_interpolation", used, None, None, f"{shape[1]} (saved as loaded)", raw)
    if kind == "simple" and _leaf_label(shape[1]) and _leaf_label(shape[2]):
        a, b, r = _leaf_label(shape[1]), _leaf_label(shape[2]), shape[3]
        if a != b:
            alpha = Coef(1.0) + r * -1.0
            per_block = not r.uniform()
            formula = (
                f"{a}*{'r' if per_block else g(r.default)} + {b}*(1-{'r' if per_block else g(r.default)})"
            )
            blocks = _block_values(alpha) if per_block else None
            if per_block:
                formula += f"; r per block {mbw_text(_block_values(r))}"
            used = sorted(used, key=lambda p: (p.label != a, p.label != b))
            return Claim(
                "ComfyUI", "weighted_sum", used, alpha.default, blocks, formula, raw, terms=root.terms
            )
    if kind == "add":
        for x, y in ((shape[1], shape[2]), (shape[2], shape[1])):
            if _leaf_label(x) and y[0] == "sub" and _leaf_label(y[1]) and _leaf_label(y[2]):
                abc = [_leaf_label(x), _leaf_label(y[1]), _leaf_label(y[2])]
                if len(set(abc)) == 3:
                    order = {label: i for i, label in enumerate(abc)}
                    used = sorted(used, key=lambda p: order.get(p.label, 3))
                    return Claim(
                        "ComfyUI",
                        "add_difference",
                        used,
                        y[3],
                        None,
                        formula_of("add_difference", abc, y[3]),
                        raw,
                        terms=root.terms,
                    )
    method, alpha = classify(root.terms)
    labels = list(root.terms)
    formula = formula_of(method, labels, alpha) if method != "linear" else linear_formula(root.terms)
    return Claim("ComfyUI", method, used, alpha, None, formula, raw, terms=root.terms)
