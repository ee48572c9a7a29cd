"""Model checkpoints: a folder with ``model.safetensors`` + ``config.yaml`` (what infer.py loads).

Writes are atomic (a temporary sibling folder renamed into place), loads never unpickle anything, and a
checkpoint whose weights don't fit its config is refused with one clear message.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Tuple

import torch
from omegaconf import DictConfig, OmegaConf

from .config import load_config

#: The checkpoint shipped in the repository (trained with train.py; see checkpoints/default/README.md).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "default"


class CheckpointError(RuntimeError):
    """A checkpoint folder that is missing, incomplete or does not match its config."""


def save_checkpoint(model: torch.nn.Module, cfg: DictConfig, folder: str | os.PathLike, extra: Optional[dict] = None) -> Path:
    """Write ``model.safetensors`` + ``config.yaml`` (+ optional small text files) atomically into ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "lrm"})
        (tmp / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        for name, text in (extra or {}).items():
            (tmp / name).write_text(text)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def read_checkpoint(folder: str | os.PathLike, overrides=()) -> Tuple[DictConfig, dict]:
    """Config and state dict of a checkpoint folder (no model built)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    weights, cfg_path = folder / "model.safetensors", folder / "config.yaml"
    for p in (weights, cfg_path):
        if not p.is_file():
            raise CheckpointError(f"checkpoint {folder} is incomplete: {p.name} missing")
    try:
        cfg = load_config(cfg_path, overrides)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"checkpoint config {cfg_path} is invalid: {e}") from None
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint weights {weights} are unreadable: {e}") from None
    return cfg, state


def load_checkpoint(folder: str | os.PathLike | None = None, device: str | torch.device = "cpu", overrides=()):
    """Build the model a checkpoint folder describes and load its weights. Returns ``(model, cfg)``."""
    from .models import build_model

    folder = Path(folder) if folder is not None else DEFAULT_CHECKPOINT
    cfg, state = read_checkpoint(folder, overrides)
    cfg.model.encoder.pretrained_path = None  # the checkpoint holds the encoder weights
    model = build_model(cfg)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in own
           if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or bad:
        raise CheckpointError(
            f"checkpoint {folder} does not match its config: {len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(bad)} mis-shaped keys (e.g. {(missing + unexpected + bad)[:3]})")
    model.load_state_dict(state)
    return model.to(device).eval(), cfg
