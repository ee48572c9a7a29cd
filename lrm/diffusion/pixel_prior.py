"""``PixelPrior``: the project's own :class:`~lrm.diffusion.model.ViewConditionedUNet` behind the ``ViewPrior``
interface (lrm/diffusion/prior.py), and ``load_prior``, which opens any prior folder.

A prior folder is either
* an exported model folder of the ``zero123`` task: ``model.safetensors`` + ``config.yaml`` (lrm/checkpoint.py
  conventions: atomic, safetensors only, verified before loading), or
* a diffusers folder of the public Zero-1-to-3 weights (``model_index.json``), loaded by
  ``lrm.diffusion.zero123.load_zero123`` (imported only when such a folder is given).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .model import ViewConditionedUNet, ViewUNetConfig, model_config, noise_from_output, train_scheduler
from .prior import Condition

#: Where ``python -m lrm.diffusion.sample`` looks by default (the trained tiny prior, once trained).
DEFAULT_PRIOR = Path(__file__).resolve().parents[2] / "checkpoints" / "zero123-tiny"
#: the multi-view front end's default: the same prior with jointly denoised views (model.joint_views)
DEFAULT_MV_PRIOR = Path(__file__).resolve().parents[2] / "checkpoints" / "zero123-mv-tiny"


def to_unit_range(rgb: Tensor, resolution: int) -> Tensor:
    """[N, 3, H, W] RGB in [0, 1] -> [N, 3, resolution, resolution] in [-1, 1] (antialiased bilinear resize)."""
    if rgb.shape[-1] != resolution or rgb.shape[-2] != resolution:
        rgb = F.interpolate(rgb, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
    return rgb.clamp(0, 1) * 2.0 - 1.0


def from_unit_range(x: Tensor) -> Tensor:
    """Inverse of :func:`to_unit_range` (without the resize): [-1, 1] -> [0, 1], clamped."""
    return ((x + 1.0) * 0.5).clamp(0, 1)


class PixelPrior:
    """A :class:`ViewPrior` over a :class:`ViewConditionedUNet` (pixel space; ``encode`` only resizes and scales)."""

    def __init__(self, model: ViewConditionedUNet, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        cfg = model.cfg
        self.resolution = int(cfg.resolution)
        self.num_train_timesteps = int(cfg.num_train_timesteps)
        self.alphas_cumprod = train_scheduler(cfg).alphas_cumprod.to(self.device, torch.float32)
        self.sample_clip = 1.0  # pixel space: the clean image lies in [-1, 1] (DDIM may clip x0 estimates)
        self.foreground_ratio: Optional[float] = None  # input framing the prior was trained on (config infer.*)

    @property
    def joint_views(self) -> bool:
        """True for a model with cross-view attention: ``predict_noise(..., num_views=V)`` denoises V views together."""
        return bool(self.model.cfg.joint_views)

    def encode(self, rgb: Tensor) -> Tensor:
        return to_unit_range(rgb.to(self.device, torch.float32), self.resolution)

    def decode(self, x0: Tensor) -> Tensor:
        return from_unit_range(x0)

    @torch.no_grad()
    def condition(self, image: Tensor) -> Condition:
        x = self.encode(image)
        return Condition(image=image, extras={"cond_image": x, "embedding": self.model.embed_image(x)})

    def predict_noise(self, x_t: Tensor, t: Tensor, cond: Optional[Condition], rel_camera: Tensor,
                      num_views: int = 1) -> Tensor:
        """ε̂ for ``x_t`` [N, 3, S, S] (lrm/diffusion/prior.py); ``num_views`` V > 1 (joint models): the N rows are
        N / V objects of V consecutive views, denoised together."""
        n = x_t.shape[0]
        if cond is None:
            d = self.model.cfg.image_embed_dim
            return self._predict(x_t, t, rel_camera, torch.zeros_like(x_t),
                                 torch.zeros(n, d, device=self.device, dtype=x_t.dtype),
                                 torch.ones(n, dtype=torch.bool, device=self.device), num_views)
        img, emb = cond.extras["cond_image"], cond.extras["embedding"]
        return self._predict(x_t, t, rel_camera, img.expand(n, -1, -1, -1), emb.expand(n, -1), None, num_views)

    def predict_noise_pair(self, x_t: Tensor, t: Tensor, cond: Condition, rel_camera: Tensor,
                           num_views: int = 1):
        """(ε̂ unconditional, ε̂ conditional) for ``x_t`` [N, 3, S, S] in one batched pass of 2N rows (classifier-free
        guidance: the second half drops the condition, as :meth:`predict_noise` with ``cond=None`` does)."""
        n = x_t.shape[0]
        t = torch.as_tensor(t, device=self.device).long().reshape(-1).expand(n)
        rel = rel_camera.to(self.device, torch.float32).expand(n, 4)
        img, emb = cond.extras["cond_image"], cond.extras["embedding"]
        drop = torch.cat([torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)]).to(self.device)
        eps = self._predict(torch.cat([x_t, x_t]), torch.cat([t, t]), rel.repeat(2, 1),
                            img.expand(n, -1, -1, -1).repeat(2, 1, 1, 1), emb.expand(n, -1).repeat(2, 1), drop,
                            num_views)
        return eps[n:], eps[:n]

    def _predict(self, x_t: Tensor, t, rel_camera: Tensor, cond_image: Tensor, embedding: Tensor,
                 drop: Optional[Tensor], num_views: int) -> Tensor:
        """One U-Net pass over the rows of ``x_t`` with their conditions -> ε̂ (whatever the model predicts)."""
        n = x_t.shape[0]
        t = torch.as_tensor(t, device=self.device).long().reshape(-1).expand(n)
        rel_camera = rel_camera.to(self.device, torch.float32).expand(n, 4)
        out = self.model(x_t, t, cond_image, rel_camera, drop=drop, image_embedding=embedding, num_views=num_views)
        return noise_from_output(out, x_t, self.alphas_cumprod[t], self.model.cfg.prediction_type)

def load_pixel_prior(folder: str | os.PathLike, device: str | torch.device = "cpu") -> PixelPrior:
    """A :class:`PixelPrior` from an exported ``zero123`` model folder (``model.safetensors`` + ``config.yaml``).
    Missing, damaged or mismatching folders raise :class:`lrm.checkpoint.CheckpointError` (one line)."""
    from safetensors.torch import load_file

    from ..checkpoint import CheckpointError, check_weights, model_folder_files, verify_safetensors
    from ..config import ConfigError, read_yaml

    folder = Path(folder)
    weights, cfg_path = model_folder_files(folder, "prior")
    try:
        raw = read_yaml(cfg_path)
        task = raw.get("task", None)
        if task != "zero123":
            raise ConfigError(f"it is a {task or 'lrm'!r} model folder, not a zero123 prior (task: zero123)")
        cfg = model_config(raw.get("model"))
        infer = raw.get("infer") or {}
        ratio = infer.get("foreground_ratio", None)
    except ConfigError as e:
        raise CheckpointError(f"prior config {cfg_path} is not usable: {e}") from None
    verify_safetensors(weights)
    try:
        state = load_file(str(weights))
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"prior weights {weights} are unreadable: {e}") from None
    model = ViewConditionedUNet(cfg)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in own
           if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or bad:
        raise CheckpointError(f"prior {folder} does not match its config: {len(missing)} missing, {len(unexpected)} "
                              f"unexpected, {len(bad)} mis-shaped keys (e.g. {(missing + unexpected + bad)[:3]})")
    model.load_state_dict(check_weights(state, own, folder), strict=True)
    prior = PixelPrior(model, device)
    prior.foreground_ratio = None if ratio is None else float(ratio)  # how the training views frame objects
    return prior


def is_diffusers_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / "model_index.json").is_file()


def folder_joint_views(path: str | os.PathLike) -> bool:
    """Whether the prior folder at ``path`` denoises views jointly (``model.joint_views`` in an exported ``zero123``
    folder's config), read from its config alone, before any weights; a diffusers Zero-1-to-3 folder: False.
    An unreadable config raises :class:`lrm.checkpoint.CheckpointError`."""
    from ..checkpoint import CheckpointError, model_folder_files
    from ..config import ConfigError, read_yaml

    if is_diffusers_folder(path):
        return False
    _, cfg_path = model_folder_files(Path(path), "prior")
    try:
        return bool((read_yaml(cfg_path).get("model") or {}).get("joint_views", False))
    except (ConfigError, AttributeError) as e:
        raise CheckpointError(f"prior config {cfg_path} is not usable: {e}") from None


def load_prior(path: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
    """Any prior folder -> a ``ViewPrior``: a diffusers Zero-1-to-3 folder (``model_index.json``) goes to
    ``lrm.diffusion.zero123.load_zero123``; anything else is read as an exported ``zero123`` model folder."""
    from ..checkpoint import CheckpointError

    folder = Path(path) if path is not None else DEFAULT_PRIOR
    if is_diffusers_folder(folder):
        try:
            from .zero123 import Zero123FolderError, load_zero123
        except ImportError as e:
            raise CheckpointError(f"{folder} is a diffusers folder, but the Zero-1-to-3 loader "
                                  f"(lrm.diffusion.zero123) is unavailable: {e}") from None
        try:
            return load_zero123(folder, device)
        except (Zero123FolderError, FileNotFoundError) as e:  # one error type for every unusable prior folder
            raise CheckpointError(str(e)) from None
    return load_pixel_prior(folder, device)


__all__ = ["PixelPrior", "load_prior", "load_pixel_prior", "is_diffusers_folder", "folder_joint_views", "to_unit_range",
           "from_unit_range", "DEFAULT_PRIOR", "ViewUNetConfig"]
