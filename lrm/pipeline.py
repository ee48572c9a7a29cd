"""Image -> textured mesh (+ turntable), the Python API behind infer.py.

    from lrm import Pipeline
    result = Pipeline.from_pretrained().run("examples/duck.png")
    result.mesh.export("duck.glb")

Steps (each timed in ``result.timings``): preprocess (lrm/preprocess.py) -> model -> triplane ->
density grid + marching cubes + colours (lrm/mesh.py) -> optional turntable from the shared renderer.
The mesh is in the canonical input-view frame (+Z up, input camera on +X); ``export`` rotates it into the
Y-up viewer frame unless told otherwise (docs/inference.md).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from . import stages
from .checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from .config import ConfigError, check_number, merge_over_defaults
from .mesh import to_viewer_frame
from .precision import autocast_for
from .preprocess import InputError, preprocess

log = logging.getLogger(__name__)

@dataclass
class InferConfig:
    """The ``infer`` config section: pipeline options stored with a checkpoint (``<checkpoint>/config.yaml``),
    overridden per call by infer.py flags / ``Pipeline(..., **options)``. Ranges: ``INFER_LIMITS``."""

    input_size: int = 256  # preprocessed image side (the encoder resizes to its own image_size)
    foreground_ratio: float = 0.85  # the object's longer side spans this share of the preprocessed image
    # the colour the input is composited on (TripoSR checkpoints: grey 0.5)
    input_background: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    mc_resolution: int = 129  # grid points per side (2^k + 1 so the coarse-to-fine grid aligns)
    mc_threshold: float = 10.0  # density level of the surface
    # density level of the surface of a refined scene (lrm/refine: refined fields are cut lower); None: mc_threshold
    refined_mc_threshold: Optional[float] = None
    mesh_smooth: int = 0  # Taubin smoothing iterations of the extracted mesh (lrm/mesh.py; 0: off)
    # width (world units) of the Gaussian smoothing of the log-density grid before marching cubes (lrm/mesh.py; 0: off)
    field_smooth: float = 0.0
    coarse_factor: int = 4  # coarse-to-fine density grid: every n-th point first (lrm/mesh.py; 1 = dense)
    texture: str = "vertex"  # vertex | uv
    texture_size: int = 1024  # UV texture map side (texture: uv)
    video_frames: int = 24  # turntable views
    video_resolution: int = 96  # turntable frame side
    video_elevation: float = 20.0  # turntable camera elevation in degrees
    chunk: int = 32768  # points per decoder query
    precision: str = "fp32"  # fp32 | bf16: autocast for image encoder + transformer (+ upsampler); decoder and renderer fp32


INFER_KEYS = tuple(f.name for f in fields(InferConfig))

#: Ranges (inclusive) of the numeric options; checked before any work (a 1025^3 grid is already 4 GB).
INFER_LIMITS = dict(input_size=(32, 2048, True), foreground_ratio=(0.05, 1.0, False), mc_resolution=(8, 513, True),
                    mc_threshold=(-1e6, 1e6, False), refined_mc_threshold=(-1e6, 1e6, False), mesh_smooth=(0, 1000, True), field_smooth=(0.0, 0.2, False), coarse_factor=(1, 32, True), texture_size=(16, 8192, True),
                    video_frames=(1, 1000, True), video_resolution=(16, 2048, True),
                    video_elevation=(-90.0, 90.0, False), chunk=(1, 1 << 22, True))


def check_options(opts: Dict[str, object], cli: bool = True) -> Dict[str, object]:
    """Validate pipeline options (``None`` = not given); names are shown as ``--flag`` or ``infer.key``."""
    out = dict(opts)
    for key, value in opts.items():
        label = f"--{key.replace('_', '-')}" if cli else f"infer.{key}"
        if value is None or key not in INFER_LIMITS:
            continue
        lo, hi, integer = INFER_LIMITS[key]
        try:
            out[key] = check_number(label, value, lo, hi, integer)
        except ConfigError as e:
            raise InputError(str(e)) from None
    if out.get("texture") not in (None, "vertex", "uv"):
        raise InputError(f"{'--texture' if cli else 'infer.texture'} must be vertex or uv, got {out['texture']!r}")
    return out


def infer_section(section) -> Dict[str, object]:
    """The pipeline options of a config's ``infer`` section (a mapping or None) over :class:`InferConfig`'s
    defaults. An unknown key, a value of the wrong type or out of range raises :class:`InputError` naming it."""
    if isinstance(section, DictConfig):
        section = OmegaConf.to_container(section, resolve=True)
    if isinstance(section, dict):
        section = check_options(section, cli=False)  # ranges first: integer-valued floats become ints
    try:
        return OmegaConf.to_container(merge_over_defaults(InferConfig, section, "infer"))
    except ConfigError as e:
        raise InputError(str(e)) from None


@dataclass(frozen=True)
class Option:
    """A user-facing setting, described once so front ends (infer.py flags, the web app) can offer it.

    ``applies`` says where it goes: "init" = a Pipeline option (``with_options``), "run" = a keyword of
    :meth:`Pipeline.run`. A new stage (refinement, multi-view) adds its entries here and the app shows them.
    """
    name: str
    kind: str  # int | float | choice | bool
    label: str
    help: str = ""
    flag: str = ""  # the infer.py flag
    choices: Tuple = ()
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    step: Optional[float] = None
    applies: str = "init"
    default: object = None


USER_OPTIONS = (
    Option("mc_resolution", "choice", "mesh resolution", "marching-cubes grid points per side",
           "--mc-resolution", choices=(33, 65, 129, 257)),
    Option("mc_threshold", "float", "surface threshold", "density level of the surface (lower: fuller mesh)",
           "--mc-threshold"),
    Option("mesh_smooth", "int", "mesh smoothing", "Taubin smoothing iterations (0: the raw marching-cubes surface)",
           "--mesh-smooth", minimum=0, maximum=100, step=1),
    Option("field_smooth", "float", "field smoothing",
           "width (world units) of the density field's smoothing before marching cubes (0: off); removes small lumps",
           "--field-smooth", minimum=0.0, maximum=0.2, step=0.005),
    Option("texture", "choice", "texture", "vertex colours, or a baked UV texture map", "--texture",
           choices=("vertex", "uv")),
    Option("texture_size", "choice", "texture size", "UV texture map side in pixels (uv texture only)",
           "--texture-size", choices=(256, 512, 1024, 2048)),
    Option("video", "bool", "turntable video", "render a turntable of the triplane (slow on CPU)", "--video",
           applies="run", default=True),
    Option("video_frames", "int", "turntable frames", "views in the turntable", "--video-frames",
           minimum=1, maximum=96, step=1),
    Option("precision", "choice", "precision", "bf16 autocast for encoder and transformer (CPUs with bf16)",
           "--precision", choices=("fp32", "bf16")),
)

Progress = stages.Progress


@dataclass
class Result:
    mesh: "object"  # trimesh.Trimesh, canonical frame
    triplane: torch.Tensor  # [1, 3, C, H, W]
    input_image: np.ndarray  # [S, S, 3] preprocessed model input
    timings: Dict[str, float] = field(default_factory=dict)
    frames: Optional[List[np.ndarray]] = None  # turntable frames, uint8 [H, W, 3]
    stats: Dict[str, object] = field(default_factory=dict)
    input_mask: Optional[np.ndarray] = None  # [S, S] alpha of the preprocessed input (for refinement)


def resolve_device(device: Optional[str]) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA device is available")
    return torch.device(device)


class Pipeline:
    def __init__(self, model, cfg, device="cpu", **options):
        self.model, self.cfg = model.eval(), cfg
        self.device = torch.device(device)
        opts = infer_section(cfg.get("infer"))
        opts.update(check_options({k: v for k, v in options.items() if v is not None}))
        unknown = set(opts) - set(INFER_KEYS)
        if unknown:
            raise InputError(f"unknown pipeline options: {sorted(unknown)}")
        try:
            autocast_for(opts["precision"], self.device)  # validates the option
        except ValueError as e:
            raise InputError(str(e)) from None
        self.opts = opts
        log.info("pipeline on %s (%s)", self.device, opts["precision"])

    @classmethod
    def from_pretrained(cls, path: Optional[str | os.PathLike] = None, device: Optional[str] = None, **options):
        dev = resolve_device(device)
        model, cfg = load_checkpoint(Path(path) if path else DEFAULT_CHECKPOINT, dev)
        return cls(model, cfg, dev, **options)

    def with_options(self, **options) -> "Pipeline":
        """A pipeline on the same (already loaded) model with some options changed; None keeps a value."""
        changed = {k: v for k, v in options.items() if v is not None}
        return Pipeline(self.model, self.cfg, self.device, **{**self.opts, **changed})

    def user_options(self) -> List[Option]:
        """The settings a front end can offer, with this pipeline's current values as defaults."""
        return [o if o.applies != "init" else replace(o, default=self.opts[o.name]) for o in USER_OPTIONS]

    # ---------------------------------------------------------------- stages
    def preprocess(self, image, mask=None):
        """The model input exactly as :meth:`run` makes it (crop, rescale, composite): lrm.preprocess."""
        o = self.opts
        return preprocess(image, o["input_size"], mask, o["foreground_ratio"], tuple(o["input_background"]))

    def input_camera(self) -> torch.Tensor:
        cam = self.cfg.camera
        return self.model.default_camera(1, self.device, torch.float32, cam.distance, cam.fov_deg)

    def triplane(self, image: np.ndarray) -> torch.Tensor:
        """The model on one preprocessed image [S, S, 3], as one view: images [1, 1, 3, S, S], cameras [1, 1, 16]."""
        return stages.reconstruct(self.model, image, self.input_camera()[0], self.opts["precision"], self.device)

    def triplane_views(self, images: np.ndarray, cameras: torch.Tensor) -> torch.Tensor:
        """The model on V preprocessed views [V, S, S, 3] with their camera vectors [V, 16] in the canonical frame of
        view 0 (``lrm.cameras_file.canonical_cameras``): images [1, V, 3, S, S], cameras [1, V, 16]. Needs a
        multi-view model for V > 1 (``lrm.multiview_input`` prepares the views from files)."""
        return stages.reconstruct(self.model, images, cameras, self.opts["precision"], self.device)

    def density_fn(self, triplane):
        return stages.density_fn(self.model, triplane)

    def extract_mesh(self, triplane, timings: Dict[str, float], stats: dict):
        o = self.opts
        return stages.extract_mesh(self.model, triplane, resolution=o["mc_resolution"], threshold=o["mc_threshold"],
                                   radius=self.cfg.model.render.radius, coarse_factor=o["coarse_factor"],
                                   chunk=o["chunk"], texture=o["texture"], texture_size=o["texture_size"],
                                   smooth=o["mesh_smooth"], field_smooth=o["field_smooth"], timings=timings,
                                   stats=stats)

    def turntable(self, triplane, frames: Optional[int] = None,
                  progress: Optional[Progress] = None) -> List[np.ndarray]:
        o, cam = self.opts, self.cfg.camera
        return stages.turntable(self.model, triplane, int(frames or o["video_frames"]), o["video_elevation"],
                                cam.distance, cam.fov_deg, o["video_resolution"], progress)

    # ---------------------------------------------------------------- all together
    def run(self, image, mask=None, video: bool = False, progress: Optional[Progress] = None) -> Result:
        """One image (path, array or PIL; optional mask) -> :class:`Result`. ``progress(stage, fraction)`` is called
        as each stage starts (and per turntable frame)."""
        report = progress or (lambda stage, done: None)
        report("preprocess", 0.0)
        t = time.perf_counter()
        pre = self.preprocess(image, mask)
        timings = {"preprocess": time.perf_counter() - t}
        result = self.run_views(pre.image[None], self.input_camera(), timings, {"mask_source": pre.mask_source},
                                video, progress)
        result.input_mask = pre.rgba[..., 3]
        return result

    def run_views(self, views: np.ndarray, cameras: torch.Tensor, timings: Optional[dict] = None,
                  stats: Optional[dict] = None, video: bool = False, progress: Optional[Progress] = None) -> Result:
        """Prepared views [V, S, S, 3] + camera vectors [V, 16] in view 0's canonical frame -> :class:`Result`
        (reconstruct, mesh, optional turntable; ``input_image`` = view 0). :meth:`run` (one preprocessed image),
        ``--cameras`` (lrm/multiview_input.py) and the multi-view front end (lrm/frontend.py) end here."""
        report = progress or (lambda stage, done: None)
        timings = {} if timings is None else timings
        stats = {} if stats is None else stats
        report("model", 0.0)
        t = time.perf_counter()
        tri = self.triplane_views(views, cameras)
        timings["model"] = time.perf_counter() - t
        report("mesh", 0.0)
        mesh = self.extract_mesh(tri, timings, stats)
        frames = None
        if video:
            t = time.perf_counter()
            frames = self.turntable(tri, progress=report)
            timings["turntable"] = time.perf_counter() - t
        return Result(mesh=mesh, triplane=tri.cpu(), input_image=views[0], timings=timings, frames=frames, stats=stats)


def export_mesh(mesh, path: Path, fmt: str, orientation: str = "viewer") -> List[Path]:
    """Write the mesh as GLB / OBJ (+MTL, texture) / PLY; returns the files written."""
    m = mesh.copy()
    if orientation == "viewer":
        m.vertices = to_viewer_frame(np.asarray(m.vertices))
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "obj":
        from trimesh.exchange.obj import export_obj

        text, files = export_obj(m, include_texture=True, return_texture=True, mtl_name=f"{path.stem}.mtl")
        path.write_text(text)
        written = [path]
        for name, data in files.items():
            (path.parent / name).write_bytes(data)
            written.append(path.parent / name)
        return written
    m.export(path, file_type=fmt)
    return [path]


def save_video(frames: List[np.ndarray], path: Path, fps: int = 12) -> Path:
    import imageio

    if path.suffix == ".gif":
        imageio.mimsave(path, frames, duration=1.0 / fps, loop=0)
    else:
        imageio.mimsave(path, frames, fps=fps, macro_block_size=1)
    return path
