"""End-to-end inference time on this machine, as a breakdown table.

    python benchmarks/bench_infer.py [--image examples/duck.png] [--runs 3] [--large]

Default checkpoint: `python infer.py IMAGE` is run as a fresh process (so process start, imports and the
checkpoint load count) and its own stage timings (timings.json) are read back; the wall time of the whole
process is the headline number (target: <= 5 s). `--large`: the same stages in-process for `configs/large.yaml`
with random weights (no checkpoint file), for scale. Reference figures (shared/reference-figures.md):
TripoSR's own code takes 18.0 s image -> triplane for its 419 M model here, and a dense 256^3 grid costs
16.7 M decoder queries.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ["preprocess", "model", "density_grid", "marching_cubes", "texture", "export"]


def run_cli(image: str, extra) -> dict:
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        r = subprocess.run([sys.executable, str(ROOT / "infer.py"), image, "--out", out, *extra],
                           capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t
        if r.returncode:
            raise SystemExit(f"infer.py failed: {r.stderr.strip()}")
        info = json.loads(next(Path(out).glob("*/timings.json")).read_text())
    info["wall"] = wall
    ready = [ln for ln in r.stdout.splitlines() if "process start -> ready" in ln]
    info["ready"] = float(ready[0].split("ready ")[1].rstrip("s)")) if ready else float("nan")
    return info


def run_large(image: str, mc_resolution: int) -> dict:
    import resource

    import torch

    from lrm.config import load_config
    from lrm.models import build_model
    from lrm.pipeline import Pipeline

    torch.manual_seed(0)
    cfg = load_config("large")
    t = time.perf_counter()
    model = build_model(cfg)
    build_s = time.perf_counter() - t
    pipe = Pipeline(model, cfg, mc_resolution=mc_resolution)
    res = pipe.run(image)
    # random weights give a near-constant density; the grid/MC times below are for the configured level
    return {"timings_s": res.timings, "build_s": build_s, "queries": res.stats.get("queries"),
            "peak_rss_GB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default=str(ROOT / "examples" / "duck.png"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--large", action="store_true")
    ap.add_argument("--large-mc-resolution", type=int, default=257)
    a = ap.parse_args()
    runs = [run_cli(a.image, []) for _ in range(a.runs)]
    med = lambda xs: statistics.median(xs)  # noqa: E731
    print(f"image: {a.image}; device: cpu; median of {a.runs} fresh processes")
    print("| stage | default checkpoint (tiny) |")
    print("|---|---|")
    print(f"| process start + imports + checkpoint load | {med([r['ready'] for r in runs]):.2f} s |")
    for s in STAGES:
        print(f"| {s} | {med([r['timings_s'].get(s, 0.0) for r in runs]):.2f} s |")
    print(f"| **total wall (process start to exit)** | **{med([r['wall'] for r in runs]):.2f} s** (target <= 5 s) |")
    print(f"| mesh | {runs[0]['faces']} faces, grid queries {runs[0]['stats'].get('queries')} |")
    if a.large:
        L = run_large(a.image, a.large_mc_resolution)
        print("\n| stage | large config, random weights (in-process) |")
        print("|---|---|")
        print(f"| build model | {L['build_s']:.2f} s |")
        for s in STAGES[:-1]:
            print(f"| {s} | {L['timings_s'].get(s, 0.0):.2f} s |")
        print(f"| grid queries at {a.large_mc_resolution}^3 | {L['queries']} (dense would be "
              f"{a.large_mc_resolution ** 3}; TripoSR's dense 256^3: 16.7 M) |")
        print(f"| peak RSS | {L['peak_rss_GB']:.2f} GB |")


if __name__ == "__main__":
    main()
