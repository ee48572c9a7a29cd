"""The training batch, defined once: keys, shapes, backgrounds, collate and checks.

Both batch sources produce it — the shard loader (``lrm/data/loader.py``) and the synthetic source
(``lrm/training/synthetic.py``) — and the trainer consumes it (docs/conventions.md, "Training batch").
B objects, V input views, K supervision views, S×S images, N occupancy points, M surface samples:

    input_images      [B, V, 3, S, S]  input views composited on their background
    input_cameras     [B, V, 16]       camera_vector of each input camera in the canonical frame (that of view 0)
    target_rgb        [B, K, S, S, 3]  supervision views composited on `background`
    target_mask       [B, K, S, S]     their alpha
    target_c2w        [B, K, 4, 4]     supervision cameras (canonical frame)
    target_intrinsics [B, K, 4]        normalised intrinsics
    background        [B, 3]
    uid               list of B str
  optional (3D and depth supervision, when a loss asks for them):
    points            [B, N, 3]        occupancy query points (canonical frame)
    occupancy         [B, N]           1 inside, 0 outside
    surface_points    [B, M, 3]        surface samples (canonical frame)
    surface_rgb       [B, M, 3]        their colour as the views show it
    target_depth      [B, K, S, S]     ray distance of the visible surface, 0 off the object
    input_depth       [B, S, S]        the same for input view 0

V per batch: ``data.num_input_views`` is an int (every batch has V views) or a range ``[lo, hi]``: each batch then
has its own V, drawn uniformly in lo..hi by :func:`input_views_at` from ``(seed, key)`` alone, where the key is the
batch's position in the stream (``position * world_size + rank``), so a resumed run sees the same V at the same
step. Both sources decode ``hi`` views per object and keep the batch's first V (:func:`trim_input_views`); view 0,
which defines the canonical frame, is always kept.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

#: key -> shape pattern (letters are sizes shared across keys of one batch)
REQUIRED = {
    "input_images": "BV3SS", "input_cameras": "BV*", "target_rgb": "BKSS3", "target_mask": "BKSS",
    "target_c2w": "BK44", "target_intrinsics": "BK4", "background": "B3",
}
OPTIONAL = {
    "points": "BN3", "occupancy": "BN", "surface_points": "BM3", "surface_rgb": "BM3", "target_depth": "BKSS",
    "input_depth": "BSS",
}
NAMED_BACKGROUNDS = {"white": 1.0, "black": 0.0, "grey": 0.5, "gray": 0.5}

Background = Union[None, str, Sequence[float]]


def fixed_background(kind: Background) -> Optional[torch.Tensor]:
    """The colour [3] of a background setting, or None for ``"random"`` / None (the caller draws it).
    Settings: ``random``, ``white``, ``black``, ``grey`` or an RGB triple in [0, 1]."""
    if kind is None or (isinstance(kind, str) and kind == "random"):
        return None
    if isinstance(kind, str):
        if kind not in NAMED_BACKGROUNDS:
            raise ValueError(f"unknown background {kind!r} (random | white | black | grey | [r, g, b])")
        return torch.full((3,), NAMED_BACKGROUNDS[kind])
    c = torch.tensor([float(x) for x in kind])
    if c.shape != (3,):
        raise ValueError(f"a background colour needs 3 values, got {list(kind)!r}")
    return c


InputViews = Union[int, Sequence[int]]


def input_views_range(spec: InputViews) -> Tuple[int, int]:
    """``data.num_input_views`` -> (lo, hi): an int V gives (V, V), a pair [lo, hi] a range (1 <= lo <= hi)."""
    if hasattr(spec, "__len__") and not isinstance(spec, str):
        vals = list(spec)
        if len(vals) != 2:
            raise ValueError(f"data.num_input_views must be an int or [lo, hi], got {vals!r}")
    else:
        vals = [spec, spec]
    try:
        lo, hi = (int(v) for v in vals)
        if any(float(v) != int(v) for v in vals):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"data.num_input_views must hold whole numbers, got {spec!r}") from None
    if not 1 <= lo <= hi <= 64:
        raise ValueError(f"data.num_input_views must satisfy 1 <= lo <= hi <= 64, got {spec!r}")
    return lo, hi


def input_views_at(spec: InputViews, seed: int, key: int) -> int:
    """The number of input views of the batch at stream position ``key`` (see the module docstring): uniform in
    the range of ``spec``, a pure function of ``(seed, key)``."""
    import numpy as np

    lo, hi = input_views_range(spec)
    if lo == hi:
        return lo
    rng = np.random.default_rng([int(seed) & 0x7FFFFFFF, int(key) & 0x7FFFFFFFFFFF, 0x5EED71E5])
    return int(rng.integers(lo, hi + 1))


def trim_input_views(batch: Dict, v: int) -> Dict:
    """The batch with only its first ``v`` input views (``input_images`` / ``input_cameras``)."""
    if batch["input_images"].shape[1] == v:
        return batch
    out = dict(batch)
    out["input_images"] = batch["input_images"][:, :v].contiguous()
    out["input_cameras"] = batch["input_cameras"][:, :v].contiguous()
    return out


def collate(samples: List[dict]) -> dict:
    """Stack per-object samples into a batch (``uid`` as a list; webdataset's ``__key__``-style keys dropped)."""
    keys = [k for k in samples[0] if k != "uid" and not k.startswith("__")]
    out = {k: torch.stack([s[k] for s in samples]) for k in keys}
    out["uid"] = [s["uid"] for s in samples]
    return out


def check_batch(batch: Dict) -> Optional[str]:
    """None when a batch follows the contract (keys, tensors, consistent shapes, finite values), else why not."""
    missing = [k for k in REQUIRED if k not in batch]
    if missing:
        return f"missing keys {missing}"
    sizes: Dict[str, int] = {}
    for k, pattern in {**REQUIRED, **OPTIONAL}.items():
        if k not in batch:
            continue
        v = batch[k]
        if not torch.is_tensor(v):
            return f"{k} is not a tensor"
        if v.is_floating_point() and not torch.isfinite(v).all():
            return f"{k} has non-finite values"
        if "*" in pattern:
            pattern = pattern.replace("*", "")
            shape = v.shape[:len(pattern)]
        else:
            shape = v.shape
            if len(shape) != len(pattern):
                return f"{k} has shape {tuple(v.shape)}, expected [{', '.join(pattern)}]"
        for size, letter in zip(shape, pattern):
            want = int(letter) if letter.isdigit() else sizes.setdefault(letter, int(size))
            if int(size) != want:
                return f"{k} has shape {tuple(v.shape)}, inconsistent with [{', '.join(pattern)}] ({letter}={want})"
    return None
