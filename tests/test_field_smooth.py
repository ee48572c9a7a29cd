"""Log-density smoothing before marching cubes (lrm.mesh.smooth_log_density, ``infer.field_smooth``) and the
validation pass's mesh-surface scores: analytic fields."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lrm.mesh import marching_cubes, smooth_log_density, smoothing_cells
from lrm.pipeline import USER_OPTIONS, InferConfig, check_options, infer_section
from lrm.preprocess import InputError
from lrm.stages import extract_mesh

N, R = 65, 1.0
LIN = np.linspace(-R, R, N)
X, Y, Z = np.meshgrid(LIN, LIN, LIN, indexing="ij")
RADIUS = np.sqrt(X ** 2 + Y ** 2 + Z ** 2)


def sphere_field(r0=0.5, k=12.0, noise=0.0, seed=0):
    """Density 10 on the sphere of radius r0, falling off as exp(-k (r - r0)) (log-linear in r), times log-normal
    per-cell noise of std ``noise``."""
    logd = np.log(10.0) - k * (RADIUS - r0)
    if noise:
        logd = logd + noise * np.random.default_rng(seed).standard_normal(logd.shape)
    return np.exp(logd)


def test_a_log_linear_field_is_unchanged_away_from_the_edges():
    g = np.exp(0.5 + 3.0 * X - 2.0 * Y + 1.0 * Z)  # log is linear: a Gaussian leaves it as it is
    out = smooth_log_density(g, 2.0)
    inner = (slice(10, -10),) * 3  # 5 sigma from the edges, where the grid is extended
    np.testing.assert_allclose(out[inner], g[inner], rtol=1e-6)
    assert not np.allclose(out[:2], g[:2], rtol=1e-3)  # the edges are not (mode nearest): the check above can fail


def test_zero_width_is_a_copy_and_the_dtype_is_kept():
    g = sphere_field().astype(np.float32)
    out = smooth_log_density(g, 0.0)
    assert out is not g and np.array_equal(out, g)
    assert smooth_log_density(g, 1.0).dtype == np.float32
    assert smoothing_cells(0.03125, 65, 1.0) == pytest.approx(1.0)  # 64 cells over 2 world units


def test_noise_is_removed_and_the_surface_stays_put():
    sigma = 1.5
    clean, noisy = sphere_field(), sphere_field(noise=0.4)
    r_clean = np.linalg.norm(marching_cubes(clean, 10.0, R)[0], axis=1)
    r_noisy = np.linalg.norm(marching_cubes(noisy, 10.0, R)[0], axis=1)
    r_smooth = np.linalg.norm(marching_cubes(smooth_log_density(noisy, sigma), 10.0, R)[0], axis=1)
    assert abs(r_clean.mean() - 0.5) < 0.002 and r_clean.std() < 0.003
    assert r_noisy.std() > 4 * r_smooth.std()  # the lumps of the noisy field are gone
    # a radial log-linear field moves inward by ~sigma^2 / r (the Laplacian of r is 2 / r), sigma in world units
    s = sigma * 2 * R / (N - 1)
    assert abs(r_smooth.mean() - (0.5 - s ** 2 / 0.5)) < 0.004
    assert abs(r_smooth.mean() - 0.5) < 0.01


class NoisyBall:
    """A stand-in model: the noisy sphere field, read off the grid it was made on (nearest grid point)."""

    cfg = SimpleNamespace(render=SimpleNamespace(radius=R))

    def __init__(self):
        self.grid = torch.from_numpy(sphere_field(noise=0.4))

    def query(self, triplane, points):
        idx = ((points + R) * (N - 1) / (2 * R)).round().long().clamp(0, N - 1)
        d = self.grid[idx[..., 0], idx[..., 1], idx[..., 2]].float()
        return {"density": d, "rgb": torch.full(points.shape, 0.5)}


def test_extract_mesh_applies_the_smoothing_in_world_units():
    model = NoisyBall()
    sigma_world = 1.5 * 2 * R / (N - 1)
    raw = extract_mesh(model, torch.zeros(1), resolution=N, threshold=10.0, radius=R, coarse_factor=1)
    timings = {}
    smooth = extract_mesh(model, torch.zeros(1), resolution=N, threshold=10.0, radius=R, coarse_factor=1,
                          field_smooth=sigma_world, timings=timings)
    v, f = marching_cubes(smooth_log_density(model.grid.numpy(), 1.5), 10.0, R)
    assert np.allclose(smooth.vertices, v, atol=1e-5) and len(smooth.faces) == len(f)
    assert len(smooth.faces) < len(raw.faces)  # fewer facets: the lumps were removed
    assert "field_smooth" in timings


def test_the_option_is_validated_and_offered():
    assert InferConfig().field_smooth == 0.0  # old checkpoints keep their raw field
    assert infer_section({"field_smooth": 0.01})["field_smooth"] == 0.01
    with pytest.raises(InputError, match=r"infer\.field_smooth"):
        infer_section({"field_smooth": -0.1})
    with pytest.raises(InputError, match=r"--field-smooth"):
        check_options({"field_smooth": 2.0})
    assert any(o.name == "field_smooth" and o.flag == "--field-smooth" for o in USER_OPTIONS)


def test_validation_scores_the_mesh_surface_against_true_samples():
    """A ball of radius 0.5: its mesh surface against samples on that sphere scores F@0.02 ~ 1; against samples on a
    sphere of radius 0.6 (every sample 0.1 away) F@0.02 = F@0.05 = 0 and Chamfer ~ 0.1."""
    from lrm import cameras as C
    from lrm.training.validation import mesh_scores

    class Ball:
        cfg = SimpleNamespace(render=SimpleNamespace(radius=0.87))

        def query(self, triplane, p):
            return {"density": 10.0 * torch.exp(-12.0 * (p.norm(dim=-1) - 0.5))}

    c2w = C.orbit_cameras(2, 20.0, 2.0)
    intr = C.intrinsics_from_fov(40.0).expand(2, 4)
    masks = torch.ones(2, 16, 16)
    rng = np.random.default_rng(0)
    u = rng.standard_normal((30000, 3))  # dense enough that a point on the sphere has one within 0.02
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    near = mesh_scores(Ball(), None, c2w, intr, masks, [10.0], 129, (0.0, 0.02), surface=0.5 * u)
    far = mesh_scores(Ball(), None, c2w, intr, masks, [10.0], 129, (0.0,), surface=0.6 * u)
    for sigma in (0.0, 0.02):
        assert near[sigma][10.0]["fscore@0.02"] > 0.97 and near[sigma][10.0]["chamfer"] < 0.01
    assert far[0.0][10.0]["fscore@0.05"] == 0.0
    assert far[0.0][10.0]["chamfer"] == pytest.approx(0.1, abs=0.005)


def test_validation_meshes_every_level_from_exact_values():
    """Levels far above the lowest one are cut from the exact (dense) grid, not from a band around the lowest."""
    from lrm import cameras as C
    import trimesh

    from lrm.evaluate.metrics import chamfer_fscore, sample_surface
    from lrm.mesh import density_grid
    from lrm.training.validation import mesh_scores

    model = NoisyBall()
    model.cfg = SimpleNamespace(render=SimpleNamespace(radius=R))
    c2w = C.orbit_cameras(1, 20.0, 3.0)
    intr = C.intrinsics_from_fov(40.0).expand(1, 4)
    dense, _ = density_grid(lambda p: model.query(None, p[None])["density"][0], N, R, 2.0, coarse_factor=1)
    for level in (2.0, 40.0):
        exact = trimesh.Trimesh(*marching_cubes(dense, level, R))
        surface = sample_surface(exact, 20000, seed=1)
        expected = chamfer_fscore(sample_surface(exact), surface, (0.02, 0.05))  # the same mesh, the same samples
        rows = mesh_scores(model, None, c2w, intr, torch.ones(1, 8, 8), [2.0, level], N, surface=surface)
        assert rows[0.0][level]["chamfer"] == pytest.approx(expected["chamfer"], rel=1e-9)
        assert rows[0.0][level]["fscore@0.02"] == pytest.approx(expected["fscore@0.02"], rel=1e-9)


def test_mean_scores_leave_empty_meshes_out_of_chamfer_and_count_them():
    from lrm.training.validation import _mean_scores

    cells = [{"silhouette_iou": 0.0, "empty": 1.0, "fscore@0.02": 0.0},
             {"silhouette_iou": 0.8, "empty": 0.0, "fscore@0.02": 0.6, "chamfer": 0.04},
             {"silhouette_iou": 0.6, "empty": 0.0, "fscore@0.02": 0.4, "chamfer": 0.02}]
    out = _mean_scores(cells)
    assert out["chamfer"] == pytest.approx(0.03) and out["fscore@0.02"] == pytest.approx(1.0 / 3)
    assert out["silhouette_iou"] == pytest.approx(0.7 * 2 / 3) and out["empty"] == 1


def test_validation_cli_refuses_surface_scores_without_levels(capsys):
    from lrm.training.validation import main

    assert main(["checkpoints/default", "--mesh-surface"]) == 2
    assert "--mesh-thresholds" in capsys.readouterr().err
    assert main(["checkpoints/default", "--mesh-thresholds", "10", "--field-smooth", "-0.1"]) == 2
