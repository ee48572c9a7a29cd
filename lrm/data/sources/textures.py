"""Procedural colours and textures for untextured meshes (procedural shapes, pybullet random_urdfs)."""
from __future__ import annotations

import colorsys

import numpy as np
import trimesh
from PIL import Image


def random_color(rng: np.random.Generator) -> np.ndarray:
    """A random but not washed-out RGB colour in [0, 1] (HSV sampling)."""
    h = rng.random()
    s = rng.uniform(0.25, 0.95)
    v = rng.uniform(0.35, 0.95)
    return np.array(colorsys.hsv_to_rgb(h, s, v))


def texture_image(rng: np.random.Generator, size: int = 128) -> Image.Image:
    """One of: checker, stripes, smooth noise, dots, gradient; two or three random colours."""
    kind = rng.choice(["checker", "stripes", "noise", "dots", "gradient"])
    c0, c1 = random_color(rng), random_color(rng)
    y, x = np.mgrid[0:size, 0:size] / size
    if kind == "checker":
        n = rng.integers(2, 9)
        t = ((np.floor(x * n) + np.floor(y * n)) % 2).astype(np.float64)
    elif kind == "stripes":
        n = rng.integers(2, 12)
        ang = rng.uniform(0, np.pi)
        t = (np.sin((x * np.cos(ang) + y * np.sin(ang)) * n * 2 * np.pi) > 0).astype(np.float64)
    elif kind == "noise":
        g = rng.integers(3, 9)
        coarse = Image.fromarray((rng.random((g, g)) * 255).astype(np.uint8))
        t = np.asarray(coarse.resize((size, size), Image.BICUBIC), np.float64) / 255.0
    elif kind == "dots":
        n = rng.integers(3, 9)
        r = rng.uniform(0.15, 0.4)
        fx, fy = (x * n) % 1 - 0.5, (y * n) % 1 - 0.5
        t = ((fx**2 + fy**2) < r**2).astype(np.float64)
    else:
        t = x if rng.random() < 0.5 else y
    img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))


def box_project_uv(mesh: trimesh.Trimesh, scale: float) -> trimesh.Trimesh:
    """Unmerge vertices and give every face planar UVs along its dominant normal axis (no seams in a face)."""
    m = mesh.copy()
    m.unmerge_vertices()
    f = np.asarray(m.faces)
    axis = np.abs(np.asarray(m.face_normals)).argmax(1)
    v = np.asarray(m.vertices)
    uv = np.zeros((len(v), 2))
    other = {0: (1, 2), 1: (0, 2), 2: (0, 1)}
    for a, (i, j) in other.items():
        idx = f[axis == a].reshape(-1)
        uv[idx, 0] = v[idx, i] * scale
        uv[idx, 1] = v[idx, j] * scale
    return m, uv


def decorate(mesh: trimesh.Trimesh, rng: np.random.Generator, p_texture: float = 0.5) -> trimesh.Trimesh:
    """Give an untextured mesh a random flat colour or a random procedural texture (box-projected UVs)."""
    if rng.random() < p_texture:
        ext = float(np.ptp(np.asarray(mesh.vertices), axis=0).max()) or 1.0
        m, uv = box_project_uv(mesh, scale=rng.uniform(0.5, 2.0) / ext)
        mat = trimesh.visual.material.SimpleMaterial(image=texture_image(rng), diffuse=[255, 255, 255, 255])
        m.visual = trimesh.visual.TextureVisuals(uv=uv, material=mat)
        return m
    m = mesh.copy()
    c = (np.append(random_color(rng), 1.0) * 255).astype(np.uint8)
    m.visual = trimesh.visual.ColorVisuals(m, face_colors=np.tile(c, (len(m.faces), 1)))
    return m
