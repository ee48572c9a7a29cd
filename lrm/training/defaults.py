"""Schemas of the ``data`` and ``train`` config sections (owned by the trainer), as dataclasses beside ``model``'s.

``apply_defaults(cfg)`` hands the config to its task (top-level ``task:``, default ``lrm``;
lrm/training/tasks.py), which merges its schema's defaults under whatever the YAML file and the command line set
(:func:`merge_section`): unknown keys and values of the wrong type fail naming the section, as they do in the
``model`` section. For the LRM that is :func:`apply_lrm_defaults` (:class:`DataConfig`, :class:`TrainConfig`).
The runner's own ``train`` keys (:class:`RunnerTrainConfig`, the base of every task's train schema) are then
filled where a task left them unset. The merged sections are plain DictConfigs: code reads ``cfg.train.lr``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import DictConfig, open_dict

from ..config import ConfigError, check_limits, merge_over_defaults


# ------------------------------------------------------------------------------------------------ data
@dataclass
class SyntheticDataConfig:
    """``data.synthetic``: the analytic primitives of lrm/training/synthetic.py."""

    num_objects: int = 0  # 0 = a fresh object per sample; N = a fixed set of N objects
    views_per_object: int = 0  # 0 = fresh random cameras per sample; N = each object has a fixed set of N views
    fixed_input_view: bool = False  # always use view 0 as input (with views_per_object > 0)
    max_primitives: int = 3
    elevation_range: List[float] = field(default_factory=lambda: [-10.0, 45.0])
    corrupt_every: int = 0  # every n-th sample is corrupt (raises), to test robustness; 0 = never
    num_val_objects: int = 4


@dataclass
class DataConfig:
    """``data``: where training batches come from (lrm/training/data.py) and how they look."""

    # "shards": webdataset shards through lrm.data.make_loader; "synthetic": analytic primitives rendered on
    # the fly (lrm/training/synthetic.py), for tests and smoke runs; "auto": shards when data.path holds
    # shards and lrm.data is available, else synthetic (with a warning).
    source: str = "auto"
    path: str = "data/shards/default"  # shards folder (lrm-build-data --out ...)
    val_path: Optional[str] = None  # validation shards (default: the same folder, split="val")
    image_size: int = 64  # input and supervision resolution delivered by the loader
    num_views_target: int = 2  # K supervision views per object and step
    # V input views per object (the first defines the canonical frame); V > 1 needs a model with
    # model.transformer.multiview. [lo, hi]: a V per batch, uniform in lo..hi, drawn from the batch's position
    # (exact resume; lrm/data/batch.py)
    num_input_views: Any = 1
    background: Any = "random"  # random | white | black | grey | [r, g, b]
    # colour the *input* view is composited on; null = the same as the supervision views. "white" matches
    # infer.py (InferConfig.input_background), so the model need not learn to tell a random background apart
    input_background: Any = None
    num_workers: int = 2
    # probability per object of one random colour transform (hue, saturation, gain) applied to all its views
    # and surface colours alike: colours the data lacks, consistent across views (shards only)
    color_jitter: float = 0.0
    resume_mode: str = "reseed"  # shards: on resume re-seed the stream (reseed) or skip consumed batches (skip)
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)


# ------------------------------------------------------------------------------------------------ train
@dataclass
class DeepSpeedConfig:
    """``train.deepspeed``: ZeRO settings when launched with DeepSpeed (lrm/training/deepspeed_config.py)."""

    zero_stage: int = 2
    offload_optimizer: bool = False
    offload_param: bool = False


@dataclass
class RunnerTrainConfig:
    """The ``train`` keys the runner itself reads (lrm/training/runner.py, optim.py), whatever the task. A task's
    ``train`` schema subclasses it (re-declaring a field changes its default)."""

    run_name: Optional[str] = None  # runs/<run_name>; default: the config's name
    output_root: str = "runs"
    max_steps: int = 1000  # optimiser steps
    # stop earlier once training steps used this many CPU minutes (process + loader workers; 0 = no budget):
    # recipes compared at equal CPU cost (benchmarks/bench_learning.py)
    max_cpu_minutes: float = 0.0
    batch_size: int = 1  # objects per process and micro-batch
    grad_accum: int = 1  # micro-batches per optimiser step
    lr: float = 4.0e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.05
    eps: float = 1.0e-8
    grad_clip: float = 1.0  # gradient-norm clip (0 = off)
    mixed_precision: str = "auto"  # auto (bf16 on CUDA when supported, launcher's choice if set) | no | bf16 | fp16
    log_every: int = 10
    val_every: int = 200  # task metrics every n steps (0 = never)
    image_every: int = 200  # the task's validation image every n steps (0 = never)
    ckpt_every: int = 500
    keep_last: int = 3  # checkpoints kept (0 = all)
    max_nonfinite: int = 20  # abort after this many non-finite steps in a row
    max_bad_batches: int = 100  # abort after this many unreadable batches in a row
    init_from: Optional[str] = None  # exported model folder (model.safetensors + config.yaml) to start from
    # key prefixes whose weights the model keeps as built instead of taking the init_from checkpoint's (e.g.
    # [encoder.] to start a new, pretrained encoder under a trained transformer); the start then differs
    init_keep: List[str] = field(default_factory=list)
    progress: bool = True  # tqdm bar on the main process
    # torch intra-op threads per process on CPU (0 = torch's default). On a shared/loaded machine 1 is often
    # several times faster than oversubscribed OpenMP threads; launchers set OMP_NUM_THREADS per process.
    threads: int = 0
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)


@dataclass
class TrainRenderConfig:
    """``train.render``: which pixels of each supervision view are rendered and supervised (lrm/training/lrm_task.py)."""

    rays_per_view: int = 1024  # random pixels per supervision view (0 = all pixels)
    patch_size: int = 0  # > 0: one random patch of this side per view instead of random pixels
    # share of the random pixels drawn from the object's mask (the rest uniformly): object-centric data
    # is mostly background, and uniform rays alone can settle on "render nothing"
    fg_fraction: float = 0.5
    # > 0: render in chunks of this many rays per image under activation checkpointing (render memory of
    # one chunk instead of all rays, for one extra decoder forward); 0 = off
    checkpoint_rays: int = 0


@dataclass
class LossConfig:
    """``train.loss``: weights of the LRM's loss terms (lrm/training/losses.py); 0 = term off."""

    rgb: float = 1.0
    mask: float = 0.5  # MSE between rendered opacity and the target alpha
    lpips: float = 0.0  # needs patches (render.patch_size >= 16) and loss.lpips_path
    lpips_path: Optional[str] = None  # local file with VGG16 + LPIPS head weights; missing -> warning, term off
    tv: float = 0.0  # total variation of the triplane features
    # 3D supervision (shards with points, lrm/data/points.py): BCE of the opacity 1 - exp(-sigma * step) of
    # a fixed step length against inside/outside labels, and MSE of the decoder colour at surface samples
    occupancy: float = 0.0
    surface_rgb: float = 0.0
    depth: float = 0.0  # L1 between rendered expected depth and the target's, on foreground rays
    # L1 between pixel-plane channel 3 (model.pixel_plane) and the input view's own depth, as the plane's depth offset
    # (z - distance) / radius on the object: the plane then tells the decoder where the visible surface is along
    # each input ray, and the decoder reads the point's offset from it in its first layer (docs/training.md)
    input_depth: float = 0.0


@dataclass
class PointsConfig:
    """``train.points``: 3D samples per object and step for the occupancy / surface-colour losses."""

    occupancy: int = 2048
    surface: int = 512
    step: float = 0.05  # the fixed step length of the occupancy's opacity


@dataclass
class TrainConfig(RunnerTrainConfig):
    """``train`` of the LRM task: the runner's keys plus what its losses and validation read."""

    render: TrainRenderConfig = field(default_factory=TrainRenderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    points: PointsConfig = field(default_factory=PointsConfig)
    val_views: int = 2  # validation views rendered per object (full images)
    val_batch_size: int = 4  # objects in the fixed validation batch
    val_resolution: Optional[int] = None  # side of the rendered validation views; default data.image_size


#: Size-like keys of the data / train sections and their allowed ranges (inclusive).
SIZE_LIMITS = {
    "data.image_size": (8, 4096), "data.num_views_target": (1, 256), "data.num_workers": (0, 256),
    "train.max_steps": (0, 10 ** 9), "train.batch_size": (1, 4096), "train.grad_accum": (1, 4096),
    "train.render.rays_per_view": (0, 1 << 22), "train.render.patch_size": (0, 4096),
    "train.render.checkpoint_rays": (0, 1 << 22), "train.val_views": (0, 256), "train.val_batch_size": (1, 1024),
    "train.val_resolution": (8, 4096), "train.keep_last": (0, 10 ** 6), "train.threads": (0, 1024),
}

#: The ``train`` keys the runner itself reads, whatever the task (the fields of :class:`RunnerTrainConfig`).
RUNNER_TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(RunnerTrainConfig))
RUNNER_SIZE_LIMITS = {k: v for k, v in SIZE_LIMITS.items() if k.startswith("train.")
                      and k.split(".")[1] in RUNNER_TRAIN_KEYS}


# ------------------------------------------------------------------------------------------------ merging
def merge_section(cfg: DictConfig, key: str, defaults) -> None:
    """``cfg[key]`` = ``defaults`` <- what ``cfg`` sets there, in place, as a plain DictConfig.

    ``defaults``: a dataclass (class or instance: its fields are the section's keys, typed) or a dict. A key the
    defaults lack, or a value a typed field cannot take, raises :class:`~lrm.config.ConfigError` naming it
    (lrm/config.py ``merge_over_defaults``)."""
    merged = merge_over_defaults(defaults, cfg.get(key), key)
    with open_dict(cfg):
        cfg[key] = merged


def apply_lrm_defaults(cfg: DictConfig) -> DictConfig:
    """Return a copy of ``cfg`` with the LRM trainer's defaults under its ``data`` and ``train`` sections
    (its ``infer`` section, stored with the exported model, is checked against lrm/pipeline.py ``InferConfig``)."""
    cfg = cfg.copy()
    merge_section(cfg, "data", DataConfig)
    merge_section(cfg, "train", TrainConfig)
    check_limits(cfg, SIZE_LIMITS)
    from ..data.batch import input_views_range
    from ..pipeline import infer_section

    try:  # an int or [lo, hi]: a bad value fails here, not mid-run
        input_views_range(cfg.data.num_input_views)
        infer_section(cfg.get("infer"))  # a typo fails now, not when the trained model is first used
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return cfg


def apply_defaults(cfg: DictConfig) -> DictConfig:
    """Return a copy of ``cfg`` with its task's defaults (``task:``, default ``lrm``), then the runner's
    ``train`` keys (:class:`RunnerTrainConfig`) where the task left them unset."""
    from .tasks import task_class, task_name

    cfg = task_class(task_name(cfg))(cfg).apply_defaults(cfg.copy())
    with open_dict(cfg):
        if cfg.get("train") is None:
            cfg.train = {}
        for k, v in dataclasses.asdict(RunnerTrainConfig()).items():  # in place: keeps the task's key order
            if k not in cfg.train:
                cfg.train[k] = v
    check_limits(cfg, RUNNER_SIZE_LIMITS)
    return cfg
