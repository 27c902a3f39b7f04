"""Text encoders of a checkpoint as transformers models: found through the canonical index (any key convention:
LDM, sgm, NAI-renamed, open_clip, diffusers, ComfyUI), configured from the tensors' shapes (plus a diffusers
folder's ``config.json`` when there is one), built on the meta device and filled tensor by tensor from the lazy
checkpoint with ``load_state_dict(assign=True)``. Nothing but the chosen encoder's tensors is read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sdlens.arch import configs as C
from sdlens.arch import families
from sdlens.arch import registry as R
from sdlens.arch.canonical import CanonRef, canonical_index, read_canonical
from sdlens.arch.detect import family_from_text_encoders
from sdlens.arch.identify import identify
from sdlens.errors import SdlensError
from sdlens.io.base import Checkpoint
from sdlens.words import plural

if TYPE_CHECKING:
    from sdlens.io.base import Checkpoint

ENCODER_KINDS = ("clip_l", "clip_g", "openclip_h", "t5")
_CLIP_LAYER = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.")
_T5_LAYER = re.compile(r"^encoder\.block\.(\d+)\.")
# entries a file may carry that the transformers model does not have (or keeps as a non-persistent buffer)
_IGNORED = re.compile(r"(position_ids|logit_scale|attn_mask)$")


@dataclass
class EncoderSpec:
    """One text encoder found in a checkpoint: where its tensors are and how to build its model."""

    cid: str  # component id in the canonical index (clip_l, clip_g, openclip_h, t5, text_encoder, clip_l@…)
    kind: str  # clip_l | clip_g | openclip_h | t5 | clip (a CLIP of unknown size)
    arch: str  # clip | t5
    cls_name: str  # transformers class
    config: dict[str, Any]
    refs: dict[
        str, CanonRef
    ]  # transformers-layout key (text_model.… / encoder.block.… / shared.weight) -> data
    skipped: list[str] = field(default_factory=list)  # file tensors deliberately not loaded
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return R.COMPONENT_LABELS.get(self.kind, self.kind)

    @property
    def num_layers(self) -> int:
        return int(self.config["num_hidden_layers" if self.arch == "clip" else "num_layers"])

    @property
    def vocab_size(self) -> int:
        return int(self.config["vocab_size"])

    @property
    def max_length(self) -> int:
        return int(self.config.get("max_position_embeddings", 77)) if self.arch == "clip" else 77

    def default_layer(self, family: str) -> str:
        """The hidden state ``family``'s pipeline conditions on with this encoder (its record's text-encoder
        slot); ``last`` for unknown families and encoders the pipeline does not have."""
        fam = families.get(family)
        slot = next((t for t in fam.text_encoders if t.kind == self.kind), None) if fam else None
        return slot.layer if slot else "last"

    def to_dict(self) -> dict[str, Any]:
        return {
            "component": self.cid,
            "kind": self.kind,
            "class": self.cls_name,
            "layers": self.num_layers,
            "vocab_size": self.vocab_size,
            "notes": list(self.notes),
        }


def _strip(key: str) -> str:
    key = key.removeprefix("transformer.")
    if key.startswith(("encoder.layers.", "embeddings.", "final_layer_norm.")):
        key = "text_model." + key
    return key


def find_text_encoders(ck: Checkpoint) -> tuple[list[EncoderSpec], str]:
    """The text encoders of an open checkpoint (headers only), and the detected family id: the denoiser's,
    else the first family (in record order) whose text encoders are exactly the file's."""
    index, family = canonical_index(ck.tensors, ck.configs)
    groups: dict[str, dict[str, CanonRef]] = {}
    for name, ref in index.items():
        cid, _, key = name.partition("/")
        base = cid.split("@")[0]
        if base in R.TEXT_ENCODER_KINDS or base == "text_encoder":
            groups.setdefault(cid, {})[_strip(key)] = ref
    if family == "unknown" and groups:
        fits = family_from_text_encoders(sorted({c.split("@")[0] for c in groups}))
        family = fits[0] if fits else "unknown"
    folder_cfg: dict[str, dict] = {}
    configs = ck.configs
    if configs:
        comps = identify(ck.tensors, configs, ck.metadata).split.components
        for cid in groups:
            comp = comps.get(cid)
            part = comp.prefix.rstrip(".") if comp is not None else ""
            if isinstance(configs.get(part or "model"), dict):
                folder_cfg[cid] = configs[part or "model"]
    specs = [_spec(ck, cid, refs, folder_cfg.get(cid)) for cid, refs in groups.items()]
    order = {k: i for i, k in enumerate(("clip_l", "openclip_h", "clip_g", "clip", "t5"))}
    specs.sort(key=lambda s: (order.get(s.kind, 9), s.cid))
    return specs, family


def _count(rx: re.Pattern[str], keys: Mapping[str, Any]) -> int:
    return len({m.group(1) for k in keys if (m := rx.match(k))})


def _shape(refs: Mapping[str, CanonRef], key: str, ck: Checkpoint, cid: str) -> tuple[int, ...]:
    if key not in refs:
        raise SdlensError(ck.path, f"text encoder {cid} is incomplete: no {key}")
    return refs[key].shape


def _clip_heads(hidden: int, kind: str, folder: dict | None, notes: list[str]) -> int:
    if folder and folder.get("num_attention_heads"):
        return int(folder["num_attention_heads"])
    if kind in C.TEXT_ENCODERS and C.TEXT_ENCODERS[kind][1]["hidden_size"] == hidden:
        return int(C.TEXT_ENCODERS[kind][1]["num_attention_heads"])
    for _, cfg in C.TEXT_ENCODERS.values():
        if cfg.get("hidden_size") == hidden:
            return int(cfg["num_attention_heads"])
    heads = hidden // 64 if hidden % 64 == 0 and hidden >= 256 else (2 if hidden % 2 == 0 else 1)
    notes.append(f"width {hidden} is not a released one: {heads} attention heads assumed")
    return heads


def _spec(ck: Checkpoint, cid: str, refs: dict[str, CanonRef], folder: dict | None) -> EncoderSpec:
    base = cid.split("@")[0]
    is_t5 = base == "t5" or "shared.weight" in refs or any(_T5_LAYER.match(k) for k in refs)
    notes: list[str] = []
    skipped: list[str] = []
    if is_t5:
        return _t5_spec(ck, cid, refs, folder)
    kind = base if base in ENCODER_KINDS else "clip"
    tok = _shape(refs, "text_model.embeddings.token_embedding.weight", ck, cid)
    pos = _shape(refs, "text_model.embeddings.position_embedding.weight", ck, cid)
    n = _count(_CLIP_LAYER, refs)
    fc1 = _shape(refs, "text_model.encoder.layers.0.mlp.fc1.weight", ck, cid)
    released = dict(C.TEXT_ENCODERS[kind][1]) if kind in C.TEXT_ENCODERS else {}
    cfg: dict[str, Any] = {
        "vocab_size": tok[0],
        "hidden_size": tok[1],
        "intermediate_size": fc1[0],
        "num_hidden_layers": n,
        "max_position_embeddings": pos[0],
        "num_attention_heads": _clip_heads(tok[1], kind, folder, notes),
        "hidden_act": (folder or {}).get("hidden_act")
        or released.get("hidden_act")
        or ("quick_gelu" if tok[1] == 768 else "gelu"),
    }
    if folder and folder.get("layer_norm_eps"):
        cfg["layer_norm_eps"] = folder["layer_norm_eps"]
    if tok[0] != released.get(
        "vocab_size", tok[0]
    ):  # a test-size vocabulary: special ids at its end, as in CLIP
        cfg.update(bos_token_id=tok[0] - 2, eos_token_id=tok[0] - 1, pad_token_id=tok[0] - 1)
    run_layers = n
    if kind == "openclip_h" and n == released.get("num_hidden_layers", n) + 1:
        run_layers = n - 1
        notes.append(
            f"the file's open_clip layer {n - 1} is not used by SD2 (as in the pipeline): not loaded"
        )
    cfg["num_hidden_layers"] = run_layers
    keep: dict[str, CanonRef] = {}
    for k, ref in refs.items():
        m = _CLIP_LAYER.match(k)
        if (m and int(m.group(1)) >= run_layers) or _IGNORED.search(k):
            skipped.append(k)
        elif k == "text_projection.weight" and kind == "openclip_h":
            skipped.append(k)  # SD2 runs CLIPTextModel: the projection is not part of it
        else:
            keep[k] = ref
    cls_name = "CLIPTextModel"
    if "text_projection.weight" in keep:
        cls_name = "CLIPTextModelWithProjection"
        cfg["projection_dim"] = keep["text_projection.weight"].shape[0]
    return EncoderSpec(cid, kind, "clip", cls_name, cfg, keep, skipped, notes)


def _t5_spec(ck: Checkpoint, cid: str, refs: dict[str, CanonRef], folder: dict | None) -> EncoderSpec:
    skipped = [k for k in refs if _IGNORED.search(k)]
    refs = {k: v for k, v in refs.items() if k not in skipped}
    emb_key = "shared.weight" if "shared.weight" in refs else "encoder.embed_tokens.weight"
    emb = _shape(refs, emb_key, ck, cid)
    q = _shape(refs, "encoder.block.0.layer.0.SelfAttention.q.weight", ck, cid)
    rel = _shape(refs, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", ck, cid)
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in refs
    wi = _shape(
        refs, "encoder.block.0.layer.1.DenseReluDense." + ("wi_0.weight" if gated else "wi.weight"), ck, cid
    )
    heads = rel[1]
    cfg: dict[str, Any] = {
        "vocab_size": emb[0],
        "d_model": emb[1],
        "d_ff": wi[0],
        "d_kv": q[0] // heads,
        "num_heads": heads,
        "num_layers": _count(_T5_LAYER, refs),
        "relative_attention_num_buckets": rel[0],
        "feed_forward_proj": (folder or {}).get("feed_forward_proj") or ("gated-gelu" if gated else "relu"),
        "is_encoder_decoder": False,
        "use_cache": False,
    }
    for k in ("relative_attention_max_distance", "layer_norm_epsilon"):
        if folder and folder.get(k):
            cfg[k] = folder[k]
    return EncoderSpec(cid, "t5", "t5", "T5EncoderModel", cfg, refs, skipped, [])


def build_meta(spec: EncoderSpec):
    """The transformers model of ``spec`` on the meta device (no memory, no init)."""
    import torch
    import transformers

    config_cls = transformers.T5Config if spec.arch == "t5" else transformers.CLIPTextConfig
    cls = getattr(transformers, spec.cls_name)
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        with torch.device("meta"):
            return cls(config_cls(**spec.config))
    finally:
        transformers.logging.set_verbosity(level)


def _target(key: str, model_keys: set[str]) -> str | None:
    for cand in (key, key.removeprefix("text_model."), "text_model." + key):
        if cand in model_keys:
            return cand
    return None


def load_text_encoder(ck: Checkpoint, spec: EncoderSpec, dtype=None):
    """Build ``spec``'s model and fill it from ``ck``, one tensor read at a time (float32 by default).

    Raises :class:`SdlensError` naming what is missing when the file's encoder is incomplete."""
    import torch

    dtype = dtype or torch.float32
    model = build_meta(spec)
    model_keys = set(model.state_dict().keys())
    state: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, ref in spec.refs.items():
        tgt = _target(key, model_keys)
        if tgt is None:
            unexpected.append(key)
            continue
        t = read_canonical(ck, ref, copy=False)
        state[tgt] = t.to(dtype).contiguous() if t.dtype != dtype else t.contiguous().clone()
    if spec.arch == "t5":  # the input embedding is tied to shared.weight; files keep one of the two
        for a, b in (
            ("shared.weight", "encoder.embed_tokens.weight"),
            ("encoder.embed_tokens.weight", "shared.weight"),
        ):
            if a in state and b not in state and b in model_keys:
                state[b] = state[a]
    missing = sorted(model_keys - set(state))
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise SdlensError(
            ck.path,
            f"text encoder {spec.label} ({spec.cid}) is incomplete: missing {', '.join(missing[:3])}{more}",
        )
    if unexpected:
        spec.notes.append(
            f"{plural(len(unexpected), 'tensor')} not used by {spec.cls_name}: {', '.join(unexpected[:3])}"
        )
    model.load_state_dict(state, strict=True, assign=True)
    del state
    for name, buf in list(model.named_buffers()):
        if buf.device.type != "meta":
            continue
        owner = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        leaf = name.rpartition(".")[2]
        if leaf == "position_ids":
            owner.register_buffer(
                leaf, torch.arange(buf.shape[-1]).expand(buf.shape).clone(), persistent=False
            )
        else:
            raise SdlensError(ck.path, f"text encoder {spec.label}: cannot initialise buffer {name}")
    if spec.arch == "t5" and hasattr(model, "encoder"):
        model.encoder.embed_tokens = model.shared
    return model.eval()
