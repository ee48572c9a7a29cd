"""Refining a triplane by optimisation: reference-view losses on the input image (+ SDS from a view prior).

    from lrm.refine import RefineConfig, refine
    res = refine(triplane, pipe, image, prior, RefineConfig(mode="sds", steps=60), mask=mask)
    res.triplane      # [1, 3, C, H, W], refined; res.decoder: the optimised decoder copy (None unless decoder_lr > 0)

Per step (Adam on the triplane, optionally a copy of the decoder; the caller's model is never changed):
- ``rgb``: MSE between the render at the canonical input camera and the input image (both at the current
  render resolution, rendered on the input's background colour);
- ``mask``: MSE (or BCE) between that render's opacity and the input mask;
- ``sds``: SDS (lrm/guidance/) on ``n_views`` random orbit views (elevation/azimuth ranges, the input's
  distance and FoV) rendered on white; ``entropy``: binary entropy of those views' opacities (pushes pixels to
  empty or solid); ``sparsity``: their mean opacity; ``anchor``: the squared difference between the refined and
  the starting field's opacity over a fixed step length at random points of the cube (keeps the shape the LRM
  predicted wherever the other terms do not pull it away; ``w_anchor``, 0 turns it off).
Coarse to fine: the render side follows ``resolutions`` (switching at ``resolution_milestones``, fractions of
the run). Modes: ``ref`` (rgb + mask + regularisers on the reference view only: the ablation, no prior), ``sds``
(all terms), ``scratch`` (all terms, starting from a small-noise triplane of the same shape instead of the LRM's).
A step whose total loss or gradients are non-finite is skipped (counted); ``max_skips`` in a row is an error.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .. import cameras as C
from ..guidance import Reference, SDSConfig, coerce_config, make_guidance
from ..render.volume import VolumeRenderer
from ..stages import DEFAULT_LEVELS, SILHOUETTE_RESOLUTION

log = logging.getLogger(__name__)

MODES = ("sds", "ref", "scratch")


class RefineError(ValueError):
    """Bad refinement input or a run that cannot go on (one clear line)."""


@dataclass
class RefineConfig:
    mode: str = "sds"  # sds | ref | scratch
    steps: int = 60
    lr: float = 0.02  # Adam on the triplane features
    decoder_lr: float = 0.0  # > 0: also optimise (a copy of) the decoder
    resolutions: Tuple[int, ...] = (32, 48)  # render side, coarse to fine
    resolution_milestones: Tuple[float, ...] = (0.6,)  # fraction of the steps at which the next side starts
    n_views: int = 1  # SDS views per step
    elevation_range: Tuple[float, float] = (-10.0, 40.0)  # degrees, orbit views for SDS
    azimuth_range: Tuple[float, float] = (-180.0, 180.0)  # degrees relative to the input view (azimuth 0)
    distance: Optional[float] = None  # None: the checkpoint's camera.distance (the input camera's)
    fov_deg: Optional[float] = None  # None: the checkpoint's camera.fov_deg
    n_samples: Optional[int] = 32  # renderer samples per ray while refining (None: the model's own)
    n_importance: Optional[int] = 16
    w_rgb: float = 1.0
    w_mask: float = 0.5
    mask_loss: str = "mse"  # mse | bce
    w_sds: float = 2e-4  # SDS is a sum over the prior's sample elements; rgb/mask are means over pixels
    w_entropy: float = 1e-3
    w_sparsity: float = 0.0
    # > 0: pull the field's opacity toward the starting field's (not in scratch mode); 1.0 chosen on dev objects 1-10,
    # checked on 11-20 (docs/evaluation.md, session 15)
    w_anchor: float = 1.0
    anchor_points: int = 4096  # uniform points in the cube per step for the anchor term
    anchor_step: float = 0.05  # step length of the anchor's opacity 1 - exp(-density * step) (train.points.step)
    scratch_std: float = 0.1  # scratch mode: triplane ~ N(0, std²)
    # a scene with a pixel plane (model.pixel_plane): "fixed" keeps that plane (the input image's features) as the LRM
    # made it and optimises the three 3D planes; "optimise" lets the losses change it too
    pixel_plane: str = "fixed"
    # the mesh's density level after refinement (refined fields are best cut at another level than feed-forward ones):
    # "checkpoint": the checkpoint's infer.refined_mc_threshold (chosen on val with `lrm.training.validation
    # --refine-steps`), else its infer.mc_threshold; a number: that level; "silhouette": among ``levels``, the one
    # whose silhouette from the input camera best matches the input mask (lrm.stages.silhouette_level; it tends to
    # pick the lowest levels, docs/evaluation.md)
    level: Union[str, float] = "checkpoint"
    levels: Tuple[float, ...] = DEFAULT_LEVELS
    level_resolution: int = SILHOUETTE_RESOLUTION  # input-camera rays for the silhouette (per side)
    max_skips: int = 10
    save_every: int = 20  # intermediate renders every k steps (with an output folder; 0: none)
    seed: int = 0
    sds: SDSConfig = field(default_factory=SDSConfig)  # sds.anneal_steps = 0: anneal over the whole run

    def __post_init__(self):
        self.sds = coerce_config(SDSConfig, self.sds)
        self.resolutions = tuple(int(r) for r in self.resolutions)
        self.resolution_milestones = tuple(float(m) for m in self.resolution_milestones)
        if self.mode not in MODES:
            raise RefineError(f"refine mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.steps < 0:
            raise RefineError(f"refine steps must be >= 0, got {self.steps}")
        if not self.resolutions or min(self.resolutions) < 4:
            raise RefineError(f"refine resolutions must be sides >= 4, got {self.resolutions}")
        if len(self.resolution_milestones) != len(self.resolutions) - 1:
            raise RefineError("refine resolution_milestones needs one fraction per resolution after the first")
        if self.mask_loss not in ("mse", "bce"):
            raise RefineError(f"refine mask_loss must be mse or bce, got {self.mask_loss!r}")
        if self.w_anchor < 0 or self.anchor_points < 1 or not self.anchor_step > 0:
            raise RefineError("refine w_anchor must be >= 0, anchor_points >= 1 and anchor_step > 0")
        if self.n_views < 1:
            raise RefineError(f"refine n_views must be >= 1, got {self.n_views}")
        if self.pixel_plane not in ("fixed", "optimise"):
            raise RefineError(f"refine pixel_plane must be fixed or optimise, got {self.pixel_plane!r}")
        self.levels = tuple(float(v) for v in self.levels)
        if self.level not in ("silhouette", "checkpoint"):
            try:
                self.level = float(self.level)
            except (TypeError, ValueError):
                raise RefineError(f"refine level must be checkpoint, silhouette or a number, got {self.level!r}") from None
            if not math.isfinite(self.level):
                raise RefineError(f"refine level must be finite, got {self.level}")
        if self.level == "silhouette" and (not self.levels or min(self.levels) <= 0):
            raise RefineError(f"refine levels must be positive densities, got {self.levels}")

    @property
    def uses_prior(self) -> bool:
        return self.mode != "ref"


@dataclass
class RefineResult:
    triplane: Tensor  # [1, 3, C, H, W], detached, on the CPU
    decoder: Optional[torch.nn.Module]  # the optimised decoder copy, or None when the decoder was not optimised
    history: List[Dict[str, float]]  # per step: every loss term (unweighted), total, resolution
    stats: Dict[str, float]  # seconds, steps, skipped, renders, prior_calls, steps_per_s (+ level, level_iou)
    level: Optional[float] = None  # the refined mesh's density level; None: the pipeline's mc_threshold


def resolution_at(cfg: RefineConfig, step: int) -> int:
    frac = step / max(cfg.steps, 1)
    k = sum(frac >= m for m in cfg.resolution_milestones)
    return cfg.resolutions[k]


def scratch_triplane(shape, std: float = 0.1, seed: int = 0) -> Tensor:
    """The ``scratch`` starting point: N(0, std²) features of the given triplane shape."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(tuple(shape), generator=g) * std


def _model_parts(model):
    """(LRM, camera distance, FoV, input background) from an LRM or a Pipeline."""
    pipe = model if hasattr(model, "model") and hasattr(model, "opts") else None
    lrm = pipe.model if pipe is not None else model
    cam = getattr(pipe.cfg if pipe is not None else None, "camera", None)
    distance = float(cam.distance) if cam is not None else C.CANONICAL_DISTANCE
    fov = float(cam.fov_deg) if cam is not None else C.CANONICAL_FOV_DEG
    bg = tuple(pipe.opts["input_background"]) if pipe is not None else (1.0, 1.0, 1.0)
    return lrm, distance, fov, bg


def expected_triplane_shape(lrm) -> Tuple[int, ...]:
    cfg = lrm.cfg
    side = int(cfg.transformer.plane_tokens) * int(cfg.upsampler.kernel)
    planes = 4 if cfg.pixel_plane.enabled else 3  # lrm/models/pixel_plane.py
    return (1, planes, int(cfg.upsampler.channels), side, side)


def check_triplane(triplane: Tensor, lrm, what: str = "triplane") -> Tensor:
    want = expected_triplane_shape(lrm)
    if not torch.is_tensor(triplane) or tuple(triplane.shape) != want:
        got = tuple(triplane.shape) if torch.is_tensor(triplane) else type(triplane).__name__
        raise RefineError(f"{what} has shape {got} but this checkpoint's decoder needs {want} "
                          "(was it made by a different checkpoint? pass that one with --checkpoint)")
    if not triplane.is_floating_point() or not bool(torch.isfinite(triplane).all()):
        raise RefineError(f"{what} must hold finite floating-point values")
    return triplane.float()


def make_renderer(lrm, cfg: RefineConfig) -> VolumeRenderer:
    rcfg = copy.deepcopy(lrm.cfg.render)
    if cfg.n_samples is not None:
        rcfg.n_samples = int(cfg.n_samples)
    if cfg.n_importance is not None:
        rcfg.n_importance = int(cfg.n_importance)
    return VolumeRenderer(rcfg)


def decoder_field(decoder, triplane):
    def fn(points):
        out = decoder(triplane, points)
        return out["density"], out["rgb"]

    return fn


def render_views(renderer: VolumeRenderer, field_fn, c2w: Tensor, intrinsics: Tensor, res: int, background,
                 randomize: bool = True) -> Tuple[Tensor, Tensor]:
    """Views [N] at ``c2w`` [N, 4, 4] -> (rgb [N, 3, res, res], opacity [N, res, res]) through the shared renderer."""
    n = c2w.shape[0]
    rays_o, rays_d = C.get_rays(c2w[None], intrinsics.reshape(1, 1, 4).expand(1, n, 4).to(c2w), res, res)
    out = renderer(field_fn, rays_o.reshape(1, -1, 3), rays_d.reshape(1, -1, 3), randomize=randomize,
                   background=background, occupancy=False)
    rgb = out["rgb"].reshape(n, res, res, 3).permute(0, 3, 1, 2)
    return rgb, out["opacity"].reshape(n, res, res)


def resize(img: Tensor, res: int) -> Tensor:
    """[N, C, H, W] -> [N, C, res, res] (antialiased bilinear; identity at the same size)."""
    if img.shape[-1] == res and img.shape[-2] == res:
        return img
    return F.interpolate(img, size=(res, res), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def sample_orbit(n: int, cfg: RefineConfig, distance: float, generator: torch.Generator) -> Tensor:
    u = torch.rand(2, n, generator=generator)
    (e0, e1), (a0, a1) = cfg.elevation_range, cfg.azimuth_range
    elev, azim = e0 + (e1 - e0) * u[0], a0 + (a1 - a0) * u[1]
    return C.orbit_camera(azim, elev, torch.full((n,), float(distance)))


def binary_entropy(p: Tensor) -> Tensor:
    p = p.clamp(1e-5, 1 - 1e-5)
    return -(p * p.log() + (1 - p) * (1 - p).log()).mean()


def step_opacity(density: Tensor, step: float) -> Tensor:
    """Opacity ``1 - exp(-density * step)`` of a segment of length ``step`` through constant ``density``."""
    return -torch.expm1(-density.float().clamp_min(0) * step)


def anchor_loss(density: Tensor, start_density: Tensor, step: float) -> Tensor:
    """Mean squared difference of the step opacities of two fields' densities at the same points."""
    return (step_opacity(density, step) - step_opacity(start_density, step)).square().mean()


def reference_losses(rgb: Tensor, opacity: Tensor, image: Tensor, mask: Tensor, mask_loss: str = "mse") -> Dict[str, Tensor]:
    """rgb [1, 3, r, r] / opacity [1, r, r] of the input-camera render against image [1, 3, r, r] and mask [1, r, r]."""
    out = {"rgb": F.mse_loss(rgb, image)}
    if mask_loss == "bce":
        out["mask"] = F.binary_cross_entropy(opacity.clamp(1e-5, 1 - 1e-5), mask)
    else:
        out["mask"] = F.mse_loss(opacity, mask)
    return out


def as_image_tensor(image) -> Tensor:
    """[S, S, 3] array / [3, S, S] / [1, 3, S, S] in [0, 1] -> [1, 3, S, S] float32."""
    x = torch.as_tensor(np.asarray(image) if not torch.is_tensor(image) else image).float()
    if x.dim() == 3 and x.shape[-1] == 3:
        x = x.permute(2, 0, 1)
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[:2] != (1, 3):
        raise RefineError(f"input image must be [S, S, 3] or [1, 3, S, S], got {tuple(x.shape)}")
    return x


def mask_from_background(image: Tensor, background, tol: float = 0.03) -> Tensor:
    """A mask for an input saved without one: pixels differing from the background colour by more than ``tol``."""
    bg = torch.as_tensor(background, dtype=image.dtype).view(1, 3, 1, 1)
    return ((image - bg).abs().amax(1) > tol).float()


@torch.no_grad()
def evaluate_reference(model, triplane: Tensor, image, mask, cfg: Optional[RefineConfig] = None,
                       resolution: Optional[int] = None, decoder=None) -> Dict[str, float]:
    """Deterministic (midpoint samples) reference-view losses of ``triplane`` at ``resolution`` (default: the last)."""
    cfg = cfg or RefineConfig(mode="ref")
    lrm, distance, fov, bg = _model_parts(model)
    res = int(resolution or cfg.resolutions[-1])
    img = as_image_tensor(image)
    msk = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask).float().reshape(1, 1, *img.shape[-2:])
    c2w = C.orbit_camera(0.0, 0.0, distance)[None]
    rgb, op = render_views(make_renderer(lrm, cfg), decoder_field(decoder or lrm.decoder, triplane.float()), c2w,
                           C.intrinsics_from_fov(fov), res, bg, randomize=False)
    return {k: float(v) for k, v in reference_losses(rgb, op, resize(img, res), resize(msk, res)[:, 0],
                                                     cfg.mask_loss).items()}


def refine(triplane: Optional[Tensor], model, image, prior=None, cfg: Optional[RefineConfig] = None, *,
           mask=None, out_dir: Optional[Path] = None, progress: bool = True, device=None) -> RefineResult:
    """Optimise ``triplane`` [1, 3, C, H, W] (from the LRM; ignored except for its shape in ``scratch`` mode, where
    None means the model's shape) so its renders match ``image`` ([S, S, 3] in [0, 1], the preprocessed input on the
    input background) at the canonical input camera, with SDS from ``prior`` (a ``ViewPrior``; not needed in
    ``ref`` mode) on random orbit views. ``model``: an LRM or a Pipeline (camera and input background then come
    from its config). ``mask`` [S, S] in [0, 1]: the input's alpha (None: estimated from the background colour).
    ``out_dir``: when given, intermediate renders ``progress_<step>.png`` are written there."""
    cfg = coerce_config(RefineConfig, cfg)
    lrm, distance, fov, bg = _model_parts(model)
    distance = float(cfg.distance or distance)
    fov = float(cfg.fov_deg or fov)
    dev = torch.device(device) if device is not None else next(lrm.decoder.parameters()).device
    if cfg.uses_prior and prior is None:
        raise RefineError(f"refine mode {cfg.mode!r} needs a diffusion prior (mode 'ref' does not)")
    if cfg.mode == "scratch":
        start = scratch_triplane(expected_triplane_shape(lrm), cfg.scratch_std, cfg.seed)
    else:
        if triplane is None:
            raise RefineError(f"refine mode {cfg.mode!r} needs a triplane to start from")
        start = check_triplane(triplane.detach().cpu(), lrm)
    img = as_image_tensor(image).to(dev)
    msk = mask_from_background(img.cpu(), bg) if mask is None else torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask).float()
    msk = msk.reshape(1, 1, *img.shape[-2:]).to(dev).clamp(0, 1)

    tri = torch.nn.Parameter(start.clone().to(dev))
    freeze_pixel = cfg.pixel_plane == "fixed" and cfg.mode != "scratch" and tri.shape[1] == 4
    decoder = copy.deepcopy(lrm.decoder).to(dev)
    train_decoder = cfg.decoder_lr > 0
    decoder.requires_grad_(train_decoder)
    groups = [{"params": [tri], "lr": cfg.lr}]
    if train_decoder:
        groups.append({"params": list(decoder.parameters()), "lr": cfg.decoder_lr})
    opt = torch.optim.Adam(groups)
    renderer = make_renderer(lrm, cfg)
    intr = C.intrinsics_from_fov(fov).to(dev)
    ref_c2w = C.orbit_camera(0.0, 0.0, distance)[None].to(dev)
    gen = torch.Generator().manual_seed(cfg.seed)
    guidance = None
    if cfg.uses_prior:
        guidance = make_guidance("sds", prior, replace(cfg.sds, anneal_steps=cfg.sds.anneal_steps or cfg.steps))
        guidance.generator = torch.Generator().manual_seed(cfg.seed + 1)
    anchor_start = None
    if cfg.w_anchor > 0 and cfg.mode != "scratch":
        start_decoder, start_tri = lrm.decoder, start.to(dev)
        radius = float(decoder.radius)

        @torch.no_grad()
        def anchor_start(points):
            return start_decoder(start_tri, points)["density"]
    reference = Reference(resize(img, int(prior.resolution)) if prior is not None else img, ref_c2w)
    weights = {"rgb": cfg.w_rgb, "mask": cfg.w_mask, "sds": cfg.w_sds, "entropy": cfg.w_entropy,
               "sparsity": cfg.w_sparsity, "anchor": cfg.w_anchor}
    history: List[Dict[str, float]] = []
    skipped = in_a_row = renders = 0
    t0 = time.perf_counter()
    bar = _progress(cfg.steps, progress, cfg.mode)
    for step in range(cfg.steps):
        res = resolution_at(cfg, step)
        field_fn = decoder_field(decoder, tri)
        rgb, op = render_views(renderer, field_fn, ref_c2w, intr, res, bg)
        renders += 1
        terms = reference_losses(rgb, op, resize(img, res), resize(msk, res)[:, 0], cfg.mask_loss)
        reg_op = op
        if guidance is not None:
            c2w = sample_orbit(cfg.n_views, cfg, distance, gen).to(dev)
            views, vop = render_views(renderer, field_fn, c2w, intr, res, (1.0, 1.0, 1.0))
            renders += cfg.n_views
            terms.update(guidance(views, c2w, reference, step))
            reg_op = vop
        if cfg.w_entropy:
            terms["entropy"] = binary_entropy(reg_op)
        if cfg.w_sparsity:
            terms["sparsity"] = reg_op.mean()
        if anchor_start is not None:
            pts = (torch.rand(1, cfg.anchor_points, 3, generator=gen) * 2 - 1).to(dev) * radius
            terms["anchor"] = anchor_loss(decoder(tri, pts)["density"], anchor_start(pts), cfg.anchor_step)
        total = sum(weights[k] * v for k, v in terms.items())
        ok = bool(torch.isfinite(total)) and total.requires_grad
        if ok:
            opt.zero_grad(set_to_none=True)
            total.backward()
            if freeze_pixel and tri.grad is not None:
                tri.grad[:, 3:] = 0  # Adam with zero gradients leaves the plane exactly as it was
            ok = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for g in groups for p in g["params"])
        if ok:
            opt.step()
            in_a_row = 0
        else:
            skipped += 1
            in_a_row += 1
            opt.zero_grad(set_to_none=True)
            if in_a_row >= cfg.max_skips:
                raise RefineError(f"refinement stopped: {in_a_row} steps in a row had a non-finite loss or gradient "
                                  f"(step {step}; terms {({k: float(v.detach()) for k, v in terms.items()})})")
        rec = {k: float(v.detach()) for k, v in terms.items()}
        rec.update(total=float(total.detach()), resolution=res, skipped=float(not ok))
        if guidance is not None:
            rec.update({f"sds_{k}": v for k, v in guidance.info.items() if k in ("t_mean", "grad_norm")})
        history.append(rec)
        if bar is not None:
            bar.set_postfix({k: f"{v:.3g}" for k, v in rec.items() if k in weights or k == "total"}, refresh=False)
            bar.update(1)
        if out_dir is not None and cfg.save_every and (step % cfg.save_every == 0 or step == cfg.steps - 1):
            save_progress(Path(out_dir) / f"progress_{step:04d}.png", renderer, decoder, tri.detach(), intr,
                          distance, res, bg)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    stats = {"seconds": seconds, "steps": cfg.steps, "skipped": skipped, "renders": renders,
             "prior_calls": getattr(guidance, "prior_calls", 0), "sds_skipped": getattr(guidance, "skipped", 0),
             "steps_per_s": cfg.steps / seconds if seconds > 0 else math.inf}
    level = None
    if cfg.level == "silhouette":
        t1 = time.perf_counter()
        level, ious = mask_matched_level(with_decoder(lrm, decoder), tri.detach(), msk[0, 0], ref_c2w[0], intr, cfg)
        stats.update(level=level, level_iou=ious[level], level_seconds=time.perf_counter() - t1)
    elif cfg.level == "checkpoint":
        opts = getattr(model, "opts", None) or {}
        level = None if opts.get("refined_mc_threshold") is None else float(opts["refined_mc_threshold"])
    else:
        level = float(cfg.level)
    if level is not None:
        stats["level"] = level
    return RefineResult(triplane=tri.detach().cpu(), decoder=decoder.requires_grad_(False).cpu() if train_decoder else None,
                        history=history, stats=stats, level=level)


def mask_matched_level(model, triplane: Tensor, mask: Tensor, c2w: Tensor, intrinsics: Tensor,
                       cfg: RefineConfig) -> Tuple[float, Dict[float, float]]:
    """The level among ``cfg.levels`` whose silhouette from the input camera best matches ``mask`` [S, S]:
    (level, {level: IoU}) (lrm.stages.silhouette_level)."""
    from ..stages import ray_max_density, silhouette_level

    md = ray_max_density(model, triplane, c2w, intrinsics, cfg.level_resolution, float(model.cfg.render.radius))
    return silhouette_level(md, mask.detach(), cfg.levels)


def _progress(total: int, enabled: bool, mode: str):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"refine ({mode})", leave=False)


@torch.no_grad()
def save_progress(path: Path, renderer, decoder, triplane, intr, distance: float, res: int, bg) -> Path:
    """The input-camera view and three orbit views (azimuth 90, 180, 270; elevation 20) side by side."""
    from ..outputs import save_image

    c2w = torch.cat([C.orbit_camera(0.0, 0.0, distance)[None],
                     C.orbit_camera(torch.tensor([90.0, 180.0, 270.0]), torch.full((3,), 20.0),
                                    torch.full((3,), float(distance)))]).to(triplane.device)
    rgb, _ = render_views(renderer, decoder_field(decoder, triplane), c2w, intr, res, bg, randomize=False)
    return save_image(torch.cat(list(rgb), dim=2).permute(1, 2, 0).cpu().numpy(), path)


def with_decoder(lrm, decoder):
    """A shallow copy of ``lrm`` whose decoder is ``decoder`` (the original model is untouched)."""
    if decoder is None:
        return lrm
    m = copy.copy(lrm)
    m._modules = dict(lrm._modules)
    m._modules["decoder"] = decoder.to(next(lrm.parameters()).device)
    return m
