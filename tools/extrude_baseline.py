"""A no-learning yardstick for the val split's novel-view mask IoU: the input view's silhouette extruded along the
input camera's axis, each image row as deep as ``--depth-scale`` times its width, centred on the origin (where the
data puts every object). What a model scores above it is what it learned about depth.

    OMP_NUM_THREADS=1 python tools/extrude_baseline.py [--data data/shards/default] [--limit N] [--depth-scale 0.5]

Scored like ``python -m lrm.training.validation``: 4 novel views per val object at 64², mask IoU per object (the
silhouette against the view's alpha, area-downsampled), averaged over objects. The loader draws the input view as
target 0 here (``input_in_targets``), so the 4 novel views are other draws from the same distribution than the
validation pass's, not the very same views. Silhouettes come from 192 points per ray through the cube of half-size
1. Also printed: the whole visual hull of the input view (depth unbounded within the cube).

``--inflate`` inflates the silhouette instead (each pixel's half-depth ``--depth-scale`` x sqrt(d (2D - d)), d its
distance to the background, D the largest: a disc becomes a ball, a strip a cylinder), still without learning.

``--front-depth`` is an oracle, not a baseline: each pixel's extrusion starts at the input view's true depth (the
shards' depth map) and reaches ``--depth-scale`` x its row's width behind it. It measures what a model that got the
visible surface exactly right, and guessed only the thickness, would score.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lrm import cameras as C  # noqa: E402
from lrm.image_metrics import mask_iou  # noqa: E402


def inflated_half_depth(mask: torch.Tensor) -> torch.Tensor:
    """[H, W] bool -> [H, W] half-depth in pixels of the silhouette inflated as a sphere would be: sqrt(d (2D - d)),
    d the distance to the background and D its largest value (a disc gives a ball, a long strip a cylinder)."""
    from scipy.ndimage import distance_transform_edt

    d = torch.from_numpy(distance_transform_edt(mask.numpy())).float()
    big = float(d.max())
    return (d * (2 * big - d)).clamp_min(0).sqrt()


def extruded_inside(mask: torch.Tensor, c2w: torch.Tensor, intrinsics: torch.Tensor, depth_scale: float,
                    front: torch.Tensor | None = None, inflate: bool = False):
    """-> inside(points [N, 3], hull_only) -> bool [N]: in the silhouette ``mask`` [H, W] seen from (c2w,
    intrinsics), and (unless ``hull_only``) within half of ``depth_scale`` x its row's width of the origin's depth;
    with ``front`` (ray-distance depth [H, W]), between the front surface and ``depth_scale`` x the row's width
    behind it; with ``inflate``, within ``depth_scale`` x :func:`inflated_half_depth` of the origin's depth."""
    h, w = mask.shape
    dist = float(c2w[:3, 3].norm())
    half = mask.float().sum(1) / (float(intrinsics[0]) * w) * dist / 2 * depth_scale  # [H] world units
    inflated = inflated_half_depth(mask) / (float(intrinsics[0]) * w) * dist * depth_scale if inflate else None
    origin = c2w[:3, 3]

    def inside(p: torch.Tensor, hull_only: bool = False) -> torch.Tensor:
        uv, z = C.project_points(p, c2w, intrinsics, h, w)
        u, v = uv[:, 0].floor().long(), uv[:, 1].floor().long()
        ok = (u >= 0) & (u < w) & (v >= 0) & (v < h) & (z > 0)
        hit = torch.zeros_like(ok)
        hit[ok] = mask[v[ok], u[ok]]
        if hull_only:
            return hit
        hv = torch.zeros_like(z)
        hv[ok] = half[v[ok]]
        if inflated is not None:
            hi = torch.zeros_like(z)
            hi[ok] = inflated[v[ok], u[ok]]
            return hit & ((z - dist).abs() <= hi)
        if front is None:
            return hit & ((z - dist).abs() <= hv)
        t = (p - origin).norm(dim=-1)
        f = torch.zeros_like(z)
        f[ok] = front[v[ok], u[ok]]
        return hit & (f > 0) & (t >= f) & (t <= f + 2 * hv)

    return inside


def silhouette(inside, c2w, intrinsics, res: int, hull_only: bool, samples: int = 192) -> torch.Tensor:
    """[res, res] bool: pixels whose ray through the cube of half-size 1 meets a point ``inside``."""
    o, d = C.get_rays(c2w, intrinsics, res, res)
    t0, t1, valid = C.ray_box_intersect(o, d, 1.0)
    s = torch.linspace(0, 1, samples)
    t = t0[:, None] * (1 - s) + t1[:, None] * s
    pts = (o[:, None] + d[:, None] * t[..., None]).reshape(-1, 3)
    return (inside(pts, hull_only).view(-1, samples).any(1) & valid).view(res, res)


def main(argv=None) -> int:
    from lrm.data import make_loader

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/shards/default")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--depth-scale", type=float, default=1.0, help="row depth = this x the row's width")
    ap.add_argument("--res", type=int, default=64)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--inflate", action="store_true", help="the silhouette inflated (sphere-like profile from its "
                    "distance transform, times --depth-scale) instead of extruded")
    ap.add_argument("--front-depth", action="store_true", help="oracle: start each pixel's extrusion at the input "
                    "view's true depth")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    loader = make_loader(a.data, num_views_target=a.views + 1, image_size=128, batch_size=1, num_workers=0,
                         shuffle=False, seed=0, split="val", background="white", repeat=False, input_in_targets=True,
                         extras={"depth": True} if a.front_depth else None)
    scores = {False: [], True: []}
    for n, b in enumerate(loader):
        if a.limit and n >= a.limit:
            break
        inside = extruded_inside(b["target_mask"][0, 0] >= 0.5, b["target_c2w"][0, 0], b["target_intrinsics"][0, 0],
                                 a.depth_scale, b["target_depth"][0, 0] if a.front_depth else None, a.inflate)
        for hull_only in (False, True):
            ious = []
            for k in range(1, a.views + 1):
                sil = silhouette(inside, b["target_c2w"][0, k], b["target_intrinsics"][0, k], a.res, hull_only)
                gt = F.interpolate(b["target_mask"][0, k][None, None].float(), size=(a.res, a.res), mode="area")[0, 0]
                ious.append(mask_iou(sil.float().numpy(), gt.numpy()))
            scores[hull_only].append(float(np.mean(ious)))
    if not scores[False]:
        print(f"error: no val objects in {a.data}", file=sys.stderr)
        return 2
    what = ("extruded from the true front depth" if a.front_depth else "inflated silhouette" if a.inflate
            else "extruded silhouette")
    print(f"{len(scores[False])} val objects x {a.views} novel views at {a.res}^2: {what} (row depth = "
          f"{a.depth_scale} x row width) mask IoU {np.mean(scores[False]):.3f}; the input view's whole visual hull "
          f"{np.mean(scores[True]):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
