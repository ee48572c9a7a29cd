"""Exporting a kept training checkpoint as a model folder (lrm/training/export.py)."""
import pytest
import torch

from _train_utils import MICRO
from lrm.checkpoint import load_checkpoint
from lrm.training.export import main as export_main
from lrm.training.trainer import build_config, train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("export") / "run"
    train(build_config("tiny", MICRO + ["train.ckpt_every=1", "train.keep_last=3"], max_steps=3), output_dir=str(out))
    return out


def test_the_last_checkpoint_exports_the_same_model_as_the_run(run, tmp_path):
    assert export_main([str(run / "checkpoints" / "step_3"), "--out", str(tmp_path / "m3")]) == 0
    exported, cfg = load_checkpoint(tmp_path / "m3")
    final, _ = load_checkpoint(run / "model")
    assert cfg.train.max_steps == 3
    a, b = exported.state_dict(), final.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # an earlier step is another model (training moved the weights)
    assert export_main([str(run / "checkpoints" / "step_1"), "--out", str(tmp_path / "m1")]) == 0
    m1 = load_checkpoint(tmp_path / "m1")[0].state_dict()
    assert any(not torch.equal(m1[k], a[k]) for k in a)


def test_bad_inputs_give_one_line_and_touch_nothing(run, tmp_path, capsys):
    half = run / "checkpoints" / "step_9"  # no COMPLETE marker: half-written
    half.mkdir()
    try:
        assert export_main([str(half), "--out", str(tmp_path / "x")]) == 2
        assert "not a complete training checkpoint" in capsys.readouterr().err
        assert not (tmp_path / "x").exists()
    finally:
        half.rmdir()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert export_main([str(run / "checkpoints" / "step_2"), "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not replacing" in err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"


def test_a_checkpoint_copied_out_of_its_run_needs_the_run_config(run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "kept" / "step_2"
    shutil.copytree(run / "checkpoints" / "step_2", copy)
    assert export_main([str(copy), "--out", str(tmp_path / "a")]) == 2
    assert "--run-config" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert export_main([str(copy), "--out", str(tmp_path / "a"), "--run-config", str(run / "config.yaml")]) == 0
    direct = tmp_path / "b"
    assert export_main([str(run / "checkpoints" / "step_2"), "--out", str(direct)]) == 0
    a, b = load_checkpoint(tmp_path / "a")[0].state_dict(), load_checkpoint(direct)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
