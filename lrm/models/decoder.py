"""Stage 5 — decoder: triplane features at 3D points -> density and colour.

Sampling: a world point p in the cube [-R, R]^3 is divided by R and looked up in the three planes:
plane 0 at (x, y), plane 1 at (x, z), plane 2 at (y, z). The first coordinate indexes a plane's width
(last axis) and the second its height, with ``grid_sample`` bilinear, ``align_corners=False`` (feature
cell centres at (2i+1)/W - 1) and zero padding outside. The three C-channel features are aggregated by
``concat`` (3C channels, default), ``sum`` or ``mean`` (C channels).

MLP: Linear -> act, (hidden_layers - 1) x [Linear -> act], Linear -> 4. Channel 0 is raw density, made
non-negative by ``density_activation`` applied to ``raw + density_bias`` (exp, trunc_exp: exp with its
gradient clamped, softplus, relu); channels 1..3 go through a sigmoid to RGB in [0, 1].
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

PLANE_AXES = ((0, 1), (0, 2), (1, 2))  # xy, xz, yz


class _TruncExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15.0))


def density_activation(raw: torch.Tensor, kind: str, bias: float) -> torch.Tensor:
    x = raw + bias
    if kind == "exp":
        return torch.exp(x)
    if kind == "trunc_exp":
        return _TruncExp.apply(x)
    if kind == "softplus":
        return F.softplus(x)
    if kind == "relu":
        return F.relu(x)
    raise ValueError(f"unknown density_activation {kind!r}")


def sample_triplane(triplanes: torch.Tensor, points: torch.Tensor, radius: float, aggregation: str = "concat"):
    """Bilinear features of ``triplanes`` [B, 3, C, H, W] at world ``points`` [B, N, 3].

    Returns [B, N, 3C] for ``concat``, [B, N, C] for ``sum``/``mean``.
    """
    b, _, c, h, w = triplanes.shape
    n = points.shape[1]
    p = points / radius
    coords = torch.stack([p[..., list(ax)] for ax in PLANE_AXES], dim=1)  # [B, 3, N, 2]
    feats = F.grid_sample(triplanes.reshape(b * 3, c, h, w), coords.reshape(b * 3, 1, n, 2).to(triplanes.dtype),
                          mode="bilinear", padding_mode="zeros", align_corners=False)
    feats = feats.view(b, 3, c, n).permute(0, 3, 1, 2)  # [B, N, 3, C]
    if aggregation == "concat":
        return feats.reshape(b, n, 3 * c)
    if aggregation == "sum":
        return feats.sum(2)
    if aggregation == "mean":
        return feats.mean(2)
    raise ValueError(f"unknown decoder.aggregation {aggregation!r}")


_ACTS = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU}


class TriplaneDecoder(nn.Module):
    def __init__(self, cfg, channels: int, radius: float):
        super().__init__()
        self.cfg, self.radius = cfg, radius
        in_dim = channels * 3 if cfg.aggregation == "concat" else channels
        layers, d = [], in_dim
        for _ in range(cfg.hidden_layers):
            layers += [nn.Linear(d, cfg.hidden), _ACTS[cfg.activation]()]
            d = cfg.hidden
        layers.append(nn.Linear(d, 4))
        self.layers = nn.Sequential(*layers)

    def forward(self, triplanes: torch.Tensor, points: torch.Tensor):
        """-> dict(density [B, N] >= 0, rgb [B, N, 3] in [0, 1], raw [B, N, 4])."""
        feats = sample_triplane(triplanes, points, self.radius, self.cfg.aggregation)
        raw = self.layers(feats)
        return {
            "density": density_activation(raw[..., 0], self.cfg.density_activation, self.cfg.density_bias),
            "rgb": torch.sigmoid(raw[..., 1:4]),
            "raw": raw,
        }
