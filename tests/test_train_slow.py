"""Slow trainer tests (``pytest -m slow tests/test_train_slow.py``): overfitting one object, DeepSpeed ZeRO."""
import json
import socket
import subprocess

import pytest
import torch

from _train_utils import MICRO, PY, ROOT, subprocess_env

from lrm.training.trainer import build_config, train


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2])
def test_deepspeed_zero_engine_steps_on_cpu(tmp_path, stage):
    pytest.importorskip("deepspeed")
    cmd = [PY, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(ROOT / "tests" / "_train_zero2.py"), str(tmp_path), str(stage), *MICRO,
           "train.grad_accum=2", "train.batch_size=1"]
    r = subprocess.run(cmd, env=subprocess_env(), cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads((tmp_path / f"zero{stage}.json").read_text())
    assert res["world"] == 2 and res["micro"] == 1 and res["accum"] == 2 and res["train_batch_size"] == 4
    assert res["global_steps"] == 4  # 8 micro-steps / accumulation 2
    assert all(l == l for l in res["losses"])  # finite (not NaN)
    assert res["changed"] == res["total"] and res["ranks_agree"]
