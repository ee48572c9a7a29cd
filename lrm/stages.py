"""The inference stages as functions over plain values: image(s) -> triplane -> mesh / views.

    front end       lrm/preprocess.py (one image), lrm/multiview_input.py (posed photos),
                    lrm/frontend.py (multi-view diffusion)                    -> views [V, S, S, 3] + cameras [V, 16]
    reconstruct     :func:`reconstruct`                                      -> triplane [1, 3, C, H, W]
    refine          lrm/refine (reference losses, SDS)                       -> triplane (+ decoder)
    mesh            :func:`extract_mesh` (density grid, marching cubes, colours; lrm/mesh.py); the surface level
                    fixed by the checkpoint or matched to the input's silhouette (:func:`silhouette_level`)
    views           :func:`render_views`, :func:`turntable` (the shared renderer with empty-space skipping)
    export          lrm/pipeline.export_mesh, lrm/outputs.py

``lrm.pipeline.Pipeline`` (infer.py, the Python API, the app), the evaluation methods (lrm/evaluate/methods.py),
the refinement's re-export and the figures all call these, so an output is computed one way everywhere.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from . import cameras as C
from .mesh import (bake_uv_texture, build_trimesh, density_grid, field_query, marching_cubes, smooth_log_density,
                   smoothing_cells, taubin_smooth)
from .precision import autocast_for

Progress = Callable[[str, float], None]  # (stage, fraction of that stage done)


@torch.no_grad()
def reconstruct(model, images: np.ndarray, cameras: torch.Tensor, precision: str = "fp32",
                device: Optional[torch.device] = None) -> torch.Tensor:
    """The model on V prepared views: images [V, S, S, 3] (or one [S, S, 3]) in [0, 1], camera vectors [V, 16]
    (or [16]) in the canonical frame of view 0 -> triplane [1, 3, C, H, W] in fp32 (the decoder and the renderer
    run in fp32 whatever ``precision`` the encoder and transformer used)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    images = np.asarray(images, np.float32)
    if images.ndim == 3:
        images = images[None]
    cameras = torch.as_tensor(cameras)
    if cameras.ndim == 1:
        cameras = cameras[None]
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)[None].to(device)  # [1, V, 3, S, S]
    with autocast_for(precision, device):
        tri = model(x, cameras[None].float().to(device))  # cameras [1, V, 16]
    return tri.float()


def density_fn(model, triplane) -> Callable[[torch.Tensor], torch.Tensor]:
    """points [M, 3] -> density [M] of the triplane (for lrm.mesh.density_grid)."""
    return lambda p: model.query(triplane, p[None])["density"][0]


def extract_mesh(model, triplane, *, resolution: int, threshold: float, radius: float, coarse_factor: int = 4,
                 chunk: int = 32768, texture: str = "vertex", texture_size: int = 1024, smooth: int = 0,
                 field_smooth: float = 0.0, timings: Optional[Dict[str, float]] = None, stats: Optional[dict] = None):
    """Density on a ``resolution``^3 grid over [-R, R]^3 (coarse-to-fine with ``coarse_factor`` > 1), optionally
    smoothed in the log domain with a Gaussian of ``field_smooth`` world units (lrm.mesh.smooth_log_density), marching
    cubes at ``threshold`` (outward normals), ``smooth`` Taubin iterations (lrm.mesh.taubin_smooth; 0: none), colours from
    the colour field at the (smoothed) vertices (or a baked UV texture).
    Returns a trimesh, empty when the density never crosses the threshold; fills ``timings`` / ``stats``."""
    timings = {} if timings is None else timings
    stats = {} if stats is None else stats
    device = triplane.device
    t = time.perf_counter()
    grid, gstats = density_grid(density_fn(model, triplane), resolution, radius, threshold, coarse_factor,
                                chunk=chunk, device=device)
    timings["density_grid"] = time.perf_counter() - t
    stats.update(gstats)
    stats.update(density_max=float(grid.max()), density_mean=float(grid.mean()))
    if field_smooth and field_smooth > 0:
        t = time.perf_counter()
        grid = smooth_log_density(grid, smoothing_cells(field_smooth, resolution, radius))
        stats["smoothed_density_max"] = float(grid.max())
        timings["field_smooth"] = time.perf_counter() - t
    t = time.perf_counter()
    verts, faces = marching_cubes(grid, threshold, radius)
    timings["marching_cubes"] = time.perf_counter() - t
    if smooth:
        t = time.perf_counter()
        verts = taubin_smooth(verts, faces, smooth)
        timings["smooth"] = time.perf_counter() - t
    t = time.perf_counter()
    colours = field_query(model, triplane, "rgb", chunk, device)
    if len(faces) and texture == "uv":
        v2, f2, uvs, tex = bake_uv_texture(verts, faces, colours, texture_size)
        mesh = build_trimesh(v2, f2, uvs=uvs, texture=tex)
    else:
        mesh = build_trimesh(verts, faces, colours(verts) if len(verts) else None)
    timings["texture"] = time.perf_counter() - t
    return mesh


DEFAULT_LEVELS = (2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 14.0, 20.0, 28.0, 40.0)  # candidates of silhouette_level
SILHOUETTE_RESOLUTION = 64  # input-camera rays per side for it


@torch.no_grad()
def ray_max_density(model, triplane, c2w: torch.Tensor, intrinsics: torch.Tensor, resolution: int, radius: float,
                    samples: int = 128, chunk: int = 65536) -> torch.Tensor:
    """The largest density along each pixel's ray through the cube [-R, R]^3 (``samples`` midpoints between the
    ray's entry and exit) of one view: [resolution, resolution]; 0 where the ray misses the cube. A ray meets the
    level set {density = L} iff this is >= L, so ``ray_max_density >= L`` is the silhouette of the mesh at level L
    (up to the sampling along the ray)."""
    from .render.volume import near_far, uniform_samples

    device = triplane.device
    c2w = torch.as_tensor(c2w, dtype=torch.float32).to(device).reshape(4, 4)
    intr = torch.as_tensor(intrinsics, dtype=torch.float32).to(device).reshape(4)
    rays_o, rays_d = C.get_rays(c2w, intr, int(resolution), int(resolution))  # [N, 3]
    t_near, t_far, valid = near_far(rays_o, rays_d, radius)
    t = uniform_samples(t_near, t_far, int(samples), randomize=False)  # [N, S]
    points = rays_o[:, None] + rays_d[:, None] * t[..., None]
    dens = density_fn(model, triplane)
    flat = points.reshape(-1, 3)
    out = torch.cat([dens(flat[i:i + chunk]) for i in range(0, len(flat), chunk)]).reshape(t.shape)
    best = out.amax(dim=-1).where(valid, torch.zeros((), device=device))
    return best.reshape(int(resolution), int(resolution)).float()


def silhouette_level(max_density: torch.Tensor, mask: torch.Tensor,
                     levels: Sequence[float] = DEFAULT_LEVELS) -> tuple:
    """The density level whose silhouette (``max_density >= level``) best matches ``mask`` [H, W] (in [0, 1],
    thresholded at 0.5; resized to ``max_density``'s size by area averaging first) by IoU: (level, {level: IoU}).
    Ties go to the first level in ``levels``."""
    import torch.nn.functional as F

    if not len(levels):
        raise ValueError("silhouette_level needs at least one candidate level")
    m = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask, dtype=torch.float32)
    if m.ndim != 2:
        raise ValueError(f"mask must be [H, W], got {tuple(m.shape)}")
    size = tuple(max_density.shape[-2:])
    if tuple(m.shape) != size:
        m = F.interpolate(m[None, None], size=size, mode="area")[0, 0]
    target = m.to(max_density.device) >= 0.5
    ious = {}
    for lv in levels:
        sil = max_density >= float(lv)
        union = (sil | target).sum().item()
        ious[float(lv)] = (sil & target).sum().item() / union if union else 1.0
    best = max(ious, key=lambda k: ious[k])  # max() keeps the first of equal values
    return best, ious


@torch.no_grad()
def render_views(model, triplane, c2w: torch.Tensor, intrinsics: torch.Tensor, resolution: int,
                 background: Sequence[float] = (1.0, 1.0, 1.0), occupancy="auto",
                 progress: Optional[Progress] = None) -> Iterator[Dict[str, torch.Tensor]]:
    """Volume-render views c2w [N, 4, 4] with intrinsics [N, 4] (or one [4] for all) one at a time (memory stays
    flat): yields {"rgb" [H, W, 3] premultiplied on ``background``, "opacity" [H, W], "depth" [H, W]} per view.
    ``occupancy="auto"`` builds the empty-space-skipping grid once for all views; None renders densely."""
    device = triplane.device
    c2w = torch.as_tensor(c2w, dtype=torch.float32).to(device)
    intrinsics = torch.as_tensor(intrinsics, dtype=torch.float32).to(device)
    if intrinsics.ndim == 1:
        intrinsics = intrinsics.expand(len(c2w), 4)
    if isinstance(occupancy, str) and occupancy == "auto":
        occupancy = model.occupancy_grid(triplane)
    n = len(c2w)
    for i in range(n):
        if progress:
            progress("views", i / n)
        out = model.render(triplane, c2w[None, i:i + 1], intrinsics[None, i:i + 1], int(resolution),
                           background=list(background), occupancy=occupancy)
        yield {k: out[k][0, 0] for k in ("rgb", "opacity", "depth") if k in out}


def turntable_cameras(frames: int, elevation_deg: float, distance: float, fov_deg: float):
    """``frames`` orbit cameras at ``elevation_deg`` (azimuth 0 = the input view): c2w [N, 4, 4], intrinsics [4]."""
    return C.orbit_cameras(int(frames), elevation_deg, distance), C.intrinsics_from_fov(fov_deg)


def turntable(model, triplane, frames: int, elevation_deg: float, distance: float, fov_deg: float, resolution: int,
              progress: Optional[Progress] = None) -> List[np.ndarray]:
    """A turntable of the triplane on white: uint8 frames [H, W, 3]."""
    c2w, intr = turntable_cameras(frames, elevation_deg, distance, fov_deg)
    report = (lambda stage, done: progress("turntable", done)) if progress else None
    return [(v["rgb"].clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
            for v in render_views(model, triplane, c2w, intr, resolution, progress=report)]


def straight_rgba(view: Dict[str, torch.Tensor], background: Sequence[float]) -> torch.Tensor:
    """A rendered view (rgb premultiplied on ``background``, opacity) -> straight-alpha RGBA [H, W, 4] in [0, 1]."""
    rgb, a = view["rgb"].clamp(0, 1), view["opacity"].clamp(0, 1)
    bg = torch.as_tensor(background, dtype=rgb.dtype, device=rgb.device)
    straight = (rgb - (1 - a[..., None]) * bg) / a[..., None].clamp_min(1e-6)
    return torch.cat([straight.clamp(0, 1), a[..., None]], -1)
