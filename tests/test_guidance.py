"""SDS guidance (lrm/guidance/): the gradient against a hand computation through a linear renderer, an oracle prior
that drives an image and a triplane (through the real renderer) to its target, CFG, timestep annealing, the guard."""
import pytest
import torch

from _toy_priors import NaNPrior, OraclePrior, ToyPrior
from lrm import cameras as C
from lrm.diffusion.prior import relative_camera
from lrm.guidance import GUIDANCES, Reference, SDSConfig, make_guidance, sample_timesteps, t_range


def reference(res=8, dtype=torch.float64):
    g = torch.Generator().manual_seed(5)
    return Reference(torch.rand(1, 3, res, res, generator=g, dtype=dtype), C.orbit_camera(0.0, 0.0, 2.0)[None].to(dtype))


def test_sds_gradient_equals_w_eps_residual_through_a_linear_renderer():
    """x = Aθ; d loss/dθ must be (∂x0/∂θ)ᵀ w(t)(ε̂ − ε) / N with ε̂ the CFG combination, fixed t and ε."""
    torch.manual_seed(0)
    n, res, k, scale = 2, 4, 7, 3.0
    A = torch.randn(n * 3 * res * res, k, dtype=torch.float64)
    theta = torch.randn(k, dtype=torch.float64, requires_grad=True)
    prior = ToyPrior(resolution=res)
    ref = reference(res)
    c2w = C.orbit_camera(torch.tensor([40.0, -75.0]), torch.tensor([10.0, 25.0]), torch.tensor([2.0, 2.0])).double()
    t = torch.tensor([17, 80])
    eps = torch.randn(n, 3, res, res, dtype=torch.float64)
    guidance = make_guidance("sds", prior, SDSConfig(guidance_scale=scale))
    rgb = (A @ theta).view(n, 3, res, res)
    loss = guidance(rgb, c2w, ref, t=t, noise=eps)["sds"]
    loss.backward()

    with torch.no_grad():  # the same quantities written out by hand
        x0 = 2 * (A @ theta).view(n, 3, res, res) - 1
        abar = prior.alphas_cumprod[t].view(n, 1, 1, 1)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        rel = relative_camera(ref.c2w.expand(n, 4, 4), c2w)
        e_u = 0.5 * x_t + 0.3 * (t.double() / 100.0).view(n, 1, 1, 1)
        e_c = e_u + ref.image.mean() + (rel[:, 0] + rel[:, 1]).view(n, 1, 1, 1)
        g = (1 - abar) * (e_u + scale * (e_c - e_u) - eps)
        expected = (2 * A).T @ g.flatten() / n
    assert torch.allclose(theta.grad, expected, rtol=1e-10, atol=1e-12)
    assert sorted(prior.calls) == [False, True]  # one unconditional and one conditional call
    assert guidance.info["grad_norm"] == pytest.approx(float(g.flatten(1).norm(dim=1).mean()))


def test_cfg_scale_one_is_the_conditional_prediction():
    torch.manual_seed(1)
    prior = ToyPrior()
    ref = reference()
    x0 = (torch.rand(1, 3, 8, 8, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    c2w = C.orbit_camera(60.0, 15.0, 2.0)[None].double()
    t, eps = torch.tensor([42]), torch.randn(1, 3, 8, 8, dtype=torch.float64)
    g1 = make_guidance("sds", prior, {"guidance_scale": 1.0})
    g1((x0 + 1) / 2, c2w, ref, t=t, noise=eps)["sds"].backward()
    assert prior.calls == [True]  # δ = 1: only the conditional branch is evaluated
    with torch.no_grad():
        a = prior.alphas_cumprod[t]
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        e_c = prior.eps(x_t, t, g1.condition(ref), relative_camera(ref.c2w, c2w))
    assert torch.allclose(x0.grad, (1 - a) * (e_c - eps), atol=1e-12)
    # and it differs from the unconditional one (the test can tell them apart)
    assert not torch.allclose(e_c, prior.eps(x_t, t, None, None))


def test_oracle_prior_drives_a_free_image_to_its_target():
    torch.manual_seed(2)
    target = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    img = torch.full((1, 3, 8, 8), 0.5, dtype=torch.float64, requires_grad=True)
    prior = OraclePrior(target)
    guidance = make_guidance("sds", prior, SDSConfig(guidance_scale=1.0, t_range_start=(0.02, 0.98)))
    guidance.generator = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD([img], lr=0.5)
    ref, c2w = reference(), C.orbit_camera(30.0, 0.0, 2.0)[None].double()
    start = (img - target).abs().max().item()
    for step in range(60):
        opt.zero_grad()
        guidance(img, c2w, ref, step)["sds"].backward()
        opt.step()
    assert (img - target).abs().max().item() < 1e-3 * start


def test_oracle_prior_drives_a_tiny_triplane_through_the_real_renderer():
    """A 4-channel 8² triplane and a small decoder seen from one orbit view: SDS alone brings its render to the
    oracle's target (a render of another triplane from the same view)."""
    from lrm.config import DecoderConfig, RenderConfig
    from lrm.models.decoder import TriplaneDecoder
    from lrm.refine import render_views
    from lrm.render.volume import VolumeRenderer
    from omegaconf import OmegaConf

    torch.manual_seed(3)
    rcfg = OmegaConf.structured(RenderConfig(n_samples=12, n_importance=0, radius=0.87))
    dcfg = OmegaConf.structured(DecoderConfig(hidden=16, hidden_layers=1, density_activation="softplus"))
    decoder = TriplaneDecoder(dcfg, 4, 0.87).requires_grad_(False)
    renderer = VolumeRenderer(rcfg)
    c2w = C.orbit_camera(35.0, 20.0, 2.0)[None]
    intr = C.intrinsics_from_fov(40.0)
    field = lambda tri: (lambda p: (lambda o: (o["density"], o["rgb"]))(decoder(tri, p)))  # noqa: E731
    with torch.no_grad():
        target, _ = render_views(renderer, field(torch.randn(1, 3, 4, 8, 8) * 2), c2w, intr, 10, (1.0, 1.0, 1.0), False)
    tri = torch.zeros(1, 3, 4, 8, 8, requires_grad=True)
    prior = OraclePrior(target, dtype=torch.float32)
    guidance = make_guidance("sds", prior, SDSConfig(guidance_scale=1.0, weighting="uniform"))
    guidance.generator = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam([tri], lr=0.1)
    ref = Reference(target, C.orbit_camera(0.0, 0.0, 2.0)[None])

    def err():
        with torch.no_grad():
            return float((render_views(renderer, field(tri), c2w, intr, 10, (1.0, 1.0, 1.0), False)[0] - target)
                         .pow(2).mean())

    before = err()
    for step in range(60):
        rgb, _ = render_views(renderer, field(tri), c2w, intr, 10, (1.0, 1.0, 1.0), randomize=False)
        opt.zero_grad()
        guidance(rgb, c2w, ref, step)["sds"].backward()
        opt.step()
    assert err() < 0.1 * before, (before, err())


def test_timestep_range_is_annealed_and_respected():
    cfg = SDSConfig(t_range_start=(0.1, 0.9), t_range_end=(0.1, 0.3), anneal_steps=100)
    assert t_range(cfg, 0) == pytest.approx((0.1, 0.9))
    assert t_range(cfg, 50) == pytest.approx((0.1, 0.6))
    assert t_range(cfg, 100) == t_range(cfg, 500) == pytest.approx((0.1, 0.3))
    t = sample_timesteps(4000, 0.1, 0.3, 1000, generator=torch.Generator().manual_seed(0))
    assert int(t.min()) == 100 and int(t.max()) == 300  # both ends reachable, nothing outside
    assert int(sample_timesteps(10, 1.0, 1.0, 1000).max()) == 999  # never past the last timestep


def test_non_finite_prediction_skips_the_term_and_counts_it():
    prior = NaNPrior()
    guidance = make_guidance("sds", prior)
    rgb = torch.rand(1, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    out = guidance(rgb, C.orbit_camera(10.0, 0.0, 2.0)[None].double(), reference())
    assert float(out["sds"]) == 0.0 and not out["sds"].requires_grad
    assert guidance.skipped == 1 and guidance.info["skipped"] == 1.0


def test_registry_and_config_errors():
    assert "sds" in GUIDANCES
    with pytest.raises(ValueError, match="unknown guidance 'nope'"):
        make_guidance("nope", ToyPrior())
    with pytest.raises(ValueError, match="unknown option"):
        make_guidance("sds", ToyPrior(), {"guidance_scal": 2.0})
    with pytest.raises(ValueError, match="t_range_start"):
        SDSConfig(t_range_start=(0.9, 0.1))
    with pytest.raises(ValueError, match=r"renders \[N, 3, H, W\]"):
        make_guidance("sds", ToyPrior())(torch.rand(3, 8, 8), torch.eye(4)[None], reference())
