"""A small CLIP-style BPE tokenizer made on the spot (no download): the real CLIP file format
(``vocab.json`` + ``merges.txt``, byte-level symbols with ``</w>`` word ends, ``<|startoftext|>`` /
``<|endoftext|>``), with a few hundred merges learned from a built-in text, so its ids fit the zoo's tiny text
encoders (vocabulary of 1000).

Used by the tests, the demo and the benchmark; ``sdlens embed --tokenizer DIR`` loads it like any CLIP tokenizer.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"

DEMO_PROMPTS: list[tuple[str, str, str]] = [
    # (label, text, group)
    ("cat", "a photo of a cat sitting on a sofa", "animals"),
    ("dog", "a photo of a dog running on the beach", "animals"),
    ("horse", "a white horse in a green field", "animals"),
    ("owl", "an owl on a branch at night", "animals"),
    ("fox", "a red fox in the snow", "animals"),
    ("city", "a city street at night with neon lights", "places"),
    ("forest", "a misty forest in the morning", "places"),
    ("desert", "sand dunes in a desert under a blue sky", "places"),
    ("harbour", "boats in a small harbour at sunset", "places"),
    ("castle", "an old stone castle on a hill", "places"),
    ("oil", "an oil painting of flowers in a vase", "styles"),
    ("anime", "anime style portrait of a girl with long hair", "styles"),
    ("pixel", "pixel art of a small house and a tree", "styles"),
    ("sketch", "a pencil sketch of an old man", "styles"),
    ("watercolor", "a watercolor of mountains and a lake", "styles"),
    ("tags", "masterpiece, best quality, 1girl, solo, smile", "tags"),
    ("tags2", "landscape, scenery, clouds, sky, no humans", "tags"),
    ("tags3", "1boy, armor, sword, fantasy, dramatic lighting", "tags"),
]

_EXTRA_TEXT = (
    "the a an of in on at with and under over photo picture painting portrait style art highly detailed "
    "beautiful realistic cinematic lighting sharp focus trending colorful dark light bright soft warm cold "
    "red green blue white black yellow orange purple pink man woman girl boy child people person face eyes "
    "hair hand standing sitting walking running flying water sky sun moon star cloud rain snow tree flower "
    "grass mountain river sea ocean beach road street house building room window door table chair car "
    "train ship boat plane bird cat dog fish horse dragon robot city village forest desert island night day "
    "morning evening sunset winter summer spring autumn small big old new"
)


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible map from bytes to printable characters."""
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(keep, (chr(c) for c in chars), strict=True))


def _learn_merges(text: str, n_merges: int) -> list[tuple[str, str]]:
    """Greedy BPE: repeatedly merge the most frequent adjacent pair (ties broken by the pair itself)."""
    b2u = _bytes_to_unicode()
    words = Counter(re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", text.lower()))
    seqs: dict[tuple[str, ...], int] = {}
    for w, c in words.items():
        sym = [b2u[b] for b in w.encode()]
        sym[-1] += "</w>"
        seqs[tuple(sym)] = seqs.get(tuple(sym), 0) + c
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for s, c in seqs.items():
            for a, b in zip(s, s[1:], strict=False):
                pairs[(a, b)] += c
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        new: dict[tuple[str, ...], int] = {}
        for s, c in seqs.items():
            out: list[str] = []
            i = 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            new[tuple(out)] = new.get(tuple(out), 0) + c
        seqs = new
    return merges


def write_clip_tokenizer(path: str | Path, *, vocab_size: int = 1000, pad: str = EOS) -> Path:
    """Write a CLIP BPE tokenizer folder with ``vocab_size`` ids (``<|startoftext|>`` and ``<|endoftext|>``
    last, as in CLIP); ``pad`` is the pad token (``"!"`` as SD2 / SDXL's second tokenizer)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    b2u = _bytes_to_unicode()
    base = list(b2u.values())
    vocab_list = base + [c + "</w>" for c in base]
    corpus = " ".join(t for _, t, _ in DEMO_PROMPTS) + " " + _EXTRA_TEXT
    merges = _learn_merges(corpus, max(0, vocab_size - len(vocab_list) - 2))
    for a, b in merges:
        vocab_list.append(a + b)
    vocab_list += [BOS, EOS]
    if len(vocab_list) > vocab_size:
        raise ValueError(
            f"vocab_size {vocab_size} is too small for a byte-level BPE (needs >= {len(vocab_list)})"
        )
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": pad,
        "do_lower_case": True,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (path / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad}, indent=2)
    )
    return path
