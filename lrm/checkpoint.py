"""Model checkpoints: a folder with ``model.safetensors`` (the LRM ``state_dict``) + ``config.yaml`` (the full
config tree). Training writes them, inference / evaluation read them, importers (``lrm.convert.triposr``)
produce them.

Writes are atomic (everything goes to a temporary sibling folder that is then renamed into place), loads never
unpickle anything, and a checkpoint whose weights don't fit its config is refused with one clear message.
The interface (``save_checkpoint(model, cfg, folder, extra)``, ``load_checkpoint(folder, device, overrides)
-> (model, cfg)``, ``CheckpointError``) is the one infer.py uses.
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

#: The checkpoint shipped in the repository.
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "default"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.yaml"


class CheckpointError(RuntimeError):
    """A checkpoint folder that is missing, incomplete or does not match its config."""


def is_checkpoint_dir(path) -> bool:
    p = Path(path)
    return (p / WEIGHTS_NAME).is_file() and (p / CONFIG_NAME).is_file()


def save_checkpoint(model: torch.nn.Module, cfg: DictConfig, folder: str | os.PathLike,
                    extra: Optional[dict] = None) -> Path:
    """Write ``model.safetensors`` + ``config.yaml`` (+ ``extra``: small text files by name) atomically."""
    return save_state_dict(model.state_dict(), cfg, folder, extra)


def save_state_dict(state_dict: dict, cfg: DictConfig, folder: str | os.PathLike,
                    extra: Optional[dict] = None) -> Path:
    """:func:`save_checkpoint` for a bare state dict (e.g. one gathered from a distributed engine)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state_dict.items()}
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "lrm"})
        cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
        (tmp / CONFIG_NAME).write_text(OmegaConf.to_yaml(cfg, resolve=True))
        for name, text in (extra or {}).items():
            (tmp / name).write_text(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; give the folder the usual permissions
        for p in tmp.iterdir():
            os.chmod(p, 0o666 & ~umask)
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def read_checkpoint(folder: str | os.PathLike, overrides=()) -> Tuple[DictConfig, dict]:
    """Config and state dict of a checkpoint folder (no model built)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    weights, cfg_path = folder / WEIGHTS_NAME, folder / CONFIG_NAME
    for p in (weights, cfg_path):
        if not p.is_file():
            raise CheckpointError(f"checkpoint {folder} is incomplete: {p.name} missing")
    try:
        cfg = load_config(cfg_path, overrides)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"checkpoint config {cfg_path} is invalid: {e}") from None
    try:
        state = load_file(str(weights))
    except Exception as e:  # noqa: BLE001  (SafetensorError, OSError, ...)
        raise CheckpointError(f"checkpoint weights {weights} are unreadable: {e}") from None
    return cfg, state


def load_checkpoint(folder: str | os.PathLike | None = None, device: str | torch.device = "cpu", overrides=()):
    """Build the model a checkpoint folder describes and load its weights. Returns ``(model, cfg)``, eval mode.

    The model is built on the meta device and the stored tensors are assigned to it, so a large model is not
    randomly initialised first. The encoder's ``pretrained_path`` is never read (the checkpoint holds it).
    """
    from .models.lrm import LRM

    folder = Path(folder) if folder is not None else DEFAULT_CHECKPOINT
    cfg, state = read_checkpoint(folder, overrides)
    cfg.model.encoder.pretrained_path = None
    with torch.device("meta"):
        model = LRM(cfg, load_pretrained_encoder=False)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in own
           if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or bad:
        raise CheckpointError(
            f"checkpoint {folder} does not match its config: {len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(bad)} mis-shaped keys (e.g. {(missing + unexpected + bad)[:3]})")
    model.load_state_dict(state, strict=True, assign=True)
    _rebuild_nonpersistent_buffers(model)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"tensors left uninitialised after loading {folder}: {left[:5]}")
    return model.to(device).eval(), cfg


def _rebuild_nonpersistent_buffers(model) -> None:
    """Buffers that are not saved (``persistent=False``) derive from the config: recreate them as ``__init__``
    does (float32, so ``model.double()`` afterwards rounds them exactly like a freshly built model)."""
    enc = model.encoder
    for name, values in (("mean", enc.cfg.normalize_mean), ("std", enc.cfg.normalize_std)):
        enc.register_buffer(name, torch.tensor(list(values), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
