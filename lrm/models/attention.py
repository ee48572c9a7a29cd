"""Multi-head attention with selectable kernels, shared by the image encoder and the triplane transformer.

Backends:
* ``sdpa`` (default): ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient
  kernels on CUDA, fused CPU kernel otherwise).
* ``math``: the explicit softmax(QK^T / sqrt(d)) V, the numerical reference.
* ``xformers``: ``xformers.ops.memory_efficient_attention``; CUDA only (it has no CPU kernel). Asking for it
  on CPU, or without xformers installed, falls back to ``sdpa`` with a one-time log line.
"""
from __future__ import annotations

import logging
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)
BACKENDS = ("sdpa", "math", "xformers")
_warned: set = set()


def _xformers_available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        import xformers.ops  # noqa: F401
    except Exception:  # pragma: no cover - depends on the machine
        return False
    return True


def resolve_backend(name: str, device: torch.device) -> str:
    """The backend that will actually run for ``name`` on ``device`` (logs once when falling back)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose from {BACKENDS}")
    if name == "xformers" and not _xformers_available(device):
        key = ("xformers", device.type)
        if key not in _warned:
            _warned.add(key)
            log.warning("attention backend 'xformers' needs CUDA and the xformers package; using 'sdpa' on %s", device)
        return "sdpa"
    return name


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
    """q [B, H, Nq, D], k/v [B, H, Nk, D] -> [B, H, Nq, D]; softmax scale 1/sqrt(D)."""
    backend = resolve_backend(backend, q.device)
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    if backend == "math":
        scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
        return scores.softmax(-1) @ v
    import xformers.ops as xops  # pragma: no cover - CUDA only

    out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


class MultiHeadAttention(nn.Module):
    """Self- or cross-attention: q from ``x``, k/v from ``context`` (``x`` when None).

    ``dim`` is the query/output width, ``context_dim`` the key/value input width,
    ``heads * head_dim`` the inner width.
    """

    def __init__(self, dim: int, heads: int, head_dim: Optional[int] = None, context_dim: Optional[int] = None,
                 qkv_bias: bool = False, out_bias: bool = True, backend: str = "sdpa", fused_qkv: bool = False):
        super().__init__()
        head_dim = head_dim or dim // heads
        inner = heads * head_dim
        context_dim = context_dim or dim
        self.heads, self.head_dim, self.backend = heads, head_dim, backend
        self.fused_qkv = fused_qkv and context_dim == dim
        if self.fused_qkv:
            self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        else:
            self.to_q = nn.Linear(dim, inner, bias=qkv_bias)
            self.to_k = nn.Linear(context_dim, inner, bias=qkv_bias)
            self.to_v = nn.Linear(context_dim, inner, bias=qkv_bias)
        self.to_out = nn.Linear(inner, dim, bias=out_bias)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.fused_qkv and context is None:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        else:
            ctx = x if context is None else context
            q, k, v = self.to_q(x), self.to_k(ctx), self.to_v(ctx)
        out = attention(self._split(q), self._split(k), self._split(v), self.backend)
        b, h, n, d = out.shape
        return self.to_out(out.transpose(1, 2).reshape(b, n, h * d))
