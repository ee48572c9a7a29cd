"""DeepSpeed configs derived from the project config, so batch arithmetic is written down once.

``train_batch_size = train_micro_batch_size_per_gpu * gradient_accumulation_steps * world_size`` with
micro batch = ``train.batch_size`` and accumulation = ``train.grad_accum``. The optimiser and LR schedule
stay the trainer's own (AdamW param groups + warm-up cosine), passed to DeepSpeed as client objects, so
the config has no ``optimizer``/``scheduler`` sections.

CLI: ``python -m lrm.training.deepspeed_config --config base --world-size 8 --zero 2 > ds_zero2.json``
writes a file for ``deepspeed_config_file`` in an accelerate config (configs/accelerate/).
"""
from __future__ import annotations

import argparse
import json
from typing import Dict, Optional


def make_deepspeed_config(cfg, world_size: int, zero_stage: Optional[int] = None,
                          precision: Optional[str] = None) -> Dict:
    t = cfg.train
    micro, accum = int(t.batch_size), int(t.grad_accum)
    stage = int(t.deepspeed.zero_stage if zero_stage is None else zero_stage)
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0..3, got {stage}")
    prec = precision or ("bf16" if str(t.mixed_precision) in ("auto", "bf16") else str(t.mixed_precision))
    zero: Dict = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True,
                  "reduce_bucket_size": 5e7, "allgather_bucket_size": 5e7}
    if stage >= 2 and t.deepspeed.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if stage == 3:
        zero.update({"stage3_gather_16bit_weights_on_model_save": True, "stage3_prefetch_bucket_size": 5e7,
                     "stage3_param_persistence_threshold": 1e5})
        if t.deepspeed.offload_param:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    ds = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "train_batch_size": micro * accum * int(world_size),
        "gradient_clipping": float(t.grad_clip) if float(t.grad_clip) > 0 else 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": prec == "bf16"},
        "fp16": {"enabled": prec == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    check_batch_arithmetic(ds, world_size)
    return ds


def check_batch_arithmetic(ds: Dict, world_size: int) -> None:
    micro, accum, total = (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"],
                           ds["train_batch_size"])
    if micro * accum * world_size != total:
        raise ValueError(f"DeepSpeed batch arithmetic: {micro} x {accum} x {world_size} != {total}")


def fill_auto(ds: Dict, cfg, world_size: int) -> Dict:
    """Replace "auto" (and missing) batch/clipping entries of an accelerate DeepSpeed config in place with the
    trainer's values; an explicit value that contradicts the trainer config is an error."""
    mine = make_deepspeed_config(cfg, world_size)
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        have = ds.get(key, "auto")
        if have == "auto":
            ds[key] = mine[key]
        elif key != "gradient_clipping" and int(have) != mine[key]:
            raise ValueError(f"DeepSpeed config sets {key}={have} but the trainer config implies {mine[key]} "
                             "(train.batch_size / train.grad_accum); set it to \"auto\" or make them agree")
    if ds.get("train_batch_size", "auto") == "auto":
        ds["train_batch_size"] = mine["train_batch_size"]
    check_batch_arithmetic(ds, world_size)
    return ds


def main(argv=None):
    from .trainer import build_config

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny")
    p.add_argument("--world-size", type=int, default=1)
    p.add_argument("--zero", type=int, default=None)
    p.add_argument("--precision", default=None, choices=["bf16", "fp16", "no"])
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    cfg = build_config(a.config, a.overrides)
    print(json.dumps(make_deepspeed_config(cfg, a.world_size, a.zero, a.precision), indent=2))


if __name__ == "__main__":
    main()
