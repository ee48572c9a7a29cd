"""Training loader: a webdataset pipeline over multi-view shards (format: :mod:`lrm.data.shards`).

``make_loader`` yields the training batch of :mod:`lrm.data.batch` (keys and shapes there and in
docs/conventions.md); ``extras`` asks for the optional 3D and depth supervision keys: ``points = N`` occupancy
points and labels, ``surface_points = M`` surface samples and colours (lrm/data/points.py, rotated into the
canonical frame; M = -1: every stored sample in stored order, without a random draw), ``depth = True`` the supervision views' ray-distance depth, ``input_depth = True`` input view 0's.

``extras.color_jitter`` = p: with probability p per object, one random colour transform (hue rotation about
the grey axis, saturation and gain) is applied to every view of that object and to its surface colours.

Per sample: ``num_input_views`` input views (default 1; the first defines the canonical frame; a range ``[lo, hi]``
gives every batch its own V, see :mod:`lrm.data.batch`: ``hi`` views are decoded and the batch keeps its first V,
keyed by the batch's position ``k * num_workers + worker`` in this rank's stream, times ``world_size`` plus
``rank``) and K supervision views are drawn at random from the object's ``random`` views (``view_kinds``); with ``input_in_targets=True`` the
(first) input view is target 0 and K-1 others follow.
Cameras are canonicalised with ``lrm.cameras.canonicalize(..., distance=canonical_distance)``; the default
``None`` keeps the rendered camera distance, so the transform is a pure rotation about the origin and the
object stays centred in the triplane cube (the default set is rendered at distance 2.0, the canonical
distance, so this equals ``distance=2.0`` there). Images are resized in premultiplied-alpha space
(antialiased bilinear) and composited on the background ("random": a uniform random colour per sample,
"white", "black", "grey", or an RGB triple); ``input_background`` (same choices) composites the input view on
its own colour instead, e.g. "white" to match inference while the supervision views keep random backgrounds.

Sharding: shards are split across ranks (``rank::world_size``) and then across DataLoader workers; when
there are fewer shards than readers, every reader reads its rank's shards and keeps every n-th sample,
so each (rank, worker) still sees a disjoint subset. Corrupt or truncated samples are skipped with a
logged warning (a webdataset ``handler``).
"""
from __future__ import annotations

import itertools
import logging
import random
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..cameras import camera_vector, canonicalize
from .batch import collate, fixed_background, input_views_at, input_views_range, trim_input_views
from .shards import decode_header, decode_png, decode_sample, iter_raw, list_shards

logger = logging.getLogger("lrm.data")


class MissingMembersError(ValueError):
    """A sample lacks members a configured loss needs (never skipped: every sample of the set lacks them)."""


class SampleError(ValueError):
    """A sample that cannot be decoded; the message names its shard and key."""


def describe(sample: dict) -> str:
    return f"shard {sample.get('__url__', '?')}, key {sample.get('__key__', '?')}"


def sample_error(sample: dict, exn: Exception) -> SampleError:
    return SampleError(f"{describe(sample)}: {type(exn).__name__}: {str(exn)[:300]}")


def warn_and_skip(exn: Exception) -> bool:
    """webdataset handler: log the problem (with its shard, and key when known) and continue."""
    if isinstance(exn, MissingMembersError):
        raise exn  # one clear error instead of skipping the whole data set (webdataset ends quietly on False)
    if isinstance(exn, SampleError):
        logger.warning("skipping corrupt sample: %s", exn)
        return True
    shard = next((a for a in reversed(exn.args) if isinstance(a, str) and ".tar" in a), "?")
    logger.warning("skipping corrupt sample in shard %s: %s: %s", shard, type(exn).__name__, str(exn.args[0])[:300]
                   if exn.args else "")
    return True


def _worker() -> tuple:
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class _Reader:
    """Shard urls for this rank and worker, looped per epoch with a seeded shard shuffle."""

    def __init__(self, urls, rank, world_size, shuffle, seed, repeat):
        self.urls, self.rank, self.world_size = list(urls), rank, world_size
        self.shuffle, self.seed, self.repeat = shuffle, seed, repeat

    def plan(self):
        """(my shard urls, sample stride, sample offset) for the current (rank, worker)."""
        wid, nw = _worker()
        urls = self.urls
        if len(urls) >= self.world_size:
            mine, stride, offset = urls[self.rank :: self.world_size], 1, 0
        else:
            mine, stride, offset = urls, self.world_size, self.rank
        if len(mine) >= nw:
            return mine[wid::nw], stride, offset
        return mine, stride * nw, offset * nw + wid

    def __call__(self) -> Iterator[dict]:
        urls, stride, offset = self.plan()
        if not urls:
            return
        for epoch in itertools.count():
            order = list(urls)
            if self.shuffle:
                random.Random(self.seed * 1000003 + epoch * 7919 + self.rank).shuffle(order)
            n = 0
            for i, s in enumerate(iter_raw(order, handler=warn_and_skip)):
                if i % stride == offset:
                    n += 1
                    yield s
            if not self.repeat:
                return
            if n == 0:  # every shard unreadable: fail instead of spinning forever
                raise RuntimeError(f"no readable samples in {len(order)} shard(s), e.g. {order[0]}")


def _background(kind, rng: np.random.Generator) -> np.ndarray:
    fixed = fixed_background(kind)
    return rng.random(3).astype(np.float32) if fixed is None else fixed.numpy().astype(np.float32)


def resize_rgba(rgba: torch.Tensor, size: int) -> torch.Tensor:
    """[V,H,W,4] straight alpha in [0,1] -> [V,size,size,4] premultiplied (rgb*a, a), antialiased."""
    x = rgba.permute(0, 3, 1, 2)
    x = torch.cat([x[:, :3] * x[:, 3:], x[:, 3:]], 1)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0, 1).permute(0, 2, 3, 1)


def ray_distance(z: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """OpenCV z-depth [V, H, W] -> distance along the unit-length pixel-centre ray (the renderer's t)."""
    v, h, w = z.shape
    fx, fy, cx, cy = (np.asarray(intrinsics, np.float64)[:, i, None, None] for i in range(4))
    xs = ((np.arange(w) + 0.5) / w)[None, None, :]
    ys = ((np.arange(h) + 0.5) / h)[None, :, None]
    norm = np.sqrt(((xs - cx) / fx) ** 2 + ((ys - cy) / fy) ** 2 + 1.0)
    return (z * norm).astype(np.float32)


def hue_matrix(angle: float, saturation: float, gain: float) -> np.ndarray:
    """3x3 colour transform (applied as rgb @ M.T): rotate hue by ``angle`` radians about the grey axis,
    scale chroma by ``saturation``, then all channels by ``gain``. Grey stays grey (times ``gain``)."""
    a = np.ones(3) / np.sqrt(3.0)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    R = np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * (K @ K)  # Rodrigues
    P = np.outer(a, a)  # projection on grey
    return gain * (P + saturation * (R - P))


def random_color_transform(rng: np.random.Generator, p: float) -> Optional[np.ndarray]:
    if p <= 0 or rng.random() >= p:
        return None
    return hue_matrix(rng.uniform(-np.pi, np.pi), rng.uniform(0.5, 1.5), rng.uniform(0.75, 1.15)).astype(np.float32)


def _sample_points(sample: dict, M: torch.Tensor, n: int, m: int, rng: np.random.Generator,
                   color: Optional[np.ndarray]) -> dict:
    from .points import POINT_KEYS
    from .shards import _npy

    missing = [k for k in POINT_KEYS if k not in sample]
    if missing:
        raise MissingMembersError(
            f"sample {sample.get('__key__')} ({sample.get('__url__', '?')}) has no 3D points ({missing[0]}): a loss "
            "needs them. Add them with `lrm-build-data --add-points --out DIR` or set the occupancy/"
            "surface-colour loss weights to 0")
    R, t = M[:3, :3], M[:3, 3]
    out = {}
    if n > 0:
        pts, occ = _npy(sample["points.npy"]), _npy(sample["occupancy.npy"])
        idx = rng.choice(len(pts), n, replace=len(pts) < n)
        out["points"] = torch.from_numpy(pts[idx].astype(np.float32)) @ R.T + t
        out["occupancy"] = torch.from_numpy(occ[idx].astype(np.float32))
    if m != 0:
        sp, rgb = _npy(sample["surface.npy"]), _npy(sample["surface_rgb.npy"]).astype(np.float32) / 255.0
        # m < 0: all of them, in stored order and without a draw, so the views drawn after stay the same
        idx = np.arange(len(sp)) if m < 0 else rng.choice(len(sp), m, replace=len(sp) < m)
        rgb = rgb[idx]
        if color is not None:
            rgb = np.clip(rgb @ color.T, 0, 1)
        out["surface_points"] = torch.from_numpy(sp[idx].astype(np.float32)) @ R.T + t
        out["surface_rgb"] = torch.from_numpy(rgb.astype(np.float32))
    return out


def _depth_maps(sample: dict, idx, head: dict, size: int, alpha: torch.Tensor) -> torch.Tensor:
    """Ray-distance depth of views ``idx`` at ``size`` (coverage-weighted resize, 0 off the object)."""
    from .shards import decode_depth

    key = f"{idx[0]:03d}.depth.png"
    if key not in sample:
        raise MissingMembersError(f"sample {sample.get('__key__')} ({sample.get('__url__', '?')}) has no depth "
                                  "maps: the depth loss needs shards built with depth (lrm-build-data default)")
    d = torch.from_numpy(ray_distance(decode_depth(sample, idx, head["record"]), head["intrinsics"][idx]))
    x = torch.stack([d * alpha, alpha], 1)  # alpha: [V, H, W] straight, full resolution
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return torch.where(x[:, 1] > 1e-3, x[:, 0] / x[:, 1].clamp_min(1e-3), torch.zeros_like(x[:, 0]))


class _Decoder:
    def __init__(self, num_views_target, image_size, background, input_in_targets, view_kinds,
                 canonical_distance, seed, input_background=None, extras=None, num_input_views=1):
        self.k, self.size, self.bg, self.input_bg = num_views_target, image_size, background, input_background
        self.v = input_views_range(num_input_views)[1]  # the most views a batch asks for; batches trim
        self.input_in_targets, self.view_kinds = input_in_targets, tuple(view_kinds)
        self.distance, self.seed = canonical_distance, seed
        self.extras = dict(extras or {})
        self.rng = None

    def _draw(self, pool, n: int) -> List[int]:
        """``n`` views from ``pool``, without replacement when there are enough."""
        return [int(i) for i in self.rng.choice(pool, n, replace=len(pool) < n)] if n > 0 else []

    def _pick_views(self, kinds) -> Tuple[List[int], List[int]]:
        """(input views, the first defining the canonical frame; supervision views) of one sample."""
        cand = [i for i, k in enumerate(kinds) if k in self.view_kinds] or list(range(len(kinds)))
        inp = int(self.rng.choice(cand))
        others = [i for i in cand if i != inp] or [inp]
        inputs = [inp] + self._draw(others, self.v - 1)
        pool = [i for i in others if i not in inputs] or others  # supervise on views the model was not given
        if self.input_in_targets:
            return inputs, [inp] + self._draw(pool, self.k - 1)
        return inputs, self._draw(pool, self.k)

    def __call__(self, sample: dict) -> dict:
        try:
            return self.decode(sample)
        except MissingMembersError:
            raise  # not a corrupt sample: the whole set lacks what a loss needs (one clear error)
        except Exception as e:  # noqa: BLE001  named, then skipped by warn_and_skip
            raise sample_error(sample, e) from e

    def decode(self, sample: dict) -> dict:
        if self.rng is None:
            wid, _ = _worker()
            self.rng = np.random.default_rng([self.seed, wid, torch.initial_seed() % 2**31])
        head = decode_header(sample)
        inputs, targets = self._pick_views(head["record"].get("view_kind") or ["random"] * len(head["c2w"]))
        v = len(inputs)
        idx = inputs + targets
        rgba = np.stack([decode_png(sample[f"{i:03d}.png"]) for i in idx])
        rgba = torch.from_numpy(rgba).float() / 255.0
        color = random_color_transform(self.rng, float(self.extras.get("color_jitter", 0.0)))
        if color is not None:  # one transform for every view of the object (consistent across views)
            rgba[..., :3] = (rgba[..., :3] @ torch.from_numpy(color).T).clamp(0, 1)
        pm = resize_rgba(rgba, self.size)
        bg = torch.from_numpy(_background(self.bg, self.rng))
        rgb = pm[..., :3] + (1 - pm[..., 3:]) * bg
        if self.input_bg is not None:  # the input views on their own fixed colour (as inference composites them)
            ibg = torch.from_numpy(_background(self.input_bg, self.rng))
            rgb[:v] = pm[:v, ..., :3] + (1 - pm[:v, ..., 3:]) * ibg
        c2w = torch.from_numpy(head["c2w"][idx])
        K = torch.from_numpy(head["intrinsics"][idx])
        c2w_c, M = canonicalize(c2w, distance=self.distance)
        extra = {}
        n_pts, n_surf = int(self.extras.get("points", 0)), int(self.extras.get("surface_points", 0))
        if n_pts > 0 or n_surf != 0:  # surface_points -1: every stored sample
            extra.update(_sample_points(sample, M, n_pts, n_surf, self.rng, color))
        if self.extras.get("depth"):
            extra["target_depth"] = _depth_maps(sample, targets, head, self.size, rgba[v:, ..., 3]).contiguous()
        if self.extras.get("input_depth"):
            extra["input_depth"] = _depth_maps(sample, inputs[:1], head, self.size, rgba[:1, ..., 3])[0].contiguous()
        return {**extra,
            "input_images": rgb[:v].permute(0, 3, 1, 2).contiguous(),
            "input_cameras": camera_vector(c2w_c[:v], K[:v]),
            "target_rgb": rgb[v:].contiguous(),
            "target_mask": pm[v:, ..., 3].contiguous(),
            "target_c2w": c2w_c[v:].contiguous(),
            "target_intrinsics": K[v:].contiguous(),
            "background": bg,
            "uid": head["uid"],
        }


class _InputViews:
    """Pipeline stage after batching: each batch keeps the first V of its input views, V drawn from the batch's
    position in the stream (deterministic, so ``resume_mode=skip`` replays the same V)."""

    def __init__(self, spec, seed: int, rank: int, world_size: int):
        self.spec, self.seed, self.rank, self.world = spec, int(seed), int(rank), int(world_size)

    def __call__(self, batches):
        wid, nw = _worker()
        for k, batch in enumerate(batches):
            position = k * nw + wid  # the DataLoader takes batches from its workers in turn
            v = input_views_at(self.spec, self.seed, position * self.world + self.rank)
            yield trim_input_views(batch, v)


class _ShuffleBuffer:
    """Pipeline stage: shuffle the sample stream through a buffer of ``size`` (yielding once ``initial`` are held),
    with a generator seeded from (seed, rank, worker), so the same seed gives the same order on every run."""

    def __init__(self, size: int, initial: int, seed: int, rank: int):
        self.size, self.initial, self.seed, self.rank = int(size), max(1, min(int(initial), int(size))), seed, rank

    def __call__(self, samples):
        wid, _ = _worker()
        rng = random.Random((int(self.seed) * 1000003 + self.rank) * 1009 + wid)
        buf, it, end = [], iter(samples), object()

        def pop():
            i = rng.randrange(len(buf))
            buf[i], buf[-1] = buf[-1], buf[i]
            return buf.pop()

        for s in it:
            buf.append(s)
            if len(buf) < self.size:  # grow towards size: take one more for each one given out
                s = next(it, end)
                if s is not end:
                    buf.append(s)
            if len(buf) >= self.initial:
                yield pop()
        while buf:
            yield pop()


def _worker_init(_):
    import signal

    torch.set_num_threads(1)
    # A SIGTERM/SIGINT sent to the whole process group (Ctrl-C, SLURM, `kill -- -PGID`) must reach only the
    # trainer, which checkpoints and then shuts its workers down; a worker killed first would crash it.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(
    path_or_shards: Union[str, Sequence[str]],
    *,
    num_views_target: int = 4,
    image_size: int = 128,
    batch_size: int = 4,
    num_workers: int = 0,
    shuffle: bool = True,
    seed: int = 0,
    split: Optional[str] = "train",
    background="random",
    rank: int = 0,
    world_size: int = 1,
    repeat: bool = True,
    input_in_targets: bool = False,
    view_kinds: Sequence[str] = ("random",),
    canonical_distance: Optional[float] = None,
    shuffle_buffer: int = 64,
    drop_last: Optional[bool] = None,
    input_background=None,
    extras: Optional[dict] = None,
    num_input_views=1,
):
    """Iterable of training batches (see module docstring). ``path_or_shards``: dataset folder (uses its
    ``manifest.json`` and ``split``), a glob, a brace pattern, one ``.tar`` or a list of shard files.
    With ``repeat=True`` it never ends (epochs reshuffle shards); otherwise one pass, last batch partial
    unless ``drop_last``. ``num_input_views`` input views per object, the first defining the canonical frame: an
int, or ``[lo, hi]`` for a V per batch drawn from the batch's position (lrm/data/batch.py)."""
    import webdataset as wds

    urls = list_shards(path_or_shards, split)
    if not urls:
        raise FileNotFoundError(f"no shards found for {path_or_shards!r} (split={split!r})")
    reader = _Reader(urls, rank, world_size, shuffle, seed, repeat)
    stages = [reader]
    if shuffle and shuffle_buffer > 1:
        stages.append(_ShuffleBuffer(shuffle_buffer, shuffle_buffer // 4, seed, rank))
    dec = _Decoder(num_views_target, image_size, background, input_in_targets, view_kinds, canonical_distance, seed,
                   input_background, extras, num_input_views)
    stages.append(wds.map(dec, handler=warn_and_skip))
    partial = not (repeat if drop_last is None else drop_last)
    stages.append(wds.batched(batch_size, collation_fn=collate, partial=partial))
    lo, hi = input_views_range(num_input_views)
    if lo != hi:
        stages.append(_InputViews(num_input_views, seed, rank, world_size))
    pipeline = wds.DataPipeline(*stages)
    if num_workers == 0:
        return pipeline
    return wds.WebLoader(pipeline, batch_size=None, num_workers=num_workers, worker_init_fn=_worker_init,
                         persistent_workers=False)


def read_samples(path, split: Optional[str] = None, views: Optional[Sequence[int]] = None, depth: bool = True,
                 normals: bool = False) -> Iterator[dict]:
    """Decoded objects, one dict per sample: ``uid``, ``record``, ``rgba`` uint8 [V,H,W,4], ``c2w`` [V,4,4]
    (world frame of the normalised object), ``intrinsics`` [V,4], ``depth`` [V,H,W] when stored.
    Corrupt samples are skipped with a warning."""
    for s in iter_raw(list_shards(path, split), handler=warn_and_skip):
        try:
            yield decode_sample(s, views=views, depth=depth, normals=normals)
        except Exception as e:  # noqa: BLE001
            warn_and_skip(sample_error(s, e))
