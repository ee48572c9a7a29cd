"""Convert between our shards and the common "one folder per object" render layout of existing Objaverse
render dumps::

    <root>/<uid>/rgba/000.png ...      RGBA renders (straight alpha)
    <root>/<uid>/pose/000.npy ...      one camera per view, 4x4 (or 3x4, bottom row implied)
    <root>/<uid>/intrinsics.npy        optional: [V, 4] or [4] normalised [fx/W, fy/H, cx/W, cy/H]
    <root>/<uid>/record.json           optional: our JSON record (written by ``shards_to_folders``)

Pose convention (``convention``), assumed default ``c2w_opengl``: camera-to-world with Blender/OpenGL
camera axes (x right, y up, looking down -z), i.e. Blender's ``camera.matrix_world``, world +Z up. The
alternatives are ``c2w_opencv`` (our own convention) and ``w2c_opencv`` (3x4 ``[R|t]`` world-to-camera with
OpenCV axes, as written by Zero123-style scripts). Intrinsics default to a ``fov_deg`` (vertical) pinhole
centred camera when no ``intrinsics.npy`` is present. Objects in such dumps are normalised by their own
rules; ``scale`` multiplies camera positions so the object matches ours (longest side 1.0) when known.

Command line (``python -m lrm.data.layout``)::

    python -m lrm.data.layout to-folders   data/shards/default /tmp/dump [--convention c2w_opengl]
    python -m lrm.data.layout from-folders /path/to/dump data/shards/imported [--convention ...] [--fov 40]
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from ..conventions import CANONICAL_FOV_DEG
from .shards import decode_png, encode_sample, list_shards, npy_bytes  # noqa: F401

CONVENTIONS = ("c2w_opengl", "c2w_opencv", "w2c_opencv")
_FLIP = np.diag([1.0, -1.0, -1.0, 1.0])


def _to4(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    if m.shape == (3, 4):
        m = np.concatenate([m, [[0, 0, 0, 1]]], 0)
    if m.shape != (4, 4):
        raise ValueError(f"pose must be 3x4 or 4x4, got {m.shape}")
    return m


def _convert(m: np.ndarray, convention: str) -> np.ndarray:
    """Each convention's map is its own inverse (flip camera y and z; identity; matrix inverse), so one function
    goes both ways between a stored pose and our OpenCV camera-to-world."""
    if convention == "c2w_opengl":
        return m @ _FLIP
    if convention == "c2w_opencv":
        return m
    if convention == "w2c_opencv":
        return np.linalg.inv(m)
    raise ValueError(f"unknown pose convention {convention!r}; one of {CONVENTIONS}")


def pose_to_c2w(pose: np.ndarray, convention: str = "c2w_opengl") -> np.ndarray:
    """A stored pose -> our OpenCV camera-to-world."""
    return _convert(_to4(pose), convention)


def c2w_to_pose(c2w: np.ndarray, convention: str = "c2w_opengl") -> np.ndarray:
    """Our OpenCV camera-to-world -> the stored pose (3x4 ``[R|t]`` for ``w2c_opencv``)."""
    m = _convert(_to4(c2w), convention)
    return m[:3] if convention == "w2c_opencv" else m


def shards_to_folders(path, out, convention: str = "c2w_opengl", split: Optional[str] = None) -> int:
    """Write every sample of a shard set as ``<out>/<uid>/{rgba,pose}/NNN.*``; returns the object count."""
    from .loader import read_samples
    from PIL import Image

    out = Path(out)
    n = 0
    for s in read_samples(path, split=split, depth=False):
        d = out / s["uid"]
        (d / "rgba").mkdir(parents=True, exist_ok=True)
        (d / "pose").mkdir(parents=True, exist_ok=True)
        for i, (img, c2w) in enumerate(zip(s["rgba"], s["c2w"])):
            Image.fromarray(img).save(d / "rgba" / f"{i:03d}.png")
            np.save(d / "pose" / f"{i:03d}.npy", c2w_to_pose(c2w, convention).astype(np.float32))
        np.save(d / "intrinsics.npy", s["intrinsics"].astype(np.float32))
        (d / "record.json").write_text(json.dumps(dict(s["record"], pose_convention=convention)))
        n += 1
    return n


def folders_to_shards(root, out, convention: str = "c2w_opengl", fov_deg: float = CANONICAL_FOV_DEG, scale: float = 1.0,
                      shard_size: int = 64, val_fraction: float = 0.02, licence: str = "unknown (render dump)") -> dict:
    """Pack a folder-per-object render dump into our shards + manifest (no re-rendering)."""
    import webdataset as wds

    from ..cameras import intrinsics_from_fov
    from .shards import split_of

    root, out = Path(root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    writers, names, counts, skipped = {}, {}, {}, []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        uid = "".join(c if (c.isalnum() or c in "_-") else "_" for c in d.name)
        try:
            imgs = sorted((d / "rgba").glob("*.png"))
            if not imgs:
                raise ValueError("no rgba/*.png")
            rgba = np.stack([decode_png(p.read_bytes()) for p in imgs]).astype(np.float32) / 255.0
            c2w = np.stack([pose_to_c2w(np.load(d / "pose" / (p.stem + ".npy")), convention) for p in imgs])
            c2w[:, :3, 3] *= scale
            if (d / "intrinsics.npy").is_file():
                K = np.load(d / "intrinsics.npy").reshape(-1, 4)
                K = np.repeat(K, len(imgs), 0) if len(K) == 1 else K
            else:
                K = intrinsics_from_fov(fov_deg).expand(len(imgs), 4).numpy()
            rec = json.loads((d / "record.json").read_text()) if (d / "record.json").is_file() else {}
            split = split_of(uid, val_fraction)
            rec.update(split=split, source=rec.get("source", "render-dump"), licence=rec.get("licence", licence),
                       imported_from=str(d), pose_convention=convention, scale=scale)
            rec.setdefault("view_kind", ["random"] * len(imgs))
            sample = encode_sample(uid, rgba, c2w.astype(np.float32), K.astype(np.float32), rec)
        except Exception as e:  # noqa: BLE001
            skipped.append({"uid": uid, "reason": f"{type(e).__name__}: {e}"[:200]})
            continue
        if split not in writers or counts[split] % shard_size == 0 and counts[split] > 0:
            if split in writers:
                writers[split].close()
            name = f"{split}-imp-{counts.get(split, 0) // shard_size:05d}.tar"
            writers[split] = wds.TarWriter(str(out / name))
            names.setdefault(split, []).append(name)
        writers[split].write(sample)
        counts[split] = counts.get(split, 0) + 1
    for w in writers.values():
        w.close()
    man = {"format": "lrm-multiview-v1", "shards": names, "counts": dict(counts, objects=sum(counts.values())),
           "skipped": skipped, "imported_from": str(root), "pose_convention": convention}
    (out / "manifest.json").write_text(json.dumps(man, indent=1))
    return man


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m lrm.data.layout", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("direction", choices=["to-folders", "from-folders"])
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--convention", default="c2w_opengl", choices=CONVENTIONS)
    p.add_argument("--fov", type=float, default=CANONICAL_FOV_DEG, help="vertical FoV when a folder has no intrinsics.npy")
    p.add_argument("--scale", type=float, default=1.0, help="multiply camera positions (dump units -> ours)")
    p.add_argument("--split", default=None)
    a = p.parse_args(argv)
    if a.direction == "to-folders":
        print(shards_to_folders(a.src, a.dst, a.convention, a.split), "objects written")
    else:
        m = folders_to_shards(a.src, a.dst, a.convention, a.fov, a.scale)
        print(m["counts"], "skipped:", len(m["skipped"]))


if __name__ == "__main__":
    main()
