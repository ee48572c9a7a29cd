"""Evaluation sets: writer and reader of the folder format in docs/conventions.md ("Evaluation sets").

::

    ROOT/manifest.json            {"objects": [uid, ...], "protocol": {...}}
    ROOT/<uid>/gt_mesh.ply        normalised GT mesh in the canonical frame of the input view (vertex colours if any)
    ROOT/<uid>/views.npz          rgba [V, H, W, 4] uint8, c2w [V, 4, 4], intrinsics [V, 4],
                                  input_indices [I] (first = canonical), novel_indices [N]
    ROOT/<uid>/record.json        uid, source, licence, normalisation transform, canonicalisation, seed, ...

Everything is in the canonical frame: the (first) input camera is the orbit camera at azimuth 0, elevation 0,
distance 2.0. The protocol's novel views (:func:`protocol_cameras`) are orbit cameras in that frame: 16 views at
256², elevations {0°, 30°}, azimuths every 45° starting at the input view, vertical FoV 40°.

:func:`build_eval_object` is the one builder of evaluation objects (normalise, draw the input camera from the uid,
canonicalise, render, write); :func:`build_eval_set` runs it over ``{uid: mesh}``. Two sets have names:

* **dev** — package-shipped real objects (:func:`build_dev_eval_set`, ``make data-eval`` -> ``data/eval/dev``);
* **smoke** — 2-4 small objects built on first use in the cache (:func:`smoke_eval_set`, ``--eval-set smoke``).

``lrm-build-evalset`` (``python -m lrm.evaluate.evalset``) is the command line: ``--meshes DIR | --dev | --smoke``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..conventions import CANONICAL_DISTANCE, CANONICAL_FOV_DEG, CUBE_RADIUS

MESH_EXTENSIONS = (".glb", ".gltf", ".obj", ".ply", ".off", ".stl")
DEFAULT_PROTOCOL = {
    "n_views": 16,
    "resolution": 256,
    "elevations_deg": [0.0, 30.0],
    "azimuth_step_deg": 45.0,
    "distance": CANONICAL_DISTANCE,
    "fov_deg": CANONICAL_FOV_DEG,
    "input_resolution": 256,
    "background": [1.0, 1.0, 1.0],
    "n_surface_samples": 10000,
    "fscore_taus": [0.02, 0.05, 0.1],
    "iou_resolution": 64,
    "radius": CUBE_RADIUS,
    "sample_seed": 0,
    "input_elevation_range_deg": [0.0, 30.0],  # the input view's elevation is drawn uniformly in this range
    "extra_input_views_deg": [],  # [[azimuth, elevation], ...] more input views (multi-view methods)
    "shading_ambient": 0.5,  # mesh renders: albedo * (ambient + (1 - ambient) |n.v|), see lrm/render/raster.py
}


# ------------------------------------------------------------------------------------------ cameras
def protocol_cameras(elevations_deg: Sequence[float] = (0.0, 30.0), azimuth_step_deg: float = 45.0,
                     distance: float = CANONICAL_DISTANCE, fov_deg: float = CANONICAL_FOV_DEG) -> Tuple[np.ndarray, np.ndarray]:
    """Novel-view cameras of the protocol in the canonical frame (input view = azimuth 0, elevation 0):
    c2w [V, 4, 4] and normalised intrinsics [V, 4], elevation-major, azimuth growing from 0."""
    import torch

    from .. import cameras as cam

    az = np.arange(0.0, 360.0 - 1e-6, azimuth_step_deg)
    A, E = np.meshgrid(az, np.asarray(elevations_deg, float), indexing="xy")
    c2w = cam.orbit_camera(torch.tensor(A.reshape(-1)), torch.tensor(E.reshape(-1)),
                           torch.full((A.size,), float(distance), dtype=torch.float64))
    intr = cam.intrinsics_from_fov(torch.full((A.size,), float(fov_deg), dtype=torch.float64))
    return c2w.numpy().astype(np.float32), intr.numpy().astype(np.float32)


def input_camera(distance: float = CANONICAL_DISTANCE, fov_deg: float = CANONICAL_FOV_DEG) -> Tuple[np.ndarray, np.ndarray]:
    """The canonical input camera (azimuth 0, elevation 0): c2w [4, 4], intrinsics [4]."""
    c2w, intr = protocol_cameras((0.0,), 360.0, distance, fov_deg)
    return c2w[0], intr[0]


# ------------------------------------------------------------------------------------------ reader
#: record keys of sets built before the two builders were merged -> today's names
LEGACY_RECORD_KEYS = {"canonical_transform": "canonicalization", "input_azimuth_world": "input_azimuth_deg",
                      "input_elevation_world": "input_elevation_deg"}


@dataclass
class EvalObject:
    uid: str
    root: Path
    rgba: np.ndarray  # [V, H, W, 4] uint8
    c2w: np.ndarray  # [V, 4, 4]
    intrinsics: np.ndarray  # [V, 4]
    input_indices: np.ndarray
    novel_indices: np.ndarray
    record: dict = field(default_factory=dict)
    _gt_mesh: object = None

    @property
    def gt_mesh(self):
        if self._gt_mesh is None:
            self._gt_mesh = load_mesh(self.root / "gt_mesh.ply")
        return self._gt_mesh

    @property
    def input_rgba(self) -> np.ndarray:
        """First (canonical) input view, uint8 [H, W, 4]."""
        return self.rgba[self.input_indices[0]]

    @property
    def input_c2w(self) -> np.ndarray:
        return self.c2w[self.input_indices[0]]

    @property
    def input_intrinsics(self) -> np.ndarray:
        return self.intrinsics[self.input_indices[0]]


@dataclass
class EvalSet:
    root: Path
    uids: List[str]
    protocol: dict

    def __len__(self):
        return len(self.uids)

    def __iter__(self):
        return (self.load(u) for u in self.uids)

    def load(self, uid: str) -> EvalObject:
        d = self.root / uid
        with np.load(d / "views.npz") as z:
            arrays = {k: z[k] for k in z.files}
        record = json.loads((d / "record.json").read_text()) if (d / "record.json").is_file() else {}
        for old, new in LEGACY_RECORD_KEYS.items():  # sets written by the former data/build_eval.py
            if old in record and new not in record:
                record[new] = record.pop(old)
        return EvalObject(uid, d, arrays["rgba"], arrays["c2w"].astype(np.float32),
                          arrays["intrinsics"].astype(np.float32), np.asarray(arrays["input_indices"], int),
                          np.asarray(arrays["novel_indices"], int), record)


class EvalSetError(Exception):
    """A missing or malformed evaluation set (reported as one line by the command line)."""


def load_eval_set(root) -> EvalSet:
    root = Path(root)
    if not (root / "manifest.json").is_file():
        raise EvalSetError(f"not an evaluation set (no manifest.json): {root}")
    man = json.loads((root / "manifest.json").read_text())
    uids = list(man.get("objects", []))
    missing = [u for u in uids if not (root / u / "views.npz").is_file() or not (root / u / "gt_mesh.ply").is_file()]
    if missing:
        raise EvalSetError(f"evaluation set {root} lists objects without views.npz/gt_mesh.ply: {missing[:5]}")
    protocol = dict(DEFAULT_PROTOCOL)
    protocol.update(man.get("protocol", {}))
    return EvalSet(root, uids, protocol)


def load_mesh(path):
    """Any common mesh format -> one trimesh.Trimesh (scenes are flattened with their transforms)."""
    import trimesh

    m = trimesh.load(str(path), force="mesh", process=False)
    if not isinstance(m, trimesh.Trimesh):
        raise ValueError(f"could not read a triangle mesh from {path}")
    return m


# ------------------------------------------------------------------------------------------ writer
def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_manifest(root, uids: Iterable[str], protocol: Optional[dict] = None) -> None:
    root = Path(root)
    man = {"objects": list(uids), "protocol": dict(DEFAULT_PROTOCOL if protocol is None else protocol)}
    _atomic_write(root / "manifest.json", json.dumps(man, indent=1).encode())


def write_eval_object(root, uid: str, gt_mesh, rgba, c2w, intrinsics, input_indices, novel_indices,
                      record: Optional[dict] = None, protocol: Optional[dict] = None) -> Path:
    """Write one object (everything already in the canonical frame) and add it to ``manifest.json``."""
    root = Path(root)
    d = root / uid
    d.mkdir(parents=True, exist_ok=True)
    rgba = np.asarray(rgba)
    if rgba.dtype != np.uint8:
        rgba = (np.clip(rgba, 0, 1) * 255 + 0.5).astype(np.uint8)
    if getattr(gt_mesh.visual, "kind", None) == "texture":  # PLY keeps vertex colours, not textures
        gt_mesh = gt_mesh.copy()
        gt_mesh.visual = gt_mesh.visual.to_color()
    gt_mesh.export(str(d / "gt_mesh.ply"))
    tmp = d / "views.tmp.npz"
    np.savez_compressed(tmp, rgba=rgba, c2w=np.asarray(c2w, np.float32), intrinsics=np.asarray(intrinsics, np.float32),
                        input_indices=np.asarray(input_indices, np.int64), novel_indices=np.asarray(novel_indices, np.int64))
    os.replace(tmp, d / "views.npz")
    rec = {"uid": uid, **(record or {})}
    _atomic_write(d / "record.json", json.dumps(rec, indent=1, default=_json_default).encode())
    man_path = root / "manifest.json"
    if man_path.is_file():
        man = json.loads(man_path.read_text())
        uids = list(man.get("objects", []))
        proto = man.get("protocol", DEFAULT_PROTOCOL) if protocol is None else protocol
    else:
        uids, proto = [], DEFAULT_PROTOCOL if protocol is None else protocol
    if uid not in uids:
        uids.append(uid)
    write_manifest(root, uids, proto)
    return d


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(type(o))


# ------------------------------------------------------------------------------------------ builder
def stable_hash(uid: str) -> int:
    return int(hashlib.sha1(uid.encode()).hexdigest()[:8], 16)


def in_split(uid: str, split: str, val_fraction: float = 0.1) -> bool:
    """Train/validation split by a stable hash of the uid (conventions: never by order)."""
    is_val = (stable_hash(uid) % 10_000) < val_fraction * 10_000
    return is_val if split == "val" else (not is_val if split == "train" else True)


def object_rng(uid: str, seed: int = 0) -> np.random.Generator:
    """The generator that draws an object's input view: seeded by its uid (and ``seed`` when it is not 0), so an
    object's views do not depend on the other objects of its set or their order."""
    from ..data.shards import uid_rng

    return uid_rng(uid, "eval-input" if seed == 0 else f"eval-input:{seed}")


def prepare_object(mesh, rng, elevation_range: Sequence[float] = (0.0, 30.0), distance: float = CANONICAL_DISTANCE):
    """Normalise ``mesh`` (a trimesh or a list of parts; bbox centre -> origin, longest side 1, rejecting broken
    meshes with ``lrm.data.mesh.MeshError``), draw the input view's orbit camera from ``rng`` (a generator or an
    int seed; azimuth uniform in [0, 360), elevation uniform in ``elevation_range``) and move the parts into that
    camera's canonical frame (``lrm.cameras.canonicalize``). Returns (canonical parts, record dict)."""
    import torch

    from .. import cameras as cam
    from ..data.mesh import normalize_parts, transform_parts

    parts, N = normalize_parts(list(mesh) if isinstance(mesh, (list, tuple)) else [mesh])
    rng = np.random.default_rng(rng) if isinstance(rng, (int, np.integer)) else rng
    az, el = float(rng.uniform(0, 360)), float(rng.uniform(*elevation_range))
    f64 = dict(dtype=torch.float64)
    c2w_in = cam.orbit_camera(torch.tensor(az, **f64), torch.tensor(el, **f64), torch.tensor(distance, **f64))
    _, M = cam.canonicalize(c2w_in[None], distance)
    M = M.numpy()
    return transform_parts(parts, M), {"normalization": N.tolist(), "canonicalization": M.tolist(),
                                       "input_azimuth_deg": az, "input_elevation_deg": el}


def _render(parts, c2w, intr, resolution, renderer, ambient) -> np.ndarray:
    """RGBA [V, H, W, 4] of the canonical parts: ``"gl"`` = lrm.data.render_gl (textures, the data extra), else
    the mesh rasteriser of the harness (``renderer``: None or a per-view ``render_mesh``-compatible callable)."""
    if renderer == "gl":
        from ..data.render_gl import render_mesh

        return render_mesh(parts, c2w, intr, resolution, samples=4, normals=False, depth=False)["rgba"]
    from ..data.mesh import to_vertex_colored
    from ..render.raster import render_views

    mesh = parts[0] if len(parts) == 1 else to_vertex_colored(parts)
    kw = {} if renderer is not None else {"ambient": ambient}
    return render_views(mesh, c2w, intr, resolution, renderer=renderer, **kw)


def build_eval_object(root, uid: str, mesh, seed: int = 0, renderer=None, protocol: Optional[dict] = None,
                      record: Optional[dict] = None) -> Path:
    """The one builder of evaluation objects: normalise + canonicalise ``mesh`` (a trimesh or a list of parts) with
    the input view drawn by :func:`object_rng` (uid, seed), render the input view(s) and the protocol's novel views
    (``renderer``: see :func:`_render`), write it (:func:`write_eval_object`). Raises ``MeshError`` for a broken
    mesh or one that renders empty from the input view."""
    from ..data.mesh import MeshError, to_vertex_colored

    p = dict(DEFAULT_PROTOCOL if protocol is None else protocol)
    canon, rec = prepare_object(mesh, object_rng(uid, seed), p.get("input_elevation_range_deg", (0.0, 30.0)),
                                p["distance"])
    c_in, k_in = input_camera(p["distance"], p["fov_deg"])
    c_nv, k_nv = protocol_cameras(p["elevations_deg"], p["azimuth_step_deg"], p["distance"], p["fov_deg"])
    if p["input_resolution"] != p["resolution"]:
        raise ValueError("one resolution per views.npz: protocol input_resolution must equal resolution")
    # optional extra input views for multi-view methods: (azimuth, elevation) relative to the canonical input
    extra = [np.asarray(x, float) for x in p.get("extra_input_views_deg", [])]
    c_x = [protocol_cameras((e,), 360.0, p["distance"], p["fov_deg"]) for _, e in extra]
    c_x = [_rotate_azimuth(c[0][0], a) for (a, _), c in zip(extra, c_x)]
    c2w = np.concatenate([c_in[None], *[c[None] for c in c_x], c_nv])
    intr = np.concatenate([k_in[None]] * (1 + len(extra)) + [k_nv])
    rgba = np.asarray(_render(canon, c2w, intr, p["resolution"], renderer, p.get("shading_ambient", 1.0)))
    if (rgba[0, ..., 3] > 0.5 * (255 if rgba.dtype == np.uint8 else 1)).mean() < 1e-4:
        raise MeshError("renders empty from the input view")
    rec.update(seed=seed, resolution=p["resolution"], faces=int(sum(len(q.faces) for q in canon)))
    rec.update(record or {})
    rec["renderer"] = ("moderngl-egl" if renderer == "gl" else
                       getattr(renderer, "__module__", None) or "lrm.render.raster")
    n_in = 1 + len(extra)
    return write_eval_object(root, uid, to_vertex_colored(canon), rgba, c2w, intr, list(range(n_in)),
                             list(range(n_in, len(c2w))), rec, p)


def _rotate_azimuth(c2w: np.ndarray, azimuth_deg: float) -> np.ndarray:
    """An orbit camera turned by ``azimuth_deg`` about +Z (the world up)."""
    a = np.radians(azimuth_deg)
    R = np.eye(4, dtype=np.float32)
    R[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return R @ c2w


def find_meshes(folder) -> Dict[str, Path]:
    """uid -> file for every mesh file in ``folder`` (uid = file stem; or the sub-folder name for DIR/uid/*)."""
    folder = Path(folder)
    out: Dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in MESH_EXTENSIONS:
            out.setdefault(p.stem, p)
        elif p.is_dir():
            files = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in MESH_EXTENSIONS)
            if files:
                out.setdefault(p.name, files[0])
    return out


def build_eval_set(root, meshes: Dict[str, object], seed: int = 0, renderer=None,
                   protocol: Optional[dict] = None, source: str = "", licence: str = "") -> "EvalSet":
    """Build an evaluation set from ``{uid: trimesh, list of parts or path}`` (:func:`build_eval_object` each)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for uid, mesh in meshes.items():
        if isinstance(mesh, (str, os.PathLike)):
            mesh = load_mesh(mesh)
        build_eval_object(root, uid, mesh, seed=seed, renderer=renderer, protocol=protocol,
                          record={"source": source, "licence": licence})
    return load_eval_set(root)


# ------------------------------------------------------------------------------------------ the two named sets
def build_dev_eval_set(root, num: Optional[int] = None, sources=None, resolution: int = 256,
                       log=None) -> dict:
    """The **dev** set: package-shipped real objects with GT meshes (lrm.data.sources.dev_eval_objects: pybullet's
    textured objects, pymeshlab's test meshes, assimp test models, CGAL scans), rendered with the GL renderer
    (the data extra). Resumable: objects already written at this resolution are kept. Broken objects are listed
    under ``skipped`` in the manifest. ``make data-eval`` builds it at data/eval/dev. Returns the manifest."""
    import time

    from ..data.mesh import MeshError
    from ..data.sources import DEV_EVAL_SOURCES, dev_eval_objects

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    protocol = dict(DEFAULT_PROTOCOL, input_resolution=resolution, resolution=resolution)
    t0 = time.time()
    objects, skipped = [], []
    for obj in dev_eval_objects(num, sources or DEV_EVAL_SOURCES, log=log):
        rec_path = root / obj.uid / "record.json"
        if (root / obj.uid / "views.npz").is_file() and rec_path.is_file() \
                and json.loads(rec_path.read_text()).get("resolution") == resolution:
            objects.append(obj.uid)  # resume: already written at this resolution
            continue
        try:
            build_eval_object(root, obj.uid, obj.load(), renderer="gl", protocol=protocol,
                              record={"source": obj.source, "licence": obj.licence, "meta": obj.meta})
            objects.append(obj.uid)
        except MeshError as e:
            skipped.append({"uid": obj.uid, "source": obj.source, "reason": str(e)})
        except Exception as e:  # noqa: BLE001 - one broken package mesh must not stop the set
            skipped.append({"uid": obj.uid, "source": obj.source, "reason": f"error: {type(e).__name__}: {e}"[:300]})
        if log:
            log(f"{len(objects)} written, {len(skipped)} skipped ({obj.uid})")
    man = {"objects": objects, "protocol": protocol, "skipped": skipped, "build_seconds": round(time.time() - t0, 1)}
    _atomic_write(root / "manifest.json", json.dumps(man, indent=1).encode())
    return man


def _smoke_meshes() -> Dict[str, object]:
    """The smoke set's meshes: pybullet_data's duck and bunny when installed (the data extra), plus two coloured
    procedural shapes so the set exists everywhere."""
    import trimesh

    meshes: Dict[str, object] = {}
    try:
        import pybullet_data

        base = Path(pybullet_data.getDataPath())
        y_up_to_z_up = trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0])
        for name, up in (("duck.obj", y_up_to_z_up), ("bunny.obj", None)):
            if (base / name).is_file():
                m = load_mesh(base / name)
                if up is not None:
                    m.apply_transform(up)
                meshes[f"pybullet_{Path(name).stem}"] = m
    except ImportError:
        pass
    box = trimesh.creation.box((0.6, 0.3, 0.4))
    box.visual.vertex_colors = np.tile([200, 60, 50, 255], (len(box.vertices), 1))
    cyl = trimesh.creation.cylinder(radius=0.2, height=0.6, sections=48)
    cyl.apply_translation((0.1, 0.0, 0.05))
    cap = trimesh.creation.icosphere(3, radius=0.18)
    cap.apply_translation((-0.25, 0.1, 0.3))
    toy = trimesh.util.concatenate([cyl, cap])
    toy.visual.vertex_colors = np.concatenate([np.tile([40, 90, 200, 255], (len(cyl.vertices), 1)),
                                               np.tile([240, 200, 40, 255], (len(cap.vertices), 1))])
    meshes["proc_box"] = box
    meshes["proc_toy"] = toy
    return meshes


def smoke_eval_set(root=None, seed: int = 0) -> EvalSet:
    """The **smoke** set (``--eval-set smoke``): 2-4 small objects for CI and the docs' examples, built once,
    deterministically, under ``root`` or ``$LRM_CACHE/evalsets/smoke`` (default ``~/.cache/lrm``)."""
    root = Path(root) if root else Path(os.environ.get("LRM_CACHE", Path.home() / ".cache" / "lrm")) / "evalsets" / "smoke"
    if (root / "manifest.json").is_file():
        return load_eval_set(root)
    tmp = root.with_name(root.name + f".building-{os.getpid()}")
    build_eval_set(tmp, _smoke_meshes(), seed=seed, source="pybullet_data + procedural", licence="zlib / generated")
    if not (root / "manifest.json").is_file():
        root.parent.mkdir(parents=True, exist_ok=True)
        if root.exists():
            import shutil

            shutil.rmtree(root)
        os.replace(tmp, root)
    return load_eval_set(root)


#: names ``--eval-set`` takes besides a folder
NAMED_SETS = {"smoke": smoke_eval_set}


def resolve_eval_set(spec) -> EvalSet:
    """A folder, or a named set (``smoke``)."""
    if str(spec) in NAMED_SETS:
        return NAMED_SETS[str(spec)]()
    if not Path(spec).exists():
        hint = (" ('dev' is a folder, not a named set: the dev set of real objects is data/eval/dev, built by "
                "make data-eval; the small built-in set is 'smoke')" if str(spec) == "dev" else "")
        raise EvalSetError(f"evaluation set not found: {spec}{hint}")
    return load_eval_set(spec)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="lrm-build-evalset",
        description="Build an evaluation set (docs/evaluation.md). One of: --meshes DIR (a folder of meshes, one file "
                    "per uid), --dev (the dev set of package-shipped real objects; needs the data extra), --smoke "
                    "(the small built-in set).")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--meshes", help="folder of meshes (uid.ext or uid/*.ext)")
    src.add_argument("--dev", action="store_true", help="the dev set: package-shipped real objects (data/eval/dev)")
    src.add_argument("--smoke", action="store_true", help="the smoke set (2-4 small objects)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0, help="input-view seed (with each uid); 0 for the published sets")
    ap.add_argument("--resolution", type=int, default=DEFAULT_PROTOCOL["resolution"], help="views (input and novel)")
    ap.add_argument("--sources", default=None,
                    help="--dev: comma-separated package sources (default pybullet,pymeshlab,assimp,cgal)")
    ap.add_argument("--num", type=int, default=None, help="--dev: at most this many objects")
    ap.add_argument("--split", choices=["all", "train", "val"], default="all",
                    help="--meshes: keep only uids of this stable-hash split")
    ap.add_argument("--limit", type=int, default=0, help="--meshes: at most this many objects (sorted by uid)")
    ap.add_argument("--source", default="", help="--meshes: source recorded per object")
    ap.add_argument("--licence", default="", help="--meshes: licence recorded per object")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    log = None if a.quiet else (lambda m: print(f"[evalset] {m}", file=sys.stderr))
    protocol = dict(DEFAULT_PROTOCOL, resolution=a.resolution, input_resolution=a.resolution)
    try:
        if a.smoke:
            es = smoke_eval_set(a.out, a.seed)
        elif a.dev:
            man = build_dev_eval_set(a.out, a.num, a.sources, a.resolution, log)
            print(f"{len(man['skipped'])} objects skipped (manifest.json: skipped)", file=sys.stderr)
            es = load_eval_set(a.out)
        else:
            if not Path(a.meshes).is_dir():
                raise EvalSetError(f"--meshes must be a folder of meshes, got {a.meshes!r}")
            found = {u: p for u, p in find_meshes(a.meshes).items() if in_split(u, a.split)}
            if a.limit:
                found = dict(list(found.items())[: a.limit])
            if not found:
                raise EvalSetError(f"no meshes ({', '.join(MESH_EXTENSIONS)}) in {a.meshes} for split {a.split}")
            es = build_eval_set(a.out, found, a.seed, protocol=protocol, source=a.source, licence=a.licence)
    except (EvalSetError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"evaluation set {es.root}: {len(es)} objects")
    return 0


if __name__ == "__main__":
    sys.exit(main())
