"""Stage 4b (optional) — the pixel plane: pixel-aligned image features as a fourth plane of the triplane.

With ``model.pixel_plane.enabled``, the model's output is ``[B, 4, C, H, W]``: the three planes of the
upsampler plus one feature map **on the input camera's image plane** (PixelNeRF-style conditioning). The
decoder (lrm/models/decoder.py) samples planes 0-2 at the point's plane coordinates as before, and this
plane at the point's *projection into the canonical input camera* (orbit camera at azimuth 0, elevation 0,
``camera.distance`` / ``camera.fov_deg`` of docs/conventions.md), plus the point's depth along that camera's axis.
The visible side thus reads the input pixels it projects to: exact colours and the input silhouette (a point
that projects onto background is empty), which the 16² token grid only gives as a blur.

Because the plane lives in the scene tensor, everything that takes a triplane (renderer, mesher, refinement,
``triplane.safetensors``) works unchanged. Every input view of this project is the canonical camera (the
loader and the evaluation sets canonicalise, infer.py uses it); an input camera with another field of view is
handled exactly by rescaling the image about its centre (:func:`canonical_grid`). Another *pose* cannot be
expressed by an image plane and is refused by :func:`check_canonical_pose`.

Content: the input image (view 0) area-resized to H x W (3 channels, so colours pass through unchanged) and
C - 3 learned channels = a two-layer 3x3 conv over that image + a linear map of the encoder's patch tokens,
bilinearly upsampled. Trained with ``train.loss.input_depth``, channel 3 (the first learned one) holds the depth
offset of the visible surface along each input ray, in the units of the decoder's depth input (lrm/training/losses.py).
With ``depth_head`` > 0, :class:`DepthHead` adds a non-linear estimate to that channel (zero at initialisation).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import cameras as cam
from ..conventions import CANONICAL_DISTANCE, CANONICAL_FOV_DEG


def canonical_camera(device=None, dtype=torch.float32, distance: float = CANONICAL_DISTANCE,
                     fov_deg: float = CANONICAL_FOV_DEG):
    """(c2w [4, 4], intrinsics [4]) of the canonical input camera."""
    c2w = cam.orbit_camera(0.0, 0.0, distance).to(device=device, dtype=dtype)
    return c2w, cam.intrinsics_from_fov(fov_deg).to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=16)
def _canonical_camera_cached(device, dtype, distance: float, fov_deg: float):
    """:func:`canonical_camera` built once per (device, dtype, distance, fov): the decoder projects every query batch
    (read-only tensors; callers must not modify them)."""
    return canonical_camera(device, dtype, distance, fov_deg)


def project_canonical(points: torch.Tensor, radius: float, distance: float = CANONICAL_DISTANCE,
                      fov_deg: float = CANONICAL_FOV_DEG) -> torch.Tensor:
    """World points [B, N, 3] -> [B, N, 3]: ``grid_sample`` coordinates (x, y in [-1, 1] across the canonical
    image, align_corners=False) and the depth offset (z - distance) / radius (0 at the origin's depth).
    Points at or behind the camera get coordinates far outside the image (they sample zeros)."""
    c2w, intr = _canonical_camera_cached(points.device, points.dtype, float(distance), float(fov_deg))
    uv, z = cam.project_points(points, c2w, intr, 1, 1)
    coords = torch.where((z > 1e-6).unsqueeze(-1), uv * 2 - 1, torch.full_like(uv, 4.0))
    return torch.cat([coords, ((z - distance) / radius).unsqueeze(-1)], -1)


def check_canonical_pose(cameras: torch.Tensor, distance: float = CANONICAL_DISTANCE, tol: float = 1e-3) -> None:
    """cameras [B, 16]: raise ValueError unless every pose is the canonical camera's (intrinsics may differ)."""
    c2w, _ = cam.camera_from_vector(cameras.float())
    want, _ = canonical_camera(cameras.device, torch.float32, distance)
    err = (c2w[..., :3, :4] - want[:3, :4]).abs().amax()
    if float(err) > tol:
        raise ValueError(f"the pixel plane (model.pixel_plane) needs the input view at the canonical camera "
                         f"(azimuth 0, elevation 0, distance {distance:g}); this camera's pose differs by {float(err):.3g}: "
                         "canonicalise the cameras (lrm.cameras.canonicalize) first")


def canonical_grid(intrinsics: torch.Tensor, size: int, fov_deg: float = CANONICAL_FOV_DEG) -> torch.Tensor:
    """intrinsics [B, 4] of the input view -> sampling grid [B, size, size, 2] that maps the canonical camera's
    image plane onto the input image (the same pose: a scale about the principal points)."""
    _, can = canonical_camera(intrinsics.device, intrinsics.dtype, fov_deg=fov_deg)
    centres = (torch.arange(size, device=intrinsics.device, dtype=intrinsics.dtype) * 2 + 1) / size - 1
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    # canonical normalised pixel (x + 1) / 2 -> camera direction -> input normalised pixel
    dx = ((x + 1) / 2 - can[2]) / can[0]
    dy = ((y + 1) / 2 - can[3]) / can[1]
    fx, fy, cx, cy = (intrinsics[:, i, None, None] for i in range(4))
    u = (dx * fx + cx) * 2 - 1
    v = (dy * fy + cy) * 2 - 1
    return torch.stack([u, v], -1)


def tokens_on_grid(proj: nn.Module, patches: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Patch tokens [B, g*g, D] mapped by ``proj`` to K channels on the token grid, then bilinearly sampled at ``grid``
    [B, S, S, 2] -> [B, K, S, S] (fp32)."""
    g = math.isqrt(patches.shape[1])
    tok = proj(patches).transpose(1, 2).reshape(patches.shape[0], -1, g, g)
    return F.grid_sample(tok.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


class DepthHead(nn.Module):
    """The plane [B, C, S, S] and the encoder's patch tokens [B, g*g, D] -> [B, 1, S, S]: an MLP of each token
    (bilinearly upsampled) added to a 3x3 conv of the plane, then 3x3 convs dilated 2, 4 and 8 (a receptive field of
    31 cells) and a 1x1 output conv that starts at zero."""

    def __init__(self, channels: int, context_dim: int, hidden: int):
        super().__init__()
        self.tokens = nn.Sequential(nn.Linear(context_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Conv2d(channels, hidden, 3, padding=1)
        self.body = nn.Sequential(*[m for d in (2, 4, 8) for m in (nn.SiLU(), nn.Conv2d(hidden, hidden, 3, padding=d,
                                                                                       dilation=d))], nn.SiLU())
        self.out = nn.Conv2d(hidden, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, plane: torch.Tensor, patches: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        x = self.inp(plane) + tokens_on_grid(self.tokens, patches, grid).to(plane.dtype)
        return self.out(self.body(x))


class PixelPlane(nn.Module):
    def __init__(self, context_dim: int, channels: int, hidden: int, prefix_tokens: int,
                 distance: float = CANONICAL_DISTANCE, fov_deg: float = CANONICAL_FOV_DEG, depth_head: int = 0):
        super().__init__()
        if channels < 4:
            raise ValueError(f"the pixel plane needs at least 4 channels (3 colour + learned), got {channels}")
        self.prefix, self.distance, self.fov_deg = prefix_tokens, distance, fov_deg
        self.conv = nn.Sequential(nn.Conv2d(3, hidden, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(hidden, channels - 3, 3, padding=1))
        self.tokens = nn.Linear(context_dim, channels - 3)
        self.depth_head = DepthHead(channels, context_dim, depth_head) if depth_head > 0 else None

    def forward(self, image: torch.Tensor, image_tokens: torch.Tensor, cameras: torch.Tensor, size: int) -> torch.Tensor:
        """image [B, 3, S, S] in [0, 1] (view 0), its encoder tokens [B, prefix + g*g, D] and camera [B, 16]
        -> the plane [B, C, size, size] on the canonical camera's image plane."""
        check_canonical_pose(cameras, self.distance)
        _, intr = cam.camera_from_vector(cameras.float())
        small = F.interpolate(image.float(), size=(size, size), mode="area")  # box average (= pooling at integer ratios)
        grid = canonical_grid(intr, size, self.fov_deg)
        rgb = F.grid_sample(small, grid, mode="bilinear", padding_mode="border", align_corners=False)
        patches = image_tokens[:, self.prefix:]
        tok = tokens_on_grid(self.tokens, patches, grid)
        learned = self.conv(rgb.to(self.conv[0].weight.dtype)) + tok.to(self.conv[0].weight.dtype)
        plane = torch.cat([rgb.to(learned.dtype), learned], 1)
        if self.depth_head is None:
            return plane
        depth = plane[:, 3:4] + self.depth_head(plane, patches, grid)
        return torch.cat([plane[:, :3], depth, plane[:, 4:]], 1)
