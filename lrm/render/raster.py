"""Dependency-light mesh rasteriser: the evaluation harness's fallback mesh renderer.

``render_mesh(mesh, c2w, intrinsics, resolution) -> (rgba [H, W, 4] float32 in [0, 1], depth [H, W])``
follows the project's camera conventions (``lrm.cameras``: OpenCV camera-to-world, normalised intrinsics,
pixel centres at +0.5). It is a vectorised numpy z-buffer rasteriser:

1. vertices are moved to camera space and projected; triangles with a vertex closer than ``near`` are dropped;
2. every triangle is expanded to the pixel centres inside its (clipped) screen bounding box, barycentric
   coordinates are computed with edge functions and pixels outside the triangle are discarded;
3. the nearest candidate per pixel wins (lexsort on pixel, depth); attributes are interpolated
   perspective-correctly (weights b_i / z_i, renormalised).

Colours are unlit albedo (vertex colours, face colours, or a texture converted to vertex colours by trimesh)
times an optional headlight term ``ambient + (1 - ambient) |n . v|``; ``ambient = 1`` (default) is unlit.
No anti-aliasing unless ``ssaa > 1`` (supersampling then box filtering). Good enough for 128-256² silhouettes
and colours; a GPU/EGL renderer with the same signature can be injected wherever this one is used.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

DEFAULT_COLOR = (0.7, 0.7, 0.7)
_MAX_CANDIDATES = 4_000_000  # pixel candidates processed at once (bounds memory)


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def mesh_vertex_colors(mesh) -> Tuple[np.ndarray, bool]:
    """Per-vertex (or per-face) RGB in [0, 1]: returns (colors, per_face)."""
    vis = getattr(mesh, "visual", None)
    kind = getattr(vis, "kind", None)
    try:
        if kind == "texture":
            vis = vis.to_color()
            kind = vis.kind
        if kind == "vertex":
            c = np.asarray(vis.vertex_colors, dtype=np.float64)[:, :3] / 255.0
            if len(c) == len(mesh.vertices):
                return c, False
        if kind == "face":
            c = np.asarray(vis.face_colors, dtype=np.float64)[:, :3] / 255.0
            if len(c) == len(mesh.faces):
                return c, True
    except Exception:  # malformed visuals: fall back to grey
        pass
    return np.tile(np.asarray(DEFAULT_COLOR), (len(mesh.vertices), 1)), False


def render_mesh(mesh, c2w, intrinsics, resolution, ambient: float = 1.0, ssaa: int = 1,
                near: float = 1e-3) -> Tuple[np.ndarray, np.ndarray]:
    """Rasterise a trimesh at one camera. ``resolution`` is an int (square) or (H, W).

    Returns ``rgba`` [H, W, 4] float32 (straight alpha; colour 0 where alpha is 0) and ``depth`` [H, W]
    (camera z, ``inf`` on background).
    """
    h, w = (resolution, resolution) if np.isscalar(resolution) else tuple(int(r) for r in resolution)
    if ssaa > 1:
        rgba, depth = render_mesh(mesh, c2w, intrinsics, (h * ssaa, w * ssaa), ambient, 1, near)
        rgba = rgba.reshape(h, ssaa, w, ssaa, 4)
        a = rgba[..., 3].mean((1, 3))
        rgb = (rgba[..., :3] * rgba[..., 3:]).mean((1, 3)) / np.maximum(a, 1e-8)[..., None]
        d = depth.reshape(h, ssaa, w, ssaa).min((1, 3))
        return np.concatenate([rgb, a[..., None]], -1).astype(np.float32), d
    c2w, K = _np(c2w), _np(intrinsics)
    rgba = np.zeros((h, w, 4), np.float32)
    depth = np.full((h, w), np.inf, np.float32)
    if mesh is None or len(mesh.faces) == 0:
        return rgba, depth
    V = np.asarray(mesh.vertices, np.float64)
    Fc = np.asarray(mesh.faces, np.int64)
    w2c_r = c2w[:3, :3].T
    pc = (V - c2w[:3, 3]) @ w2c_r.T  # camera-space vertices
    z = pc[:, 2]
    fx, fy, cx, cy = K[0] * w, K[1] * h, K[2] * w, K[3] * h
    with np.errstate(divide="ignore", invalid="ignore"):
        u = pc[:, 0] / z * fx + cx
        v = pc[:, 1] / z * fy + cy
    tz = z[Fc]
    keep = (tz > near).all(1)
    tu, tv = u[Fc], v[Fc]
    # screen bounding boxes in pixel indices whose centres (i + 0.5) may fall inside
    x0 = np.clip(np.ceil(tu.min(1) - 0.5), 0, w).astype(np.int64)
    x1 = np.clip(np.floor(tu.max(1) - 0.5), -1, w - 1).astype(np.int64)
    y0 = np.clip(np.ceil(tv.min(1) - 0.5), 0, h).astype(np.int64)
    y1 = np.clip(np.floor(tv.max(1) - 0.5), -1, h - 1).astype(np.int64)
    bw, bh = x1 - x0 + 1, y1 - y0 + 1
    keep &= (bw > 0) & (bh > 0)
    area2 = (tu[:, 1] - tu[:, 0]) * (tv[:, 2] - tv[:, 0]) - (tu[:, 2] - tu[:, 0]) * (tv[:, 1] - tv[:, 0])
    keep &= np.abs(area2) > 1e-12
    tris = np.nonzero(keep)[0]
    if len(tris) == 0:
        return rgba, depth
    counts = (bw * bh)[tris]
    best_pix, best_z, best_tri, best_b = [], [], [], []
    starts = np.concatenate([[0], np.cumsum(counts)])
    # chunk triangles so that at most ~_MAX_CANDIDATES pixel candidates exist at a time
    bounds = [0]
    while bounds[-1] < len(tris):
        lo = bounds[-1]
        hi = int(np.searchsorted(starts, starts[lo] + _MAX_CANDIDATES, side="right")) - 1
        bounds.append(min(max(hi, lo + 1), len(tris)))
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        t = tris[lo:hi]
        cnt = counts[lo:hi]
        tri = np.repeat(t, cnt)
        local = np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        px = x0[tri] + local % bw[tri]
        py = y0[tri] + local // bw[tri]
        sx, sy = px + 0.5, py + 0.5
        a_u, a_v = tu[tri], tv[tri]
        # barycentrics via edge functions (sign-independent of winding)
        e0 = (a_u[:, 1] - sx) * (a_v[:, 2] - sy) - (a_u[:, 2] - sx) * (a_v[:, 1] - sy)
        e1 = (a_u[:, 2] - sx) * (a_v[:, 0] - sy) - (a_u[:, 0] - sx) * (a_v[:, 2] - sy)
        e2 = (a_u[:, 0] - sx) * (a_v[:, 1] - sy) - (a_u[:, 1] - sx) * (a_v[:, 0] - sy)
        ar = area2[tri]
        b = np.stack([e0, e1, e2], 1) / ar[:, None]
        inside = (b >= -1e-9).all(1)
        if not inside.any():
            continue
        tri, px, py, b = tri[inside], px[inside], py[inside], b[inside]
        inv_z = (b / tz[tri]).sum(1)
        zz = 1.0 / inv_z
        pix = py * w + px
        order = np.lexsort((zz, pix))
        pix, zz, tri, b = pix[order], zz[order], tri[order], b[order]
        first = np.ones(len(pix), bool)
        first[1:] = pix[1:] != pix[:-1]
        best_pix.append(pix[first]); best_z.append(zz[first]); best_tri.append(tri[first]); best_b.append(b[first])
    if not best_pix:
        return rgba, depth
    pix, zz, tri, b = (np.concatenate(x) for x in (best_pix, best_z, best_tri, best_b))
    if len(best_pix) > 1:  # merge the chunks' z-buffers
        order = np.lexsort((zz, pix))
        pix, zz, tri, b = pix[order], zz[order], tri[order], b[order]
        first = np.ones(len(pix), bool)
        first[1:] = pix[1:] != pix[:-1]
        pix, zz, tri, b = pix[first], zz[first], tri[first], b[first]
    colors, per_face = mesh_vertex_colors(mesh)
    if per_face:
        col = colors[tri]
    else:
        bp = b / tz[tri]
        bp /= bp.sum(1, keepdims=True)
        col = (colors[Fc[tri]] * bp[..., None]).sum(1)
    if ambient < 1.0:
        tv3 = V[Fc[tri]]
        n = np.cross(tv3[:, 1] - tv3[:, 0], tv3[:, 2] - tv3[:, 0])
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        iy, ix = np.divmod(pix, w)
        dirs = np.stack([((ix + 0.5) - cx) / fx, ((iy + 0.5) - cy) / fy, np.ones(len(ix))], 1) @ c2w[:3, :3].T
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        col = col * (ambient + (1.0 - ambient) * np.abs((n * dirs).sum(1)))[:, None]
    flat = rgba.reshape(-1, 4)
    flat[pix, :3] = np.clip(col, 0, 1)
    flat[pix, 3] = 1.0
    depth.reshape(-1)[pix] = zz
    return rgba, depth


def render_views(mesh, c2w, intrinsics, resolution, renderer=None, **kw) -> np.ndarray:
    """RGBA [V, H, W, 4] float32 for cameras c2w [V, 4, 4], intrinsics [V, 4] with ``renderer``
    (any ``render_mesh``-compatible callable; default this module's rasteriser)."""
    renderer = renderer or render_mesh
    c2w, intrinsics = _np(c2w), _np(intrinsics)
    return np.stack([np.asarray(renderer(mesh, c2w[i], intrinsics[i], resolution, **kw)[0], np.float32)
                     for i in range(len(c2w))])
