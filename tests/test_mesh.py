"""Mesh extraction against analytic density fields."""
import math

import numpy as np
import pytest
import torch

from lrm.mesh import (VIEWER_FROM_CANONICAL, bake_uv_texture, build_trimesh, crossing_box, density_grid, marching_cubes,
                      to_viewer_frame)


def sphere_density(center=(0.1, -0.05, 0.0), radius=0.45):
    c = torch.tensor(center)
    return lambda p: 20.0 * torch.sigmoid((radius - (p - c).norm(dim=-1)) * 40.0)


def test_marching_cubes_sphere_volume_and_outward_normals():
    grid, _ = density_grid(sphere_density(), 65, 0.87, 10.0, coarse_factor=1)
    v, f = marching_cubes(grid, 10.0, 0.87)
    m = build_trimesh(v, f)
    assert m.is_watertight
    assert m.volume > 0  # positive volume <=> faces wound with outward normals
    assert m.volume == pytest.approx(4 / 3 * math.pi * 0.45 ** 3, rel=0.03)
    r = np.linalg.norm(v - np.array([0.1, -0.05, 0.0]), axis=1)
    assert np.abs(r - 0.45).max() < 2 * 0.87 * 2 / 64
    assert np.abs(v).max() <= 0.87 + 1e-6


def test_coarse_to_fine_gives_the_dense_mesh_with_fewer_queries():
    field = sphere_density()
    dense, sd = density_grid(field, 129, 0.87, 10.0, coarse_factor=1)
    fast, sf = density_grid(field, 129, 0.87, 10.0, coarse_factor=4)
    assert sf["queries"] < 0.35 * sd["queries"]
    v1, f1 = marching_cubes(dense, 10.0, 0.87)
    v2, f2 = marching_cubes(fast, 10.0, 0.87)
    assert len(f1) == len(f2) and np.allclose(v1, v2, atol=1e-6)


@pytest.mark.parametrize("field", ["ball", "slab", "corner", "two_blobs", "specks"])
def test_marching_cubes_on_the_crossing_box_equals_the_whole_grid(field):
    """The crop to the cells that straddle the level (lrm.mesh.crossing_box) changes nothing: the same vertices and
    faces, in the same order, as PyMCubes on the uncropped grid (the independent reference)."""
    import mcubes

    n = 65
    x = np.linspace(-1, 1, n)
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    grids = {"ball": 3 - 16 * ((X - 0.2) ** 2 + Y ** 2 + (Z + 0.1) ** 2),
             "slab": 0.05 - np.abs(X + 0.3 * Y),  # reaches the cube's faces on two axes
             "corner": 1.5 - X - Y,  # the level set runs into the grid's last index
             "two_blobs": np.maximum(0.02 - (X - 0.5) ** 2 - Y ** 2 - Z ** 2, 0.02 - (X + 0.6) ** 2 - (Y - 0.5) ** 2 - Z ** 2)}
    rng = np.random.default_rng(0)
    specks = -np.ones((n, n, n))
    specks[tuple(rng.integers(0, n, (3, 6)))] = 1.0  # isolated single points, two of them possibly on the border
    specks[0, 5, 7] = specks[n - 1, n - 1, 3] = 1.0
    grids["specks"] = specks
    g = grids[field]
    v, f = marching_cubes(g, 0.0, 0.87)
    v0, f0 = mcubes.marching_cubes(g, 0.0)
    assert len(f) > 0 and np.array_equal(f, f0)
    assert np.allclose(v, v0 * (2 * 0.87 / (n - 1)) - 0.87, atol=1e-9)
    lo, hi = crossing_box(g, 0.0)
    if field in ("ball", "two_blobs"):
        assert np.prod(hi - lo) < 0.5 * n ** 3  # it did crop


def test_empty_field_gives_empty_mesh():
    grid, _ = density_grid(lambda p: torch.zeros(p.shape[0]), 33, 0.87, 10.0)
    v, f = marching_cubes(grid, 10.0, 0.87)
    assert len(v) == 0 and len(f) == 0


def test_viewer_frame_is_a_rotation_taking_z_up_to_y_up():
    R = VIEWER_FROM_CANONICAL[:3, :3]
    assert np.allclose(R @ R.T, np.eye(3)) and np.linalg.det(R) == pytest.approx(1.0)
    assert np.allclose(to_viewer_frame(np.array([[0.0, 0, 1]])), [[0, 1, 0]])  # up stays up
    assert np.allclose(to_viewer_frame(np.array([[1.0, 0, 0]])), [[0, 0, 1]])  # input camera side faces +Z


def test_uv_bake_reproduces_a_colour_field():
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    color = lambda p: np.clip(np.asarray(p) + 0.5, 0, 1)  # colour = position
    v, f, uv, tex = bake_uv_texture(np.asarray(sphere.vertices), np.asarray(sphere.faces), color, size=256)
    assert tex.shape == (256, 256, 3) and uv.shape == (len(v), 2)
    # look the texture up at each vertex's UV: it must give that vertex's colour
    px = np.clip((uv[:, 0] * 256).astype(int), 0, 255)
    py = np.clip(((1 - uv[:, 1]) * 256).astype(int), 0, 255)
    err = np.abs(tex[py, px] / 255.0 - color(v)).mean()
    assert err < 0.03


def test_mesh_silhouette_iou_of_an_analytic_ball():
    """A ball of density 10 and radius 0.5: its mesh at level 5 has the silhouette of the ball (rays that
    pass within 0.5 of the centre, computed here in closed form); at level 20 there is no mesh."""
    from types import SimpleNamespace

    from lrm import cameras as C
    from lrm.training.validation import mesh_silhouette_ious

    class Ball:
        cfg = SimpleNamespace(render=SimpleNamespace(radius=0.87))

        def query(self, triplane, p):
            return {"density": 10.0 * (p.norm(dim=-1) < 0.5).float()}

    c2w = C.orbit_cameras(3, 20.0, 2.0)
    intr = C.intrinsics_from_fov(40.0).expand(3, 4)
    res = 48
    o, d = C.get_rays(c2w, intr, res, res)
    closest = (o - (o * d).sum(-1, keepdim=True) * d).norm(dim=-1)  # distance of each ray from the centre
    masks = (closest < 0.5).float().reshape(3, res, res)
    ious = mesh_silhouette_ious(Ball(), None, c2w, intr, masks, [5.0, 20.0], mc_resolution=65)
    assert ious[0] > 0.9 and ious[1] == 0.0
