"""nerfacc path of the volume renderer: packed samples skipping empty space (CUDA devices only).

nerfacc's packed functions and its occupancy-grid estimator need its CUDA extension (see
docs/architecture.md and platform-notes: on CPU they fail, and on a machine with nvcc but no CUDA device
they try to JIT-build). This module is therefore imported lazily, only for CUDA tensors, and
``available()`` never triggers a build on CPU.

Per object, a ``grid_resolution``^3 density grid over the cube is queried once, thresholded into an
occupancy grid, and ``OccGridEstimator.sampling`` marches each ray at a fixed step of
``2 R sqrt(3) / (n_samples + n_importance)``; only samples in occupied cells are queried and composited
with ``nerfacc.rendering`` (same alpha-compositing rule as the torch path, world-space step).
"""
from __future__ import annotations

import functools
import math

import torch


@functools.lru_cache(maxsize=1)
def available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import nerfacc  # noqa: F401
        from nerfacc.cuda import _C  # noqa: F401  (compiled extension present)
    except Exception:
        return False
    return True


def render_nerfacc(cfg, field, rays_o, rays_d, bg, randomize: bool, grid_resolution: int = 64,
                   occ_threshold: float = 1e-2):  # pragma: no cover - needs CUDA
    import nerfacc
    from nerfacc import OccGridEstimator

    b, n, _ = rays_o.shape
    r = cfg.radius * (1.0 - cfg.box_margin)
    device = rays_o.device
    step = 2 * r * math.sqrt(3) / (cfg.n_samples + cfg.n_importance)
    # density grid of every object in one batched query
    lin = (torch.arange(grid_resolution, device=device) + 0.5) / grid_resolution * 2 * r - r
    grid = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), -1).reshape(1, -1, 3).expand(b, -1, -1)
    with torch.no_grad():
        dens, _ = field(grid.contiguous())
    outs = {"rgb": [], "opacity": [], "depth": []}
    for i in range(b):
        est = OccGridEstimator(roi_aabb=[-r, -r, -r, r, r, r], resolution=grid_resolution, levels=1).to(device)
        occ = (1 - torch.exp(-dens[i] * step)) > occ_threshold
        est.binaries = occ.view(est.binaries.shape)
        ray_idx, t0, t1 = est.sampling(rays_o[i], rays_d[i], render_step_size=step, stratified=randomize)

        def rgb_sigma_fn(t_starts, t_ends, ray_indices, i=i):
            t_mid = (t_starts + t_ends)[:, None] / 2
            pts = rays_o[i][ray_indices] + rays_d[i][ray_indices] * t_mid
            d, c = field_single(field, pts, i, b)
            return c, d

        rgb, opacity, depth, _ = nerfacc.rendering(t0, t1, ray_idx, n_rays=n, rgb_sigma_fn=rgb_sigma_fn, render_bkgd=bg)
        outs["rgb"].append(rgb)
        outs["opacity"].append(opacity.squeeze(-1))
        outs["depth"].append(depth.squeeze(-1) / opacity.squeeze(-1).clamp_min(1e-8))
    return {k: torch.stack(v) for k, v in outs.items()}


def field_single(field, pts, index: int, batch: int):  # pragma: no cover - needs CUDA
    """Query object ``index`` of a batched field with packed points [M, 3] (other rows get one dummy point)."""
    padded = pts.new_zeros(batch, max(pts.shape[0], 1), 3)
    padded[index, : pts.shape[0]] = pts
    d, c = field(padded)
    return d[index, : pts.shape[0]], c[index, : pts.shape[0]]
