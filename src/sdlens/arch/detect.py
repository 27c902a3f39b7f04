"""The steps of identification: split keys into components, read structural features, match the records.
``sdlens.arch.identify.identify`` runs them in order; commands call that, not these.

Works from names and shapes only (no tensor data). Never falls back silently: what matches nothing is
``unknown``, with the reasons.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any

from sdlens.arch import families
from sdlens.arch import registry as R
from sdlens.arch.record import Feature
from sdlens.io.base import TensorInfo
from sdlens.io.quant import stored_nbytes


@dataclass
class Component:
    """The keys of one component, relative to its prefix, and the layout they are written in."""

    id: str
    prefix: str
    convention: str
    keys: dict[str, TensorInfo] = field(default_factory=dict)  # relative key -> info
    full_keys: list[str] = field(default_factory=list)

    @property
    def params(self) -> int:
        return sum(t.numel for t in self.keys.values())

    @property
    def nbytes(self) -> int:
        """Bytes in the file (a quantised tensor's blocks and companions)."""
        return sum(map(stored_nbytes, self.keys.values()))


@dataclass
class Split:
    components: dict[str, Component]
    unknown: dict[str, TensorInfo]  # full key -> info, for keys that belong to no known component
    conventions: list[str]


@cache
def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


_LIT = r"(?:[A-Za-z0-9_]|\\\.)+"  # a literal run of a key pattern: word characters and "\."
_ANCHORED = re.compile(rf"\^(?:(?P<lit>{_LIT})|\((?:\?:)?(?P<alts>{_LIT}(?:\|{_LIT})*)\))")


def _top_level_bar(pattern: str) -> bool:
    """Whether ``pattern`` has an alternation outside any group (``^a|b``: the anchor binds one side only)."""
    depth, i = 0, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            return True
        i += 1
    return False


@cache
def _first_segments(pattern: str) -> frozenset[str] | None:
    r"""The first dotted segments that every key matching ``pattern`` starts with, when the pattern says so
    (``^input_blocks\.`` → {input_blocks}; ``^(img_in|x_embedder)\.weight$`` → {img_in, x_embedder}); None
    when it does not (then every key is tried)."""
    m = _ANCHORED.match(pattern)
    if m is None or _top_level_bar(pattern):
        return None
    after = pattern[m.end() : m.end() + 2]
    if after[:1] in ("?", "*", "+", "{"):
        return None  # a quantifier on the literal's last character
    ends = after == "\\." or after[:1] == "$" or not after  # the literal is followed by "." or the key's end
    segs = set()
    for lit in (m.group("lit"),) if m.group("lit") else m.group("alts").split("|"):
        lit = lit.replace("\\.", ".")
        if "." not in lit and not ends:
            return None  # "^pos" could go on as "^pos_embed": no segment known
        segs.add(lit.split(".", 1)[0])
    return frozenset(segs)


class _Keys:
    r"""Keys searched by many patterns: an anchored pattern (``^input_blocks\.``) is only tried on the keys of
    its first segment, so a header of 200,000 keys costs a few full scans, not one per pattern."""

    def __init__(self, keys: Iterable[str]):
        self.keys = list(keys)
        self.by_segment: dict[str, list[str]] = {}
        for k in self.keys:
            self.by_segment.setdefault(k.split(".", 1)[0], []).append(k)

    def hits(self, pattern: str) -> list[str]:
        rx, segs = _rx(pattern), _first_segments(pattern)
        if segs is None:
            return [k for k in self.keys if rx.search(k)]
        return [k for seg in sorted(segs) for k in self.by_segment.get(seg, ()) if rx.search(k)]


_PREFIXES_LONGEST_FIRST = sorted(R.PREFIXES, key=lambda p: -len(p.prefix))
_ANY_PREFIX = tuple(p.prefix for p in _PREFIXES_LONGEST_FIRST)  # one C-level test rejects most bare keys


def _match_prefix(key: str) -> tuple[R.Prefix, str] | None:
    if not key.startswith(_ANY_PREFIX):
        return None
    for p in _PREFIXES_LONGEST_FIRST:
        if key.startswith(p.prefix):
            rel = key[len(p.prefix) :]
            if p.exclude and _rx(p.exclude).search(rel):
                continue
            return p, rel
    return None


def text_encoder_kind(rel_keys: list[str], default: str = "text_encoder") -> str:
    """CLIP-L / OpenCLIP-H / CLIP-G / T5 from the number of layers, which holds for any width."""
    for pattern, by_count in R.TEXT_ENCODER_LAYERS:
        rx = _rx(pattern)
        layers = {m.group(1) for k in rel_keys if (m := rx.match(k))}
        if layers:
            return by_count.get(len(layers), default)
    return default


def text_encoder_layout(rel_keys: list[str]) -> str:
    for pattern, layout in R.TEXT_ENCODER_LAYOUTS:
        if any(_rx(pattern).match(k) for k in rel_keys):
            return layout
    return "unknown"


def split_components(tensors: Mapping[str, TensorInfo]) -> Split:
    """Assign every key to a component (or to ``unknown``) using the registry's prefix and bare tables."""
    comps: dict[str, Component] = {}
    leftovers: dict[str, TensorInfo] = {}

    def put(cid: str, prefix: str, conv: str, rel: str, full: str, info: TensorInfo) -> None:
        c = comps.setdefault(cid, Component(cid, prefix, conv))
        c.keys[rel] = info
        c.full_keys.append(full)

    pending_te: dict[str, list[tuple[str, str, TensorInfo]]] = {}
    for key, info in tensors.items():
        if key in R.SCHEDULE_KEYS:
            put("schedule", "", "ldm", key, key, info)
            continue
        if key in R.MARKER_KEYS:
            put("markers", "", "sgm", key, key, info)
            continue
        m = _match_prefix(key)
        if m is None:
            leftovers[key] = info
            continue
        p, rel = m
        if p.component == "vae":
            side = "vae_decoder" if rel.startswith(("decoder.", "post_quant_conv.")) else "vae_encoder"
            put(side, p.prefix, p.convention, rel, key, info)
        elif p.component == "te?":
            pending_te.setdefault(p.prefix, []).append((rel, key, info))
        else:
            put(p.component, p.prefix, p.convention, rel, key, info)
    # diffusers text_encoder slots: the kind comes from the structure
    for prefix, items in pending_te.items():
        kind = text_encoder_kind([rel for rel, _, _ in items])
        for rel, key, info in items:
            put(
                kind if kind not in comps or comps[kind].prefix == prefix else f"{kind}@{prefix}",
                prefix,
                "diffusers",
                rel,
                key,
                info,
            )

    unknown: dict[str, TensorInfo] = {}
    if leftovers:
        bare = _bare_component(list(leftovers))
        if bare is None:
            unknown = leftovers
        else:
            cid, conv = bare
            if cid == "te?":
                cid = text_encoder_kind(list(leftovers))
            for key, info in leftovers.items():
                if cid == "vae":
                    side = (
                        "vae_decoder" if key.startswith(("decoder.", "post_quant_conv.")) else "vae_encoder"
                    )
                    put(side, "", conv, key, key, info)
                else:
                    put(cid, "", conv, key, key, info)
    conventions = _conventions(comps)
    return Split(comps, unknown, conventions)


def _bare_component(keys: list[str]) -> tuple[str, str] | None:
    searched = _Keys(keys)
    for pattern, cid, conv in R.BARE_SIGNATURES:
        if searched.hits(pattern):
            return cid, conv
    return None


def _conventions(comps: dict[str, Component]) -> list[str]:
    names = []
    for c in comps.values():
        if c.id in ("schedule", "markers"):
            continue
        conv = c.convention
        if c.id in R.TEXT_ENCODER_KINDS and conv not in ("nai",):
            layout = text_encoder_layout(list(c.keys))
            if conv == "bare" and layout != "unknown":
                conv = f"bare ({layout})"
        if c.id.startswith("vae") and conv in ("bare", "diffusers"):
            conv = (
                "diffusers"
                if any(k.startswith(("encoder.down_blocks", "decoder.up_blocks")) for k in c.keys)
                else "ldm"
            )
        if conv not in names:
            names.append(conv)
    return names


# --------------------------------------------------------------------------- features and families


def read_features(
    keys: Mapping[str, TensorInfo],
    features: tuple[Feature, ...] | None = None,
    markers: Iterable[str] = (),
) -> dict[str, Any]:
    """Evaluate the records' features (``sdlens.arch.families.features``, or ``features``) on a component's
    relative keys (where several keys match a shape feature, the first in natural order decides, for
    determinism), then the records' derived features. ``marker`` features are read off the file's top-level
    marker keys (``markers``: the split's ``markers`` component), not the component's."""
    out: dict[str, Any] = {}
    searched = _Keys(keys)
    marker_keys = list(markers)
    for f in families.features() if features is None else features:
        rx = _rx(f.pattern)
        if f.op == "marker":
            out[f.name] = any(rx.search(k) for k in marker_keys)
            continue
        hits = searched.hits(f.pattern)
        if f.op == "present":
            out[f.name] = bool(hits)
        elif f.op == "dim":
            shape = keys[min(hits, key=_natural)].shape if hits else ()
            out[f.name] = shape[f.arg] if len(shape) > f.arg else None
        elif f.op == "ndim":
            out[f.name] = len(keys[min(hits, key=_natural)].shape) if hits else None
        elif f.op == "count":
            out[f.name] = len({rx.search(k).group(1) for k in hits}) or None
        elif f.op == "keys":
            out[f.name] = len(hits)
    for name, fn in families.derived().items():
        out[name] = fn(out)
    return out


def config_markers(configs: Mapping[str, Any] | None) -> list[str]:
    """A diffusers folder's ``model_index.json`` as marker names, one per listed part: ``scheduler=<class>``."""
    index = (configs or {}).get("model_index") or {}
    if not isinstance(index, Mapping):
        return []
    return [
        f"{slot}={v[1]}"
        for slot, v in index.items()
        if isinstance(v, list) and len(v) == 2 and isinstance(v[1], str)
    ]


def denoiser_features(split: Split, configs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The features of ``split``'s denoiser, marker features included (what ``match_family`` is given): the
    file's top-level marker keys and, for a diffusers folder (``configs``), its model_index entries."""
    comps = split.components
    markers = [*(comps["markers"].keys if "markers" in comps else ()), *config_markers(configs)]
    return read_features(comps["denoiser"].keys, markers=markers)


def _natural(key: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key))


def _holds(value: Any, want: Any) -> bool:
    """``want`` is a value, or (op, value) with op in ne / ge / le / in."""
    if isinstance(want, tuple) and len(want) == 2 and want[0] in ("ne", "ge", "le", "in"):
        op, arg = want
        if op == "ne":
            return value != arg
        if value is None:
            return False
        if op == "ge":
            return value >= arg
        if op == "le":
            return value <= arg
        return value in arg
    return value == want


def _say(name: str, value: Any) -> str:
    text = families.feature_text().get(name, name)
    if value is True:
        return f"{text}: present"
    if value is False or value is None:
        return f"{text}: absent"
    return f"{text} = {value}"


@dataclass
class FamilyMatch:
    family: str  # record id (sdlens.arch.families), or "unknown"
    name: str
    confidence: str  # high | medium | low
    reasons: list[str]
    variants: list[str]
    nonstandard: list[str]  # released-model values this file differs from (tiny, distilled, pruned widths)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def match_family(features: dict[str, Any], allowed: tuple[str, ...] | None = None) -> FamilyMatch:
    """The family whose required features all hold; among several, the one with most standard values."""
    candidates = []
    for fam in families.FAMILIES:
        if allowed is not None and fam.id not in allowed:
            continue
        if all(_holds(features.get(k), v) for k, v in fam.requires.items()):
            std_ok = [k for k, v in fam.standard.items() if features.get(k) == v]
            candidates.append((len(std_ok) - len(fam.standard), len(fam.requires), fam))
    if not candidates:
        return FamilyMatch(
            "unknown", "unknown", "low", ["denoiser structure matches no known family"], [], []
        )
    candidates.sort(key=lambda c: (c[0], c[1]), reverse=True)
    fam = candidates[0][2]
    reasons = [_say(k, features.get(k)) for k in fam.requires]
    nonstandard = [
        f"{families.feature_text().get(k, k)} {features.get(k)} (released model: {v})"
        for k, v in fam.standard.items()
        if features.get(k) != v
    ]
    reasons += [
        _say(k, features.get(k))
        for k, v in fam.standard.items()
        if features.get(k) == v and k not in fam.requires
    ]
    variants = [v.name for v in fam.variants if features.get(v.feature) == v.value]
    confidence = "high" if not nonstandard else "medium"
    if len(candidates) > 1 and candidates[1][:2] == candidates[0][:2]:
        confidence = "low"
        reasons.append(
            "also consistent with "
            + ", ".join(c[2].name for c in candidates[1:] if c[:2] == candidates[0][:2])
        )
    return FamilyMatch(fam.id, fam.name, confidence, reasons, variants, nonstandard)


def family_from_text_encoders(kinds: list[str]) -> tuple[str, ...]:
    """Families whose text-encoder set equals ``kinds`` (for files holding text encoders only)."""
    ks = set(kinds)
    return tuple(
        f.id for f in families.FAMILIES if f.text_encoders and not f.base and set(f.text_encoder_kinds) == ks
    )
