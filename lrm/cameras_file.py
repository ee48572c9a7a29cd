"""The cameras file of multi-image input (``infer.py a.png b.png --cameras cams.json``): read, check, canonicalise.

Format (JSON; docs/inference.md)::

    {"convention": "opencv",            # optional: opencv (default) | opengl (Blender), applies to "c2w"
     "scale": 1.0,                      # optional: file units per normalised object unit (positions are divided)
     "fov_deg": 40.0,                   # optional default for views without their own intrinsics
     "views": [                         # one per image, in the order the images are given
        {"image": "a.png",              # optional: checked against the image's file name
         "c2w": [[...], [...], [...], [0, 0, 0, 1]],      # camera-to-world 4x4 (rigid) ...
         "fov_deg": 40.0},                                 # ... vertical field of view, or
        {"azimuth": 90, "elevation": 0, "distance": 2.0,  # ... an orbit camera around the origin (degrees;
         "intrinsics": [1.37, 1.37, 0.5, 0.5]}]}          # distance default 2.0), normalised [fx/W, fy/H, cx/W, cy/H]

The world frame is the object's: the object sits around the origin, about one unit across (``scale`` converts
other units), +Z up for orbit cameras (lrm.cameras). Every error is one :class:`CamerasFileError` line naming the
file, the view and the key. :func:`canonical_cameras` re-expresses the cameras in the first view's frame exactly as
the training loader does (``lrm.cameras.canonicalize(c2w, distance=None)``).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch

from . import cameras as C
from .preprocess import InputError

TOP_KEYS = {"views", "convention", "scale", "fov_deg"}
VIEW_KEYS = {"image", "c2w", "azimuth", "elevation", "distance", "fov_deg", "intrinsics"}
RIGID_TOL = 1e-3  # |R^T R - I| and |det R - 1| above this: not a rotation


class CamerasFileError(InputError):
    """A cameras file that cannot be used (one line: file, view, key, why)."""


@dataclass
class CameraRig:
    c2w: torch.Tensor  # [V, 4, 4] float64, OpenCV, object frame in normalised units
    intrinsics: torch.Tensor  # [V, 4] float64, normalised


def _number(x, where: str, lo: float = -math.inf, hi: float = math.inf, open_lo: bool = False) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise CamerasFileError(f"{where} must be a number, got {x!r}")
    v = float(x)
    if not math.isfinite(v):
        raise CamerasFileError(f"{where} is not finite ({x!r})")
    if v < lo or v > hi or (open_lo and v == lo):
        raise CamerasFileError(f"{where} = {v:g} is out of range ({'(' if open_lo else '['}{lo:g}, {hi:g}])")
    return v


def _matrix(x, shape: Tuple[int, ...], where: str) -> torch.Tensor:
    try:
        t = torch.tensor(x, dtype=torch.float64)
    except (TypeError, ValueError):
        raise CamerasFileError(f"{where} must be a {'x'.join(map(str, shape))} array of numbers") from None
    if tuple(t.shape) != shape:
        raise CamerasFileError(f"{where} must be {'x'.join(map(str, shape))}, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise CamerasFileError(f"{where} has NaN or infinite values")
    return t


def check_rigid(m: torch.Tensor, where: str) -> None:
    """A 4x4 camera-to-world must be a rotation + translation with last row [0, 0, 0, 1]."""
    r = m[:3, :3]
    if (m[3] - torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=m.dtype)).abs().max() > RIGID_TOL:
        raise CamerasFileError(f"{where}: last row must be [0, 0, 0, 1], got {m[3].tolist()}")
    err = (r.T @ r - torch.eye(3, dtype=m.dtype)).abs().max().item()
    det = torch.linalg.det(r).item()
    if err > RIGID_TOL or abs(det - 1) > RIGID_TOL:
        what = "a reflection" if det < 0 else "scaled or sheared"
        raise CamerasFileError(f"{where} is not rigid ({what}: |R^T R - I| = {err:.2g}, det R = {det:.3g}); "
                               "give a rotation + translation (scale goes in the top-level \"scale\")")


def _intrinsics(view: dict, default_fov: Optional[float], where: str) -> torch.Tensor:
    if "intrinsics" in view and "fov_deg" in view:
        raise CamerasFileError(f"{where}: give \"intrinsics\" or \"fov_deg\", not both")
    if "intrinsics" in view:
        k = _matrix(view["intrinsics"], (4,), f"{where} \"intrinsics\"")
        if (k[:2] <= 0).any():
            raise CamerasFileError(f"{where} \"intrinsics\": fx/W and fy/H must be > 0, got {k.tolist()}")
        return k
    fov = view.get("fov_deg", default_fov)
    if fov is None:
        raise CamerasFileError(f"{where} has no intrinsics: add \"fov_deg\" (vertical, degrees) or \"intrinsics\" "
                               "[fx/W, fy/H, cx/W, cy/H], or a top-level \"fov_deg\"")
    fov = _number(fov, f"{where} \"fov_deg\"", 0.0, 179.0, open_lo=True)
    return C.intrinsics_from_fov(fov, dtype=torch.float64)


def _pose(view: dict, convention: str, where: str) -> torch.Tensor:
    orbit = [k for k in ("azimuth", "elevation", "distance") if k in view]
    if "c2w" in view and orbit:
        raise CamerasFileError(f"{where}: give \"c2w\" or \"azimuth\"/\"elevation\", not both")
    if "c2w" in view:
        m = _matrix(view["c2w"], (4, 4), f"{where} \"c2w\"")
        check_rigid(m, f"{where} \"c2w\"")
        return C.opengl_to_opencv(m) if convention == "opengl" else m
    missing = [k for k in ("azimuth", "elevation") if k not in view]
    if missing:
        raise CamerasFileError(f"{where} has no pose: add \"c2w\" (4x4 camera-to-world) or \"azimuth\" and "
                               f"\"elevation\" (degrees; missing {', '.join(missing)})")
    az = _number(view["azimuth"], f"{where} \"azimuth\"")
    el = _number(view["elevation"], f"{where} \"elevation\"", -90.0, 90.0)
    d = _number(view.get("distance", C.CANONICAL_DISTANCE), f"{where} \"distance\"", 0.0, 1e6, open_lo=True)
    return C.orbit_camera(torch.tensor(az, dtype=torch.float64), torch.tensor(el, dtype=torch.float64),
                          torch.tensor(d, dtype=torch.float64))


def parse_cameras(data, source: str = "cameras file", images: Optional[Sequence[str]] = None) -> CameraRig:
    """A parsed cameras file (dict, or a bare list of views) -> :class:`CameraRig`; ``images`` (the input files,
    in order) checks the view count and each view's optional ``"image"`` name."""
    if isinstance(data, list):
        data = {"views": data}
    if not isinstance(data, dict):
        raise CamerasFileError(f"{source}: must hold a JSON object with \"views\" (or a list of views)")
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise CamerasFileError(f"{source}: unknown key(s) {unknown}; known: {sorted(TOP_KEYS)}")
    views = data.get("views")
    if not isinstance(views, list) or not views:
        raise CamerasFileError(f"{source}: \"views\" must be a non-empty list (one camera per image)")
    if images is not None and len(views) != len(images):
        raise CamerasFileError(f"{source} has {len(views)} view(s) for {len(images)} image(s): give one camera per "
                               "image, in the same order")
    convention = data.get("convention", "opencv")
    if convention not in ("opencv", "opengl"):
        raise CamerasFileError(f"{source}: \"convention\" must be opencv or opengl, got {convention!r}")
    scale = _number(data.get("scale", 1.0), f"{source}: \"scale\"", 0.0, 1e9, open_lo=True)
    default_fov = data.get("fov_deg")
    if default_fov is not None:
        default_fov = _number(default_fov, f"{source}: \"fov_deg\"", 0.0, 179.0, open_lo=True)
    poses, intrinsics = [], []
    for i, view in enumerate(views):
        where = f"{source}: view {i}"
        if not isinstance(view, dict):
            raise CamerasFileError(f"{where} must be a JSON object, got {type(view).__name__}")
        unknown = sorted(set(view) - VIEW_KEYS)
        if unknown:
            raise CamerasFileError(f"{where}: unknown key(s) {unknown}; known: {sorted(VIEW_KEYS)}")
        if images is not None and "image" in view and Path(str(view["image"])).name != Path(images[i]).name:
            raise CamerasFileError(f"{where} is for {view['image']!r} but image {i} is {images[i]!r}: list the "
                                   "images in the order of the views")
        m = _pose(view, convention, where).clone()
        m[:3, 3] /= scale
        if m[:3, 3].norm() < 1e-6:
            raise CamerasFileError(f"{where}: the camera sits at the origin, where the object is")
        poses.append(m)
        intrinsics.append(_intrinsics(view, default_fov, where))
    return CameraRig(torch.stack(poses), torch.stack(intrinsics))


def read_cameras_file(path: str | os.PathLike, images: Optional[Sequence[str]] = None) -> CameraRig:
    """Read and check a cameras file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise CamerasFileError(f"cameras file not found: {path}")
    try:
        data = json.loads(path.read_text(), parse_constant=lambda c: float(c))  # NaN/Infinity: caught as non-finite
    except (UnicodeDecodeError, ValueError) as e:
        raise CamerasFileError(f"cameras file {path} is not valid JSON ({str(e)[:120]})") from None
    return parse_cameras(data, str(path), images)


def canonical_cameras(c2w: torch.Tensor, intrinsics: torch.Tensor, distance: Optional[float] = None) -> torch.Tensor:
    """Camera vectors [V, 16] (float32) in the canonical frame of view 0, as the training loader makes them
    (``canonicalize(c2w, distance=None)``: the first camera's own distance is kept)."""
    c2w_c, _ = C.canonicalize(c2w, distance=distance)
    return C.camera_vector(c2w_c, intrinsics.to(c2w_c.dtype)).float()


def crop_intrinsics(intrinsics: torch.Tensor, image_hw: Tuple[int, int], window: Tuple[float, float, float]):
    """Normalised intrinsics of an image after cutting the square ``window`` = (x0, y0, side) (pixels of the
    ``image_hw`` image; it may extend past the border) and resizing it to any size."""
    h, w = image_hw
    x0, y0, side = window
    fx, fy, cx, cy = intrinsics.unbind(-1)
    return torch.stack([fx * w / side, fy * h / side, (cx * w - x0) / side, (cy * h - y0) / side], -1)


def describe(rig: CameraRig) -> List[str]:
    """One line per view: position and field of view (for logs)."""
    fov = C.fov_from_intrinsics(rig.intrinsics)
    return [f"view {i}: camera at {[round(float(x), 3) for x in rig.c2w[i, :3, 3]]}, vertical FoV {float(f):.1f}°"
            for i, f in enumerate(fov)]
