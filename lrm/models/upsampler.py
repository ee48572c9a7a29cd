"""Stage 4 — upsampler: triplane tokens -> triplane feature maps.

Tokens [B, 3*h*w, D] are folded back into three D-channel h x w grids (plane-major, row, column) and each
plane goes through the same transposed convolution (stride k), giving the triplane [B, 3, C, k*h, k*w]. Plane
order is xy, xz, yz (see lrm/models/decoder.py). With ``overlap`` = 0 the kernel is k: each token paints its own
k x k patch alone, and nothing ties neighbouring patches together at their border. ``overlap`` = o widens the kernel
to k + 2o (padding o keeps the size): each token also paints o texels into its neighbours' patches, so the texels at
a border mix both tokens. A k x k kernel zero-padded by o on each side gives exactly the o = 0 planes
(lrm.checkpoint.pad_kernels: an o = 0 checkpoint starts an overlapping model unchanged).
"""
from __future__ import annotations

import torch
import torch.nn as nn


class TriplaneUpsampler(nn.Module):
    def __init__(self, token_dim: int, channels: int, kernel: int = 2, overlap: int = 0):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(token_dim, channels, kernel_size=kernel + 2 * overlap, stride=kernel,
                                         padding=overlap)

    def forward(self, tokens: torch.Tensor, plane_tokens: int) -> torch.Tensor:
        b, n, d = tokens.shape
        p = plane_tokens
        x = tokens.view(b, 3, p, p, d).permute(0, 1, 4, 2, 3).reshape(b * 3, d, p, p)
        x = self.deconv(x)
        return x.view(b, 3, *x.shape[1:])


def seam_ratio(planes: torch.Tensor, period: int) -> float:
    """How much more the planes jump across patch borders than inside patches: the mean |difference| between
    neighbouring texels where the pair straddles a border (every ``period``-th, the upsampler's stride), over the mean
    where it does not, along both axes. About 1 for planes without patch structure; large when each patch is painted
    alone. ``planes``: [..., H, W] with H, W multiples of ``period``."""
    if period < 2:
        raise ValueError(f"seam_ratio needs a period of at least 2, got {period}")
    h, w = planes.shape[-2:]
    if h % period or w % period:
        raise ValueError(f"planes {h}x{w} are not whole patches of {period}")
    x = planes.detach().float()
    across, inside = [], []
    pairs = ((x[..., :, 1:] - x[..., :, :-1]).abs(), w), ((x[..., 1:, :] - x[..., :-1, :]).abs().transpose(-1, -2), h)
    for d, n in pairs:
        d = d.reshape(-1, n - 1)  # columns: the pair (i, i + 1) along the axis
        border = (torch.arange(n - 1) % period) == period - 1
        across.append(d[:, border].mean())
        inside.append(d[:, ~border].mean())
    return float(torch.stack(across).mean() / torch.stack(inside).mean().clamp_min(1e-12))
