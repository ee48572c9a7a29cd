"""Sparse-view input (issue 16): a random V per batch (deterministic in the batch position) in both batch sources,
the cameras file of multi-image inference (bad inputs, canonicalisation equal to the loader's, crop-aware
intrinsics), multi-image infer.py end to end, the gt-mv+lrm evaluation method, and --init-from a one-view checkpoint
into a multi-view model (V = 1 output bit for bit)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lrm import cameras as C
from lrm.cameras_file import CamerasFileError, canonical_cameras, crop_intrinsics, parse_cameras, read_cameras_file
from lrm.checkpoint import CheckpointError, load_init_weights, read_checkpoint, save_checkpoint
from lrm.config import load_config
from lrm.data.batch import check_batch, input_views_at, input_views_range
from lrm.models import build_model

SMALL = ["model.encoder.image_size=32", "model.encoder.patch_size=8", "model.encoder.dim=32",
         "model.encoder.depth=1", "model.encoder.heads=2", "model.transformer.token_dim=32",
         "model.transformer.heads=2", "model.transformer.depth=2", "model.transformer.plane_tokens=4",
         "model.transformer.camera_embed_dim=16", "model.transformer.lift_samples=4", "model.upsampler.channels=4",
         "model.decoder.hidden=16", "model.render.n_samples=8", "model.render.n_importance=0",
         "model.pixel_plane.enabled=false", "model.upsampler.kernel=2"]  # tests/test_pixel_plane.py covers those


def small_model(*overrides, seed=0):
    torch.manual_seed(seed)
    cfg = load_config("tiny", SMALL + list(overrides))
    return build_model(cfg).eval(), cfg


def perturb_view_embed(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.view_embed.net[2].parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


# ---------------------------------------------------------------------------------------- random V per batch
def test_input_views_draw_is_a_function_of_position_and_within_range():
    spec = [1, 4]
    draws = [input_views_at(spec, 7, k) for k in range(400)]
    assert draws == [input_views_at(spec, 7, k) for k in range(400)]  # pure: same position, same V
    assert set(draws) == {1, 2, 3, 4}  # every V of the range occurs, nothing outside
    counts = np.bincount(draws)[1:]
    assert counts.min() > 60  # roughly uniform (expected 100 each)
    assert draws != [input_views_at(spec, 8, k) for k in range(400)]  # the seed matters
    assert {input_views_at(3, 0, k) for k in range(20)} == {3} and input_views_range(2) == (2, 2)
    for bad in ([0, 2], [3, 1], [1, 2, 3], "x", [1.5, 2]):
        with pytest.raises(ValueError):
            input_views_range(bad)


def _cfg(*overrides):
    from lrm.training.defaults import apply_defaults

    return apply_defaults(load_config("tiny", ["data.source=synthetic", "data.image_size=16",
                                               "data.num_views_target=1", "train.batch_size=2", *overrides]))


def test_synthetic_source_random_views_per_batch_exact_resume():
    from lrm.training.data import make_source

    cfg = _cfg("data.num_input_views=[1,3]")
    rank, world = 1, 2
    src, again = make_source(cfg, "train", rank, world), make_source(cfg, "train", rank, world)
    seen = set()
    for pos in (5, 0, 3, 1, 2, 4):  # any order: a resumed source gives the same batch at the same position
        b, b2 = src.get(pos), again.get(pos)
        assert check_batch(b) is None
        v = b["input_images"].shape[1]
        assert v == input_views_at([1, 3], cfg.seed, pos * world + rank) and b["input_cameras"].shape[1] == v
        assert all(torch.equal(b[k], b2[k]) for k in b if torch.is_tensor(b[k]))
        canon = C.camera_vector(C.orbit_camera(0.0, 0.0, 2.0), C.intrinsics_from_fov(40.0))
        assert torch.allclose(b["input_cameras"][:, 0], canon.expand(2, -1), atol=1e-5)
        seen.add(v)
    assert len(seen) > 1
    with pytest.raises(ValueError, match="num_input_views"):
        _cfg("data.num_input_views=[0,3]")


def _write_shard(path: Path, objects: int, views: int, size: int = 16, seed: int = 0, distance: float = 2.5):
    """A .tar of ``objects`` samples; view i of every object is a flat colour (i + 1) * 20 (to identify it) on a
    transparent border; cameras look at points near the origin from random directions (not orbit cameras)."""
    import webdataset as wds

    from lrm.data.shards import encode_sample

    rng = np.random.default_rng(seed)
    cams = []
    with wds.TarWriter(str(path)) as w:
        for o in range(objects):
            eye = rng.normal(size=(views, 3))
            eye = eye / np.linalg.norm(eye, axis=1, keepdims=True) * distance
            target = rng.normal(size=(views, 3)) * 0.05
            c2w = C.look_at(torch.tensor(eye), torch.tensor(target)).numpy()
            intr = np.stack([C.intrinsics_from_fov(35.0 + 3 * i).numpy() for i in range(views)])
            rgba = np.zeros((views, size, size, 4), np.float32)
            for i in range(views):
                rgba[i, 3:-3, 3:-3] = [(i + 1) * 20 / 255.0, 0.5, 0.5, 1.0]
            w.write(encode_sample(f"obj{o:03d}", rgba, c2w, intr, {"view_kind": ["random"] * views}))
            cams.append((c2w, intr))
    return cams


def test_loader_random_views_per_batch(tmp_path):
    from lrm.data import make_loader

    shard = tmp_path / "s-000000.tar"
    _write_shard(shard, objects=6, views=5)
    kw = dict(num_views_target=1, image_size=16, batch_size=2, seed=3, num_input_views=[1, 3], background="white",
              rank=1, world_size=2, shuffle=False)
    vs = [b["input_images"].shape[1] for b, _ in zip(make_loader(str(shard), **kw), range(8))]
    assert vs == [input_views_at([1, 3], 3, k * 2 + 1) for k in range(8)]
    again = [b["input_images"].shape[1] for b, _ in zip(make_loader(str(shard), **kw), range(8))]
    assert again == vs and len(set(vs)) > 1
    # with two DataLoader workers the batch position interleaves the workers, and V still follows it
    two = make_loader(str(shard), **{**kw, "rank": 0, "world_size": 1}, num_workers=2)
    vw = [b["input_images"].shape[1] for b, _ in zip(two, range(6))]
    assert vw == [input_views_at([1, 3], 3, k) for k in range(6)]


# ---------------------------------------------------------------------------------------- cameras file
ORBIT = {"azimuth": 0, "elevation": 0, "distance": 2.0, "fov_deg": 40}
RIGID = C.orbit_camera(30.0, 20.0, 2.0).tolist()


@pytest.mark.parametrize("data, n_images, needle", [
    ({"views": [ORBIT]}, 2, "1 view(s) for 2 image(s)"),
    ({"views": []}, 0, "non-empty list"),
    ({"cams": [ORBIT]}, 1, "unknown key"),
    ({"views": [{"azimuth": 0, "fov_deg": 40}]}, 1, "missing elevation"),
    ({"views": [{"azimuth": 0, "elevation": 0}]}, 1, "no intrinsics"),
    ({"views": [{"c2w": RIGID, "azimuth": 3, "fov_deg": 40}]}, 1, "not both"),
    ({"views": [{"c2w": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 2]], "fov_deg": 40}]}, 1, "must be 4x4"),
    ({"views": [{"c2w": (torch.tensor(RIGID) * torch.tensor([2.0, 2, 2, 1])).tolist(), "fov_deg": 40}]}, 1,
     "not rigid"),
    ({"views": [{"c2w": (torch.tensor(RIGID) @ torch.diag(torch.tensor([-1.0, 1, 1, 1]))).tolist(),
                 "fov_deg": 40}]}, 1, "reflection"),
    ({"views": [{"c2w": [[float("nan")] * 4] * 4, "fov_deg": 40}]}, 1, "NaN"),
    ({"views": [{**ORBIT, "azimuth": float("nan")}]}, 1, "not finite"),
    ({"views": [{**ORBIT, "fov_deg": 0}]}, 1, "out of range"),
    ({"views": [{"azimuth": 0, "elevation": 0, "intrinsics": [1, 1, 0.5]}]}, 1, "must be 4"),
    ({"views": [{"azimuth": 0, "elevation": 0, "intrinsics": [-1, 1, 0.5, 0.5]}]}, 1, "must be > 0"),
    ({"views": [{**ORBIT, "elevation": 95}]}, 1, "out of range"),
    ({"views": [{**ORBIT, "distance": 0}]}, 1, "out of range"),
    ({"views": [{**ORBIT, "image": "b.png"}]}, 1, "is for 'b.png'"),
    ({"views": [ORBIT], "convention": "blender"}, 1, "opencv or opengl"),
    ({"views": [{**ORBIT, "fx": 3}]}, 1, "unknown key"),
    ("views", 1, "JSON object"),
])
def test_cameras_file_bad_inputs(data, n_images, needle):
    images = [f"{c}.png" for c in "abcdefgh"[:n_images]]
    with pytest.raises(CamerasFileError) as e:
        parse_cameras(data, "cams.json", images)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_cameras_file_read_errors(tmp_path):
    with pytest.raises(CamerasFileError, match="not found"):
        read_cameras_file(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{views: ")
    with pytest.raises(CamerasFileError, match="not valid JSON"):
        read_cameras_file(tmp_path / "bad.json")
    (tmp_path / "nan.json").write_text('{"views": [{"azimuth": NaN, "elevation": 0, "fov_deg": 40}]}')
    with pytest.raises(CamerasFileError, match="not finite"):
        read_cameras_file(tmp_path / "nan.json")


def test_orbit_entries_scale_and_opengl():
    rig = parse_cameras({"fov_deg": 40, "views": [{"azimuth": 30, "elevation": 10, "distance": 2.0},
                                                  {"azimuth": 120, "elevation": -5}]})
    assert torch.allclose(rig.c2w[1], C.orbit_camera(120.0, -5.0, 2.0).double(), atol=1e-6)
    assert torch.allclose(rig.intrinsics, C.intrinsics_from_fov(40.0).double().expand(2, 4))
    gl = C.opencv_to_opengl(rig.c2w).clone()  # the same cameras with OpenGL axes, positions in units of 1/3 ...
    gl[:, :3, 3] *= 3.0
    back = parse_cameras({"convention": "opengl", "scale": 3.0, "fov_deg": 40,
                          "views": [{"c2w": m.tolist()} for m in gl]})  # ... undone by "scale"
    assert torch.allclose(back.c2w, rig.c2w, atol=1e-9)


def test_cameras_file_canonicalisation_equals_loader(tmp_path):
    """The cameras of a shard sample written to a cameras file give exactly the loader's input_cameras."""
    from lrm.data import make_loader

    shard = tmp_path / "s-000000.tar"
    (c2w, intr), = _write_shard(shard, objects=1, views=4, seed=5)
    b = next(iter(make_loader(str(shard), num_views_target=1, image_size=16, batch_size=1, seed=1, num_input_views=3,
                              background="white", shuffle=False)))
    order = [int(round(float(b["input_images"][0, j, 0, 8, 8]) * 255 / 20)) - 1 for j in range(3)]  # colour -> view
    assert sorted(set(order)) == sorted(order) and all(0 <= i < 4 for i in order)
    c2w32 = c2w.astype(np.float32)  # the shard stores float32
    cams = {"views": [{"c2w": c2w32[i].astype(np.float64).tolist(), "intrinsics": intr[i].astype(np.float32).tolist()}
                      for i in order]}
    (tmp_path / "cams.json").write_text(json.dumps(cams))
    rig = read_cameras_file(tmp_path / "cams.json")
    assert torch.allclose(canonical_cameras(rig.c2w, rig.intrinsics), b["input_cameras"][0], atol=1e-5)


def test_crop_intrinsics_follow_the_pixels():
    """A 3D point projects to the same place in the cropped, resized image as in the original (analytic)."""
    K = torch.tensor([0.9, 1.3, 0.45, 0.55], dtype=torch.float64)  # for a 300 x 200 (H x W) image
    h, w = 300, 200
    pts = torch.tensor([[0.1, -0.2, 2.0], [-0.3, 0.25, 2.5]], dtype=torch.float64)
    eye = torch.eye(4, dtype=torch.float64)
    uv, _ = C.project_points(pts, eye, K, h, w)
    x0, y0, side = -20.0, 50.0, 240.0  # a square that extends past the left border
    size = 64
    uv2, _ = C.project_points(pts, eye, crop_intrinsics(K, (h, w), (x0, y0, side)), size, size)
    expect = (uv - torch.tensor([x0, y0], dtype=torch.float64)) * size / side
    assert torch.allclose(uv2, expect, atol=1e-9)


# ---------------------------------------------------------------------------------------- init from one view
def test_partial_init_from_one_view_checkpoint(tmp_path):
    one, cfg1 = small_model(seed=0)
    save_checkpoint(one, cfg1, tmp_path / "one")
    mv, _ = small_model("model.transformer.multiview=true", seed=123)  # other random weights everywhere
    _, state = read_checkpoint(tmp_path / "one")
    assert load_init_weights(mv, state, "one") == ["view_embed."]
    torch.manual_seed(4)
    img, cam = torch.rand(2, 1, 3, 32, 32), C.camera_vector(C.orbit_camera(0.0, 0.0, 2.0),
                                                            C.intrinsics_from_fov(40.0)).expand(2, 1, 16)
    with torch.no_grad():
        assert torch.equal(mv(img, cam), one(img, cam))  # V = 1: the one-view model, bit for bit
        three = mv(torch.rand(2, 3, 3, 32, 32), cam.expand(2, 3, 16))
    assert three.shape == one(img, cam).shape
    # a multi-view checkpoint loads strictly (nothing left fresh)
    perturb_view_embed(mv)
    save_checkpoint(mv, load_config("tiny", SMALL + ["model.transformer.multiview=true"]), tmp_path / "mv")
    mv2, _ = small_model("model.transformer.multiview=true", seed=9)
    assert load_init_weights(mv2, read_checkpoint(tmp_path / "mv")[1], "mv") == []
    assert torch.equal(mv2.view_embed.net[2].weight, mv.view_embed.net[2].weight)


def test_partial_init_refuses_anything_else(tmp_path):
    one, _ = small_model(seed=0)
    state = dict(one.state_dict())
    mv, _ = small_model("model.transformer.multiview=true", seed=1)
    broken = {k: v for k, v in state.items() if not k.startswith("decoder.")}
    with pytest.raises(CheckpointError, match="missing"):
        load_init_weights(mv, broken, "x")
    partial = {**state, "view_embed.net.0.weight": mv.state_dict()["view_embed.net.0.weight"]}
    with pytest.raises(CheckpointError, match="missing"):  # a module present in part is not "absent"
        load_init_weights(mv, partial, "x")
    with pytest.raises(CheckpointError, match="unexpected"):
        load_init_weights(one, {**state, "view_embed.net.0.weight": torch.zeros(16, 16)}, "x")
    bigger, _ = small_model("model.transformer.multiview=true", "model.decoder.hidden=24", seed=1)
    with pytest.raises(CheckpointError, match="mis-shaped"):
        load_init_weights(bigger, state, "x")
    perturb_view_embed(mv)  # a model whose new module is not a no-op cannot take the one-view weights "as is"
    with pytest.raises(CheckpointError, match="not zero"):
        load_init_weights(mv, state, "x")


# ---------------------------------------------------------------------------------------- multi-image infer
def _render_views(tmp_path, azimuths, size=48):
    from PIL import Image

    from lrm.training.synthetic import random_object, render_object

    obj = random_object(torch.Generator().manual_seed(3), 2)
    c2w = C.orbit_camera(torch.tensor(azimuths), torch.zeros(len(azimuths)), torch.full((len(azimuths),), 2.0))
    intr = C.intrinsics_from_fov(40.0).expand(len(azimuths), 4)
    rgb, alpha = render_object(obj, c2w, intr, size)
    paths = []
    for i, (c, a) in enumerate(zip(rgb, alpha)):
        p = tmp_path / f"view{i}.png"
        Image.fromarray((torch.cat([c, a[..., None]], -1).numpy() * 255 + 0.5).astype(np.uint8)).save(p)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def mv_ckpt(tmp_path_factory):
    """A random small multi-view model (view embedding perturbed so the views' cameras matter) whose surface
    level is its own median density, so a mesh exists."""
    d = tmp_path_factory.mktemp("mvckpt")
    model, cfg = small_model("model.transformer.multiview=true", seed=2)
    perturb_view_embed(model)
    from lrm.mesh import density_grid
    from lrm.pipeline import Pipeline

    pipe = Pipeline(model, cfg)
    grid, _ = density_grid(pipe.density_fn(pipe.triplane(np.full((64, 64, 3), 0.5, np.float32))), 17, 0.87, 0.0, 1)
    cfg.infer = {"mc_threshold": float(np.median(grid)), "input_size": 64}
    save_checkpoint(model, cfg, d / "model")
    return d / "model"


def test_infer_several_views_end_to_end(tmp_path, mv_ckpt, capsys):
    import infer
    from safetensors.torch import load_file

    paths = _render_views(tmp_path, [0.0, 90.0, 200.0])
    cams = {"fov_deg": 40, "views": [{"image": p.name, "azimuth": a, "elevation": 0}
                                     for p, a in zip(paths, [0.0, 90.0, 200.0])]}
    (tmp_path / "cams.json").write_text(json.dumps(cams))
    args = ["--cameras", str(tmp_path / "cams.json"), "--checkpoint", str(mv_ckpt), "--mc-resolution", "17",
            "--format", "ply"]
    assert infer.main([*map(str, paths), "--out", str(tmp_path / "out"), *args]) == 0
    out = tmp_path / "out" / "view0"
    assert (out / "mesh.ply").stat().st_size > 0 and (out / "input_views.png").is_file()
    from PIL import Image

    assert Image.open(out / "input_views.png").size == (3 * 64, 64)
    info = json.loads((out / "timings.json").read_text())
    assert info["stats"]["views"] == 3 and info["faces"] > 0
    tri = load_file(str(out / "triplane.safetensors"))["triplane"]
    # the order of views 2..V does not matter (same object, same cameras): the same triplane
    swapped = {"fov_deg": 40, "views": [cams["views"][0], cams["views"][2], cams["views"][1]]}
    (tmp_path / "cams2.json").write_text(json.dumps(swapped))
    assert infer.main([str(paths[0]), str(paths[2]), str(paths[1]), "--out", str(tmp_path / "out2"),
                       *args[:1], str(tmp_path / "cams2.json"), *args[2:]]) == 0
    tri2 = load_file(str(tmp_path / "out2" / "view0" / "triplane.safetensors"))["triplane"]
    assert torch.allclose(tri, tri2, atol=1e-5)
    # ... but the cameras do: the same images with view 2's camera moved give another triplane
    moved = {"fov_deg": 40, "views": [cams["views"][0], cams["views"][1], {**cams["views"][2], "azimuth": 250}]}
    (tmp_path / "cams3.json").write_text(json.dumps(moved))
    assert infer.main([*map(str, paths), "--out", str(tmp_path / "out3"), *args[:1], str(tmp_path / "cams3.json"),
                       *args[2:]]) == 0
    tri3 = load_file(str(tmp_path / "out3" / "view0" / "triplane.safetensors"))["triplane"]
    assert not torch.allclose(tri, tri3, atol=1e-5)


def test_infer_several_views_bad_input(tmp_path, mv_ckpt, capsys):
    import infer

    paths = _render_views(tmp_path, [0.0, 90.0])
    (tmp_path / "cams.json").write_text(json.dumps({"views": [ORBIT]}))
    rc = infer.main([*map(str, paths), "--cameras", str(tmp_path / "cams.json"), "--out", str(tmp_path / "out"),
                     "--checkpoint", str(mv_ckpt)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error:") and "1 view(s) for 2 image(s)" in err[0]
    assert not (tmp_path / "out" / "view0").exists()
    # a one-view checkpoint refuses several views with one line
    one, cfg = small_model(seed=0)
    save_checkpoint(one, cfg, tmp_path / "one")
    (tmp_path / "cams2.json").write_text(json.dumps({"fov_deg": 40, "views": [ORBIT, {**ORBIT, "azimuth": 90}]}))
    rc = infer.main([*map(str, paths), "--cameras", str(tmp_path / "cams2.json"), "--out", str(tmp_path / "out"),
                     "--checkpoint", str(tmp_path / "one")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "multi-view checkpoint" in err[0]
    assert not (tmp_path / "out" / "view0").exists()


# ---------------------------------------------------------------------------------------- gt-mv+lrm
PROTO = {"n_views": 4, "resolution": 64, "input_resolution": 64, "elevations_deg": [0.0], "azimuth_step_deg": 90.0,
         "distance": 2.0, "fov_deg": 40.0, "background": [1.0, 1.0, 1.0], "n_surface_samples": 2000,
         "fscore_taus": [0.02, 0.05, 0.1], "iou_resolution": 24, "radius": 0.87, "sample_seed": 0,
         "shading_ambient": 0.5}


@pytest.fixture(scope="module")
def evalset(tmp_path_factory):
    import trimesh

    from lrm.evaluate.evalset import build_eval_set

    box = trimesh.creation.box((0.7, 0.4, 0.5))
    box.visual.vertex_colors = np.tile([200, 50, 40, 255], (len(box.vertices), 1))
    return build_eval_set(tmp_path_factory.mktemp("evalset"), {"box": box}, seed=0, protocol=PROTO)


def test_gt_views_rendered_match_stored(evalset):
    """The GT views gt-mv+lrm renders from gt_mesh.ply equal the eval set's own views at the same poses
    (the set was drawn by the same rasteriser), and 'auto' finds the stored ones."""
    from lrm.evaluate.methods import RunContext, make_method

    obj = evalset.load("box")
    ctx = RunContext(protocol=evalset.protocol)
    m = make_method("gt-mv+lrm")
    m.poses = [(90.0, 0.0), (180.0, 0.0), (270.0, 0.0)]
    c2w, intr = m.extra_cameras(obj)
    stored, how = m.gt_views(obj, c2w, intr, ctx)
    assert how == "stored"  # azimuths 90/180/270 at elevation 0 are protocol views of this set
    m.params["gt_views"] = "render"
    rendered, how = m.gt_views(obj, c2w, intr, ctx)
    assert how == "render" and rendered.shape == stored.shape
    assert np.abs(rendered[..., 3].astype(float) - stored[..., 3]).mean() / 255 < 0.01
    assert np.abs(rendered[..., :3].astype(float) - stored[..., :3]).mean() / 255 < 0.02
    m.poses = [(60.0, 10.0)]
    m.params["gt_views"] = "stored"
    from lrm.evaluate.methods import PredictionError

    with pytest.raises(PredictionError, match="no view at"):
        m.gt_views(obj, *m.extra_cameras(obj)[:2], ctx)


def test_gt_mv_lrm_runs_on_an_eval_set(evalset, tmp_path, mv_ckpt):
    import csv

    from lrm.evaluate import main
    from lrm.evaluate.methods import MethodError, make_method, RunContext

    out = tmp_path / "run"
    args = ["--eval-set", str(evalset.root), "--method", f"gt-mv+lrm:{mv_ckpt}", "--out", str(out),
            "--set", "mc_resolution=17", "--set", "render_resolution=16", "--set", "gt_views=render", "--quiet"]
    assert main(args) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["method"], r["uid"]) for r in rows] == [(f"gt-mv+lrm:{mv_ckpt}", "box")]
    assert rows[0]["status"] == "ok", rows[0]
    assert "gt-mv+lrm" in (out / "report.md").read_text()
    m = make_method("gt-mv+lrm", num_views=5)
    with pytest.raises(MethodError, match="num_views=5"):
        m.setup(RunContext())


ROOT = Path(__file__).resolve().parent.parent
SHARDS = ROOT / "data" / "shards" / "default"
MV_CKPT = ROOT / "checkpoints" / "mv-tiny"


@pytest.mark.slow
@pytest.mark.skipif(not (SHARDS / "manifest.json").is_file() or not (MV_CKPT / "model.safetensors").is_file(),
                    reason="needs the default shards (lrm-build-data) and checkpoints/mv-tiny")
def test_more_ground_truth_views_lower_the_error_on_training_objects():
    """The shipped sparse-view model on its own training objects: 4 ground-truth input views reconstruct held-out
    views better than 1 (mean MSE over 12 objects)."""
    from lrm.checkpoint import load_checkpoint
    from lrm.data.loader import make_loader

    torch.manual_seed(0)
    model, _ = load_checkpoint(MV_CKPT)
    loader = make_loader(str(SHARDS), num_views_target=3, image_size=128, batch_size=1, shuffle=False, split="train",
                         background="white", input_background="white", repeat=False, num_input_views=4)
    errors = {1: [], 4: []}
    with torch.no_grad():
        for i, b in enumerate(loader):
            if i == 12:
                break
            target = torch.nn.functional.interpolate(b["target_rgb"][0].permute(0, 3, 1, 2), size=64, mode="area")
            for v in errors:
                tri = model(b["input_images"][:, :v], b["input_cameras"][:, :v])
                out = model.render(tri, b["target_c2w"], b["target_intrinsics"], 64, background=[1.0, 1.0, 1.0])
                errors[v].append(float(((out["rgb"][0].permute(0, 3, 1, 2) - target) ** 2).mean()))
    assert np.mean(errors[4]) < 0.95 * np.mean(errors[1]), errors
    assert sum(a < b for a, b in zip(errors[4], errors[1])) >= 8, errors
