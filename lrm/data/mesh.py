"""Meshes for the data pipeline: loading, validation and normalisation (docs/conventions.md).

An object is handled as a list of ``trimesh.Trimesh`` *parts* (a loaded scene flattened with its
transforms applied), so each part keeps its own texture or colours; the renderer draws them all.

Normalisation (conventions): translate the axis-aligned bounding-box centre to the origin and scale
so the longest bounding-box side is 1.0. The 4x4 transform is returned so it can be stored.

Degenerate or broken inputs raise :class:`MeshError` with a short reason; callers record the reason
(the dataset builder writes it to its manifest) instead of crashing.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import trimesh

Parts = List[trimesh.Trimesh]

MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".off", ".stl", ".dae", ".3mf")


class MeshError(ValueError):
    """A mesh that cannot be used (empty, degenerate, unreadable); ``str(e)`` is the reason."""


def load_parts(path_or_obj, file_type: Optional[str] = None, up: str = "z") -> Parts:
    """Load a mesh file (or accept a Trimesh/Scene/list) as a list of parts in a +Z-up world.

    ``up`` is the source's up axis: ``"z"`` (unchanged), ``"y"`` (glTF, OBJ exports, AC3D: rotate +Y to
    +Z) or ``"-y"``. Raises :class:`MeshError` when nothing usable is found.
    """
    obj = path_or_obj
    if isinstance(obj, (str, Path)):
        try:
            obj = trimesh.load(str(obj), file_type=file_type, process=False)
        except Exception as e:  # noqa: BLE001 - any loader failure is a skip reason
            raise MeshError(f"unreadable: {type(e).__name__}: {e}"[:300]) from e
    elif isinstance(obj, (bytes, bytearray)):
        try:
            obj = trimesh.load(io.BytesIO(obj), file_type=file_type, process=False)
        except Exception as e:  # noqa: BLE001
            raise MeshError(f"unreadable: {type(e).__name__}: {e}"[:300]) from e
    if isinstance(obj, trimesh.Scene):
        try:
            parts = obj.dump(concatenate=False)
        except Exception as e:  # noqa: BLE001
            raise MeshError(f"scene flatten failed: {e}"[:300]) from e
    elif isinstance(obj, trimesh.Trimesh):
        parts = [obj]
    elif isinstance(obj, (list, tuple)):
        parts = list(obj)
    else:
        raise MeshError(f"not a triangle mesh ({type(obj).__name__})")
    parts = [p for p in parts if isinstance(p, trimesh.Trimesh) and len(p.faces) > 0 and len(p.vertices) > 0]
    if not parts:
        raise MeshError("empty: no triangles")
    if up != "z":
        rot = up_to_z(up)
        parts = [p.copy() for p in parts]
        for p in parts:
            p.apply_transform(rot)
    return parts


def up_to_z(up: str) -> np.ndarray:
    """4x4 rotation taking the given up axis to +Z (right-handed, keeps handedness)."""
    if up == "y":  # (x, y, z) -> (x, -z, y): +Y goes to +Z, +Z (glTF front) to -Y
        return np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
    if up == "-y":
        return np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
    if up == "z":
        return np.eye(4)
    raise ValueError(f"unknown up axis {up!r}")


def bounds(parts: Sequence[trimesh.Trimesh]) -> np.ndarray:
    v = np.concatenate([np.asarray(p.vertices, dtype=np.float64) for p in parts])
    return np.stack([v.min(0), v.max(0)])


def normalization_transform(parts: Sequence[trimesh.Trimesh]) -> np.ndarray:
    """4x4 similarity: AABB centre to the origin, longest AABB side to 1.0."""
    lo, hi = bounds(parts)
    size = float((hi - lo).max())
    if not np.isfinite(size) or size <= 1e-12:
        raise MeshError("degenerate: zero-size bounding box")
    s = 1.0 / size
    T = np.eye(4)
    T[:3, :3] *= s
    T[:3, 3] = -s * (lo + hi) / 2
    return T


def validate(parts: Sequence[trimesh.Trimesh], min_faces: int = 4) -> None:
    """Raise :class:`MeshError` for meshes that would render as nothing or garbage."""
    nf = sum(len(p.faces) for p in parts)
    if nf < min_faces:
        raise MeshError(f"degenerate: only {nf} faces")
    for p in parts:
        v = np.asarray(p.vertices)
        if not np.isfinite(v).all():
            raise MeshError("broken: non-finite vertex coordinates")
        f = np.asarray(p.faces)
        if f.size and (f.min() < 0 or f.max() >= len(v)):
            raise MeshError("broken: face index out of range")
    area = sum(float(p.area) for p in parts)
    if not np.isfinite(area) or area <= 1e-12:
        raise MeshError("degenerate: zero surface area")
    lo, hi = bounds(parts)
    ext = np.sort(hi - lo)
    if ext[-1] <= 1e-12:
        raise MeshError("degenerate: zero-size bounding box")
    if ext[1] / ext[-1] < 1e-3:  # a line, not a surface
        raise MeshError("degenerate: collapsed to a line")
    if ext[0] / ext[-1] < 1e-3:  # a single flat sheet (billboard, ground plane): no 3D shape to learn
        raise MeshError("degenerate: flat (zero thickness)")


def normalize_parts(parts: Sequence[trimesh.Trimesh]) -> Tuple[Parts, np.ndarray]:
    """Validate, then return normalised copies of the parts and the 4x4 transform applied."""
    validate(parts)
    T = normalization_transform(parts)
    out = []
    for p in parts:
        q = p.copy()
        q.apply_transform(T)
        out.append(q)
    return out, T


def transform_parts(parts: Sequence[trimesh.Trimesh], M: np.ndarray) -> Parts:
    out = []
    for p in parts:
        q = p.copy()
        q.apply_transform(np.asarray(M, dtype=np.float64))
        out.append(q)
    return out


def to_vertex_colored(parts: Sequence[trimesh.Trimesh]) -> trimesh.Trimesh:
    """One mesh with per-vertex RGBA colours (textures sampled at the vertices), e.g. for a GT ``.ply``."""
    meshes = []
    for p in parts:
        q = trimesh.Trimesh(vertices=np.asarray(p.vertices), faces=np.asarray(p.faces), process=False)
        try:
            visual = p.visual if isinstance(p.visual, trimesh.visual.ColorVisuals) else p.visual.to_color()
            colors = visual.vertex_colors  # vertex or face colours (face colours averaged to the vertices)
            colors = np.asarray(colors, dtype=np.uint8)
            if colors.shape != (len(p.vertices), 4):
                raise ValueError
        except Exception:  # noqa: BLE001 - untextured / odd visuals fall back to grey
            colors = np.tile(np.array([[180, 180, 180, 255]], np.uint8), (len(p.vertices), 1))
        q.visual = trimesh.visual.ColorVisuals(q, vertex_colors=colors)
        meshes.append(q)
    return trimesh.util.concatenate(meshes) if len(meshes) > 1 else meshes[0]


def surface_points(parts: Sequence[trimesh.Trimesh], n: int, seed: int = 0) -> np.ndarray:
    """Area-weighted surface samples of all parts, [n, 3]."""
    m = trimesh.util.concatenate([trimesh.Trimesh(p.vertices, p.faces, process=False) for p in parts])
    pts, _ = trimesh.sample.sample_surface(m, n, seed=seed)
    return np.asarray(pts)
