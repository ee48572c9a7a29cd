"""Validation metrics of a model over a whole held-out split (the numbers quoted for shipped checkpoints).

    python -m lrm.training.validation checkpoints/default [--data data/shards/default] [--views 4]
        [--resolution 64] [--limit N] [--json out.json]

The trainer logs PSNR / mask IoU on one fixed batch of a few validation objects as it goes; this pass covers
every object of the ``val`` split: per object one input view and ``--views`` other (novel) views, drawn by
the training loader's decoder with a fixed seed (so every model is scored on the same views), white
background, full images at ``--resolution``. PSNR is computed per object and averaged; mask IoU is the
opacity > 0.5 vs alpha > 0.5 IoU per object, averaged. ``--mesh-thresholds 1,2,5`` also extracts the mesh at
each density level (marching cubes on a 65³ grid; ``--mesh-resolution``) and scores its rasterised silhouette the
same way; ``--mesh-surface`` also scores the mesh's surface against the shards' stored surface samples (Chamfer,
F@0.02 / 0.05 in world units, as lrm.evaluate defines them), and ``--field-smooth 0,0.01`` repeats it all on the
log-density field smoothed at each width (``infer.field_smooth``): the held-out split on which mesh settings are
chosen, so that data/eval/dev stays a test set.
``--refine-steps N`` first refines each object's scene on its input view (reference losses, lrm/refine) and scores
the refined scene (the surface level for refined meshes is chosen with it).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .data import VAL_SEED


def mesh_silhouette_ious(model, triplane, c2w, intrinsics, masks, thresholds: Sequence[float],
                         mc_resolution: int = 65) -> List[float]:
    """For each density threshold: marching-cubes mesh of the triplane, rasterised at the views' cameras
    (c2w [V, 4, 4], intrinsics [V, 4]), silhouette IoU against ``masks`` [V, H, W] (pooled over the views)."""
    rows = mesh_scores(model, triplane, c2w, intrinsics, masks, thresholds, mc_resolution)
    return [rows[0.0][float(t)]["silhouette_iou"] for t in thresholds]


def mesh_scores(model, triplane, c2w, intrinsics, masks, thresholds: Sequence[float], mc_resolution: int = 65,
                field_smooth: Sequence[float] = (0.0,), surface: Optional[np.ndarray] = None) -> Dict:
    """Scores of the marching-cubes mesh at each (field smoothing, density level): {sigma: {level: {...}}}.

    ``field_smooth``: Gaussian widths in world units of the log-density smoothing before marching cubes
    (lrm.mesh.smooth_log_density; ``infer.field_smooth``). Each mesh is rasterised at the views' cameras and its
    silhouette scored against ``masks`` ("silhouette_iou"); with ``surface`` ([M, 3] samples of the true surface in
    the model's frame, from the shards' 3D points) also Chamfer and F@0.02 / 0.05 in world units, as the evaluation
    harness defines them (lrm.evaluate.metrics)."""
    from lrm.evaluate.metrics import chamfer_fscore, sample_surface
    from lrm.mesh import build_trimesh, density_grid, marching_cubes, smooth_log_density, smoothing_cells
    from lrm.render.raster import render_mesh

    from ..image_metrics import mask_iou

    radius = float(model.cfg.render.radius)
    # dense: a narrow band follows one level, and the others would be cut from interpolated values
    grid, _ = density_grid(lambda p: model.query(triplane, p[None])["density"][0], mc_resolution, radius,
                           threshold=float(min(thresholds)), coarse_factor=1)
    res = masks.shape[-1]
    out: Dict = {}
    for sigma in field_smooth:
        g = smooth_log_density(grid, smoothing_cells(sigma, mc_resolution, radius))
        for th in thresholds:
            row = out.setdefault(float(sigma), {})[float(th)] = {"silhouette_iou": 0.0, "empty": 1.0}
            if surface is not None:  # an empty mesh: F-scores 0, Chamfer undefined (as the evaluation harness)
                row.update({"fscore@0.02": 0.0, "fscore@0.05": 0.0})
            verts, faces = marching_cubes(g, th, radius)
            mesh = build_trimesh(verts, faces) if len(faces) else None
            if mesh is None or mesh.area <= 0:
                continue
            row["empty"] = 0.0
            sil = np.stack([render_mesh(mesh, c2w[i], intrinsics[i], res)[0][..., 3] for i in range(len(c2w))])
            row["silhouette_iou"] = mask_iou(sil, masks)
            if surface is not None:
                s = chamfer_fscore(sample_surface(mesh), np.asarray(surface, np.float64), (0.02, 0.05))
                row.update({k: s[k] for k in ("chamfer", "fscore@0.02", "fscore@0.05")})
    return out


@torch.no_grad()
def evaluate_split(model, data: str, views: int = 4, resolution: int = 64, image_size: int = 64,
                   limit: Optional[int] = None, seed: int = VAL_SEED, progress: bool = True,
                   mesh_thresholds: Sequence[float] = (), refine=None, split: str = "val",
                   input_depth: bool = False, mesh_resolution: int = 65, field_smooth: Sequence[float] = (0.0,),
                   mesh_surface: bool = False) -> Dict:
    """Every val object scored as the module docstring says; ``refine`` (a ``RefineConfig``, mode ref: no prior)
    refines each object's scene on its input view first and scores the refined scene. ``input_depth``: also the L1
    (cube radii) of pixel-plane channel 3 against the input view's depth offsets (models trained with
    ``train.loss.input_depth``). ``mesh_resolution``, ``field_smooth`` and ``mesh_surface`` (score the meshes' surface
    against the shards' surface samples too): :func:`mesh_scores`."""
    from tqdm import tqdm

    from lrm.data import make_loader

    from .trainer import validate

    with torch.random.fork_rng():
        torch.manual_seed(seed)  # the loader's view choice also depends on torch.initial_seed()
        batches = list(_take(make_loader(data, num_views_target=views, image_size=image_size, batch_size=1,
                                         num_workers=0, shuffle=False, seed=seed, split=split, background="white",
                                         repeat=False, extras=_extras(input_depth, mesh_surface)),
                             limit))
    rows = []
    for batch in tqdm(batches, desc=f"{split} objects", disable=not progress):
        if refine is None:
            out = validate(model, batch, resolution, views)
        else:  # only the refined scene is rendered and scored
            was = model.training
            tri = model.eval()(batch["input_images"], batch["input_cameras"])
            model.train(was)
            out = validate(model, batch, resolution, views, refined_triplane(model, batch, tri, refine))
        rows.append({"uid": batch["uid"][0], "psnr": float(out["psnr"]), "mask_iou": float(out["mask_iou"])})
        if input_depth:
            rows[-1]["input_depth_l1"] = input_depth_error(model, batch, out["triplane"])
        if mesh_thresholds:
            surface = batch["surface_points"][0].numpy() if mesh_surface else None
            m = mesh_scores(model, out["triplane"], batch["target_c2w"][0, :views],
                            batch["target_intrinsics"][0, :views], out["target_mask"][0], mesh_thresholds,
                            mesh_resolution, field_smooth, surface)
            rows[-1]["mesh"] = m
            rows[-1]["mesh_iou"] = {t: r["silhouette_iou"] for t, r in m[float(field_smooth[0])].items()}
    if not rows:
        raise ValueError(f"no {split} objects in {data}")
    mean = lambda k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    result = {"objects": len(rows), "views_per_object": views, "resolution": resolution,
              "psnr": mean("psnr"), "mask_iou": mean("mask_iou")}
    if input_depth:
        result["input_depth_l1"] = mean("input_depth_l1")
    if mesh_thresholds:
        result["mesh_iou"] = {float(t): sum(r["mesh_iou"][float(t)] for r in rows) / len(rows) for t in mesh_thresholds}
        result["mesh_resolution"] = int(mesh_resolution)
        result["mesh"] = {sig: {t: _mean_scores([r["mesh"][sig][t] for r in rows]) for t in levels}
                          for sig, levels in rows[0]["mesh"].items()}
    result["per_object"] = rows
    return result


def _mean_scores(cells: List[Dict]) -> Dict:
    """Means over objects of each score; a score absent for some objects (Chamfer of an empty mesh) is the mean of
    those that have it; ``empty`` becomes the number of objects whose mesh was empty."""
    keys = sorted({k for c in cells for k in c})
    out = {k: float(np.mean([c[k] for c in cells if k in c])) for k in keys if k != "empty"}
    out["empty"] = int(sum(c.get("empty", 0) for c in cells))
    return out


def _extras(input_depth: bool, surface: bool) -> Optional[Dict]:
    extras = {}
    if input_depth:
        extras["input_depth"] = True
    if surface:
        extras["surface_points"] = -1  # every sample the shard stores, without a draw (the views stay the same)
    return extras or None


def input_depth_error(model, batch: Dict, triplane: torch.Tensor) -> float:
    """L1 (cube radii) between pixel-plane channel 3 and the input view's depth offsets on the cells the object
    covers (the ``train.loss.input_depth`` term, lrm/training/losses.py)."""
    from .lrm_task import input_depth_targets
    from .losses import input_depth_l1

    t = input_depth_targets(batch, triplane, model.cfg)
    return float(input_depth_l1(t["predicted_input_depth"], *t["input_depth"]))


@torch.enable_grad()
def refined_triplane(model, batch: Dict, triplane: torch.Tensor, cfg) -> torch.Tensor:
    """The scene refined on the batch's input view (lrm/refine; the mask is estimated from the white background,
    the input camera is the canonical one the loader gives)."""
    from lrm.refine import refine

    image = batch["input_images"][0, 0].permute(1, 2, 0).float().numpy()
    return refine(triplane.detach(), model, image, None, cfg, progress=False).triplane.to(triplane.device)


def _take(it, limit: Optional[int]):
    for i, x in enumerate(it):
        if limit and i >= limit:
            return
        yield x


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="exported model folder (model.safetensors + config.yaml)")
    p.add_argument("--data", default="data/shards/default", help="shards folder with a val split")
    p.add_argument("--split", default="val",
                   help="split to score: val (held out), or train to tell under-fitting from poor generalisation")
    p.add_argument("--views", type=int, default=4, help="novel views per object")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--limit", type=int, default=None, help="at most this many objects")
    p.add_argument("--json", default=None, help="also write the result (with per-object rows) here")
    p.add_argument("--mesh-thresholds", default="",
                   help="comma-separated density levels: also score the marching-cubes mesh's silhouette IoU at "
                        "each (to choose the checkpoint's infer.mc_threshold)")
    p.add_argument("--mesh-resolution", type=int, default=65,
                   help="marching-cubes grid points per side for --mesh-thresholds (65: dense; more: narrow band)")
    p.add_argument("--field-smooth", default="0",
                   help="comma-separated widths (world units) of the log-density smoothing before marching cubes "
                        "(infer.field_smooth); the meshes are scored for each; the first gives mesh_iou")
    p.add_argument("--mesh-surface", action="store_true",
                   help="also score each mesh's surface against the shards' surface samples (Chamfer, F@0.02, F@0.05 "
                        "in world units; needs shards with 3D points)")
    p.add_argument("--refine-steps", type=int, default=0,
                   help="> 0: refine each scene on its input view with the reference losses (lrm/refine, mode ref) "
                        "for this many steps before scoring (e.g. to choose the level for refined meshes)")
    p.add_argument("--input-depth", action="store_true",
                   help="also score the pixel plane's channel 3 against the input view's depth (L1 in cube radii; "
                        "models trained with train.loss.input_depth)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from lrm.checkpoint import CheckpointError, load_checkpoint

    try:
        model, cfg = load_checkpoint(a.model)
        thresholds = [float(t) for t in a.mesh_thresholds.split(",") if t.strip()]
        refine = None
        if a.refine_steps > 0:
            from lrm.refine import RefineConfig

            refine = RefineConfig(mode="ref", steps=a.refine_steps, save_every=0, level="checkpoint")
        smooths = [float(x) for x in a.field_smooth.split(",") if x.strip()] or [0.0]
        if any(x < 0 for x in smooths):
            raise ValueError(f"--field-smooth widths must be >= 0, got {a.field_smooth}")
        if a.mesh_surface and not thresholds:
            raise ValueError("--mesh-surface scores meshes: give their levels with --mesh-thresholds")
        res = evaluate_split(model, a.data, a.views, a.resolution, int(cfg.get("data", {}).get("image_size", 64)),
                             a.limit, mesh_thresholds=thresholds, refine=refine, split=a.split,
                             input_depth=a.input_depth, mesh_resolution=a.mesh_resolution,
                             field_smooth=smooths,
                             mesh_surface=a.mesh_surface)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{a.model}: {res['objects']} {a.split} objects x {a.views} novel views at {a.resolution}^2: "
          f"PSNR {res['psnr']:.2f} dB, mask IoU {res['mask_iou']:.3f}")
    if "input_depth_l1" in res:
        print(f"  input-view depth (pixel-plane channel 3): L1 {res['input_depth_l1']:.4f} cube radii")
    for sig, levels in res.get("mesh", {}).items():
        for th, r in levels.items():
            extra = "".join(f", {k} {r[k]:.4f}" for k in ("chamfer", "fscore@0.02", "fscore@0.05") if k in r)
            extra += f", {r['empty']} empty" if r.get("empty") else ""
            smooth = f" (field smoothed, sigma {sig:g})" if sig else ""
            print(f"  mesh at density {th:g}{smooth}: silhouette IoU {r['silhouette_iou']:.3f}{extra}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
