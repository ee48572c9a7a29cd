"""The volume renderer used by training, inference, SDS and evaluation alike.

A field is any function ``field(points [B, M, 3]) -> (density [B, M] >= 0, rgb [B, M, 3])``. For each ray:

1. near/far: the ray's segment inside the cube [-R', R']^3 with R' = R (1 - box_margin) (slab test;
   ``t_near`` clamped at 0). Rays that miss, or whose segment is not longer than ``min_ray_length``,
   are empty: opacity 0, background colour.
2. ``n_samples`` samples on [near, far]: ``stratified`` (one uniform sample per equal bin when
   ``randomize``, the bin midpoint otherwise) or ``midpoint`` (always the midpoints).
3. Optional hierarchical resampling: ``n_importance`` more samples drawn by inverse-CDF from the coarse
   weights (detached; bins between consecutive coarse samples, each weighted by the larger weight of its
   two ends), merged and sorted with the coarse ones; all are composited together. Without autograd,
   ``inference_importance`` (when set) replaces ``n_importance``, and ``inference_samples`` ``n_samples``: a
   checkpoint whose field is smooth enough sets them where the image was measured unchanged (its README); training
   and refinement keep ``n_samples`` and ``n_importance``.
4. Compositing: each sample i stands for the interval between the midpoints to its neighbours (``near``
   and ``far`` at the ends), length ``delta_i`` (``step='world'``), or the constant ``1 / n_samples``
   (``step='normalized'``, TripoSR's rule). ``alpha_i = 1 - exp(-sigma_i delta_i)``,
   ``T_i = exp(-sum_{j<i} sigma_j delta_j)``, ``w_i = alpha_i T_i``;
   ``rgb = sum w_i c_i + (1 - sum w_i) * background``, ``opacity = sum w_i``,
   ``depth = sum w_i t_i / opacity`` (t along the unit-length ray: distance from the origin point).

Without autograd (inference) the coarse samples' values are kept and only the importance samples are
queried; with autograd every sample is queried again so gradients reach all of them. Both give the same
image (tested).

Empty-space skipping and early termination (inference only: no autograd and no jitter; ``render.skip_empty``,
on by default): with an occupancy grid of the field (lrm/render/occupancy.py; pass one built once per triplane
as ``occupancy=``, else it is built per call when the call is large enough to pay for it) the samples sit
exactly where the dense path puts them, but only those in occupied cells are queried (others count as empty),
block by block along the ray, and a ray stops being queried once its transmittance is below
``render.early_stop``; a ray whose coarse samples composite to less than ``render.fine_min_opacity`` (a ray
through haze only) takes its importance samples' values by interpolating its coarse ones instead of querying. A grid more occupied than ``render.skip_max_occupancy`` (a foggy field, where skipping
saves less than its bookkeeping costs) falls back to the dense path. The image equals the dense path's within the grid's tolerance (tests/test_render.py,
tests/test_render_skip.py); ``occupancy=False`` or ``render.skip_empty=false`` forces the dense path. Rays are processed in chunks of ``chunk`` so memory is bounded at any resolution. This pure-torch path
runs everywhere. Without autograd, chunks run on ``render.threads`` worker threads at once (default: torch's
intra-op thread count), each with one intra-op thread: the decoder's calls are too small to split well across
cores, whole chunks are not; the image does not depend on it (tested). On CUDA devices ``backend='nerfacc'`` (or ``auto``) uses nerfacc's packed sampling
(lrm/render/nerfacc_backend.py) when its extension is available.
"""
from __future__ import annotations

import contextlib
import logging
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from ..cameras import ray_box_intersect
from .occupancy import OccupancyGrid, build_occupancy, cube_diagonal, density_threshold

log = logging.getLogger(__name__)
Field = Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]


def near_far(rays_o, rays_d, radius: float, box_margin: float = 0.0, min_ray_length: float = 0.0):
    """``(t_near, t_far, valid)`` for rays against the triplane cube."""
    t_near, t_far, _ = ray_box_intersect(rays_o, rays_d, radius * (1.0 - box_margin))
    valid = (t_far - t_near) > min_ray_length
    return t_near, t_far, valid


def uniform_samples(t_near, t_far, n: int, randomize: bool, generator: Optional[torch.Generator] = None):
    """[..., n] samples, one per equal bin of [near, far]: jittered when ``randomize`` else midpoints."""
    u = torch.linspace(0.0, 1.0, n + 1, device=t_near.device, dtype=t_near.dtype)
    lo, hi = u[:-1], u[1:]
    if randomize:
        r = torch.rand((*t_near.shape, n), device=t_near.device, dtype=t_near.dtype, generator=generator)
        m = lo + (hi - lo) * r
    else:
        m = (lo + hi) / 2
    return t_near[..., None] * (1 - m) + t_far[..., None] * m


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, n: int, randomize: bool,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Inverse-CDF sampling: ``bins`` [..., K+1] edges, ``weights`` [..., K] -> [..., n] positions."""
    w = weights + 1e-5
    pdf = w / w.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[..., :1]), pdf.cumsum(-1)], -1).clamp(max=1.0)
    if randomize:
        u = torch.rand((*cdf.shape[:-1], n), device=cdf.device, dtype=cdf.dtype, generator=generator)
    else:
        u = (torch.arange(n, device=cdf.device, dtype=cdf.dtype) + 0.5) / n
        u = u.expand(*cdf.shape[:-1], n)
    u = u.contiguous()
    idx = torch.searchsorted(cdf.contiguous(), u, right=True)
    below = (idx - 1).clamp(min=0, max=cdf.shape[-1] - 1)
    above = idx.clamp(max=cdf.shape[-1] - 1)
    cdf_b, cdf_a = cdf.gather(-1, below), cdf.gather(-1, above)
    bin_b, bin_a = bins.gather(-1, below), bins.gather(-1, above)
    denom = torch.where(cdf_a - cdf_b < 1e-8, torch.ones_like(cdf_a), cdf_a - cdf_b)
    return bin_b + (u - cdf_b) / denom * (bin_a - bin_b)


def interval_lengths(t: torch.Tensor, t_near: torch.Tensor, t_far: torch.Tensor) -> torch.Tensor:
    """Length of the interval each sorted sample stands for: between midpoints to its neighbours."""
    mids = (t[..., 1:] + t[..., :-1]) / 2
    edges = torch.cat([t_near[..., None], mids, t_far[..., None]], -1)
    return (edges[..., 1:] - edges[..., :-1]).clamp_min(0.0)


def composite(density, rgb, deltas, t, background, valid=None) -> Dict[str, torch.Tensor]:
    """Alpha compositing along the last sample axis. density/deltas/t [..., S], rgb [..., S, 3]."""
    tau = density * deltas
    if valid is not None:  # where, not multiply: an inf density (exp) on an empty ray must not give NaN
        tau = torch.where(valid[..., None], tau, torch.zeros_like(tau))
    alpha = 1.0 - torch.exp(-tau)
    trans = torch.exp(-torch.cat([torch.zeros_like(tau[..., :1]), tau[..., :-1].cumsum(-1)], -1))
    weights = alpha * trans
    opacity = weights.sum(-1)
    color = (weights[..., None] * rgb).sum(-2) + (1.0 - opacity[..., None]) * background
    depth = (weights * t).sum(-1) / opacity.clamp_min(1e-8)
    return {"rgb": color, "opacity": opacity, "depth": depth, "weights": weights}


def importance_samples(d0, t, t_near, t_far, bg, valid, n: int, randomize: bool,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``n`` hierarchical samples from the coarse densities ``d0`` at ``t`` (world-step weights)."""
    w0 = composite(d0, torch.zeros(*d0.shape, 3, device=d0.device, dtype=d0.dtype), interval_lengths(t, t_near, t_far),
                   t, bg, valid)["weights"]
    # Bins run between consecutive coarse samples; each takes the larger weight of its two end samples (a 2-tap
    # max filter), so a surface entered between samples k-1 and k is resampled on both sides of sample k.
    edges = torch.cat([t_near[..., None], t, t_far[..., None]], -1)
    wp = torch.nn.functional.pad(w0, (1, 1))
    return sample_pdf(edges, torch.maximum(wp[..., :-1], wp[..., 1:]), n, randomize, generator)


def finish(density, rgb, deltas, t, bg, valid, return_samples: bool) -> Dict[str, torch.Tensor]:
    """Composite; keep weights and sample positions only when asked for."""
    out = composite(density, rgb, deltas, t, bg, valid)
    if not return_samples:
        out.pop("weights")
    else:
        out["t"] = t
    return out


_intra_lock = threading.Lock()
_intra_users = [0, 0]  # renders inside one_intra_op_thread, the thread count to restore when the last one leaves


@contextlib.contextmanager
def one_intra_op_thread():
    """torch's (process-wide) intra-op thread count at 1 for the duration; concurrent renders (the app serves
    requests on threads) share one save / restore, so the count comes back whatever the order they finish in."""
    with _intra_lock:
        if _intra_users[0] == 0:
            _intra_users[1] = torch.get_num_threads()
            torch.set_num_threads(1)
        _intra_users[0] += 1
    try:
        yield
    finally:
        with _intra_lock:
            _intra_users[0] -= 1
            if _intra_users[0] == 0:
                torch.set_num_threads(_intra_users[1])


class VolumeRenderer:
    """Config-driven renderer (``RenderConfig``). Stateless; safe to share."""

    def __init__(self, cfg):
        self.cfg = cfg
        self._warned_backend = False

    def background(self, background, ref: torch.Tensor) -> torch.Tensor:
        bg = self.cfg.background if background is None else background
        bg = torch.as_tensor(bg, dtype=ref.dtype, device=ref.device)
        return bg

    def _resolve_backend(self, device: torch.device) -> str:
        want = self.cfg.backend
        if want == "torch":
            return "torch"
        if self.cfg.step != "world":  # the nerfacc path marches at a world-space step only
            if want == "nerfacc" and not self._warned_backend:
                self._warned_backend = True
                log.warning("render.backend=nerfacc supports only render.step=world; using the torch path")
            return "torch"
        if device.type == "cuda":
            from . import nerfacc_backend

            if nerfacc_backend.available():
                return "nerfacc"
        if want == "nerfacc" and not self._warned_backend:
            self._warned_backend = True
            log.warning("render.backend=nerfacc needs a CUDA device with nerfacc's extension; using the torch path")
        return "torch"

    def __call__(self, field: Field, rays_o: torch.Tensor, rays_d: torch.Tensor, randomize: bool = False,
                 background: Optional[Sequence[float] | torch.Tensor] = None,
                 generator: Optional[torch.Generator] = None, return_samples: bool = False,
                 occupancy: Optional[OccupancyGrid | bool] = None) -> Dict[str, torch.Tensor]:
        """Render rays [B, N, 3] through ``field``; returns rgb [B, N, 3], opacity [B, N], depth [B, N].

        ``occupancy``: an :class:`OccupancyGrid` of this field (from :meth:`occupancy_grid`), ``False`` for the
        dense path, or ``None`` (default: skip empty space at inference when ``render.skip_empty`` and the call
        is large enough to pay for building a grid)."""
        bg = self.background(background, rays_o)
        if self._resolve_backend(rays_o.device) == "nerfacc":  # pragma: no cover - CUDA only
            from .nerfacc_backend import render_nerfacc

            return render_nerfacc(self.cfg, field, rays_o, rays_d, bg, randomize)
        grid = self._skip_grid(field, rays_o, randomize, occupancy)
        chunk = max(1, int(self.cfg.chunk))
        if grid is not None:
            chunk = max(1, int(getattr(self.cfg, "skip_chunk", None) or chunk))
            outs = self._map_chunks(lambda i: self.render_chunk_skip(
                field, rays_o[:, i:i + chunk], rays_d[:, i:i + chunk], bg, grid, return_samples),
                range(0, rays_o.shape[1], chunk), rays_o.device)
        else:
            # random jitter from a shared generator would depend on the threads' order: serial then
            outs = self._map_chunks(lambda i: self.render_chunk(
                field, rays_o[:, i:i + chunk], rays_d[:, i:i + chunk], bg, randomize, generator, return_samples),
                range(0, rays_o.shape[1], chunk), rays_o.device, serial=randomize and self.cfg.sampler == "stratified")
        if len(outs) == 1:
            return outs[0]
        return {k: torch.cat([o[k] for o in outs], dim=1) for k in outs[0]}

    def worker_threads(self) -> int:
        """Threads that render chunks at once (``render.threads``; 0 = torch's intra-op thread count)."""
        n = int(getattr(self.cfg, "threads", 1) or 0)
        return max(1, n if n > 0 else torch.get_num_threads())

    def _map_chunks(self, fn, starts, device: torch.device, serial: bool = False):
        """``[fn(i) for i in starts]``. Unless ``serial``, without autograd or CPU autocast, on a CPU ``device`` (a
        GPU gains nothing from host threads) and with more than one worker thread, the chunks after the first run on a
        thread pool, each thread with one intra-op thread (restored after). The first chunk runs here, so per-scene
        caches (the folded decoder's table) are filled before the threads start. Grad and inference mode are
        thread-local: the workers take the caller's. Chunks are independent, so the result does not depend on the
        threads (tests/test_render_skip.py)."""
        starts = list(starts)
        workers = min(self.worker_threads(), len(starts) - 1)
        if (serial or device.type != "cpu" or workers < 2 or torch.is_grad_enabled()
                or torch.is_autocast_enabled("cpu")):
            return [fn(i) for i in starts]
        first = fn(starts[0])
        inference = torch.is_inference_mode_enabled()

        def run(i):
            with torch.inference_mode(inference), torch.no_grad():
                return fn(i)

        with one_intra_op_thread(), ThreadPoolExecutor(workers, thread_name_prefix="render") as pool:
            return [first] + list(pool.map(run, starts[1:]))

    # ------------------------------------------------------------ empty-space skipping (inference)
    def path_length(self) -> float:
        """Largest sum of compositing steps along one ray (sets the occupancy density threshold)."""
        cfg = self.cfg
        if cfg.step == "normalized":
            return (self.sample_count() + self.importance_count()) / self.sample_count()
        return cube_diagonal(cfg.radius * (1.0 - cfg.box_margin))

    def occupancy_grid(self, field: Field, batch: int = 1, device=None) -> OccupancyGrid:
        """Occupancy grid of ``field`` (no gradient) to pass as ``occupancy=`` to every view of it."""
        cfg = self.cfg
        thr = density_threshold(getattr(cfg, "occupancy_tolerance", 1e-3), self.path_length())
        return build_occupancy(field, batch, cfg.radius * (1.0 - cfg.box_margin),
                               int(getattr(cfg, "occupancy_resolution", 64)), thr, device,
                               coarse_factor=int(getattr(cfg, "occupancy_coarse_factor", 1) or 1))

    def _skip_grid(self, field, rays_o, randomize, occupancy) -> Optional[OccupancyGrid]:
        if occupancy is False or torch.is_grad_enabled() or (randomize and self.cfg.sampler == "stratified"):
            return None
        if not isinstance(occupancy, OccupancyGrid):
            if not getattr(self.cfg, "skip_empty", False):
                return None
            g = int(getattr(self.cfg, "occupancy_resolution", 64)) + 1
            n_queries = rays_o.shape[1] * (self.sample_count() + self.importance_count())
            if n_queries < 4 * g ** 3:  # too small a render to pay for a grid
                return None
            occupancy = self.occupancy_grid(field, rays_o.shape[0], rays_o.device)
        # a mostly occupied grid (a foggy field) saves fewer queries than the bookkeeping costs
        return occupancy if occupancy.fraction() <= float(getattr(self.cfg, "skip_max_occupancy", 1.0)) else None

    def sample_count(self) -> int:
        """Coarse (uniform) samples per ray: ``render.inference_samples`` when no gradient is taken (and it is set),
        else ``render.n_samples``."""
        return self._count("inference_samples", self.cfg.n_samples)

    def importance_count(self) -> int:
        """Importance samples per ray: ``render.inference_importance`` when no gradient is taken (and it is set),
        else ``render.n_importance``."""
        return self._count("inference_importance", self.cfg.n_importance)

    def _count(self, inference_key: str, trained: int) -> int:
        n = getattr(self.cfg, inference_key, None)
        return int(trained if n is None or torch.is_grad_enabled() else n)

    def _deltas(self, t, t_near, t_far):
        if self.cfg.step == "normalized":
            return torch.full_like(t, 1.0 / self.sample_count())
        if self.cfg.step == "world":
            return interval_lengths(t, t_near, t_far)
        raise ValueError(f"unknown render.step {self.cfg.step!r}")

    @torch.no_grad()
    def render_chunk_skip(self, field: Field, rays_o, rays_d, bg, grid: OccupancyGrid, return_samples=False):
        """Inference render of one chunk: the dense path's samples, queried only in occupied cells and while
        the ray's transmittance is at least ``render.early_stop``."""
        cfg = self.cfg
        stop = float(getattr(cfg, "early_stop", 1e-4))
        t_near, t_far, valid = near_far(rays_o, rays_d, cfg.radius, cfg.box_margin, cfg.min_ray_length)
        t_far = torch.where(valid, t_far, t_near)
        t = uniform_samples(t_near, t_far, self.sample_count(), False)
        occupied = self._occupied(grid, rays_o, rays_d, t) & valid[..., None]
        n_fine = self.importance_count()
        if n_fine > 0:
            d0, c0, q0 = march(field, rays_o, rays_d, t, interval_lengths(t, t_near, t_far), occupied, stop)
            t_fine = importance_samples(d0, t, t_near, t_far, bg, valid, n_fine, False)
            fine_occ = self._occupied(grid, rays_o, rays_d, t_fine) & valid[..., None]
            d1 = torch.zeros_like(t_fine)
            c1 = torch.zeros(*t_fine.shape, 3, dtype=c0.dtype, device=c0.device)
            faint_below = float(getattr(cfg, "fine_min_opacity", 0.0))
            if faint_below > 0:  # nearly transparent rays: importance samples interpolated, not queried
                tau0 = (torch.nan_to_num(d0) * self._deltas(t, t_near, t_far)).sum(-1)
                faint = (1.0 - torch.exp(-tau0)) < faint_below
                if bool(faint.any()):
                    fine_occ = fine_occ & ~faint[..., None]
                    di, ci = interpolate_samples(t, d0, c0, t_fine)
                    d1 = torch.where(faint[..., None], di, d1)
                    c1 = torch.where(faint[..., None, None], ci, c1)
            t, order = torch.sort(torch.cat([t, t_fine], -1), -1)
            # still to query: importance samples, and coarse ones the coarse pass stopped before
            todo = torch.cat([occupied & ~q0, fine_occ], -1).gather(-1, order)
            density = torch.cat([d0, d1], -1).gather(-1, order)
            rgb = torch.cat([c0, c1], -2).gather(-2, order[..., None].expand(*order.shape, 3))
            deltas = self._deltas(t, t_near, t_far)
            density, rgb, _ = march(field, rays_o, rays_d, t, deltas, todo, stop, density, rgb)
        else:
            deltas = self._deltas(t, t_near, t_far)
            density, rgb, _ = march(field, rays_o, rays_d, t, deltas, occupied, stop)
        return finish(density, rgb, deltas, t, bg, valid, return_samples)

    @staticmethod
    def _occupied(grid: OccupancyGrid, rays_o, rays_d, t):
        return grid.lookup(rays_o[..., None, :] + rays_d[..., None, :] * t[..., None])

    def render_chunk(self, field: Field, rays_o, rays_d, bg, randomize=False, generator=None, return_samples=False):
        cfg = self.cfg
        t_near, t_far, valid = near_far(rays_o, rays_d, cfg.radius, cfg.box_margin, cfg.min_ray_length)
        t_far = torch.where(valid, t_far, t_near)
        randomize = randomize and cfg.sampler == "stratified"
        t = uniform_samples(t_near, t_far, self.sample_count(), randomize, generator)
        reuse = not torch.is_grad_enabled()  # inference: keep the coarse samples' values, query only new ones
        n_fine = self.importance_count()
        if n_fine > 0:
            with torch.no_grad():
                d0, c0 = self._query(field, rays_o, rays_d, t)
                t_fine = importance_samples(d0, t, t_near, t_far, bg, valid, n_fine, randomize, generator)
            if reuse:
                d1, c1 = self._query(field, rays_o, rays_d, t_fine)
                t, order = torch.sort(torch.cat([t, t_fine], -1), -1)
                density = torch.cat([d0, d1], -1).gather(-1, order)
                rgb = torch.cat([c0, c1], -2).gather(-2, order[..., None].expand(*order.shape, 3))
            else:
                t, _ = torch.sort(torch.cat([t, t_fine.detach()], -1), -1)
                density, rgb = self._query(field, rays_o, rays_d, t)
        else:
            density, rgb = self._query(field, rays_o, rays_d, t)
        deltas = self._deltas(t, t_near, t_far)
        return finish(density, rgb, deltas, t, bg, valid, return_samples)

    @staticmethod
    def _query(field: Field, rays_o, rays_d, t):
        b, n, s = t.shape
        pts = rays_o[..., None, :] + rays_d[..., None, :] * t[..., None]
        density, rgb = field(pts.reshape(b, n * s, 3))
        # compositing in fp32 whatever precision the field ran in (bf16 autocast): transmittance is a long product
        dt = torch.promote_types(density.dtype, torch.float32)  # fp64 stays fp64 (conformance tests)
        return density.to(dt).view(b, n, s), rgb.to(dt).view(b, n, s, 3)


def interpolate_samples(t, density, rgb, t_new):
    """Density [..., S] and rgb [..., S, 3] known at sorted ``t`` [..., S], linearly interpolated at ``t_new``
    [..., K] (constant beyond the ends)."""
    s = t.shape[-1]
    hi = torch.searchsorted(t.contiguous(), t_new.contiguous()).clamp(1, s - 1)
    lo = hi - 1
    t_lo, t_hi = t.gather(-1, lo), t.gather(-1, hi)
    w = ((t_new - t_lo) / (t_hi - t_lo).clamp_min(1e-12)).clamp(0, 1)
    d = torch.lerp(density.gather(-1, lo), density.gather(-1, hi), w)
    lo3, hi3 = lo[..., None].expand(*lo.shape, 3), hi[..., None].expand(*hi.shape, 3)
    c = torch.lerp(rgb.gather(-2, lo3), rgb.gather(-2, hi3), w[..., None])
    return d, c


def query_where(field: Field, rays_o, rays_d, t, mask):
    """Query ``field`` only at the samples where ``mask`` [B, N, S] is set, in one packed call (rows padded to
    the longest when B > 1). Returns ((batch, ray, sample) indices of those samples, density [K], rgb [K, 3]),
    values in fp32."""
    b, n, s = t.shape
    if b == 1:
        ray, sample = mask[0].nonzero(as_tuple=True)
        pts = rays_o[0, ray] + rays_d[0, ray] * t[0, ray, sample][:, None]
        d, c = field(pts[None])
        return (torch.zeros_like(ray), ray, sample), d[0].float(), c[0].float()
    flat = mask.reshape(b, -1)
    counts = flat.sum(1)
    m = int(counts.max())
    idx = torch.argsort((~flat).to(torch.int8), dim=1, stable=True)[:, :m]  # the selected samples first
    rows = torch.arange(b, device=t.device)[:, None].expand(-1, m)
    ray, sample = idx // s, idx % s
    pts = rays_o[rows, ray] + rays_d[rows, ray] * t[rows, ray, sample][..., None]
    d, c = field(pts)
    keep = torch.arange(m, device=t.device)[None] < counts[:, None]
    return (rows[keep], ray[keep], sample[keep]), d[keep].float(), c[keep].float()


def march(field: Field, rays_o, rays_d, t, deltas, need, stop: float, density=None, rgb=None, block: int = 0):
    """Query the samples ``need`` [B, N, S] block by block along the rays, skipping the rest of a ray once its
    transmittance before the block is below ``stop``. ``density``/``rgb`` hold values already known (kept where
    not queried; updated in place). Returns (density, rgb, queried mask)."""
    density = torch.zeros_like(t) if density is None else density
    rgb = torch.zeros(*t.shape, 3, dtype=t.dtype, device=t.device) if rgb is None else rgb
    queried = torch.zeros_like(need)
    s = t.shape[-1]
    block = block or max(16, s // 4)
    max_tau = -math.log(stop) if stop > 0 else math.inf
    tau = torch.zeros_like(t[..., 0])
    for s0 in range(0, s, block):
        sl = slice(s0, s0 + block)
        todo = need[..., sl] & (tau <= max_tau)[..., None]
        if bool(todo.any()):
            (bi, ray, sample), d, c = query_where(field, rays_o, rays_d, t[..., sl], todo)
            density[bi, ray, sample + s0] = d
            rgb[bi, ray, sample + s0] = c
            queried[..., sl] = todo
        tau = tau + torch.nan_to_num(density[..., sl] * deltas[..., sl]).sum(-1)
    return density, rgb, queried
