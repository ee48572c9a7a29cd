"""Blender (bpy/Cycles) renderer agrees with the GL renderer: masks (IoU >= 0.97), depth and cameras.
Skipped when the optional ``bpy`` package is absent (it is large and pins its own numpy)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

bpy = pytest.importorskip("bpy")
pytest.importorskip("moderngl")

from lrm.cameras import intrinsics_from_fov, orbit_camera  # noqa: E402
from lrm.data.mesh import normalize_parts  # noqa: E402


def test_blender_matches_gl():
    from lrm.data import render_blender as blender
    from lrm.data.sources import procedural
    from lrm.data.render_gl import render_mesh as gl_render

    parts, _ = normalize_parts(procedural.make_object(0, 3))
    c2w = orbit_camera(torch.tensor([20.0, 200.0]), torch.tensor([15.0, -5.0]), 2.0)
    K = intrinsics_from_fov(torch.tensor([40.0, 35.0]))
    K[1, 2] = 0.46  # off-centre principal point exercises the lens shift
    res = 96
    gl = gl_render(parts, c2w, K, res)
    bl = blender.render_mesh(parts, c2w, K, res, samples=8)
    assert bl["rgba"].shape == gl["rgba"].shape
    for i in range(2):
        a, b = gl["rgba"][i, ..., 3] > 0.5, bl["rgba"][i, ..., 3] > 0.5
        iou = (a & b).sum() / max((a | b).sum(), 1)
        assert iou >= 0.97, f"view {i}: mask IoU {iou:.3f}"
        both = a & b
        from scipy.ndimage import binary_erosion

        inner = binary_erosion(both, iterations=2)
        dd = np.abs(gl["depth"][i][inner] - bl["depth"][i][inner])
        assert np.median(dd) < 0.01, f"view {i}: depth differs ({np.median(dd):.4f})"
