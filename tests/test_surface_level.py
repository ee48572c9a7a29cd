"""The surface level matched to the input silhouette (lrm.stages.ray_max_density / silhouette_level) on an analytic
field: a cone-shaped density around a sphere, whose level sets are spheres of known radius."""
import numpy as np
import pytest
import torch

from lrm import cameras as C
from lrm.stages import ray_max_density, silhouette_level

K, R_BALL, RADIUS = 10.0, 0.6, 1.0  # density K (R_BALL - |p|): the level L surface is the sphere of radius R_BALL - L/K


class ConeField:
    def query(self, triplane, points):
        return {"density": (K * (R_BALL - points.norm(dim=-1))).clamp_min(0)}


TRI = torch.zeros(1)  # the stub field ignores the scene tensor


def closest_approach(res):
    """Distance of each pixel ray of the canonical camera from the origin, by plain geometry (no renderer code)."""
    c2w = C.orbit_camera(0.0, 0.0, C.CANONICAL_DISTANCE)
    intr = C.intrinsics_from_fov(C.CANONICAL_FOV_DEG)
    o, d = C.get_rays(c2w, intr, res, res)
    return torch.linalg.cross(o, d, dim=-1).norm(dim=-1).reshape(res, res), c2w, intr


def test_ray_max_density_matches_the_analytic_maximum():
    res, n = 48, 128
    dist, c2w, intr = closest_approach(res)
    md = ray_max_density(ConeField(), TRI, c2w, intr, res, RADIUS, samples=n)
    want = (K * (R_BALL - dist)).clamp_min(0)
    step = 2 * RADIUS * 3 ** 0.5 / n  # the longest chord through the cube, in samples
    assert md.shape == (res, res)
    assert float((md - want).abs().max()) <= K * step  # the cone is K-Lipschitz: half a step off at most, twice
    assert float(md.max()) > K * R_BALL * 0.9


@pytest.mark.parametrize("level", [2.0, 4.0])
def test_the_level_whose_sphere_casts_the_mask_is_chosen(level):
    res = 64
    dist, c2w, intr = closest_approach(res)
    mask = (dist <= R_BALL - level / K).float()  # the silhouette of the level-`level` sphere, drawn analytically
    md = ray_max_density(ConeField(), TRI, c2w, intr, res, RADIUS)
    best, ious = silhouette_level(md, mask, (1.0, 2.0, 3.0, 4.0, 5.0))
    assert best == level and ious[level] > 0.95
    assert all(v < ious[level] for k, v in ious.items() if k != level)
    # the same mask at twice the size is area-resized to the silhouette's grid first
    big = mask.repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert silhouette_level(md, big, (1.0, 2.0, 3.0, 4.0, 5.0))[0] == level


def test_ties_go_to_the_first_level_and_bad_input_fails_clearly():
    md = torch.tensor([[0.0, 5.0], [5.0, 5.0]])
    mask = np.array([[0.0, 1.0], [1.0, 1.0]])
    assert silhouette_level(md, mask, (3.0, 1.0, 9.0)) == (3.0, {3.0: 1.0, 1.0: 1.0, 9.0: 0.0})
    with pytest.raises(ValueError, match="at least one candidate"):
        silhouette_level(md, mask, ())
    with pytest.raises(ValueError, match=r"mask must be \[H, W\]"):
        silhouette_level(md, np.zeros((2, 2, 3)), (1.0,))
