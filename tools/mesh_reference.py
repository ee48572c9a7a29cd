"""The shipped default checkpoint's mesh for examples/duck.png, as a regression reference.

    python tools/mesh_reference.py            # compare with tests/data/default_mesh_reference.npz
    python tools/mesh_reference.py --write    # (re)write it: only after retraining the default checkpoint

A refactor of the inference path must not change the mesh (tests/test_mesh_reference.py: same faces, vertices
within 1e-5). The file records the checkpoint's SHA-256, so a retrained checkpoint is told apart from a
regression. Options are fixed here (not the checkpoint's infer section) so the reference only moves with code.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "tests" / "data" / "default_mesh_reference.npz"
IMAGE = ROOT / "examples" / "duck.png"
OPTIONS = dict(mc_resolution=65, mc_threshold=8.0, coarse_factor=4, foreground_ratio=0.7, precision="fp32")


def checkpoint_sha256() -> str:
    from lrm.checkpoint import DEFAULT_CHECKPOINT

    return hashlib.sha256((Path(DEFAULT_CHECKPOINT) / "model.safetensors").read_bytes()).hexdigest()


def current_mesh():
    """(vertices [N, 3] float64, faces [M, 3] int64, vertex colours [N, 3] float64) from the default checkpoint."""
    import torch
    from PIL import Image

    from lrm.pipeline import Pipeline

    torch.manual_seed(0)
    res = Pipeline.from_pretrained(device="cpu", **OPTIONS).run(np.asarray(Image.open(IMAGE)))
    colours = np.asarray(res.mesh.visual.vertex_colors)[:, :3].astype(np.float64) / 255.0
    return np.asarray(res.mesh.vertices, np.float64), np.asarray(res.mesh.faces, np.int64), colours


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="write the reference (after retraining the checkpoint)")
    args = ap.parse_args(argv)
    v, f, c = current_mesh()
    if args.write:
        REFERENCE.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(REFERENCE, vertices=v, faces=f, colours=c, checkpoint_sha256=np.array(checkpoint_sha256()))
        print(f"wrote {REFERENCE.relative_to(ROOT)}: {len(v)} vertices, {len(f)} faces")
        return 0
    ref = np.load(REFERENCE)
    same = ref["faces"].shape == f.shape and (ref["faces"] == f).all() and np.abs(ref["vertices"] - v).max() <= 1e-5
    print(f"{len(v)} vertices, {len(f)} faces: {'same mesh' if same else 'DIFFERENT mesh'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
