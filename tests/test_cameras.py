"""Camera conventions (docs/conventions.md) checked against independent geometry."""
import math

import pytest
import torch

from lrm import cameras as C


def test_orbit_position_convention():
    # azimuth 0 on +X, growing toward +Y; elevation toward +Z
    assert torch.allclose(C.orbit_position(0.0, 0.0, 2.0), torch.tensor([2.0, 0, 0]), atol=1e-6)
    assert torch.allclose(C.orbit_position(90.0, 0.0, 2.0), torch.tensor([0, 2.0, 0]), atol=1e-6)
    assert torch.allclose(C.orbit_position(0.0, 90.0, 2.0), torch.tensor([0, 0, 2.0]), atol=1e-6)
    p = C.orbit_position(30.0, 20.0, 1.5)
    e, a = math.radians(20), math.radians(30)
    assert torch.allclose(p, torch.tensor([1.5 * math.cos(e) * math.cos(a), 1.5 * math.cos(e) * math.sin(a),
                                           1.5 * math.sin(e)]), atol=1e-6)


def test_orbit_camera_axes_opencv():
    c2w = C.orbit_camera(0.0, 0.0, 2.0)
    R = c2w[:3, :3]
    assert torch.allclose(R @ R.T, torch.eye(3), atol=1e-6) and torch.det(R) > 0
    # z (forward) looks at the origin, y (down) points to -Z, x (right) is +Y when looking along -X
    assert torch.allclose(R[:, 2], torch.tensor([-1.0, 0, 0]), atol=1e-6)
    assert torch.allclose(R[:, 1], torch.tensor([0, 0, -1.0]), atol=1e-6)
    assert torch.allclose(R[:, 0], torch.tensor([0, 1.0, 0]), atol=1e-6)
    # a point above the origin (+Z) projects above the image centre (smaller row)
    intr = C.intrinsics_from_fov(40.0)
    uv, z = C.project_points(torch.tensor([[0.0, 0.0, 0.3], [0.0, 0.0, 0.0]]), c2w, intr, 64, 64)
    assert uv[1, 0] == pytest.approx(32.0, abs=1e-4) and uv[1, 1] == pytest.approx(32.0, abs=1e-4)
    assert uv[0, 1] < 32.0 and z[1] == pytest.approx(2.0, abs=1e-6)


def test_straight_down_camera_is_valid_rotation():
    c2w = C.orbit_camera(0.0, 90.0, 2.0)
    R = c2w[:3, :3]
    assert torch.allclose(R @ R.T, torch.eye(3), atol=1e-5)
    assert torch.allclose(R[:, 2], torch.tensor([0, 0, -1.0]), atol=1e-6)


def test_project_unproject_roundtrip():
    g = torch.Generator().manual_seed(0)
    c2w = C.orbit_camera(torch.rand(5, generator=g) * 360, torch.rand(5, generator=g) * 60 - 30, 2.0)
    intr = C.intrinsics_from_fov(torch.full((5,), 45.0))
    pts = (torch.rand(5, 100, 3, generator=g) - 0.5)
    uv, z = C.project_points(pts, c2w, intr, 48, 64)
    back = C.unproject_points(uv, z, c2w, intr, 48, 64)
    assert torch.allclose(back, pts, atol=1e-5)


def test_rays_pass_through_their_pixels():
    c2w = C.orbit_camera(40.0, 25.0, 2.2)
    intr = torch.tensor([0.9, 1.1, 0.47, 0.55])
    H, W = 24, 32
    rays_o, rays_d = C.get_rays(c2w, intr, H, W)
    assert rays_o.shape == (H * W, 3)
    assert torch.allclose(rays_d.norm(dim=-1), torch.ones(H * W), atol=1e-6)
    pts = rays_o + 1.7 * rays_d
    uv, z = C.project_points(pts, c2w, intr, H, W)
    assert torch.allclose(uv, C.pixel_grid(H, W), atol=1e-4)
    assert (z > 0).all()
    # pixel subset gives the same rays as the full grid
    idx = torch.tensor([0, 5, 100, H * W - 1])
    o2, d2 = C.get_rays(c2w, intr, H, W, uv=C.pixel_grid(H, W)[idx])
    assert torch.allclose(d2, rays_d[idx], atol=1e-6) and torch.allclose(o2, rays_o[idx])


def test_canonicalize_preserves_relative_poses():
    g = torch.Generator().manual_seed(1)
    c2w = C.orbit_camera(torch.rand(4, generator=g) * 360, torch.rand(4, generator=g) * 40, 1.8)
    for dist in (2.0, None):
        canon, M = C.canonicalize(c2w, distance=dist)
        expect_d = 2.0 if dist is not None else 1.8
        assert torch.allclose(canon[0], C.orbit_camera(0.0, 0.0, expect_d), atol=1e-5)
        for i in range(4):
            for j in range(4):
                rel = C.invert_rigid(c2w[i]) @ c2w[j]
                rel_c = C.invert_rigid(canon[i]) @ canon[j]
                assert torch.allclose(rel, rel_c, atol=1e-5)
        assert torch.allclose(M[:3, :3] @ M[:3, :3].T, torch.eye(3), atol=1e-5)
    # keeping the distance of a camera that looks at the origin is a pure rotation about the origin
    _, M = C.canonicalize(c2w, distance=None)
    assert torch.allclose(M[:3, 3], torch.zeros(3), atol=1e-5)


def test_intrinsics_fov_roundtrip_and_matrix():
    intr = C.intrinsics_from_fov(40.0)
    assert C.fov_from_intrinsics(intr).item() == pytest.approx(40.0, abs=1e-4)
    K = C.intrinsics_to_matrix(intr, 256, 256)
    assert K[0, 0] == pytest.approx(128 / math.tan(math.radians(20)), rel=1e-5)
    assert K[0, 2] == pytest.approx(128.0)


def test_opengl_conversion_matches_lookat():
    # an OpenGL camera (looking down -z, y up) at +X looking at the origin
    eye = torch.tensor([2.0, 0.0, 0.0])
    look = -eye / eye.norm()
    right = torch.linalg.cross(look, torch.tensor([0.0, 0, 1]))
    up = torch.linalg.cross(right, look)
    gl = torch.eye(4)
    gl[:3, 0], gl[:3, 1], gl[:3, 2], gl[:3, 3] = right, up, -look, eye
    assert torch.allclose(C.opengl_to_opencv(gl), C.look_at(eye), atol=1e-6)


def test_ray_box_intersection():
    o = torch.tensor([[2.0, 0.0, 0.0], [2.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    d = torch.tensor([[-1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    tn, tf, hit = C.ray_box_intersect(o, d, 0.5)
    assert hit.tolist() == [True, False, True]
    assert tn[0].item() == pytest.approx(1.5) and tf[0].item() == pytest.approx(2.5)
    assert tn[2].item() == 0.0 and tf[2].item() == pytest.approx(0.5)


def test_geometry_is_exact_under_bf16_autocast():
    """Rays and projections ignore autocast: bf16 would round pixel coordinates by a fraction of a pixel."""
    c2w = C.orbit_camera(torch.tensor([30.0]), torch.tensor([10.0]), 2.0)
    K = C.intrinsics_from_fov(40.0)
    pts = torch.rand(1, 500, 3, generator=torch.Generator().manual_seed(0)) - 0.5
    ref = (C.get_rays(c2w, K, 64, 64), C.project_points(pts, c2w, K, 64, 64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.matmul(pts, pts.transpose(-1, -2)).dtype == torch.bfloat16  # autocast is on
        got = (C.get_rays(c2w, K, 64, 64), C.project_points(pts, c2w, K, 64, 64))
        back = C.unproject_points(got[1][0], got[1][1], c2w, K, 64, 64)
    for a, b in zip(ref, got):
        assert all(x.dtype == torch.float32 and torch.equal(x, y) for x, y in zip(a, b))
    assert back.dtype == torch.float32 and torch.allclose(back, pts, atol=1e-5)
