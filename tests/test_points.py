"""3D supervision: occupancy labels, surface colours, the loader's points / depth / colour jitter, and the
occupancy and depth losses — each against an analytic case or an independent computation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trimesh

pytest.importorskip("igl")

from lrm.data.points import (BALL_RADIUS, half_lambert, object_points, outward, surface_samples,  # noqa: E402
                             winding_occupancy)
from lrm.training.losses import depth_l1, occupancy_bce  # noqa: E402


def test_sphere_winding_numbers_at_known_points():
    s = trimesh.creation.icosphere(subdivisions=3, radius=0.4)
    q = np.array([[0, 0, 0], [0.3, 0, 0], [0, -0.2, 0.2], [0.5, 0, 0], [0, 0, 0.45], [0.3, 0.3, 0.3]])
    assert winding_occupancy(s.vertices, s.faces, q).tolist() == [True, True, True, False, False, False]
    # inverted faces: the winding number flips sign, so nothing is "inside" (labels need outward orientation
    # only through |w|; our meshes come as they are, and fast_winding_number is signed) -- documented case
    inv = winding_occupancy(s.vertices, s.faces[:, ::-1], q)
    assert not inv.any()


def test_open_cylinder_winding_numbers():
    """A tube without caps (an open scan): points inside the tube, away from its open ends, are inside;
    points outside the wall and beyond the open ends are outside (ray parity gets this wrong)."""
    c = trimesh.creation.cylinder(radius=0.2, height=1.6, sections=64)
    side = np.abs(c.face_normals[:, 2]) < 0.5
    tube = trimesh.Trimesh(c.vertices, c.faces[side], process=False)
    assert not tube.is_watertight
    inside = np.array([[0, 0, 0], [0.1, 0, 0.3], [0, -0.1, -0.3]])
    outside = np.array([[0.3, 0, 0], [0, 0.25, 0.2], [0, 0, 1.2], [0, 0, -1.1]])
    assert winding_occupancy(tube.vertices, tube.faces, inside).all()
    assert not winding_occupancy(tube.vertices, tube.faces, outside).any()


def _textured_quad():
    """Unit quad in z = 0 over [-0.5, 0.5]^2 with uv = (x + 0.5, y + 0.5) and a 2x2 texture."""
    from PIL import Image

    v = np.array([[-0.5, -0.5, 0], [0.5, -0.5, 0], [0.5, 0.5, 0], [-0.5, 0.5, 0]], float)
    f = np.array([[0, 1, 2], [0, 2, 3]])
    uv = v[:, :2] + 0.5
    # image rows top to bottom: top row is v in (0.5, 1] (y > 0)
    img = np.array([[[255, 0, 0, 255], [0, 255, 0, 255]],     # y > 0: x < 0 red, x > 0 green
                    [[0, 0, 255, 255], [255, 255, 0, 255]]],  # y < 0: x < 0 blue, x > 0 yellow
                   np.uint8)
    mat = trimesh.visual.material.SimpleMaterial(image=Image.fromarray(img, "RGBA"))
    return trimesh.Trimesh(v, f, visual=trimesh.visual.TextureVisuals(uv=uv, material=mat), process=False)


def test_surface_colour_lookup_on_textured_quad():
    s = surface_samples([_textured_quad()], 400, np.random.default_rng(0))
    p, c = s["points"], s["albedo"]
    assert np.abs(p[:, 2]).max() < 1e-6 and np.abs(p[:, :2]).max() <= 0.5 + 1e-6
    expect = np.where((p[:, 1] > 0)[:, None],
                      np.where((p[:, 0] < 0)[:, None], [1, 0, 0], [0, 1, 0]),
                      np.where((p[:, 0] < 0)[:, None], [0, 0, 1], [1, 1, 0]))
    away = (np.abs(p[:, 0]) > 0.02) & (np.abs(p[:, 1]) > 0.02)  # texel borders: nearest lookup, either side
    assert np.allclose(c[away], expect[away], atol=1e-6)
    # samples are uniform over the area: each quadrant holds about a quarter
    assert all(80 < n < 120 for n in np.bincount((p[:, 0] > 0) * 2 + (p[:, 1] > 0), minlength=4))


def test_normals_turned_outward_and_shaded_like_the_renderer():
    s = trimesh.creation.icosphere(subdivisions=3, radius=0.4)
    inv = trimesh.Trimesh(s.vertices, s.faces[:, ::-1], process=False)  # inward-facing normals
    for mesh in (s, inv):
        smp = surface_samples([mesh], 200, np.random.default_rng(1))
        n = outward(smp["normals"], smp["points"], mesh.vertices, mesh.faces)
        radial = smp["points"] / np.linalg.norm(smp["points"], axis=-1, keepdims=True)
        if mesh is s:
            assert ((n * radial).sum(-1) > 0.9).all()
    # half-Lambert: facing the light -> albedo, facing away -> albedo * ambient
    alb = np.full((2, 3), 0.8)
    out = half_lambert(alb, np.array([[0, 0, 1.0], [0, 0, -1.0]]), [0, 0, 2.0], 0.4)
    assert np.allclose(out, [[0.8] * 3, [0.32] * 3])


def test_object_points_layout_and_labels():
    box = trimesh.creation.box(extents=(0.6, 0.4, 0.2))
    a = object_points([box], np.random.default_rng(0), n_uniform=2000, n_near=1000, n_surface=500)
    pts, occ = a["points.npy"].astype(np.float64), a["occupancy.npy"].astype(bool)
    assert pts.shape == (3000, 3) and occ.shape == (3000,) and a["surface_rgb.npy"].dtype == np.uint8
    assert np.linalg.norm(pts, axis=-1).max() <= BALL_RADIUS + 1e-3
    truth = (np.abs(pts) < np.array([0.3, 0.2, 0.1])).all(-1)
    margin = np.min(np.abs(np.abs(pts) - np.array([0.3, 0.2, 0.1])), axis=-1) > 2e-3
    assert (occ[margin] == truth[margin]).all()
    # uniform part: inside fraction ~ box volume / ball volume
    frac = occ[:2000].mean()
    assert abs(frac - 0.048 / (4 / 3 * math.pi * BALL_RADIUS ** 3)) < 0.02
    # surface samples lie on the box
    s = a["surface.npy"].astype(np.float64)
    assert np.allclose(np.max(np.abs(s) / np.array([0.3, 0.2, 0.1]), -1), 1.0, atol=5e-3)


# --------------------------------------------------------------------------------------------------
# Colour jitter
# --------------------------------------------------------------------------------------------------
def test_hue_matrix_rotates_about_grey():
    from lrm.data.loader import hue_matrix

    M = hue_matrix(2 * math.pi / 3, 1.0, 1.0)  # 120 degrees about the grey axis permutes r -> g -> b
    assert np.allclose(M @ [1, 0, 0], [0, 1, 0], atol=1e-9) and np.allclose(M @ [0, 1, 0], [0, 0, 1], atol=1e-9)
    M = hue_matrix(0.7, 0.3, 0.9)
    assert np.allclose(M @ [0.5, 0.5, 0.5], [0.45] * 3)  # grey stays grey, times the gain
    assert np.allclose(hue_matrix(0.0, 0.0, 1.0) @ [1, 0, 0], [1 / 3] * 3)  # saturation 0: its grey


# --------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------
def test_occupancy_bce_matches_bce_on_opacity():
    g = torch.Generator().manual_seed(0)
    sigma = torch.rand(500, generator=g) * 60
    lab = (torch.rand(500, generator=g) > 0.5).float()
    p = 1 - torch.exp(-sigma * 0.05)
    ref = F.binary_cross_entropy(p.clamp(1e-7, 1 - 1e-7), lab)
    assert torch.allclose(occupancy_bce(sigma, lab, 0.05), ref, rtol=1e-3)
    # gradient pushes density up inside, down outside
    s = sigma.clone().requires_grad_(True)
    occupancy_bce(s, lab, 0.05).backward()
    assert (s.grad[lab == 1] <= 0).all() and (s.grad[lab == 0] > 0).all()


def test_depth_loss_is_zero_for_the_exact_depth():
    """A renderer fed a solid ball (very dense inside) renders the analytic ray-sphere depth."""
    from lrm.config import RenderConfig
    from lrm.render.volume import VolumeRenderer

    r = 0.4
    field = lambda x: ((x.norm(dim=-1) < r).float() * 1e4, torch.full_like(x, 0.5))  # noqa: E731
    n = 64
    o = torch.tensor([0.0, 0.0, 2.0]).expand(n, 3)
    xy = torch.linspace(-0.6, 0.6, n)
    d = torch.stack([xy * 0.5, xy * 0.1, -torch.ones(n)], -1)
    d = d / d.norm(dim=-1, keepdim=True)
    renderer = VolumeRenderer(RenderConfig(n_samples=128, n_importance=128))
    out = renderer(field, o[None], d[None])
    b = (o * d).sum(-1)
    disc = b ** 2 - (o.pow(2).sum(-1) - r ** 2)
    hit = disc > 0
    t_true = torch.where(hit, -b - disc.clamp_min(0).sqrt(), torch.zeros(n))
    mask = hit.float()[None]
    assert hit.any() and (~hit).any()
    assert float(depth_l1(out["depth"], t_true[None], mask)) < 5e-3
    assert float(depth_l1(out["depth"] + 0.1, t_true[None], mask)) == pytest.approx(0.1, abs=5e-3)


# --------------------------------------------------------------------------------------------------
# Shards with points -> loader -> trainer
# --------------------------------------------------------------------------------------------------
def _gl_ok():
    try:
        from lrm.data.render_gl import get_context

        get_context()
        return True
    except Exception:  # noqa: BLE001
        return False


needs_gl = pytest.mark.skipif(not _gl_ok(), reason="no headless EGL/OpenGL context (make install-system)")


@pytest.fixture(scope="module")
def pointset(tmp_path_factory):
    pytest.importorskip("webdataset")
    if not _gl_ok():
        pytest.skip("no headless EGL/OpenGL context (make install-system)")
    from lrm.data.build import build, parse_args

    out = tmp_path_factory.mktemp("pointshards")
    build(parse_args(["--sources", "procedural", "--num", "4", "--procedural-num", "4", "--out", str(out),
                      "--views", "6", "--resolution", "64", "--workers", "1", "--quiet", "--val-fraction", "0"]))
    return out


@needs_gl
def test_loader_points_and_depth_agree_with_the_views(pointset):
    """Unprojecting the loader's target depth through the canonical target cameras lands on the loader's
    (canonicalised) surface samples; inside labels sit within the surface's reach; colours are in range."""
    from lrm.cameras import get_rays
    from lrm.data import make_loader

    S = 48
    b = next(iter(make_loader(pointset, num_views_target=2, image_size=S, batch_size=2, seed=0,
                              extras={"points": 512, "surface_points": 1024, "depth": True})))
    assert b["points"].shape == (2, 512, 3) and b["occupancy"].shape == (2, 512)
    assert b["surface_points"].shape == (2, 1024, 3) and b["surface_rgb"].shape == (2, 1024, 3)
    assert b["target_depth"].shape == (2, 2, S, S)
    assert 0 < float(b["occupancy"].mean()) < 1 and b["surface_rgb"].min() >= 0 and b["surface_rgb"].max() <= 1
    for j in range(2):
        full = b["target_mask"][j] > 0.999
        rays_o, rays_d = get_rays(b["target_c2w"][j], b["target_intrinsics"][j], S, S)
        x = (rays_o + rays_d * b["target_depth"][j].reshape(2, -1, 1))[full.reshape(2, -1)]
        dist = torch.cdist(x, b["surface_points"][j]).min(-1).values
        assert float(dist.median()) < 0.03, float(dist.median())
        # occupied points are never far from the surface samples
        inside = b["points"][j][b["occupancy"][j] > 0.5]
        assert float(torch.cdist(inside, b["surface_points"][j]).min(-1).values.max()) < 0.35


@needs_gl
def test_colour_jitter_is_shared_by_views_and_surface_colours(pointset):
    from lrm.data import make_loader

    kw = dict(num_views_target=2, image_size=32, batch_size=1, seed=5, background="black", shuffle=False)
    plain = next(iter(make_loader(pointset, extras={"surface_points": 256}, **kw)))
    jit = next(iter(make_loader(pointset, extras={"surface_points": 256, "color_jitter": 1.0}, **kw)))
    assert plain["uid"] == jit["uid"]
    a = plain["target_mask"][0] > 0.99
    P, J = plain["target_rgb"][0][a], jit["target_rgb"][0][a]
    # one linear map explains every view's jittered pixels (least squares over both views)
    M = torch.linalg.lstsq(P, J).solution
    ok = (J < 0.99).all(-1) & (J > 0.01).all(-1)  # unclipped pixels
    assert float((P[ok] @ M - J[ok]).abs().max()) < 0.03
    assert float((P - J).abs().mean()) > 0.02  # and it did change the colours


def _train_overrides(path):
    from tests._train_utils import MICRO

    return [o for o in MICRO if not o.startswith("data.source")] + [
        "data.source=shards", f"data.path={path}", "data.num_workers=0", "data.color_jitter=0.5",
        "train.loss.occupancy=1.0", "train.loss.surface_rgb=1.0", "train.loss.depth=0.5",
        "train.points.occupancy=128", "train.points.surface=64"]


@needs_gl
def test_training_with_3d_supervision_lowers_the_occupancy_loss(pointset, tmp_path):
    from lrm.training.trainer import build_config, train

    cfg = build_config("tiny", _train_overrides(pointset) + ["train.lr=3e-3", "train.warmup_steps=1"], max_steps=40)
    res = train(cfg, output_dir=str(tmp_path / "run"))
    h = res["history"]
    assert len(h) == 40 and all(math.isfinite(r["loss"]) for r in h)
    import glob

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(glob.glob(str(tmp_path / "run" / "tb"))[0])
    ea.Reload()
    occ = [e.value for e in ea.Scalars("loss/occupancy")]
    assert {"loss/occupancy", "loss/surface_rgb", "loss/depth"} <= set(ea.Tags()["scalars"])
    assert np.mean(occ[-5:]) < np.mean(occ[:5])


@needs_gl
def test_missing_points_give_one_clear_error(tmp_path):
    from lrm.data.build import build, parse_args
    from lrm.data import make_loader

    out = tmp_path / "nopoints"
    build(parse_args(["--sources", "procedural", "--num", "2", "--procedural-num", "2", "--out", str(out),
                      "--views", "4", "--resolution", "32", "--workers", "1", "--quiet", "--val-fraction", "0",
                      "--no-points"]))
    b = next(iter(make_loader(out, num_views_target=2, image_size=16, batch_size=1)))  # old shards still load
    assert "points" not in b
    with pytest.raises(ValueError, match="no 3D points.*--add-points"):
        next(iter(make_loader(out, num_views_target=2, image_size=16, batch_size=1, extras={"points": 8})))


@needs_gl
def test_add_points_pass_over_old_shards(tmp_path):
    """Shards built without points get them from --add-points: same labels as a build with points, the
    other members untouched, and a second pass changes nothing."""
    from lrm.data.build import add_points, build, parse_args
    from lrm.data.shards import iter_raw

    common = ["--sources", "procedural", "--num", "3", "--procedural-num", "3", "--views", "4", "--resolution", "32",
              "--workers", "1", "--quiet", "--val-fraction", "0"]
    build(parse_args(common + ["--out", str(tmp_path / "with")]))
    build(parse_args(common + ["--out", str(tmp_path / "without"), "--no-points"]))
    before = {s["__key__"]: s for s in iter_raw(sorted(map(str, (tmp_path / "without").glob("*.tar"))))}
    assert not any("points.npy" in s for s in before.values())
    assert add_points(parse_args(common + ["--out", str(tmp_path / "without"), "--add-points"]))["added"] == 3
    after = {s["__key__"]: s for s in iter_raw(sorted(map(str, (tmp_path / "without").glob("*.tar"))))}
    ref = {s["__key__"]: s for s in iter_raw(sorted(map(str, (tmp_path / "with").glob("*.tar"))))}
    assert set(after) == set(ref) == set(before)
    for k, s in after.items():
        for m in ("points.npy", "occupancy.npy", "surface.npy", "surface_rgb.npy"):
            assert s[m] == ref[k][m], (k, m)
        assert s["000.png"] == before[k]["000.png"] and s["json"] == before[k]["json"]
    again = add_points(parse_args(common + ["--out", str(tmp_path / "without"), "--add-points"]))
    assert again["added"] == 0 and again["already"] == 3


def test_synthetic_source_gives_the_same_3d_supervision_analytically():
    """The synthetic source (tests, smoke runs) yields the loader's extra keys; its depth unprojects onto the
    object's surface (a step along the ray enters it, a step back leaves it), in the canonical frame of the
    occupancy labels and surface samples."""
    from omegaconf import OmegaConf

    from lrm.cameras import get_rays
    from lrm.training.defaults import DataConfig
    from lrm.training.synthetic import SyntheticMultiView

    cfg = OmegaConf.structured(DataConfig(image_size=32, num_views_target=2))
    ds = SyntheticMultiView(cfg, "train", seed=3, extras={"points": 4096, "surface_points": 2048, "depth": True})
    b = ds.batch([0, 1])
    assert b["points"].shape == (2, 4096, 3) and b["occupancy"].shape == (2, 4096)
    assert b["surface_rgb"].shape == (2, 2048, 3) and b["target_depth"].shape == (2, 2, 32, 32)
    for j in range(2):
        fg = b["target_mask"][j].reshape(2, -1) > 0.5
        o, d = get_rays(b["target_c2w"][j], b["target_intrinsics"][j], 32, 32)
        t = b["target_depth"][j].reshape(2, -1, 1)
        x = (o + d * t)[fg]
        assert float(torch.cdist(x, b["surface_points"][j]).min(-1).values.median()) < 0.03
        # labels of the canonical points agree with the depth: nearest label just behind the surface is inside
        inside_pts = (o + d * (t + 0.01))[fg]
        near = torch.cdist(inside_pts, b["points"][j]).min(-1)
        close = near.values < 0.02
        if close.any():
            assert b["occupancy"][j][near.indices[close]].mean() > 0.6


def test_one_batch_contract_for_both_sources():
    """The synthetic source's batch passes the contract check (with extras); broken shapes are named."""
    from omegaconf import OmegaConf

    from lrm.data.batch import check_batch, fixed_background
    from lrm.training.defaults import DataConfig
    from lrm.training.synthetic import SyntheticMultiView

    cfg = OmegaConf.structured(DataConfig(image_size=16, num_views_target=2))
    b = SyntheticMultiView(cfg, "train", extras={"points": 8, "surface_points": 4, "depth": True}).batch([0, 1])
    assert check_batch(b) is None
    bad = dict(b, occupancy=b["occupancy"][:, :5])
    assert "occupancy" in check_batch(bad) and "N=8" in check_batch(bad)
    assert "non-finite" in check_batch(dict(b, target_depth=b["target_depth"] * float("nan")))
    assert "missing" in check_batch({k: v for k, v in b.items() if k != "background"})
    assert fixed_background("random") is None and torch.equal(fixed_background("grey"), torch.full((3,), 0.5))
    with pytest.raises(ValueError, match="unknown background"):
        fixed_background("purple")


@needs_gl
def test_all_surface_samples_without_a_draw_keep_the_views(pointset):
    """surface_points = -1 (the validation pass's mesh-surface scores): every stored sample, and the views drawn for
    the following objects are the same as without asking for points."""
    from lrm.data import make_loader

    kw = dict(num_views_target=2, image_size=32, batch_size=1, seed=3, shuffle=False, repeat=False)
    plain = list(make_loader(pointset, **kw))
    full = list(make_loader(pointset, extras={"surface_points": -1}, **kw))
    assert [b["uid"] for b in plain] == [b["uid"] for b in full] and len(full) > 1
    for a, b in zip(plain, full):
        assert torch.equal(a["target_rgb"], b["target_rgb"]) and torch.equal(a["target_c2w"], b["target_c2w"])
        assert b["surface_points"].shape[1] == 4096  # lrm.data.points stores 4,096 per object


@needs_gl
def test_logged_validation_batch_from_shards_does_not_depend_on_the_run_seed(pointset):
    """The shard loader draws views from the loader seed and torch's: both are fixed for the logged val batch."""
    from lrm.training.lrm_task import fixed_val_batch
    from lrm.training.trainer import build_config

    over = _train_overrides(pointset) + ["data.num_views_target=3", "train.val_batch_size=2"]
    a = fixed_val_batch(build_config("tiny", over + ["seed=0"], max_steps=1))
    b = fixed_val_batch(build_config("tiny", over + ["seed=7"], max_steps=1))
    assert a["uid"] == b["uid"] and torch.equal(a["target_rgb"], b["target_rgb"])
    assert torch.equal(a["target_c2w"], b["target_c2w"])


@needs_gl
def test_a_shuffled_shard_stream_repeats_with_its_seed(pointset):
    """Shard order, shuffle buffer and view draws all follow the seed: two loaders of one seed give the same stream."""
    import itertools

    from lrm.data import make_loader

    def uids(seed):
        kw = dict(num_views_target=1, image_size=16, batch_size=1, seed=seed, shuffle=True, repeat=True)
        return [b["uid"][0] for b in itertools.islice(make_loader(pointset, **kw), 12)]

    a = uids(3)
    assert a == uids(3) and a != uids(4) and len(set(a)) == 4
