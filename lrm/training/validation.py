"""Validation metrics of a model over a whole held-out split (the numbers quoted for shipped checkpoints).

    python -m lrm.training.validation checkpoints/default [--data data/shards/default] [--views 4]
        [--resolution 64] [--limit N] [--json out.json]

The trainer logs PSNR / mask IoU on one fixed batch of a few validation objects as it goes; this pass covers
every object of the ``val`` split: per object one input view and ``--views`` other (novel) views, drawn by
the training loader's decoder with a fixed seed (so every model is scored on the same views), white
background, full images at ``--resolution``. PSNR is computed per object and averaged; mask IoU is the
opacity > 0.5 vs alpha > 0.5 IoU per object, averaged.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Dict, Optional

import torch

log = logging.getLogger("lrm.validation")


@torch.no_grad()
def evaluate_split(model, data: str, views: int = 4, resolution: int = 64, image_size: int = 64,
                   limit: Optional[int] = None, seed: int = 1234, progress: bool = True) -> Dict:
    from tqdm import tqdm

    from lrm.data import make_loader

    from .trainer import validate

    loader = make_loader(data, num_views_target=views, image_size=image_size, batch_size=1, num_workers=0,
                         shuffle=False, seed=seed, split="val", background="white", repeat=False)
    rows = []
    for batch in tqdm(loader, desc="val objects", disable=not progress, total=limit):
        out = validate(model, batch, resolution, views)
        rows.append({"uid": batch["uid"][0], "psnr": float(out["psnr"]), "mask_iou": float(out["mask_iou"])})
        if limit and len(rows) >= limit:
            break
    if not rows:
        raise ValueError(f"no validation objects in {data}")
    mean = lambda k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    return {"objects": len(rows), "views_per_object": views, "resolution": resolution,
            "psnr": mean("psnr"), "mask_iou": mean("mask_iou"), "per_object": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="exported model folder (model.safetensors + config.yaml)")
    p.add_argument("--data", default="data/shards/default", help="shards folder with a val split")
    p.add_argument("--views", type=int, default=4, help="novel views per object")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--limit", type=int, default=None, help="at most this many objects")
    p.add_argument("--json", default=None, help="also write the result (with per-object rows) here")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from lrm.checkpoint import CheckpointError, load_checkpoint

    try:
        model, cfg = load_checkpoint(a.model)
        res = evaluate_split(model, a.data, a.views, a.resolution, int(cfg.get("data", {}).get("image_size", 64)),
                             a.limit)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{a.model}: {res['objects']} val objects x {a.views} novel views at {a.resolution}^2: "
          f"PSNR {res['psnr']:.2f} dB, mask IoU {res['mask_iou']:.3f}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
