"""Triplane -> mesh: density grid (coarse-to-fine), marching cubes, vertex colours or a baked UV texture.

Density grid (narrow band): the field is sampled on the (N x N x N) grid of points spanning [-R, R]^3.
Instead of all N^3 points, ``coarse_factor`` f > 1 first samples every f-th point; a block of f^3 cells is
refined (all its fine points queried) when its 8 coarse corners straddle the threshold or lie within
``band`` of it (relative), or when the surface leaves an already refined neighbour through their shared face
(the surface is followed block to block); other blocks are filled by trilinear interpolation of the coarse
values, which keeps them on the same side of the threshold. Any N works: when f does not divide
N - 1 the index grid is extended past the cube to the next multiple (those extra points are queried only on
the coarse grid and cropped away). On smooth fields this gives the dense grid's mesh (tests compare them on
analytic fields and the shipped model) for a fraction of the queries; features thinner than a coarse block
can be missed, so ``coarse_factor=1`` is the exact dense path.

Orientation: meshes are produced in the canonical input-view frame (+Z up, input camera on +X looking at
the origin). ``to_viewer_frame`` maps it to the glTF/"Y-up" convention of common viewers
(x, y, z) -> (y, z, x): +Y up, the input view facing the viewer's default camera (+Z).
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

Query = Callable[[torch.Tensor], torch.Tensor]  # points [M, 3] -> density [M]

VIEWER_FROM_CANONICAL = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


def _grid_points(idx: torch.Tensor, n: int, radius: float) -> torch.Tensor:
    return idx.float() * (2 * radius / (n - 1)) - radius


def query_chunked(query: Query, points: torch.Tensor, chunk: int = 32768) -> torch.Tensor:
    out = [query(points[i:i + chunk]) for i in range(0, points.shape[0], chunk)]
    return torch.cat(out) if out else points.new_zeros(0)


@torch.no_grad()
def density_grid(query: Query, resolution: int, radius: float, threshold: float, coarse_factor: int = 4,
                 band: float = 0.5, chunk: int = 32768, device="cpu") -> Tuple[np.ndarray, dict]:
    """Density on the N^3 grid of points spanning [-R, R]^3. Returns (grid, stats)."""
    n, f = int(resolution), int(coarse_factor)
    if f <= 1 or (n - 1) // f < 2:
        lin = _grid_points(torch.arange(n, device=device), n, radius)
        pts = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), -1).reshape(-1, 3)
        return query_chunked(query, pts, chunk).reshape(n, n, n).cpu().numpy(), {"queries": n ** 3, "dense": True}
    nc = -(-(n - 1) // f) + 1  # coarse points per side; the index grid may extend past n - 1
    ci = torch.arange(nc, device=device) * f
    cg = torch.stack(torch.meshgrid(ci, ci, ci, indexing="ij"), -1).reshape(-1, 3)
    coarse = query_chunked(query, _grid_points(cg, n, radius), chunk).float().reshape(nc, nc, nc)
    full, queries, active = _refine_band(query, coarse, n, f, radius, threshold, band, chunk, device)
    return full.cpu().numpy(), {"queries": nc ** 3 + queries, "dense": False, "active_blocks": active,
                                "dense_queries": n ** 3}


def _refine_band(query: Query, coarse: torch.Tensor, n: int, f: int, radius: float, threshold: float, band: float,
                 chunk: int, device):
    """Fine grid [n, n, n] from the coarse grid (every f-th index, possibly past n - 1): blocks near the
    threshold queried exactly, the rest interpolated. Returns (grid, fine queries, active blocks).

    Blocks are found by following the surface: first those whose 8 coarse corners straddle the threshold or come
    within ``band`` of it; then, repeatedly, the neighbours across any face of a queried block whose exact fine
    values straddle the threshold (the surface leaves the block there), until no new block is found."""
    nc = coarse.shape[0]
    m = (nc - 1) * f + 1  # extended fine size >= n
    corners = torch.stack([coarse[i:nc - 1 + i, j:nc - 1 + j, k:nc - 1 + k]
                           for i in (0, 1) for j in (0, 1) for k in (0, 1)], 0)
    lo, hi = corners.amin(0), corners.amax(0)
    active = ((lo <= threshold) & (hi >= threshold)) | ((corners - threshold).abs().amin(0) <= band * abs(threshold))
    # fill everything by trilinear interpolation of the coarse grid, then overwrite active blocks exactly
    full = F.interpolate(coarse[None, None], size=(m, m, m), mode="trilinear", align_corners=True)[0, 0].contiguous()
    done = torch.zeros_like(active)
    taken = torch.zeros(m ** 3, dtype=torch.bool, device=device)  # fine points already queried
    off = torch.arange(f + 1, device=device)
    local = torch.stack(torch.meshgrid(off, off, off, indexing="ij"), -1).reshape(-1, 3)
    queries = 0
    new = active
    while bool(new.any()):
        blocks = new.nonzero()
        idx = (blocks[:, None, :] * f + local[None]).reshape(-1, 3)
        flat_all = (idx[:, 0] * m + idx[:, 1]) * m + idx[:, 2]
        want = torch.zeros(m ** 3, dtype=torch.bool, device=device)
        want[flat_all] = True  # de-duplicated through a flat mask (much faster than torch.unique(dim=0))
        want &= ~taken
        flat = want.nonzero().squeeze(1)
        idx = torch.stack([flat // (m * m), (flat // m) % m, flat % m], -1)
        idx = idx[(idx < n).all(1)]  # points past the cube are not part of the grid: they stay interpolated
        if len(idx):
            vals = query_chunked(query, _grid_points(idx, n, radius), chunk)
            full[idx[:, 0], idx[:, 1], idx[:, 2]] = vals.to(full.dtype)
            queries += idx.shape[0]
        taken |= want
        done |= new
        new = _face_neighbours(full, done, f, threshold) & ~done
    return full[:n, :n, :n].contiguous(), queries, int(done.sum())


def _face_neighbours(full: torch.Tensor, done: torch.Tensor, f: int, threshold: float) -> torch.Tensor:
    """Blocks [nb, nb, nb] sharing a face with a queried block (``done``) whose fine values straddle ``threshold``."""
    out = torch.zeros_like(done)
    for axis in range(3):
        g = full.movedim(axis, 0)[::f]  # the fine planes on block faces along this axis: [nb + 1, m, m]
        mx = F.max_pool2d(g[:, None], f + 1, stride=f)[:, 0]  # per face: [nb + 1, nb, nb]
        mn = -F.max_pool2d(-g[:, None], f + 1, stride=f)[:, 0]
        cross = (mn <= threshold) & (mx >= threshold)
        d = done.movedim(axis, 0)
        exact = torch.zeros_like(cross)  # a face is exact when a block on either side was queried
        exact[:-1] |= d
        exact[1:] |= d
        cross &= exact
        o = out.movedim(axis, 0)  # a view: writes go to ``out``
        o |= cross[:-1]  # the block after the face
        o |= cross[1:]  # the block before it
    return out


def smooth_log_density(grid: np.ndarray, sigma: float, floor: float = 1e-6) -> np.ndarray:
    """The density grid low-passed in the log domain: ``exp(G_sigma * log(max(grid, floor)))``, a Gaussian of
    ``sigma`` grid cells (edges extended). Marching cubes on it removes the lumps and cracks a learned field has at the
    scale of a few cells, while a field whose log is linear near the surface (a density falling off exponentially
    with distance, as ``trunc_exp`` fields do) keeps its level set where it was: a Gaussian leaves linear functions
    unchanged. ``sigma`` <= 0 returns the grid unchanged (a copy)."""
    g = np.asarray(grid)
    if sigma <= 0:
        return g.copy()
    from scipy.ndimage import gaussian_filter

    out = np.exp(gaussian_filter(np.log(np.maximum(g.astype(np.float64), floor)), float(sigma), mode="nearest"))
    return out.astype(g.dtype if np.issubdtype(g.dtype, np.floating) else np.float32)


def smoothing_cells(sigma_world: float, resolution: int, radius: float) -> float:
    """A length in world units as grid cells of an N-point grid spanning [-R, R]."""
    return float(sigma_world) * (int(resolution) - 1) / (2.0 * float(radius))


def marching_cubes(grid: np.ndarray, threshold: float, radius: float) -> Tuple[np.ndarray, np.ndarray]:
    """Vertices (world units) and faces of the ``threshold`` level set of a grid spanning [-R, R]^3."""
    import mcubes

    if not (grid.min() < threshold < grid.max()):
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    lo, hi = crossing_box(grid, threshold)
    v, f = mcubes.marching_cubes(np.ascontiguousarray(grid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]), float(threshold))
    n = grid.shape[0]
    v = (v + lo) * (2 * radius / (n - 1)) - radius
    return v, f.astype(np.int64)  # wound so normals point out of the dense region (tested)


def crossing_box(grid: np.ndarray, threshold: float) -> Tuple[np.ndarray, np.ndarray]:
    """The index box [lo, hi) holding every cell whose corners straddle ``threshold``, widened by one cell. Marching
    cubes on that crop gives the whole grid's triangles (a cell with a triangle has a crossing edge) in a fraction of
    the time when the surface fills a small part of the cube. Per axis, a slab of the grid is touched by a crossing
    edge iff it holds both sides (a mixed 2D grid has a crossing pair inside), or it and its neighbour are each
    one-sided, on different sides."""
    above = grid > threshold
    lo, hi = [], []
    for a in range(3):
        other = tuple(x for x in range(3) if x != a)
        some, every = above.any(axis=other), above.all(axis=other)
        mixed = some & ~every
        flip = ~mixed[:-1] & ~mixed[1:] & (every[:-1] != every[1:])  # uniform neighbours on different sides
        touched = mixed.copy()
        touched[:-1] |= flip
        touched[1:] |= flip
        hit = np.flatnonzero(touched)
        lo.append(max(int(hit[0]) - 1, 0) if len(hit) else 0)
        hi.append(min(int(hit[-1]) + 2, grid.shape[a]) if len(hit) else grid.shape[a])
    return np.array(lo), np.array(hi)


def taubin_smooth(vertices: np.ndarray, faces: np.ndarray, iterations: int, lamb: float = 0.5,
                  mu: float = -0.53) -> np.ndarray:
    """Taubin's low-pass filter of a triangle mesh's vertex positions: each iteration moves every vertex toward the
    mean of its edge neighbours by ``lamb`` and then away from it by ``-mu`` (|mu| > lamb), which removes the
    staircase and the cell-sized lumps of marching cubes while barely shrinking the shape (plain Laplacian smoothing
    shrinks it). Faces are unchanged; isolated vertices stay put. Returns new vertices [V, 3]."""
    v = np.asarray(vertices, dtype=np.float64)
    if iterations <= 0 or len(faces) == 0:
        return v.copy()
    from scipy.sparse import coo_matrix, diags

    f = np.asarray(faces, dtype=np.int64)
    i = np.concatenate([f[:, 0], f[:, 1], f[:, 2], f[:, 1], f[:, 2], f[:, 0]])
    j = np.concatenate([f[:, 1], f[:, 2], f[:, 0], f[:, 0], f[:, 1], f[:, 2]])
    adj = coo_matrix((np.ones(len(i)), (i, j)), shape=(len(v), len(v))).tocsr()
    adj.data[:] = 1.0  # an edge shared by two faces counts once
    deg = np.asarray(adj.sum(1)).ravel()
    mean = diags(np.where(deg > 0, 1.0 / np.maximum(deg, 1), 0.0)) @ adj  # row-normalised: the neighbours' mean
    lonely = deg == 0
    for _ in range(int(iterations)):
        for w in (lamb, mu):
            delta = mean @ v - v
            delta[lonely] = 0.0
            v = v + w * delta
    return v


def field_query(model, triplane, key: str, chunk: int = 32768, device="cpu") -> Callable[[np.ndarray], np.ndarray]:
    """``fn(points [M, 3] numpy) -> numpy`` evaluating ``model.query(triplane, ...)[key]`` in chunks, no grad.

    ``key`` is ``"density"`` ([M]) or ``"rgb"`` ([M, 3]); shared by the pipeline and the evaluation harness.
    """
    def fn(points: np.ndarray) -> np.ndarray:
        out = []
        with torch.no_grad():
            for i in range(0, len(points), chunk):
                p = torch.from_numpy(np.asarray(points[i:i + chunk], np.float32)).to(device)
                out.append(model.query(triplane, p[None])[key][0].float().cpu().numpy())
        if out:
            return np.concatenate(out)
        return np.zeros((0, 3) if key == "rgb" else (0,), np.float32)

    return fn


def to_viewer_frame(vertices: np.ndarray) -> np.ndarray:
    return vertices @ VIEWER_FROM_CANONICAL[:3, :3].T


def bake_uv_texture(vertices: np.ndarray, faces: np.ndarray, color_fn: Callable[[np.ndarray], np.ndarray],
                    size: int = 1024, k: int = 16):
    """xatlas UV unwrap + texture baked from ``color_fn(points [M, 3]) -> rgb [M, 3] in [0, 1]``.

    Returns (vertices', faces', uvs [V', 2], texture uint8 [size, size, 3]). Each texel centre is located in
    its UV triangle (k nearest triangle centroids, barycentric test); uncovered texels take the colour of
    the nearest covered one so seams don't show background.
    """
    import xatlas
    from scipy import ndimage
    from scipy.spatial import cKDTree

    vmap, new_faces, uvs = xatlas.parametrize(vertices.astype(np.float32), faces.astype(np.uint32))
    verts = vertices[vmap]
    tri_uv = uvs[new_faces] * size  # [F, 3, 2] in texel units
    tree = cKDTree(tri_uv.mean(1))
    yy, xx = np.mgrid[0:size, 0:size]
    px = np.stack([xx.ravel() + 0.5, yy.ravel() + 0.5], -1)
    _, cand = tree.query(px, k=min(k, len(new_faces)))
    cand = cand.reshape(len(px), -1)
    a, b, c = (tri_uv[cand, i] for i in range(3))  # [P, k, 2]
    v0, v1, v2 = b - a, c - a, px[:, None] - a
    d00, d01, d11 = (v0 * v0).sum(-1), (v0 * v1).sum(-1), (v1 * v1).sum(-1)
    d20, d21 = (v2 * v0).sum(-1), (v2 * v1).sum(-1)
    den = d00 * d11 - d01 * d01
    den = np.where(np.abs(den) < 1e-12, 1e-12, den)
    w1 = (d11 * d20 - d01 * d21) / den
    w2 = (d00 * d21 - d01 * d20) / den
    w0 = 1 - w1 - w2
    inside = (w0 >= -1e-4) & (w1 >= -1e-4) & (w2 >= -1e-4)
    has = inside.any(1)
    first = inside.argmax(1)
    rows = np.arange(len(px))
    tri = cand[rows, first]
    bary = np.stack([w0[rows, first], w1[rows, first], w2[rows, first]], -1)
    pts = (verts[new_faces[tri]] * bary[..., None]).sum(1)
    tex = np.zeros((size * size, 3), np.float32)
    if has.any():
        tex[has] = color_fn(pts[has])
    covered = has.reshape(size, size)
    if covered.any() and not covered.all():
        _, (iy, ix) = ndimage.distance_transform_edt(~covered, return_indices=True)
        tex = tex.reshape(size, size, 3)[iy, ix].reshape(-1, 3)
    # OpenGL-style UV origin at the bottom-left: flip rows so texture row 0 is v = 1
    texture = (np.clip(tex.reshape(size, size, 3), 0, 1) * 255 + 0.5).astype(np.uint8)[::-1]
    return verts, new_faces.astype(np.int64), uvs, np.ascontiguousarray(texture)


def build_trimesh(vertices, faces, vertex_colors: Optional[np.ndarray] = None, uvs=None, texture=None):
    import trimesh
    from PIL import Image

    if texture is not None:
        visual = trimesh.visual.TextureVisuals(uv=uvs, image=Image.fromarray(texture))
        return trimesh.Trimesh(vertices, faces, visual=visual, process=False)
    colors = None
    if vertex_colors is not None:
        colors = np.concatenate([(np.clip(vertex_colors, 0, 1) * 255 + 0.5).astype(np.uint8),
                                 np.full((len(vertex_colors), 1), 255, np.uint8)], 1)
    return trimesh.Trimesh(vertices, faces, vertex_colors=colors, process=False)
