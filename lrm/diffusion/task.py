"""``DiffusionTask``: training the project's view-conditioned prior (``task: zero123``) under the shared runner.

Data: pairs of views of one object (input view, target view) from the same batch sources as the LRM (the shard
loader lrm/data/loader.py through lrm/training/data.py, or the synthetic objects of lrm/training/synthetic.py with
``data.source=synthetic``): one input and one supervision view per object, both composited on white (as
infer.py composites its input), the relative camera from the input to the target view computed with
``lrm.diffusion.prior.relative_camera`` on the canonicalised cameras. Images are scaled to [-1, 1].

Loss: MSE between the predicted and the true noise at a uniformly random DDPM timestep, with the whole condition
dropped for a ``model.cond_dropout`` share of the samples (classifier-free guidance).

Validation (fixed batch, fixed timesteps and noise): the denoising MSE overall and per timestep, the same with
the condition dropped, and ``cond_gain`` = unconditional − conditional MSE (how much the model uses the input view
and camera; 0 for a model that ignores them); the image is a grid of rows input | target | DDIM sample.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf, open_dict

from ..cameras import camera_from_vector
from ..training.data import resolve_source
from ..config import ConfigError
from ..training.defaults import DataConfig, RunnerTrainConfig
from ..training.task import Task
from .model import (ViewConditionedUNet, ViewUNetConfig, model_config, noise_from_output, train_scheduler,
                    training_target)
from .pixel_prior import to_unit_range
from .prior import relative_camera

log = logging.getLogger(__name__)

@dataclass
class DiffusionDataConfig(DataConfig):
    """``data`` of this task: the trainer's keys (lrm/training/defaults.py ``DataConfig``) with one input and one
    target view per object, both on white."""

    image_size: int = 64
    num_views_target: int = 1
    background: Any = "white"
    input_background: Any = "white"
    color_jitter: float = 0.0


@dataclass
class DiffusionTrainConfig(RunnerTrainConfig):
    """``train`` of this task: the runner's keys (lrm/training/defaults.py ``RunnerTrainConfig``) with these
    defaults, plus what validation measures and samples."""

    batch_size: int = 8
    lr: float = 2.0e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.01
    warmup_steps: int = 500
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    val_batch_size: int = 4  # objects in the fixed validation batch
    # fixed timesteps of the validation loss (each with every object)
    val_timesteps: List[int] = field(default_factory=lambda: [50, 250, 500, 750, 950])
    val_seed: int = 1234  # noise of the validation loss and of the sampled grid
    sample_steps: int = 10  # DDIM steps of the validation image grid
    sample_guidance: float = 3.0  # classifier-free guidance of the validation image grid


TRAIN_LIMITS = {"train.val_batch_size": (1, 1024), "train.sample_steps": (1, 1000), "train.val_seed": (0, 2 ** 63 - 1)}


def apply_task_defaults(cfg: DictConfig) -> DictConfig:
    """A copy of a ``task: zero123`` config with its ``model`` section checked and filled (lrm/diffusion/model.py
    ``ViewUNetConfig``) and the ``data`` / ``train`` defaults of this task (:class:`DiffusionDataConfig`,
    :class:`DiffusionTrainConfig`) merged under it; unknown keys, values of the wrong type and out-of-range sizes
    raise :class:`~lrm.config.ConfigError`."""
    from ..config import check_limits
    from ..training.defaults import SIZE_LIMITS, merge_section

    cfg = cfg.copy()
    task = cfg.get("task", None)
    if task != "zero123":
        raise ConfigError(f"a DiffusionTask config needs task: zero123, got {task!r}")
    mcfg = model_config(cfg.get("model"))
    try:
        with open_dict(cfg):
            cfg.model = OmegaConf.structured(mcfg)
            OmegaConf.set_struct(cfg.model, False)
        merge_section(cfg, "data", DiffusionDataConfig)
        merge_section(cfg, "train", DiffusionTrainConfig)
    except ValueError as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    check_limits(cfg, {**{k: v for k, v in SIZE_LIMITS.items() if k.startswith("data.")}, **TRAIN_LIMITS})
    ts = list(cfg.train.val_timesteps)
    if not all(isinstance(t, int) and 0 <= t < mcfg.num_train_timesteps for t in ts):
        raise ConfigError(f"train.val_timesteps must be integers in [0, {mcfg.num_train_timesteps}), got {ts}")
    return cfg


def load_task_config(path=None, overrides: Sequence[str] = ()) -> DictConfig:
    """A ``zero123`` config as train.py builds it: a YAML file (``configs/zero123-tiny.yaml`` by name) + dotted
    overrides (lrm/config.py ``load_config``), then this task's and the runner's defaults."""
    from ..config import load_config
    from ..training.defaults import apply_defaults

    return apply_defaults(load_config(path or "zero123-tiny", overrides))


# ------------------------------------------------------------------------------------------------ batches
PAIR_KEYS = ("cond_image", "target", "rel_camera")


def view_pairs(batch: Dict, resolution: int) -> Dict:
    """A training batch (lrm/data/batch.py) of B objects with K target views -> the pair batch of this task, one
    row per (object, target view), the K views of an object consecutive (row ``b * K + k``):

    ``cond_image`` [B*K, 3, S, S] the object's input view in [-1, 1] (repeated per view), ``target``
    [B*K, 3, S, S] the target views in [-1, 1], ``rel_camera`` [B*K, 4] from the input camera to each target camera
    (both in the canonical frame), ``uid`` (one per object)."""
    src_c2w, _ = camera_from_vector(batch["input_cameras"][:, 0])
    rgb = batch["target_rgb"].float()  # [B, K, H, W, 3]
    b, k = rgb.shape[:2]
    tgt_c2w = batch["target_c2w"].float()  # [B, K, 4, 4]
    src = src_c2w.float()[:, None].expand(b, k, 4, 4)
    return {"cond_image": to_unit_range(batch["input_images"][:, 0].float(), resolution).repeat_interleave(k, 0),
            "target": to_unit_range(rgb.flatten(0, 1).permute(0, 3, 1, 2), resolution),
            "rel_camera": relative_camera(src, tgt_c2w).reshape(b * k, 4),
            "uid": list(batch.get("uid", []))}


class PairSource:
    """A trainer batch source (``get(position)``, ``start(position)``) whose batches are :func:`view_pairs`."""

    def __init__(self, inner, resolution: int):
        self.inner, self.resolution = inner, int(resolution)

    def start(self, position: int):
        if hasattr(self.inner, "start"):
            self.inner.start(position)

    def get(self, position: int) -> Dict:
        return view_pairs(self.inner.get(position), self.resolution)

    def state_dict(self):
        return {}


def _source_cfg(cfg: DictConfig, batch_size: int) -> DictConfig:
    """The keys lrm.training.data.make_source reads, with every 3D / depth extra off (images only)."""
    return OmegaConf.create({"seed": int(cfg.seed), "camera": OmegaConf.to_container(cfg.camera),
                             "data": OmegaConf.to_container(cfg.data, resolve=True),
                             "train": {"batch_size": int(batch_size),
                                       "loss": {"occupancy": 0.0, "surface_rgb": 0.0, "depth": 0.0},
                                       "points": {"occupancy": 0, "surface": 0}}})


# ------------------------------------------------------------------------------------------------ the task
class DiffusionTask(Task):
    name = "zero123"

    def __init__(self, cfg: DictConfig):
        super().__init__(apply_task_defaults(cfg))
        self.model_cfg: ViewUNetConfig = model_config(self.cfg.model)
        self.scheduler = train_scheduler(self.model_cfg)

    def apply_defaults(self, cfg: DictConfig) -> DictConfig:
        return apply_task_defaults(cfg)

    @property
    def num_views(self) -> int:
        """Rows of one object denoised together: ``data.num_views_target`` for a joint model
        (``model.joint_views``), else 1 (each (input, target) pair on its own)."""
        return int(self.cfg.data.num_views_target) if self.model_cfg.joint_views else 1

    def resolve_config(self, cfg: DictConfig) -> None:
        with open_dict(cfg):
            cfg.data.source = resolve_source(self._source_cfg(1))  # "auto" decided once, recorded in the run
        self.cfg.data.source = cfg.data.source

    def _source_cfg(self, batch_size: int) -> DictConfig:
        return _source_cfg(self.cfg, batch_size)

    def build_model(self) -> torch.nn.Module:
        return ViewConditionedUNet(self.model_cfg)

    def build_source(self, split: str, rank: int, world: int, position: int = 0, batch_size: Optional[int] = None):
        from ..training.data import make_source

        bs = int(batch_size or (self.cfg.train.batch_size if split == "train" else self.cfg.train.val_batch_size))
        src = PairSource(make_source(self._source_cfg(bs), split, rank, world, bs), self.model_cfg.resolution)
        if position:
            src.start(position)
        return src

    def check_batch(self, batch: Dict) -> Optional[str]:
        for k in PAIR_KEYS:
            if k not in batch or not torch.is_tensor(batch[k]):
                return f"missing tensor {k}"
            if not torch.isfinite(batch[k]).all():
                return f"{k} has non-finite values"
        s = self.model_cfg.resolution
        b = batch["target"].shape[0]
        if b % self.num_views:
            return f"{b} target views are not whole objects of {self.num_views} views"
        for k, shape in (("cond_image", (b, 3, s, s)), ("target", (b, 3, s, s)), ("rel_camera", (b, 4))):
            if tuple(batch[k].shape) != shape:
                return f"{k} has shape {tuple(batch[k].shape)}, expected {shape}"
        return None

    # ---- per step
    def noisy(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The DDPM forward process x_t = sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε (DDPMScheduler.add_noise)."""
        return self.scheduler.add_noise(x0, noise, t.to(x0.device))

    def step_losses(self, module: torch.nn.Module, batch: Dict, generator: torch.Generator) -> Dict[str, torch.Tensor]:
        """ε-MSE over every target view. A joint model's V views of one object share the timestep and the dropped
        condition (as at sampling) and are denoised together (``num_views=V``)."""
        device = next(module.parameters()).device
        x0 = batch["target"].to(device)
        b, v = x0.shape[0], self.num_views
        gdev = generator.device
        noise = torch.randn(x0.shape, generator=generator, device=gdev).to(device)
        t = torch.randint(0, self.model_cfg.num_train_timesteps, (b // v,), generator=generator, device=gdev)
        drop = torch.rand(b // v, generator=generator, device=gdev) < float(self.model_cfg.cond_dropout)
        t, drop = t.repeat_interleave(v).to(device), drop.repeat_interleave(v).to(device)
        out = module(self.noisy(x0, noise, t), t, batch["cond_image"].to(device), batch["rel_camera"].to(device),
                     drop=drop, num_views=v)
        target = training_target(x0, noise, self.scheduler.alphas_cumprod.to(device)[t], self.model_cfg.prediction_type)
        mse = F.mse_loss(out.float(), target)
        return {"total": mse, "mse": mse.detach()}

    # ---- validation
    def validation_batch(self, device: torch.device) -> Optional[Dict]:
        d = self.cfg.train
        n = int(d.val_batch_size)
        if resolve_source(self._source_cfg(n)) == "synthetic":
            n = min(n, max(1, int(self.cfg.data.synthetic.num_val_objects)))
        try:
            batch = self.build_source("val", 0, 1, batch_size=n).get(0)
        except FileNotFoundError as e:  # no validation split (tiny data sets): training objects, said so
            log.warning("no validation split (%s); validating on the first training batch", e)
            batch = self.build_source("train", 0, 1, batch_size=n).get(0)
        ts = torch.tensor([int(t) for t in d.val_timesteps], dtype=torch.long)
        if ts.numel() == 0:
            return None
        v = self.num_views
        m, n_t = batch["target"].shape[0] // v, len(ts)

        def rep(x):  # rows (object, view) -> (object, timestep, view): each object's views stay together
            x = x[: m * v].reshape(m, 1, v, *x.shape[1:]).expand(m, n_t, v, *x.shape[1:])
            return x.reshape(m * n_t * v, *x.shape[3:])

        g = torch.Generator().manual_seed(int(d.val_seed))
        out = {k: rep(batch[k]).to(device) for k in PAIR_KEYS}
        out["t"] = ts.view(1, n_t, 1).expand(m, n_t, v).reshape(-1).to(device)
        out["noise"] = torch.randn(out["target"].shape, generator=g).to(device)
        out["pairs"] = {k: batch[k][: m * v].to(device) for k in PAIR_KEYS}  # one row per view, for the image grid
        return out

    @torch.no_grad()
    def validate(self, model: torch.nn.Module, batch: Dict) -> Dict[str, float]:
        was = model.training
        model.eval()
        try:
            x_t = self.noisy(batch["target"], batch["noise"], batch["t"])
            n = x_t.shape[0]
            kw = {"num_views": self.num_views}
            a_t = self.scheduler.alphas_cumprod.to(x_t.device)[batch["t"]]
            kind = self.model_cfg.prediction_type  # the metrics are ε errors whatever the network outputs
            eps_c = noise_from_output(model(x_t, batch["t"], batch["cond_image"], batch["rel_camera"], **kw), x_t, a_t,
                                      kind)
            eps_u = noise_from_output(model(x_t, batch["t"], batch["cond_image"], batch["rel_camera"],
                                            drop=torch.ones(n, dtype=torch.bool, device=x_t.device), **kw), x_t, a_t,
                                      kind)
        finally:
            model.train(was)
        err_c = (eps_c - batch["noise"]).pow(2).flatten(1).mean(1)
        err_u = (eps_u - batch["noise"]).pow(2).flatten(1).mean(1)
        out = {"mse": float(err_c.mean()), "mse_uncond": float(err_u.mean()),
               "cond_gain": float(err_u.mean() - err_c.mean())}
        for t in batch["t"].unique().tolist():
            out[f"mse_t{int(t):03d}"] = float(err_c[batch["t"] == t].mean())
        return out

    @torch.no_grad()
    def validation_image(self, model: torch.nn.Module, batch: Dict) -> Optional[torch.Tensor]:
        """Rows of input | target | DDIM sample (``diffusion.sample_steps``, ``diffusion.sample_guidance``)."""
        from .pixel_prior import PixelPrior, from_unit_range
        from .sample import sample_views

        d = self.cfg.train
        pairs = batch["pairs"]
        device = pairs["target"].device
        was = model.training
        prior = PixelPrior(model, device)
        g = torch.Generator().manual_seed(int(d.val_seed))
        try:
            cond_rgb = from_unit_range(pairs["cond_image"])
            x = sample_views(prior, cond_rgb, pairs["rel_camera"], int(d.sample_steps), float(d.sample_guidance), g,
                             num_views=self.num_views)
        finally:
            model.train(was)
        rows = torch.cat([cond_rgb, from_unit_range(pairs["target"]), x], dim=-1)  # [B, 3, S, 3S]
        return torch.cat(list(rows), dim=-2).clamp(0, 1).cpu()

    # ---- export
    def export(self, state_dict: Dict[str, torch.Tensor], out_dir: Path) -> None:
        from ..checkpoint import save_state_dict

        save_state_dict(state_dict, self.cfg, out_dir)


__all__ = ["DiffusionTask", "apply_task_defaults", "load_task_config", "view_pairs", "PairSource",
           "DiffusionDataConfig", "DiffusionTrainConfig"]
