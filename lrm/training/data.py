"""Batch sources for the trainer: ``synthetic`` (indexed, exact resume) or ``shards`` (lrm.data.make_loader).

A source is asked for the batch of a given (micro-)step: ``source.get(position)``. The synthetic source
computes it from ``(seed, position, rank)`` alone; the shard source streams and only counts positions (on
resume it re-seeds the stream, or skips the consumed batches with ``data.resume_mode=skip``).
Unreadable or non-finite batches are skipped and counted, never fatal unless ``train.max_bad_batches``
come in a row.
"""
from __future__ import annotations

import logging
from typing import Dict, Iterator, Optional

import torch

from .synthetic import SyntheticMultiView

log = logging.getLogger(__name__)

VAL_SEED = 1234  # the seed of the views every validation pass draws (trainer's fixed batch, lrm.training.validation)


def loader_extras(cfg) -> Dict:
    """What the shard loader must add to a batch for the configured losses (and the colour jitter)."""
    lc, pc = cfg.train.loss, cfg.train.points
    return {"points": int(pc.occupancy) if float(lc.occupancy) > 0 else 0,
            "surface_points": int(pc.surface) if float(lc.surface_rgb) > 0 else 0,
            "depth": float(lc.depth) > 0, "input_depth": float(lc.get("input_depth", 0)) > 0,
            "color_jitter": float(cfg.data.color_jitter)}


class SyntheticSource:
    def __init__(self, cfg, split: str, rank: int, world_size: int, batch_size: int):
        self.ds = SyntheticMultiView(cfg.data, split=split, seed=cfg.seed,
                                     distance=cfg.camera.distance, fov_deg=cfg.camera.fov_deg,
                                     extras=loader_extras(cfg) if split == "train" else None)
        self.rank, self.world, self.bs = rank, world_size, batch_size

    def get(self, position: int) -> Dict:
        first = (position * self.world + self.rank) * self.bs
        return self.ds.batch(range(first, first + self.bs))

    def state_dict(self):
        return {}

    def start(self, position: int):
        pass


class ShardSource:  # pragma: no cover - needs lrm.data and shards on disk
    def __init__(self, cfg, split: str, rank: int, world_size: int, batch_size: int):
        self.cfg, self.split, self.rank, self.world, self.bs = cfg, split, rank, world_size, batch_size
        self._it: Optional[Iterator] = None
        self._pos = 0

    def _make(self, seed_offset: int):
        from lrm.data import make_loader  # the dataset package (lazy: optional at import time)

        d = self.cfg.data
        path = d.path if self.split == "train" or not d.val_path else d.val_path
        return iter(make_loader(path, num_views_target=int(d.num_views_target), image_size=int(d.image_size),
                                num_input_views=d.num_input_views,
                                batch_size=self.bs, num_workers=int(d.num_workers), shuffle=self.split == "train",
                                seed=int(self.cfg.seed) + seed_offset, split=self.split,
                                background=d.background if self.split == "train" else "white",
                                input_background=d.input_background if self.split == "train" else None,
                                rank=self.rank, world_size=self.world, repeat=self.split == "train",
                                extras=loader_extras(self.cfg) if self.split == "train" else None))

    def start(self, position: int):
        mode = self.cfg.data.resume_mode
        if position and mode == "skip":
            self._it = self._make(0)
            for _ in range(position):
                next(self._it)
        else:
            self._it = self._make(position)  # reseed: a different but reproducible order after a resume
        self._pos = position

    def get(self, position: int) -> Dict:
        if self._it is None:
            self.start(position)
        try:
            batch = next(self._it)
        except StopIteration:
            self._it = self._make(position + 1_000_003)
            batch = next(self._it)
        except Exception:
            self._it = None  # a broken iterator is rebuilt on the next call
            raise
        self._pos = position + 1
        return batch


def shards_available(cfg) -> bool:
    from pathlib import Path

    p = Path(str(cfg.data.path))
    has = (p / "manifest.json").is_file() or any(p.glob("**/*.tar")) if p.is_dir() else p.suffix == ".tar"
    if not has:
        return False
    try:
        from lrm.data import make_loader  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_source(cfg) -> str:
    kind = str(cfg.data.source)
    if kind != "auto":
        return kind
    if shards_available(cfg):
        return "shards"
    log.warning("data.source=auto: no shards at data.path=%s (or lrm.data missing): training on synthetic "
                "objects. Build shards with lrm-build-data (python -m lrm.data.build) or set data.path", cfg.data.path)
    return "synthetic"


def make_source(cfg, split: str = "train", rank: int = 0, world_size: int = 1, batch_size: Optional[int] = None):
    bs = int(batch_size or cfg.train.batch_size)
    kind = resolve_source(cfg)
    if kind == "synthetic":
        return SyntheticSource(cfg, split, rank, world_size, bs)
    if kind == "shards":
        return ShardSource(cfg, split, rank, world_size, bs)
    raise ValueError(f"unknown data.source {kind!r} (synthetic | shards)")
