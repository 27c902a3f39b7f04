"""Trace one meta-device forward: every matrix multiplication and convolution with its module path and
shapes, and the activation memory from the lifetimes of the tensors the forward creates.

Two interception layers, both active during the forward:

* a ``TorchFunctionMode`` replaces ``F.scaled_dot_product_attention`` by its fused form: the output alone is
  allocated, QKᵀ and softmax·V are recorded as two batched GEMMs, and the bytes a non-fused kernel would hold
  at that moment (the scores and the softmax probabilities, ``2 × batch × Lq × Lk`` elements) are added to a
  second, "materialised" peak;
* a ``TorchDispatchMode`` sees every aten op: ``mm`` / ``addmm`` / ``bmm`` / ``baddbmm`` / ``convolution``
  are recorded with their real GEMM shapes (a ``Linear`` on a ``[B, L, C]`` input is one ``[B·L, C] × [C, N]``
  GEMM); a GEMM whose operand is a parameter (or a view of one) is a linear layer, one between two
  activations is attention (QKᵀ, then softmax·V, in the order they come in a module). Every output tensor's
  storage is counted live from the op that creates it until the last tensor viewing it dies (weak-reference
  finalisers): the peak of that sum is the activation peak. Parameters and buffers are not activations.

Not counted: elementwise ops (bias adds, activations, residual adds, scaling), normalisations, softmax,
embedding look-ups, rotary/positional encodings; workspace inside fused kernels; the CUDA caching allocator's
fragmentation and the framework's own context.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten

KINDS = ("conv", "linear", "attention")


@dataclass
class Op:
    """One GEMM or convolution. ``m × n × k`` is the GEMM (``batch`` of them); a convolution is written as its
    implicit GEMM: m = N·H_out·W_out, n = C_out, k = C_in/groups·k_h·k_w."""

    module: str
    op: str  # linear | conv | attn_qk | attn_pv | matmul
    kind: str  # conv | linear | attention
    batch: int
    m: int
    n: int
    k: int
    conv: dict[str, Any] | None = None  # in, out, kernel, stride, groups, output (H, W)

    @property
    def macs(self) -> int:
        return self.batch * self.m * self.n * self.k

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def to_dict(self) -> dict[str, Any]:
        d = {
            "module": self.module,
            "op": self.op,
            "kind": self.kind,
            "batch": self.batch,
            "m": self.m,
            "n": self.n,
            "k": self.k,
            "macs": self.macs,
            "flops": self.flops,
        }
        if self.conv is not None:
            d["conv"] = self.conv
        return d


@dataclass
class Trace:
    ops: list[Op] = field(default_factory=list)
    peak_fused: int = 0  # bytes of live activations at the peak, fused attention
    peak_materialised: int = 0  # … with attention scores and probabilities materialised
    peak_module: str = ""  # where the fused peak happened
    inputs_bytes: int = 0


class _Recorder:
    def __init__(self, root: torch.nn.Module):
        self.trace = Trace()
        self.names = {id(m): n for n, m in root.named_modules()}
        self.stack: list[str] = []
        self.external = {p.untyped_storage()._cdata for p in root.parameters()}
        self.external |= {b.untyped_storage()._cdata for b in root.buffers()}
        self.param_storages = set(self.external)
        self.live: dict[int, list[int]] = {}  # storage id -> [nbytes, tensors alive]
        self.current = 0
        self.refs: dict[
            int, tuple[weakref.ref, int]
        ] = {}  # id(weak ref to a tracked tensor) -> (ref, storage id)
        self.pending_qk: dict[str, bool] = {}

    # ------------------------------------------------------------------ module paths
    def pre(self, module: torch.nn.Module, _args: Any) -> None:
        self.stack.append(self.names.get(id(module), type(module).__name__))

    def post(self, module: torch.nn.Module, _args: Any, _out: Any) -> None:
        if self.stack:
            self.stack.pop()

    @property
    def where(self) -> str:
        return self.stack[-1] if self.stack else ""

    # ------------------------------------------------------------------ memory
    def track(self, out: Any) -> None:
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            key = t.untyped_storage()._cdata
            if key in self.external:
                continue
            entry = self.live.get(key)
            if entry is None:
                entry = self.live[key] = [t.untyped_storage().nbytes(), 0]
                self.current += entry[0]
                if self.current > self.trace.peak_fused:
                    self.trace.peak_fused = self.current
                    self.trace.peak_module = self.where
                self.trace.peak_materialised = max(self.trace.peak_materialised, self.current)
            entry[1] += 1
            ref = weakref.ref(t, self._dead)
            self.refs[id(ref)] = (ref, key)

    def _dead(self, ref: weakref.ref) -> None:
        _, key = self.refs.pop(id(ref), (None, None))
        entry = self.live.get(key) if key is not None else None
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            self.current -= entry[0]
            del self.live[key]

    def transient(self, nbytes: int) -> None:
        self.trace.peak_materialised = max(self.trace.peak_materialised, self.current + nbytes)

    # ------------------------------------------------------------------ GEMMs
    def add(
        self, op: str, kind: str, batch: int, m: int, n: int, k: int, conv: dict[str, Any] | None = None
    ) -> None:
        self.trace.ops.append(Op(self.where, op, kind, batch, m, n, k, conv))

    def is_param(self, t: Any) -> bool:
        return isinstance(t, torch.Tensor) and t.untyped_storage()._cdata in self.param_storages

    def attention_matmul(self, batch: int, m: int, n: int, k: int) -> None:
        """A GEMM between two activations: QKᵀ, then softmax·V, alternating within a module."""
        where = self.where
        qk = not self.pending_qk.get(where, False)
        self.pending_qk[where] = qk
        self.add("attn_qk" if qk else "attn_pv", "attention", batch, m, n, k)


def _conv(rec: _Recorder, args: tuple, out: torch.Tensor) -> None:
    x, w = args[0], args[1]
    stride, transposed, groups = args[3], args[6], args[8]
    n_img = x.shape[0]
    spatial_out = tuple(out.shape[2:])
    if transposed:  # the GEMM of a transposed convolution runs over the input positions
        m = n_img * math.prod(x.shape[2:])
        n, k = w.shape[1] * groups, w.shape[0] // groups * math.prod(w.shape[2:])
    else:
        m = n_img * math.prod(spatial_out)
        n, k = w.shape[0], w.shape[1] * math.prod(w.shape[2:])
    conv = {
        "in": int(x.shape[1]),
        "out": int(out.shape[1]),
        "kernel": list(w.shape[2:]),
        "stride": list(stride),
        "groups": int(groups),
        "output": list(spatial_out),
    }
    rec.add("conv", "conv", 1, int(m), int(n), int(k), conv)


def _gemm(rec: _Recorder, func: Any, args: tuple) -> None:
    if func in (aten.mm.default, aten.addmm.default):
        a, b = (args[0], args[1]) if func is aten.mm.default else (args[1], args[2])
        batch, m, k, n = 1, a.shape[0], a.shape[1], b.shape[1]
    else:  # bmm, baddbmm
        a, b = (args[0], args[1]) if func is aten.bmm.default else (args[1], args[2])
        batch, m, k, n = a.shape[0], a.shape[1], a.shape[2], b.shape[2]
    if rec.is_param(a) or rec.is_param(b):
        rec.add("linear", "linear", int(batch), int(m), int(n), int(k))
    else:
        rec.attention_matmul(int(batch), int(m), int(n), int(k))


_GEMMS = (aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default)


class _Dispatch(TorchDispatchMode):
    def __init__(self, rec: _Recorder):
        super().__init__()
        self.rec = rec

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _GEMMS:
            _gemm(self.rec, func, args)
        elif func is aten.convolution.default:
            _conv(self.rec, args, out)
        self.rec.track(out)
        return out


def _sdpa_fused(rec: _Recorder, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    batch_shape = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    batch = math.prod(batch_shape)
    lq, e, s, ev = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
    rec.add("attn_qk", "attention", int(batch), int(lq), int(s), int(e))
    rec.add("attn_pv", "attention", int(batch), int(lq), int(ev), int(s))
    rec.transient(2 * batch * lq * s * q.element_size())
    return torch.empty((*batch_shape, lq, ev), dtype=q.dtype, device=q.device)


class _Functions(TorchFunctionMode):
    def __init__(self, rec: _Recorder):
        super().__init__()
        self.rec = rec

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k, v = (list(args) + [kwargs.get(n) for n in ("query", "key", "value")][len(args) :])[:3]
            return _sdpa_fused(self.rec, q, k, v)
        return func(*args, **kwargs)


def trace_forward(module: torch.nn.Module, call: Callable[[], Any], inputs: Any = None) -> Trace:
    """Run ``call()`` (a forward of ``module`` on meta tensors) under the recorders; the inputs' bytes
    count as live activations from the start."""
    rec = _Recorder(module)
    for t in tree_leaves(inputs):
        if isinstance(t, torch.Tensor):
            rec.trace.inputs_bytes += t.untyped_storage().nbytes()
    rec.current = rec.trace.inputs_bytes
    rec.external |= {t.untyped_storage()._cdata for t in tree_leaves(inputs) if isinstance(t, torch.Tensor)}
    h1 = torch.nn.modules.module.register_module_forward_pre_hook(rec.pre)
    h2 = torch.nn.modules.module.register_module_forward_hook(rec.post)
    try:
        with torch.no_grad(), _Functions(rec), _Dispatch(rec):
            out = call()
        del out
    finally:
        h1.remove()
        h2.remove()
    return rec.trace
