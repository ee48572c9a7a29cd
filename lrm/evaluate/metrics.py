"""Metrics of the evaluation protocol (docs/evaluation.md, /work/shared conventions).

Geometry (canonical frame, normalised units):
* ``sample_surface``: 10,000 area-weighted surface samples, fixed seed.
* ``chamfer_fscore``: Chamfer = 1/2 (mean NN distance pred->GT + GT->pred), L2, not squared; F-score at
  tau in {0.02, 0.05, 0.1} with precision = share of pred samples within tau of GT samples, recall the reverse.
* ``volume_iou``: occupancy at the cell centres of a 64^3 grid over [-R, R]^3, inside = generalised winding
  number >= 0.5 (libigl ``fast_winding_number``; trimesh's ray-parity ``contains`` only as a stated fallback).

Images (float RGB in [0, 1] composited on white, masks from alpha >= 0.5): PSNR, SSIM (scikit-image defaults:
7x7 uniform window, data range 1, per channel), mask IoU. LPIPS only when a local implementation with weights is
available (it never downloads): otherwise reported as skipped.
"""
from __future__ import annotations

import logging
from typing import Dict, Optional, Sequence

import numpy as np
from scipy.spatial import cKDTree

from ..conventions import CUBE_RADIUS
from ..image_metrics import mask_iou, psnr  # noqa: F401 (the harness's image metrics; one definition)

log = logging.getLogger(__name__)

N_SURFACE_SAMPLES = 10_000
FSCORE_TAUS = (0.02, 0.05, 0.1)
IOU_RESOLUTION = 64
RADIUS = CUBE_RADIUS
SEED = 0


# ------------------------------------------------------------------------------------------ geometry
def sample_surface(mesh, n: int = N_SURFACE_SAMPLES, seed: int = SEED) -> np.ndarray:
    """``n`` area-weighted surface samples [n, 3] (float64) with a fixed seed."""
    import trimesh

    if mesh is None or len(mesh.faces) == 0 or mesh.area <= 0:
        raise ValueError("empty mesh (no surface to sample)")
    pts, _ = trimesh.sample.sample_surface(mesh, n, seed=seed)
    return np.asarray(pts, np.float64)


def chamfer_fscore(pred_pts: np.ndarray, gt_pts: np.ndarray, taus: Sequence[float] = FSCORE_TAUS) -> Dict[str, float]:
    """Chamfer distance and F-scores between two point sets (see module docstring)."""
    d_pg, _ = cKDTree(gt_pts).query(pred_pts, k=1)
    d_gp, _ = cKDTree(pred_pts).query(gt_pts, k=1)
    out = {"chamfer": float(0.5 * (d_pg.mean() + d_gp.mean())),
           "chamfer_pred_to_gt": float(d_pg.mean()), "chamfer_gt_to_pred": float(d_gp.mean())}
    for tau in taus:
        p = float((d_pg < tau).mean())
        r = float((d_gp < tau).mean())
        out[f"fscore@{tau:g}"] = 0.0 if p + r == 0 else 2 * p * r / (p + r)
        out[f"precision@{tau:g}"] = p
        out[f"recall@{tau:g}"] = r
    return out


def grid_points(resolution: int = IOU_RESOLUTION, radius: float = RADIUS) -> np.ndarray:
    """Cell centres of a ``resolution``^3 grid over [-radius, radius]^3, [res^3, 3], x-major (ij indexing)."""
    c = (np.arange(resolution) + 0.5) / resolution * 2 * radius - radius
    return np.stack(np.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)


_WARNED = {"parity": False}


def occupancy(mesh, points: np.ndarray) -> tuple[np.ndarray, str]:
    """Inside test for ``points``: (bool [N], method name). Winding number >= 0.5 via libigl when installed."""
    if mesh is None or len(mesh.faces) == 0:
        return np.zeros(len(points), bool), "empty"
    try:
        import igl

        w = igl.fast_winding_number(np.ascontiguousarray(mesh.vertices, np.float64),
                                    np.ascontiguousarray(mesh.faces, np.int64), np.ascontiguousarray(points, np.float64))
        return np.asarray(w) >= 0.5, "winding_number"
    except ImportError:
        if not _WARNED["parity"]:
            _WARNED["parity"] = True
            log.warning("libigl not installed: volume IoU falls back to ray parity (wrong on open meshes); "
                        "pip install libigl")
        return np.asarray(mesh.contains(points), bool), "ray_parity"


def volume_iou(pred_mesh, gt_mesh, resolution: int = IOU_RESOLUTION, radius: float = RADIUS,
               gt_occupancy: Optional[np.ndarray] = None) -> Dict[str, object]:
    """IoU of the two meshes' occupancies on the protocol grid (``gt_occupancy`` may be precomputed)."""
    pts = grid_points(resolution, radius)
    occ_p, how = occupancy(pred_mesh, pts)
    occ_g = occupancy(gt_mesh, pts)[0] if gt_occupancy is None else gt_occupancy
    union = np.logical_or(occ_p, occ_g).sum()
    iou = float(np.logical_and(occ_p, occ_g).sum() / union) if union else 1.0
    return {"volume_iou": iou, "inside_test": how}


# ------------------------------------------------------------------------------------------ images
def composite(rgba: np.ndarray, background=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Straight-alpha RGBA (float in [0, 1] or uint8) -> RGB over ``background``."""
    rgba = np.asarray(rgba)
    if rgba.dtype == np.uint8:
        rgba = rgba.astype(np.float32) / 255.0
    a = rgba[..., 3:4]
    return rgba[..., :3] * a + np.asarray(background, np.float32) * (1 - a)


def ssim(pred: np.ndarray, gt: np.ndarray, data_range: float = 1.0) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(np.asarray(pred, np.float64), np.asarray(gt, np.float64),
                                       channel_axis=-1, data_range=data_range))


def load_lpips():
    """A local LPIPS callable ``f(pred [H,W,3], gt [H,W,3]) -> float`` or ``(None, reason)``.

    Never downloads: the ``lpips`` package needs torchvision and VGG/AlexNet weights fetched at run time, which
    this project does not allow, so LPIPS is reported as skipped unless a callable is injected
    (``evaluate(..., lpips_fn=...)``)."""
    return None, "skipped: no local LPIPS weights (the lpips package needs torchvision and downloads)"


def image_metrics(pred_rgb: np.ndarray, pred_mask: np.ndarray, gt_rgb: np.ndarray, gt_mask: np.ndarray,
                  lpips_fn=None) -> Dict[str, float]:
    """Mean PSNR / SSIM / mask IoU (and LPIPS when ``lpips_fn``) over views [V, H, W, 3] / [V, H, W]."""
    v = len(gt_rgb)
    out = {"psnr": float(np.mean([psnr(pred_rgb[i], gt_rgb[i]) for i in range(v)])),
           "ssim": float(np.mean([ssim(pred_rgb[i], gt_rgb[i]) for i in range(v)])),
           "mask_iou": float(np.mean([mask_iou(pred_mask[i], gt_mask[i]) for i in range(v)]))}
    if lpips_fn is not None:
        out["lpips"] = float(np.mean([lpips_fn(pred_rgb[i], gt_rgb[i]) for i in range(v)]))
    return out
