"""The input-depth term (train.loss.input_depth): the input view's depth as the pixel plane's depth offset."""
import math

import pytest
import torch

from lrm import cameras as C
from lrm.conventions import CANONICAL_DISTANCE, CANONICAL_FOV_DEG
from lrm.models.pixel_plane import project_canonical
from lrm.training.losses import input_depth_l1, input_depth_offsets

RADIUS = 1.0


def _wall_depth(z: float, size: int, fov: float = CANONICAL_FOV_DEG):
    """Ray-distance depth [1, S, S] of a fronto-parallel wall at camera depth ``z``, seen by the canonical camera."""
    intr = C.intrinsics_from_fov(fov)[None]
    dirs = C.camera_directions(C.pixel_grid(size, size).expand(1, -1, -1), intr[:, None], size, size)
    return (z * dirs.norm(dim=-1)).view(1, size, size), intr


def test_a_wall_gives_its_constant_offset_everywhere():
    depth, intr = _wall_depth(CANONICAL_DISTANCE - 0.3, 128)
    off, w = input_depth_offsets(depth, intr, 64, CANONICAL_DISTANCE, RADIUS, CANONICAL_FOV_DEG)
    assert off.shape == w.shape == (1, 64, 64)
    assert torch.allclose(w, torch.ones_like(w), atol=1e-5)
    assert torch.allclose(off, torch.full_like(off, -0.3 / RADIUS), atol=1e-4)


def test_the_offset_is_what_the_decoder_reads_at_the_visible_surface():
    """A sphere's front surface: the point that the offset map puts on each ray is where project_canonical reads it."""
    s, size, r = 128, 32, 0.5
    intr = C.intrinsics_from_fov(CANONICAL_FOV_DEG)
    c2w = C.orbit_camera(0.0, 0.0, CANONICAL_DISTANCE)
    o, d = C.get_rays(c2w, intr, s, s)
    # ray-sphere (centre at the origin): |o + t d| = r
    b = (o * d).sum(-1)
    disc = b * b - ((o * o).sum(-1) - r * r)
    t = torch.where(disc > 0, -b - disc.clamp_min(0).sqrt(), torch.zeros_like(b))
    depth = t.view(1, s, s)
    off, w = input_depth_offsets(depth, intr[None], size, CANONICAL_DISTANCE, RADIUS, CANONICAL_FOV_DEG)
    inner = w.view(-1) > 0.999  # cells entirely on the sphere
    assert inner.sum() > 50
    # the point on each cell-centre ray at the map's depth offset
    pts = C.unproject_points(C.pixel_grid(size, size), off.view(-1) * RADIUS + CANONICAL_DISTANCE, c2w, intr,
                             size, size)
    read = project_canonical(pts[None], RADIUS)[0, :, 2]
    assert torch.allclose(read[inner], off.view(-1)[inner], atol=1e-5)
    # and those points lie on the sphere to within the averaging of 4 x 4 pixels per cell
    assert (pts[inner].norm(dim=-1) - r).abs().max() < 0.02


def test_off_object_cells_are_not_supervised():
    depth = torch.zeros(1, 16, 16)
    depth[:, 4:12, 4:12] = CANONICAL_DISTANCE
    intr = C.intrinsics_from_fov(CANONICAL_FOV_DEG)[None]
    off, w = input_depth_offsets(depth, intr, 8, CANONICAL_DISTANCE, RADIUS, CANONICAL_FOV_DEG)
    assert w[0, 0, 0] == 0 and w[0, 4, 4] == pytest.approx(1.0)
    pred = torch.full_like(off, 5.0)
    pred[w > 0.5] = off[w > 0.5]
    assert input_depth_l1(pred, off, w) == pytest.approx(0.0, abs=1e-6)  # errors off the object cost nothing
    assert input_depth_l1(pred + 0.25, off, w) == pytest.approx(0.25, abs=1e-5)
    assert input_depth_l1(pred, off, torch.zeros_like(w)) == 0


def test_a_training_step_with_the_term_reaches_the_pixel_plane():
    from _train_utils import MICRO

    from lrm.data.batch import check_batch
    from lrm.models import build_model
    from lrm.training.data import make_source
    from lrm.training.trainer import TrainStep, build_config, step_losses

    cfg = build_config("tiny", MICRO + ["model.pixel_plane.enabled=true", "train.loss.input_depth=1.0"], max_steps=1)
    b = make_source(cfg, "train").get(0)
    assert check_batch(b) is None and b["input_depth"].shape == (1, 24, 24)
    assert (b["input_depth"] > 0).any() and (b["input_depth"] == 0).any()
    torch.manual_seed(0)
    model = build_model(cfg)
    terms = step_losses(TrainStep(model), b, cfg.train, torch.Generator().manual_seed(0), mcfg=cfg.model)
    assert math.isfinite(float(terms["input_depth"].detach())) and float(terms["input_depth"].detach()) > 0
    terms["input_depth"].backward()
    assert model.pixel_plane.conv[2].weight.grad.abs().sum() > 0
    # without the pixel plane the term has nothing to supervise: one clear error
    cfg2 = build_config("tiny", MICRO + ["model.pixel_plane.enabled=false", "train.loss.input_depth=1.0"], max_steps=1)
    with pytest.raises(ValueError, match="pixel plane"):
        step_losses(TrainStep(build_model(cfg2)), b, cfg2.train, torch.Generator().manual_seed(0), mcfg=cfg2.model)


def test_a_batch_is_each_object_on_its_own():
    d = torch.rand(3, 16, 16) + 1.5
    d[1, :4] = 0
    intr = torch.stack([C.intrinsics_from_fov(f) for f in (40.0, 30.0, 50.0)])
    off, w = input_depth_offsets(d, intr, 8, CANONICAL_DISTANCE, RADIUS, CANONICAL_FOV_DEG)
    for k in range(3):
        o1, w1 = input_depth_offsets(d[k:k + 1], intr[k:k + 1], 8, CANONICAL_DISTANCE, RADIUS, CANONICAL_FOV_DEG)
        assert torch.allclose(o1[0], off[k]) and torch.allclose(w1[0], w[k])


def test_the_depth_head_starts_as_the_checkpoint_and_learns():
    """model.pixel_plane.depth_head: --init-from a checkpoint without it gives the same scene bit for bit, and the
    input-depth term trains the head."""
    from _train_utils import MICRO

    from lrm.checkpoint import load_init_weights
    from lrm.models import build_model
    from lrm.training.data import make_source
    from lrm.training.trainer import TrainStep, build_config, step_losses

    over = MICRO + ["model.pixel_plane.enabled=true", "train.loss.input_depth=1.0"]
    cfg0 = build_config("tiny", over, max_steps=1)
    cfg1 = build_config("tiny", over + ["model.pixel_plane.depth_head=8"], max_steps=1)
    torch.manual_seed(0)
    old = build_model(cfg0).eval()
    new = build_model(cfg1).eval()
    fresh = load_init_weights(new, old.state_dict())
    assert fresh == ["pixel_plane.depth_head."]
    b = make_source(cfg1, "train").get(0)
    with torch.no_grad():
        assert torch.equal(new(b["input_images"], b["input_cameras"]), old(b["input_images"], b["input_cameras"]))
    new.train()
    terms = step_losses(TrainStep(new), b, cfg1.train, torch.Generator().manual_seed(0), mcfg=cfg1.model)
    terms["input_depth"].backward()
    assert new.pixel_plane.depth_head.out.weight.grad.abs().sum() > 0
