"""Narrow-band density grids give the dense grid's mesh (analytic fields at 256^3, the shipped model at 128^3)."""
from pathlib import Path

import numpy as np
import pytest
import torch

from lrm.mesh import density_grid, marching_cubes

ROOT = Path(__file__).resolve().parent.parent
CKPT = ROOT / "checkpoints" / "default"
R, LEVEL = 0.87, 10.0


def smooth_inside(signed_distance, sharpness=60.0):
    """Density 20 inside, 0 outside, a smooth step over about 1/sharpness at the surface."""
    return lambda p: 20.0 * torch.sigmoid(signed_distance(p) * sharpness)


def sphere(c=(0.1, -0.05, 0.0), r=0.45):
    c = torch.tensor(c)
    return lambda p: r - (p - c).norm(dim=-1)


def two_spheres(p):
    return torch.maximum(sphere((-0.3, 0.0, 0.1), 0.25)(p), sphere((0.35, 0.1, -0.1), 0.2)(p))


def thin_slab(p, thickness=0.05):
    """An oblique slab 0.05 thick (7 grid cells at 256^3, under two coarse blocks), cut to a disc."""
    n = torch.tensor([1.0, 2.0, 2.0]) / 3.0
    h = (p * n).sum(-1)
    radial = (p - h[:, None] * n).norm(dim=-1)
    return torch.minimum(thickness / 2 - h.abs(), 0.6 - radial)


def meshes(query, n, f, level=LEVEL, chunk=1 << 20):
    dense, sd = density_grid(query, n, R, level, coarse_factor=1, chunk=chunk)
    band, sb = density_grid(query, n, R, level, coarse_factor=f, chunk=chunk)
    return marching_cubes(dense, level, R), marching_cubes(band, level, R), sd, sb


@pytest.mark.parametrize("name,sdf", [("sphere", sphere()), ("two_spheres", two_spheres), ("thin_slab", thin_slab)])
def test_narrow_band_256_gives_the_dense_mesh(name, sdf):
    (v1, f1), (v2, f2), sd, sb = meshes(smooth_inside(sdf), 256, 4)
    assert sd["queries"] == 256 ** 3 and not sb["dense"]
    assert len(f1) > 1000
    assert np.array_equal(f1, f2) and np.allclose(v1, v2, atol=1e-6), name
    assert sb["queries"] < 0.1 * sd["queries"]  # the surface is followed block to block: no blanket dilation


def test_any_resolution_uses_the_band_and_keeps_the_grid_points():
    """129 divides by 4 exactly; 128 and 130 extend the index grid past the cube and crop it."""
    q = smooth_inside(sphere())
    for n in (128, 129, 130):
        dense, _ = density_grid(q, n, R, LEVEL, coarse_factor=1)
        band, st = density_grid(q, n, R, LEVEL, coarse_factor=4)
        assert band.shape == (n, n, n) and not st["dense"]
        near = np.abs(dense - LEVEL) < 5.0  # every point near the surface is an exact query
        assert np.allclose(band[near], dense[near], atol=1e-5)
        assert np.array_equal(band > LEVEL, dense > LEVEL)


@pytest.mark.skipif(not (CKPT / "model.safetensors").is_file(), reason="no shipped checkpoint")
def test_narrow_band_on_the_default_model_gives_the_dense_mesh():
    from _duck import duck_triplane

    pipe, _, tri = duck_triplane()
    o = pipe.opts
    (v1, f1), (v2, f2), sd, sb = meshes(pipe.density_fn(tri), 128, 4, o["mc_threshold"], o["chunk"])
    assert len(f1) > 1000 and sb["queries"] < 0.4 * sd["queries"]
    assert len(f1) == len(f2) and np.allclose(v1, v2, atol=1e-5)
