"""A synthetic multi-view dataset for tests and smoke runs: coloured spheres, ellipsoids and boxes.

Every object is 1..``max_primitives`` axis-aligned primitives inside the unit cube, rendered analytically
(ray-primitive intersection, Lambert + ambient shading, binary alpha) from orbit cameras
(``lrm.cameras.orbit_camera``, distance 2, FoV 40). Batches follow the training batch contract of
:mod:`lrm.data.batch` exactly: ``data.num_input_views`` input views (default 1), cameras canonicalised to the
first, images composited on the background. With a range ``data.num_input_views: [lo, hi]`` each batch has its own
V (``lrm.data.batch.input_views_at``), keyed by the batch's first index divided by the batch size, which the
trainer's source makes ``position * world_size + rank``.

Everything is a pure function of ``(seed, sample index)``: ``batch(indices)`` returns the same tensors in
any process at any time, so the trainer's data position is just the step counter (exact resume).
"""
from __future__ import annotations

import logging
import math
from typing import Dict, Optional, Sequence

import torch

from ..conventions import CANONICAL_DISTANCE, CANONICAL_FOV_DEG, OBJECT_BALL_RADIUS
from .. import cameras as cam
from ..data.batch import collate, fixed_background, input_views_at, input_views_range

log = logging.getLogger(__name__)

SPHERE, ELLIPSOID, BOX = 0, 1, 2
_LIGHT = torch.nn.functional.normalize(torch.tensor([0.4, -0.3, 0.85]), dim=0)


class CorruptSample(RuntimeError):
    pass


def _gen(*keys: int) -> torch.Generator:
    h = 1469598103934665603
    for k in keys:  # FNV-1a style mix of the keys: independent streams per (seed, split, index)
        h = ((h ^ (int(k) & 0xFFFFFFFFFFFF)) * 1099511628211) % (1 << 63)
    return torch.Generator().manual_seed(h)


def _uniform(g, lo, hi, *shape):
    return lo + (hi - lo) * torch.rand(*shape, generator=g)


def random_object(g: torch.Generator, max_primitives: int = 3) -> Dict[str, torch.Tensor]:
    n = int(torch.randint(1, max_primitives + 1, (1,), generator=g))
    kind = torch.randint(0, 3, (n,), generator=g)
    half = _uniform(g, 0.12, 0.3, n, 3)
    half[kind == SPHERE] = half[kind == SPHERE][:, :1].expand(-1, 3)
    centre = _uniform(g, -0.2, 0.2, n, 3) if n > 1 else torch.zeros(1, 3)
    colour = _uniform(g, 0.1, 0.95, n, 3)
    return {"kind": kind, "centre": centre, "half": half, "colour": colour}


def render_object(obj: Dict[str, torch.Tensor], c2w: torch.Tensor, intrinsics: torch.Tensor, size: int,
                  return_depth: bool = False):
    """RGB [V, H, W, 3] (unshaded background = 0) and alpha [V, H, W] of an object from V cameras (and the
    ray distance of the visible surface [V, H, W], 0 off the object, with ``return_depth``)."""
    rays_o, rays_d = cam.get_rays(c2w, intrinsics, size, size)  # [V, HW, 3]
    v, n = rays_o.shape[:2]
    best_t = torch.full((v, n), math.inf)
    normal = torch.zeros(v, n, 3)
    colour = torch.zeros(v, n, 3)
    for kind, c, h, col in zip(obj["kind"].tolist(), obj["centre"], obj["half"], obj["colour"]):
        o = (rays_o - c) / h  # primitive-local, scaled to the unit sphere / cube
        d = rays_d / h
        if kind == BOX:
            dd = torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
            t0, t1 = (-1 - o) / dd, (1 - o) / dd
            tn = torch.minimum(t0, t1)
            t = tn.amax(-1)
            hit = (t < torch.maximum(t0, t1).amin(-1)) & (t > 0)
            axis = tn.argmax(-1, keepdim=True)
            nrm = torch.zeros_like(o).scatter(-1, axis, 1.0) * -torch.sign(d.gather(-1, axis))
        else:
            a = (d * d).sum(-1)
            b = 2 * (o * d).sum(-1)
            cc = (o * o).sum(-1) - 1
            disc = b * b - 4 * a * cc
            hit = disc > 0
            t = (-b - disc.clamp_min(0).sqrt()) / (2 * a)
            hit = hit & (t > 0)
            p = o + d * t[..., None]
            nrm = p / h  # gradient of |x / h|^2 in world space
        nrm = torch.nn.functional.normalize(nrm, dim=-1)
        closer = hit & (t < best_t)
        best_t = torch.where(closer, t, best_t)
        normal = torch.where(closer[..., None], nrm, normal)
        colour = torch.where(closer[..., None], col.expand_as(colour), colour)
    alpha = torch.isfinite(best_t).float()
    rgb = shaded(colour, normal) * alpha[..., None]
    out = (rgb.reshape(v, size, size, 3), alpha.reshape(v, size, size))
    if return_depth:
        depth = torch.where(torch.isfinite(best_t), best_t, torch.zeros_like(best_t))
        out = out + (depth.reshape(v, size, size),)
    return out


def shaded(colour: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """The synthetic renderer's Lambert + ambient shading of ``colour`` [..., 3] at unit ``normal`` [..., 3]."""
    return colour * (0.35 + 0.65 * (normal @ _LIGHT).clamp_min(0))[..., None]


def _local(obj, i: int, pts: torch.Tensor) -> torch.Tensor:
    return (pts - obj["centre"][i]) / obj["half"][i]


def occupancy(obj: Dict[str, torch.Tensor], pts: torch.Tensor) -> torch.Tensor:
    """bool [N]: inside any primitive of the object (analytic)."""
    inside = torch.zeros(len(pts), dtype=torch.bool)
    for i, kind in enumerate(obj["kind"].tolist()):
        q = _local(obj, i, pts)
        inside |= (q.abs().amax(-1) < 1) if kind == BOX else (q.norm(dim=-1) < 1)
    return inside


def surface_samples(obj: Dict[str, torch.Tensor], n: int, g: torch.Generator):
    """``n`` points on the object's outer surface (primitive surfaces not inside another primitive) with their
    shaded colours: (points [n, 3], rgb [n, 3])."""
    pts, rgb = [], []
    m = 4 * n
    which = torch.randint(0, len(obj["kind"]), (m,), generator=g)
    u = torch.nn.functional.normalize(torch.randn(m, 3, generator=g), dim=-1)
    for i, kind in enumerate(obj["kind"].tolist()):
        sel = which == i
        q = u[sel]
        if kind == BOX:  # a uniform point on a random face of the unit cube
            axis = torch.randint(0, 3, (len(q),), generator=g)
            sign = torch.randint(0, 2, (len(q),), generator=g).float() * 2 - 1
            q = torch.rand(len(q), 3, generator=g) * 2 - 1
            q[torch.arange(len(q)), axis] = sign
            nrm = torch.zeros_like(q)
            nrm[torch.arange(len(q)), axis] = sign
        else:
            nrm = q / obj["half"][i]  # gradient of |x / h|^2
        p = obj["centre"][i] + q * obj["half"][i]
        pts.append(p)
        rgb.append(shaded(obj["colour"][i].expand(len(p), 3), torch.nn.functional.normalize(nrm, dim=-1)))
    pts, rgb = torch.cat(pts), torch.cat(rgb)
    outer = torch.ones(len(pts), dtype=torch.bool)
    for i, kind in enumerate(obj["kind"].tolist()):  # drop points buried in another primitive
        q = _local(obj, i, pts)
        outer &= ~((q.abs().amax(-1) < 1 - 1e-4) if kind == BOX else (q.norm(dim=-1) < 1 - 1e-4))
    pts, rgb = pts[outer], rgb[outer]
    perm = torch.randperm(len(pts), generator=g)  # mix the primitives (they were concatenated in order)
    idx = perm[torch.arange(n) % max(1, len(pts))]
    return pts[idx], rgb[idx]


def object_points(obj, n_occ: int, n_surf: int, g: torch.Generator, M: torch.Tensor) -> Dict[str, torch.Tensor]:
    """3D supervision of a synthetic object in the canonical frame (``M``: the camera canonicalisation), the
    same keys as the shard loader's: points / occupancy (half uniform in the ball, half near the surface) and
    surface_points / surface_rgb."""
    surf, rgb = surface_samples(obj, max(n_surf, n_occ), g)
    half = n_occ // 2
    d = torch.nn.functional.normalize(torch.randn(half, 3, generator=g), dim=-1)
    uni = d * (OBJECT_BALL_RADIUS * torch.rand(half, 1, generator=g) ** (1 / 3))
    near = surf[: n_occ - half] + torch.randn(n_occ - half, 3, generator=g) * 0.02
    pts = torch.cat([uni, near])
    R, t = M[:3, :3], M[:3, 3]
    out = {}
    if n_occ > 0:
        out["points"], out["occupancy"] = pts @ R.T + t, occupancy(obj, pts).float()
    if n_surf > 0:
        out["surface_points"], out["surface_rgb"] = surf[:n_surf] @ R.T + t, rgb[:n_surf]
    return out


class SyntheticMultiView:
    """Indexed dataset of synthetic objects; ``batch(indices)`` -> a training batch dict."""

    def __init__(self, cfg_data, split: str = "train", seed: int = 0, distance: float = CANONICAL_DISTANCE, fov_deg: float = CANONICAL_FOV_DEG,
                 extras=None):
        s = cfg_data.synthetic
        self.extras = dict(extras or {})  # as lrm.data.make_loader's: points, surface_points, depth
        self.size = int(cfg_data.image_size)
        self.k = int(cfg_data.num_views_target)
        # input views, the first defining the canonical frame: an int, or [lo, hi] for a V per batch
        self.views = cfg_data.get("num_input_views", 1)
        self.v = input_views_range(self.views)[1]
        self.background = cfg_data.background if split == "train" else "white"
        self.input_background = cfg_data.get("input_background") if split == "train" else None
        self.split = split
        self.seed = int(seed)
        self.num_objects = int(s.num_objects) if split == "train" else int(s.num_val_objects)
        self.views_per_object = int(s.views_per_object)
        self.fixed_input = bool(s.fixed_input_view)
        self.max_primitives = int(s.max_primitives)
        self.elev = tuple(float(x) for x in s.elevation_range)
        self.corrupt_every = int(s.corrupt_every) if split == "train" else 0
        self.distance, self.fov = distance, fov_deg
        self._split_key = 0 if split == "train" else 1

    def __len__(self):
        return self.num_objects if self.num_objects > 0 else 2 ** 62

    def _cameras(self, g, n):
        az = _uniform(g, 0.0, 360.0, n)
        el = _uniform(g, self.elev[0], self.elev[1], n)
        return cam.orbit_camera(az, el, torch.full((n,), self.distance))

    def sample(self, index: int, num_input_views: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """One object; ``num_input_views`` overrides the configured V (the batch's draw)."""
        if self.corrupt_every and index % self.corrupt_every == self.corrupt_every - 1:
            raise CorruptSample(f"synthetic sample {index} is corrupt (data.synthetic.corrupt_every)")
        obj_id = index % self.num_objects if self.num_objects > 0 else index
        g_obj = _gen(self.seed, self._split_key, 0, obj_id)
        obj = random_object(g_obj, self.max_primitives)
        g = _gen(self.seed, self._split_key, 1, index)
        v = self.v if num_input_views is None else int(num_input_views)
        n = self.k + v
        if self.views_per_object > 0:
            views = self._cameras(g_obj, self.views_per_object)
            if self.fixed_input:
                pick = torch.cat([torch.zeros(1, dtype=torch.long),
                                  1 + torch.randperm(self.views_per_object - 1, generator=g)[: n - 1]])
            else:
                pick = torch.randperm(self.views_per_object, generator=g)[:n]
            if len(pick) < n:  # fewer stored views than V + K: sample with replacement
                pick = torch.cat([pick, torch.randint(0, self.views_per_object, (n - len(pick),), generator=g)])
            c2w = views[pick]
        else:
            c2w = self._cameras(g, n)
        intr = cam.intrinsics_from_fov(self.fov).expand(n, 4)
        rgb, alpha, depth = render_object(obj, c2w, intr, self.size, return_depth=True)
        if self.background == "white":
            bg = torch.ones(3)
        else:
            bg = torch.rand(3, generator=g)
        ibg = fixed_background(self.input_background)  # None: the sample's own background
        inp = rgb[:v] + (1 - alpha[:v, ..., None]) * (bg if ibg is None else ibg)
        rgb = rgb + (1 - alpha[..., None]) * bg
        c2w_canon, M = cam.canonicalize(c2w, self.distance)
        extra = {}
        n_occ, n_surf = int(self.extras.get("points", 0)), int(self.extras.get("surface_points", 0))
        if n_occ > 0 or n_surf > 0:
            extra.update(object_points(obj, n_occ, n_surf, _gen(self.seed, self._split_key, 2, index), M))
        if self.extras.get("depth"):
            extra["target_depth"] = depth[v:]
        if self.extras.get("input_depth"):
            extra["input_depth"] = depth[0]
        return {**extra,
            "input_images": inp.permute(0, 3, 1, 2).contiguous(),
            "input_cameras": cam.camera_vector(c2w_canon[:v], intr[:v]),
            "target_rgb": rgb[v:],
            "target_mask": alpha[v:],
            "target_c2w": c2w_canon[v:],
            "target_intrinsics": intr[v:].clone(),
            "background": bg,
            "uid": f"synthetic-{self.split}-{self.seed}-{obj_id}",
        }

    def batch_views(self, indices: Sequence[int]) -> int:
        """V of the batch of ``indices`` (a pure function of the seed and the batch's first index / its size)."""
        indices = list(indices)
        return input_views_at(self.views, self.seed, int(indices[0]) // max(1, len(indices)))

    def batch(self, indices: Sequence[int]) -> Dict[str, object]:
        """Collate samples. A corrupt sample raises ``CorruptSample`` (the trainer skips that batch)."""
        indices = list(indices)
        v = self.batch_views(indices)
        return collate([self.sample(int(i), v) for i in indices])
