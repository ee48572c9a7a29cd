"""Stage 5, inference fast path — the decoder's first layer folded into the planes.

The first Linear of the decoder MLP acts on the concatenation of the plane features sampled at a point (and, with
the pixel plane, on its features + depth offset). Bilinear sampling is linear in the texels, so mapping every texel
through its block of the first layer's weight *before* sampling gives the same pre-activation as sampling and then
multiplying (up to float rounding). That makes the per-point cost of sampling + first layer one weighted gather:

- :func:`fold_table`: once per scene, each plane's texels times its block of the weight -> a table of
  ``planes x (H + 3) x (W + 3)`` rows of ``hidden`` values. Every plane is padded with zero texels (one before,
  two after on each axis), so ``grid_sample``'s zero padding becomes plain indexing.
- :func:`plane_taps`: per point, the 4 bilinear taps in each plane -> ``[N, 4 * planes]`` row indices and weights.
- ``F.embedding_bag(mode="sum", per_sample_weights=...)`` sums those rows: the first layer's pre-activation
  without its bias (and without the pixel plane's depth term, which the decoder adds).

Inference only (no autograd): training and refinement keep ``grid_sample`` + ``Linear``. The decoder caches the table
per scene tensor (lrm/models/decoder.py). Conventions follow :func:`lrm.models.decoder.sample_triplane`:
``align_corners=False``, the first coordinate indexes a plane's width.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

PAD_BEFORE, PAD_AFTER = 1, 2


def fold_table(planes: torch.Tensor, blocks: Sequence[torch.Tensor]) -> torch.Tensor:
    """planes [B, P, C, H, W], blocks: P weights [hidden, C] -> table [B * P * (H + 3) * (W + 3), hidden]."""
    b, p = planes.shape[:2]
    if len(blocks) != p:
        raise ValueError(f"{len(blocks)} weight blocks for {p} planes")
    padded = F.pad(planes, (PAD_BEFORE, PAD_AFTER, PAD_BEFORE, PAD_AFTER)).permute(0, 1, 3, 4, 2)  # [B,P,H',W',C]
    rows = torch.stack([padded[:, i] @ blocks[i].t().to(planes.dtype) for i in range(p)], 1)
    return rows.reshape(-1, rows.shape[-1]).contiguous()


def plane_taps(coords: torch.Tensor, height: int, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """coords [B, N, P, 2] (``grid_sample`` coordinates per plane, x then y, align_corners=False) ->
    (indices [B * N, 4P] into :func:`fold_table`'s rows, weights [B * N, 4P]). Taps outside a plane land on its
    zero padding; coordinates beyond it are clamped onto the padding with the same (zero) result."""
    b, n, p, _ = coords.shape
    size = coords.new_tensor([width, height])
    pix = torch.nan_to_num_(coords * (size / 2) + (size - 1) / 2, nan=-1.0)  # a NaN point samples zeros
    pix = torch.minimum(pix.clamp_(min=-1.0), size)
    i0 = torch.floor(pix)
    f = pix - i0
    i0 = i0.long()
    stride = width + PAD_BEFORE + PAD_AFTER
    plane_rows = (height + PAD_BEFORE + PAD_AFTER) * stride
    first = torch.arange(b * p, device=coords.device).view(b, 1, p) * plane_rows + PAD_BEFORE * (stride + 1)
    base = i0[..., 1] * stride + i0[..., 0] + first  # [B, N, P]
    idx = base[..., None] + torch.tensor([0, 1, stride, stride + 1], device=coords.device)
    g = 1 - f
    wx = torch.stack([g[..., 0], f[..., 0]], -1)  # [B, N, P, 2]
    wy = torch.stack([g[..., 1], f[..., 1]], -1)
    w = wy[..., :, None] * wx[..., None, :]  # [B, N, P, 2 (y), 2 (x)]: taps (0,0) (0,1) (1,0) (1,1) as idx
    return idx.reshape(b * n, 4 * p), w.reshape(b * n, 4 * p)


def folded_first_layer(table: torch.Tensor, coords: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The first layer's pre-activation (bias excluded) at points with per-plane ``coords`` [B, N, P, 2]
    -> [B * N, hidden]."""
    idx, w = plane_taps(coords, height, width)
    return F.embedding_bag(idx, table, per_sample_weights=w.to(table.dtype), mode="sum")
