#!/usr/bin/env python
"""Build a multi-view training set as webdataset shards (docs/data.md).

    lrm-build-data --out data/shards/default                                  # the default set
    lrm-build-data --sources procedural,pybullet --num 200 --out data/shards/small
    lrm-build-data --sources folder --folder ~/my_glbs --out data/shards/mine

(``lrm-build-data`` is ``python -m lrm.data.build``.)

Every object: load -> validate/normalise (conventions) -> ``--views`` random orbit cameras (+ a fixed
16-view orbit for val objects) -> moderngl/EGL render (RGBA, depth) -> one webdataset sample.
Resumable and idempotent: finished and skipped uids are recorded in ``<out>/progress.jsonl`` when their
shard is closed; a rerun renders only what is missing and writes new shards (``<split>-r<run>-<n>.tar``).
Broken meshes are skipped with the reason in ``manifest.json`` (``skipped``), never a crash.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from ..conventions import CANONICAL_DISTANCE, CANONICAL_FOV_DEG
from .shards import uid_rng

DEFAULT_SOURCES = "procedural,pybullet,flightgear"

RENDER_DEFAULTS = dict(
    views=24, resolution=256, fov_deg=CANONICAL_FOV_DEG, distance=CANONICAL_DISTANCE, elevation_range=(-15.0, 45.0),
    val_orbit=True, depth=True, normals=False, samples=4, points=True,
)


def point_members(parts, uid: str, light, ambient) -> dict:
    """The 3D-supervision members of one normalised object (lrm/data/points.py), seeded by its uid."""
    from lrm.data.points import object_points
    from lrm.data.shards import npy_bytes

    arrays = object_points(parts, uid_rng(uid, "points"), light_dir=light, ambient=ambient)
    return {k: npy_bytes(v) for k, v in arrays.items()}


def orbit_eval_views():
    """The fixed evaluation orbit: elevations {0, 30} x azimuths every 45 degrees (16 views)."""
    az = np.tile(np.arange(0, 360, 45, dtype=np.float64), 2)
    el = np.repeat([0.0, 30.0], 8)
    return az, el


def sample_views(uid: str, n: int, elevation_range, with_orbit: bool):
    rng = uid_rng(uid)
    az = rng.uniform(0.0, 360.0, n)
    el = rng.uniform(elevation_range[0], elevation_range[1], n)
    kinds = ["random"] * n
    if with_orbit:
        oa, oe = orbit_eval_views()
        az, el = np.concatenate([az, oa]), np.concatenate([el, oe])
        kinds += ["orbit"] * len(oa)
    return az, el, kinds


def random_light(uid: str):
    rng = uid_rng(uid, "light")
    a, e = np.radians(rng.uniform(0, 360)), np.radians(rng.uniform(20, 80))
    return [float(np.cos(e) * np.cos(a)), float(np.cos(e) * np.sin(a)), float(np.sin(e))], float(rng.uniform(0.35, 0.55))


# --------------------------------------------------------------------------------------------------
# Worker
# --------------------------------------------------------------------------------------------------
def render_object(task):
    """Load, normalise, render and encode one object. Returns a result dict; never raises."""
    obj, settings, split = task
    t0 = time.time()
    try:
        import torch

        from lrm.cameras import intrinsics_from_fov, orbit_camera
        from lrm.data.mesh import MeshError, normalize_parts
        from lrm.data.render_gl import render_mesh
        from lrm.data.shards import encode_sample

        torch.set_num_threads(1)
        try:
            parts = obj.load()
            nf = sum(len(p.faces) for p in parts)
            if nf > settings.get("max_faces", 2_000_000):
                raise MeshError(f"too large: {nf} faces")
            parts, T = normalize_parts(parts)
        except MeshError as e:
            return {"uid": obj.uid, "source": obj.source, "status": "skipped", "reason": str(e), "split": split}
        az, el, kinds = sample_views(obj.uid, settings["views"], settings["elevation_range"],
                                     settings["val_orbit"] and split == "val")
        c2w = orbit_camera(torch.tensor(az, dtype=torch.float32), torch.tensor(el, dtype=torch.float32),
                           float(settings["distance"])).numpy()
        K = intrinsics_from_fov(settings["fov_deg"]).expand(len(c2w), 4).numpy()
        light, ambient = random_light(obj.uid)
        out = render_mesh(parts, c2w, K, settings["resolution"], light_dir=light, ambient=ambient,
                          samples=settings["samples"], normals=settings["normals"], depth=settings["depth"])
        cover = out["rgba"][..., 3]
        if float((cover > 0.5).mean()) < 1e-4:
            return {"uid": obj.uid, "source": obj.source, "status": "skipped", "reason": "renders empty", "split": split}
        record = {
            "source": obj.source, "licence": obj.licence, "split": split, "normalization": T.tolist(),
            "resolution": settings["resolution"], "fov_deg": settings["fov_deg"], "distance": settings["distance"],
            "azimuth": az.tolist(), "elevation": el.tolist(), "view_kind": kinds,
            "light_dir": light, "ambient": ambient, "renderer": "moderngl-egl", "meta": obj.meta,
            "faces": int(sum(len(p.faces) for p in parts)),
        }
        sample = encode_sample(obj.uid, out["rgba"], c2w, K, record, depth=out.get("depth"), normals=out.get("normals"))
        if settings.get("points"):
            sample.update(point_members(parts, obj.uid, light, ambient))
        return {"uid": obj.uid, "source": obj.source, "licence": obj.licence, "status": "ok", "split": split,
                "sample": sample, "seconds": time.time() - t0}
    except Exception as e:  # noqa: BLE001 - a bad object must never stop the build
        return {"uid": obj.uid, "source": obj.source, "status": "skipped", "split": split,
                "reason": f"error: {type(e).__name__}: {e}"[:300], "trace": traceback.format_exc()[-800:]}


# --------------------------------------------------------------------------------------------------
# Selection, progress, shards
# --------------------------------------------------------------------------------------------------
def select_objects(args):
    """The deterministic object list for these arguments (before resume filtering)."""
    from .sources import get_source

    objs, licences, unavailable = [], {}, {}
    for name in [s.strip() for s in args.sources.split(",") if s.strip()]:
        mod = get_source(name)
        ok, why = mod.available()
        if not ok:
            unavailable[name] = why
            print(f"[build] source {name!r} unavailable ({why}); skipped", file=sys.stderr)
            continue
        kw = dict(folder=args.folder, folder_up=args.folder_up, cache=args.cache, seed=args.seed)
        if name == "procedural":
            kw["num"] = args.procedural_num
        if name == "products":
            kw["num"] = args.products_num
        if name == "objaverse":
            kw.update(uids=args.objaverse_uids, lvis=args.objaverse_lvis, count=args.objaverse_count)
        got = list(mod.objects(**kw))
        licences[name] = getattr(mod, "LICENCE", "per object")
        objs.extend(got)
    if args.exclude_eval:
        from .sources import dev_eval_uids  # the dev evaluation set's objects are held out by default

        held = dev_eval_uids()
        objs = [o for o in objs if o.uid not in held]
    seen, uniq = set(), []
    for o in objs:
        if o.uid not in seen:
            seen.add(o.uid)
            uniq.append(o)
    # mix sources across shards: deterministic shuffle by uid hash
    uniq.sort(key=lambda o: hashlib.sha256(o.uid.encode()).hexdigest())
    if args.num is not None:
        uniq = uniq[: args.num]
    return uniq, licences, unavailable


def read_progress(out: Path):
    done = {}
    p = out / "progress.jsonl"
    if p.is_file():
        for line in p.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a crash: that object will be redone
            if r.get("status") == "ok" and not (out / r["shard"]).is_file():
                continue
            done[r["uid"]] = r
    return done


def recorded_shards(out: Path) -> set:
    """Shard names that progress.jsonl mentions."""
    p = out / "progress.jsonl"
    names = set()
    for line in (p.read_text().splitlines() if p.is_file() else []):
        try:
            names.add(json.loads(line).get("shard"))
        except (json.JSONDecodeError, AttributeError):
            continue
    return names - {None}


def set_aside_orphans(out: Path) -> list:
    """Shards of ours that no progress record names (a crash of an older version between a shard's rename and
    its progress records): their objects are rendered again, so a glob over the folder would read them twice.
    They are renamed to ``<name>.orphan`` (kept, not read)."""
    if not (out / "progress.jsonl").is_file():
        return []  # not (yet) a build folder of ours: leave its files alone
    known = recorded_shards(out)
    orphans = [p for p in sorted(out.glob("*-r???-?????.tar")) if p.name not in known]
    for p in orphans:
        os.replace(p, p.with_name(p.name + ".orphan"))
        print(f"[build] {p.name}: not in progress.jsonl (interrupted run); set aside as {p.name}.orphan",
              file=sys.stderr)
    return orphans


def next_run(out: Path) -> int:
    """A run number no shard file or progress record has used yet."""
    names = [p.name for p in out.glob("*-r???-*")] + list(recorded_shards(out))
    runs = [int(n.split("-r")[1][:3]) for n in names if "-r" in n and n.split("-r")[1][:3].isdigit()]
    return max(runs) + 1 if runs else 0


class ShardSet:
    """One open shard per split; a shard is written as ``.tmp``; when closed its objects are appended to
    progress.jsonl and only then is it renamed into place. A crash in between leaves records that name a
    missing shard, which ``read_progress`` ignores (those objects are redone), never an unrecorded shard."""

    def __init__(self, out: Path, run: int, maxcount: int):
        self.out, self.run, self.maxcount = out, run, maxcount
        self.open = {}  # split -> (writer, name, [progress records])
        self.counter = {}

    def write(self, split, sample, rec):
        import webdataset as wds

        if split not in self.open:
            i = self.counter.get(split, 0)
            self.counter[split] = i + 1
            name = f"{split}-r{self.run:03d}-{i:05d}.tar"
            w = wds.TarWriter(str(self.out / (name + ".tmp")))
            self.open[split] = (w, name, [])
        w, name, recs = self.open[split]
        w.write(sample)
        recs.append(dict(rec, shard=name))
        if len(recs) >= self.maxcount:
            self.close(split)

    def close(self, split):
        w, name, recs = self.open.pop(split)
        w.close()
        with open(self.out / "progress.jsonl", "a") as f:
            for r in recs:
                f.write(json.dumps(r) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(self.out / (name + ".tmp"), self.out / name)

    def close_all(self):
        for split in list(self.open):
            self.close(split)


def write_manifest(out: Path, args, licences, unavailable, settings, run_seconds):
    done = read_progress(out)
    ok = [r for r in done.values() if r["status"] == "ok"]
    shards = {}
    for r in ok:
        shards.setdefault(r["split"], set()).add(r["shard"])
    counts = {"objects": len(ok), "skipped": len(done) - len(ok)}
    for r in ok:
        counts.setdefault(r["split"], 0)
        counts[r["split"]] += 1
    by_source = {}
    for r in done.values():
        d = by_source.setdefault(r["source"], {"ok": 0, "skipped": 0})
        d["ok" if r["status"] == "ok" else "skipped"] += 1
    man_path = out / "manifest.json"
    old = json.loads(man_path.read_text()) if man_path.is_file() else {}
    lic = dict(old.get("licences", {}), **licences)
    runs = old.get("runs", []) + [{"seconds": round(run_seconds, 1), "args": vars(args)}]
    man = {
        "format": "lrm-multiview-v1",
        "shards": {k: sorted(v) for k, v in sorted(shards.items())},
        "counts": counts,
        "by_source": by_source,
        "licences": lic,
        "unavailable_sources": unavailable,
        "render": settings,
        "skipped": sorted(({"uid": r["uid"], "source": r["source"], "reason": r.get("reason", "")}
                           for r in done.values() if r["status"] != "ok"), key=lambda r: r["uid"]),
        "runs": runs,
        "build_seconds_total": round(sum(r["seconds"] for r in runs), 1),
    }
    tmp = man_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(man, indent=1, default=str))
    os.replace(tmp, man_path)
    return man


def build(args) -> dict:
    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for tmp in out.glob("*.tar.tmp"):  # shards of an interrupted run: their objects are redone
        tmp.unlink()
    set_aside_orphans(out)
    settings = dict(RENDER_DEFAULTS, views=args.views, resolution=args.resolution, fov_deg=args.fov,
                    distance=args.distance, elevation_range=tuple(args.elevation), val_orbit=not args.no_val_orbit,
                    normals=args.normals, depth=not args.no_depth, val_fraction=args.val_fraction,
                    points=not args.no_points)
    objs, licences, unavailable = select_objects(args)
    done = read_progress(out)
    todo = [o for o in objs if o.uid not in done]
    from lrm.data.shards import split_of

    print(f"[build] {len(objs)} objects selected, {len(objs) - len(todo)} already done, {len(todo)} to render "
          f"with {args.workers} workers -> {out}", file=sys.stderr)
    shards = ShardSet(out, next_run(out), args.shard_size)
    tasks = [(o, settings, split_of(o.uid, args.val_fraction)) for o in todo]
    from tqdm import tqdm

    n_ok = n_skip = 0
    try:
        if args.workers <= 1:
            results = map(render_object, tasks)
            pool = None
        else:
            pool = mp.get_context("spawn").Pool(args.workers, maxtasksperchild=200)
            results = pool.imap_unordered(render_object, tasks, chunksize=1)
        bar = tqdm(results, total=len(tasks), desc="render", unit="obj", disable=args.quiet, mininterval=5)
        for res in bar:
            if res["status"] == "ok":
                n_ok += 1
                sample = res.pop("sample")
                shards.write(res["split"], sample, {k: v for k, v in res.items() if k != "trace"})
            else:
                n_skip += 1
                with open(out / "progress.jsonl", "a") as f:
                    f.write(json.dumps({k: v for k, v in res.items() if k != "trace"}) + "\n")
                if args.verbose:
                    print(f"[build] skipped {res['uid']}: {res['reason']}", file=sys.stderr)
            bar.set_postfix(ok=n_ok, skipped=n_skip, refresh=False)
        if pool is not None:
            pool.close()
            pool.join()
    finally:
        shards.close_all()
        man = write_manifest(out, args, licences, unavailable, settings, time.time() - t0)
    print(f"[build] done in {time.time() - t0:.1f}s: {n_ok} rendered, {n_skip} skipped this run; "
          f"total {man['counts']}", file=sys.stderr)
    return man


# --------------------------------------------------------------------------------------------------
# --add-points: 3D supervision for shards built without it (no re-rendering)
# --------------------------------------------------------------------------------------------------
def _points_for(raw: dict, obj) -> dict:
    """The point members for one raw sample, from its source object (normalisation checked against the
    record, so the points are in the frame of the stored cameras)."""
    from lrm.data.mesh import normalize_parts

    rec = json.loads(raw["json"])
    parts, T = normalize_parts(obj.load())
    if not np.allclose(T, np.asarray(rec["normalization"]), atol=1e-5):
        raise ValueError("the source mesh no longer normalises as when it was rendered")
    return point_members(parts, obj.uid, rec.get("light_dir"), float(rec.get("ambient", 0.45)))


def add_points_to_shard(shard: Path, objects: dict) -> tuple:
    """Rewrite one shard with point members added (atomically: ``.tmp`` then rename). Samples whose source
    object is not in ``objects`` or fails are kept unchanged. Returns (added, kept, already)."""
    import webdataset as wds

    from lrm.data.points import POINT_KEYS
    from lrm.data.shards import iter_raw

    samples = [{k: v for k, v in s.items() if k == "__key__" or not k.startswith("__")}
               for s in iter_raw([str(shard)])]
    if all(all(k in s for k in POINT_KEYS) for s in samples):
        return 0, 0, len(samples)
    added = kept = 0
    tmp = shard.with_name(shard.name + ".points.tmp")
    with wds.TarWriter(str(tmp)) as w:
        for s in samples:
            obj = objects.get(s["__key__"])
            if obj is not None and not all(k in s for k in POINT_KEYS):
                try:
                    s.update(_points_for(s, obj))
                    added += 1
                except Exception as e:  # noqa: BLE001 - keep the sample as it was, say why
                    print(f"[add-points] {shard.name}:{s['__key__']}: kept without points ({e})", file=sys.stderr)
                    kept += 1
            else:
                kept += 1
            w.write(s)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, shard)
    return added, kept, 0


def add_points(args) -> dict:
    """Add occupancy / surface-colour points to every shard under ``--out`` that lacks them. Resumable: a shard
    is replaced only when complete, and shards that already have points are skipped."""
    from tqdm import tqdm

    out = Path(args.out)
    for tmp in out.glob("*.points.tmp"):  # an interrupted rewrite: the original shard is intact
        tmp.unlink()
    objs, _, _ = select_objects(args)
    by_uid = {o.uid: o for o in objs}
    totals = {"added": 0, "kept": 0, "already": 0}
    for shard in tqdm(sorted(out.glob("*.tar")), desc="add-points", unit="shard", disable=args.quiet):
        a, k, al = add_points_to_shard(shard, by_uid)
        totals["added"] += a
        totals["kept"] += k
        totals["already"] += al
    print(f"[add-points] {totals}", file=sys.stderr)
    return totals


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sources", default=DEFAULT_SOURCES,
                   help="comma list: procedural,products,pybullet,flightgear,assimp,cgal,pymeshlab,robosuite,folder,objaverse")
    p.add_argument("--out", default="data/shards/default")
    p.add_argument("--num", type=int, default=None, help="cap on the total number of objects")
    p.add_argument("--procedural-num", type=int, default=800, help="procedural objects to generate")
    p.add_argument("--products-num", type=int, default=1000, help="product objects (--sources products) to generate")
    p.add_argument("--seed", type=int, default=0, help="procedural and products seed")
    p.add_argument("--folder", default=None, help="local folder(s) of meshes for --sources folder (comma list)")
    p.add_argument("--folder-up", default="z", choices=["z", "y", "-y"])
    p.add_argument("--objaverse-uids", default=None, help="file with one uid per line, or comma list")
    p.add_argument("--objaverse-lvis", default=None, help="comma list of LVIS categories")
    p.add_argument("--objaverse-count", type=int, default=None)
    p.add_argument("--cache", default=None, help="conversion/download cache (default data/cache)")
    p.add_argument("--views", type=int, default=RENDER_DEFAULTS["views"])
    p.add_argument("--resolution", type=int, default=RENDER_DEFAULTS["resolution"])
    p.add_argument("--fov", type=float, default=RENDER_DEFAULTS["fov_deg"])
    p.add_argument("--distance", type=float, default=RENDER_DEFAULTS["distance"])
    p.add_argument("--elevation", type=float, nargs=2, default=RENDER_DEFAULTS["elevation_range"])
    p.add_argument("--no-val-orbit", action="store_true", help="do not add the 16-view eval orbit to val objects")
    p.add_argument("--normals", action="store_true", help="also store normal maps")
    p.add_argument("--no-depth", action="store_true")
    p.add_argument("--no-points", action="store_true",
                   help="do not store occupancy / surface-colour points (3D supervision, lrm/data/points.py)")
    p.add_argument("--val-fraction", type=float, default=0.02)
    p.add_argument("--shard-size", type=int, default=64, help="objects per shard")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--include-eval", dest="exclude_eval", action="store_false",
                   help="do not hold out the dev eval set's objects")
    p.add_argument("--add-points", action="store_true",
                   help="add 3D-supervision points to the existing shards under --out (same --sources); no rendering")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    add_points(args) if args.add_points else build(args)


if __name__ == "__main__":
    main()
