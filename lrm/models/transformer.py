"""Stage 3 — triplane transformer: learned triplane tokens attend to the image tokens.

``3 * h * w`` learned positional tokens (plane-major, then row, then column) pass through N blocks of
self-attention, cross-attention to the image encoder's tokens, and a feed-forward MLP, each pre-normed
(adaLN-modulated by the camera when ``camera_modulation``) and residual. Block order, MLP kind
(GELU or GEGLU) and the wrapper (OpenLRM: final LayerNorm; TripoSR: GroupNorm + proj_in ... proj_out +
residual) are config options, so the same module serves our models and imported TripoSR weights.
Output: [B, 3 * h * w, token_dim].
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .attention import MultiHeadAttention
from .camera_embed import ModulatedNorm


class FeedForward(nn.Module):
    """``gelu``: fc2(gelu(fc1 x)). ``geglu``: fc1 -> [value | gate], fc2(value * gelu(gate))."""

    def __init__(self, dim: int, hidden: int, kind: str = "gelu"):
        super().__init__()
        if kind not in ("gelu", "geglu"):
            raise ValueError(f"unknown mlp_type {kind!r}")
        self.kind = kind
        self.fc1 = nn.Linear(dim, hidden * (2 if kind == "geglu" else 1))
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        h = self.fc1(x)
        if self.kind == "geglu":
            value, gate = h.chunk(2, dim=-1)
            h = value * F.gelu(gate)
        else:
            h = F.gelu(h)
        return self.fc2(h)


class TriplaneBlock(nn.Module):
    def __init__(self, width: int, context_dim: int, cfg, cond_dim):
        super().__init__()
        head_dim = cfg.head_dim or width // cfg.heads
        self.cross_first = cfg.cross_first
        self.norm_self = ModulatedNorm(width, cfg.ln_eps, cond_dim)
        self.attn_self = MultiHeadAttention(width, cfg.heads, head_dim, qkv_bias=cfg.qkv_bias, backend=cfg.attention)
        self.norm_cross = ModulatedNorm(width, cfg.ln_eps, cond_dim)
        self.attn_cross = MultiHeadAttention(width, cfg.heads, head_dim, context_dim=context_dim,
                                             qkv_bias=cfg.qkv_bias, backend=cfg.attention)
        self.norm_mlp = ModulatedNorm(width, cfg.ln_eps, cond_dim)
        self.mlp = FeedForward(width, int(width * cfg.mlp_ratio), cfg.mlp_type)

    def forward(self, x, context, cond=None):
        if self.cross_first:
            x = x + self.attn_cross(self.norm_cross(x, cond), context)
            x = x + self.attn_self(self.norm_self(x, cond))
        else:
            x = x + self.attn_self(self.norm_self(x, cond))
            x = x + self.attn_cross(self.norm_cross(x, cond), context)
        return x + self.mlp(self.norm_mlp(x, cond))


class TriplaneTransformer(nn.Module):
    def __init__(self, cfg, context_dim: int):
        super().__init__()
        self.cfg = cfg
        d = cfg.token_dim
        head_dim = cfg.head_dim or d // cfg.heads
        width = cfg.heads * head_dim if cfg.io_proj else d
        cond_dim = cfg.camera_embed_dim if cfg.camera_modulation else None
        n_tokens = 3 * cfg.plane_tokens ** 2
        self.tokens = nn.Parameter(torch.empty(n_tokens, d))
        if not self.tokens.is_meta:  # (torch.randn under the meta device imports torch._dynamo: +0.9 s)
            nn.init.normal_(self.tokens, std=d ** -0.5)
        if cfg.io_proj:
            self.io_norm = nn.GroupNorm(cfg.io_groups, d, eps=1e-6)
            self.proj_in = nn.Linear(d, width)
            self.proj_out = nn.Linear(width, d)
        self.blocks = nn.ModuleList(TriplaneBlock(width, context_dim, cfg, cond_dim) for _ in range(cfg.depth))
        self.final_norm = nn.LayerNorm(width, eps=cfg.ln_eps) if cfg.final_norm else None

    def forward(self, context: torch.Tensor, cond: torch.Tensor | None = None,
                token_offset: torch.Tensor | None = None) -> torch.Tensor:
        """context [B, M, context_dim] image tokens; cond [B, camera_embed_dim] or None; token_offset
        [B, 3*h*w, token_dim] added to the learned tokens (image lifting, lrm/models/lift.py) or None."""
        b = context.shape[0]
        x = self.tokens.unsqueeze(0).expand(b, -1, -1)
        if token_offset is not None:
            x = x + token_offset
        residual = x
        if self.cfg.io_proj:
            x = self.io_norm(x.transpose(1, 2)).transpose(1, 2)
            x = self.proj_in(x)
        for blk in self.blocks:
            if self.cfg.grad_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, context, cond, use_reentrant=False)
            else:
                x = blk(x, context, cond)
        if self.final_norm is not None:
            x = self.final_norm(x)
        if self.cfg.io_proj:
            x = self.proj_out(x) + residual
        return x
