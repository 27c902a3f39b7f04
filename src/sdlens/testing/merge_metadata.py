"""Safetensors metadata exactly as merge tools write it (for tests and the demo): A1111's checkpoint merger,
supermerger, sd-mecha and ComfyUI's CheckpointSave. Each function mirrors the tool's own code path (named in
its docstring); nothing here runs a merge."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ModelRef:
    """A model as a merge tool knows it: A1111's ``CheckpointInfo`` (``name`` is the file name relative to the
    models folder, ``sha256``, ``legacy_hash`` the old 8-hex hash, ``metadata`` its own safetensors metadata,
    JSON values already parsed as A1111's ``read_metadata_from_safetensors`` does)."""

    name: str
    sha256: str
    legacy_hash: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def title(self) -> str:
        """A1111's checkpoint title, ``name [shorthash]`` (what supermerger's dropdowns hold)."""
        return f"{self.name} [{self.sha256[:10]}]"


def fake_ref(name: str, seed: int | None = None, metadata: Mapping[str, str] | None = None) -> ModelRef:
    """A model reference with made-up (deterministic) hashes."""
    import hashlib

    digest = hashlib.sha256(f"{name}:{seed}".encode()).hexdigest()
    return ModelRef(
        name, digest, hashlib.sha256(digest.encode()).hexdigest()[:8], parsed_metadata(metadata or {})
    )


def file_ref(path: str | Path, name: str | None = None) -> ModelRef:
    """The reference A1111 would make of a real file (reads it whole for its sha256: tests' tiny files only)."""
    from sdlens.io.hashing import hash_file
    from sdlens.io.open import open_checkpoint

    h = hash_file(path)
    with open_checkpoint(path) as ck:
        meta = dict(ck.metadata)
    return ModelRef(name or Path(path).name, h.sha256, h.a1111_old, parsed_metadata(meta))


def parsed_metadata(meta: Mapping[str, str]) -> dict[str, Any]:
    """Metadata as A1111 holds it in memory: string values starting with ``{`` parsed as JSON when they parse."""
    out: dict[str, Any] = {}
    for k, v in meta.items():
        out[k] = v
        if isinstance(v, str) and v[:1] == "{":
            with contextlib.suppress(ValueError):
                out[k] = json.loads(v)
    return out


def _as_text(meta: Mapping[str, Any]) -> dict[str, str]:
    """What ``safetensors.torch.save_file`` stores: every value a string (A1111 passes parsed JSON values back
    through ``json.dumps`` only for the keys it writes; copied dict values are dumped here the same way)."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def a1111_metadata(
    primary: ModelRef,
    secondary: ModelRef | None = None,
    tertiary: ModelRef | None = None,
    *,
    interp_method: str = "Weighted sum",
    multiplier: float = 0.3,
    save_as_half: bool = False,
    custom_name: str = "",
    config_source: int = 0,
    bake_in_vae: str = "None",
    discard_weights: str = "",
    is_inpainting: bool = False,
    is_instruct_pix2pix: bool = False,
    copy_metadata_fields: bool = True,
    metadata_json: str = "{}",
) -> dict[str, str]:
    """A1111 ``modules/extras.py`` ``run_modelmerger`` with "Save metadata" and "Add merge recipe" on (the
    defaults): the parents' metadata copied, then ``format``, ``sd_merge_recipe`` and ``sd_merge_models``."""
    used = [m for m in (primary, secondary, tertiary) if m is not None]
    metadata: dict[str, Any] = {}
    if copy_metadata_fields:
        for m in used:
            metadata.update(m.metadata)
    metadata.update(json.loads(metadata_json))
    metadata["format"] = "pt"
    recipe = {
        "type": "webui",
        "primary_model_hash": primary.sha256,
        "secondary_model_hash": secondary.sha256 if secondary else None,
        "tertiary_model_hash": tertiary.sha256 if tertiary else None,
        "interp_method": interp_method,
        "multiplier": multiplier,
        "save_as_half": save_as_half,
        "custom_name": custom_name,
        "config_source": config_source,
        "bake_in_vae": bake_in_vae,
        "discard_weights": discard_weights,
        "is_inpainting": is_inpainting,
        "is_instruct_pix2pix": is_instruct_pix2pix,
    }
    models: dict[str, Any] = {}
    for m in used:
        models[m.sha256] = {
            "name": m.name,
            "legacy_hash": m.legacy_hash,
            "sd_merge_recipe": m.metadata.get("sd_merge_recipe", None),
        }
        models.update(m.metadata.get("sd_merge_models", {}))
    metadata["sd_merge_recipe"] = json.dumps(recipe)
    metadata["sd_merge_models"] = json.dumps(models)
    return _as_text(metadata)


SUPERMERGER_MODES = {
    "weighted_sum": "Weight sum:A*(1-alpha)+B*alpha",
    "add_difference": "Add difference:A+(B-C)*alpha",
    "triple_sum": "Triple sum:A*(1-alpha-beta)+B*alpha+C*beta",
    "sum_twice": "sum Twice:(A*(1-alpha)+B*alpha)*(1-beta)+C*beta",
}


def supermerger_metadata(
    model_a: ModelRef,
    model_b: ModelRef,
    model_c: ModelRef | None = None,
    *,
    mode: str = SUPERMERGER_MODES["weighted_sum"],
    base_alpha: float = 0.5,
    base_beta: float = 0.25,
    weights_alpha: str | None = None,
    weights_beta: str | None = None,
    calcmode: str = "normal",
    elemental: str = "",
    inex: str = "Off",
    ex_blocks: Sequence[str] = (),
    ex_elems: str = "",
    sdxl: bool = False,
) -> dict[str, str]:
    """supermerger ``scripts/mergers/mergers.py`` ``smerge``: MBW is on when ``weights_alpha`` (the text
    ``BASE,IN00,…,OUT11``, 26 values) is given; its first value becomes ``base_alpha``, the other 25 the list
    (converted to SDXL's 20 when ``sdxl``); an empty model C is replaced by A."""
    useblocks = weights_alpha is not None
    usebeta = "Triple" in mode or "Twice" in mode or "tensor" in calcmode
    wa_orig, wb_orig = weights_alpha or "", weights_beta or ""
    wa: Any = ""
    wb: Any = ""
    if useblocks:
        head, rest = wa_orig.split(",", 1)
        base_alpha = float(head)
        wa = [float(w) for w in rest.split(",")]
        if usebeta:
            head_b, rest_b = wb_orig.split(",", 1)
            base_beta = float(head_b)
            wb = [float(w) for w in rest_b.split(",")]
        if sdxl:
            wa = wa[:9] + wa[12:22] + [0] if len(wa) == 25 else wa
            if usebeta:
                wb = wb[:9] + wb[12:22] + [0] if len(wb) == 25 else wb
    model_c = model_c or model_a
    recipe = {
        "type": "sd-webui-supermerger",
        "weights_alpha": wa if useblocks else None,
        "weights_beta": wb if useblocks else None,
        "weights_alpha_orig": wa_orig if useblocks else None,
        "weights_beta_orig": wb_orig if useblocks else None,
        "model_a": model_a.sha256,
        "model_b": model_b.sha256,
        "model_c": model_c.sha256,
        "base_alpha": base_alpha,
        "base_beta": base_beta,
        "mode": mode,
        "mbw": useblocks,
        "elemental_merge": elemental,
        "calcmode": calcmode,
        f"{inex}": list(ex_blocks) + ex_elems.split(","),
    }
    models = {}
    for m in (model_a, model_b, model_c):
        models[m.sha256] = {"name": m.title, "legacy_hash": m.legacy_hash}
    return {"format": "pt", "sd_merge_recipe": json.dumps(recipe), "sd_merge_models": json.dumps(models)}


# --------------------------------------------------------------------------- sd-mecha


class MechaRecipe:
    """Builds sd-mecha's recipe text as ``sd_mecha/recipe_serializer.py`` ``SerializerVisitor`` writes it (format
    ``version 0.1.0``): one instruction a line, identical lines shared, ``&n`` refers to line n."""

    def __init__(self, version: str | None = "0.1.0"):
        self.version = version
        self.lines: list[str] = []

    @staticmethod
    def quote(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    def _add(self, line: str) -> str:
        if line not in self.lines:
            self.lines.append(line)
        return f"&{self.lines.index(line)}"

    def _value(self, v: Any) -> str:
        if isinstance(v, str) and v.startswith("&"):
            return v
        if isinstance(v, str):
            return self.quote(v)
        if isinstance(v, bool) or v is None:
            return {True: "true", False: "false", None: "null"}[v]
        if isinstance(v, dict):
            return self._add("dict " + " ".join(f"{k}={self._value(x)}" for k, x in v.items()))
        return str(v)

    def model(self, path: str, config: str = "sd1-ldm", merge_space: str = "weight") -> str:
        return self._add(
            f"model {self.quote(path)} model_config={self.quote(config)} merge_space={self.quote(merge_space)}"
        )

    def blocks(self, values: Mapping[str, float], config: str = "sd1-supermerger_blocks") -> str:
        """Per-block values: ``sd_mecha.convert(sd_mecha.literal({...}, config), "sd1-ldm")``."""
        d = self._value(dict(values))
        lit = self._add(f"literal {d} model_config={self.quote(config)} merge_space={self.quote('param')}")
        return self.merge("convert_sd1_blocks_to_ldm", lit)

    def merge(self, method: str, *args: Any, **kwargs: Any) -> str:
        parts = ["merge", self.quote(method), *(self._value(a) for a in args)]
        parts += [f"{k}={self._value(v)}" for k, v in kwargs.items()]
        return self._add(" ".join(parts))

    def text(self) -> str:
        return "\n".join(([f"version {self.version}"] if self.version else []) + self.lines)


def sd_mecha_metadata(recipe: MechaRecipe | str) -> dict[str, str]:
    """sd-mecha's ``OutSafetensorsDict`` header: ``{"__metadata__": {"mecha_recipe": serialize(recipe)}}``."""
    return {"mecha_recipe": recipe.text() if isinstance(recipe, MechaRecipe) else recipe}


# --------------------------------------------------------------------------- ComfyUI


class ComfyGraph:
    """A ComfyUI API-format prompt (node id -> ``{inputs, class_type, _meta}``; a link is ``[node id, slot]``)."""

    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}

    def node(self, class_type: str, title: str | None = None, **inputs: Any) -> str:
        nid = str(len(self.nodes) + 1)
        self.nodes[nid] = {
            "inputs": inputs,
            "class_type": class_type,
            "_meta": {"title": title or class_type},
        }
        return nid

    def loader(self, ckpt_name: str) -> str:
        return self.node("CheckpointLoaderSimple", "Load Checkpoint", ckpt_name=ckpt_name)

    def merge_simple(self, model1: str, model2: str, ratio: float) -> str:
        return self.node("ModelMergeSimple", model1=[model1, 0], model2=[model2, 0], ratio=ratio)

    def merge_blocks(self, model1: str, model2: str, input: float, middle: float, out: float) -> str:
        return self.node(
            "ModelMergeBlocks", model1=[model1, 0], model2=[model2, 0], input=input, middle=middle, out=out
        )

    def merge_sd1(self, model1: str, model2: str, ratios: Mapping[str, float], default: float = 1.0) -> str:
        """ModelMergeSD1: one ratio per key prefix (``time_embed.``, ``input_blocks.0.``…, ``out.``)."""
        keys = ["time_embed.", "label_emb."] + [f"input_blocks.{i}." for i in range(12)]
        keys += (
            [f"middle_block.{i}." for i in range(3)] + [f"output_blocks.{i}." for i in range(12)] + ["out."]
        )
        inputs = {k: ratios.get(k, default) for k in keys}
        return self.node("ModelMergeSD1", model1=[model1, 0], model2=[model2, 0], **inputs)

    def subtract(self, model1: str, model2: str, multiplier: float) -> str:
        return self.node("ModelMergeSubtract", model1=[model1, 0], model2=[model2, 0], multiplier=multiplier)

    def add(self, model1: str, model2: str) -> str:
        return self.node("ModelMergeAdd", model1=[model1, 0], model2=[model2, 0])

    def clip_merge(self, clip1: str, clip2: str, ratio: float, slot1: int = 1, slot2: int = 1) -> str:
        return self.node("CLIPMergeSimple", clip1=[clip1, slot1], clip2=[clip2, slot2], ratio=ratio)

    def save(
        self, model: str, clip: tuple[str, int], vae: tuple[str, int], prefix: str = "checkpoints/ComfyUI"
    ):
        return self.node(
            "CheckpointSave",
            "Save Checkpoint",
            model=[model, 0],
            clip=list(clip),
            vae=list(vae),
            filename_prefix=prefix,
        )

    def workflow(self) -> dict[str, Any]:
        """A minimal UI-format workflow (``extra_pnginfo["workflow"]``): nodes with their widget values."""
        nodes = []
        for nid, n in self.nodes.items():
            widgets = [v for v in n["inputs"].values() if not isinstance(v, list)]
            nodes.append({"id": int(nid), "type": n["class_type"], "widgets_values": widgets})
        return {"last_node_id": len(self.nodes), "nodes": nodes, "links": [], "version": 0.4}


def comfyui_metadata(graph: ComfyGraph | Mapping[str, Any], *, sdxl: bool = False) -> dict[str, str]:
    """ComfyUI ``comfy_extras/nodes_model_merging.py`` ``save_checkpoint``: modelspec fields for SDXL-type
    models, then ``prompt`` (json.dumps of the API graph) and each ``extra_pnginfo`` entry (``workflow``)."""
    metadata: dict[str, str] = {}
    if sdxl:
        metadata["modelspec.architecture"] = "stable-diffusion-xl-v1-base"
        metadata["modelspec.sai_model_spec"] = "1.0.0"
        metadata["modelspec.implementation"] = "sgm"
        metadata["modelspec.title"] = "ComfyUI 1"
    metadata["modelspec.predict_key"] = "epsilon"
    prompt = graph.nodes if isinstance(graph, ComfyGraph) else dict(graph)
    metadata["prompt"] = json.dumps(prompt)
    if isinstance(graph, ComfyGraph):
        metadata["workflow"] = json.dumps(graph.workflow())
    return metadata
