"""Jointly denoised views (lrm/diffusion/model.py ``joint_views``, MVDream-style cross-view self-attention): the
single-view model is the V = 1 case bit for bit, identical views reduce to it, views interact within an object only,
the model is equivariant to permuting the views, seeded joint sampling, multi-view SDS, and the training task with
V target views per object (docs/diffusion.md, "Jointly denoised views")."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from test_diffusion import TINY, task_cfg, tiny_model  # noqa: E402
from test_frontend import _infer, setup  # noqa: E402,F401  (setup: the front end's tiny prior / checkpoints)

from lrm import cameras as C  # noqa: E402
from lrm.diffusion.pixel_prior import PixelPrior  # noqa: E402
from lrm.diffusion.prior import predict_noise_views, relative_camera, relative_camera_from_angles  # noqa: E402
from lrm.diffusion.sample import sample_views  # noqa: E402


def joint_model(seed=0):
    m = tiny_model(seed)
    m.set_joint_views(True)
    return m


def _inputs(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    cond = torch.rand(n, 3, 16, 16, generator=g) * 2 - 1
    cam = torch.randn(n, 4, generator=g)
    return x, t, cond, cam


# ------------------------------------------------------------------------------------------------ model
@torch.no_grad()
def test_one_view_is_the_single_view_model_bit_for_bit():
    single, joint = tiny_model(0), joint_model(0)
    assert joint.joint_views and not single.joint_views
    assert single.state_dict().keys() == joint.state_dict().keys()  # no weights added: checkpoints load as is
    joint.load_state_dict(single.state_dict(), strict=True)
    x, t, cond, cam = _inputs(4)
    drop = torch.tensor([False, True, False, True])
    assert torch.equal(joint(x, t, cond, cam, drop=drop, num_views=1), single(x, t, cond, cam, drop=drop))
    joint.set_joint_views(False)  # back to diffusers' own processor: the same numbers
    assert torch.equal(joint(x, t, cond, cam, drop=drop), single(x, t, cond, cam, drop=drop))


@torch.no_grad()
def test_identical_views_reduce_to_the_single_view_prediction():
    """Attention over V copies of the same tokens is attention over the tokens once (softmax weights split evenly
    over the copies), so V identical views give the single-view prediction."""
    single, joint = tiny_model(1), joint_model(1)
    x, t, cond, cam = _inputs(2, seed=1)
    ref = single(x, t, cond, cam)
    for v in (2, 3):
        rep = [a.repeat_interleave(v, 0) for a in (x, t, cond, cam)]
        out = joint(*rep, num_views=v)
        torch.testing.assert_close(out, ref.repeat_interleave(v, 0), atol=2e-5, rtol=1e-5)


@torch.no_grad()
def test_views_interact_within_an_object_only():
    m = joint_model(2)
    x, t, cond, cam = _inputs(4, seed=2)  # two objects of two views: rows (0, 1) and (2, 3)
    t = t[[0, 0, 2, 2]]
    base = m(x, t, cond, cam, num_views=2)
    x2 = x.clone()
    x2[1] += 1.0  # change the second view of the first object
    out = m(x2, t, cond, cam, num_views=2)
    assert (out[0] - base[0]).abs().max() > 1e-3  # the other view of the same object sees it
    torch.testing.assert_close(out[2:], base[2:], atol=1e-6, rtol=0)  # the other object does not
    per_view = m(x, t, cond, cam, num_views=1), m(x2, t, cond, cam, num_views=1)
    torch.testing.assert_close(per_view[0][0], per_view[1][0], atol=1e-6, rtol=0)  # V = 1: independent views


@torch.no_grad()
def test_permuting_the_views_permutes_the_prediction():
    m = joint_model(3)
    x, t, cond, cam = _inputs(4, seed=3)
    t = t[:1].expand(4)
    cond = cond[:1].expand(4, -1, -1, -1)
    out = m(x, t, cond, cam, num_views=4)
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(m(x[perm], t, cond, cam[perm], num_views=4), out[perm], atol=2e-5, rtol=1e-5)


def test_bad_view_counts_are_refused_and_the_count_does_not_leak():
    from lrm.config import ConfigError
    from lrm.diffusion.model import ViewConditionedUNet, ViewUNetConfig

    x, t, cond, cam = _inputs(4)
    with pytest.raises(ValueError, match="independently"):
        tiny_model()(x, t, cond, cam, num_views=2)
    m = joint_model()
    with pytest.raises(ValueError, match="does not divide"):
        m(x, t, cond, cam, num_views=3)
    with pytest.raises(Exception):
        m(x[:, :2], t, cond, cam, num_views=2)  # fails inside the UNet
    assert m._views.n == 1  # restored after a failed call: the next call is per image again
    with torch.no_grad():
        torch.testing.assert_close(m(x, t, cond, cam), tiny_model()(x, t, cond, cam), atol=0, rtol=0)
    with pytest.raises(ConfigError, match="joint_views"):
        ViewConditionedUNet(ViewUNetConfig(**{**TINY, "attention": [False, False]}, joint_views=True))
    with pytest.raises(ValueError, match="independently"):
        predict_noise_views(PixelPrior(tiny_model()), x, t, None, cam, num_views=2)


def test_batched_guidance_equals_two_calls_for_a_joint_prior():
    """Both CFG branches in one pass of 2N rows: the V views of each object still attend only to each other."""
    from lrm.diffusion.prior import guided_noise

    prior = PixelPrior(joint_model(4))
    cond = prior.condition(torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2)))
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    t, cam = torch.tensor([100, 300, 500, 700] * 2), torch.randn(8, 4)
    with torch.no_grad():
        e_u = predict_noise_views(prior, x, t, None, cam, num_views=4)
        e_c = predict_noise_views(prior, x, t, cond, cam, num_views=4)
        g, calls = guided_noise(prior, x, t, cond, cam, 3.0, num_views=4)
    assert calls == 1
    torch.testing.assert_close(g, e_u + 3.0 * (e_c - e_u), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="independently"):
        guided_noise(PixelPrior(tiny_model()), x, t, cond, cam, 3.0, num_views=4)


# ------------------------------------------------------------------------------------------------ sampling
def test_joint_sampling_is_seeded_and_equivariant_to_the_pose_order():
    prior = PixelPrior(joint_model(4))
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    rel = relative_camera_from_angles(torch.tensor([0.0, 10.0, 0.0, 20.0]), torch.tensor([90.0, 180.0, 270.0, 45.0]))
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    a = sample_views(prior, image, rel, 3, 3.0, g(), num_views=4)
    assert a.shape == (4, 3, 16, 16) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, sample_views(prior, image, rel, 3, 3.0, g(), num_views=4))
    indep = sample_views(prior, image, rel, 3, 3.0, g())
    assert (a - indep).abs().max() > 1e-3  # the views saw each other
    noise = torch.randn(4, 3, 16, 16, generator=g())
    assert torch.equal(a, sample_views(prior, image, rel, 3, 3.0, num_views=4, noise=noise))  # the same draw
    perm = torch.tensor([3, 1, 0, 2])
    b = sample_views(prior, image, rel[perm], 3, 3.0, num_views=4, noise=noise[perm])
    torch.testing.assert_close(b, a[perm], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="joint prior"):
        sample_views(PixelPrior(tiny_model()), image, rel, 2, 3.0, g(), num_views=4)


def test_generate_views_joint_flag():
    from lrm.frontend import generate_views
    from lrm.preprocess import InputError

    poses = [(90.0, 0.0), (180.0, 0.0), (270.0, 0.0)]
    image = np.random.default_rng(0).random((24, 24, 3)).astype(np.float32)
    prior = PixelPrior(joint_model(5))
    a = generate_views(prior, image, poses, steps=2, guidance=3.0, seed=3, joint=True)
    b = generate_views(prior, image, poses, steps=2, guidance=3.0, seed=3)  # None: as the prior (joint)
    c = generate_views(prior, image, poses, steps=2, guidance=3.0, seed=3, joint=False)
    assert a.images.shape == (3, 24, 24, 3) and a.info["joint"] and not c.info["joint"]
    assert np.array_equal(a.images, b.images) and not np.allclose(a.images, c.images, atol=1e-4)
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    ref = sample_views(prior, x, relative_camera_from_angles(torch.zeros(3), torch.tensor([90.0, 180.0, 270.0])),
                       2, 3.0, torch.Generator().manual_seed(3), num_views=3)
    ref = torch.nn.functional.interpolate(ref, size=(24, 24), mode="bilinear", align_corners=False, antialias=True)
    assert np.allclose(a.images, ref.clamp(0, 1).permute(0, 2, 3, 1).numpy(), atol=1e-6)
    with pytest.raises(InputError, match="cross-view attention"):
        generate_views(PixelPrior(tiny_model()), image, poses, steps=2, joint=True)


# ------------------------------------------------------------------------------------------------ SDS
def test_multiview_sds_denoises_the_renders_together():
    """With a joint prior, SDS over N renders calls it with num_views=N at one shared timestep; the gradient on
    each render is w(t)(ε̂ − ε)/N with ε̂ the joint CFG prediction computed directly."""
    from lrm.guidance import Reference, SDSConfig
    from lrm.guidance.sds import SDSGuidance

    prior = PixelPrior(joint_model(6))
    calls = []
    inner = prior.predict_noise_pair  # guidance 2: both branches in one batched pass

    def spy(x_t, t, cond, rel, num_views=1):
        calls.append((num_views, t.clone()))
        return inner(x_t, t, cond, rel, num_views=num_views)

    prior.predict_noise_pair = spy
    g = torch.Generator().manual_seed(0)
    ref = Reference(torch.rand(1, 3, 16, 16, generator=g), C.orbit_camera(0.0, 0.0, 2.0)[None])
    c2w = C.orbit_camera(torch.tensor([60.0, 150.0, 240.0]), torch.tensor([0.0, 15.0, 5.0]), torch.full((3,), 2.0))
    rgb = torch.rand(3, 3, 16, 16, generator=g).requires_grad_(True)
    sds = SDSGuidance(prior, SDSConfig(guidance_scale=2.0), generator=torch.Generator().manual_seed(1))
    sds(rgb, c2w, ref)["sds"]  # drawn timesteps: one per object, shared by its views
    assert [v for v, _ in calls] == [3] and calls[0][1].unique().numel() == 1
    calls.clear()
    t = torch.full((3,), 400)
    eps = torch.randn(3, 3, 16, 16, generator=g)
    sds(rgb, c2w, ref, t=t, noise=eps)["sds"].backward()
    with torch.no_grad():
        x0 = rgb * 2 - 1
        abar = prior.alphas_cumprod[400]
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        rel = relative_camera(ref.c2w.expand(3, 4, 4), c2w)
        m, cond = prior.model, prior.condition(ref.image)
        e_c = m(x_t, t, cond.extras["cond_image"].expand(3, -1, -1, -1), rel,
                image_embedding=cond.extras["embedding"].expand(3, -1), num_views=3)
        e_u = m(x_t, t, torch.zeros_like(x_t), rel, drop=torch.ones(3, dtype=torch.bool),
                image_embedding=torch.zeros(3, m.cfg.image_embed_dim), num_views=3)
        expected = (1 - abar) * (e_u + 2.0 * (e_c - e_u) - eps) * 2 / 3  # d x0 / d rgb = 2
    torch.testing.assert_close(rgb.grad, expected, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ task
def test_view_pairs_keep_the_views_of_an_object_together():
    from lrm.diffusion.task import view_pairs

    az = torch.tensor([[0.0, 90.0, 180.0], [30.0, 30.0, 300.0]])  # per object: input, then two targets
    c2w = C.orbit_camera(az.flatten(), torch.zeros(6), torch.full((6,), 2.0)).view(2, 3, 4, 4)
    K = C.intrinsics_from_fov(40.0).expand(2, 4)
    inp = torch.stack([torch.full((1, 3, 8, 8), 0.25), torch.full((1, 3, 8, 8), 0.75)])
    tgt = torch.arange(4.0).view(2, 2, 1, 1, 1).expand(2, 2, 8, 8, 3) / 4
    batch = {"input_images": inp, "input_cameras": C.camera_vector(c2w[:, 0], K)[:, None], "target_rgb": tgt,
             "target_c2w": c2w[:, 1:], "uid": ["a", "b"]}
    p = view_pairs(batch, 8)
    assert p["target"].shape == (4, 3, 8, 8) and p["cond_image"].shape == (4, 3, 8, 8)
    assert torch.allclose(p["target"][:, 0, 0, 0], torch.tensor([0.0, 0.25, 0.5, 0.75]) * 2 - 1)
    assert torch.allclose(p["cond_image"][:, 0, 0, 0], torch.tensor([-0.5, -0.5, 0.5, 0.5]))
    d = torch.deg2rad(torch.tensor([90.0, 180.0, 0.0, 270.0]))
    assert torch.allclose(p["rel_camera"], torch.stack([torch.zeros(4), d.sin(), d.cos(), torch.zeros(4)], -1),
                          atol=1e-5)


def test_task_trains_views_jointly():
    from lrm.diffusion.task import DiffusionTask

    task = DiffusionTask(task_cfg(**{"model.joint_views": "true", "data.num_views_target": 3}))
    assert task.num_views == 3
    model = task.build_model()
    assert model.joint_views
    batch = task.build_source("train", 0, 1).get(0)
    assert task.check_batch(batch) is None and batch["target"].shape == (6, 3, 16, 16)
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x_t, t, cond_image, rel_camera, drop=None, num_views=1):
            seen.append((num_views, t.clone(), drop.clone()))
            return self.inner(x_t, t, cond_image, rel_camera, drop=drop, num_views=num_views)

    losses = task.step_losses(Spy(model), batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(losses["total"])
    v, t, drop = seen[0]
    assert v == 3 and all(x.view(2, 3).unique(dim=1).shape[1] == 1 for x in (t, drop))  # shared per object
    assert task.check_batch({**batch, "target": batch["target"][:5]}) is not None
    vb = task.validation_batch(torch.device("cpu"))
    assert vb["t"].view(2, 2, 3).unique(dim=2).shape[2] == 1  # (object, timestep, view) rows
    metrics = task.validate(model, vb)
    assert np.isfinite(metrics["mse"]) and {"mse_t100", "mse_t900", "cond_gain"} <= set(metrics)
    img = task.validation_image(model, vb)
    assert img.shape == (3, 6 * 16, 3 * 16)


# ------------------------------------------------------------------------------------------------ infer.py
def test_infer_frontend_views_flag(setup, tmp_path, capsys):
    """``infer.py --frontend mv --frontend-views joint``: a joint prior's views are denoised together (recorded in
    timings.json); with a single-view prior the flag is one error line before any model is loaded, nothing written."""
    import json

    from lrm.diffusion.pixel_prior import folder_joint_views
    from lrm.diffusion.task import DiffusionTask

    joint_dir = tmp_path / "joint-prior"
    DiffusionTask(task_cfg(**{"model.joint_views": "true"})).export(joint_model().state_dict(), joint_dir)
    assert folder_joint_views(joint_dir) and not folder_joint_views(setup / "prior")
    base = [setup / "obj.png", "--frontend", "mv", "--mv-checkpoint", setup / "mv", "--frontend-steps", "2",
            "--mc-resolution", "17", "--format", "ply"]
    rc, cap = _infer(base + ["--prior", setup / "prior", "--frontend-views", "joint", "--out", tmp_path / "bad"],
                     capsys)
    err = cap.err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "cross-view attention" in err[0] and not (tmp_path / "bad").exists()
    rc, cap = _infer(base + ["--prior", joint_dir, "--frontend-views", "joint", "--out", tmp_path / "out"], capsys)
    assert rc == 0, cap.err
    info = json.loads((tmp_path / "out" / "obj" / "timings.json").read_text())
    assert info["generated_views"]["joint"] is True


def test_sample_cli_denoises_a_joint_priors_views_together(tmp_path, capsys):
    import json

    from PIL import Image

    from test_diffusion import _cli, _png

    from lrm.diffusion.task import DiffusionTask

    DiffusionTask(task_cfg(**{"model.joint_views": "true"})).export(joint_model().state_dict(), tmp_path / "prior")
    img = _png(tmp_path / "obj.png")
    runs = {}
    for name, extra in (("joint", []), ("indep", ["--independent"])):
        args = [img, "--azimuth", "90,180,270", "--checkpoint", tmp_path / "prior", "--steps", "2",
                "--out", tmp_path / name, *extra]
        rc, cap = _cli(args, capsys)
        assert rc == 0, cap.err
        runs[name] = json.loads((tmp_path / name / "sampling.json").read_text())["joint"], \
            np.asarray(Image.open(tmp_path / name / "view_az+180_el+0.png"), np.float32)
    assert runs["joint"][0] is True and runs["indep"][0] is False
    assert np.abs(runs["joint"][1] - runs["indep"][1]).max() > 0  # same seed, the views saw each other
