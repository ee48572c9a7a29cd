"""lrm/image_metrics.py: analytic values, and numpy / torch inputs agree (training and evaluation share them)."""
import math

import numpy as np
import pytest
import torch

from lrm.image_metrics import mask_iou, psnr


def test_psnr_analytic_and_backend_independent():
    gt = np.full((4, 5, 3), 0.5)
    assert psnr(gt + 0.1, gt) == pytest.approx(20.0, abs=1e-9)  # MSE 0.01
    assert psnr(gt, gt) == math.inf
    assert psnr(torch.from_numpy(gt + 0.1).float(), torch.from_numpy(gt).float()) == pytest.approx(20.0, abs=1e-4)
    assert psnr(gt * 2 + 0.2, gt * 2, data_range=2.0) == pytest.approx(20.0, abs=1e-9)


def test_mask_iou_analytic_and_backend_independent():
    a, b = np.zeros((10, 10)), np.zeros((10, 10))
    a[:5] = 1.0  # 50 pixels
    b[2:5] = 1.0
    b[5:7, :5] = 1.0  # 30 + 10 pixels, 30 shared
    assert mask_iou(a, b) == pytest.approx(30 / 60)
    assert mask_iou(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(30 / 60)
    assert mask_iou(np.zeros(4), np.zeros(4)) == 1.0
    assert mask_iou(np.full(4, 0.5), np.ones(4)) == 1.0  # the threshold is inclusive
