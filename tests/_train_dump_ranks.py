"""Run under torchrun: train 3 steps, then each rank dumps its weights (tests/test_train.py)."""
import sys
from pathlib import Path

import torch

from lrm.training.trainer import build_config, train

out = Path(sys.argv[1])
cfg = build_config("tiny", sys.argv[2:], max_steps=3)
res = train(cfg, output_dir=str(out))
acc = res["accelerator"]
from lrm.training.data import make_source

uids = make_source(cfg, "train", acc.process_index, acc.num_processes).get(0)["uid"]
torch.save({"weights": res["model"].state_dict(), "num_processes": acc.num_processes,
            "samples": res["state"]["samples"], "uids": uids}, out / f"rank{acc.process_index}.pt")
