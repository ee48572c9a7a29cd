"""The trainer's entry points (``train.py`` is a thin wrapper around :func:`main`).

The loop lives in lrm/training/runner.py (:class:`~lrm.training.runner.Runner`: accelerator, run folder,
resume, optimiser, gradient accumulation, logging, checkpoints, export); what a kind of run trains is a
:class:`~lrm.training.task.Task` chosen by the config's ``task:`` (lrm/training/tasks.py; default ``lrm``,
lrm/training/lrm_task.py). The names below are re-exported for the scripts and tests that import them here.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Dict, Optional, Sequence

from omegaconf import DictConfig, open_dict

from ..checkpoint import CheckpointError
from ..config import ConfigError, load_config
from ..outdir import OutputExistsError
from .defaults import apply_defaults
from .lrm_task import LRMTask, TrainStep, fixed_val_batch, image_grid, sample_rays, step_losses, validate  # noqa: F401
from .runner import (EXPORT_NAMES, Runner, StopFlag, TrainState, check_world_size, cpu_seconds,  # noqa: F401
                     launcher_requested_processes, make_accelerator, resolve_resume, step_generator)
from .runner import step_generator as _step_generator  # noqa: F401 - older name (tests, benchmarks)
from .runner import to_device as _to_device  # noqa: F401

log = logging.getLogger("lrm.train")


def parse_args(argv: Optional[Sequence[str]] = None):
    p = argparse.ArgumentParser(description="Train the LRM, or the kind of run the config's `task:` names "
                                            "(see docs/training.md).")
    p.add_argument("--config", default="tiny", help="config file or name in configs/ (default: tiny)")
    p.add_argument("--output-dir", default=None, help="run folder (default: <train.output_root>/<run name>)")
    p.add_argument("--max-steps", type=int, default=None, help="optimiser steps (overrides train.max_steps)")
    p.add_argument("--resume", default=None,
                   help="'latest' (newest complete checkpoint of the run), a checkpoints/step_N folder, a run "
                        "folder, or an exported model folder (model.safetensors + config.yaml: weights only)")
    p.add_argument("--init-from", default=None,
                   help="exported model folder (model.safetensors + config.yaml) or run folder: start from its "
                        "weights with a fresh optimiser, schedule and step count (train.init_from)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. data.path=/shards train.lr=1e-4")
    return p.parse_args(argv)


def build_config(config: Optional[str], overrides: Sequence[str] = (), max_steps: Optional[int] = None) -> DictConfig:
    cfg = apply_defaults(load_config(config, overrides))
    if max_steps is not None:
        cfg.train.max_steps = int(max_steps)
    return cfg


def train(cfg: DictConfig, output_dir: Optional[str] = None, resume: Optional[str] = None) -> Dict:
    """Train the task ``cfg.task`` names; returns ``{"model": bare model, "step", "run_dir", "interrupted",
    "history", "state", "accelerator"}``."""
    return Runner(cfg, output_dir=output_dir, resume=resume).run()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = build_config(args.config, args.overrides, args.max_steps)
        if args.init_from:
            with open_dict(cfg):
                cfg.train.init_from = args.init_from
        res = train(cfg, output_dir=args.output_dir, resume=args.resume)
    except (ConfigError, CheckpointError, OutputExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0 if res is not None else 1
