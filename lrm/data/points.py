"""3D supervision from the meshes we render: occupancy-labelled points and coloured surface samples.

Stored per object at build time (``lrm-build-data``, or ``--add-points`` over existing shards), in the
object's normalised world frame (the frame of the shard's cameras):

    points.npy       float16 [N, 3]  uniform in the ball of radius ``BALL_RADIUS`` (inside the triplane cube
                                     after any rotation about the origin) + Gaussian offsets from the surface
    occupancy.npy    uint8   [N]     1 inside (generalised winding number >= 0.5, libigl), else 0
    surface.npy      float16 [M, 3]  area-weighted surface samples
    surface_rgb.npy  uint8   [M, 3]  their colour as the renderer shades it (albedo from texture x material x
                                     vertex colour, times the record's half-Lambert light, normal turned outward)

The winding number is robust to open scans and inconsistent orientation, so labels stay meaningful where
ray parity fails. Colours match what the rendered views show (the decoder's colour is view-independent).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import trimesh

from ..conventions import OBJECT_BALL_RADIUS

BALL_RADIUS = OBJECT_BALL_RADIUS  # normalised objects fit in [-0.5, 0.5]^3, whose corners lie at sqrt(3)/2
NEAR_SCALES = (0.005, 0.02, 0.06)  # std of the Gaussian offsets from the surface (longest side = 1)
POINT_KEYS = ("points.npy", "occupancy.npy", "surface.npy", "surface_rgb.npy")


def winding_occupancy(vertices: np.ndarray, faces: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """bool [Q]: generalised winding number >= 0.5 (inside) of ``queries`` w.r.t. the triangle soup."""
    import igl

    w = igl.fast_winding_number(np.ascontiguousarray(vertices, np.float64), np.ascontiguousarray(faces, np.int64),
                                np.ascontiguousarray(queries, np.float64))
    return np.asarray(w) >= 0.5


def _soup(parts: Sequence[trimesh.Trimesh]):
    """All parts as one triangle soup: vertices [V, 3], faces [F, 3] (for the winding number)."""
    vs, fs, off = [], [], 0
    for p in parts:
        vs.append(np.asarray(p.vertices, np.float64))
        fs.append(np.asarray(p.faces, np.int64) + off)
        off += len(p.vertices)
    return np.concatenate(vs), np.concatenate(fs)


def texture_lookup(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Nearest texel of an RGBA/RGB uint8 ``image`` [H, W, C] at ``uv`` [N, 2] (OpenGL convention: v = 0 is
    the image's bottom row; coordinates wrap, as the renderer's repeat mode) -> float [N, 3] in [0, 1]."""
    h, w = image.shape[:2]
    u = np.mod(uv[:, 0], 1.0)
    v = np.mod(uv[:, 1], 1.0)
    col = np.clip((u * w).astype(np.int64), 0, w - 1)
    row = np.clip(((1.0 - v) * h).astype(np.int64), 0, h - 1)
    return image[row, col, :3].astype(np.float32) / 255.0


def surface_samples(parts: Sequence[trimesh.Trimesh], n: int, rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """Area-weighted surface samples with the renderer's albedo and interpolated normals:
    ``points`` [n, 3], ``albedo`` [n, 3], ``normals`` [n, 3] (unit, orientation as the mesh has it)."""
    from .render_gl import mesh_arrays

    tris, images, owner = [], [], []
    for i, p in enumerate(parts):
        data, image = mesh_arrays(p)
        tris.append(data.reshape(-1, 3, data.shape[-1]))
        images.append(image)
        owner.append(np.full(len(tris[-1]), i))
    tri = np.concatenate(tris)  # [F, 3, 12]: pos 0:3, normal 3:6, rgba 6:10, uv 10:12
    owner = np.concatenate(owner)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1, :3] - tri[:, 0, :3], tri[:, 2, :3] - tri[:, 0, :3]), axis=-1)
    if not np.isfinite(area).all() or area.sum() <= 0:
        raise ValueError("mesh has no surface area")
    face = rng.choice(len(tri), size=n, p=area / area.sum())
    r1, r2 = np.sqrt(rng.random(n)), rng.random(n)
    bary = np.stack([1 - r1, r1 * (1 - r2), r1 * r2], -1)[..., None]  # uniform on the triangle
    attr = (tri[face] * bary).sum(1)
    albedo = attr[:, 6:9].copy()
    for i, image in enumerate(images):
        sel = (owner[face] == i)
        if image is not None and sel.any():
            albedo[sel] *= texture_lookup(image, attr[sel, 10:12])
    nrm = attr[:, 3:6]
    nrm = nrm / np.maximum(np.linalg.norm(nrm, axis=-1, keepdims=True), 1e-12)
    return {"points": attr[:, :3], "albedo": np.clip(albedo, 0, 1), "normals": nrm}


def half_lambert(albedo: np.ndarray, normals: np.ndarray, light_dir: Sequence[float], ambient: float) -> np.ndarray:
    """The dataset renderer's shading: ``albedo * (ambient + (1 - ambient) * (0.5 + 0.5 n.l))``."""
    light = np.asarray(light_dir, np.float64)
    light = light / max(np.linalg.norm(light), 1e-12)
    shade = ambient + (1.0 - ambient) * (0.5 + 0.5 * normals @ light)
    return np.clip(albedo * shade[:, None], 0, 1)


def outward(normals: np.ndarray, points: np.ndarray, vertices, faces, eps: float = 2e-3) -> np.ndarray:
    """Turn each normal toward the side of lower winding number (outside), as a viewer outside sees it."""
    w_plus = winding_occupancy(vertices, faces, points + eps * normals)
    w_minus = winding_occupancy(vertices, faces, points - eps * normals)
    flip = w_plus & ~w_minus
    return np.where(flip[:, None], -normals, normals)


def object_points(parts: Sequence[trimesh.Trimesh], rng: np.random.Generator, n_uniform: int = 4096,
                  n_near: int = 6144, n_surface: int = 4096, light_dir: Optional[Sequence[float]] = None,
                  ambient: float = 0.45) -> Dict[str, np.ndarray]:
    """The stored point arrays of one normalised object (module docstring), as numpy arrays keyed by the
    shard member names."""
    from .render_gl import DEFAULT_LIGHT

    V, F = _soup(parts)
    surf = surface_samples(parts, n_surface + n_near, rng)
    # uniform in the ball: direction x radius^(1/3)
    d = rng.normal(size=(n_uniform, 3))
    d /= np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-12)
    uni = d * (BALL_RADIUS * rng.random(n_uniform) ** (1 / 3))[:, None]
    base = surf["points"][n_surface:]
    scale = np.asarray(NEAR_SCALES)[rng.integers(0, len(NEAR_SCALES), n_near)]
    near = base + rng.normal(size=(n_near, 3)) * scale[:, None]
    r = np.linalg.norm(near, axis=-1, keepdims=True)
    near = np.where(r > BALL_RADIUS, near * (BALL_RADIUS / np.maximum(r, 1e-12)), near)
    pts = np.concatenate([uni, near]).astype(np.float16)  # labels of the stored (rounded) coordinates
    occ = winding_occupancy(V, F, pts.astype(np.float64))
    sp, sn = surf["points"][:n_surface], surf["normals"][:n_surface]
    sn = outward(sn, sp, V, F)
    rgb = half_lambert(surf["albedo"][:n_surface], sn, DEFAULT_LIGHT if light_dir is None else light_dir, ambient)
    return {"points.npy": pts, "occupancy.npy": occ.astype(np.uint8),
            "surface.npy": sp.astype(np.float16), "surface_rgb.npy": np.round(rgb * 255).astype(np.uint8)}
