"""Inference rendering, mesh extraction and bf16, old vs new side by side in one process (same load).

    python benchmarks/bench_render.py [--image examples/duck.png] [--threads 2] [--skip-triposr] [--skip-512]
                                      [--rows views,protocol,mesh,precision] [--json out.json]

Default checkpoint, `examples/duck.png` through `lrm.pipeline.Pipeline`. Rows (each: old then new, back to back;
wall seconds and process CPU seconds, `time.process_time()`, which counts all threads):
- one 256² novel view: the renderer as issue 18 measured it (dense, `occupancy=False`, decoder unfolded:
  `model.decoder.fold_planes=false`, every one of `n_samples` + `n_importance` samples) vs the checkpoint's inference render:
  empty-space skipping + early termination (the grid built inside the call, as a single view pays for it), the
  folded decoder (lrm/models/plane_fold.py) and its `render.inference_samples` / `inference_importance` /
  `occupancy_coarse_factor` / `skip_chunk` / `threads` (with --threads 2: two worker threads render chunks at once);
  and rows with one change at a time;
  PSNR of new vs old; with ``--rounds R`` the variants run in turn R times (the single view 2R) and medians are
  reported;
- the 24-frame turntable at the pipeline's video resolution: dense per frame vs one grid for all frames;
- the evaluation protocol's 16 views at 256² (elevations 0° and 30°, azimuths every 45°) for one object;
- 256³ mesh extraction: dense density grid vs narrow band (+ marching cubes): decoder queries, seconds, and
  whether the meshes are identical; 512³ narrow band (the dense grid's query count only, not run);
- image -> triplane fp32 vs bf16 autocast: the default (tiny) model (median of 5) and the TripoSR-size model
  (`configs/triposr.yaml`, random weights, one forward each), with the triplane's relative error.
Targets (issue 18): 256² view >= 5x faster than dense; evaluation protocol <= 10 s of rendering per object;
TripoSR size image -> triplane <= 0.5x TripoSR's fp32 18.0 s (shared/reference-figures.md); 256³ mesh <= 0.1x
the dense grid.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lrm.image_metrics import psnr  # noqa: E402


def timed(fn):
    """(result, wall s, CPU s)."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def protocol_cameras(resolution_views=16):
    from lrm import cameras as C

    az = torch.arange(8) * 45.0
    el = torch.tensor([0.0, 30.0])
    a, e = torch.meshgrid(az, el, indexing="ij")
    c2w = C.orbit_camera(a.reshape(-1), e.reshape(-1), C.CANONICAL_DISTANCE)
    return c2w[None], C.intrinsics_from_fov(C.CANONICAL_FOV_DEG).expand(1, len(c2w), 4)


def render_views(model, tri, c2w, intr, res, occupancy):
    """Views one at a time (as the evaluation and turntable do); ``occupancy`` False (dense), a grid, or
    ``"once"`` (one grid built here for all views)."""
    with torch.no_grad():
        if occupancy == "once":
            occupancy = model.occupancy_grid(tri)
        return torch.cat([model.render(tri, c2w[:, i:i + 1], intr[:, i:i + 1], res, occupancy=occupancy)["rgb"]
                          for i in range(c2w.shape[1])], 1)


def row(name, old, new, target="", extra=""):
    (_, w0, c0), (_, w1, c1) = old, new
    return {"what": name, "old_wall": w0, "old_cpu": c0, "new_wall": w1, "new_cpu": c1,
            "ratio_wall": w0 / max(w1, 1e-9), "ratio_cpu": c0 / max(c1, 1e-9), "target": target, "note": extra}


@contextlib.contextmanager
def renderer_as(model, fold=True, all_samples=False, mlp_precision=None, threads=None):
    """For the duration: ``model.decoder.fold_planes`` = ``fold`` (False: the decoder samples the planes with
    ``grid_sample`` and applies its first layer per point, as before lrm/models/plane_fold.py); with
    ``all_samples``, ``render.inference_samples`` and ``render.inference_importance`` unset (every one of
    ``n_samples`` + ``n_importance`` samples, as before); with ``mlp_precision``, that ``model.decoder.mlp_precision``
    (bf16: the MLP in bf16 when no gradient is taken); with ``threads``, that ``render.threads`` (1: chunks one after
    another on the calling thread, torch's intra-op threads inside each op, as before worker threads)."""
    dcfg, rcfg = model.decoder.cfg, model.renderer.cfg
    was = dcfg.fold_planes, rcfg.inference_importance, rcfg.inference_samples, dcfg.mlp_precision, rcfg.threads
    dcfg.fold_planes = was[0] and fold
    if all_samples:
        rcfg.inference_importance = rcfg.inference_samples = None
    if mlp_precision is not None:
        dcfg.mlp_precision = mlp_precision
    if threads is not None:
        rcfg.threads = threads
    try:
        yield
    finally:
        dcfg.fold_planes, rcfg.inference_importance, rcfg.inference_samples, dcfg.mlp_precision, rcfg.threads = was


def interleaved(fns, rounds):
    """Run each of ``fns`` once per round, in turn; -> per fn (last result, median wall s, median CPU s)."""
    runs = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            runs[i].append(timed(fn))
    return [(r[-1][0], statistics.median(x[1] for x in r), statistics.median(x[2] for x in r)) for r in runs]


def bench_views(pipe, tri, views=True, protocol=True, rounds=1, bf16_rows=False):
    from lrm import cameras as C

    model = pipe.model
    rows = []
    grid = model.occupancy_grid(tri)
    print(f"occupancy grid: {grid.fraction():.3f} of cells occupied "
          f"(skipping used when <= {model.renderer.cfg.skip_max_occupancy})", flush=True)

    def old_fn(c2w, intr, res):  # the renderer as the issue measured it: dense, every sample, decoder unfolded
        def fn():
            with renderer_as(model, fold=False, all_samples=True, threads=1):
                return render_views(model, tri, c2w, intr, res, False)
        return fn

    def new_fn(c2w, intr, res, occupancy="once", fold=True, skip=True, all_samples=False, mlp_precision=None,
               threads=None):
        def fn():
            with renderer_as(model, fold, all_samples, mlp_precision, threads):
                return render_views(model, tri, c2w, intr, res, occupancy if skip else False)
        return fn

    rc = model.renderer.cfg
    fewer = [f"{k}={getattr(rc, k)}" for k in ("inference_samples", "inference_importance", "occupancy_coarse_factor",
                                               "skip_chunk") if getattr(rc, k, None) not in (None, 1)]
    label = "skipping + folded decoder" + "".join(f" + {x}" for x in fewer)
    if protocol:
        pc2w, pintr = protocol_cameras()
        old, new, all_imp, one = interleaved([
            old_fn(pc2w, pintr, 256), new_fn(pc2w, pintr, 256), new_fn(pc2w, pintr, 256, all_samples=True),
            new_fn(pc2w, pintr, 256, threads=1)], rounds)
        rows.append(row(f"evaluation protocol: 16 views at 256², new = {label}", old, new,
                        "<= 10 s per object", f"PSNR {psnr(old[0], new[0]):.1f} dB"))
        rows.append(row("  the same, new = skipping + folded decoder, every sample", old, all_imp, "",
                        f"PSNR {psnr(old[0], all_imp[0]):.1f} dB"))
        if torch.get_num_threads() > 1:
            rows.append(row("  the same, new without worker threads (render.threads=1: intra-op threads only)",
                            old, one, "", f"PSNR {psnr(old[0], one[0]):.1f} dB"))
        if bf16_rows:
            fast = timed(new_fn(pc2w, pintr, 256, fold=False, mlp_precision="bf16"))
            rows.append(row("  the same, new = skipping + decoder.mlp_precision=bf16", old, fast, "<= 10 s per object",
                            f"PSNR {psnr(old[0], fast[0]):.1f} dB"))
    if not views:
        return rows
    c2w = C.orbit_camera(torch.tensor([45.0]), torch.tensor([30.0]), C.CANONICAL_DISTANCE)[None]
    intr = C.intrinsics_from_fov(C.CANONICAL_FOV_DEG).expand(1, 1, 4)
    variants = [("skipping + folded decoder, every sample", dict(all_samples=True)),
                ("dense + folded decoder, every sample", dict(skip=False, all_samples=True)),
                ("skipping, decoder unfolded, every sample", dict(fold=False, all_samples=True))]
    res = interleaved([old_fn(c2w, intr, 256), new_fn(c2w, intr, 256, None)]
                      + [new_fn(c2w, intr, 256, None, **kw) for _, kw in variants], max(rounds, 1) * 2)
    old = res[0]
    rows.append(row(f"one 256² view (grid built in the call), new = {label}", old, res[1], ">= 5x",
                    f"PSNR {psnr(old[0], res[1][0]):.1f} dB"))
    for (name, _), r in zip(variants, res[2:]):
        rows.append(row(f"  the same, new = {name}", old, r, "", f"PSNR {psnr(old[0], r[0]):.1f} dB"))
    if bf16_rows:
        fast = timed(new_fn(c2w, intr, 256, None, fold=False, mlp_precision="bf16"))
        rows.append(row("  the same + decoder.mlp_precision=bf16", old, fast, ">= 5x",
                        f"PSNR {psnr(old[0], fast[0]):.1f} dB"))
    n, res = pipe.opts["video_frames"], pipe.opts["video_resolution"]
    tc2w = C.orbit_cameras(n, pipe.opts["video_elevation"], C.CANONICAL_DISTANCE)[None]
    tintr = C.intrinsics_from_fov(C.CANONICAL_FOV_DEG).expand(1, n, 4)
    old, new = interleaved([old_fn(tc2w, tintr, res), new_fn(tc2w, tintr, res)], rounds)
    rows.append(row(f"turntable {n} frames at {res}²", old, new, "", f"PSNR {psnr(old[0], new[0]):.1f} dB"))
    return rows


def extract(pipe, tri, n, factor):
    from lrm.mesh import density_grid, marching_cubes

    o, r = pipe.opts, pipe.cfg.model.render.radius
    grid, stats = density_grid(pipe.density_fn(tri), n, r, o["mc_threshold"], factor, chunk=o["chunk"])
    v, f = marching_cubes(grid, o["mc_threshold"], r)
    return v, f, stats


def bench_mesh(pipe, tri, do_512: bool):
    rows = []
    old = timed(lambda: extract(pipe, tri, 256, 1))
    new = timed(lambda: extract(pipe, tri, 256, 4))
    (v0, f0, s0), (v1, f1, s1) = old[0], new[0]
    same = len(f0) == len(f1) and np.allclose(v0, v1, atol=1e-5)
    rows.append(row("256³ mesh: dense vs narrow band", old, new, "<= 0.1x dense",
                    f"queries {s0['queries'] / 1e6:.2f} M vs {s1['queries'] / 1e6:.2f} M "
                    f"({s1['queries'] / s0['queries']:.3f}x); same mesh: {same} ({len(f1)} faces)"))
    if do_512:
        r = timed(lambda: extract(pipe, tri, 512, 4))
        v, f, s = r[0]
        rows.append({"what": "512³ mesh: narrow band only", "old_wall": float("nan"), "old_cpu": float("nan"),
                     "new_wall": r[1], "new_cpu": r[2], "ratio_wall": float("nan"), "ratio_cpu": float("nan"),
                     "target": "", "note": f"queries {s['queries'] / 1e6:.2f} M vs dense {512 ** 3 / 1e6:.1f} M "
                                           f"({s['queries'] / 512 ** 3:.3f}x); {len(f)} faces"})
    return rows


def forward(model, x, cam, precision):
    from lrm.precision import autocast_for

    with torch.no_grad(), autocast_for(precision, x.device):
        return model(x, cam).float()


def bench_precision(model, name, runs):
    size = int(model.cfg.encoder.image_size)
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    cam = model.default_camera(1)
    times = {"fp32": [], "bf16": []}
    outs = {}
    forward(model, x, cam, "fp32")  # warm-up
    for _ in range(runs):
        for p in ("fp32", "bf16"):
            outs[p], w, c = timed(lambda p=p: forward(model, x, cam, p))
            times[p].append((w, c))
    med = {p: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v)) for p, v in times.items()}
    rel = float((outs["bf16"] - outs["fp32"]).norm() / outs["fp32"].norm())
    return {"what": f"image -> triplane {name}: fp32 vs bf16 ({runs} run{'s' if runs > 1 else ''})",
            "old_wall": med["fp32"][0], "old_cpu": med["fp32"][1], "new_wall": med["bf16"][0], "new_cpu": med["bf16"][1],
            "ratio_wall": med["fp32"][0] / med["bf16"][0], "ratio_cpu": med["fp32"][1] / med["bf16"][1],
            "target": "<= 0.5x of 18.0 s (TripoSR size)" if "TripoSR" in name else "",
            "note": f"triplane relative error {rel:.4f}, max |diff| {float((outs['bf16'] - outs['fp32']).abs().max()):.3f}"}


def triposr_model():
    from lrm.config import load_config
    from lrm.models import build_model

    return build_model(load_config("triposr")).eval()


def markdown(rows, header):
    lines = [header, "", "| what | old wall s | old CPU s | new wall s | new CPU s | old/new (wall) | old/new (CPU) "
             "| target | notes |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['what']} | {r['old_wall']:.2f} | {r['old_cpu']:.2f} | {r['new_wall']:.2f} | "
                     f"{r['new_cpu']:.2f} | {r['ratio_wall']:.2f}x | {r['ratio_cpu']:.2f}x | {r['target']} | {r['note']} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default=str(ROOT / "examples" / "duck.png"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-triposr", action="store_true")
    ap.add_argument("--skip-512", action="store_true")
    ap.add_argument("--rows", default="views,protocol,mesh,precision",
                    help="comma-separated subset of: views (256² view, turntable), protocol, mesh, precision")
    ap.add_argument("--rounds", type=int, default=1,
                    help="interleaved rounds of the view rows (old and new in turn), medians reported; the single "
                         "view runs twice as many")
    ap.add_argument("--bf16-rows", action="store_true",
                    help="also rows with model.decoder.mlp_precision=bf16 (for CPUs with native bf16)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from lrm.pipeline import Pipeline
    from lrm.preprocess import preprocess

    pipe = Pipeline.from_pretrained()
    o = pipe.opts
    pre = preprocess(a.image, o["input_size"], None, o["foreground_ratio"], tuple(o["input_background"]))
    tri = pipe.triplane(pre.image)
    want = set(a.rows.split(","))
    rows = bench_views(pipe, tri, "views" in want, "protocol" in want, a.rounds, a.bf16_rows)
    if "mesh" in want:
        rows += bench_mesh(pipe, tri, not a.skip_512)
    if "precision" in want:
        rows.append(bench_precision(pipe.model, "default (tiny)", 5))
        if not a.skip_triposr:
            rows.append(bench_precision(triposr_model(), "TripoSR size, random weights", 1))
    load = open("/proc/loadavg").read().split()[0] if Path("/proc/loadavg").exists() else "?"
    print(markdown(rows, f"torch {torch.__version__}, {a.threads} threads, load average at the end {load}; "
                         f"old = dense renderer with the unfolded decoder / dense grid / fp32, new = as each row says / narrow band / bf16"))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
