"""What one kind of training run is: the contract between the runner and a model family.

The runner (lrm/training/runner.py) owns everything every run shares: the accelerator, the run folder, resume /
warm start, the optimiser loop with gradient accumulation and non-finite guards, logging, the CPU budget,
signals, atomic checkpoints and the exported ``model/`` folder. A ``Task`` owns what differs between kinds of run:
which model to build, which batches to read, how a batch becomes loss terms, and what validation measures.

``train.py --config X`` picks the task from the config's top-level ``task:`` key (default ``lrm``); the names are
in ``TASKS`` (lrm/training/tasks.py). A new kind of run (the diffusion prior, a multi-view model) is a new
``Task`` subclass, not a new training loop.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import torch
from omegaconf import DictConfig


class Task:
    """One kind of training run. Subclasses override the build steps and ``step_losses``."""

    name = "task"

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    # ---- config
    def apply_defaults(self, cfg: DictConfig) -> DictConfig:
        """Fill and check this task's config keys (``data.*``, ``model.*``, ``train.*``); returns the config.
        The runner's own ``train.*`` keys (lrm/training/defaults.py, ``RunnerTrainConfig``) are filled
        afterwards where the task left them unset."""
        return cfg

    def resolve_config(self, cfg: DictConfig) -> None:
        """Decisions made once per run, in place, before the runner saves ``run_dir/config.yaml`` (e.g. which
        data source ``data.source=auto`` picked). Default: none."""

    # ---- build steps
    def build_model(self) -> torch.nn.Module:
        """The bare model (what ``model/model.safetensors`` holds); ``--init-from`` loads into it."""
        raise NotImplementedError

    def load_init_weights(self, model: torch.nn.Module, state_dict: Dict[str, torch.Tensor], source: Path) -> None:
        """``--init-from`` / ``--resume MODEL_DIR``: load exported weights into the bare model (default: strict)."""
        model.load_state_dict(state_dict, strict=True)

    def wrap_for_training(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module handed to ``accelerator.prepare`` (default: the model itself). Its ``state_dict`` keys,
        minus ``export_prefix``, are the model's."""
        return model

    export_prefix = ""

    def model_state_dict(self, training_state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The bare model's weights in the prepared module's state dict (a checkpoint's ``model.safetensors``):
        the keys under ``export_prefix``, with the prefix removed."""
        p = self.export_prefix
        return {k[len(p):]: v for k, v in training_state.items() if k.startswith(p)}

    def build_source(self, split: str, rank: int, world: int, position: int = 0):
        """A batch source with ``get(position) -> dict`` (and optionally ``start(position)``): deterministic in the
        position so resume is exact. Corrupt samples raise; the runner skips and counts them."""
        raise NotImplementedError

    def check_batch(self, batch: Dict) -> Optional[str]:
        """A reason the batch is unusable, or None."""
        return None

    def build_loss(self, device: torch.device) -> None:
        """Load whatever the losses need (e.g. a perceptual network) onto ``device``."""

    # ---- per step
    def step_losses(self, module: torch.nn.Module, batch: Dict, generator: torch.Generator) -> Dict[str, torch.Tensor]:
        """Loss terms of one micro-batch; ``"total"`` is the one back-propagated. ``module`` is the prepared
        (possibly wrapped) ``wrap_for_training`` module."""
        raise NotImplementedError

    # ---- validation (all ranks call it; only the main rank logs)
    def validation_batch(self, device: torch.device) -> Optional[Dict]:
        """A fixed batch validated every ``train.val_every`` steps, or None for no validation."""
        return None

    def validate(self, model: torch.nn.Module, batch: Dict) -> Dict[str, float]:
        """Scalar metrics (logged as ``val/<name>``) of the bare model on the validation batch."""
        return {}

    image_tag = "val/images"

    def validation_image(self, model: torch.nn.Module, batch: Dict) -> Optional[torch.Tensor]:
        """A [3, H, W] image in [0, 1] for tensorboard (logged under ``image_tag``), or None. Called right
        after ``validate`` on the same batch (it may reuse what ``validate`` rendered)."""
        return None

    # ---- export
    def export(self, state_dict: Dict[str, torch.Tensor], out_dir: Path) -> None:
        """Write the exported model folder (``model.safetensors`` + ``config.yaml``) atomically."""
        raise NotImplementedError
