"""CLIP text encoder layouts: HF ``CLIPTextModel(WithProjection)``, LDM/A1111 (HF layout under a prefix),
NAI-renamed (``text_model.`` dropped) and open_clip (``transformer.resblocks.N``, fused q/k/v).

Keys here carry no checkpoint prefix unless a function takes one (``cond_stage_model.model.``,
``conditioner.embedders.1.model.`` ... are added by callers).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

import torch

LDM_CLIP_PREFIX = "cond_stage_model.transformer."
NAI_PREFIX = LDM_CLIP_PREFIX
POSITION_IDS = "text_model.embeddings.position_ids"
# trained open_clip logit scale found in SD2 / SDXL files: ln(100)
LOGIT_SCALE = math.log(100.0)

# HF sub-module (inside text_model.encoder.layers.N.) -> open_clip (inside transformer.resblocks.N.)
_LAYER_RENAMES: dict[str, str] = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_TOP_RENAMES: dict[str, str] = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}
_HF_LAYER = re.compile(r"text_model\.encoder\.layers\.(\d+)\.(.+)$")
_OC_LAYER = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)$")
# open_clip entries with no HF counterpart
OPENCLIP_EXTRAS = ("logit_scale", "attn_mask")


def normalize_hf_clip(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Canonical HF file layout: ``text_model.*`` (+ ``text_projection.weight``). transformers >= 5.6
    ``CLIPTextModel.state_dict()`` has no ``text_model.`` level; its keys get it back here."""
    return {
        k if k.startswith(("text_model.", "text_projection.")) else f"text_model.{k}": v
        for k, v in sd.items()
    }


def clip_hf_to_ldm(
    sd: Mapping[str, torch.Tensor], *, prefix: str = "", position_ids: bool = True
) -> dict[str, torch.Tensor]:
    """HF CLIPTextModel state dict -> LDM / A1111 layout: the same keys under ``prefix`` (e.g.
    ``cond_stage_model.transformer.``), plus the ``text_model.embeddings.position_ids`` buffer (int64 [1, N])
    real checkpoints carry, unless ``position_ids=False`` or it is already there."""
    sd = normalize_hf_clip(sd)
    out = {prefix + k: v for k, v in sd.items()}
    pos = sd.get("text_model.embeddings.position_embedding.weight")
    if position_ids and pos is not None and POSITION_IDS not in sd:
        out[prefix + POSITION_IDS] = torch.arange(pos.shape[0], dtype=torch.int64, device=pos.device)[None]
    return out


def clip_ldm_to_hf(
    sd: Mapping[str, torch.Tensor], *, prefix: str = "", position_ids: bool = False
) -> dict[str, torch.Tensor]:
    """Inverse of :func:`clip_hf_to_ldm`: keep keys under ``prefix`` (stripped); NAI-renamed keys are fixed;
    ``position_ids`` is dropped unless asked for (transformers keeps it as a non-persistent buffer)."""
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        if not rest.startswith("text_model.") and not rest.startswith("text_projection"):
            rest = "text_model." + rest
        if rest == POSITION_IDS and not position_ids:
            continue
        out[rest] = t
    return out


def is_nai_clip(keys: Iterable[str]) -> bool:
    """True if the keys use the NAI-renamed CLIP layout (``cond_stage_model.transformer.X`` with no
    ``text_model.`` level)."""
    return any(k.startswith(NAI_PREFIX) and not k.startswith(NAI_PREFIX + "text_model.") for k in keys)


def nai_to_hf_clip_key(key: str) -> str:
    """``cond_stage_model.transformer.X`` -> ``cond_stage_model.transformer.text_model.X``; other keys unchanged."""
    if key.startswith(NAI_PREFIX) and not key.startswith(NAI_PREFIX + "text_model."):
        return NAI_PREFIX + "text_model." + key[len(NAI_PREFIX) :]
    return key


def hf_to_nai_clip_key(key: str) -> str:
    """``cond_stage_model.transformer.text_model.X`` -> ``cond_stage_model.transformer.X``; others unchanged."""
    full = NAI_PREFIX + "text_model."
    return NAI_PREFIX + key[len(full) :] if key.startswith(full) else key


def _hf_layer_to_openclip(
    key: str,
    n: int,
    rest: str,
    t: torch.Tensor,
    out: dict[str, torch.Tensor],
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]],
) -> None:
    """One ``text_model.encoder.layers.N.<rest>`` entry: q/k/v kept aside for fusing, the rest renamed."""
    if qm := re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest):
        qkv.setdefault((n, qm.group(2)), {})[qm.group(1)] = t
        return
    for old, new in _LAYER_RENAMES.items():
        if rest.startswith(old + "."):
            out[f"transformer.resblocks.{n}.{new}{rest[len(old) :]}"] = t
            return
    raise KeyError(key)


def _fuse_qkv(out: dict[str, torch.Tensor], qkv: dict[tuple[int, str], dict[str, torch.Tensor]]) -> None:
    for (n, kind), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            raise KeyError(f"layer {n}: incomplete q/k/v {kind}")
        out[f"transformer.resblocks.{n}.attn.in_proj_{kind}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]]
        )


def _append_layer_copies(out: dict[str, torch.Tensor], last: int, extra_layers: int) -> None:
    """Append ``extra_layers`` clones of resblock ``last``."""
    if last < 0:
        raise ValueError("no layers to copy for extra_layers")
    src = f"transformer.resblocks.{last}."
    block = {k[len(src) :]: v for k, v in out.items() if k.startswith(src)}
    for i in range(1, extra_layers + 1):
        for rest, v in block.items():
            out[f"transformer.resblocks.{last + i}.{rest}"] = v.clone()


def _logit_scale_tensor(logit_scale: float | torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
    return (
        logit_scale
        if isinstance(logit_scale, torch.Tensor)
        else torch.tensor(
            float(logit_scale),
            dtype=ref.dtype if ref is not None else torch.float32,
            device=ref.device if ref is not None else None,
        )
    )


def clip_hf_to_openclip(
    sd: Mapping[str, torch.Tensor],
    *,
    extra_layers: int = 0,
    logit_scale: float | torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """HF CLIPTextModel(WithProjection) state dict -> open_clip text layout (no prefix).

    q/k/v are concatenated into ``attn.in_proj_weight`` / ``in_proj_bias``; ``text_projection.weight`` is
    transposed into ``text_projection``. ``extra_layers`` appends that many resblocks (copies of the last
    one) for files that hold more layers than the model runs (SD2 stores 24, uses 23). ``logit_scale`` adds
    the scalar ``logit_scale`` entry real SD2 / SDXL files carry.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, t in normalize_hf_clip(sd).items():
        if key == POSITION_IDS:
            continue
        if key in _TOP_RENAMES:
            out[_TOP_RENAMES[key]] = t
        elif key == "text_projection.weight":
            out["text_projection"] = t.T.contiguous()
        elif m := _HF_LAYER.match(key):
            _hf_layer_to_openclip(key, int(m.group(1)), m.group(2), t, out, qkv)
        else:
            raise KeyError(key)
    _fuse_qkv(out, qkv)
    if extra_layers:
        _append_layer_copies(out, max((n for n, _ in qkv), default=-1), extra_layers)
    if logit_scale is not None:
        out["logit_scale"] = _logit_scale_tensor(logit_scale, out.get("ln_final.weight"))
    return out


def openclip_to_clip_hf(
    sd: Mapping[str, torch.Tensor], num_layers: int, *, projection: bool | None = None
) -> dict[str, torch.Tensor]:
    """open_clip text layout (no prefix) -> HF CLIPTextModel(WithProjection) state dict.

    Resblocks at index >= ``num_layers`` are dropped (SD2's unused 24th), as are ``logit_scale`` and
    ``attn_mask``. ``text_projection`` becomes ``text_projection.weight`` (transposed) when ``projection`` is
    True, or when None and the entry is present; pass False for a plain CLIPTextModel (SD2).
    """
    rev_top = {v: k for k, v in _TOP_RENAMES.items()}
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        if key in OPENCLIP_EXTRAS:
            continue
        if key in rev_top:
            out[rev_top[key]] = t
        elif key == "text_projection":
            if projection is not False:
                out["text_projection.weight"] = t.T.contiguous()
        elif m := _OC_LAYER.match(key):
            n, rest = int(m.group(1)), m.group(2)
            if n >= num_layers:
                continue
            base = f"text_model.encoder.layers.{n}."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]
                for name, chunk in zip("qkv", t.chunk(3, dim=0), strict=True):
                    out[f"{base}self_attn.{name}_proj.{kind}"] = chunk
                continue
            for old, new in _LAYER_RENAMES.items():
                if rest.startswith(new + "."):
                    out[base + old + rest[len(new) :]] = t
                    break
            else:
                raise KeyError(key)
        else:
            raise KeyError(key)
    if projection and "text_projection.weight" not in out:
        raise KeyError("text_projection")
    return out
