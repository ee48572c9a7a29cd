"""Cameras: the one place where the project's camera conventions live (see docs/conventions.md).

* World frame: right-handed, +Z up.
* Extrinsics are camera-to-world 4x4 matrices with OpenCV axes: camera x right, y down, z forward
  (the viewing direction).
* Intrinsics are normalised: ``[fx/W, fy/H, cx/W, cy/H]`` so one camera serves any resolution.
* Orbit cameras: azimuth A and elevation E in degrees and distance d put the camera at
  ``d * (cos E cos A, cos E sin A, sin E)`` looking at the origin, image "up" as close to +Z as possible.
* Pixel (column i, row j) has its centre at ``(i + 0.5, j + 0.5)``; row 0 is the top row.

Every function takes and returns torch tensors and broadcasts over leading batch dimensions.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

# Defaults from docs/conventions.md (config values elsewhere; these are only the fallbacks). They live in the
# torch-free lrm/conventions.py so lrm/config.py reads the same numbers.
from .conventions import CANONICAL_DISTANCE, CANONICAL_FOV_DEG, CUBE_RADIUS  # noqa: F401

Tensor = torch.Tensor

WORLD_UP = (0.0, 0.0, 1.0)

# OpenGL camera axes (x right, y up, z backward) <-> OpenCV axes (x right, y down, z forward).
_GL_TO_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


def _as_tensor(x, dtype=torch.float32, device=None) -> Tensor:
    if isinstance(x, Tensor):
        return x.to(dtype=dtype if x.dtype not in (torch.float64,) else x.dtype, device=device or x.device)
    return torch.as_tensor(x, dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------------
# Intrinsics
# --------------------------------------------------------------------------------------------------
def intrinsics_from_fov(fov_y_deg, aspect: float = 1.0, dtype=torch.float32) -> Tensor:
    """Normalised intrinsics ``[fx/W, fy/H, cx/W, cy/H]`` for a vertical field of view (degrees).

    ``aspect`` is W / H; pixels are square, so fx (in pixels) equals fy.
    """
    fov = _as_tensor(fov_y_deg, dtype)
    fy_n = 0.5 / torch.tan(torch.deg2rad(fov) / 2)
    fx_n = fy_n / aspect
    half = torch.full_like(fy_n, 0.5)
    return torch.stack([fx_n, fy_n, half, half], dim=-1)


def fov_from_intrinsics(intrinsics: Tensor) -> Tensor:
    """Vertical field of view in degrees from normalised intrinsics."""
    return torch.rad2deg(2 * torch.atan(0.5 / intrinsics[..., 1]))


def intrinsics_to_matrix(intrinsics: Tensor, height: int, width: int) -> Tensor:
    """Pixel-unit 3x3 K matrix for a given resolution."""
    fx, fy, cx, cy = intrinsics.unbind(-1)
    K = torch.zeros(*intrinsics.shape[:-1], 3, 3, dtype=intrinsics.dtype, device=intrinsics.device)
    K[..., 0, 0] = fx * width
    K[..., 1, 1] = fy * height
    K[..., 0, 2] = cx * width
    K[..., 1, 2] = cy * height
    K[..., 2, 2] = 1.0
    return K


# --------------------------------------------------------------------------------------------------
# Extrinsics
# --------------------------------------------------------------------------------------------------
def look_at(eye: Tensor, target: Optional[Tensor] = None, up=WORLD_UP) -> Tensor:
    """OpenCV camera-to-world matrices for cameras at ``eye`` looking at ``target`` (default origin).

    The image's up direction is the projection of ``up`` (+Z); when the view is parallel to ``up``
    (straight down or up) +Y is used instead so the result is always a valid rotation.
    """
    eye = _as_tensor(eye)
    target = torch.zeros_like(eye) if target is None else _as_tensor(target, eye.dtype, eye.device)
    up_t = torch.as_tensor(up, dtype=eye.dtype, device=eye.device).expand_as(eye)
    forward = F.normalize(target - eye, dim=-1)
    right = torch.linalg.cross(forward, up_t, dim=-1)
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    alt_up = torch.tensor([0.0, 1.0, 0.0], dtype=eye.dtype, device=eye.device).expand_as(eye)
    right = torch.where(degenerate, torch.linalg.cross(forward, alt_up, dim=-1), right)
    right = F.normalize(right, dim=-1)
    down = torch.linalg.cross(forward, right, dim=-1)
    c2w = torch.zeros(*eye.shape[:-1], 4, 4, dtype=eye.dtype, device=eye.device)
    c2w[..., :3, 0] = right
    c2w[..., :3, 1] = down
    c2w[..., :3, 2] = forward
    c2w[..., :3, 3] = eye
    c2w[..., 3, 3] = 1.0
    return c2w


def orbit_position(azimuth_deg, elevation_deg, distance) -> Tensor:
    """Camera centre ``d * (cos E cos A, cos E sin A, sin E)`` (azimuth from +X toward +Y)."""
    a = torch.deg2rad(_as_tensor(azimuth_deg))
    e = torch.deg2rad(_as_tensor(elevation_deg))
    d = _as_tensor(distance)
    a, e, d = torch.broadcast_tensors(a, e, d)
    return torch.stack([d * torch.cos(e) * torch.cos(a), d * torch.cos(e) * torch.sin(a), d * torch.sin(e)], -1)


def orbit_camera(azimuth_deg, elevation_deg, distance=CANONICAL_DISTANCE) -> Tensor:
    """OpenCV c2w for orbit cameras looking at the origin (broadcasts over its arguments)."""
    return look_at(orbit_position(azimuth_deg, elevation_deg, distance))


def orbit_cameras(n_views: int, elevation_deg=0.0, distance=CANONICAL_DISTANCE, start_azimuth_deg=0.0) -> Tensor:
    """``n_views`` cameras evenly spaced in azimuth (a turntable), [n_views, 4, 4]."""
    az = start_azimuth_deg + torch.arange(n_views, dtype=torch.float32) * (360.0 / n_views)
    return orbit_camera(az, torch.full_like(az, float(elevation_deg)), torch.full_like(az, float(distance)))


def opengl_to_opencv(c2w: Tensor) -> Tensor:
    """Convert camera-to-world matrices from OpenGL/Blender axes (y up, looking down -z) to OpenCV."""
    return c2w @ _GL_TO_CV.to(c2w)


opencv_to_opengl = opengl_to_opencv  # the axis flip is its own inverse


def invert_rigid(m: Tensor) -> Tensor:
    """Inverse of rigid 4x4 transforms (rotation + translation)."""
    r = m[..., :3, :3]
    t = m[..., :3, 3:]
    out = torch.zeros_like(m)
    out[..., :3, :3] = r.transpose(-1, -2)
    out[..., :3, 3:] = -r.transpose(-1, -2) @ t
    out[..., 3, 3] = 1.0
    return out


def canonicalize(c2w: Tensor, distance: Optional[float] = CANONICAL_DISTANCE) -> Tuple[Tensor, Tensor]:
    """Re-express cameras in the frame of the first (input) view.

    ``c2w`` is [..., V, 4, 4]. Returns ``(c2w_canonical, M)`` where ``M`` ([..., 4, 4]) is the rigid
    transform applied to every camera, so that the first camera becomes the orbit camera at azimuth 0,
    elevation 0 and ``distance``. With ``distance=None`` the input camera's own distance from the origin
    is kept, which makes ``M`` a pure rotation about the origin when that camera looks at the origin.
    Relative poses between views are unchanged because the same rigid ``M`` is applied to all.
    """
    first = c2w[..., 0, :, :]
    d = first[..., :3, 3].norm(dim=-1) if distance is None else torch.full(first.shape[:-2], float(distance))
    target = orbit_camera(torch.zeros_like(d), torch.zeros_like(d), d).to(c2w)
    M = target @ invert_rigid(first)
    return M.unsqueeze(-3) @ c2w, M


def camera_vector(c2w: Tensor, intrinsics: Tensor) -> Tensor:
    """The model's camera conditioning input: flattened top 3x4 of c2w (12) + normalised intrinsics (4)."""
    return torch.cat([c2w[..., :3, :4].flatten(-2), intrinsics], dim=-1)


def camera_from_vector(vec: Tensor) -> Tuple[Tensor, Tensor]:
    """Inverse of :func:`camera_vector`: [..., 16] -> (c2w [..., 4, 4], intrinsics [..., 4])."""
    top = vec[..., :12].unflatten(-1, (3, 4))
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2), vec[..., 12:16]


# --------------------------------------------------------------------------------------------------
# Rays, projection
# --------------------------------------------------------------------------------------------------
def pixel_grid(height: int, width: int, device=None, dtype=torch.float32) -> Tensor:
    """All pixel centres as (u, v) = (column + 0.5, row + 0.5), [H*W, 2], row-major."""
    v, u = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype) + 0.5,
        torch.arange(width, device=device, dtype=dtype) + 0.5,
        indexing="ij",
    )
    return torch.stack([u, v], -1).reshape(-1, 2)


def camera_directions(uv: Tensor, intrinsics: Tensor, height: int, width: int) -> Tensor:
    """Camera-space ray directions with z = 1 for pixel coordinates ``uv`` [..., N, 2]."""
    fx, fy, cx, cy = (intrinsics[..., i, None] for i in range(4))
    x = (uv[..., 0] / width - cx) / fx
    y = (uv[..., 1] / height - cy) / fy
    return torch.stack([x, y, torch.ones_like(x)], -1)


def _exact_geometry(fn):
    """Run a camera function with autocast off: under bf16 autocast its matmuls would round coordinates to 8 bits of
    mantissa (a quarter of a 64² pixel at the image edge), which moved pixel-plane lookups and ray samples
    (tests/test_cameras.py, tests/test_precision.py). Inputs keep their dtype (fp32, or fp64 for conformance)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        dev = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        if dev in ("cpu", "cuda") and torch.is_autocast_enabled(dev):
            with torch.autocast(dev, enabled=False):
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper


@_exact_geometry
def get_rays(
    c2w: Tensor,
    intrinsics: Tensor,
    height: int,
    width: int,
    uv: Optional[Tensor] = None,
    normalize: bool = True,
) -> Tuple[Tensor, Tensor]:
    """World-space rays for a camera batch.

    ``c2w`` [..., 4, 4], ``intrinsics`` [..., 4]. ``uv`` [..., N, 2] selects pixels (in pixel units,
    centres at +0.5); by default every pixel in row-major order. Returns ``(rays_o, rays_d)`` each
    [..., N, 3]; ``rays_d`` has unit length when ``normalize`` (else z-depth 1 in camera space).
    """
    if uv is None:
        uv = pixel_grid(height, width, device=c2w.device, dtype=c2w.dtype)
        uv = uv.expand(*c2w.shape[:-2], *uv.shape)
    dirs_cam = camera_directions(uv, intrinsics, height, width)
    rot = c2w[..., None, :3, :3]
    rays_d = (rot @ dirs_cam.unsqueeze(-1)).squeeze(-1)
    if normalize:
        rays_d = F.normalize(rays_d, dim=-1)
    rays_o = c2w[..., None, :3, 3].expand_as(rays_d)
    return rays_o, rays_d


@_exact_geometry
def project_points(points: Tensor, c2w: Tensor, intrinsics: Tensor, height: int, width: int) -> Tuple[Tensor, Tensor]:
    """Project world points [..., N, 3] to pixel coordinates (u, v) [..., N, 2] and camera z-depth [..., N]."""
    w2c = invert_rigid(c2w)
    p = points @ w2c[..., :3, :3].transpose(-1, -2) + w2c[..., None, :3, 3]  # one matmul, not N 3x3 products
    z = p[..., 2]
    fx, fy, cx, cy = (intrinsics[..., i, None] for i in range(4))
    u = (p[..., 0] / z * fx + cx) * width
    v = (p[..., 1] / z * fy + cy) * height
    return torch.stack([u, v], -1), z


@_exact_geometry
def unproject_points(uv: Tensor, depth: Tensor, c2w: Tensor, intrinsics: Tensor, height: int, width: int) -> Tensor:
    """Inverse of :func:`project_points`: pixels [..., N, 2] at camera z-depth [..., N] to world points."""
    d = camera_directions(uv, intrinsics, height, width) * depth.unsqueeze(-1)
    return (c2w[..., None, :3, :3] @ d.unsqueeze(-1)).squeeze(-1) + c2w[..., None, :3, 3]


def ray_box_intersect(rays_o: Tensor, rays_d: Tensor, half_size: float, min_dir: float = 1e-6):
    """Slab test against the axis-aligned cube [-half_size, half_size]^3.

    Returns ``(t_near, t_far, hit)``; ``t_near`` is clamped at 0 (cameras inside the cube start at the
    camera). Direction components smaller than ``min_dir`` in magnitude are treated as ``+min_dir``.
    """
    d = torch.where(rays_d.abs() < min_dir, torch.full_like(rays_d, min_dir), rays_d)
    t0 = (-half_size - rays_o) / d
    t1 = (half_size - rays_o) / d
    t_near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    t_far = torch.maximum(t0, t1).amin(-1)
    return t_near, t_far, t_far > t_near


def fov_to_focal(fov_deg: float) -> float:
    """Normalised focal length (f / image side) for a field of view in degrees."""
    return 0.5 / math.tan(math.radians(fov_deg) / 2)
