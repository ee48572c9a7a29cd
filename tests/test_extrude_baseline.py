"""tools/extrude_baseline.py: the extruded silhouette against analytic cases."""
import importlib.util
from pathlib import Path

import torch

from lrm import cameras as C

spec = importlib.util.spec_from_file_location("extrude_baseline", Path(__file__).resolve().parent.parent / "tools" /
                                              "extrude_baseline.py")
eb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(eb)


def square_view(res=64, half_px=8):
    """Camera on the orbit at azimuth 0, a centred square mask 2 * half_px wide."""
    c2w, k = C.orbit_camera(0.0, 0.0, 2.0), C.intrinsics_from_fov(40.0)
    m = torch.zeros(res, res, dtype=torch.bool)
    m[res // 2 - half_px:res // 2 + half_px, res // 2 - half_px:res // 2 + half_px] = True
    return m, c2w, k


def test_extrusion_depth_is_the_row_width_times_the_scale():
    m, c2w, k = square_view()
    res = m.shape[0]
    width = 16 / (float(k[0]) * res) * 2.0  # world width of the square at the origin's depth
    axis = c2w[:3, 3] / c2w[:3, 3].norm()  # unit vector from the origin to the camera
    for scale in (0.5, 1.0):
        inside = eb.extruded_inside(m, c2w, k, scale)
        half = width * scale / 2
        pts = torch.stack([axis * s for s in (0.0, 0.9 * half, -0.9 * half, 1.1 * half, -1.1 * half)])
        assert inside(pts).tolist() == [True, True, True, False, False]
        assert inside(pts, hull_only=True).all()  # the hull is unbounded in depth
    beside = (c2w[:3, 1] * width)[None]  # one square-width along the camera's vertical axis: off the mask
    assert not eb.extruded_inside(m, c2w, k, 1.0)(beside).any()


def test_silhouette_from_the_input_camera_is_the_mask():
    m, c2w, k = square_view()
    sil = eb.silhouette(eb.extruded_inside(m, c2w, k, 1.0), c2w, k, 64, hull_only=False)
    assert torch.equal(sil, m)


def test_front_depth_extrusion_starts_at_the_visible_surface():
    m, c2w, k = square_view()
    res = m.shape[0]
    width = 16 / (float(k[0]) * res) * 2.0
    axis = c2w[:3, 3] / c2w[:3, 3].norm()
    dist = float(c2w[:3, 3].norm())
    front_t = dist - 0.1  # a wall 0.1 in front of the origin (ray distance ~ camera distance near the centre)
    dirs = C.camera_directions(C.pixel_grid(res, res), k, res, res)
    front = torch.where(m, front_t * dirs.norm(dim=-1).view(res, res) / 1.0, torch.zeros(res, res))
    inside = eb.extruded_inside(m, c2w, k, 1.0, front)
    # along the axis: empty in front of the wall, inside for one row width behind it, empty after
    pts = torch.stack([axis * s for s in (0.15, 0.05, -0.1 + 0.5 * width, 0.1 - 1.05 * width)])
    assert inside(pts).tolist() == [False, True, True, False]


def test_inflation_turns_a_disc_into_a_ball():
    n, r = 65, 20
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    rho = ((yy - n // 2) ** 2 + (xx - n // 2) ** 2).float().sqrt()
    disc = rho <= r
    h = eb.inflated_half_depth(disc)
    assert abs(float(h[n // 2, n // 2]) - r) < 1.0  # the centre is as deep as the radius
    ring = disc & (rho > 8) & (rho < 16)  # in between: the sphere's profile sqrt(r^2 - rho^2), to a pixel or so
    assert (h[ring] - (r * r - rho[ring] ** 2).clamp_min(0).sqrt()).abs().max() < 2.0
    assert h[~disc].eq(0).all()
