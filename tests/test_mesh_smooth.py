"""Taubin smoothing of extracted meshes (lrm.mesh.taubin_smooth, ``infer.mesh_smooth``): analytic shapes."""
import numpy as np
import pytest
import torch
import trimesh

from lrm.mesh import taubin_smooth
from lrm.pipeline import InferConfig, USER_OPTIONS, check_options, infer_section
from lrm.preprocess import InputError
from lrm.stages import extract_mesh


def noisy_sphere(noise=0.03, seed=0):
    m = trimesh.creation.icosphere(4, radius=1.0)
    rng = np.random.default_rng(seed)
    v = m.vertices * (1.0 + noise * rng.standard_normal((len(m.vertices), 1)))
    return v, np.asarray(m.faces)


def radii(v):
    return np.linalg.norm(v, axis=1)


def test_taubin_removes_noise_from_a_sphere_without_shrinking_it():
    v, f = noisy_sphere()
    out = taubin_smooth(v, f, 10)
    assert out.shape == v.shape
    assert radii(out).std() < radii(v).std() / 2.5  # the bumps go ...
    assert abs(radii(out).mean() - 1.0) < 0.005  # ... and the sphere keeps its radius
    volume = trimesh.Trimesh(out, f, process=False).volume
    assert abs(volume / (4 / 3 * np.pi) - 1) < 0.03  # Taubin keeps the size (plain Laplacian steps shrink it)
    shrunk = v.copy()
    for _ in range(10):  # the same number of plain Laplacian half-steps: visibly smaller
        shrunk = taubin_smooth(shrunk, f, 1, lamb=0.5, mu=0.0)
    assert trimesh.Trimesh(shrunk, f, process=False).volume < 0.97 * volume


def test_a_plane_stays_a_plane_and_translation_commutes():
    """Moves are averages of neighbours: a flat mesh stays in its plane, and shifting the input shifts the output."""
    g = trimesh.creation.box(extents=(1.0, 1.0, 1.0)).subdivide().subdivide()
    top = g.vertices[:, 2] > 0.49
    faces = g.faces[top[g.faces].all(1)]  # the top face's triangles: an open flat patch with a boundary
    rng = np.random.default_rng(1)
    v = g.vertices.copy()
    v[top, :2] += 0.02 * rng.standard_normal((top.sum(), 2))
    out = taubin_smooth(v, faces, 5)
    assert np.allclose(out[top, 2], 0.5, atol=1e-12)
    unused = ~np.isin(np.arange(len(v)), faces)
    assert np.array_equal(out[unused], v[unused])  # vertices of no face stay put
    t = np.array([0.3, -2.0, 5.0])
    assert np.allclose(taubin_smooth(v + t, faces, 5), out + t, atol=1e-9)


def test_zero_iterations_and_empty_meshes_are_no_ops():
    v, f = noisy_sphere()
    assert np.array_equal(taubin_smooth(v, f, 0), v)
    assert taubin_smooth(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64), 5).shape == (0, 3)


class SphereField:
    """A stand-in model: density 20 inside a sphere of radius 0.5 (a sharp step); colour = the point's position."""

    def query(self, triplane, points):
        d = 20.0 * torch.sigmoid((0.5 - points.norm(dim=-1)) * 200.0)
        return {"density": d, "rgb": points.clamp(0, 1)}


def test_extract_mesh_smooths_before_colouring():
    rough = extract_mesh(SphereField(), torch.zeros(1), resolution=33, threshold=10.0, radius=1.0, coarse_factor=1)
    smooth = extract_mesh(SphereField(), torch.zeros(1), resolution=33, threshold=10.0, radius=1.0, coarse_factor=1,
                          smooth=10)
    assert np.array_equal(rough.faces, smooth.faces)
    r0, r1 = radii(rough.vertices), radii(smooth.vertices)
    assert r1.std() < 0.6 * r0.std()  # the facets of a 1/16-cell grid are flattened (0.0082 -> 0.0043)
    assert abs(r1.mean() - 0.5) < 0.002  # without moving the surface
    expected = np.round(np.clip(smooth.vertices, 0, 1) * 255)  # the colour field read at the smoothed vertices
    assert np.abs(smooth.visual.vertex_colors[:, :3].astype(float) - expected).max() <= 1.0
    moved = np.abs(smooth.vertices - rough.vertices).max(1) > 2e-3  # vertices smoothing moved by a visible amount
    assert moved.sum() > 100


def test_the_option_is_validated_and_offered():
    assert InferConfig().mesh_smooth == 0  # old checkpoints keep their raw surface
    assert infer_section({"mesh_smooth": 10})["mesh_smooth"] == 10
    with pytest.raises(InputError, match=r"infer\.mesh_smooth"):
        infer_section({"mesh_smooth": -1})
    with pytest.raises(InputError, match=r"--mesh-smooth must be an integer"):
        check_options({"mesh_smooth": 2.5})  # infer.py's flag
    assert any(o.name == "mesh_smooth" and o.flag == "--mesh-smooth" for o in USER_OPTIONS)


def test_the_evaluation_parameter_is_range_checked():
    from lrm.evaluate.methods import MethodError, RunContext, make_method

    for bad in (-3, 2.5, 10 ** 7):
        m = make_method("lrm", config="tiny", smooth=bad)
        with pytest.raises(MethodError, match="mesh_smooth"):
            m.setup(RunContext("cpu", 0, {}))
    m = make_method("lrm", config="tiny", smooth=4)
    m.setup(RunContext("cpu", 0, {}))
    assert m.adapter.smooth == 4
