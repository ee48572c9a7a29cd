"""The Zero-1-to-3 prior (lrm/diffusion/zero123.py) on a tiny random-weight folder of the public diffusers layout
(tests/_zero123_tiny.py): loading, the wiring checked against direct calls of the diffusers / transformers modules,
the camera convention against Zero-1-to-3's own recipe, CFG branches, prediction types, DDIM sampling through the
ViewPrior interface, and refused folders."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from _zero123_tiny import TINY_EMBED, write_tiny_zero123  # noqa: E402

from lrm import cameras as cam  # noqa: E402
from lrm.diffusion.prior import ViewPrior, cfg_combine, relative_camera, relative_camera_from_angles  # noqa: E402
from lrm.diffusion.zero123 import (CLIP_MEAN, CLIP_STD, Zero123FolderError, clip_preprocess,  # noqa: E402
                                   eps_from_prediction, load_zero123, zero123_camera)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_zero123(tmp_path_factory.mktemp("z123") / "tiny", seed=0)


@pytest.fixture(scope="module")
def prior(folder):
    return load_zero123(folder)


@pytest.fixture(scope="module")
def image():
    g = torch.Generator().manual_seed(1)
    return torch.rand(1, 3, 200, 200, generator=g)  # not 256: condition() resizes


def _copy(folder, tmp_path, name="copy"):
    dst = tmp_path / name
    shutil.copytree(folder, dst)
    return dst


def _proj_weights(folder):
    from safetensors.torch import load_file

    sd = load_file(str(folder / "clip_camera_projection" / "diffusion_pytorch_model.safetensors"))
    return sd["proj.weight"], sd["proj.bias"]


def _direct_eps(prior, x_t, t, ctx, concat):
    """The UNet called directly: [noisy latent, concat latent] on channels, one context token."""
    return prior.unet(torch.cat([x_t, concat], dim=1), t, encoder_hidden_states=ctx).sample


# --------------------------------------------------------------------------------------------------
def test_folder_loads_with_the_models_geometry(prior):
    assert isinstance(prior, ViewPrior)
    assert prior.resolution == 256 and prior.num_train_timesteps == 1000
    assert prior.dtype == torch.float32 and prior.prediction_type == "epsilon"
    # SD 1.x scaled-linear schedule, written out by hand
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    torch.testing.assert_close(prior.alphas_cumprod, torch.cumprod(1 - betas, 0).float(), rtol=1e-5, atol=1e-7)
    assert prior.alphas_cumprod.dtype == torch.float32


def test_shapes_through_the_interface(prior, image):
    cond = prior.condition(image)
    assert cond.extras["clip_embedding"].shape == (1, 1, TINY_EMBED)
    assert cond.extras["image_latent"].shape == (1, 4, 32, 32)
    x0 = prior.encode(torch.rand(2, 3, 256, 256))
    assert x0.shape == (2, 4, 32, 32) and x0.dtype == torch.float32
    eps = prior.predict_noise(x0, torch.tensor([10, 900]), cond, relative_camera_from_angles([0, 10], [30, 90]))
    assert eps.shape == (2, 4, 32, 32) and eps.dtype == torch.float32 and torch.isfinite(eps).all()
    rgb = prior.decode(x0)
    assert rgb.shape == (2, 3, 256, 256) and rgb.min() >= 0 and rgb.max() <= 1


def test_latents_are_scaled_posterior_mean_and_concat_latent_is_unscaled_mode(prior, image):
    """x0 = VAE mean × scaling factor (SD convention); the input-image latent is the *unscaled* mode (Zero-1-to-3)."""
    x = F.interpolate(image, size=(256, 256), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        post = prior.vae.encode(x * 2 - 1).latent_dist
        want = post.mean * 0.18215
        got = prior.encode(image)
        lat = prior.condition(image).extras["image_latent"]
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(lat, post.mode())
    assert not torch.allclose(lat, got)


def test_encode_passes_gradients_to_the_image(prior):
    """SDS differentiates the latent w.r.t. the rendered image."""
    rgb = torch.rand(1, 3, 64, 64, requires_grad=True)
    prior.encode(rgb).square().sum().backward()
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0
    assert all(p.grad is None for p in prior.vae.parameters())


def test_conditional_branch_matches_direct_module_calls(folder, prior, image):
    """ε̂ = UNet([x_t, mode latent], t, Linear([CLIP image_embeds, Δpolar, sin, cos, Δr])), modules called by hand."""
    w, b = _proj_weights(folder)
    rel = relative_camera_from_angles([20.0, -10.0], [45.0, 180.0], [0.0, 0.3])
    x_t, t = torch.randn(2, 4, 32, 32), torch.tensor([50, 700])
    with torch.no_grad():
        x = F.interpolate(image, size=(256, 256), mode="bilinear", align_corners=False, antialias=True)
        pix = F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=True)
        pix = (pix - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        emb = prior.image_encoder(pixel_values=pix).image_embeds  # [1, D]
        T = torch.stack([-torch.deg2rad(torch.tensor([20.0, -10.0])),  # Δpolar = −Δelevation
                         torch.sin(torch.deg2rad(torch.tensor([45.0, 180.0]))),
                         torch.cos(torch.deg2rad(torch.tensor([45.0, 180.0]))), torch.tensor([0.0, 0.3])], -1)
        ctx = F.linear(torch.cat([emb.expand(2, -1), T], -1), w, b)[:, None]
        concat = prior.vae.encode(x * 2 - 1).latent_dist.mode().expand(2, -1, -1, -1)
        want = _direct_eps(prior, x_t, t, ctx, concat)
        got = prior.predict_noise(x_t, t, prior.condition(image), rel)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_unconditional_branch_is_zero_context_and_zero_latent(folder, prior, image):
    x_t, t = torch.randn(2, 4, 32, 32), torch.tensor([300, 300])
    rel = relative_camera_from_angles(15.0, 60.0).expand(2, 4)
    with torch.no_grad():
        cond = prior.predict_noise(x_t, t, prior.condition(image), rel)
        unc = prior.predict_noise(x_t, t, None, rel)
        want = _direct_eps(prior, x_t, t, torch.zeros(2, 1, TINY_EMBED), torch.zeros(2, 4, 32, 32))
    torch.testing.assert_close(unc, want, rtol=1e-5, atol=1e-5)
    assert (cond - unc).abs().max() > 1e-3
    # the training-time null condition: zero CLIP embedding, camera still projected
    null = load_zero123(folder, uncond="null_image")
    w, b = _proj_weights(folder)
    with torch.no_grad():
        ctx = F.linear(torch.cat([torch.zeros(2, TINY_EMBED), zero123_camera(rel)], -1), w, b)[:, None]
        want_null = _direct_eps(prior, x_t, t, ctx, torch.zeros(2, 4, 32, 32))
        got_null = null.predict_noise(x_t, t, None, rel)
    torch.testing.assert_close(got_null, want_null, rtol=1e-5, atol=1e-5)
    assert (got_null - unc).abs().max() > 1e-4
    with pytest.raises(ValueError, match="uncond"):
        load_zero123(folder, uncond="nothing")


def test_one_condition_serves_a_batch(prior, image):
    x_t, t = torch.randn(3, 4, 32, 32), torch.tensor([10, 400, 800])
    rel = relative_camera_from_angles([0, 20, -20], [90, 180, 270])
    with torch.no_grad():
        one = prior.predict_noise(x_t, t, prior.condition(image), rel)
        three = prior.predict_noise(x_t, t, prior.condition(image.expand(3, -1, -1, -1)), rel)
        scalar_t = prior.predict_noise(x_t[1:2], 400, prior.condition(image), rel[1])
    torch.testing.assert_close(one, three, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scalar_t, one[1:2], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="2 images"):
        prior.predict_noise(x_t, t, prior.condition(image.expand(2, -1, -1, -1)), rel)
    with pytest.raises(ValueError, match="2 relative cameras for 3 samples"):
        prior.predict_noise(x_t, t, None, rel[:2])
    with pytest.raises(ValueError, match=r"x_t must be latents \[N, 4, 32, 32\]"):
        prior.predict_noise(torch.zeros(3, 3, 256, 256), t, None, rel)


# --------------------------------------------------------------------------------------------------
# camera convention
# --------------------------------------------------------------------------------------------------
def _zero123_get_T(src_c2w, tgt_c2w):
    """Zero-1-to-3's training recipe (its dataset's get_T): spherical coordinates of the camera *positions*,
    polar θ = arctan2(sqrt(x² + y²), z) from +Z, azimuth atan2(y, x), radius |p|; T = [Δθ, sin Δaz, cos Δaz, Δr]."""
    def sph(p):
        return torch.atan2(p[..., :2].norm(dim=-1), p[..., 2]), torch.atan2(p[..., 1], p[..., 0]), p.norm(dim=-1)

    (th_s, az_s, r_s), (th_t, az_t, r_t) = sph(src_c2w[..., :3, 3]), sph(tgt_c2w[..., :3, 3])
    d_az = torch.remainder(az_t - az_s, 2 * math.pi)
    return torch.stack([th_t - th_s, torch.sin(d_az), torch.cos(d_az), r_t - r_s], -1)


def test_camera_conversion_analytic_cases():
    src = cam.orbit_camera(0.0, 0.0, 2.0)
    # 30° above, a quarter turn toward +Y, 0.5 further: Δpolar = −30°, sin 1, cos 0, Δr 0.5
    got = zero123_camera(relative_camera(src, cam.orbit_camera(90.0, 30.0, 2.5)))
    torch.testing.assert_close(got, torch.tensor([-math.pi / 6, 1.0, 0.0, 0.5]), atol=1e-5, rtol=0)
    # below the input: positive Δpolar; half a turn: sin 0, cos −1
    got = zero123_camera(relative_camera(src, cam.orbit_camera(180.0, -20.0, 2.0)))
    torch.testing.assert_close(got, torch.tensor([math.radians(20.0), 0.0, -1.0, 0.0]), atol=1e-5, rtol=0)
    # the angle helper agrees
    torch.testing.assert_close(zero123_camera(relative_camera_from_angles(30.0, 90.0, 0.5)),
                               torch.tensor([-math.pi / 6, 1.0, 0.0, 0.5]), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="4 values"):
        zero123_camera(torch.zeros(3))


def test_camera_conversion_matches_zero123_recipe_on_random_pairs():
    g = torch.Generator().manual_seed(3)
    n = 64
    az = torch.rand(2, n, generator=g) * 360 - 180
    el = torch.rand(2, n, generator=g) * 150 - 75
    d = 1.5 + torch.rand(2, n, generator=g) * 0.7  # Zero-1-to-3's render distances
    src, tgt = cam.orbit_camera(az[0], el[0], d[0]), cam.orbit_camera(az[1], el[1], d[1])
    torch.testing.assert_close(zero123_camera(relative_camera(src, tgt)), _zero123_get_T(src, tgt),
                               atol=2e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# prediction types, preprocessing
# --------------------------------------------------------------------------------------------------
def test_eps_from_prediction_inverts_the_forward_process():
    g = torch.Generator().manual_seed(4)
    x0, eps = torch.randn(5, 4, 8, 8, generator=g), torch.randn(5, 4, 8, 8, generator=g)
    ab = torch.tensor([0.999, 0.9, 0.5, 0.1, 0.005]).view(5, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    v = ab.sqrt() * eps - (1 - ab).sqrt() * x0
    torch.testing.assert_close(eps_from_prediction(v, x_t, ab, "v_prediction"), eps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eps_from_prediction(x0, x_t, ab, "sample"), eps, atol=1e-4, rtol=1e-4)
    assert eps_from_prediction(eps, x_t, ab, "epsilon") is eps
    with pytest.raises(ValueError, match="prediction_type"):
        eps_from_prediction(eps, x_t, ab, "flow")


def test_v_prediction_folder_is_converted_to_eps(folder, prior, image, tmp_path):
    vf = _copy(folder, tmp_path, "v")
    cfg_path = vf / "scheduler" / "scheduler_config.json"
    cfg_path.write_text(json.dumps(dict(json.loads(cfg_path.read_text()), prediction_type="v_prediction")))
    vprior = load_zero123(vf)
    assert vprior.prediction_type == "v_prediction"
    x_t, t = torch.randn(2, 4, 32, 32), torch.tensor([100, 900])
    rel = relative_camera_from_angles(0.0, [45.0, 90.0])
    with torch.no_grad():
        cond = vprior.condition(image)
        raw = prior.predict_noise(x_t, t, cond, rel)  # same weights, epsilon config: the raw network output
        got = vprior.predict_noise(x_t, t, cond, rel)
    ab = prior.alphas_cumprod[t].view(2, 1, 1, 1)
    torch.testing.assert_close(got, ab.sqrt() * raw + (1 - ab).sqrt() * x_t, rtol=1e-5, atol=1e-5)
    cfg_path.write_text(json.dumps(dict(json.loads(cfg_path.read_text()), prediction_type="flow")))
    with pytest.raises(Zero123FolderError, match="prediction_type"):
        load_zero123(vf)


def test_clip_preprocess_of_a_constant_image_is_the_normalised_colour():
    c = torch.tensor([0.9, 0.2, 0.5])
    out = clip_preprocess(c.view(1, 3, 1, 1).expand(2, 3, 256, 256))
    assert out.shape == (2, 3, 224, 224)
    want = (c - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(out, want.view(1, 3, 1, 1).expand_as(out), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# sampling through the interface
# --------------------------------------------------------------------------------------------------
def _ddim(prior: ViewPrior, cond, rel, seed, steps=2, scale=3.0):
    """Deterministic DDIM (η = 0) with CFG, written against the ViewPrior interface only."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(prior.scheduler_config)
    torch.testing.assert_close(sched.alphas_cumprod.float(), prior.alphas_cumprod)  # one noise schedule
    sched.set_timesteps(steps)
    h = prior.resolution // 8
    x = torch.randn(1, 4, h, h, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for t in sched.timesteps:
            tt = t.view(1)
            eps = cfg_combine(prior.predict_noise(x, tt, None, rel), prior.predict_noise(x, tt, cond, rel), scale)
            x = sched.step(eps, t, x).prev_sample
        return x, prior.decode(x)


def test_ddim_sampling_is_seeded_and_shaped(prior, image):
    cond, rel = prior.condition(image), relative_camera_from_angles(10.0, 90.0)
    a, img = _ddim(prior, cond, rel, seed=7)
    b, _ = _ddim(prior, cond, rel, seed=7)
    c, _ = _ddim(prior, cond, rel, seed=8)
    assert a.shape == (1, 4, 32, 32) and img.shape == (1, 3, 256, 256)
    assert torch.isfinite(a).all() and img.min() >= 0 and img.max() <= 1
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-2


# --------------------------------------------------------------------------------------------------
# layouts accepted and refused
# --------------------------------------------------------------------------------------------------
def test_community_cc_projection_layout_loads_the_same_model(prior, image, tmp_path):
    """diffusers' community Zero1to3 pipeline names the projection cc_projection/ (CCProjection, projection.*)."""
    other = load_zero123(write_tiny_zero123(tmp_path / "cc", seed=0, projection_dir="cc_projection"))
    x_t, t, rel = torch.randn(1, 4, 32, 32), torch.tensor([500]), relative_camera_from_angles(5.0, 30.0)
    with torch.no_grad():
        torch.testing.assert_close(other.predict_noise(x_t, t, other.condition(image), rel),
                                   prior.predict_noise(x_t, t, prior.condition(image), rel))


def test_missing_folder_and_subfolders_are_named(folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_zero123(tmp_path / "nowhere")
    broken = _copy(folder, tmp_path)
    shutil.rmtree(broken / "unet")
    shutil.rmtree(broken / "clip_camera_projection")
    with pytest.raises(FileNotFoundError, match=r"missing subfolder\(s\) unet/, clip_camera_projection/$"):
        load_zero123(broken)
    broken2 = _copy(folder, tmp_path, "noscheduler")
    (broken2 / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        load_zero123(broken2)


def test_pickle_only_weights_are_refused_without_being_read(folder, tmp_path):
    broken = _copy(folder, tmp_path)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    # not a pickle at all: the refusal must come before anything tries to read it
    (broken / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(Zero123FolderError, match=r"unet: only pickle weights \(diffusion_pytorch_model.bin\)"):
        load_zero123(broken)
    (broken / "unet" / "diffusion_pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="no .safetensors"):
        load_zero123(broken)


def test_inconsistent_projection_is_refused(folder, tmp_path):
    broken = _copy(folder, tmp_path)
    cfg = broken / "clip_camera_projection" / "config.json"
    cfg.write_text(json.dumps(dict(json.loads(cfg.read_text()), embedding_dim=16)))
    with pytest.raises(Zero123FolderError, match="disagrees with config.json"):
        load_zero123(broken)
