#!/usr/bin/env python
"""Build the dev evaluation set: package-shipped real objects with GT meshes (docs/data.md).

    python data/build_eval.py --out data/eval/dev                          # all available (~50 objects)
    python data/build_eval.py --out /tmp/ev --sources procedural --num 4 --resolution 128   # tiny, for CI

Objects: pybullet's textured objects (duck, soccer ball, ...), pymeshlab's test meshes, a curated list
of assimp test models and CGAL scans (each source skipped when its package is absent). These uids are
held out of training sets built by lrm-build-data.

Layout (docs/conventions.md "Evaluation sets"), everything in the canonical frame of input view 0::

    <out>/manifest.json          {"objects": [uid, ...], "protocol": {...}, "skipped": [...]}
    <out>/<uid>/gt_mesh.ply      normalised GT mesh in the canonical frame, vertex colours
    <out>/<uid>/views.npz        rgba uint8 [V,H,W,4], c2w [V,4,4] (OpenCV), intrinsics [V,4],
                                 input_indices [1], novel_indices [16]
    <out>/<uid>/record.json      uid, source, licence, normalization, canonical_transform, input az/el, ...

Input view: azimuth U(0, 360), elevation U(0, 30) degrees (seeded by uid) at distance 2.0, FoV 40 deg, in the
normalised object's world frame; the mesh is then moved by the rigid ``canonical_transform`` M of
``lrm.cameras.canonicalize`` so that the input camera is the orbit camera (0, 0, 2.0). Novel views: 16 at
elevations {0, 30} x azimuths every 45 degrees in that canonical frame. RGBA has straight alpha (the
protocol composites on white). ``lrm/evaluate/evalset.py`` reads this layout.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
if sys.path and Path(sys.path[0]).resolve() == REPO / "data":
    sys.path.pop(0)

import numpy as np  # noqa: E402

EVAL_SOURCES = "pybullet,pymeshlab,assimp,cgal"
PROTOCOL = {  # key names as lrm/evaluate/evalset.py's DEFAULT_PROTOCOL, plus how this set was made
    "n_views": 16,
    "elevations_deg": [0.0, 30.0],
    "azimuth_step_deg": 45.0,
    "distance": 2.0,
    "fov_deg": 40.0,
    "background": [1.0, 1.0, 1.0],
    "frame": "canonical input view (lrm.cameras.canonicalize, distance 2.0)",
    "input_elevation_range_deg": [0.0, 30.0],
    "normalization": "AABB centre at origin, longest side 1.0",
}


def eval_objects(num=None, sources: str = EVAL_SOURCES):
    """Real package-shipped objects with GT meshes (pybullet textured, pymeshlab, assimp, CGAL)."""
    from lrm.data.sources import get_source

    out = []
    for name in [s.strip() for s in sources.split(",") if s.strip()]:
        mod = get_source(name)
        if not mod.available()[0]:
            print(f"[build_eval] source {name!r} unavailable ({mod.available()[1]}); skipped", file=sys.stderr)
            continue
        if name == "pybullet":
            out.extend(mod.objects(random_shapes=False, only=mod.TEXTURED))
        elif name == "procedural":
            out.extend(mod.objects(num=num or 4, seed=12345))
        else:
            out.extend(mod.objects())
    return out[:num] if num is not None else out


def eval_uids():
    return {o.uid for o in eval_objects()}


def write_object(obj, out: Path, resolution: int = 256, samples: int = 4) -> dict:
    """Render and write one evaluation object; raises MeshError for unusable meshes."""
    import torch

    from lrm.cameras import canonicalize, intrinsics_from_fov, orbit_camera
    from lrm.data.shards import uid_rng
    from lrm.data.mesh import normalize_parts, to_vertex_colored, transform_parts
    from lrm.data.render_gl import render_mesh
    from lrm.evaluate.evalset import write_eval_object

    parts, T = normalize_parts(obj.load())
    rng = uid_rng(obj.uid, "eval-input")
    az0, el0 = float(rng.uniform(0, 360)), float(rng.uniform(*PROTOCOL["input_elevation_range_deg"]))
    d = PROTOCOL["distance"]
    input_world = orbit_camera(torch.tensor([az0]), torch.tensor([el0]), d)
    _, M = canonicalize(input_world, distance=d)
    M = M.double().numpy()
    parts_c = transform_parts(parts, M)
    azimuths = np.arange(0.0, 360.0 - 1e-6, PROTOCOL["azimuth_step_deg"])
    az = [0.0] + [float(a) for e in PROTOCOL["elevations_deg"] for a in azimuths]  # elevation-major
    el = [0.0] + [float(e) for e in PROTOCOL["elevations_deg"] for _ in azimuths]
    c2w = orbit_camera(torch.tensor(az), torch.tensor(el), d).numpy()
    K = intrinsics_from_fov(PROTOCOL["fov_deg"]).expand(len(c2w), 4).numpy()
    r = render_mesh(parts_c, c2w, K, resolution, samples=samples, normals=False, depth=False)
    rgba = (np.clip(r["rgba"], 0, 1) * 255 + 0.5).astype(np.uint8)
    if (rgba[0, ..., 3] > 127).mean() < 1e-4:
        from lrm.data.mesh import MeshError

        raise MeshError("renders empty from the input view")
    record = {
        "source": obj.source, "licence": obj.licence, "meta": obj.meta,
        "normalization": T.tolist(), "canonical_transform": M.tolist(),
        "input_azimuth_world": az0, "input_elevation_world": el0, "resolution": resolution,
        "fov_deg": PROTOCOL["fov_deg"], "distance": d, "renderer": "moderngl-egl",
        "faces": int(sum(len(p.faces) for p in parts)),
    }
    # one writer for the eval-set format (the manifest is rewritten with build details by build_eval)
    write_eval_object(out, obj.uid, to_vertex_colored(parts_c), rgba, c2w.astype(np.float32), K.astype(np.float32),
                      [0], np.arange(1, len(c2w)), record, dict(PROTOCOL, input_resolution=resolution,
                                                                 resolution=resolution))
    record["uid"] = obj.uid
    return record


def build_eval(out, num=None, sources: str = EVAL_SOURCES, resolution: int = 256, quiet: bool = False) -> dict:
    from lrm.data.mesh import MeshError

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    objects, skipped = [], []
    for obj in eval_objects(num, sources):
        done = (out / obj.uid / "views.npz").is_file() and (out / obj.uid / "record.json").is_file()
        if done and json.loads((out / obj.uid / "record.json").read_text()).get("resolution") == resolution:
            objects.append(obj.uid)  # resume: already written at this resolution
            continue
        try:
            write_object(obj, out, resolution)
            objects.append(obj.uid)
        except MeshError as e:
            skipped.append({"uid": obj.uid, "source": obj.source, "reason": str(e)})
        except Exception as e:  # noqa: BLE001
            skipped.append({"uid": obj.uid, "source": obj.source, "reason": f"error: {type(e).__name__}: {e}"[:300]})
        if not quiet:
            print(f"[build_eval] {len(objects)} written, {len(skipped)} skipped ({obj.uid})", file=sys.stderr)
    protocol = dict(PROTOCOL, input_resolution=resolution, resolution=resolution)
    man = {"objects": objects, "protocol": protocol, "skipped": skipped, "build_seconds": round(time.time() - t0, 1)}
    (out / "manifest.json").write_text(json.dumps(man, indent=1))
    return man


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "data" / "eval" / "dev"))
    p.add_argument("--num", type=int, default=None)
    p.add_argument("--sources", default=EVAL_SOURCES)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    man = build_eval(a.out, a.num, a.sources, a.resolution, a.quiet)
    print(f"[build_eval] {len(man['objects'])} objects, {len(man['skipped'])} skipped -> {a.out} "
          f"({man['build_seconds']} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
