"""Checkpoint folders: ``model.safetensors`` (the LRM ``state_dict``) + ``config.yaml`` (the full config tree).

This is the one on-disk format that training writes, inference / evaluation read, and importers (e.g.
``lrm.convert.triposr``) produce. ``save_checkpoint`` is atomic: everything is written to a temporary sibling
folder which is then renamed into place, so a crash never leaves a half-written checkpoint behind.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from .config import load_config, save_config

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.yaml"


def save_state_dict(state: Dict[str, torch.Tensor], path: str | os.PathLike, metadata: Optional[Dict[str, str]] = None):
    """Write a state dict as safetensors (tensors made contiguous, CPU)."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    save_file(state, str(path), metadata=metadata)


def write_checkpoint_folder(state: Dict[str, torch.Tensor], cfg: DictConfig, folder: str | os.PathLike,
                            metadata: Optional[Dict[str, str]] = None, extra_files: Optional[Dict[str, str]] = None) -> Path:
    """Atomically write ``state`` + ``cfg`` (+ small text files) as a checkpoint folder."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        save_state_dict(state, tmp / WEIGHTS_NAME, metadata)
        save_config(cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg), tmp / CONFIG_NAME)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        old = None
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{os.getpid()}"
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def save_checkpoint(model: torch.nn.Module, cfg: DictConfig, folder: str | os.PathLike,
                    metadata: Optional[Dict[str, str]] = None) -> Path:
    """Save ``model`` (its ``state_dict``) and ``cfg`` to ``folder`` atomically."""
    return write_checkpoint_folder(model.state_dict(), cfg, folder, metadata)


def load_checkpoint_config(folder: str | os.PathLike, overrides=()) -> DictConfig:
    return load_config(Path(folder) / CONFIG_NAME, overrides)


def load_checkpoint(folder: str | os.PathLike, device: str | torch.device = "cpu", overrides=(),
                    dtype: Optional[torch.dtype] = None):
    """Build the LRM described by ``folder/config.yaml`` and load ``folder/model.safetensors`` (strict).

    The model is built on the meta device (no random init of hundreds of millions of weights) and the
    stored tensors are assigned directly. ``overrides`` are dotted config overrides (e.g. render settings).
    The encoder's ``pretrained_path`` is never read: the checkpoint already holds the encoder weights.
    """
    from safetensors.torch import load_file

    from .models.lrm import LRM

    folder = Path(folder)
    wpath = folder / WEIGHTS_NAME
    if not wpath.is_file() or not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{folder} is not a checkpoint folder (needs {WEIGHTS_NAME} and {CONFIG_NAME})")
    cfg = load_checkpoint_config(folder, overrides)
    state = load_file(str(wpath), device=str(device))
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    with torch.device("meta"):
        model = LRM(cfg, load_pretrained_encoder=False)
    model.load_state_dict(state, strict=True, assign=True)
    _rebuild_nonpersistent_buffers(model, device, dtype)
    meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if meta:
        raise RuntimeError(f"tensors left uninitialised after loading {folder}: {meta[:5]}")
    return model


def _rebuild_nonpersistent_buffers(model, device, dtype):
    """Buffers that are not saved (``persistent=False``) are derived from the config: recreate them."""
    enc = model.encoder
    ecfg = enc.cfg
    dt = dtype or torch.float32
    # Made in float32 then cast, exactly as ``build_model(cfg).to(dtype)`` would give them.
    for name, values in (("mean", ecfg.normalize_mean), ("std", ecfg.normalize_std)):
        t = torch.tensor(list(values), dtype=torch.float32).view(1, 3, 1, 1).to(device=device, dtype=dt)
        enc.register_buffer(name, t, persistent=False)
