"""Stage 2b (optional) — image lifting: image tokens back-projected onto the triplane token grid.

With ``model.transformer.lift_image``, every triplane token starts from its learned embedding **plus** the
image features seen along its line of sight through the cube: for the token at plane coordinates (a, b)
of plane (axis_a, axis_b), ``lift_samples`` points run along the plane's normal axis from -R to R; each is
projected into the input view with the input camera (``lrm.cameras.project_points``), the encoder's patch
tokens are sampled there (bilinear, zero outside the image) and the samples are averaged, then passed
through a linear layer (with several input views: each view with its own camera, averaged over the views).
The plane facing the camera thus receives the image itself at the right place, and the two edge-on planes
receive image rows / columns, so from the first step each token carries image evidence about its own region
instead of having to discover it through cross-attention (an untrained LRM gives every token the same
attention-averaged features, and learns a mean blob before it learns shapes).
This is a geometric prior, not a new learned stage; it has no effect on imported TripoSR/OpenLRM weights,
whose configs leave it off.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import cameras as cam
from .decoder import PLANE_AXES


def token_points(plane_tokens: int, radius: float, samples: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """World points [3 * P * P, S, 3] along each triplane token's normal line (token order: plane, row, col;
    a token's plane coordinates are its cell centre after the upsampler, see lrm/models/decoder.py)."""
    p = plane_tokens
    centres = (torch.arange(p, device=device, dtype=dtype) * 2 + 1) / p - 1  # [-1, 1], align_corners=False
    rows, cols = torch.meshgrid(centres, centres, indexing="ij")  # row indexes height (b), col width (a)
    t = torch.linspace(-1, 1, samples, device=device, dtype=dtype) if samples > 1 else torch.zeros(1, device=device, dtype=dtype)
    out = []
    for axis_a, axis_b in PLANE_AXES:
        normal = 3 - axis_a - axis_b
        pts = torch.zeros(p * p, samples, 3, device=device, dtype=dtype)
        pts[..., axis_a] = cols.reshape(-1, 1)
        pts[..., axis_b] = rows.reshape(-1, 1)
        pts[..., normal] = t
        out.append(pts)
    return torch.cat(out) * radius


def lift_features(patch_tokens: torch.Tensor, grid: int, cameras: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Average image features along lines of points.

    patch_tokens [B, g*g, D] (row-major patch grid), cameras [B, 16] (``camera_vector``), points [T, S, 3]
    -> [B, T, D]. Points behind the camera or outside the image contribute zeros.
    """
    b, _, d = patch_tokens.shape
    t, s, _ = points.shape
    c2w, intr = cam.camera_from_vector(cameras.to(points.dtype))
    uv, z = cam.project_points(points.reshape(1, t * s, 3).expand(b, -1, -1), c2w, intr, 1, 1)  # [B, T*S, 2]
    coords = uv * 2 - 1
    coords = torch.where((z > 1e-6).unsqueeze(-1), coords, torch.full_like(coords, 4.0))  # behind: off-image
    fmap = patch_tokens.transpose(1, 2).reshape(b, d, grid, grid)
    feats = F.grid_sample(fmap, coords.reshape(b, t, s, 2).to(fmap.dtype), mode="bilinear",
                          padding_mode="zeros", align_corners=False)  # [B, D, T, S]
    return feats.mean(-1).transpose(1, 2)


class ImageLift(nn.Module):
    def __init__(self, context_dim: int, token_dim: int, plane_tokens: int, radius: float, samples: int,
                 prefix_tokens: int):
        super().__init__()
        self.plane_tokens, self.radius, self.samples = plane_tokens, radius, samples
        self.prefix = prefix_tokens
        self.proj = nn.Linear(context_dim, token_dim)

    def forward(self, image_tokens: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
        """image_tokens [B, V, prefix + g*g, D] (the encoder's output per view: CLS/register tokens first), cameras
        [B, V, 16] -> [B, 3 * P * P, token_dim] to add to the learned triplane tokens. Each view is lifted with its
        own camera and the lifted features are averaged over the views (for V = 1: that view's features)."""
        b, v = image_tokens.shape[:2]
        patches = image_tokens[:, :, self.prefix:].flatten(0, 1)
        grid = math.isqrt(patches.shape[1])
        if grid * grid != patches.shape[1]:
            raise ValueError(f"{patches.shape[1]} patch tokens do not form a square grid")
        pts = token_points(self.plane_tokens, self.radius, self.samples, image_tokens.device)
        feats = lift_features(patches.float(), grid, cameras.flatten(0, 1).float(), pts)  # [B*V, T, D]
        return self.proj(feats.unflatten(0, (b, v)).mean(1).to(image_tokens.dtype))
