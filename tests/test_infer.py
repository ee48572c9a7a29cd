"""infer.py end to end, the Python API, and every bad-input case (one error line, non-zero exit, no files)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
import torch
from PIL import Image

from _images import huge_png

import infer
from lrm.checkpoint import DEFAULT_CHECKPOINT, CheckpointError, load_checkpoint, save_checkpoint
from lrm.config import load_config
from lrm.models import build_model

ROOT = Path(__file__).resolve().parent.parent


def disc_png(path, size=96):
    yy, xx = np.mgrid[0:size, 0:size]
    a = ((xx - size / 2) ** 2 + (yy - size / 2) ** 2 < (size / 3) ** 2)
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 3] = 200, 60, a * 255
    Image.fromarray(rgba).save(path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """The shipped default checkpoint when present, else a random tiny one whose surface level is set from
    its own density so a mesh exists."""
    if (DEFAULT_CHECKPOINT / "model.safetensors").is_file():
        return DEFAULT_CHECKPOINT
    from lrm.pipeline import Pipeline

    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    cfg = load_config("tiny")
    model = build_model(cfg)
    pipe = Pipeline(model, cfg)
    img = disc_png(d / "probe.png")
    from lrm.mesh import density_grid
    from lrm.preprocess import preprocess

    grid, _ = density_grid(pipe.density_fn(pipe.triplane(preprocess(img, 256).image)), 33, 0.87, 0.0, 1)
    cfg.infer = {"mc_threshold": float(np.median(grid))}
    save_checkpoint(model, cfg, d / "model")
    return d / "model"


@pytest.fixture(scope="module")
def cli_run(ckpt, tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    img = disc_png(d / "disc.png")
    r = subprocess.run([sys.executable, str(ROOT / "infer.py"), str(img), "--out", str(d / "out"), "--checkpoint",
                        str(ckpt), "--video", "--video-frames", "4", "--mc-resolution", "33"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    return r, img, d / "out" / "disc"


def test_cli_writes_mesh_triplane_video(cli_run, ckpt):
    import imageio
    import trimesh

    r, _, out = cli_run
    assert r.returncode == 0, r.stderr
    mesh = trimesh.load(out / "mesh.glb", force="mesh")
    assert len(mesh.faces) > 0
    assert mesh.visual.kind == "vertex" and mesh.visual.vertex_colors.shape[0] == len(mesh.vertices)
    radius = load_config(Path(ckpt) / "config.yaml").model.render.radius
    assert np.abs(mesh.vertices).max() <= radius + 1e-5
    frames = imageio.mimread(out / "turntable.mp4")
    assert len(frames) == 4
    from safetensors.torch import load_file

    tri = load_file(str(out / "triplane.safetensors"))["triplane"]
    planes = 4 if load_config(Path(ckpt) / "config.yaml").model.pixel_plane.enabled else 3  # + the pixel plane
    assert tri.dim() == 5 and tri.shape[1] == planes
    info = json.loads((out / "timings.json").read_text())
    assert {"preprocess", "model", "density_grid", "marching_cubes", "texture"} <= set(info["timings_s"])


def test_python_api_gives_the_cli_mesh(cli_run, ckpt):
    import trimesh

    from lrm import Pipeline
    from lrm.mesh import to_viewer_frame

    r, img, out = cli_run
    assert r.returncode == 0, r.stderr
    res = Pipeline.from_pretrained(ckpt, mc_resolution=33).run(img)
    cli = trimesh.load(out / "mesh.glb", force="mesh")
    api_v = to_viewer_frame(np.asarray(res.mesh.vertices))
    assert len(res.mesh.faces) == len(cli.faces)
    assert np.allclose(np.sort(api_v, axis=0), np.sort(np.asarray(cli.vertices), axis=0), atol=1e-5)
    assert set(res.timings) >= {"preprocess", "model", "density_grid"}


@pytest.mark.parametrize("fmt", ["obj", "ply"])
def test_other_formats_and_uv_texture(ckpt, tmp_path, fmt):
    import trimesh

    img = disc_png(tmp_path / "d.png")
    rc = infer.main([str(img), "--out", str(tmp_path / "o"), "--checkpoint", str(ckpt), "--format", fmt,
                     "--mc-resolution", "33"] + (["--texture", "uv", "--texture-size", "128"] if fmt == "obj" else []))
    assert rc == 0
    m = trimesh.load(tmp_path / "o" / "d" / f"mesh.{fmt}", force="mesh")
    assert len(m.faces) > 0
    if fmt == "obj":
        assert (tmp_path / "o" / "d" / "mesh.mtl").exists() and m.visual.kind == "texture"


def _bad_cases(tmp_path):
    good = disc_png(tmp_path / "good.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    (tmp_path / "trunc.png").write_bytes(good.read_bytes()[:200])
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "one.png")
    Image.fromarray(np.zeros((64, 64, 4), np.uint8)).save(tmp_path / "clear.png")
    huge_png(tmp_path / "huge.png")
    return good, {
        "missing": [str(tmp_path / "missing.png")],
        "zero-byte": [str(tmp_path / "empty.png")],
        "non-image": [str(tmp_path / "text.png")],
        "truncated": [str(tmp_path / "trunc.png")],
        "1x1": [str(tmp_path / "one.png")],
        "20000x20000": [str(tmp_path / "huge.png")],
        "transparent": [str(tmp_path / "clear.png")],
    }


def test_bad_inputs_one_error_line_no_files(ckpt, tmp_path, capsys):
    good, cases = _bad_cases(tmp_path)
    for name, argv in cases.items():
        out = tmp_path / f"out-{name}"
        rc = infer.main(argv + ["--out", str(out), "--checkpoint", str(ckpt), "--mc-resolution", "17"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc != 0, name
        assert len(err) == 1 and err[0].startswith("error:"), (name, err)
        assert not out.exists() or not any(p for p in out.rglob("*") if p.is_file()), name


def test_bad_checkpoint_and_output_dir(ckpt, tmp_path, capsys):
    good = disc_png(tmp_path / "good.png")
    # a checkpoint whose weights don't match its config
    bad = tmp_path / "bad_ckpt"
    cfg = load_config(Path(ckpt) / "config.yaml")
    from safetensors.torch import load_file, save_file

    bad.mkdir()
    wrong = yaml.safe_load((Path(ckpt) / "config.yaml").read_text())
    wrong["model"]["transformer"]["depth"] += 1  # one more block than the weights hold
    (bad / "config.yaml").write_text(yaml.safe_dump(wrong, sort_keys=False))
    save_file(load_file(str(Path(ckpt) / "model.safetensors")), str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError):
        load_checkpoint(bad)
    # a corrupt weights file
    corrupt = tmp_path / "corrupt_ckpt"
    corrupt.mkdir()
    (corrupt / "config.yaml").write_text((Path(ckpt) / "config.yaml").read_text())
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 100)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for argv in ([str(good), "--checkpoint", str(bad), "--out", str(tmp_path / "o1")],
                 [str(good), "--checkpoint", str(corrupt), "--out", str(tmp_path / "o2")],
                 [str(good), "--checkpoint", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o3")],
                 [str(good), "--checkpoint", str(ckpt), "--out", str(blocker / "sub")]):
        rc = infer.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc != 0 and len(err) == 1 and err[0].startswith("error:"), (argv, err)
    for o in ("o1", "o2", "o3"):
        assert not any(p.is_file() for p in (tmp_path / o).rglob("*")) if (tmp_path / o).exists() else True


def test_pipeline_uses_the_checkpoints_input_background(tmp_path):
    """TripoSR checkpoints were trained on inputs composited over grey 0.5: infer.input_background is honoured."""
    from lrm.pipeline import Pipeline

    torch.manual_seed(0)
    cfg = load_config("tiny")
    model = build_model(cfg)
    img = disc_png(tmp_path / "d.png")
    white = Pipeline(model, cfg, mc_resolution=17).run(img)
    cfg.infer = {"input_background": [0.5, 0.5, 0.5], "mc_resolution": 17}
    grey = Pipeline(model, cfg).run(img)
    assert np.allclose(white.input_image[0, 0], 1.0) and np.allclose(grey.input_image[0, 0], 0.5)
    assert not torch.allclose(white.triplane, grey.triplane)


def test_refine_uses_the_checkpoints_refined_level_unless_a_threshold_is_given(ckpt, tmp_path):
    """``infer.py --refine ref``: the refined mesh is cut at the checkpoint's ``infer.refined_mc_threshold`` (else its
    mc_threshold), and an explicit ``--mc-threshold`` sets both meshes' level instead."""
    from lrm.pipeline import Pipeline

    img = disc_png(tmp_path / "d.png")
    base = [str(img), "--checkpoint", str(ckpt), "--mc-resolution", "33", "--refine", "ref", "--refine-steps", "1"]
    assert infer.main(base + ["--out", str(tmp_path / "a")]) == 0
    info = json.loads((tmp_path / "a" / "d-refined-ref" / "refine.json").read_text())
    opts = Pipeline.from_pretrained(ckpt).opts
    want = opts["refined_mc_threshold"] if opts["refined_mc_threshold"] is not None else opts["mc_threshold"]
    assert info["mc_threshold"] == want
    assert infer.main(base + ["--out", str(tmp_path / "b"), "--mc-threshold", "5.5"]) == 0
    info = json.loads((tmp_path / "b" / "d-refined-ref" / "refine.json").read_text())
    assert info["mc_threshold"] == 5.5 == info["stats"]["level"]
