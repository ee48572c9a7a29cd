"""Run methods over an evaluation set: per-object JSON (resumable), robust to failures and time-outs.

Layout of ``OUT``::

    OUT/run.json                       eval set, protocol, methods, device, options of the last run
    OUT/objects/<variant>/<uid>.json   one result per method variant and object (status ok | failed)
    OUT/renders/<variant>/<uid>.png    a strip of a few novel views (for the report's image grid)
    OUT/results.csv, OUT/report.md, OUT/*.png   written by lrm.evaluate.report

A variant is a method with one setting of its parameters (``lrm[mc_resolution=64]`` in a sweep). A rerun skips
objects whose JSON exists (``retry_failed`` reruns the failed ones).
"""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import platform
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from . import metrics as M
from .align import align_mesh
from .evalset import EvalObject, EvalSet
from .methods import Method, MethodError, Prediction, PredictionError, RunContext, make_method, method_defaults
from ..render.raster import render_views

log = logging.getLogger(__name__)

#: novel views (positions in novel_indices) saved per object for the report's image grid
GRID_VIEWS = (2, 5, 9, 14)


class ObjectTimeout(Exception):
    pass


@dataclass
class Variant:
    spec: str  # method spec as given (name or name:arg)
    params: Dict[str, object] = field(default_factory=dict)  # fixed --set params + this variant's sweep values
    sweep: Dict[str, object] = field(default_factory=dict)

    @property
    def name(self) -> str:
        if not self.sweep:
            return self.spec
        return self.spec + "[" + ",".join(f"{k}={v}" for k, v in self.sweep.items()) + "]"

    @property
    def dirname(self) -> str:
        return variant_dirname(self.name)


def variant_dirname(name: str) -> str:
    """Folder name of a method variant under objects/ and renders/."""
    return "".join(c if c.isalnum() or c in "-_.=+[]," else "_" for c in name)


def parse_value(s: str):
    """'64' -> 64, '0.5' -> 0.5, 'true' -> True, 'none' -> None, anything else stays a string."""
    low = s.strip().lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(s)
        except ValueError:
            pass
    return s


def expand_variants(specs: Sequence[str], set_params: Dict[str, object], sweeps: Dict[str, list]) -> List[Variant]:
    """One Variant per method and per combination of the sweep values that method knows."""
    known = {s: method_defaults(s) for s in specs}
    for k in list(set_params) + list(sweeps):
        if not any(k in d for d in known.values()):
            raise MethodError(f"no selected method has a parameter {k!r} "
                              f"({'; '.join(f'{s}: {sorted(d) or None}' for s, d in known.items())})")
    out = []
    for s in specs:
        fixed = {k: v for k, v in set_params.items() if k in known[s]}
        keys = [k for k in sweeps if k in known[s]]
        for combo in itertools.product(*[sweeps[k] for k in keys]) if keys else [()]:
            sw = dict(zip(keys, combo))
            out.append(Variant(s, {**fixed, **sw}, sw))
    return out


# ------------------------------------------------------------------------------------------ cost
def device_name(device: str) -> str:
    if str(device).startswith("cuda"):
        import torch

        return f"GPU: {torch.cuda.get_device_name(torch.device(device))}"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch

        threads = torch.get_num_threads()
    except ImportError:
        threads = os.cpu_count()
    return f"CPU: {model} ({os.cpu_count()} cores, {threads} torch threads)"


class PeakMemory:
    """Peak resident memory (MB) of this process while the block runs (psutil sampled every 10 ms;
    ``ru_maxrss`` when psutil is missing), and ``torch.cuda.max_memory_allocated`` on CUDA devices."""

    def __init__(self, device: str = "cpu", interval: float = 0.01):
        self.device, self.interval = str(device), interval
        self.peak_mb: Optional[float] = None
        self.start_mb: Optional[float] = None
        self.kind = "rss"

    def __enter__(self):
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_mb = torch.cuda.memory_allocated(self.device) / 2 ** 20
            self.kind = "cuda_max_allocated"
            return self
        try:
            import psutil

            proc = psutil.Process()
            self._peak = proc.memory_info().rss
            self.start_mb = self._peak / 2 ** 20
            self._stop = threading.Event()

            def sample():
                while not self._stop.wait(self.interval):
                    self._peak = max(self._peak, proc.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        except ImportError:
            self._thread = None
        return self

    def __exit__(self, *exc):
        if self.kind == "cuda_max_allocated":
            import torch

            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        elif self._thread is not None:
            import psutil

            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self._peak, psutil.Process().memory_info().rss) / 2 ** 20
        else:
            import resource

            self.kind = "ru_maxrss"
            self.peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return False


@contextlib.contextmanager
def time_limit(seconds: Optional[float]):
    """Raise ObjectTimeout after ``seconds`` (SIGALRM; only in the main thread of a Unix process)."""
    usable = seconds and seconds > 0 and hasattr(signal, "setitimer") and \
        threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def handler(signum, frame):
        raise ObjectTimeout(f"timed out after {seconds:g} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ------------------------------------------------------------------------------------------ GT cache
class GTCache:
    """Per-object GT surface samples and occupancy (computed once per run, small); the composited novel views
    are rebuilt from the uint8 views on each call (cheap, and memory stays flat on big sets)."""

    def __init__(self, protocol: dict):
        self.p = protocol
        self._geo: Dict[str, dict] = {}

    def get(self, obj: EvalObject) -> dict:
        p = self.p
        if obj.uid not in self._geo:
            gt = obj.gt_mesh
            self._geo[obj.uid] = {
                "pts": M.sample_surface(gt, p["n_surface_samples"], p["sample_seed"]),
                "occ": M.occupancy(gt, M.grid_points(p["iou_resolution"], p["radius"]))[0],
            }
        rgba = obj.rgba[obj.novel_indices]
        return {**self._geo[obj.uid], "rgb": M.composite(rgba, p["background"]),
                "mask": rgba[..., 3].astype(np.float32) / 255.0}


# ------------------------------------------------------------------------------------------ scoring
def score(pred: Prediction, obj: EvalObject, gt: dict, protocol: dict, aligned_mesh, mesh_renderer,
          lpips_fn=None) -> Dict[str, object]:
    """Geometry and novel-view metrics of one prediction; also returns the rendered views under '_renders'."""
    p = protocol
    out: Dict[str, object] = {}
    if aligned_mesh is not None and len(aligned_mesh.faces) > 0:
        pts = M.sample_surface(aligned_mesh, p["n_surface_samples"], p["sample_seed"])
        out.update(M.chamfer_fscore(pts, gt["pts"], p["fscore_taus"]))
        occ_p, how = M.occupancy(aligned_mesh, M.grid_points(p["iou_resolution"], p["radius"]))
        union = np.logical_or(occ_p, gt["occ"]).sum()
        out["volume_iou"] = float(np.logical_and(occ_p, gt["occ"]).sum() / union) if union else 1.0
        out["inside_test"] = how
    else:
        # an empty prediction covers nothing: F-scores and IoU are 0, Chamfer is undefined (left out of means)
        out.update({f"fscore@{t:g}": 0.0 for t in p["fscore_taus"]})
        out.update({f"precision@{t:g}": 0.0 for t in p["fscore_taus"]})
        out.update({f"recall@{t:g}": 0.0 for t in p["fscore_taus"]})
        out["volume_iou"] = 0.0 if gt["occ"].any() else 1.0
        out["empty_mesh"] = True
        out["geometry_note"] = "no mesh (empty prediction): F-scores and IoU 0, Chamfer undefined"
    c2w, intr = obj.c2w[obj.novel_indices], obj.intrinsics[obj.novel_indices]
    res = int(p["resolution"])
    t = time.perf_counter()
    if pred.render is not None and (aligned_mesh is pred.mesh):
        rgba = np.asarray(pred.render(c2w, intr, res), np.float32)
        out["render_source"] = "method"
    elif aligned_mesh is not None and len(aligned_mesh.faces) > 0:
        kw = {"ambient": p.get("shading_ambient", 1.0)} if mesh_renderer is None else {}
        rgba = render_views(aligned_mesh, c2w, intr, res, renderer=mesh_renderer, **kw)
        out["render_source"] = "mesh"
    else:
        rgba = np.zeros((len(c2w), res, res, 4), np.float32)
        out["render_source"] = "empty"
    out["render_s"] = time.perf_counter() - t
    pred_rgb = M.composite(rgba, p["background"])
    out.update(M.image_metrics(pred_rgb, rgba[..., 3], gt["rgb"], gt["mask"], lpips_fn))
    out["_renders"] = pred_rgb
    return out


# ------------------------------------------------------------------------------------------ runner
@dataclass
class RunOptions:
    out: Path
    align: str = "auto"  # auto: methods not in the canonical frame only | on | off
    timeout_s: Optional[float] = 600.0
    device: str = "cpu"
    seed: int = 0
    retry_failed: bool = False
    save_meshes: bool = False
    mesh_renderer: Optional[Callable] = None  # None: lrm.render.raster.render_mesh
    lpips_fn: Optional[Callable] = None
    max_objects: int = 0
    skip_objects: int = 0  # leave out the first N objects (with max_objects: a window of the set)
    progress: Callable[[str], None] = print


def _atomic_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_json_default))
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    return str(o)


def _finite(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in d.items()}


def object_path(out: Path, variant: Variant, uid: str) -> Path:
    return Path(out) / "objects" / variant.dirname / f"{uid}.json"


def run_object(method: Method, variant: Variant, obj: EvalObject, ctx: RunContext, gtc: GTCache,
               opts: RunOptions, device_str: str, setup_s: float) -> dict:
    rec = {"method": variant.name, "base_method": method.name, "spec": variant.spec, "params": variant.params,
           "sweep": variant.sweep, "uid": obj.uid, "device": device_str, "oracle": method.oracle,
           "setup_s": setup_s, "status": "failed"}
    try:
        with time_limit(opts.timeout_s):
            t0 = time.perf_counter()
            with PeakMemory(opts.device) as mem:
                pred = method.predict(obj, ctx)
            rec["time_s"] = time.perf_counter() - t0
            rec["peak_mem_mb"], rec["mem_kind"] = mem.peak_mb, mem.kind
            if mem.start_mb is not None:
                rec["mem_increase_mb"] = max(0.0, mem.peak_mb - mem.start_mb)
            if pred.external_time_s is not None:
                rec["external_time_s"] = pred.external_time_s
            rec["info"] = pred.info
            do_align = opts.align == "on" or (opts.align == "auto" and not method.canonical_frame)
            mesh = pred.mesh
            if mesh is not None and not np.isfinite(np.asarray(mesh.vertices)).all():
                raise PredictionError("the predicted mesh has non-finite vertices (NaN/inf)")
            rec["aligned"] = False
            if do_align and mesh is not None and len(mesh.faces):
                t = time.perf_counter()
                T, ainfo = align_mesh(mesh, obj.gt_mesh, seed=opts.seed)
                mesh = mesh.copy()
                mesh.apply_transform(T)
                rec.update(ainfo)
                rec["align_transform"] = T
                rec["align_s"] = time.perf_counter() - t
            gt = gtc.get(obj)
            m = score(pred, obj, gt, ctx.protocol, mesh, opts.mesh_renderer, opts.lpips_fn)
        renders = m.pop("_renders")
        rec.update(_finite(m))
        if "lpips" not in rec:
            rec["lpips_note"] = M.load_lpips()[1] if opts.lpips_fn is None else None
        rec["status"] = "ok"
        _save_strip(opts.out / "renders" / variant.dirname / f"{obj.uid}.png", renders)
        if opts.save_meshes and mesh is not None:
            d = opts.out / "meshes" / variant.dirname
            d.mkdir(parents=True, exist_ok=True)
            mesh.export(str(d / f"{obj.uid}.ply"))
    except Exception as e:  # noqa: BLE001 - one object's failure must not stop the run
        rec["status"] = "failed"
        rec["error"] = f"{type(e).__name__}: {e}"
        rec["traceback"] = traceback.format_exc(limit=8)
    return rec


def _save_strip(path: Path, rgb: np.ndarray) -> None:
    import imageio

    idx = [i for i in GRID_VIEWS if i < len(rgb)] or [0]
    path.parent.mkdir(parents=True, exist_ok=True)
    strip = np.concatenate([rgb[i] for i in idx], 1)
    imageio.imwrite(path, (np.clip(strip, 0, 1) * 255 + 0.5).astype(np.uint8))


def save_gt_strips(evalset: EvalSet, out: Path, uids: Sequence[str]) -> None:
    import imageio

    for uid in uids:
        path = out / "renders" / "_gt" / f"{uid}.png"
        if path.is_file():
            continue
        obj = evalset.load(uid)
        _save_strip(path, M.composite(obj.rgba[obj.novel_indices], evalset.protocol["background"]))
        inp = M.composite(obj.input_rgba, evalset.protocol["background"])
        imageio.imwrite(out / "renders" / "_gt" / f"{uid}_input.png", (np.clip(inp, 0, 1) * 255 + 0.5).astype(np.uint8))


def run(evalset: EvalSet, variants: Sequence[Variant], opts: RunOptions) -> List[dict]:
    """Evaluate every variant on every object; returns all per-object records (loaded or new)."""
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    uids = list(evalset.uids)[opts.skip_objects:]
    uids = uids[: opts.max_objects] if opts.max_objects else uids
    dev = device_name(opts.device)
    _atomic_json(out / "run.json", {"eval_set": str(evalset.root), "protocol": evalset.protocol, "device": dev,
                                    "methods": [v.name for v in variants], "objects": uids, "align": opts.align,
                                    "timeout_s": opts.timeout_s, "seed": opts.seed})
    save_gt_strips(evalset, out, uids)
    ctx = RunContext(opts.device, opts.seed, evalset.protocol, opts.mesh_renderer)
    gtc = GTCache(evalset.protocol)
    records: List[dict] = []
    for v in variants:
        todo, done = [], []
        for uid in uids:
            path = object_path(out, v, uid)
            if path.is_file():
                rec = json.loads(path.read_text())
                if rec.get("status") == "ok" or not opts.retry_failed:
                    done.append(rec)
                    continue
            todo.append(uid)
        records.extend(done)
        if not todo:
            opts.progress(f"[{v.name}] all {len(uids)} objects done already (resumed)")
            continue
        method, setup_err, setup_s = None, None, 0.0
        try:
            method = make_method(v.spec, **v.params)
            t = time.perf_counter()
            with time_limit(opts.timeout_s):
                method.setup(ctx)
            setup_s = time.perf_counter() - t
        except Exception as e:  # noqa: BLE001 - a method that cannot start fails on every object
            setup_err = f"setup: {type(e).__name__}: {e}"
        for i, uid in enumerate(todo):
            if setup_err:
                rec = {"method": v.name, "base_method": v.spec.split(":")[0], "spec": v.spec, "params": v.params,
                       "sweep": v.sweep, "uid": uid, "device": dev, "status": "failed", "error": setup_err}
            else:
                obj = evalset.load(uid)
                rec = run_object(method, v, obj, ctx, gtc, opts, dev, setup_s)
            _atomic_json(object_path(out, v, uid), rec)
            records.append(rec)
            msg = (f"ok  CD {rec.get('chamfer', float('nan')):.4f}  F@0.02 {rec.get('fscore@0.02', float('nan')):.3f}  "
                   f"PSNR {rec.get('psnr', float('nan')):.2f}  {rec.get('time_s', 0):.2f}s"
                   if rec["status"] == "ok" else f"FAILED {rec['error']}")
            opts.progress(f"[{v.name}] {i + 1}/{len(todo)} {uid}: {msg}")
    return records
