"""The image metrics every part of the project reports (training validation, the evaluation harness, benchmarks):
one definition each. Inputs are numpy arrays or torch tensors of the same shape, values in [0, data_range];
results are Python floats computed in float64."""
from __future__ import annotations

import numpy as np


def _array(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor (any device / dtype)
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, np.float64)


def psnr(pred, gt, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over all elements; ``inf`` for identical images."""
    mse = float(np.mean((_array(pred) - _array(gt)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(data_range ** 2 / mse))


def mask_iou(pred_mask, gt_mask, threshold: float = 0.5) -> float:
    """Intersection over union of ``pred_mask >= threshold`` and ``gt_mask >= threshold`` over all elements;
    1.0 when both are empty."""
    p, g = _array(pred_mask) >= threshold, _array(gt_mask) >= threshold
    union = np.logical_or(p, g).sum()
    return float(np.logical_and(p, g).sum() / union) if union else 1.0
