"""The volume renderer against analytic density fields."""
import math

import pytest
import torch
from omegaconf import OmegaConf

from lrm import cameras as C
from lrm.config import RenderConfig
from lrm.render.volume import VolumeRenderer, composite, interval_lengths


def make_renderer(**kw):
    return VolumeRenderer(OmegaConf.merge(OmegaConf.structured(RenderConfig), kw))


def sphere_field(radius=0.5, sigma=1.5, color=(1.0, 0.0, 0.0)):
    col = torch.tensor(color)

    def field(p):
        inside = (p.norm(dim=-1) < radius).float()
        return sigma * inside, col.expand(*p.shape[:-1], 3) * torch.ones_like(inside)[..., None]

    return field


def parallel_rays(offsets, z=3.0):
    """Rays travelling along -Z? No: along +X from x=-2, at heights ``offsets`` in y."""
    o = torch.stack([torch.full_like(offsets, -2.0), offsets, torch.zeros_like(offsets)], -1)
    d = torch.tensor([1.0, 0.0, 0.0]).expand_as(o)
    return o[None], d[None]


def test_constant_density_sphere_opacity_matches_beer_lambert():
    r, sigma = 0.5, 1.5
    h = torch.linspace(0.0, 0.45, 10)
    rays_o, rays_d = parallel_rays(h)
    rend = make_renderer(n_samples=4096, n_importance=0, sampler="midpoint", chunk=4)
    out = rend(sphere_field(r, sigma), rays_o, rays_d)
    chord = 2 * torch.sqrt(r ** 2 - h ** 2)
    expected = 1 - torch.exp(-sigma * chord)
    assert torch.allclose(out["opacity"][0], expected, atol=1e-3)
    # colour: red over a white background, weighted by opacity
    assert torch.allclose(out["rgb"][0, :, 0], torch.ones(10), atol=1e-5)
    assert torch.allclose(out["rgb"][0, :, 1], 1 - expected, atol=1e-3)


def test_hard_sphere_depth_is_ray_sphere_intersection():
    r = 0.4
    c2w = C.orbit_camera(30.0, 20.0, 2.0)
    intr = C.intrinsics_from_fov(40.0)
    rays_o, rays_d = C.get_rays(c2w, intr, 16, 16)
    # analytic first intersection
    b = (rays_o * rays_d).sum(-1)
    c = (rays_o ** 2).sum(-1) - r ** 2
    disc = b ** 2 - c
    hit = disc > 1e-3
    t_hit = -b - torch.sqrt(disc.clamp_min(0))
    rend = make_renderer(n_samples=64, n_importance=128, sampler="midpoint")
    out = rend(sphere_field(r, sigma=1e4), rays_o[None], rays_d[None])
    assert hit.sum() > 50
    assert torch.allclose(out["opacity"][0][hit], torch.ones(int(hit.sum())), atol=1e-3)
    # rays well clear of the sphere stay empty
    clear = disc < -0.02
    assert out["opacity"][0][clear].max() < 1e-6
    err = (out["depth"][0][hit] - t_hit[hit]).abs()
    assert err.max() < 0.02 and err.mean() < 0.005


def test_empty_space_gives_background():
    rays_o, rays_d = parallel_rays(torch.linspace(-0.5, 0.5, 7))
    rend = make_renderer(background=[0.2, 0.4, 0.6])
    out = rend(lambda p: (torch.zeros(p.shape[:-1]), torch.rand(*p.shape[:-1], 3)), rays_o, rays_d)
    assert torch.allclose(out["rgb"], torch.tensor([0.2, 0.4, 0.6]).expand_as(out["rgb"]))
    assert torch.equal(out["opacity"], torch.zeros_like(out["opacity"]))
    # per-call background overrides the config one
    out = rend(lambda p: (torch.zeros(p.shape[:-1]), torch.rand(*p.shape[:-1], 3)), rays_o, rays_d, background=[0, 0, 0])
    assert torch.equal(out["rgb"], torch.zeros_like(out["rgb"]))


def test_rays_missing_the_cube_are_background():
    o = torch.tensor([[[-2.0, 5.0, 0.0], [-2.0, 0.0, 0.0]]])
    d = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
    rend = make_renderer(background=[0.0, 0.0, 0.0])
    out = rend(lambda p: (torch.full(p.shape[:-1], 10.0), torch.ones(*p.shape[:-1], 3)), o, d)
    assert out["opacity"][0, 0] == 0 and out["rgb"][0, 0].abs().sum() == 0
    assert out["opacity"][0, 1] > 0.99


def test_importance_sampling_beats_uniform_at_equal_samples():
    r = 0.4
    c2w = C.orbit_camera(10.0, 10.0, 2.0)
    rays_o, rays_d = C.get_rays(c2w, C.intrinsics_from_fov(40.0), 24, 24)
    b = (rays_o * rays_d).sum(-1)
    disc = b ** 2 - ((rays_o ** 2).sum(-1) - r ** 2)
    hit = disc > 1e-2
    t_hit = -b - torch.sqrt(disc.clamp_min(0))
    field = sphere_field(r, sigma=200.0)

    def depth_err(**kw):
        out = make_renderer(sampler="midpoint", **kw)(field, rays_o[None], rays_d[None])
        return (out["depth"][0][hit] - t_hit[hit]).abs().mean().item()

    uniform = depth_err(n_samples=64, n_importance=0)
    hierarchical = depth_err(n_samples=32, n_importance=32)
    assert hierarchical < 0.5 * uniform


def test_chunking_does_not_change_results():
    rays_o, rays_d = parallel_rays(torch.linspace(-0.6, 0.6, 37))
    field = sphere_field()
    full = make_renderer(chunk=10_000, sampler="midpoint")(field, rays_o, rays_d)
    chunked = make_renderer(chunk=5, sampler="midpoint")(field, rays_o, rays_d)
    for k in ("rgb", "opacity", "depth"):
        assert torch.allclose(full[k], chunked[k], atol=1e-6)


def test_stratified_randomisation_is_seeded_and_unbiased():
    rays_o, rays_d = parallel_rays(torch.zeros(200))
    rend = make_renderer(n_samples=16, n_importance=0)
    field = sphere_field(0.5, 1.0)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = rend(field, rays_o, rays_d, randomize=True, generator=g1)["opacity"]
    b = rend(field, rays_o, rays_d, randomize=True, generator=g2)["opacity"]
    assert torch.equal(a, b)
    assert a.std() > 0  # jittered
    assert a.mean().item() == pytest.approx(1 - math.exp(-1.0), abs=0.01)


def test_normalized_step_rule():
    # TripoSR's rule: delta = 1 / n_samples regardless of the ray's length in the cube
    rays_o, rays_d = parallel_rays(torch.zeros(1))
    rend = make_renderer(n_samples=128, n_importance=0, sampler="midpoint", step="normalized")
    out = rend(lambda p: (torch.full(p.shape[:-1], 2.0), torch.zeros(*p.shape[:-1], 3)), rays_o, rays_d)
    assert out["opacity"][0, 0].item() == pytest.approx(1 - math.exp(-2.0), abs=1e-5)


def test_composite_matches_nerfacc_on_cpu():
    nerfacc = pytest.importorskip("nerfacc")
    g = torch.Generator().manual_seed(0)
    t = torch.sort(torch.rand(5, 20, generator=g) * 2, -1).values
    near, far = torch.zeros(5), torch.full((5,), 2.0)
    deltas = interval_lengths(t, near, far)
    sigma = torch.rand(5, 20, generator=g) * 3
    rgb = torch.rand(5, 20, 3, generator=g)
    ours = composite(sigma, rgb, deltas, t, torch.ones(3))
    mids = torch.cat([near[:, None], (t[:, 1:] + t[:, :-1]) / 2, far[:, None]], -1)
    w, _, _ = nerfacc.render_weight_from_density(mids[:, :-1], mids[:, 1:], sigma)
    assert torch.allclose(ours["weights"], w, atol=1e-6)
    color = nerfacc.accumulate_along_rays(w, rgb) + (1 - w.sum(-1, keepdim=True))
    assert torch.allclose(ours["rgb"], color, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="nerfacc packed path needs CUDA")
def test_nerfacc_backend_agrees_with_torch_path_on_cuda():  # pragma: no cover - GPU only
    from lrm.render import nerfacc_backend

    if not nerfacc_backend.available():
        pytest.skip("nerfacc CUDA extension not available")
    c2w = C.orbit_camera(30.0, 20.0, 2.0)
    rays_o, rays_d = C.get_rays(c2w, C.intrinsics_from_fov(40.0), 32, 32)
    field = sphere_field(0.4, 5.0)
    dev = "cuda"
    ref = make_renderer(backend="torch", n_samples=256, n_importance=0, sampler="midpoint")(
        field, rays_o[None].to(dev), rays_d[None].to(dev))
    fast = make_renderer(backend="nerfacc", n_samples=256, n_importance=0)(field, rays_o[None].to(dev), rays_d[None].to(dev))
    assert (ref["opacity"] - fast["opacity"]).abs().mean() < 0.02


def test_inference_reuses_coarse_samples_without_changing_the_image():
    calls = []
    base = sphere_field(0.4, 30.0)

    def field(p):
        calls.append(p.shape[1])
        return base(p)

    rays_o, rays_d = C.get_rays(C.orbit_camera(20.0, 10.0, 2.0), C.intrinsics_from_fov(40.0), 12, 12)
    rend = make_renderer(n_samples=16, n_importance=16, sampler="midpoint")
    with torch.no_grad():
        fast = rend(field, rays_o[None], rays_d[None])
    n_fast = sum(calls)
    calls.clear()
    slow = rend(field, rays_o[None], rays_d[None])  # autograd on: every sample queried again
    assert n_fast == 144 * 32 and sum(calls) == 144 * (16 + 32)
    for k in ("rgb", "opacity", "depth"):
        assert torch.allclose(fast[k], slow[k], atol=1e-6)
