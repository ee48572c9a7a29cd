"""The view axis of LRM.forward: V = 1 is the one-view model bit for bit (shipped checkpoint, TripoSR layout),
the per-view parts start as no-ops, several views are lifted and attended to independently of the order of
views 1..V-1, and one-view models refuse V > 1."""
import math

import pytest
import torch

from lrm import cameras as C
from lrm.checkpoint import load_checkpoint, save_checkpoint
from lrm.config import load_config
from lrm.models import build_model
from lrm.models.lift import lift_features, token_points

SMALL = ["model.encoder.image_size=32", "model.encoder.patch_size=8", "model.encoder.dim=32",
         "model.encoder.depth=1", "model.encoder.heads=2", "model.transformer.token_dim=32",
         "model.transformer.heads=2", "model.transformer.depth=2", "model.transformer.plane_tokens=4",
         "model.transformer.camera_embed_dim=16", "model.transformer.lift_samples=4", "model.upsampler.channels=4",
         "model.decoder.hidden=16", "model.pixel_plane.enabled=false", "model.upsampler.kernel=2"]
SMALL_TRIPOSR = ["model.encoder.image_size=32", "model.encoder.dim=48", "model.encoder.depth=1",
                 "model.encoder.heads=2", "model.encoder.pos_grid=2", "model.transformer.token_dim=64",
                 "model.transformer.heads=2", "model.transformer.head_dim=16", "model.transformer.depth=1",
                 "model.transformer.plane_tokens=4", "model.transformer.io_groups=8", "model.upsampler.channels=8",
                 "model.decoder.hidden_layers=2"]


def pre_change_forward(model, images, cameras):
    """``LRM.forward`` as it was before the view axis (one image [B, 3, H, W], one camera [B, 16]), written out from
    the stage modules: the reference V = 1 must reproduce exactly."""
    tokens = model.encoder(images)
    if cameras is None and (model.camera_embed is not None or model.lift is not None):
        cameras = model.default_camera(images.shape[0], images.device, images.dtype)
    cond = model.camera_embed(cameras) if model.camera_embed is not None else None
    offset = None
    if model.lift is not None:
        lift = model.lift
        patches = tokens[:, lift.prefix:]
        pts = token_points(lift.plane_tokens, lift.radius, lift.samples, tokens.device)
        feats = lift_features(patches.float(), math.isqrt(patches.shape[1]), cameras.float(), pts)
        offset = lift.proj(feats.to(tokens.dtype))
    x = model.transformer(tokens, cond, offset)
    planes = model.upsampler(x, model.cfg.transformer.plane_tokens)
    if model.pixel_plane is None:
        return planes
    # the pixel plane (added after the view axis, lrm/models/pixel_plane.py) reads view 0's image and tokens
    pix = model.pixel_plane(images, tokens, cameras, planes.shape[-1])
    return torch.cat([planes, pix.to(planes.dtype).unsqueeze(1)], 1)


def view_cameras(azimuths, elevations, fovs):
    """camera_vector [V, 16] of orbit cameras, canonicalised to the first."""
    c2w = C.orbit_camera(torch.tensor(azimuths), torch.tensor(elevations), torch.full((len(azimuths),), 2.0))
    c2w, _ = C.canonicalize(c2w)
    return C.camera_vector(c2w, torch.stack([C.intrinsics_from_fov(f) for f in fovs]))


def small_model(*overrides, seed=0):
    torch.manual_seed(seed)
    return build_model(load_config("tiny", SMALL + list(overrides))).eval()


def perturb_zero_init(model, seed=1):
    """Make the zero-initialised layers (view embedding, adaLN modulation) non-zero, so they matter."""
    g = torch.Generator().manual_seed(seed)
    layers = [model.view_embed.net[2]] + [m.mod[1] for m in model.modules() if getattr(m, "mod", None) is not None]
    with torch.no_grad():
        for layer in layers:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * 0.2)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g) * 0.2)


@torch.no_grad()
def test_shipped_checkpoint_one_view_is_unchanged():
    model, cfg = load_checkpoint()
    assert model.view_embed is None and not cfg.model.transformer.multiview
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 128, 128, generator=g)
    cams = torch.stack([view_cameras([0.0], [0.0], [40.0])[0], view_cameras([0.0], [0.0], [55.0])[0]])
    ref = pre_change_forward(model, img, cams)
    assert torch.equal(model(img, cams), ref)
    assert torch.equal(model(img[:, None], cams[:, None]), ref)
    ref_default = pre_change_forward(model, img, None)
    assert torch.equal(model(img), ref_default)
    assert torch.equal(model(img[:, None]), ref_default)
    assert not torch.equal(ref, ref_default)  # the camera is used (so the comparison above covers it)
    with pytest.raises(ValueError, match="one-view model"):
        model(img[:, None].expand(-1, 2, -1, -1, -1), cams[:, None].expand(-1, 2, -1))


@torch.no_grad()
def test_triposr_layout_one_view_is_unchanged():
    torch.manual_seed(1)
    model = build_model(load_config("triposr", SMALL_TRIPOSR)).eval()
    assert model.camera_embed is None and model.lift is None and model.view_embed is None
    img = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    ref = pre_change_forward(model, img, None)
    assert torch.equal(model(img), ref)
    assert torch.equal(model(img[:, None]), ref)
    cams = view_cameras([0.0], [0.0], [40.0]).expand(2, 1, 16)
    assert torch.equal(model(img[:, None], cams), ref)  # a fixed-camera model ignores cameras
    with pytest.raises(ValueError, match="one-view model"):
        model(torch.stack([img, img], 1))


@torch.no_grad()
def test_multiview_model_at_init_is_the_one_view_model():
    one = small_model("model.transformer.lift_image=true")
    multi = small_model("model.transformer.lift_image=true", "model.transformer.multiview=true")
    missing, unexpected = multi.load_state_dict(one.state_dict(), strict=False)
    assert unexpected == [] and missing and all(k.startswith("view_embed.") for k in missing)
    img = torch.rand(2, 1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    cams = torch.stack([view_cameras([0.0], [0.0], [40.0]), view_cameras([0.0], [0.0], [50.0])])
    assert torch.equal(multi(img, cams), one(img, cams))


def _views(n_views, seed=4):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(2, n_views, 3, 32, 32, generator=g)
    az = [0.0] + torch.linspace(60.0, 300.0, n_views - 1).tolist()
    el = [0.0] + [10.0 * (i % 3) for i in range(1, n_views)]
    az2 = [0.0] + [a + 20.0 for a in az[1:]]
    cams = torch.stack([view_cameras(az, el, [40.0] * n_views), view_cameras(az2, el, [45.0] * n_views)])
    return img, cams


@torch.no_grad()
def test_views_after_the_first_are_order_invariant():
    model = small_model("model.transformer.lift_image=true", "model.transformer.multiview=true")
    perturb_zero_init(model)
    img, cams = _views(4)
    ref = model(img, cams)
    for perm in ([0, 2, 3, 1], [0, 3, 2, 1]):
        out = model(img[:, perm], cams[:, perm])
        assert torch.allclose(out, ref, atol=1e-5, rtol=0), (out - ref).abs().max()
    # meaningful: the views' cameras travel with their own tokens, and view 0 is special (canonical frame)
    swapped_cams = cams[:, [0, 2, 1, 3]]
    assert (model(img, swapped_cams) - ref).abs().max() > 1e-3
    assert (model(img[:, [1, 0, 2, 3]], cams[:, [1, 0, 2, 3]]) - ref).abs().max() > 1e-3
    assert (model(img[:, :3], cams[:, :3]) - ref).abs().max() > 1e-3  # every view counts


@torch.no_grad()
def test_lift_averages_the_views_lifted_with_their_own_cameras():
    model = small_model("model.transformer.lift_image=true", "model.transformer.multiview=true")
    img, cams = _views(3)
    tokens = model.encoder(img.flatten(0, 1)).unflatten(0, img.shape[:2])
    both = model.lift(tokens, cams)
    each = [model.lift(tokens[:, i:i + 1], cams[:, i:i + 1]) for i in range(3)]
    assert torch.allclose(both, sum(each) / 3, atol=1e-5, rtol=0)
    assert (each[0] - each[1]).abs().max() > 1e-3


@torch.no_grad()
def test_multiview_checkpoint_round_trip_and_input_checks(tmp_path):
    model = small_model("model.transformer.lift_image=true", "model.transformer.multiview=true")
    perturb_zero_init(model)
    img, cams = _views(2)
    save_checkpoint(model, load_config("tiny", SMALL + ["model.transformer.lift_image=true",
                                                        "model.transformer.multiview=true"]), tmp_path / "mv")
    loaded, cfg = load_checkpoint(tmp_path / "mv")
    assert cfg.model.transformer.multiview and torch.equal(loaded(img, cams), model(img, cams))
    with pytest.raises(ValueError, match="need their cameras"):
        model(img)
    with pytest.raises(ValueError, match="do not match"):
        model(img, cams[:, :1])


def test_synthetic_views_train_a_multiview_model():
    from _train_utils import MICRO

    from lrm.data.batch import check_batch
    from lrm.training.data import make_source
    from lrm.training.trainer import TrainStep, build_config, image_grid, step_losses, validate

    cfg = build_config("tiny", MICRO + ["model.transformer.multiview=true", "data.num_input_views=3",
                                        "train.batch_size=2"], max_steps=1)
    b = make_source(cfg, "train").get(0)
    assert check_batch(b) is None
    assert b["input_images"].shape == (2, 3, 3, 24, 24) and b["input_cameras"].shape == (2, 3, 16)
    canon = view_cameras([0.0], [0.0], [cfg.camera.fov_deg])[0]
    assert torch.allclose(b["input_cameras"][:, 0], canon.expand(2, -1), atol=1e-5)  # view 0 defines the frame
    assert (b["input_cameras"][:, 1:] - canon).abs().amax(-1).min() > 1e-3
    torch.manual_seed(0)
    model = build_model(cfg)
    terms = step_losses(TrainStep(model), b, cfg.train, torch.Generator().manual_seed(0))
    terms["total"].backward()
    assert torch.isfinite(terms["total"]) and model.view_embed.net[2].weight.grad.abs().sum() > 0
    grid = image_grid(b, validate(model, b, 16, 2))
    assert grid.shape == (3, 2 * 2 * 16, (3 + 2) * 16)  # per object: 3 input views + 2 targets over 2 rows
