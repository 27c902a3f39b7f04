"""Safetensors ``__metadata__``: Stability's ``modelspec.*``, kohya's ``ss_*`` training fields, the rest."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

# kohya field -> label shown to people, in display order
_TRAINING_FIELDS: tuple[tuple[str, str], ...] = (
    ("ss_base_model_version", "base model version"),
    ("ss_sd_model_name", "base model"),
    ("ss_network_module", "network module"),
    ("ss_network_dim", "network dim"),
    ("ss_network_alpha", "network alpha"),
    ("ss_resolution", "resolution"),
    ("ss_num_epochs", "epochs"),
    ("ss_epoch", "epoch"),
    ("ss_max_train_steps", "max steps"),
    ("ss_steps", "steps"),
    ("ss_num_train_images", "train images"),
    ("ss_learning_rate", "learning rate"),
    ("ss_optimizer", "optimizer"),
    ("ss_mixed_precision", "mixed precision"),
    ("ss_training_started_at", "training started"),
    ("ss_output_name", "output name"),
)


@dataclass
class MetadataSummary:
    modelspec: dict[str, str] = field(default_factory=dict)
    training: dict[str, str] = field(default_factory=dict)  # label -> value, from ss_* fields
    top_tags: list[tuple[str, int]] = field(default_factory=list)
    other: dict[str, str] = field(default_factory=dict)  # any other field, long values shortened
    count: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _short(v: str, n: int = 200) -> str:
    return v if len(v) <= n else v[:n] + f"… ({len(v)} chars)"


def summarise_metadata(meta: Mapping[str, str], top_n: int = 10) -> MetadataSummary:
    s = MetadataSummary(count=len(meta))
    labels = dict(_TRAINING_FIELDS)
    for key, label in _TRAINING_FIELDS:
        if key in meta and meta[key] not in ("", "None"):
            s.training[label] = _short(str(meta[key]))
    tags: Counter[str] = Counter()
    raw_tags = meta.get("ss_tag_frequency")
    if raw_tags:
        try:
            for per_dir in json.loads(raw_tags).values():
                for tag, n in per_dir.items():
                    tags[tag.strip()] += int(n)
        except (ValueError, AttributeError, TypeError):
            s.other["ss_tag_frequency"] = _short(raw_tags)
    s.top_tags = tags.most_common(top_n)
    for key, value in meta.items():
        if key.startswith("modelspec."):
            s.modelspec[key.removeprefix("modelspec.")] = _short(str(value))
        elif key not in labels and key != "ss_tag_frequency":
            s.other[key] = _short(str(value))
    return s
