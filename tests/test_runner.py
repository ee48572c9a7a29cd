"""The runner with a second kind of run: a toy linear-regression Task registered under a new name trains through
train.py's main() (the same Runner as the LRM), checkpoints, resumes bit for bit, warm-starts and exports."""
import json
from pathlib import Path

import pytest
import torch
import yaml

from _train_utils import load_weights

from lrm.checkpoint import save_state_dict
from lrm.training import checkpoint as ckpt
from lrm.training import tasks
from lrm.training.defaults import merge_section
from lrm.training.task import Task
from lrm.training.trainer import build_config, main, train

W_TRUE = torch.tensor([[1.5, -2.0, 0.5, 3.0]])
B_TRUE = torch.tensor([0.25])


class LinearSource:
    """Batches indexed by position (exact resume); every ``corrupt_every``-th one raises."""

    def __init__(self, cfg, split, rank, world):
        self.cfg, self.split, self.rank, self.world = cfg, split, rank, world

    def get(self, position):
        d = self.cfg.data
        if d.corrupt_every and (position + 1) % d.corrupt_every == 0:
            raise OSError(f"corrupt sample at {position}")
        g = torch.Generator().manual_seed(int(self.cfg.seed) * 7919 + (position * self.world + self.rank)
                                          + (10 ** 6 if self.split == "val" else 0))
        x = torch.randn(int(self.cfg.train.batch_size), int(self.cfg.model.features), generator=g)
        return {"x": x, "y": x @ W_TRUE.T + B_TRUE}


class LinearTask(Task):
    name = "linreg"
    image_tag = "val/residuals"

    def apply_defaults(self, cfg):
        cfg = cfg.copy()
        merge_section(cfg, "data", {"corrupt_every": 0})
        merge_section(cfg, "model", {"features": 4})
        return cfg

    def build_model(self):
        return torch.nn.Linear(int(self.cfg.model.features), 1)

    def build_source(self, split, rank, world, position=0):
        return LinearSource(self.cfg, split, rank, world)

    def check_batch(self, batch):
        return None if torch.isfinite(batch["x"]).all() else "non-finite input"

    def step_losses(self, module, batch, generator):
        mse = torch.nn.functional.mse_loss(module(batch["x"]), batch["y"])
        return {"mse": mse, "total": mse}

    def validation_batch(self, device):
        return {k: v.to(device) for k, v in LinearSource(self.cfg, "val", 0, 1).get(0).items()}

    @torch.no_grad()
    def validate(self, model, batch):
        return {"mse": float(torch.nn.functional.mse_loss(model(batch["x"]), batch["y"]))}

    @torch.no_grad()
    def validation_image(self, model, batch):
        r = (model(batch["x"]) - batch["y"]).abs().clamp(0, 1)
        return r.T.expand(3, -1).reshape(3, 1, -1)

    def export(self, state_dict, out_dir):
        save_state_dict(state_dict, self.cfg, out_dir)


@pytest.fixture
def linreg(tmp_path):
    tasks.register_task("linreg", LinearTask)
    cfg = {"name": "linreg", "task": "linreg", "model": {"features": 4},
           "data": {"corrupt_every": 5},
           "train": {"batch_size": 8, "grad_accum": 2, "lr": 0.05, "warmup_steps": 1, "weight_decay": 0.0,
                     "val_every": 2, "image_every": 3, "log_every": 1, "progress": False, "keep_last": 5}}
    path = tmp_path / "linreg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    yield str(path)
    tasks.TASKS.pop("linreg", None)


def _state(run, step):
    return json.loads((Path(run) / "checkpoints" / f"step_{step}" / ckpt.STATE_NAME).read_text())


def test_toy_task_trains_checkpoints_resumes_and_exports(linreg, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["--config", linreg, "--output-dir", str(a), "--max-steps", "8", "train.ckpt_every=4"]) == 0
    assert [p.name for p in ckpt.complete_checkpoints(a / "checkpoints")] == ["step_4", "step_8"]
    st = _state(a, 8)
    # 8 steps x 2 micro-batches = 16 good batches; positions 4, 9, 14 were corrupt and skipped
    assert (st["step"], st["position"], st["bad_batches"], st["samples"]) == (8, 19, 3, 8 * 2 * 8)
    saved = yaml.safe_load((a / "config.yaml").read_text())
    assert saved["task"] == "linreg" and saved["model"] == {"features": 4}
    assert saved["train"]["ckpt_every"] == 4 and saved["train"]["max_nonfinite"] == 20  # runner defaults filled
    w = load_weights(a / "model")
    assert set(w) == {"weight", "bias"} and torch.equal(w["weight"], load_weights(a / "checkpoints" / "step_8")
                                                         ["weight"])

    # b: resumed from a's step_4 through main(): the same weights, counters and optimiser state as straight
    assert main(["--config", linreg, "--output-dir", str(b), "--max-steps", "8", "train.ckpt_every=4",
                 "--resume", str(a / "checkpoints" / "step_4")]) == 0
    assert [p.name for p in ckpt.complete_checkpoints(b / "checkpoints")] == ["step_8"]
    wb = load_weights(b / "model")
    assert all(torch.equal(w[k], wb[k]) for k in w)
    assert {k: v for k, v in _state(b, 8).items() if k != "cpu_s"} == {k: v for k, v in st.items() if k != "cpu_s"}


def test_toy_task_learns_logs_and_warm_starts(linreg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = build_config(linreg, ["train.ckpt_every=0", "data.corrupt_every=0", "train.lr=0.3"], max_steps=30)
    res = train(cfg, output_dir=str(tmp_path / "fit"))
    assert isinstance(res["model"], torch.nn.Linear) and res["step"] == 30
    first, last = res["history"][0], res["history"][-1]
    assert last["val_mse"] < 0.1 * res["history"][1]["val_mse"] and last["loss"] < first["loss"]
    ea = EventAccumulator(str(tmp_path / "fit" / "tb"), size_guidance={"images": 0})  # keep every image
    ea.Reload()
    assert {"loss/mse", "loss/total", "train/lr", "train/grad_norm", "val/mse"} <= set(ea.Tags()["scalars"])
    assert [e.step for e in ea.Images("val/residuals")] == list(range(3, 31, 3))
    # --init-from the export with lr 0: the weights stay the export's (strict load into task.build_model())
    assert main(["--config", linreg, "--output-dir", str(tmp_path / "ft"), "--max-steps", "1", "train.lr=0",
                 "--init-from", str(tmp_path / "fit")]) == 0
    w0, w1 = load_weights(tmp_path / "fit" / "model"), load_weights(tmp_path / "ft" / "model")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)


def test_task_selection_errors(linreg, tmp_path, capsys):
    from lrm.config import ConfigError, load_config

    with pytest.raises(ValueError, match="'data'"):
        build_config(linreg, ["data.corupt_every=1"])  # the task's own sections reject typos
    with pytest.raises(ValueError, match="'model'"):
        build_config(linreg, ["model.layers=3"])
    assert load_config(linreg, ["model.anything=1"]).model.anything == 1  # not the LRM model schema
    with pytest.raises(ConfigError, match="model.features: Key 'features' not in 'ModelConfig'"):
        load_config(linreg, ["task=lrm"])  # task=lrm: the LRM model schema again
    assert main(["--config", linreg, "--output-dir", str(tmp_path / "x"), "task=nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: unknown task 'nope'") and "linreg" in err and "lrm" in err
    tasks.register_task("lazy", "lrm.training.no_such_module:Task")
    try:
        with pytest.raises(ConfigError, match="task 'lazy': cannot load lrm.training.no_such_module:Task"):
            tasks.make_task(load_config(linreg, ["task=lazy"]))
    finally:
        tasks.TASKS.pop("lazy")
    tasks.register_task("lazy", "lrm.training.task:Task")  # a path is resolved (and cached) on first use
    try:
        assert tasks.task_class("lazy") is Task and tasks.TASKS["lazy"] is Task
    finally:
        tasks.TASKS.pop("lazy")
    with pytest.raises(TypeError):
        tasks.register_task("bad", dict)
