"""Stage 5, inference fast path — the decoder's first layer folded into the planes.

The first Linear of the decoder MLP acts on the concatenation of the plane features sampled at a point (and, with
the pixel plane, on its features + depth offset). Bilinear sampling is linear in the texels, so mapping every texel
through its block of the first layer's weight *before* sampling gives the same pre-activation as sampling and then
multiplying (up to float rounding). That makes the per-point cost of sampling + first layer one weighted gather:

- :func:`fold_table`: once per scene, each plane's texels times its block of the weight -> a table of
  ``planes x (H + 3) x (W + 3)`` rows of ``hidden`` values. Every plane is padded with zero texels (one before,
  two after on each axis), so ``grid_sample``'s zero padding becomes plain indexing.
- :func:`plane_taps`: per point, the 4 bilinear taps in each plane -> ``[N, 4 * planes + extra]`` row indices and
  weights.
- ``F.embedding_bag(mode="sum", per_sample_weights=...)`` sums those rows, and extra rows with per-point weights
  (the bias with weight 1, the pixel plane's depth column with the point's depth offset): the first layer's
  pre-activation in one call.

Inference only (no autograd): training and refinement keep ``grid_sample`` + ``Linear``. The decoder caches the table
per scene tensor (lrm/models/decoder.py). Conventions follow :func:`lrm.models.decoder.sample_triplane`:
``align_corners=False``, the first coordinate indexes a plane's width.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

PAD_BEFORE, PAD_AFTER = 1, 2


def fold_table(planes: torch.Tensor, blocks: Sequence[torch.Tensor], extra_rows: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    """planes [B, P, C, H, W], blocks: P weights [hidden, C] -> table [B * P * (H + 3) * (W + 3) + E, hidden]:
    the planes' folded texels, then the ``extra_rows`` ([hidden] each, e.g. the bias) that every point may add with
    a weight of its own (:func:`folded_first_layer`)."""
    b, p = planes.shape[:2]
    if len(blocks) != p:
        raise ValueError(f"{len(blocks)} weight blocks for {p} planes")
    padded = F.pad(planes, (PAD_BEFORE, PAD_AFTER, PAD_BEFORE, PAD_AFTER)).permute(0, 1, 3, 4, 2)  # [B,P,H',W',C]
    rows = torch.stack([padded[:, i] @ blocks[i].t().to(planes.dtype) for i in range(p)], 1)
    rows = rows.reshape(-1, rows.shape[-1])
    if len(extra_rows):
        rows = torch.cat([rows, torch.stack([r.to(planes.dtype) for r in extra_rows])], 0)
    return rows.contiguous()


def plane_taps(u: torch.Tensor, v: torch.Tensor, height: int, width: int,
               extra: Sequence[Tuple[int, object]] = ()) -> Tuple[torch.Tensor, torch.Tensor]:
    """u, v [P, B, N]: ``grid_sample`` coordinates per plane (u across a plane's width, v down its height,
    align_corners=False; planes first so every operation below runs over long contiguous rows) -> (indices [B * N, 4P + E], weights [B * N, 4P + E])
    into :func:`fold_table`'s rows: each plane's 4 bilinear taps, then the ``extra`` (row, weight) pairs (a weight
    is a scalar or [B, N]). Taps outside a plane land on its zero padding; coordinates beyond it are clamped onto
    the padding with the same (zero) result; a NaN coordinate samples zeros."""
    p, b, n = u.shape
    device = u.device
    stride = width + PAD_BEFORE + PAD_AFTER
    plane_rows = (height + PAD_BEFORE + PAD_AFTER) * stride
    cols = 4 * p + len(extra)
    # int32 rows when the table allows: half the bytes to write, transpose and read (embedding_bag takes either)
    itype = torch.int32 if b * p * plane_rows + len(extra) < 2 ** 31 else torch.long
    idx = torch.empty(cols, b, n, dtype=itype, device=device)
    w = torch.empty(cols, b, n, dtype=u.dtype, device=device)
    i0, f = [], []
    for coord, size in ((u, width), (v, height)):
        x = torch.nan_to_num(coord * (size / 2), nan=-size).add_((size - 1) / 2)
        x = x.clamp_(-1.0, float(size))
        lo = torch.floor(x)
        f.append(x.sub_(lo))
        i0.append(lo.to(itype))
    # first row of each (plane, batch) in the table, past the padding
    first = (torch.arange(b, device=device)[None, :] * p + torch.arange(p, device=device)[:, None]).to(itype)
    base = i0[1].mul_(stride).add_(i0[0]).add_((first * plane_rows + PAD_BEFORE * (stride + 1))[..., None])
    fx, fy = f
    gx, gy = 1 - fx, 1 - fy
    for k, (dy, dx, wy, wx) in enumerate(((0, 0, gy, gx), (0, 1, gy, fx), (1, 0, fy, gx), (1, 1, fy, fx))):
        torch.add(base, dy * stride + dx, out=idx[k * p:(k + 1) * p])
        torch.mul(wy, wx, out=w[k * p:(k + 1) * p])
    for i, (row, weight) in enumerate(extra):
        idx[4 * p + i] = row
        w[4 * p + i] = torch.as_tensor(weight, dtype=w.dtype, device=w.device)
    return idx.view(cols, b * n).t().contiguous(), w.view(cols, b * n).t().contiguous()


def folded_first_layer(table: torch.Tensor, u: torch.Tensor, v: torch.Tensor, height: int, width: int,
                       extra_weights: Sequence[object] = ()) -> torch.Tensor:
    """The first layer's pre-activation at points with per-plane coordinates ``u``, ``v`` [P, B, N] (as
    :func:`plane_taps`) -> [B * N, hidden]: the planes' taps plus the table's last E rows, weighted per point by
    ``extra_weights`` (E scalars or [B, N])."""
    rows = range(table.shape[0] - len(extra_weights), table.shape[0])
    idx, w = plane_taps(u, v, height, width, list(zip(rows, extra_weights)))
    return F.embedding_bag(idx, table, per_sample_weights=w.to(table.dtype), mode="sum")
