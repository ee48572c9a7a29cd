"""Defaults of the free-form ``data`` and ``train`` config sections (owned by the trainer).

``apply_defaults(cfg)`` hands the config to its task (top-level ``task:``, default ``lrm``;
lrm/training/tasks.py), which merges its defaults under whatever the YAML file and the command line set and
rejects unknown keys so typos fail loudly, as they do in the ``model`` section. For the LRM that is
:func:`apply_lrm_defaults` (``DATA_DEFAULTS``, ``TRAIN_DEFAULTS``). The runner's own ``train`` keys
(``RUNNER_TRAIN_DEFAULTS``, a subset of ``TRAIN_DEFAULTS``) are then filled where a task left them unset.
"""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict

from ..config import check_limits

DATA_DEFAULTS = {
    # "shards": webdataset shards through lrm.data.make_loader; "synthetic": analytic primitives rendered on
    # the fly (lrm/training/synthetic.py), for tests and smoke runs; "auto": shards when data.path holds
    # shards and lrm.data is available, else synthetic (with a warning).
    "source": "auto",
    "path": "data/shards/default",  # shards folder (data/build.py --out ...)
    "val_path": None,  # validation shards (default: the same folder, split="val")
    "image_size": 64,  # input and supervision resolution delivered by the loader
    "num_views_target": 2,  # K supervision views per object and step
    "num_input_views": 1,  # V input views per object (the first defines the canonical frame); V > 1 needs
    # a model with model.transformer.multiview. [lo, hi]: a V per batch, uniform in lo..hi, drawn from the
    # batch's position (exact resume; lrm/data/batch.py)
    "background": "random",  # random | white | black | grey | [r, g, b]
    # colour the *input* view is composited on; null = the same as the supervision views. "white" matches
    # infer.py (INFER_DEFAULTS.input_background), so the model need not learn to tell a random background apart
    "input_background": None,
    "num_workers": 2,
    # probability per object of one random colour transform (hue, saturation, gain) applied to all its views
    # and surface colours alike: colours the data lacks, consistent across views (shards only)
    "color_jitter": 0.0,
    "resume_mode": "reseed",  # shards: on resume re-seed the stream (reseed) or skip consumed batches (skip)
    "synthetic": {
        "num_objects": 0,  # 0 = a fresh object per sample; N = a fixed set of N objects
        "views_per_object": 0,  # 0 = fresh random cameras per sample; N = each object has a fixed set of N views
        "fixed_input_view": False,  # always use view 0 as input (with views_per_object > 0)
        "max_primitives": 3,
        "elevation_range": [-10.0, 45.0],
        "corrupt_every": 0,  # every n-th sample is corrupt (raises), to test robustness; 0 = never
        "num_val_objects": 4,
    },
}

TRAIN_DEFAULTS = {
    "run_name": None,  # runs/<run_name>; default: the config's name
    "output_root": "runs",
    "max_steps": 1000,  # optimiser steps
    # stop earlier once training steps used this many CPU minutes (process + loader workers; 0 = no budget):
    # recipes compared at equal CPU cost (benchmarks/bench_learning.py)
    "max_cpu_minutes": 0.0,
    "batch_size": 1,  # objects per process and micro-batch
    "grad_accum": 1,
    "lr": 4.0e-4,
    "min_lr_ratio": 0.1,  # cosine decays to lr * min_lr_ratio
    "warmup_steps": 100,
    "betas": [0.9, 0.95],
    "weight_decay": 0.05,
    "eps": 1.0e-8,
    "grad_clip": 1.0,
    "mixed_precision": "auto",  # auto (bf16 on CUDA when supported, launcher's choice if set) | no | bf16 | fp16
    "render": {
        "rays_per_view": 1024,  # random pixels per supervision view (0 = all pixels)
        "patch_size": 0,  # > 0: one random patch of this side per view instead of random pixels
        # share of the random pixels drawn from the object's mask (the rest uniformly): object-centric data
        # is mostly background, and uniform rays alone can settle on "render nothing"
        "fg_fraction": 0.5,
        # > 0: render in chunks of this many rays per image under activation checkpointing (render memory of
        # one chunk instead of all rays, for one extra decoder forward); 0 = off
        "checkpoint_rays": 0,
    },
    "loss": {
        "rgb": 1.0,
        "mask": 0.5,  # MSE between rendered opacity and the target alpha
        "lpips": 0.0,  # needs patches (render.patch_size >= 16) and loss.lpips_path
        "lpips_path": None,  # local file with VGG16 + LPIPS head weights; missing -> warning, term off
        "tv": 0.0,  # total variation of the triplane features
        # 3D supervision (shards with points, lrm/data/points.py): BCE of the opacity 1 - exp(-sigma * step) of
        # a fixed step length against inside/outside labels, and MSE of the decoder colour at surface samples
        "occupancy": 0.0,
        "surface_rgb": 0.0,
        "depth": 0.0,  # L1 between rendered expected depth and the target's, on foreground rays
    },
    "points": {"occupancy": 2048, "surface": 512, "step": 0.05},  # per object and step; step = opacity length
    "log_every": 10,
    "val_every": 200,
    "val_views": 2,
    "val_batch_size": 4,  # objects in the fixed validation batch  # validation views rendered per object (full images)
    "val_resolution": None,  # default data.image_size
    "image_every": 200,
    "ckpt_every": 500,
    "keep_last": 3,
    "max_nonfinite": 20,  # abort after this many non-finite steps in a row
    "max_bad_batches": 100,  # abort after this many unreadable batches in a row
    "init_from": None,  # exported model folder (model.safetensors + config.yaml) to start from
    "progress": True,
    # torch intra-op threads per process on CPU (0 = torch's default). On a shared/loaded machine 1 is often
    # several times faster than oversubscribed OpenMP threads; launchers set OMP_NUM_THREADS per process.
    "threads": 0,  # tqdm bar on the main process
    "deepspeed": {"zero_stage": 2, "offload_optimizer": False, "offload_param": False},
}


#: Size-like keys of the data / train sections and their allowed ranges (inclusive).
SIZE_LIMITS = {
    "data.image_size": (8, 4096), "data.num_views_target": (1, 256), "data.num_workers": (0, 256),
    "train.max_steps": (0, 10 ** 9), "train.batch_size": (1, 4096), "train.grad_accum": (1, 4096),
    "train.render.rays_per_view": (0, 1 << 22), "train.render.patch_size": (0, 4096),
    "train.render.checkpoint_rays": (0, 1 << 22), "train.val_views": (0, 256), "train.val_batch_size": (1, 1024),
    "train.val_resolution": (8, 4096), "train.keep_last": (0, 10 ** 6), "train.threads": (0, 1024),
}


#: The ``train`` keys the runner itself reads (lrm/training/runner.py), whatever the task.
RUNNER_TRAIN_KEYS = (
    "run_name", "output_root", "max_steps", "max_cpu_minutes", "batch_size", "grad_accum", "lr", "min_lr_ratio",
    "warmup_steps", "betas", "weight_decay", "eps", "grad_clip", "mixed_precision", "log_every", "val_every",
    "image_every", "ckpt_every", "keep_last", "max_nonfinite", "max_bad_batches", "init_from", "progress",
    "threads", "deepspeed")
RUNNER_TRAIN_DEFAULTS = {k: TRAIN_DEFAULTS[k] for k in RUNNER_TRAIN_KEYS}
RUNNER_SIZE_LIMITS = {k: v for k, v in SIZE_LIMITS.items() if k.startswith("train.")
                      and k.split(".")[1] in RUNNER_TRAIN_KEYS}


def merge_section(cfg: DictConfig, key: str, defaults: dict) -> None:
    """``cfg[key]`` = ``defaults`` <- what ``cfg`` sets there, in place; a key ``defaults`` lacks is an error."""
    base = OmegaConf.create(defaults)
    given = cfg.get(key) or OmegaConf.create({})
    OmegaConf.set_struct(base, True)  # unknown keys -> error
    try:
        merged = OmegaConf.merge(base, given)
    except Exception as e:  # omegaconf ConfigKeyError: name the section
        raise ValueError(f"unknown key in the {key!r} config section: {e}") from None
    OmegaConf.set_struct(merged, False)
    with open_dict(cfg):
        cfg[key] = merged


def apply_lrm_defaults(cfg: DictConfig) -> DictConfig:
    """Return a copy of ``cfg`` with the LRM trainer's defaults under its ``data`` and ``train`` sections."""
    cfg = cfg.copy()
    merge_section(cfg, "data", DATA_DEFAULTS)
    merge_section(cfg, "train", TRAIN_DEFAULTS)
    check_limits(cfg, SIZE_LIMITS)
    from ..config import ConfigError
    from ..data.batch import input_views_range

    try:  # an int or [lo, hi]: a bad value fails here, not mid-run
        input_views_range(cfg.data.num_input_views)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return cfg


def apply_defaults(cfg: DictConfig) -> DictConfig:
    """Return a copy of ``cfg`` with its task's defaults (``task:``, default ``lrm``), then the runner's
    ``train`` keys where the task left them unset."""
    from .tasks import task_class, task_name

    cfg = task_class(task_name(cfg))(cfg).apply_defaults(cfg.copy())
    with open_dict(cfg):
        if cfg.get("train") is None:
            cfg.train = {}
        for k, v in RUNNER_TRAIN_DEFAULTS.items():  # in place: keeps the task's key order
            if k not in cfg.train:
                cfg.train[k] = v
    check_limits(cfg, RUNNER_SIZE_LIMITS)
    return cfg
