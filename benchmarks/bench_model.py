"""Model speed and memory on this machine: forward (image -> triplane), render throughput, peak RSS.

    python benchmarks/bench_model.py [--configs tiny,small] [--threads N] [--dtype fp32|bf16]

Each config runs in its own subprocess so peak RSS is per config. Reference figures measured on the same
kind of machine (shared/reference-figures.md) are printed beside ours where the configuration matches:
TripoSR's full model (our `large` sizes) takes 18.0 s image -> triplane and 7.1 s per 256^2 view at
128 samples/ray.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REFERENCE = {"large": {"forward_s": 18.0, "render_view_s": 7.1, "note": "TripoSR (419 M), its own code"}}


def run_one(name: str, res: int, dtype: str) -> dict:
    import resource

    import torch

    from lrm import cameras as C
    from lrm.config import load_config
    from lrm.models import build_model

    torch.manual_seed(0)
    cfg = load_config(name)
    model = build_model(cfg).eval()
    img = torch.rand(1, 3, cfg.model.encoder.image_size, cfg.model.encoder.image_size)
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), cast:
        model(img)  # warm-up
        t = time.perf_counter()
        tri = model(img)
        fwd = time.perf_counter() - t
        c2w = C.orbit_camera(30.0, 20.0, C.CANONICAL_DISTANCE)[None, None]
        intr = C.intrinsics_from_fov(C.CANONICAL_FOV_DEG)[None, None]
        t = time.perf_counter()
        model.render(tri.float(), c2w, intr, resolution=res)
        rend = time.perf_counter() - t
    return {"config": name, "params_M": sum(p.numel() for p in model.parameters()) / 1e6, "forward_s": fwd,
            "render_view_s": rend, "rays_per_s": res * res / rend, "res": res,
            "samples": cfg.model.render.n_samples + cfg.model.render.n_importance,
            "peak_rss_GB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="tiny,small")
    ap.add_argument("--res", type=int, default=0, help="render resolution (default: the config's)")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        from lrm.config import load_config

        res = a.res or load_config(a.one).model.render.resolution
        print(json.dumps(run_one(a.one, res, a.dtype)))
        return
    rows = []
    for name in a.configs.split(","):
        out = subprocess.run([sys.executable, __file__, "--one", name, "--res", str(a.res), "--dtype", a.dtype],
                             capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
        if out.returncode:
            print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    import torch

    print(f"device: cpu, {torch.get_num_threads()} threads, {a.dtype}")
    print("| config | params | image->triplane | render view (res, samples/ray) | rays/s | peak RSS | reference |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ref = REFERENCE.get(r["config"])
        ref_s = (f"{ref['note']}: {ref['forward_s']} s fwd, {ref['render_view_s']} s/view (256², 128)" if ref else "—")
        print(f"| {r['config']} | {r['params_M']:.1f} M | {r['forward_s']:.3f} s | {r['render_view_s']:.3f} s "
              f"({r['res']}², {r['samples']}) | {r['rays_per_s']:.0f} | {r['peak_rss_GB']:.2f} GB | {ref_s} |")


if __name__ == "__main__":
    main()
