"""The on-disk sample format (webdataset ``.tar`` shards), shared by the builder and the loader.

One sample = one object; tar member names are ``<uid>.<ext>`` (uids contain no dots):

================  =====================================================================================
``json``          record: uid, source, licence, split, ``normalization`` (4x4 applied to the source mesh),
                  resolution, fov_deg, distance, azimuth/elevation per view, ``view_kind`` per view
                  (``random`` | ``orbit``), light, ``depth_scale``
``cameras.npy``   c2w [V, 4, 4] float32, OpenCV axes, world frame of the normalised object
``intrinsics.npy`` [V, 4] float32, normalised ``[fx/W, fy/H, cx/W, cy/H]``
``NNN.png``       view NNN, RGBA uint8, straight alpha
``NNN.depth.png`` optional: camera z-depth as uint16 PNG, ``depth = value * depth_scale``, 0 = background
``NNN.normal.png`` optional: world normals as RGB uint8, ``n = 2 * value / 255 - 1``, alpha = coverage
================  =====================================================================================

Shard files are named ``<split>-<run>-<index>.tar`` (``train-r000-00003.tar``); ``manifest.json`` lists them.
"""
from __future__ import annotations

import hashlib
import io
import json
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
from PIL import Image

DEPTH_SCALE = 1e-4  # metres-free normalised units per uint16 step; max depth 6.55


def split_of(uid: str, val_fraction: float = 0.02, salt: str = "lrm-split-v1") -> str:
    """Stable train/val split from a hash of the uid (independent of order, machine and run)."""
    h = int.from_bytes(hashlib.sha256(f"{salt}:{uid}".encode()).digest()[:8], "big")
    return "val" if h / 2**64 < val_fraction else "train"


def uid_rng(uid: str, salt: str = "views") -> np.random.Generator:
    """A random generator seeded by a hash of the uid (stable across runs, machines and orders)."""
    return np.random.default_rng(int.from_bytes(hashlib.sha256(f"{salt}:{uid}".encode()).digest()[:8], "big"))


def png_bytes(arr: np.ndarray, compress_level: int = 1) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=compress_level)  # uint16 -> 16-bit PNG
    return buf.getvalue()


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def encode_sample(
    uid: str,
    rgba: np.ndarray,
    c2w: np.ndarray,
    intrinsics: np.ndarray,
    record: dict,
    depth: Optional[np.ndarray] = None,
    normals: Optional[np.ndarray] = None,
    compress_level: int = 1,
) -> Dict[str, bytes]:
    """A webdataset sample dict (``__key__`` + encoded members) from float renders."""
    assert "." not in uid, f"uid must not contain dots: {uid}"
    rgba8 = (np.clip(rgba, 0, 1) * 255 + 0.5).astype(np.uint8)
    s = {"__key__": uid}
    record = dict(record, uid=uid, num_views=int(len(rgba8)), depth_scale=DEPTH_SCALE if depth is not None else None)
    s["json"] = json.dumps(record).encode()
    s["cameras.npy"] = npy_bytes(np.asarray(c2w, np.float32))
    s["intrinsics.npy"] = npy_bytes(np.asarray(intrinsics, np.float32))
    for i in range(len(rgba8)):
        s[f"{i:03d}.png"] = png_bytes(rgba8[i], compress_level)
        if depth is not None:
            d = np.clip(np.round(depth[i] / DEPTH_SCALE), 0, 65535).astype(np.uint16)
            s[f"{i:03d}.depth.png"] = png_bytes(d, compress_level)
        if normals is not None:
            n = np.concatenate([(normals[i] + 1) * 127.5, rgba[i][..., 3:] * 255], -1)
            s[f"{i:03d}.normal.png"] = png_bytes(np.clip(n + 0.5, 0, 255).astype(np.uint8), compress_level)
    return s


# --------------------------------------------------------------------------------------------------
# Decoding (raw sample dicts as produced by webdataset.tarfile_to_samples: bytes values)
# --------------------------------------------------------------------------------------------------
def _npy(b: bytes) -> np.ndarray:
    return np.load(io.BytesIO(b), allow_pickle=False)


def decode_png(b: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(b)) as im:
        if im.mode in ("I;16", "I;16B", "I"):
            return np.asarray(im, dtype=np.uint16) if im.mode != "I" else np.asarray(im).astype(np.uint16)
        return np.asarray(im.convert("RGBA"))


def view_count(sample: dict) -> int:
    return sum(1 for k in sample if len(k) == 7 and k.endswith(".png") and k[:3].isdigit())


def decode_header(sample: dict) -> dict:
    """Record + cameras only (cheap); raises on missing/corrupt members."""
    rec = json.loads(sample["json"])
    c2w = _npy(sample["cameras.npy"]).astype(np.float32)
    K = _npy(sample["intrinsics.npy"]).astype(np.float32)
    n = rec.get("num_views", len(c2w))
    if c2w.shape != (n, 4, 4) or K.shape != (n, 4) or not np.isfinite(c2w).all():
        raise ValueError(f"bad camera arrays in sample {sample.get('__key__')}: {c2w.shape} {K.shape}")
    return {"uid": rec.get("uid", sample.get("__key__")), "record": rec, "c2w": c2w, "intrinsics": K}


def decode_depth(sample: dict, idx: Sequence[int], record: dict) -> np.ndarray:
    """Camera z-depth float32 [len(idx), H, W] of views ``idx`` (0 = background)."""
    scale = record.get("depth_scale") or DEPTH_SCALE
    return np.stack([decode_png(sample[f"{i:03d}.depth.png"]).astype(np.float32) * scale for i in idx])


def decode_sample(sample: dict, views: Optional[Sequence[int]] = None, depth: bool = True, normals: bool = False) -> dict:
    """Full decode: ``rgba`` uint8 [V,H,W,4], ``c2w``, ``intrinsics``, optional ``depth`` float32 [V,H,W]."""
    out = decode_header(sample)
    idx = list(range(len(out["c2w"]))) if views is None else list(views)
    out["rgba"] = np.stack([decode_png(sample[f"{i:03d}.png"]) for i in idx])
    out["views"] = np.asarray(idx)
    out["c2w"] = out["c2w"][idx]
    out["intrinsics"] = out["intrinsics"][idx]
    if depth and f"{idx[0]:03d}.depth.png" in sample:
        out["depth"] = decode_depth(sample, idx, out["record"])
    if normals and f"{idx[0]:03d}.normal.png" in sample:
        n = np.stack([decode_png(sample[f"{i:03d}.normal.png"]) for i in idx]).astype(np.float32)
        out["normals"] = n[..., :3] / 127.5 - 1.0
    return out


def list_shards(path, split: Optional[str] = None) -> List[str]:
    """Shard files for a dataset folder (``manifest.json`` order, else sorted glob), a file, a glob or a list."""
    import glob
    import os

    if isinstance(path, (list, tuple)):
        return [str(p) for p in path]
    path = str(path)
    if os.path.isdir(path):
        man = os.path.join(path, "manifest.json")
        if os.path.isfile(man):
            with open(man) as f:
                m = json.load(f)
            shards = m.get("shards", {})
            names = shards.get(split, []) if split else [s for v in shards.values() for s in v]
            files = [os.path.join(path, s) for s in names if os.path.isfile(os.path.join(path, s))]
            if files or split in shards:
                return files
        pat = f"{split}-*.tar" if split else "*.tar"
        return sorted(glob.glob(os.path.join(path, pat)))
    if any(c in path for c in "*?["):
        return sorted(glob.glob(path))
    if "{" in path:
        import braceexpand

        return list(braceexpand.braceexpand(path))
    return [path]


def iter_raw(shards: Iterable[str], handler=None):
    """Raw sample dicts from shard files (webdataset's tar reader; ``handler`` for corrupt tars)."""
    import webdataset as wds

    src = [{"url": s} for s in shards]
    kw = {"handler": handler} if handler is not None else {}
    yield from wds.tarfile_to_samples(**kw)(iter(src))
