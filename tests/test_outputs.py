"""Output folders (lrm/outdir.py, infer.py, the TripoSR converter): never replace what we did not write, refuse
colliding inputs and bad options before any work, respect the umask, sweep only our own stale temp folders."""
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import infer
from lrm.checkpoint import DEFAULT_CHECKPOINT, CheckpointError, load_checkpoint, save_checkpoint
from lrm.config import ConfigError, load_config
from lrm.models import build_model
from lrm.outdir import OWNER_MARKER, OutputExistsError, is_owned, sweep_stale

from test_infer import disc_png

MICRO_MODEL = ["model.encoder.image_size=32", "model.encoder.patch_size=8", "model.encoder.dim=48",
               "model.encoder.depth=1", "model.encoder.heads=2", "model.transformer.token_dim=48",
               "model.transformer.heads=2", "model.transformer.depth=1", "model.transformer.plane_tokens=4",
               "model.transformer.camera_embed_dim=48", "model.upsampler.channels=8", "model.decoder.hidden=32",
               "model.decoder.hidden_layers=1"]


def _files(folder: Path):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    return err[0]


# ------------------------------------------------------------------------------------------ infer.py
def test_infer_never_replaces_a_folder_it_did_not_write(tmp_path, capsys):
    img = disc_png(tmp_path / "duck.png")
    out = tmp_path / "out"
    (out / "duck").mkdir(parents=True)
    (out / "duck" / "a.txt").write_text("keep")
    base = [str(img), "--out", str(out), "--checkpoint", str(DEFAULT_CHECKPOINT), "--mc-resolution", "17"]
    assert infer.main(base) == 2
    assert "--overwrite" in _one_error_line(capsys)
    assert _files(out / "duck") == ["a.txt"] and (out / "duck" / "a.txt").read_text() == "keep"

    old = os.umask(0o027)
    try:
        assert infer.main(base + ["--overwrite"]) == 0  # asked for: replaced
    finally:
        os.umask(old)
    capsys.readouterr()
    written = _files(out / "duck")
    assert "a.txt" not in written and "mesh.glb" in written and OWNER_MARKER in written
    assert (out / "duck").stat().st_mode & 0o777 == 0o750  # the umask, not mkdtemp's 0700
    assert all((out / "duck" / f).stat().st_mode & 0o777 == 0o640 for f in written)

    assert infer.main(base) == 0  # our own folder: replaced without asking
    capsys.readouterr()
    (out / "duck" / "notes.txt").write_text("mine")  # the user added a file: no longer only ours
    assert infer.main(base) == 2
    _one_error_line(capsys)
    assert (out / "duck" / "notes.txt").read_text() == "mine"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp folders left behind


def test_inputs_with_the_same_stem_are_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = disc_png(tmp_path / "a" / "x.png"), disc_png(tmp_path / "b" / "x.png")
    out = tmp_path / "out"
    assert infer.main([str(a), str(b), "--out", str(out), "--checkpoint", str(tmp_path / "not-loaded")]) == 2
    assert "both write" in _one_error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("value", ["0", "1", "-1", "100000", "nan"])
def test_bad_mesh_resolution_is_refused_up_front(tmp_path, capsys, value):
    img = disc_png(tmp_path / "d.png")
    arg = "--mc-threshold" if value == "nan" else "--mc-resolution"
    rc = infer.main([str(img), "--out", str(tmp_path / "o"), "--checkpoint", str(tmp_path / "not-loaded"),
                     arg, value])
    assert rc == 2 and arg in _one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_config_values_are_range_checked(tmp_path):
    from lrm.pipeline import Pipeline
    from lrm.preprocess import InputError

    cfg = load_config("tiny", MICRO_MODEL)
    model = build_model(cfg)
    for bad in (1e9, 0, "1e9", 4.5):
        cfg.infer = {"mc_resolution": bad}
        with pytest.raises(InputError, match="infer.mc_resolution"):
            Pipeline(model, cfg)
    with pytest.raises(ConfigError, match="model.transformer.depth"):
        load_config("tiny", ["model.transformer.depth=1000000"])
    with pytest.raises(ConfigError, match="model.decoder.hidden"):
        load_config("tiny", ["model.decoder.hidden=0"])


def test_binary_config_is_one_clear_line(tmp_path, capsys):
    from lrm.training import trainer

    blob = tmp_path / "weights.yaml"
    blob.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ConfigError, match="not a readable text config"):
        load_config(blob)
    assert trainer.main(["--config", str(blob), "--output-dir", str(tmp_path / "run")]) == 2
    assert "weights.yaml" in _one_error_line(capsys)


# ------------------------------------------------------------------------------------------ sweeping
def test_only_our_stale_temp_folders_are_swept(tmp_path):
    old = time.time() - 7200
    dead_pid = 2 ** 22 + 12345  # above pid_max: no such process

    def folder(name, mtime=old):
        p = tmp_path / name
        p.mkdir()
        (p / "mesh.glb").write_text("x")
        for q in (p / "mesh.glb", p):
            os.utime(q, (mtime, mtime))
        return p

    stale = folder(f".duck.tmp-{dead_pid}-abc123")
    stale_old = folder(f".model.old-{dead_pid}-0a1b2c3d")
    fresh = folder(f".duck.tmp-{dead_pid}-def456", mtime=time.time())  # may still be written
    alive = folder(f".duck.tmp-{os.getpid()}-ghi789")  # its writer runs
    users = folder(".duck.tmp-backup")  # not our pattern
    plain = folder("duck")
    assert sorted(sweep_stale(tmp_path)) == sorted([stale, stale_old])
    assert not stale.exists() and not stale_old.exists()
    assert all(p.exists() for p in (fresh, alive, users, plain))


# ------------------------------------------------------------------------------------------ checkpoints
def test_checkpoint_save_refuses_a_foreign_folder(tmp_path):
    cfg = load_config("tiny", MICRO_MODEL)
    model = build_model(cfg)
    target = tmp_path / "docs"
    target.mkdir()
    (target / "notes.md").write_text("keep")
    with pytest.raises(OutputExistsError):
        save_checkpoint(model, cfg, target)
    assert _files(target) == ["notes.md"]
    save_checkpoint(model, cfg, target, overwrite=True)
    assert is_owned(target) and not (target / "notes.md").exists()
    save_checkpoint(model, cfg, target)  # ours now: replaced
    legacy = tmp_path / "legacy"  # a checkpoint written before folders had a marker
    legacy.mkdir()
    for name in ("model.safetensors", "config.yaml"):
        (legacy / name).write_bytes((target / name).read_bytes())
    save_checkpoint(model, cfg, legacy)
    assert is_owned(legacy)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _ckpt_with(tmp_path, name, change):
    cfg = load_config("tiny", MICRO_MODEL)
    model = build_model(cfg)
    sd = {k: change(k, v) for k, v in model.state_dict().items()}
    from lrm.checkpoint import save_state_dict

    return save_state_dict(sd, cfg, tmp_path / name)


def test_weights_are_validated_at_load(tmp_path):
    first = None

    def nan_one(k, v):
        nonlocal first
        if first is None and v.is_floating_point():
            first = k
            v = v.clone()
            v.view(-1)[0] = float("nan")
        return v

    with pytest.raises(CheckpointError, match="non-finite"):
        load_checkpoint(_ckpt_with(tmp_path, "nan", nan_one))
    with pytest.raises(CheckpointError, match="non-float"):
        load_checkpoint(_ckpt_with(tmp_path, "int", lambda k, v: v.to(torch.int32) if v.is_floating_point() else v))
    half = _ckpt_with(tmp_path, "half", lambda k, v: v.half() if v.is_floating_point() else v)
    model, _ = load_checkpoint(half)  # upcast to the model's fp32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    weights = half / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(half)


def test_training_size_keys_are_range_checked():
    from lrm.training.trainer import build_config

    for bad in ("train.batch_size=0", "train.batch_size=1e9", "data.image_size=100000", "train.max_steps=-1"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            build_config("tiny", [bad])
    build_config("tiny", ["train.batch_size=2"])


def test_ownership_rules(tmp_path):
    from lrm.outdir import check_target

    empty = tmp_path / "empty"
    empty.mkdir()
    assert is_owned(empty)  # nothing in it to lose
    real = tmp_path / "real"
    real.mkdir()
    (real / "mesh.glb").write_text("user's")
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    afile = tmp_path / "afile"
    afile.write_text("x")
    for p in (real, link, afile):
        assert not is_owned(p)
        with pytest.raises(OutputExistsError):
            check_target(p)
    assert is_owned(real, legacy_names={"mesh.glb"})  # e.g. a checkpoint folder written before the marker
    (real / OWNER_MARKER).write_text('{"files": ["other.txt"]}')
    assert not is_owned(real)  # the marker does not list mesh.glb
    (real / OWNER_MARKER).write_text("not json")
    assert not is_owned(real)
