"""Exported model folders: ``model.safetensors`` + ``config.yaml`` (what infer.py loads).

Written atomically: everything goes to a temporary sibling folder that is renamed into place, so a reader
never sees a half-written export.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Dict, Optional

import torch
from omegaconf import DictConfig, OmegaConf

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"


def is_export_dir(path) -> bool:
    p = Path(path)
    return (p / MODEL_FILE).is_file() and (p / CONFIG_FILE).is_file()


def export_state_dict(state_dict: Dict[str, torch.Tensor], cfg: DictConfig, folder) -> Path:
    """Write a state dict + config as an export folder, atomically (temp dir + os.replace)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state_dict.items()}
        save_file(tensors, str(tmp / MODEL_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg, resolve=True))
        old = None
        if folder.exists():  # os.replace cannot replace a non-empty dir: move the old one aside first
            old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def export_model(model: torch.nn.Module, cfg: DictConfig, folder) -> Path:
    return export_state_dict(model.state_dict(), cfg, folder)


def load_export(folder, device: Optional[str] = "cpu"):
    """(state_dict, cfg) of an export folder."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = OmegaConf.load(folder / CONFIG_FILE)
    return load_file(str(folder / MODEL_FILE), device=str(device or "cpu")), cfg


def load_exported_model(folder, device: str = "cpu"):
    """Build the LRM an export folder describes and load its weights (strict)."""
    from ..models import build_model

    sd, cfg = load_export(folder, device)
    model = build_model(cfg, device=device)
    model.load_state_dict(sd, strict=True)
    return model, cfg
