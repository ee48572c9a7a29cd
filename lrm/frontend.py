"""The multi-view front end (Instant3D style, issue 16): one image -> a view-conditioned diffusion prior generates
views of the object at fixed poses around it -> the sparse-view LRM reconstructs from the input and those views.

    from lrm.diffusion import load_prior
    from lrm.frontend import generate_views, lrm_views
    gen = generate_views(prior, image, poses=[(90, 0), (180, 0), (270, 0)], steps=50, guidance=3.0, seed=0)
    images, cameras = lrm_views(image, gen)          # input + generated views, camera vectors in view 0's frame
    triplane = pipe.triplane_views(images, cameras)  # a multi-view checkpoint (model.transformer.multiview)

Poses are (azimuth, elevation) in degrees relative to the input view, in the canonical frame (docs/conventions.md:
the input camera sits at azimuth 0, elevation 0, distance 2.0, FoV 40°); each generated view's camera is the orbit
camera at that pose, at the input's distance and FoV. The prior is asked for exactly these relative cameras
(``lrm.diffusion.prior.relative_camera`` of input and target equals ``relative_camera_from_angles(el, az)``).

The n views are sampled in one batched DDIM run (``lrm.diffusion.sample.sample_views``): *independently* given the
input with a single-view prior (Zero-1-to-3 conditioning), or *jointly* with a prior trained with cross-view
attention (``model.joint_views``, e.g. ``train.py --config zero123-mv-tiny``; MVDream-style), where every
self-attention layer sees all n views of the object at once, so the views agree with each other. ``joint=None``
(the default) follows the prior; ``joint=True`` with a single-view prior is an error (docs/diffusion.md,
"Jointly denoised views").
"""
from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from . import cameras as C
from .checkpoint import CONFIG_NAME, CheckpointError, is_checkpoint_dir

log = logging.getLogger(__name__)

#: The sparse-view checkpoint ``infer.py --frontend mv`` uses unless ``--mv-checkpoint`` is given.
DEFAULT_MV_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "mv-tiny"
#: Input + these three = the four views of Instant3D; the same poses as the ``gt-mv+lrm`` evaluation method.
DEFAULT_POSES: Tuple[Tuple[float, float], ...] = ((90.0, 0.0), (180.0, 0.0), (270.0, 0.0))


@dataclass
class FrontendConfig:
    """Settings of the front end (infer.py flags ``--frontend-steps`` etc.; evaluation parameters of ``mv+lrm``)."""

    poses: Tuple[Tuple[float, float], ...] = DEFAULT_POSES  # (azimuth°, elevation°) relative to the input view
    steps: int = 50  # DDIM steps
    guidance: float = 3.0  # classifier-free guidance scale (1 = conditional prediction only)
    seed: int = 0
    joint: Optional[bool] = None  # denoise the views together (cross-view attention); None: as the prior does


@dataclass
class GeneratedViews:
    images: np.ndarray  # [n, S, S, 3] float32 in [0, 1], on white, at the input image's size
    c2w: torch.Tensor  # [n, 4, 4] float32, OpenCV, canonical frame of the input view
    intrinsics: torch.Tensor  # [n, 4] normalised
    poses: List[Tuple[float, float]]  # (azimuth°, elevation°) per view
    seconds: float = 0.0  # wall time of the sampling
    info: dict = field(default_factory=dict)  # steps, guidance, seed, prior resolution


def check_poses(poses: Sequence) -> List[Tuple[float, float]]:
    """(azimuth, elevation) pairs in degrees, finite, elevation within [-90, 90], no pose twice, none at the input."""
    from .preprocess import InputError

    out = []
    for p in poses:
        try:
            az, el = (float(v) for v in p)
        except (TypeError, ValueError):
            raise InputError(f"a front-end pose must be (azimuth, elevation) in degrees, got {p!r}") from None
        if not (np.isfinite(az) and np.isfinite(el)) or abs(el) > 90:
            raise InputError(f"front-end pose {p!r}: need finite degrees, elevation within [-90, 90]")
        out.append((az, el))
    if not out:
        raise InputError("the front end needs at least one pose")
    keys = [(round(az % 360.0, 6) % 360.0, round(el, 6)) for az, el in out]
    if len(set(keys)) != len(keys) or (0.0, 0.0) in keys:
        raise InputError(f"front-end poses repeat a view or the input view (azimuth 0, elevation 0): {out}")
    return out


def pose_cameras(poses: Sequence[Tuple[float, float]], distance: float = C.CANONICAL_DISTANCE,
                 fov_deg: float = C.CANONICAL_FOV_DEG) -> Tuple[torch.Tensor, torch.Tensor]:
    """Orbit cameras (c2w [n, 4, 4], intrinsics [n, 4]) at the poses, looking at the origin."""
    az = torch.tensor([float(p[0]) for p in poses], dtype=torch.float64)
    el = torch.tensor([float(p[1]) for p in poses], dtype=torch.float64)
    c2w = C.orbit_camera(az, el, torch.full_like(az, float(distance))).float()
    return c2w, C.intrinsics_from_fov(float(fov_deg)).expand(len(poses), 4).clone()


def _to_tensor_image(image) -> torch.Tensor:
    """[S, S, 3] array/tensor in [0, 1] -> [1, 3, S, S] float32."""
    t = torch.as_tensor(np.asarray(image, dtype=np.float32))
    if t.ndim != 3 or t.shape[-1] != 3:
        raise ValueError(f"generate_views: image must be [H, W, 3] RGB in [0, 1], got shape {tuple(t.shape)}")
    return t.permute(2, 0, 1)[None]


def _resize(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def generate_views(prior, image, poses: Sequence[Tuple[float, float]] = DEFAULT_POSES, steps: int = 50,
                   guidance: float = 3.0, seed: int = 0, distance: float = C.CANONICAL_DISTANCE,
                   fov_deg: float = C.CANONICAL_FOV_DEG, progress: bool = False,
                   joint: Optional[bool] = None) -> GeneratedViews:
    """Views of the object in ``image`` ([S, S, 3] RGB in [0, 1], on white, framed as the prior expects) at
    ``poses`` (azimuth°, elevation° relative to the input), sampled by ``prior`` (a ``ViewPrior``) in one batched
    DDIM run with classifier-free guidance; resized from the prior's resolution to S. Deterministic given ``seed``.
    Cameras: orbit cameras at ``distance`` with vertical FoV ``fov_deg`` (the input camera's).
    ``joint``: denoise the views together (cross-view attention, a prior with ``joint_views``) or independently;
    None: together exactly when the prior can."""
    from .diffusion.prior import is_joint, relative_camera_from_angles
    from .diffusion.sample import sample_views
    from .preprocess import InputError

    poses = check_poses(poses)
    can = is_joint(prior)
    if joint and not can:
        raise InputError("jointly denoised views need a prior trained with cross-view attention (model.joint_views, "
                         "e.g. train.py --config zero123-mv-tiny); this prior denoises views independently")
    joint = can if joint is None else bool(joint)
    x = _to_tensor_image(image)
    el = torch.tensor([p[1] for p in poses], dtype=torch.float32)
    az = torch.tensor([p[0] for p in poses], dtype=torch.float32)
    t0 = time.perf_counter()
    views = sample_views(prior, x, relative_camera_from_angles(el, az), int(steps), float(guidance),
                         torch.Generator().manual_seed(int(seed)), progress=progress,
                         num_views=len(poses) if joint else 1)
    seconds = time.perf_counter() - t0
    out = _resize(views.float().cpu(), tuple(x.shape[-2:])).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    c2w, intr = pose_cameras(poses, distance, fov_deg)
    info = {"steps": int(steps), "guidance": float(guidance), "seed": int(seed),
            "prior_resolution": int(getattr(prior, "resolution", views.shape[-1])), "poses": [list(p) for p in poses],
            "joint": joint}
    return GeneratedViews(np.ascontiguousarray(out, np.float32), c2w, intr, poses, seconds, info)


def lrm_views(image, gen: GeneratedViews, distance: float = C.CANONICAL_DISTANCE,
              fov_deg: float = C.CANONICAL_FOV_DEG) -> Tuple[np.ndarray, torch.Tensor]:
    """The sparse-view LRM's input: images [1 + n, S, S, 3] (the input first) and camera vectors [1 + n, 16] in the
    input view's canonical frame (``lrm.cameras_file.canonical_cameras``; the input is the canonical camera at
    ``distance`` / ``fov_deg``)."""
    from .cameras_file import canonical_cameras

    c2w0, k0 = pose_cameras([(0.0, 0.0)], distance, fov_deg)
    images = np.concatenate([np.asarray(image, np.float32)[None], gen.images])
    cams = canonical_cameras(torch.cat([c2w0, gen.c2w]).double(), torch.cat([k0, gen.intrinsics]).double())
    return images, cams


def check_multiview_checkpoint(folder):
    """(folder, config) of a checkpoint whose config describes a multi-view model (``model.transformer.multiview``),
    checked from its config alone (before any weights are read); :class:`CheckpointError` with one line otherwise."""
    from .config import load_config

    folder = Path(folder)
    if not folder.exists():
        hint = (" (train one: python train.py --config mv-tiny --init-from checkpoints/default "
                "model.encoder.kind=efficientnet_lite0 model.transformer.depth=8, then copy its "
                "model/ folder there; or pass --mv-checkpoint DIR)") if folder == DEFAULT_MV_CHECKPOINT else ""
        raise CheckpointError(f"multi-view checkpoint not found: {folder}{hint}")
    if not is_checkpoint_dir(folder):
        raise CheckpointError(f"{folder} is not a checkpoint folder (model.safetensors + config.yaml)")
    try:
        cfg = load_config(folder / CONFIG_NAME)
        task = cfg.get("task", None) or "lrm"
        multiview = bool(OmegaConf.select(cfg, "model.transformer.multiview", default=False))
    except Exception as e:  # noqa: BLE001 - a foreign config: one line
        raise CheckpointError(f"{folder} is not an LRM checkpoint ({str(e).splitlines()[0][:160]})") from None
    if task != "lrm":
        raise CheckpointError(f"{folder} is not an LRM checkpoint (it is a {task!r} model folder)")
    if not multiview:
        raise CheckpointError(f"{folder} is a one-view model (model.transformer.multiview=false); the front end "
                              "needs a multi-view checkpoint (e.g. trained with --config mv-tiny)")
    return folder, cfg


@dataclass
class FrontendResult:
    result: object  # lrm.pipeline.Result of the multi-view LRM (input_image = the input view, input_mask its alpha)
    generated: GeneratedViews
    views: np.ndarray  # [1 + n, S, S, 3]: every view the LRM saw, the input first
    prior_foreground_ratio: Optional[float] = None  # framing the prior was trained on (None: not recorded)
    radius: float = C.CUBE_RADIUS  # the LRM's triplane cube radius (model.render.radius; for write_result)
    device: str = "cpu"


def run_frontend(image, prior_dir, mv_checkpoint=None, config: Optional[FrontendConfig] = None, device=None,
                 mask=None, video: bool = False, progress: bool = False, **options) -> FrontendResult:
    """Image (path or array) -> :class:`FrontendResult`: preprocess with the multi-view checkpoint's own options
    (its weights not yet loaded), load the prior from ``prior_dir``, generate the views, free the prior, load the
    multi-view checkpoint (``options``: :class:`lrm.pipeline.Pipeline` options) and reconstruct from input + views."""
    from .diffusion import load_prior
    from .models import build_model
    from .pipeline import Pipeline, resolve_device

    cfg_fe = config or FrontendConfig()
    folder, mv_cfg = check_multiview_checkpoint(mv_checkpoint or DEFAULT_MV_CHECKPOINT)
    dev = resolve_device(device)
    options = {k: v for k, v in options.items() if v is not None}
    distance, fov = float(mv_cfg.camera.distance), float(mv_cfg.camera.fov_deg)
    timings = {}
    t = time.perf_counter()
    pre = Pipeline(build_model(mv_cfg, meta=True), mv_cfg, "cpu", **options).preprocess(image, mask)  # meta weights
    timings["preprocess"] = time.perf_counter() - t
    t = time.perf_counter()
    prior = load_prior(prior_dir, dev)
    timings["load_prior"] = time.perf_counter() - t
    ratio = getattr(prior, "foreground_ratio", None)
    a = pre.rgba[..., 3:]
    on_white = pre.rgba[..., :3] * a + (1 - a)  # the prior's inputs and outputs are on white
    gen = generate_views(prior, on_white, cfg_fe.poses, cfg_fe.steps, cfg_fe.guidance, cfg_fe.seed, distance, fov,
                         progress=progress, joint=cfg_fe.joint)
    timings["frontend"] = gen.seconds
    del prior
    release(dev)  # the prior's memory goes back before the LRM is loaded
    t = time.perf_counter()
    pipe = Pipeline.from_pretrained(folder, device=str(dev), **options)
    timings["load_lrm"] = time.perf_counter() - t
    if ratio is not None and abs(float(ratio) - pipe.opts["foreground_ratio"]) > 1e-6:
        log.warning("the prior was trained on objects framed at %.2f, the LRM's input is framed at %.2f: the "
                    "generated views' scale may not match their cameras", ratio, pipe.opts["foreground_ratio"])
    views, cams = lrm_views(pre.image, gen, distance, fov)
    result = pipe.run_views(views, cams, timings, {"views": len(views), "mask_source": pre.mask_source}, video=video)
    result.input_mask = pre.rgba[..., 3]
    return FrontendResult(result, gen, views, ratio, float(pipe.cfg.model.render.radius), str(pipe.device))


def release(device=None) -> None:
    """Give freed memory back after the caller dropped its last reference to a model (``del prior``)."""
    gc.collect()
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def views_strip(images: np.ndarray) -> np.ndarray:
    """[V, S, S, 3] -> one [S, V*S, 3] image, the views side by side (for ``generated_views.png``)."""
    return np.concatenate(list(images), 1)


def view_file_name(pose: Tuple[float, float]) -> str:
    """``view_az+90_el+0.png``: the file of one generated view (named as ``python -m lrm.diffusion.sample`` does)."""
    from .diffusion.sample import view_name

    return view_name(float(pose[0]), float(pose[1]))


__all__ = ["FrontendConfig", "GeneratedViews", "FrontendResult", "run_frontend", "DEFAULT_POSES", "DEFAULT_MV_CHECKPOINT", "generate_views",
           "lrm_views", "pose_cameras", "check_poses", "check_multiview_checkpoint", "release", "views_strip",
           "view_file_name"]
