"""A denoiser config from a checkpoint's shapes (or a diffusers ``config.json``), so that fine-tunes with
other widths or depths — SSD-1B / Vega / KOALA-style SDXL distillations, the tiny test zoo — are measured as
they are. Only the header is read.

What shapes cannot tell is taken from the detected family: UNet attention heads (SD1: 8 heads; SD2 / SDXL:
64-wide heads), DiT head width (FLUX 128, SD3 64). The built model's parameter count is checked against the
file's; a difference is reported, never hidden.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sdlens.arch import build as B
from sdlens.arch import configs as C
from sdlens.arch import families
from sdlens.errors import SdlensError
from sdlens.io.base import TensorInfo

# diffusers class -> pipeline key whose text encoders / VAE / defaults go with it (refined by _pipeline_for)
_CLASS_PIPELINE = {
    "SD3Transformer2DModel": "sd3",
    "FluxTransformer2DModel": "flux",
    "AuraFlowTransformer2DModel": "auraflow",
    "HunyuanDiT2DModel": "hunyuandit",
}
_FAMILY_PIPELINE = {"sd1": "sd1", "sd2": "sd2", "sdxl": "sdxl", "sdxl_refiner": "sdxl", "sd3": "sd3", "sd35m": "sd3",
                    "sd35": "sd35", "flux_dev": "flux", "flux_schnell": "flux", "auraflow": "auraflow",
                    "hunyuandit": "hunyuandit"}


def _pipeline_for(cls_name: str, cfg: Mapping[str, Any]) -> str:
    if cls_name == "UNet2DConditionModel":
        ctx = cfg.get("cross_attention_dim", 1280)
        ctx = ctx[0] if isinstance(ctx, list) and ctx else ctx
        if cfg.get("addition_embed_type") == "text_time":
            return "sdxl"
        return {768: "sd1", 1024: "sd2"}.get(ctx, "sd2" if cfg.get("use_linear_projection") else "sd1")
    if cls_name == "SD3Transformer2DModel":
        return "sd35" if cfg.get("num_layers", 24) >= 38 else "sd3"
    if cls_name in _CLASS_PIPELINE:
        return _CLASS_PIPELINE[cls_name]
    raise SdlensError(None, f"sdlens arch does not know the diffusers class {cls_name!r}")


def _spec(pipeline: str, cls_name: str, config: dict[str, Any], source: str, family: str | None = None,
          notes: list[str] | None = None, reference: int | None = None) -> B.ArchSpec:
    base = B.released_spec(pipeline)
    spec = dataclasses.replace(base, cls_name=cls_name, config=config, source=source, family=family or base.family)
    if cls_name == "UNet2DConditionModel":
        sample = config.get("sample_size")
        if isinstance(sample, int) and sample * 8 != base.res[0]:
            spec = dataclasses.replace(spec, res=(sample * 8, sample * 8))
    if cls_name == "FluxTransformer2DModel" and not config.get("guidance_embeds", False):
        spec = dataclasses.replace(spec, name="FLUX.1-schnell", family="flux_schnell", steps=4,
                                   text_encoders=(("clip_l", 77), ("t5", 256)), text_tokens=256)
    return dataclasses.replace(spec, notes=tuple(notes or ()), reference_params=reference)


def spec_from_config_json(path: Path) -> B.ArchSpec:
    from sdlens.io.config_check import check_config
    from sdlens.io.folders import read_json

    cfg = read_json(path, "config")  # bounded, type-checked: one line for any bad file
    if not isinstance(cfg, dict):
        raise SdlensError(path, "not a diffusers config (a JSON object with _class_name)")
    check_config(cfg, path)
    cls_name = cfg.get("_class_name")
    if cls_name is None:
        cls_name = "UNet2DConditionModel" if "block_out_channels" in cfg and "cross_attention_dim" in cfg else None
    if cls_name is None or (cls_name not in _CLASS_PIPELINE and cls_name != "UNet2DConditionModel"):
        raise SdlensError(path, f"config of {cls_name or 'an unknown class'}: sdlens arch measures "
                                "UNet2DConditionModel, SD3, FLUX, AuraFlow and HunyuanDiT transformers")
    config = {k: v for k, v in cfg.items() if not k.startswith("_")}
    return _spec(_pipeline_for(cls_name, config), cls_name, config, f"config {path.name}")


def spec_from_path(path: Path) -> B.ArchSpec:
    """A checkpoint file or diffusers folder -> spec; a folder's own ``unet``/``transformer`` config wins."""
    if path.is_dir():
        from sdlens.io.folders import confined, root_of

        for name in ("unet/config.json", "transformer/config.json", "config.json"):
            if (path / name).exists():  # confined to the folder, like its weights
                return spec_from_config_json(confined(root_of(path), path, name, path))
    from sdlens.arch.identify import identify
    from sdlens.io.open import open_checkpoint

    with open_checkpoint(path) as ck:
        tensors = dict(ck.tensors)
    ident = identify(tensors)
    comps = ident.split.components
    if ident.kind not in ("full", "denoiser"):
        raise SdlensError(path, "no denoiser in this file (text encoder, VAE or LoRA only): nothing to measure")
    keys = comps["denoiser"].keys
    match = ident.match
    fam = match.family
    base = families.get(fam)
    fam = base.base if base and base.base else fam  # a refinement of another family's denoiser is built as it
    file_params = sum(t.numel for t in keys.values())
    if fam in ("sd1", "sd2", "sdxl", "sdxl_refiner"):
        cls_name, config = "UNet2DConditionModel", unet_config_from_keys(keys, fam)
    elif fam in ("flux_dev", "flux_schnell"):
        cls_name, config = "FluxTransformer2DModel", flux_config_from_keys(keys)
    elif fam in ("sd3", "sd35", "sd35m"):
        cls_name, config = "SD3Transformer2DModel", sd3_config_from_keys(keys)
    elif fam == "auraflow":
        cls_name, config = "AuraFlowTransformer2DModel", auraflow_config_from_keys(keys)
    elif fam == "hunyuandit":
        cls_name, config = "HunyuanDiT2DModel", hunyuandit_config_from_keys(keys)
    else:
        raise SdlensError(path, f"sdlens arch cannot derive a config for a {match.name} denoiser")
    model = B.build_denoiser(cls_name, config)
    buffers = sum(b.numel() for b in model.buffers())  # e.g. SD3's pos_embed: stored in files, not a parameter
    file_params -= buffers if file_params - buffers > 0 else 0
    notes = [f"config derived from the shapes in {path.name} ({match.name}, {match.confidence} confidence)"]
    notes += [f"differs from the released model: {n}" for n in match.nonstandard]
    built = B.count_params(model)
    if built != file_params:
        notes.append(f"the derived config has {built:,} parameters, the file's denoiser {file_params:,}: "
                     "figures are for the derived config")
    return _spec(_FAMILY_PIPELINE[fam], cls_name, config, f"derived from {path.name}", fam, notes, file_params)


# --------------------------------------------------------------------------- UNets


def _count(keys: Mapping[str, Any], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := rx.match(k))})


def _indices(keys: Mapping[str, Any], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def unet_config_from_keys(keys: Mapping[str, TensorInfo], family: str) -> dict[str, Any]:
    """UNet2DConditionModel kwargs from LDM (``input_blocks``) or diffusers (``down_blocks``) keys."""
    if "input_blocks.0.0.weight" in keys:
        conv_in, out_w = keys["input_blocks.0.0.weight"], keys["out.2.weight"]
        down, up = _ldm_levels(keys)
        mid = _count(keys, r"^middle_block\.1\.transformer_blocks\.(\d+)\.") if any(
            k.startswith("middle_block.") for k in keys) else None
        label = keys.get("label_emb.0.0.weight")
        proj = next((keys[k] for k in sorted(keys) if k.endswith(".proj_in.weight")), None)
    else:
        conv_in, out_w = keys["conv_in.weight"], keys["conv_out.weight"]
        down, up = _diffusers_levels(keys)
        mid = _count(keys, r"^mid_block\.attentions\.0\.transformer_blocks\.(\d+)\.") if any(
            k.startswith("mid_block.") for k in keys) else None
        label = keys.get("add_embedding.linear_1.weight")
        proj = next((keys[k] for k in sorted(keys) if k.endswith(".proj_in.weight")), None)
    ctx = next((keys[k].shape[1] for k in sorted(keys) if k.endswith("attn2.to_k.weight")), 768)
    channels = [c for c, _ in down]
    cfg: dict[str, Any] = {
        "sample_size": 128 if family.startswith("sdxl") else (96 if family == "sd2" else 64),
        "in_channels": conv_in.shape[1],
        "out_channels": out_w.shape[0],
        "block_out_channels": channels,
        "cross_attention_dim": ctx,
        "down_block_types": ["CrossAttnDownBlock2D" if any(d) else "DownBlock2D" for _, d in down],
        "up_block_types": ["CrossAttnUpBlock2D" if any(d) else "UpBlock2D" for d in up],
        "layers_per_block": [len(d) for _, d in down],
        "use_linear_projection": bool(proj is not None and len(proj.shape) == 2),
        "norm_num_groups": math.gcd(32, *channels),
    }
    if family == "sd1":
        cfg["attention_head_dim"] = 8
    else:
        cfg["attention_head_dim"] = [max(1, c // 64) for c in channels]
    if family == "sd2":
        cfg["upcast_attention"] = True
    down_depths = [[x or 1 for x in d] for _, d in down]
    up_depths = [[x or 1 for x in d] for d in up]
    if all(len(set(d)) <= 1 for d in down_depths) and up_depths == [
            [d[0]] * (len(d) + 1) for d in reversed(down_depths)]:
        cfg["transformer_layers_per_block"] = [d[0] for d in down_depths]
    else:
        cfg["transformer_layers_per_block"] = down_depths
        cfg["reverse_transformer_layers_per_block"] = up_depths
    if len(set(cfg["layers_per_block"])) == 1:
        cfg["layers_per_block"] = cfg["layers_per_block"][0]
    if mid is None:
        cfg["mid_block_type"] = None
    elif mid and mid != down_depths[-1][0]:
        if isinstance(cfg["transformer_layers_per_block"][-1], int):
            cfg["transformer_layers_per_block"] = [[x] * len(down[i][1]) for i, x in
                                                   enumerate(cfg["transformer_layers_per_block"])]
            cfg["reverse_transformer_layers_per_block"] = up_depths
        cfg["transformer_layers_per_block"][-1] = [mid] + down_depths[-1][1:]
    if label is not None:
        adm = label.shape[1]  # pooled text embedding + 5 or 6 sinusoidal size embeddings (no parameters)
        cfg.update(addition_embed_type="text_time", addition_time_embed_dim=256 if adm > 6 * 256 else max(1, adm // 12),
                   projection_class_embeddings_input_dim=adm)
    return cfg


def _ldm_levels(keys: Mapping[str, TensorInfo]) -> tuple[list[tuple[int, list[int]]], list[list[int]]]:
    down: list[tuple[int, list[int]]] = []
    depths: list[int] = []
    ch = 0
    for i in _indices(keys, r"^input_blocks\.(\d+)\.")[1:]:
        if f"input_blocks.{i}.0.op.weight" in keys:
            down.append((ch, depths))
            depths = []
            continue
        ch = keys[f"input_blocks.{i}.0.out_layers.3.weight"].shape[0]
        depths.append(_count(keys, rf"^input_blocks\.{i}\.1\.transformer_blocks\.(\d+)\."))
    down.append((ch, depths))
    up: list[list[int]] = [[]]
    for i in _indices(keys, r"^output_blocks\.(\d+)\."):
        up[-1].append(_count(keys, rf"^output_blocks\.{i}\.1\.transformer_blocks\.(\d+)\."))
        if any(re.match(rf"^output_blocks\.{i}\.\d\.conv\.weight$", k) for k in keys):
            up.append([])
    return down, [u for u in up if u]


def _diffusers_levels(keys: Mapping[str, TensorInfo]) -> tuple[list[tuple[int, list[int]]], list[list[int]]]:
    down = []
    for lv in _indices(keys, r"^down_blocks\.(\d+)\."):
        res = _indices(keys, rf"^down_blocks\.{lv}\.resnets\.(\d+)\.")
        ch = keys[f"down_blocks.{lv}.resnets.{res[-1]}.conv2.weight"].shape[0]
        down.append((ch, [_count(keys, rf"^down_blocks\.{lv}\.attentions\.{j}\.transformer_blocks\.(\d+)\.") for j in res]))
    up = []
    for lv in _indices(keys, r"^up_blocks\.(\d+)\."):
        res = _indices(keys, rf"^up_blocks\.{lv}\.resnets\.(\d+)\.")
        up.append([_count(keys, rf"^up_blocks\.{lv}\.attentions\.{j}\.transformer_blocks\.(\d+)\.") for j in res])
    return down, up


# --------------------------------------------------------------------------- DiTs


def _first(keys: Mapping[str, TensorInfo], *names: str) -> TensorInfo:
    for n in names:
        if n in keys:
            return keys[n]
    raise SdlensError(None, f"cannot derive a config: none of {', '.join(names)} in the file")


def _head_dim(hidden: int, usual: int) -> int:
    """Head width when no tensor tells it: the family's usual one where it divides the width (parameters do not
    depend on it; attention FLOPs neither, only materialised-score memory does)."""
    return usual if hidden % usual == 0 else (16 if hidden % 16 == 0 else hidden)


def flux_config_from_keys(keys: Mapping[str, TensorInfo]) -> dict[str, Any]:
    img_in = _first(keys, "img_in.weight", "x_embedder.weight")
    txt_in = _first(keys, "txt_in.weight", "context_embedder.weight")
    vec = _first(keys, "vector_in.in_layer.weight", "time_text_embed.text_embedder.linear_1.weight")
    hidden = img_in.shape[0]
    norm = keys.get("double_blocks.0.img_attn.norm.query_norm.scale") or keys.get("transformer_blocks.0.attn.norm_q.weight")
    head = norm.shape[0] if norm is not None else _head_dim(hidden, C.DENOISERS["flux_dev"][1]["attention_head_dim"])
    a = head * 7 // 16 // 2 * 2
    return {
        **C.DENOISERS["flux_dev"][1],
        "in_channels": img_in.shape[1],
        "out_channels": _first(keys, "final_layer.linear.weight", "proj_out.weight").shape[0],
        "num_layers": _count(keys, r"^(?:double_blocks|transformer_blocks)\.(\d+)\."),
        "num_single_layers": _count(keys, r"^(?:single_blocks|single_transformer_blocks)\.(\d+)\."),
        "num_attention_heads": hidden // head,
        "attention_head_dim": head,
        "axes_dims_rope": [head - 2 * a, a, a],
        "joint_attention_dim": txt_in.shape[1],
        "pooled_projection_dim": vec.shape[1],
        "guidance_embeds": any(k.startswith(("guidance_in.", "time_text_embed.guidance_embedder.")) for k in keys),
    }


def sd3_config_from_keys(keys: Mapping[str, TensorInfo]) -> dict[str, Any]:
    x = _first(keys, "x_embedder.proj.weight", "pos_embed.proj.weight")
    ctx = _first(keys, "context_embedder.weight")
    pooled = _first(keys, "y_embedder.mlp.0.weight", "time_text_embed.text_embedder.linear_1.weight")
    pos = keys.get("pos_embed") or keys.get("pos_embed.pos_embed")
    hidden = x.shape[0]
    norm = next((keys[k] for k in sorted(keys) if re.search(r"\.(ln_q|norm_q)\.weight$", k)), None)
    head = norm.shape[0] if norm is not None else _head_dim(hidden, 64)
    cfg = {
        **C.DENOISERS["sd3"][1],
        "in_channels": x.shape[1],
        "out_channels": x.shape[1],
        "patch_size": x.shape[2],
        "num_layers": _count(keys, r"^(?:joint_blocks|transformer_blocks)\.(\d+)\."),
        "num_attention_heads": hidden // head,
        "attention_head_dim": head,
        "caption_projection_dim": hidden,
        "joint_attention_dim": ctx.shape[1],
        "pooled_projection_dim": pooled.shape[1],
    }
    if pos is not None:
        cfg["pos_embed_max_size"] = math.isqrt(pos.shape[1])
    if any(re.search(r"\.(ln_q|norm_q)\.", k) for k in keys):
        cfg["qk_norm"] = "rms_norm"
    dual = _indices(keys, r"^joint_blocks\.(\d+)\.x_block\.attn2\.") or _indices(keys, r"^transformer_blocks\.(\d+)\.attn2\.")
    if dual:
        cfg["dual_attention_layers"] = tuple(dual)
    return cfg


def auraflow_config_from_keys(keys: Mapping[str, TensorInfo]) -> dict[str, Any]:
    """AuraFlowTransformer2DModel kwargs from fal's single-file keys or diffusers' names."""
    rel = C.DENOISERS["auraflow"][1]
    p = rel["patch_size"]
    x = _first(keys, "init_x_linear.weight", "pos_embed.proj.weight")
    cond = _first(keys, "cond_seq_linear.weight", "context_embedder.weight")
    pos = _first(keys, "positional_encoding", "pos_embed.pos_embed")
    hidden = x.shape[0]
    head = _head_dim(hidden, rel["attention_head_dim"])
    return {
        **rel,
        "in_channels": x.shape[1] // (p * p),
        "out_channels": _first(keys, "final_linear.weight", "proj_out.weight").shape[0] // (p * p),
        "num_mmdit_layers": _count(keys, r"^(?:double_layers|joint_transformer_blocks)\.(\d+)\."),
        "num_single_dit_layers": _count(keys, r"^(?:single_layers|single_transformer_blocks)\.(\d+)\."),
        "num_attention_heads": hidden // head,
        "attention_head_dim": head,
        "joint_attention_dim": cond.shape[1],
        "caption_projection_dim": cond.shape[0],
        "pos_embed_max_size": pos.shape[1],
        "sample_size": min(rel["sample_size"], math.isqrt(pos.shape[1]) * p),
    }


def hunyuandit_config_from_keys(keys: Mapping[str, TensorInfo]) -> dict[str, Any]:
    """HunyuanDiT2DModel kwargs from the original repository's keys (``blocks.N.attn1.Wqkv`` ...)."""
    rel = C.DENOISERS["hunyuandit"][1]
    x = _first(keys, "x_embedder.proj.weight")
    hidden, p = x.shape[0], x.shape[2]
    head = _first(keys, "blocks.0.attn1.q_norm.weight").shape[0]
    pool = _first(keys, "pooler.positional_embedding")
    t5_len = pool.shape[0] - 1
    return {
        **rel,
        "hidden_size": hidden,
        "in_channels": x.shape[1],
        "patch_size": p,
        "num_layers": _count(keys, r"^blocks\.(\d+)\."),
        "num_attention_heads": hidden // head,
        "attention_head_dim": head,
        "mlp_ratio": _first(keys, "blocks.0.mlp.fc1.weight").shape[0] / hidden,
        "learn_sigma": _first(keys, "final_layer.linear.weight").shape[0] == 2 * x.shape[1] * p * p,
        "cross_attention_dim": _first(keys, "blocks.0.attn2.kv_proj.weight").shape[1],
        "cross_attention_dim_t5": pool.shape[1],
        "pooled_projection_dim": _first(keys, "pooler.c_proj.weight").shape[0],
        "text_len_t5": t5_len,
        "text_len": _first(keys, "text_embedding_padding").shape[0] - t5_len,
        "use_style_cond_and_image_meta_size": "style_embedder.weight" in keys,
    }
