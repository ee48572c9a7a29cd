"""The pixel plane (lrm/models/pixel_plane.py): pixel-aligned input features as a fourth plane of the scene."""
import pytest
import torch

from lrm import cameras as C
from lrm.checkpoint import load_init_weights
from lrm.config import load_config
from lrm.models import build_model
from lrm.models.decoder import sample_pixel_plane
from lrm.models.pixel_plane import canonical_grid, check_canonical_pose, project_canonical

SMALL = ["model.encoder.image_size=32", "model.encoder.patch_size=8", "model.encoder.dim=32",
         "model.encoder.depth=1", "model.encoder.heads=2", "model.transformer.token_dim=32",
         "model.transformer.heads=2", "model.transformer.depth=2", "model.transformer.plane_tokens=4",
         "model.transformer.camera_embed_dim=16", "model.transformer.lift_samples=4", "model.upsampler.channels=6",
         "model.decoder.hidden=16", "model.render.n_samples=8", "model.render.n_importance=0",
         "model.pixel_plane.enabled=false", "model.upsampler.kernel=2"]  # tiny's own switches off: each test sets them
PIXEL = ["model.pixel_plane.enabled=true"]
R = 0.87


def small_model(*overrides, seed=0):
    torch.manual_seed(seed)
    return build_model(load_config("tiny", SMALL + list(overrides))).eval()


def canonical_vector(fov=40.0, batch=1):
    return C.camera_vector(C.orbit_camera(0.0, 0.0, 2.0), C.intrinsics_from_fov(fov)).expand(batch, 16)


def test_points_on_a_pixel_ray_sample_that_pixel():
    """A point anywhere on the canonical camera's ray through pixel (i, j) reads plane cell (i, j) exactly."""
    size = 8
    plane = torch.rand(1, 5, size, size)
    c2w, intr = C.orbit_camera(0.0, 0.0, 2.0), C.intrinsics_from_fov(40.0)
    rays_o, rays_d = C.get_rays(c2w, intr, size, size)  # pixel centres, row-major
    for t in (1.5, 2.0, 2.6):
        pts = (rays_o + t * rays_d)[None]  # [1, 64, 3]
        out = sample_pixel_plane(plane, pts, R, 2.0, 40.0)
        assert torch.allclose(out[0, :, :5], plane[0].flatten(1).T, atol=1e-5)
    # the last feature is the depth offset along the optical axis: 0 at the origin's depth
    origin = sample_pixel_plane(plane, torch.zeros(1, 1, 3), R, 2.0, 40.0)
    assert origin[0, 0, -1].abs() < 1e-6
    cam_pos = c2w[:3, 3]
    near = sample_pixel_plane(plane, (cam_pos * 0.5)[None, None], R, 2.0, 40.0)  # halfway to the camera: z = 1
    assert torch.allclose(near[0, 0, -1], torch.tensor((1.0 - 2.0) / R))


def test_points_behind_the_camera_or_off_image_read_zeros():
    plane = torch.ones(1, 3, 8, 8)
    c2w = C.orbit_camera(0.0, 0.0, 2.0)
    behind = (c2w[:3, 3] * 2.0)[None, None]  # twice as far as the camera, on its axis, behind it
    off = torch.tensor([[[0.0, 1.5, 0.0]]]) + (c2w[:3, 3] * 0.5)  # far outside the 40 degree frustum
    for p in (behind, off):
        assert project_canonical(p, R)[0, 0, :2].abs().max() > 1
        assert sample_pixel_plane(plane, p, R, 2.0, 40.0)[0, 0, :3].abs().max() == 0


def test_canonical_grid_is_identity_for_the_canonical_camera_and_rescales_other_fovs():
    size = 16
    assert torch.allclose(canonical_grid(C.intrinsics_from_fov(40.0)[None], size)[0, 0, :, 0],
                          (torch.arange(size) * 2 + 1) / size - 1.0, atol=1e-6)
    # a narrower input camera (same pose): an image holding each pixel's camera direction x/z, resampled to the
    # canonical plane, holds the canonical pixels' directions where the input covers them
    narrow = C.intrinsics_from_fov(25.0)[None]
    n = 64
    centres = (torch.arange(n) + 0.5) / n
    img_x = ((centres - narrow[0, 2]) / narrow[0, 0]).expand(n, n)  # direction x/z at each input pixel
    grid = canonical_grid(narrow, size)
    got = torch.nn.functional.grid_sample(img_x[None, None], grid, align_corners=False)[0, 0]
    can = C.intrinsics_from_fov(40.0)
    want = (((torch.arange(size) + 0.5) / size - can[2]) / can[0]).expand(size, size)
    inside = (grid[0].abs() < 1 - 1.0 / n).all(-1)
    assert inside.sum() > 20
    assert torch.allclose(got[inside], want[inside], atol=1e-4)


def test_model_outputs_four_planes_whose_colour_plane_is_the_input_image():
    m = small_model(*PIXEL)
    img = torch.rand(2, 1, 3, 32, 32)
    with torch.no_grad():
        tri = m(img, canonical_vector(batch=2)[:, None])
    side = 4 * 2
    assert tri.shape == (2, 4, 6, side, side)
    want = torch.nn.functional.avg_pool2d(img[:, 0], 32 // side)
    assert torch.allclose(tri[:, 3, :3], want, atol=1e-5)
    # the field depends on the input pixels through the pixel plane once pixel_in is not zero
    with torch.no_grad():
        m.decoder.pixel_in.weight.normal_()
        pts = torch.rand(1, 50, 3) * 0.4
        a = m.query(tri[:1], pts)["rgb"]
        tri2 = tri[:1].clone()
        tri2[:, 3] += 1.0
        b = m.query(tri2, pts)["rgb"]
    assert (a - b).abs().max() > 1e-3


def test_pixel_plane_refuses_other_poses_and_a_decoder_refuses_the_wrong_plane_count():
    check_canonical_pose(canonical_vector(fov=25.0))  # another FoV is fine
    moved = C.camera_vector(C.orbit_camera(30.0, 10.0, 2.0), C.intrinsics_from_fov(40.0))[None]
    with pytest.raises(ValueError, match="canonical camera"):
        check_canonical_pose(moved)
    m = small_model(*PIXEL)
    with pytest.raises(ValueError, match="canonical camera"):
        m(torch.rand(1, 1, 3, 32, 32), moved[:, None])
    with pytest.raises(ValueError, match="reads 4 planes"):
        m.query(torch.zeros(1, 3, 6, 8, 8), torch.zeros(1, 2, 3))


def test_init_from_a_three_plane_checkpoint_starts_as_that_checkpoint():
    """--init-from: a checkpoint without the pixel plane loads into a pixel-plane model whose field equals the
    checkpoint's bit for bit (zero pixel_in); with a 2x larger upsampler kernel the planes are the checkpoint's
    nearest-upsampled."""
    old = small_model(seed=0)
    new = small_model(*PIXEL, seed=5)
    fresh = load_init_weights(new, dict(old.state_dict()), "old")
    assert sorted(fresh) == ["decoder.pixel_in.", "pixel_plane."]
    img, cam = torch.rand(1, 1, 3, 32, 32), canonical_vector()[:, None]
    pts = (torch.rand(1, 200, 3) * 2 - 1) * 0.8
    with torch.no_grad():
        t_old, t_new = old(img, cam), new(img, cam)
        assert torch.equal(t_new[:, :3], t_old)
        a, b = old.query(t_old, pts), new.query(t_new, pts)
    assert torch.allclose(a["density"], b["density"], atol=1e-6) and torch.allclose(a["rgb"], b["rgb"], atol=1e-6)

    wide = small_model(*PIXEL, "model.upsampler.kernel=4", seed=7)
    load_init_weights(wide, dict(old.state_dict()), "old")
    with torch.no_grad():
        t_wide = wide(img, cam)
    up = t_old.repeat_interleave(2, -1).repeat_interleave(2, -2)
    assert torch.allclose(t_wide[:, :3], up, atol=1e-5)


def test_init_from_refuses_a_nonzero_pixel_input_left_fresh():
    from lrm.checkpoint import CheckpointError

    old = small_model(seed=0)
    new = small_model(*PIXEL, seed=5)
    with torch.no_grad():
        new.decoder.pixel_in.weight.fill_(0.1)
    with pytest.raises(CheckpointError, match="not"):
        load_init_weights(new, dict(old.state_dict()), "old")


def test_refinement_keeps_the_pixel_plane_fixed_unless_asked():
    from lrm.refine import RefineConfig
    from lrm.refine.loop import refine

    m = small_model(*PIXEL)
    with torch.no_grad():
        m.decoder.pixel_in.weight.normal_(0, 0.5)  # so the losses reach the pixel plane at all
        img = torch.rand(1, 1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        tri = m(img, canonical_vector()[:, None])
    image = img[0, 0].permute(1, 2, 0).numpy()
    mask = torch.ones(32, 32)
    fast = dict(mode="ref", steps=3, lr=0.05, resolutions=(8,), resolution_milestones=(), save_every=0, n_samples=8,
                n_importance=0)
    fixed = refine(tri, m, image, None, RefineConfig(**fast), mask=mask, progress=False).triplane
    assert torch.equal(fixed[:, 3], tri[:, 3]) and not torch.equal(fixed[:, :3], tri[:, :3])
    moved = refine(tri, m, image, None, RefineConfig(**fast, pixel_plane="optimise"), mask=mask, progress=False).triplane
    assert not torch.equal(moved[:, 3], tri[:, 3])


def test_depth_bands_gate_starts_as_the_ungated_model_and_makes_the_pixel_term_depth_dependent():
    """``model.pixel_plane.depth_bands``: the bands are sin/cos of 2^k·π·d; a pixel-plane checkpoint without the gate
    loads with the gate fresh and the field unchanged bit for bit; a non-zero gate gives two points on one input ray
    different pixel terms, where the ungated term differs only through the depth channel."""
    import math

    from lrm.models.decoder import depth_bands

    d = torch.tensor([0.0, 0.25, -0.5])
    b = depth_bands(d, 2)
    want = torch.stack([torch.sin(math.pi * d), torch.sin(2 * math.pi * d), torch.cos(math.pi * d),
                        torch.cos(2 * math.pi * d)], -1)
    assert torch.allclose(b, want, atol=1e-6)

    old = small_model(*PIXEL, seed=0)
    with torch.no_grad():
        old.decoder.pixel_in.weight.normal_(0, 0.3)  # a trained pixel input
    new = small_model(*PIXEL, "model.pixel_plane.depth_bands=3", seed=5)
    fresh = load_init_weights(new, dict(old.state_dict()), "old")
    assert fresh == ["decoder.pixel_gate."]
    img, cam = torch.rand(1, 1, 3, 32, 32), canonical_vector()[:, None]
    pts = (torch.rand(1, 200, 3) * 2 - 1) * 0.8
    with torch.no_grad():
        t = old(img, cam)
        assert torch.equal(new(img, cam), t)
        old.decoder.cfg.fold_planes = False  # the same arithmetic on both sides (the gated decoder cannot fold)
        assert torch.equal(old.query(t, pts)["raw"], new.query(t, pts)["raw"])
        # two depths on the ray through one pixel: same plane features, different depth channel
        f = torch.randn(1, 1, 6).expand(1, 2, 6)
        pix = torch.cat([f, torch.tensor([[[0.1], [0.6]]])], -1)
        ungated = new.decoder.pixel_input(pix)
        new.decoder.pixel_gate.weight.normal_(0, 1.0)
        gated = new.decoder.pixel_input(pix)
    lin = new.decoder.pixel_in
    assert torch.allclose(ungated[0, 1] - ungated[0, 0], lin.weight[:, -1] * 0.5, atol=1e-6)  # affine in depth
    gate = 1 + new.decoder.pixel_gate(depth_bands(pix[..., -1], 3))
    assert torch.allclose(gated, ungated * gate, atol=1e-6) and not torch.allclose(gate[0, 0], gate[0, 1])
