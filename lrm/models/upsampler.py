"""Stage 4 — upsampler: triplane tokens -> triplane feature maps.

Tokens [B, 3*h*w, D] are folded back into three D-channel h x w grids (plane-major, row, column) and each
plane goes through the same transposed convolution (kernel = stride = k), giving the triplane
[B, 3, C, k*h, k*w]. Plane order is xy, xz, yz (see lrm/models/decoder.py).
"""
from __future__ import annotations

import torch
import torch.nn as nn


class TriplaneUpsampler(nn.Module):
    def __init__(self, token_dim: int, channels: int, kernel: int = 2):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(token_dim, channels, kernel_size=kernel, stride=kernel)

    def forward(self, tokens: torch.Tensor, plane_tokens: int) -> torch.Tensor:
        b, n, d = tokens.shape
        p = plane_tokens
        x = tokens.view(b, 3, p, p, d).permute(0, 1, 4, 2, 3).reshape(b * 3, d, p, p)
        x = self.deconv(x)
        return x.view(b, 3, *x.shape[1:])
