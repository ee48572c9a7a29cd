"""Method plug-ins: every method, learned or not, answers one question per object — given the eval object's
input view(s) and cameras, produce a mesh (and optionally a renderer for the protocol cameras).

    @register_method("name")
    class MyMethod(Method):
        canonical_frame = True          # predicts in the canonical input-view frame (alignment off by default)
        defaults = {"steps": 100}       # tunable parameters (--set key=value, --sweep key=v1,v2)
        def setup(self, ctx): ...       # once per run (load weights); timed as setup_s
        def predict(self, obj, ctx) -> Prediction: ...   # per object; timed (wall s + peak memory)

``Prediction.mesh`` is a trimesh in the canonical frame (or any frame when ``canonical_frame`` is False: the
harness then aligns it to the GT). ``Prediction.render(c2w [V,4,4], intrinsics [V,4], resolution)`` returns
RGBA [V, H, W, 4] in [0, 1]; when absent, the harness rasterises the mesh with the injected mesh renderer.

Built in: ``lrm`` (a checkpoint through ``lrm.pipeline.Pipeline``, or any ``LRM`` model object via
:class:`ModelAdapter`), ``meshes:DIR`` (outside tools' meshes, one file per uid), and the calibration baselines
``sphere``, ``hull`` and the oracle ``bbox``; ``gt-mv+lrm`` (a sparse-view model fed GT views at the multi-view
front end's poses) and ``mv+lrm`` (the same model fed views a diffusion prior generated at those poses);
``lrm+ref``, ``lrm+sds`` and ``sds`` (refinement).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Type

import numpy as np

from ..conventions import CUBE_RADIUS
from .evalset import MESH_EXTENSIONS, EvalObject, load_mesh


class MethodError(Exception):
    """Unknown / unavailable method or bad parameters (one clear line at the command line)."""


class PredictionError(Exception):
    """A method could not produce a prediction for one object (recorded as failed; the run goes on)."""


@dataclass
class Prediction:
    mesh: Optional[object] = None
    render: Optional[Callable[[np.ndarray, np.ndarray, int], np.ndarray]] = None
    info: Dict[str, object] = field(default_factory=dict)  # stage timings, notes
    external_time_s: Optional[float] = None  # time reported by an outside tool (meshes:DIR timings.json)


@dataclass
class RunContext:
    device: str = "cpu"
    seed: int = 0
    protocol: dict = field(default_factory=dict)
    mesh_renderer: Optional[Callable] = None  # render_mesh(mesh, c2w, intrinsics, resolution) -> rgba, depth


class Method:
    name: str = ""
    canonical_frame: bool = True
    oracle: bool = False
    defaults: Dict[str, object] = {}

    def __init__(self, arg: Optional[str] = None, **params):
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise MethodError(f"method {self.name!r} has no parameter(s) {sorted(unknown)}; "
                              f"known: {sorted(self.defaults) or 'none'}")
        self.arg = arg
        self.params = {**self.defaults, **params}
        self.explicit = set(params)  # parameters the user set (the rest are defaults)

    def setup(self, ctx: RunContext) -> None:
        pass

    def predict(self, obj: EvalObject, ctx: RunContext) -> Prediction:
        raise NotImplementedError


_REGISTRY: Dict[str, Type[Method]] = {}
_UNAVAILABLE: Dict[str, str] = {}


def register_method(name: str):
    """Class decorator: make a :class:`Method` subclass available as ``--method name``."""

    def deco(cls):
        cls.name = name
        _REGISTRY[name] = cls
        _UNAVAILABLE.pop(name, None)
        return cls

    return deco


def register_unavailable(name: str, reason: str) -> None:
    if name not in _REGISTRY:
        _UNAVAILABLE[name] = reason


def available_methods():
    return sorted(_REGISTRY)


def parse_spec(spec: str):
    """``name`` or ``name:arg`` (``meshes:DIR``, ``lrm:CHECKPOINT``)."""
    spec = spec.strip()
    for name in sorted(list(_REGISTRY) + list(_UNAVAILABLE), key=len, reverse=True):
        if spec == name:
            return name, None
        if spec.startswith(name + ":"):
            return name, spec[len(name) + 1:]
    return spec.split(":", 1)[0], (spec.split(":", 1)[1] if ":" in spec else None)


def make_method(spec: str, **params) -> Method:
    name, arg = parse_spec(spec)
    if name in _UNAVAILABLE:
        raise MethodError(f"method {name!r} is not available yet: {_UNAVAILABLE[name]}")
    if name not in _REGISTRY:
        raise MethodError(f"unknown method {name!r}; available: {', '.join(available_methods())} "
                          f"(not yet: {', '.join(sorted(_UNAVAILABLE))})")
    return _REGISTRY[name](arg, **params)


def method_defaults(spec: str) -> Dict[str, object]:
    name, _ = parse_spec(spec)
    cls = _REGISTRY.get(name)
    return dict(cls.defaults) if cls else {}




# ------------------------------------------------------------------------------------------ helpers
def _input(obj: EvalObject):
    """Input view as float RGBA [H, W, 4], its mask, c2w and pixel-unit focal/centre."""
    rgba = obj.input_rgba.astype(np.float32) / 255.0
    mask = rgba[..., 3] >= 0.5
    if not mask.any():
        raise PredictionError("input view has an empty silhouette")
    return rgba, mask


def _mean_color(rgba, mask) -> np.ndarray:
    return rgba[..., :3][mask].mean(0)


def _colored(mesh, rgb) -> object:
    mesh.visual.vertex_colors = np.tile(np.r_[np.clip(np.asarray(rgb) * 255, 0, 255), 255].astype(np.uint8),
                                        (len(mesh.vertices), 1))
    return mesh


def _project(points: np.ndarray, c2w: np.ndarray, intr: np.ndarray, h: int, w: int):
    """World points -> pixel (u, v) and camera z (numpy twin of lrm.cameras.project_points)."""
    p = (points - c2w[:3, 3]) @ c2w[:3, :3]
    z = p[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = (p[:, 0] / z * intr[0] + intr[2]) * w
        v = (p[:, 1] / z * intr[1] + intr[3]) * h
    return u, v, z


def _lookup(img: np.ndarray, u, v, fill=0.0):
    h, w = img.shape[:2]
    iu, iv = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    ok = (iu >= 0) & (iu < w) & (iv >= 0) & (iv < h) & np.isfinite(u) & np.isfinite(v)
    out = np.full((len(u),) + img.shape[2:], fill, dtype=np.float32)
    out[ok] = img[iv[ok], iu[ok]]
    return out, ok


# ------------------------------------------------------------------------------------------ baselines
@register_method("sphere")
class SphereBaseline(Method):
    """A sphere of the input view's mean foreground colour whose projection has the silhouette's area,
    centred on the silhouette centroid's ray at the depth of the origin."""

    defaults = {"subdivisions": 3}

    def predict(self, obj, ctx):
        import trimesh

        rgba, mask = _input(obj)
        h, w = mask.shape
        K, c2w = obj.input_intrinsics, obj.input_c2w
        f = K[1] * h
        r_px = np.sqrt(mask.sum() / np.pi)
        d = float(np.linalg.norm(c2w[:3, 3]))
        radius = d * np.sin(np.arctan(r_px / f))
        vv, uu = np.nonzero(mask)
        u, v = uu.mean() + 0.5, vv.mean() + 0.5
        ray = np.array([(u / w - K[2]) / K[0], (v / h - K[3]) / K[1], 1.0])
        centre = c2w[:3, 3] + c2w[:3, :3] @ (ray / np.linalg.norm(ray)) * d
        m = trimesh.creation.icosphere(int(self.params["subdivisions"]), radius=radius)
        m.apply_translation(centre)
        return Prediction(_colored(m, _mean_color(rgba, mask)), info={"radius": float(radius)})


@register_method("hull")
class HullBaseline(Method):
    """The single input view's silhouette extruded through the triplane cube [-R, R]^3 (every cell whose centre
    projects inside the silhouette), marching cubes at ``resolution``, vertex colours from the input view."""

    defaults = {"resolution": 96}

    def predict(self, obj, ctx):
        import trimesh
        from skimage.measure import marching_cubes

        from .metrics import grid_points

        rgba, mask = _input(obj)
        h, w = mask.shape
        n = int(self.params["resolution"])
        R = float(ctx.protocol.get("radius", CUBE_RADIUS))
        pts = grid_points(n, R)
        u, v, z = _project(pts, obj.input_c2w, obj.input_intrinsics, h, w)
        inside, ok = _lookup(mask.astype(np.float32), u, v)
        occ = (inside > 0.5) & ok & (z > 0)
        if not occ.any():
            raise PredictionError("silhouette covers no grid cell")
        vol = np.pad(occ.reshape(n, n, n).astype(np.float32), 1)
        verts, faces, _, _ = marching_cubes(vol, 0.5)
        step = 2 * R / n
        verts = (verts - 1 + 0.5) * step - R  # padded index -> cell-centre coordinates
        mesh = trimesh.Trimesh(verts, faces[:, ::-1], process=False)
        u, v, _ = _project(verts, obj.input_c2w, obj.input_intrinsics, h, w)
        col, ok = _lookup(rgba[..., :3], np.clip(u, 0, w - 1e-3), np.clip(v, 0, h - 1e-3))
        fg, _ = _lookup(mask.astype(np.float32), np.clip(u, 0, w - 1e-3), np.clip(v, 0, h - 1e-3))
        col[fg < 0.5] = _mean_color(rgba, mask)
        mesh.visual.vertex_colors = np.c_[(np.clip(col, 0, 1) * 255).astype(np.uint8),
                                          np.full(len(col), 255, np.uint8)]
        return Prediction(mesh)


@register_method("bbox")
class BBoxOracle(Method):
    """Oracle: the GT mesh's bounding box in the object's own (normalised, pre-canonical) frame, moved into the
    canonical frame with the record's ``canonicalization`` (the plain canonical-frame AABB when the record has
    none), in the input's mean colour. It reads the GT: a reference for what box-level accuracy scores."""

    oracle = True

    def predict(self, obj, ctx):
        import trimesh

        rgba, mask = _input(obj)
        M = np.asarray(obj.record.get("canonicalization", np.eye(4)), np.float64)
        g = obj.gt_mesh.copy()
        g.apply_transform(np.linalg.inv(M))
        lo, hi = g.bounds
        m = trimesh.creation.box(extents=hi - lo)
        m.apply_translation((lo + hi) / 2)
        m.apply_transform(M)
        return Prediction(_colored(m, _mean_color(rgba, mask)))


# ------------------------------------------------------------------------------------------ outside meshes
@register_method("meshes")
class MeshFolder(Method):
    """``meshes:DIR``: one mesh per object uid from any outside tool (``DIR/<uid>.{glb,gltf,obj,ply,off,stl}`` or
    ``DIR/<uid>/<any>.<ext>``). Their frame and scale are unknown, so they are aligned to the GT (protocol).
    An optional ``DIR/timings.json`` ``{uid: seconds}`` is reported as the tool's own time."""

    canonical_frame = False

    def __init__(self, arg=None, **params):
        super().__init__(arg, **params)
        if not self.arg:
            raise MethodError("meshes needs a folder: --method meshes:DIR")
        self.folder = Path(self.arg)
        if not self.folder.is_dir():
            raise MethodError(f"meshes: no such folder {self.folder}")

    def setup(self, ctx):
        t = self.folder / "timings.json"
        self.timings = json.loads(t.read_text()) if t.is_file() else {}

    def find(self, uid: str) -> Optional[Path]:
        for ext in MESH_EXTENSIONS:
            for cand in (self.folder / f"{uid}{ext}", self.folder / f"{uid}{ext.upper()}"):
                if cand.is_file():
                    return cand
        sub = self.folder / uid
        if sub.is_dir():
            files = sorted(p for p in sub.iterdir() if p.suffix.lower() in MESH_EXTENSIONS)
            if files:
                return files[0]
        return None

    def predict(self, obj, ctx):
        path = self.find(obj.uid)
        if path is None:
            raise PredictionError(f"no mesh for {obj.uid} in {self.folder}")
        mesh = load_mesh(path)
        if len(mesh.faces) == 0:
            raise PredictionError(f"{path} has no faces")
        ext = self.timings.get(obj.uid)
        return Prediction(mesh, info={"file": str(path)}, external_time_s=None if ext is None else float(ext))


# ------------------------------------------------------------------------------------------ LRM
class ModelAdapter:
    """Run an ``LRM`` model object like the pipeline does, without preprocessing: the eval object's input view
    (composited on white) and its real camera go to the model; the triplane's density is sampled on a dense
    grid over [-R, R]^3, marching cubes at ``threshold`` gives the mesh, the decoder gives vertex colours."""

    def __init__(self, model, device="cpu", mc_resolution: int = 96, threshold: float = 10.0, chunk: int = 32768,
                 precision: str = "fp32", smooth: int = 0, field_smooth: float = 0.0):
        import torch

        self.precision = precision
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.mc_resolution, self.threshold, self.chunk = int(mc_resolution), float(threshold), int(chunk)
        self.smooth = int(smooth or 0)
        self.field_smooth = float(field_smooth or 0.0)
        self.radius = float(model.cfg.render.radius)

    def triplane(self, image_rgb: np.ndarray, c2w: np.ndarray, intrinsics: np.ndarray):
        """One view [H, W, 3] with its real camera (any frame: the model reads it as the canonical input camera)."""
        import torch

        from .. import cameras as cam
        from ..stages import reconstruct

        camv = cam.camera_vector(torch.as_tensor(c2w, dtype=torch.float32), torch.as_tensor(intrinsics, dtype=torch.float32))
        return reconstruct(self.model, image_rgb, camv, self.precision, self.device)

    def triplane_views(self, images_rgb: np.ndarray, c2w: np.ndarray, intrinsics: np.ndarray):
        """V views [V, H, W, 3] with their cameras (c2w [V, 4, 4], intrinsics [V, 4], any frame): the cameras are
        canonicalised to view 0 as the training loader does, then images [1, V, 3, H, W] go to the model."""
        import torch

        from ..cameras_file import canonical_cameras
        from ..stages import reconstruct

        cams = canonical_cameras(torch.as_tensor(np.asarray(c2w), dtype=torch.float64),
                                 torch.as_tensor(np.asarray(intrinsics), dtype=torch.float64))
        return reconstruct(self.model, images_rgb, cams, self.precision, self.device)

    def mesh(self, triplane, threshold=None):
        """The stages' mesher on a dense grid at ``threshold`` (None: the adapter's); None (with a note) when the
        density never crosses it."""
        from ..stages import extract_mesh

        stats = {}
        level = self.threshold if threshold is None else float(threshold)
        mesh = extract_mesh(self.model, triplane, resolution=self.mc_resolution, threshold=level,
                            radius=self.radius, coarse_factor=1, chunk=self.chunk, smooth=self.smooth,
                            field_smooth=self.field_smooth, stats=stats)
        stats = {k: stats[k] for k in ("density_max", "density_mean")}
        if not len(mesh.faces):
            smoothed = f" (after field smoothing {self.field_smooth:g})" if self.field_smooth else ""
            return None, {**stats, "note": f"density{smoothed} never crosses threshold {level:g}: empty mesh"}
        return mesh, stats

    def renderer(self, triplane, background=(1.0, 1.0, 1.0), render_resolution=None):
        """Protocol renderer for ``triplane``; with ``render_resolution`` set it renders at that size and
        upsamples bilinearly to the asked resolution (a CPU shortcut, recorded as a protocol deviation)."""
        import torch
        import torch.nn.functional as F

        from ..stages import render_views, straight_rgba

        grid = []  # the occupancy grid for empty-space skipping, built on the first call, shared by all views

        def render(c2w, intrinsics, resolution):
            res = int(render_resolution or resolution)
            if not grid:
                with torch.no_grad():
                    grid.append(self.model.occupancy_grid(triplane))
            outs = []
            for view in render_views(self.model, triplane, np.asarray(c2w), np.asarray(intrinsics), res,
                                     list(background), occupancy=grid[0]):
                rgba = straight_rgba(view, background)  # straight alpha: the harness composites it like any render
                if res != int(resolution):
                    rgba = F.interpolate(rgba.permute(2, 0, 1)[None], size=(int(resolution),) * 2,
                                         mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
                outs.append(rgba.cpu().numpy())
            return np.stack(outs)

        return render


def _input_rgb_on_white(obj: EvalObject) -> np.ndarray:
    rgba = obj.input_rgba.astype(np.float32) / 255.0
    return rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])


@register_method("lrm")
class LRMMethod(Method):
    """``lrm`` (default checkpoint) or ``lrm:CHECKPOINT`` through ``lrm.pipeline.Pipeline``; ``--set config=tiny``
    builds a random-weight model from a config instead (for tests and smoke runs).

    ``threshold`` is the density level of the surface (10, as the pipeline's default), ``mc_resolution`` the
    marching-cubes grid, ``render_resolution`` an optional lower volume-rendering size (CPU shortcut; the views are
    upsampled to the protocol's size and the deviation is recorded). ``preprocess=none`` (default) feeds the eval set's input view as rendered, with its true camera, so the
    prediction is in the protocol's canonical frame at GT scale. ``preprocess=pipeline`` uses the pipeline's own
    crop-and-pad (``Pipeline.run``): the object's scale then follows the crop, so use ``--align on``.
    ``mesher=auto`` (default) extracts the mesh with the pipeline's own ``extract_mesh`` when a checkpoint is loaded
    (so the shipped mesh is what is scored; explicit ``mc_resolution`` / ``threshold`` are passed to it as
    ``mc_resolution`` / ``mc_threshold``) and with :class:`ModelAdapter` otherwise; ``mesher=adapter`` forces the
    latter. ``precision=bf16`` runs image -> triplane under bf16 autocast (docs/inference.md). ``level=silhouette``
    cuts the mesh at the density level whose silhouette from the input camera best matches the input's alpha
    (``lrm.stages.silhouette_level``) instead of the fixed ``threshold``; the level is recorded as ``mc_level``.
    ``smooth`` sets the mesh's Taubin smoothing iterations (None: the checkpoint's ``infer.mesh_smooth``; 0 without
    a checkpoint); ``field_smooth`` the width (world units) of the density field's smoothing before marching cubes
    (None: the checkpoint's ``infer.field_smooth``; 0 without a checkpoint)."""

    defaults = {"config": None, "mc_resolution": 96, "threshold": 10.0, "preprocess": "none",
                "render_resolution": None, "mesher": "auto", "precision": "fp32", "level": "checkpoint",
                "smooth": None, "field_smooth": None}

    def setup(self, ctx):
        import torch

        torch.manual_seed(ctx.seed)
        p = self.params
        if p["level"] not in ("checkpoint", "silhouette"):
            raise MethodError(f"{self.name}: level must be checkpoint or silhouette, got {p['level']!r}")
        for key, option in (("smooth", "mesh_smooth"), ("field_smooth", "field_smooth")):
            if p[key] is not None:
                from ..pipeline import check_options
                from ..preprocess import InputError

                try:
                    p[key] = check_options({option: p[key]}, cli=False)[option]
                except InputError as e:
                    raise MethodError(f"{self.name}: {key}: {e}") from None
        self.pipeline = None
        if p["config"]:
            from ..config import load_config
            from ..models import build_model

            cfg = load_config(p["config"])
            model = build_model(cfg)
            self.adapter = ModelAdapter(model, ctx.device, p["mc_resolution"], p["threshold"],
                                        precision=p["precision"], smooth=p["smooth"],
                                        field_smooth=p["field_smooth"])
            self.source = f"random-weight model from config {p['config']}"
            return
        try:
            from ..pipeline import Pipeline
        except ImportError as e:
            raise MethodError(f"lrm: lrm.pipeline is not available in this checkout ({e}); "
                              f"use --set config=tiny for a random-weight model") from None
        options = {}
        if self.params["mesher"] != "adapter":
            if "mc_resolution" in self.explicit:
                options["mc_resolution"] = int(p["mc_resolution"])
            if "threshold" in self.explicit:
                options["mc_threshold"] = float(p["threshold"])
            if p["smooth"] is not None:
                options["mesh_smooth"] = int(p["smooth"])
            if p["field_smooth"] is not None:
                options["field_smooth"] = float(p["field_smooth"])
        if "precision" in self.explicit:
            options["precision"] = p["precision"]
        self.pipeline = Pipeline.from_pretrained(self.arg, device=ctx.device, **options)
        opts = getattr(self.pipeline, "opts", {})
        smooth = opts.get("mesh_smooth", 0) if p["smooth"] is None else p["smooth"]
        field_smooth = opts.get("field_smooth", 0.0) if p["field_smooth"] is None else p["field_smooth"]
        self.adapter = ModelAdapter(self.pipeline.model, ctx.device, p["mc_resolution"], p["threshold"],
                                    precision=p["precision"], smooth=smooth, field_smooth=field_smooth)
        self.source = f"checkpoint {self.arg or 'default'}"

    def predict(self, obj, ctx):
        t0 = time.perf_counter()
        info = {"source": self.source}
        if self.params["preprocess"] == "pipeline":
            if self.pipeline is None:
                raise PredictionError("preprocess=pipeline needs a checkpoint (lrm.pipeline)")
            res = self.pipeline.run(obj.input_rgba.astype(np.float32) / 255.0)
            info.update({f"t_{k}": v for k, v in res.timings.items()})
            tri = res.triplane.to(self.adapter.device)
            mesh = res.mesh if len(getattr(res.mesh, "faces", [])) else None
        else:
            tri = self.adapter.triplane(_input_rgb_on_white(obj), obj.input_c2w, obj.input_intrinsics)
            info["t_model"] = time.perf_counter() - t0
            level = self.silhouette_level(tri, obj, info) if self.params["level"] == "silhouette" else None
            mesh = self.extract(tri, info, level)
        return self.prediction(tri, mesh, info, ctx)

    def silhouette_level(self, tri, obj, info: dict) -> float:
        """The density level matched to the input's alpha from the input camera (``level=silhouette``)."""
        import torch

        from ..stages import DEFAULT_LEVELS, SILHOUETTE_RESOLUTION, ray_max_density, silhouette_level

        t = time.perf_counter()
        md = ray_max_density(self.adapter.model, tri, torch.as_tensor(obj.input_c2w, dtype=torch.float32),
                             torch.as_tensor(obj.input_intrinsics, dtype=torch.float32), SILHOUETTE_RESOLUTION,
                             self.adapter.radius)
        level, ious = silhouette_level(md, obj.input_rgba[..., 3].astype(np.float32) / 255.0, DEFAULT_LEVELS)
        info.update(mc_level=level, level_iou=ious[level], t_level=time.perf_counter() - t)
        return level

    def extract(self, tri, info: dict, level=None):
        """The mesh of a triplane (the pipeline's mesher with a checkpoint, else the adapter's) at density ``level``
        (None: the method's ``threshold`` / the checkpoint's); timings in ``info``."""
        t1 = time.perf_counter()
        extract = getattr(self.pipeline, "extract_mesh", None) if self.params["mesher"] == "auto" else None
        if extract is not None and level is not None:
            extract = self.pipeline.with_options(mc_threshold=float(level)).extract_mesh
        if extract is not None:
            timings, stats = {}, {}
            mesh = extract(tri, timings, stats)
            if mesh is not None and len(getattr(mesh, "faces", [])) == 0:
                mesh = None
            info.update({f"t_{k}": v for k, v in timings.items()})
            info.update({k: v for k, v in stats.items() if isinstance(v, (int, float, str, bool))})
            info["mesher"] = "pipeline"
        else:
            mesh, stats = self.adapter.mesh(tri, level)
            info.update(stats)
            info["mesher"] = "adapter"
        info["t_mesh"] = time.perf_counter() - t1
        return mesh

    def prediction(self, tri, mesh, info: dict, ctx) -> Prediction:
        rr = self.params["render_resolution"]
        if rr:
            info["render_resolution"] = int(rr)
            info["protocol_deviation"] = f"novel views rendered at {int(rr)}² and upsampled"
        return Prediction(mesh, render=self.adapter.renderer(tri, ctx.protocol.get("background", (1, 1, 1)), rr),
                          info=info)


def parse_view_list(spec) -> list:
    """``"90:0,180:0,270:0"`` (azimuth:elevation in degrees, relative to the input view) -> [(90.0, 0.0), ...]."""
    out = []
    for item in str(spec).replace(" ", "").split(","):
        if not item:
            continue
        az, _, el = item.partition(":")
        try:
            out.append((float(az), float(el or 0.0)))
        except ValueError:
            raise MethodError(f"extra_views: {item!r} is not azimuth:elevation (degrees)") from None
    return out


@register_method("gt-mv+lrm")
class GTMultiViewLRM(LRMMethod):
    """The sparse-view LRM fed ground-truth views: the eval object's input view plus ``num_views - 1`` GT views at
    ``extra_views`` (azimuth:elevation degrees relative to the input, default input + 90/180/270 at elevation 0,
    the poses a multi-view front end generates), so ``mv+lrm`` minus this is the error of the generated views.

    Where the extra views come from (``gt_views``): ``stored`` = the eval set's own views at those poses (its extra
    input views, or any stored view whose camera matches within 1e-4: same renderer as the input view); ``render``
    = the GT mesh rasterised at those poses (the harness's ``--mesh-renderer``, default lrm.render.raster with the
    protocol's shading); ``auto`` (default) = stored when every pose is stored, else render. The views are fed as
    rendered (composited on white, true cameras canonicalised to the input view), like ``lrm``'s
    ``preprocess=none``. Note: views at protocol poses are also scored as novel views. Other parameters: ``lrm``'s."""

    defaults = {**LRMMethod.defaults, "num_views": 4, "extra_views": "90:0,180:0,270:0", "gt_views": "auto"}

    def setup(self, ctx):
        p = self.params
        self.poses = parse_view_list(p["extra_views"])
        n = int(p["num_views"])
        if not 1 <= n <= 1 + len(self.poses):
            raise MethodError(f"gt-mv+lrm: num_views={n} needs 1..{1 + len(self.poses)} (input + extra_views)")
        if p["gt_views"] not in ("auto", "stored", "render"):
            raise MethodError(f"gt-mv+lrm: gt_views must be auto, stored or render, got {p['gt_views']!r}")
        if p["preprocess"] != "none":
            raise MethodError("gt-mv+lrm feeds the views as rendered: preprocess must be none")
        super().setup(ctx)
        if n > 1 and getattr(self.adapter.model, "view_embed", None) is None:
            raise MethodError(f"gt-mv+lrm: {self.source} is a one-view model (model.transformer.multiview=false); "
                              "use a multi-view checkpoint (e.g. trained with --config mv-tiny) or num_views=1")

    def extra_cameras(self, obj):
        """c2w [n, 4, 4] and intrinsics [n, 4] of the extra views: orbit cameras around the origin at the input
        camera's distance, azimuth/elevation relative to the (canonical) input view."""
        import torch

        from .. import cameras as cam

        poses = self.poses[: int(self.params["num_views"]) - 1]
        if not poses:
            return np.zeros((0, 4, 4), np.float32), np.zeros((0, 4), np.float32)
        d = float(np.linalg.norm(obj.input_c2w[:3, 3]))
        az, el = (torch.tensor([p[i] for p in poses], dtype=torch.float64) for i in (0, 1))
        c2w = cam.orbit_camera(az, el, torch.full_like(az, d)).numpy().astype(np.float32)
        return c2w, np.repeat(obj.input_intrinsics[None], len(poses), 0)

    def gt_views(self, obj, c2w, intr, ctx):
        """RGBA uint8 [n, H, W, 4] of the extra views and where they came from (stored | render)."""
        stored = []
        for c in c2w:
            err = np.abs(obj.c2w - c[None]).reshape(len(obj.c2w), -1).max(1)
            hit = np.flatnonzero(err < 1e-4)
            extra_inputs = [i for i in hit if i in set(obj.input_indices[1:].tolist())]
            stored.append(extra_inputs[0] if extra_inputs else (hit[0] if len(hit) else None))
        mode = self.params["gt_views"]
        if mode == "stored" and any(i is None for i in stored):
            missing = [list(self.poses[k]) for k, i in enumerate(stored) if i is None]
            raise PredictionError(f"gt_views=stored: the eval set has no view at azimuth:elevation {missing}")
        if mode != "render" and all(i is not None for i in stored):
            return obj.rgba[[int(i) for i in stored]], "stored"
        from ..render.raster import render_views

        res = obj.input_rgba.shape[:2]
        kw = {} if ctx.mesh_renderer is not None else {"ambient": ctx.protocol.get("shading_ambient", 1.0)}
        rgba = render_views(obj.gt_mesh, c2w, intr, res, renderer=ctx.mesh_renderer, **kw)
        return (np.clip(rgba, 0, 1) * 255 + 0.5).astype(np.uint8), "render"

    def reconstruct(self, images, obj, c2w_x, intr_x, info: dict, ctx) -> Prediction:
        """The sparse-view model on the input view + the extra views (images on white, [1 + n, S, S, 3])."""
        t1 = time.perf_counter()
        tri = self.adapter.triplane_views(images, np.concatenate([obj.input_c2w[None], c2w_x]),
                                          np.concatenate([obj.input_intrinsics[None], intr_x]))
        info["t_model"] = time.perf_counter() - t1
        mesh = self.extract(tri, info)
        return self.prediction(tri, mesh, info, ctx)

    def predict(self, obj, ctx):
        t0 = time.perf_counter()
        c2w_x, intr_x = self.extra_cameras(obj)
        info = {"source": self.source, "num_views": 1 + len(c2w_x)}
        rgba = obj.input_rgba[None]
        if len(c2w_x):
            extra, info["gt_views"] = self.gt_views(obj, c2w_x, intr_x, ctx)
            rgba = np.concatenate([rgba, extra])
        info["t_gt_views"] = time.perf_counter() - t0
        a = rgba.astype(np.float32) / 255.0
        images = a[..., :3] * a[..., 3:] + (1 - a[..., 3:])  # on white, as lrm's preprocess=none
        return self.reconstruct(images, obj, c2w_x, intr_x, info, ctx)


@register_method("mv+lrm")
class MultiViewLRM(GTMultiViewLRM):
    """The multi-view front end (lrm/frontend.py): the eval input view (as rendered, on white) goes to a view prior,
    which generates the views at ``extra_views`` (the poses of ``gt-mv+lrm``, at the input camera's distance and
    FoV), and the same sparse-view model reconstructs from the input and them. So ``mv+lrm`` minus ``gt-mv+lrm``
    is the error of the generated views. Parameters: ``gt-mv+lrm``'s (``gt_views`` unused) plus ``prior`` (a prior
    folder; default checkpoints/zero123-mv-tiny, views denoised jointly), ``steps`` (DDIM), ``guidance`` (CFG scale), ``seed`` (the noise; the
    same for every object), ``joint`` (None: as the prior denoises, jointly or not; false: views independently).
    ``info``: ``t_frontend`` (sampling seconds), ``t_model``, the mesh timings."""

    defaults = {**GTMultiViewLRM.defaults, "prior": None, "steps": 50, "guidance": 3.0, "seed": 0, "joint": None}

    def setup(self, ctx):
        super().setup(ctx)
        from ..checkpoint import CheckpointError
        from ..diffusion import load_prior
        from ..diffusion.pixel_prior import DEFAULT_MV_PRIOR
        from ..frontend import check_poses
        from ..preprocess import InputError

        try:
            check_poses(self.poses[: int(self.params["num_views"]) - 1] or [(90.0, 0.0)])
        except InputError as e:
            raise MethodError(f"{self.name}: extra_views: {e}") from None
        path = Path(self.params["prior"]) if self.params["prior"] else DEFAULT_MV_PRIOR
        if not path.exists():
            raise MethodError(f"{self.name}: diffusion prior not found: {path} (set prior=DIR)")
        try:
            self.prior = load_prior(path, device=ctx.device)
        except CheckpointError as e:
            raise MethodError(f"{self.name}: {e}") from None

    def generated_views(self, obj, n: int, image: np.ndarray):
        """The :class:`lrm.frontend.GeneratedViews` of the first ``n`` extra poses (RGB on white, float [n, H, W, 3]),
        at the input camera's distance and FoV."""
        from ..frontend import generate_views

        p = self.params
        fov = float(np.degrees(2 * np.arctan(0.5 / float(obj.input_intrinsics[1]))))
        return generate_views(self.prior, image, self.poses[:n], int(p["steps"]), float(p["guidance"]), int(p["seed"]),
                              distance=float(np.linalg.norm(obj.input_c2w[:3, 3])), fov_deg=fov, joint=p["joint"])

    def predict(self, obj, ctx):
        c2w_x, intr_x = self.extra_cameras(obj)
        info = {"source": self.source, "num_views": 1 + len(c2w_x)}
        image = _input_rgb_on_white(obj)
        images = image[None]
        t0 = time.perf_counter()
        if len(c2w_x):
            gen = self.generated_views(obj, len(c2w_x), image)
            images = np.concatenate([images, gen.images])
            info.update({"prior_steps": gen.info["steps"], "prior_guidance": gen.info["guidance"],
                         "prior_resolution": gen.info["prior_resolution"]})
        info["t_frontend"] = time.perf_counter() - t0
        return self.reconstruct(images, obj, c2w_x, intr_x, info, ctx)


# ------------------------------------------------------------------------------------------ refinement
class RefinedLRM(LRMMethod):
    """Per-instance optimisation after (or instead of) the feed-forward pass (lrm/refine/, docs/refine.md).

    ``lrm+ref`` refines the LRM's triplane with reference-view losses only (the ablation, no prior); ``lrm+sds``
    adds SDS from the view prior on random orbit views; ``sds`` runs the same loop from a small-noise triplane (the
    pure optimisation baseline, Zero-1-to-3 SDS / Magic123 style). The input is the eval object's input view as
    rendered (``lrm``'s ``preprocess=none``), its mask the view's alpha. Parameters: ``lrm``'s, plus ``prior``
    (a prior folder: the project's tiny prior or a Zero-1-to-3 diffusers folder; default checkpoints/zero123-mv-tiny, views denoised jointly),
    ``steps``, ``guidance`` (CFG scale), ``t_max`` (upper end of the t range at the start, annealed to
    ``t_max_end`` over the run), ``w_sds``, ``lr``, ``pixel_plane`` (fixed | optimise: whether a pixel-plane scene's
    fourth plane is refined too), ``level`` (checkpoint (default): the refined mesh is cut at the checkpoint's
    ``infer.refined_mc_threshold``, else its ``mc_threshold``; silhouette: matched to the input's alpha; an explicit
    ``threshold`` is used as given; ``RefineConfig.level``), ``w_anchor`` (weight of the term that keeps the refined
    field's opacity near the LRM's, ``RefineConfig.w_anchor``); seconds include the feed-forward pass."""

    mode = "sds"
    defaults = {**LRMMethod.defaults, "prior": None, "steps": 60, "guidance": 3.0, "t_max": 0.98,
                "t_max_end": 0.5, "w_sds": 2e-4, "lr": 0.02, "n_views": 1, "pixel_plane": "fixed",
                "level": "checkpoint", "w_anchor": 1.0}

    def setup(self, ctx):
        super().setup(ctx)
        p = self.params
        if p["preprocess"] != "none":
            raise MethodError(f"{self.name}: the refinement reads the input view as rendered: preprocess must be none")
        self.prior = None
        if self.mode != "ref":
            from ..refine.io import load_prior
            from ..refine.loop import RefineError

            try:
                self.prior = load_prior(p["prior"], device=ctx.device)
            except (RefineError, FileNotFoundError, ValueError) as e:
                raise MethodError(f"{self.name}: {e}") from None

    def refine_config(self):
        from ..refine.loop import RefineConfig

        p = self.params
        sds = {"guidance_scale": float(p["guidance"]), "t_range_start": (0.02, float(p["t_max"])),
               "t_range_end": (0.02, min(float(p["t_max"]), float(p["t_max_end"])))}
        level = float(p["threshold"]) if "threshold" in self.explicit else p["level"]
        return RefineConfig(mode=self.mode, steps=int(p["steps"]), w_sds=float(p["w_sds"]), lr=float(p["lr"]),
                            n_views=int(p["n_views"]), pixel_plane=str(p["pixel_plane"]), seed=0, save_every=0, sds=sds,
                            level=level, w_anchor=float(p["w_anchor"]))

    def predict(self, obj, ctx):
        from ..refine.loop import RefineError, refine

        t0 = time.perf_counter()
        info = {"source": self.source, "mode": self.mode}
        image = _input_rgb_on_white(obj)
        mask = obj.input_rgba[..., 3].astype(np.float32) / 255.0
        tri = None
        if self.mode != "scratch":
            tri = self.adapter.triplane(image, obj.input_c2w, obj.input_intrinsics)
        info["t_model"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        try:
            res = refine(tri, self.pipeline or self.adapter.model, image, self.prior, self.refine_config(), mask=mask,
                         progress=False, device=self.adapter.device)
        except RefineError as e:
            raise PredictionError(str(e)) from None
        info["t_refine"] = time.perf_counter() - t1
        info.update({f"refine_{k}": v for k, v in res.stats.items() if isinstance(v, (int, float))})
        tri = res.triplane.to(self.adapter.device)  # the decoder stays the checkpoint's (decoder_lr 0)
        if res.level is not None:
            info["mc_level"] = res.level
        mesh = self.extract(tri, info, res.level)
        return self.prediction(tri, mesh, info, ctx)


@register_method("lrm+ref")
class LRMRefRefined(RefinedLRM):
    __doc__ = RefinedLRM.__doc__
    mode = "ref"


@register_method("lrm+sds")
class LRMSDSRefined(RefinedLRM):
    __doc__ = RefinedLRM.__doc__
    mode = "sds"


@register_method("sds")
class SDSFromScratch(RefinedLRM):
    __doc__ = RefinedLRM.__doc__
    mode = "scratch"
