"""What a quantised file is, from its index: the schemes per tensor, bits per weight, the companions that
belong to the weights, and what the weights need in memory, stored and dequantised."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sdlens.io.base import Checkpoint
from sdlens.io.quant import SCHEMES, quant_of, stored_nbytes

# how reports name where a scheme comes from
ORIGINS = {
    "gguf": "GGUF blocks (ComfyUI-GGUF / llama.cpp), dequantised on the fly by the loader",
    "scaled fp8": "ComfyUI scaled fp8: fp8 weights × a scale each",
    "bitsandbytes": "bitsandbytes 4-bit (Forge / diffusers): packed codes, absmax blocks, a code book",
}


@dataclass
class SchemeUse:
    scheme: str
    tensors: int = 0
    params: int = 0
    bytes: int = 0  # stored, companions included

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.bytes / max(1, self.params)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bits_per_weight": round(self.bits_per_weight, 3)}


@dataclass
class QuantSummary:
    """The quantised weights of one checkpoint."""

    origin: str  # words for where the schemes come from
    schemes: list[SchemeUse]  # most bytes first
    companions: int  # tensors that are parts of quantised weights (scales, absmax, code books)
    markers: list[str]  # file-wide marker keys (``scaled_fp8``)
    params: int  # all values of the file's tensors
    bytes_stored: int  # what the tensors take in the file (and in memory, kept quantised)
    bytes_bf16: int  # all of them dequantised to 16 bits
    bits_per_weight: float  # of the whole file's tensors
    details: dict[str, Any] = field(default_factory=dict)  # per scheme, facts a file sets (block size …)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["schemes"] = [s.to_dict() for s in self.schemes]
        return d


def summarise_quantisation(ckpt: Checkpoint) -> QuantSummary | None:
    """The quantisation of ``ckpt``, or ``None`` when no tensor is quantised."""
    uses: dict[str, SchemeUse] = {}
    companions = 0
    origins: list[str] = []
    details: dict[str, Any] = {}
    for t in ckpt.tensors.values():
        q = quant_of(t)
        if q is None:
            continue
        use = uses.setdefault(q.scheme, SchemeUse(q.scheme))
        use.tensors += 1
        use.params += t.numel
        use.bytes += q.stored_nbytes
        companions += len(q.parts)
        origin = SCHEMES[q.scheme].origin
        if origin not in origins:
            origins.append(origin)
        if q.detail and q.scheme not in details:
            details[q.scheme] = dict(q.detail)
    if not uses:
        return None
    params = sum(t.numel for t in ckpt.tensors.values())
    stored = sum(map(stored_nbytes, ckpt.tensors.values()))
    return QuantSummary(
        origin="; ".join(ORIGINS[o] for o in origins),
        schemes=sorted(uses.values(), key=lambda u: -u.bytes),
        companions=companions,
        markers=sorted(ckpt.quant_markers),
        params=params,
        bytes_stored=stored,
        bytes_bf16=2 * params,
        bits_per_weight=round(8 * stored / max(1, params), 3),
        details=details,
    )
