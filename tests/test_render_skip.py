"""Empty-space skipping + early termination (inference) against the dense renderer, on analytic fields and
on the shipped checkpoint."""
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from lrm import cameras as C
from lrm.config import RenderConfig
from lrm.render.occupancy import OccupancyGrid, build_occupancy, cells_from_corners
from lrm.render.volume import VolumeRenderer

ROOT = Path(__file__).resolve().parent.parent
CKPT = ROOT / "checkpoints" / "default"


def make_renderer(**kw):
    return VolumeRenderer(OmegaConf.merge(OmegaConf.structured(RenderConfig), kw))


class Counted:
    """A field that counts the points it is asked for."""

    def __init__(self, fn):
        self.fn, self.points = fn, 0

    def __call__(self, p):
        self.points += p.shape[0] * p.shape[1]
        return self.fn(p)


def radial_field(density_of_r, color=(0.9, 0.3, 0.1)):
    col = torch.tensor(color)

    def field(p):
        r = p.norm(dim=-1)
        # colour varies with position so misplaced samples would show
        return density_of_r(r), (col + 0.1 * p).clamp(0, 1)

    return field


def ball(radius=0.35, sigma=40.0):
    return radial_field(lambda r: sigma * torch.sigmoid((radius - r) * 60.0))


def view_rays(res=24, azimuth=30.0, elevation=20.0):
    o, d = C.get_rays(C.orbit_camera(azimuth, elevation, 2.0), C.intrinsics_from_fov(40.0), res, res)
    return o[None], d[None]


def render_both(rend, field, rays_o, rays_d):
    """(dense image, skipping image, dense points, skipping points incl. nothing for the grid)."""
    f_dense, f_skip = Counted(field), Counted(field)
    with torch.no_grad():
        grid = rend.occupancy_grid(field)
        dense = rend(f_dense, rays_o, rays_d, occupancy=False)
        fast = rend(f_skip, rays_o, rays_d, occupancy=grid)
    return dense, fast, f_dense.points, f_skip.points


@pytest.mark.parametrize("kw", [dict(), dict(step="normalized", sampler="midpoint"), dict(n_importance=0)])
def test_ball_same_image_as_dense_with_fewer_queries(kw):
    rend = make_renderer(n_samples=32, n_importance=kw.pop("n_importance", 32), occupancy_tolerance=1e-2, **kw)
    dense, fast, n_dense, n_fast = render_both(rend, ball(), *view_rays())
    for k in ("rgb", "opacity"):
        assert (dense[k] - fast[k]).abs().max() < 1e-3, k
    hit = dense["opacity"] > 0.5
    assert torch.allclose(dense["depth"][hit], fast["depth"][hit], atol=2e-3)
    assert n_fast < 0.5 * n_dense


def test_mostly_occupied_grid_falls_back_to_the_dense_path():
    rend = make_renderer(skip_max_occupancy=0.5)
    fog = radial_field(lambda r: torch.full_like(r, 0.5))
    dense, fast, n_dense, n_fast = render_both(rend, fog, *view_rays(12))
    assert n_fast == n_dense and torch.equal(dense["rgb"], fast["rgb"])


def test_empty_field_is_background_and_costs_no_queries():
    rend = make_renderer(background=[0.2, 0.4, 0.6])
    empty = radial_field(lambda r: torch.zeros_like(r))
    dense, fast, n_dense, n_fast = render_both(rend, empty, *view_rays())
    assert n_fast == 0 and n_dense > 0
    assert torch.equal(fast["rgb"], torch.tensor([0.2, 0.4, 0.6]).expand_as(fast["rgb"]))
    assert torch.equal(fast["opacity"], torch.zeros_like(fast["opacity"]))


def test_thin_shell_is_not_lost():
    """A hollow shell 1.2 grid cells thick (0.033 world units) at radius 0.5: found by the grid and
    rendered like the dense renderer does, including through the hole in its middle."""
    rend = make_renderer(n_samples=128, n_importance=64, occupancy_resolution=64)
    cell = 2 * 0.87 / 64
    shell = radial_field(lambda r: 200.0 * ((r - 0.5).abs() < 0.6 * cell).float())
    dense, fast, n_dense, n_fast = render_both(rend, shell, *view_rays(32))
    assert dense["opacity"].mean() > 0.3  # the shell is visible at all
    assert (dense["rgb"] - fast["rgb"]).abs().max() < 2e-3
    assert (dense["opacity"] - fast["opacity"]).abs().max() < 2e-3
    assert n_fast < n_dense


def test_early_termination_stops_behind_an_opaque_surface():
    rend = make_renderer(n_samples=64, n_importance=0, sampler="midpoint", early_stop=1e-4, skip_max_occupancy=1.0)
    wall = lambda p: (1e3 * (p[..., 0] > 0).float(), torch.ones_like(p))  # noqa: E731 - opaque half-space x > 0
    o = torch.tensor([[[-2.0, 0.0, 0.0]]])
    d = torch.tensor([[[1.0, 0.0, 0.0]]])
    everywhere = OccupancyGrid(torch.ones(1, 8, 8, 8, dtype=torch.bool), 0.87, 0.0)
    f = Counted(wall)
    with torch.no_grad():
        out = rend(f, o, d, occupancy=everywhere)
    assert out["opacity"].item() == pytest.approx(1.0, abs=1e-6)
    # the samples up to the surface and one block after it, not the 32 behind it
    assert f.points <= 32 + 16


def test_training_and_jittered_renders_ignore_the_grid():
    rend = make_renderer(n_samples=16, n_importance=16)
    field = ball()
    grid = rend.occupancy_grid(field)
    rays = view_rays(12)
    f1, f2 = Counted(field), Counted(field)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a = rend(f1, *rays, randomize=True, generator=g1, occupancy=grid)  # autograd on: dense path
    b = rend(f2, *rays, randomize=True, generator=g2, occupancy=False)
    assert f1.points == f2.points and torch.equal(a["rgb"], b["rgb"])


def test_grid_marks_any_cell_with_an_occupied_corner_and_its_neighbours():
    above = torch.zeros(1, 9, 9, 9, dtype=torch.bool)
    above[0, 4, 4, 4] = True  # one corner: the 8 cells around it, dilated by one cell = 4^3 cells
    cells = cells_from_corners(above)
    assert cells.shape == (1, 8, 8, 8) and int(cells.sum()) == 4 ** 3
    assert bool(cells[0, 2:6, 2:6, 2:6].all())


def test_grid_lookup_matches_the_field():
    field = ball(0.3, 50.0)
    grid = build_occupancy(field, 1, 0.87, 32, 1.0)
    pts = torch.tensor([[[0.0, 0.0, 0.0], [0.8, 0.8, 0.8], [0.3, 0.0, 0.0], [2.0, 0.0, 0.0]]])
    assert grid.lookup(pts).tolist() == [[True, False, True, False]]


@pytest.mark.skipif(not (CKPT / "model.safetensors").is_file(), reason="no shipped checkpoint")
def test_default_checkpoint_view_within_40db_of_dense():
    """The shipped checkpoint's inference render (skipping, folded decoder, its ``inference_samples`` /
    ``inference_importance`` / coarse-first grid) against the renderer as it was: dense, every sample, decoder
    unfolded."""
    from _duck import duck_triplane

    pipe, _, tri = duck_triplane()
    model, cfg = pipe.model, pipe.model.renderer.cfg
    c2w = C.orbit_camera(torch.tensor([45.0, 200.0]), torch.tensor([30.0, -10.0]), 2.0)[None]
    K = C.intrinsics_from_fov(40.0).expand(1, 2, 4)
    with torch.no_grad():
        fast = model.render(tri, c2w, K, 64, occupancy=model.occupancy_grid(tri))["rgb"]
        fewer = cfg.inference_importance, cfg.inference_samples
        cfg.inference_importance = cfg.inference_samples = None
        model.decoder.cfg.fold_planes = False
        try:
            dense = model.render(tri, c2w, K, 64, occupancy=False)["rgb"]
        finally:
            (cfg.inference_importance, cfg.inference_samples), model.decoder.cfg.fold_planes = fewer, True
    mse = float(((dense - fast) ** 2).mean())
    assert -10 * np.log10(max(mse, 1e-20)) >= 40.0


def test_inference_importance_applies_without_gradients_only():
    field = ball()
    o, d = view_rays(24)
    full = make_renderer(n_samples=16, n_importance=16, skip_empty=False)
    none = make_renderer(n_samples=16, n_importance=0, skip_empty=False)
    fewer = make_renderer(n_samples=16, n_importance=16, inference_importance=0, skip_empty=False)
    with torch.no_grad():
        assert torch.equal(fewer(field, o, d)["rgb"], none(field, o, d)["rgb"])
        assert not torch.allclose(full(field, o, d)["rgb"], none(field, o, d)["rgb"], atol=1e-3)
    counted = Counted(field)
    fewer(counted, o, d)  # autograd on (training, refinement): every importance sample
    assert counted.points == o.shape[1] * (16 + 32)  # the coarse pass without gradient, then all 32 samples again


def test_interpolate_samples_is_exact_on_linear_profiles():
    from lrm.render.volume import interpolate_samples

    t = torch.sort(torch.rand(2, 5, 16) * 3, -1).values
    t_new = t[..., :1] + torch.rand(2, 5, 7) * (t[..., -1:] - t[..., :1])
    d, c = interpolate_samples(t, 2 * t + 1, torch.stack([t, -t, 3 * t], -1), t_new)
    assert torch.allclose(d, 2 * t_new + 1, atol=1e-5)
    assert torch.allclose(c, torch.stack([t_new, -t_new, 3 * t_new], -1), atol=1e-5)


def test_faint_rays_take_interpolated_importance_samples():
    """A faint haze around a dense ball: rays that only graze the haze skip their importance queries
    (``fine_min_opacity``), and the image still matches the dense render."""
    def field(p):
        r = p.norm(dim=-1)
        return 40.0 * torch.sigmoid((0.3 - r) * 60.0) + 0.02 * torch.sigmoid((0.7 - r) * 20.0), (0.5 + 0.2 * p).clamp(0, 1)

    rays = view_rays(24)
    base = make_renderer(n_samples=32, n_importance=32, occupancy_tolerance=1e-3, skip_max_occupancy=1.0,
                         fine_min_opacity=0.0)
    faint = make_renderer(n_samples=32, n_importance=32, occupancy_tolerance=1e-3, skip_max_occupancy=1.0,
                          fine_min_opacity=0.05)
    dense, fast0, _, n0 = render_both(base, field, *rays)
    _, fast1, _, n1 = render_both(faint, field, *rays)
    assert n1 < 0.9 * n0  # the haze-only rays no longer query their 32 importance samples
    for k in ("rgb", "opacity"):
        assert (dense[k] - fast1[k]).abs().max() < 2e-3, k


def test_inference_samples_apply_without_gradients_only():
    field = ball()
    o, d = view_rays(24)
    fewer = make_renderer(n_samples=32, n_importance=8, inference_samples=12, skip_empty=False)
    twelve = make_renderer(n_samples=12, n_importance=8, skip_empty=False)
    with torch.no_grad():
        assert torch.equal(fewer(field, o, d)["rgb"], twelve(field, o, d)["rgb"])
    counted = Counted(field)
    fewer(counted, o, d)  # autograd on: n_samples
    assert counted.points == o.shape[1] * (32 + 40)  # the coarse pass without gradient, then all 40 samples again
    normalized = make_renderer(n_samples=32, n_importance=0, inference_samples=12, skip_empty=False, step="normalized")
    with torch.no_grad():  # TripoSR's step rule follows the samples in use: 1 / 12
        assert torch.allclose(normalized(field, o, d)["opacity"],
                              make_renderer(n_samples=12, n_importance=0, skip_empty=False,
                                            step="normalized")(field, o, d)["opacity"])


def test_coarse_first_grid_is_the_full_grid_on_a_thick_field_with_fewer_queries():
    field = ball(0.3, 50.0)
    full, coarse = Counted(field), Counted(field)
    a = build_occupancy(full, 1, 0.87, 32, 1.0)
    b = build_occupancy(coarse, 1, 0.87, 32, 1.0, coarse_factor=2)
    assert torch.equal(a.occ, b.occ)
    assert coarse.points < 0.6 * full.points


def test_coarse_first_grid_never_adds_cells_and_misses_only_what_no_coarse_corner_sees():
    # a slab one fine cell thick between coarse corners: the full grid finds it, the coarse-first one cannot;
    # a slab that holds a coarse corner is found by both
    def slab(x0):
        def field(p):
            return ((p[..., 0] - x0).abs() < 0.03).float() * 10.0, torch.zeros(*p.shape[:-1], 3)
        return field

    lin = torch.linspace(-0.8, 0.8, 33)  # fine corners (G = 32, r = 0.8); the coarse ones are every other
    between, on = float(lin[17]), float(lin[16])
    for x0, found in ((between, False), (on, True)):
        field = slab(x0)
        a = build_occupancy(field, 1, 0.8, 32, 1.0)
        b = build_occupancy(field, 1, 0.8, 32, 1.0, coarse_factor=2)
        assert bool(a.occ.any())
        assert not bool((b.occ & ~a.occ).any())
        assert bool(b.occ.any()) == found


def test_skip_chunk_changes_only_how_rays_are_grouped():
    field = ball()
    o, d = view_rays(20)
    a, b = make_renderer(n_samples=24, n_importance=8, skip_chunk=37), make_renderer(n_samples=24, n_importance=8)
    with torch.no_grad():
        grid = a.occupancy_grid(field)
        x, y = a(field, o, d, occupancy=grid), b(field, o, d, occupancy=grid)
    for k in ("rgb", "opacity", "depth"):
        assert torch.allclose(x[k], y[k], atol=1e-6)


class ThreadLog:
    """A field that records, per call, the thread it ran on and the grad mode / intra-op threads it saw."""

    def __init__(self, fn):
        import threading

        self.fn, self.calls, self.lock, self.threading = fn, [], threading.Lock(), threading

    def __call__(self, p):
        with self.lock:
            self.calls.append((self.threading.get_ident(), torch.is_grad_enabled(), torch.get_num_threads()))
        return self.fn(p)


@pytest.mark.parametrize("occupancy", ["grid", False])
def test_worker_threads_render_the_same_image(occupancy):
    import threading

    field = ThreadLog(ball())
    o, d = view_rays(24)
    serial = make_renderer(n_samples=24, n_importance=8, skip_chunk=50, chunk=50, threads=1)
    threaded = make_renderer(n_samples=24, n_importance=8, skip_chunk=50, chunk=50, threads=3)
    intra = torch.get_num_threads()
    with torch.no_grad():
        grid = serial.occupancy_grid(field) if occupancy == "grid" else False
        field.calls.clear()
        x = serial(field, o, d, occupancy=grid)
        assert {c[0] for c in field.calls} == {threading.get_ident()}
        field.calls.clear()
        y = threaded(field, o, d, occupancy=grid)
    for k in ("rgb", "opacity", "depth"):
        assert torch.equal(x[k], y[k])
    threads = {c[0] for c in field.calls}
    assert threads - {threading.get_ident()}  # chunks after the first ran on worker threads
    assert not any(c[1] for c in field.calls)  # the caller's no_grad reached the workers
    assert all(c[2] == 1 for c in field.calls if c[0] != threading.get_ident())
    assert torch.get_num_threads() == intra  # restored


def test_worker_threads_not_used_with_autograd():
    import threading

    field = ThreadLog(ball())
    o, d = view_rays(12)
    r = make_renderer(n_samples=8, n_importance=0, chunk=20, threads=3)
    out = r(field, o, d)
    assert {c[0] for c in field.calls} == {threading.get_ident()}
    assert out["rgb"].shape == (1, 144, 3)
