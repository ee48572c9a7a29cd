"""Run under torchrun (2 processes, gloo, CPU): plain deepspeed.initialize with ZeRO-2 (or 3) on the LRM
with the trainer's optimiser, schedule, DeepSpeed config and loss; a few engine steps. tests/test_train_slow.py"""
import json
import sys
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

from lrm.models import build_model
from lrm.training.data import make_source
from lrm.training.deepspeed_config import make_deepspeed_config
from lrm.training.optim import make_optimizer, make_scheduler
from lrm.training.trainer import TrainStep, _step_generator, build_config, step_losses

out, stage = Path(sys.argv[1]), int(sys.argv[2])
cfg = build_config("tiny", sys.argv[3:], max_steps=4)
deepspeed.init_distributed(dist_backend="gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
model = build_model(cfg)
init = {k: v.clone() for k, v in model.state_dict().items()}
opt = make_optimizer(model, cfg.train)
sched = make_scheduler(opt, cfg.train)
ds_cfg = make_deepspeed_config(cfg, world, zero_stage=stage, precision="no")
engine, _, _, _ = deepspeed.initialize(model=TrainStep(model), optimizer=opt, lr_scheduler=sched, config=ds_cfg)
src = make_source(cfg, "train", rank, world)
losses, pos = [], 0
for step in range(int(cfg.train.max_steps)):
    for micro in range(int(cfg.train.grad_accum)):
        terms = step_losses(engine, src.get(pos), cfg.train, _step_generator(0, step, micro, rank, "cpu"))
        pos += 1
        engine.backward(terms["total"])
        engine.step()
    losses.append(float(terms["total"]))
if stage == 3:
    params = list(model.parameters())
    with deepspeed.zero.GatheredParameters(params):
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
else:
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
changed = sum(not torch.equal(sd[k], init[k]) for k in init)
flat = torch.cat([v.flatten().double() for v in sd.values()])
gathered = [torch.zeros_like(flat) for _ in range(world)]
dist.all_gather(gathered, flat)
if rank == 0:
    (out / f"zero{stage}.json").write_text(json.dumps({
        "world": world, "train_batch_size": engine.train_batch_size(),
        "micro": engine.train_micro_batch_size_per_gpu(), "accum": engine.gradient_accumulation_steps(),
        "global_steps": engine.global_steps, "losses": losses, "changed": changed, "total": len(init),
        "ranks_agree": all(torch.equal(gathered[0], g) for g in gathered[1:]),
        "lr": sched.get_last_lr()[0],
    }))
