"""Full-size TripoSR in our code on this CPU: per-stage time and peak memory, beside our `large` config.

    python benchmarks/bench_triposr.py [--configs triposr,large] [--threads 2] [--grid 256] [--res 256]
                                       [--workdir /tmp/bench_triposr] [--json out.json]

`triposr`: random weights with the full model's key/shape manifest (<shared>/conformance/triposr/
full_manifest.json, TripoSR key names) are written as a TripoSR state dict, converted with
`lrm.convert.triposr` and loaded with `lrm.checkpoint.load_checkpoint`: the same path as
`infer.py --checkpoint OUT_DIR`. `large`: our camera-conditioned config of the same sizes, random init,
saved and loaded through the same checkpoint functions.

Stages timed (fp32, no grad; wall seconds and process CPU seconds): checkpoint load; image (512²) -> triplane (after one warm-up call); one 256²
view at the config's samples per ray; a dense grid³ density query over the triplane cube (what mesh
extraction evaluates), in chunks of 2^18 points. Peak memory: the process's resident set size sampled every
5 ms, highest value seen during each stage (and overall). Each config runs in its own subprocess.
TripoSR's own code on this kind of machine (shared/reference-figures.md, 2 threads): 18.0 s image -> triplane,
7.1 s per 256² view at 128 samples.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "tests" / "data" / "triposr_conformance" / "full_manifest.json"  # vendored (PROVENANCE.md)
REFERENCE = {"forward_s": 18.0, "render_s": 7.1}


class Stage:
    """Times one stage: wall seconds, process CPU seconds (all threads) and peak RSS seen meanwhile."""

    def __init__(self, row: dict, key: str, sampler: "RssSampler"):
        self.row, self.key, self.sampler = row, key, sampler

    def __enter__(self):
        self.sampler.reset()
        self.t, self.c = time.perf_counter(), time.process_time()

    def __exit__(self, *exc):
        self.row[self.key + "_s"] = time.perf_counter() - self.t
        self.row[self.key + "_cpu_s"] = time.process_time() - self.c
        self.row[self.key + "_peak_GB"] = self.sampler.peak / 1e9


class RssSampler:
    """Highest resident set size (bytes) seen since the last ``reset``."""

    def __init__(self, period: float = 0.005):
        self.period, self.peak, self._stop = period, 0, False
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, self.rss())
            time.sleep(self.period)

    def reset(self):
        self.peak = self.rss()

    def stop(self):
        self._stop = True


def random_triposr_state_dict(manifest: dict):
    import torch

    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, e in manifest["state_dict"].items():
        shape = e["shape"]
        if k.endswith("bias"):
            sd[k] = torch.zeros(shape)
        elif ("norm" in k.split(".")[-2] or "layernorm" in k) and k.endswith("weight"):
            sd[k] = torch.ones(shape)
        else:
            sd[k] = torch.randn(shape, generator=g) * 0.02
    return sd


def write_triposr_files(sd: dict, manifest: dict, workdir: Path):
    """A TripoSR state dict and the manifest's config as the files `lrm.convert.triposr.convert` reads ->
    (weights path, config path)."""
    from safetensors.torch import save_file

    src, cfg_json = workdir / "triposr_random.safetensors", workdir / "triposr_config.json"
    save_file(sd, str(src))
    cfg_json.write_text(json.dumps({"tsr_config": manifest["tsr_config"], "vit_config": manifest["vit_config"]}))
    return src, cfg_json


def run_one(name: str, workdir: Path, res: int, grid: int, threads: int) -> dict:
    import torch

    from lrm import cameras as C
    from lrm.checkpoint import load_checkpoint, save_checkpoint
    from lrm.config import load_config

    torch.set_num_threads(threads)
    sampler = RssSampler()
    row = {"config": name, "threads": threads, "loadavg_start": os.getloadavg()[0]}
    folder = workdir / name
    if name == "triposr":
        from lrm.convert import triposr as tsr

        manifest = json.loads(MANIFEST.read_text())
        src, cfg_json = write_triposr_files(random_triposr_state_dict(manifest), manifest, workdir)
        with Stage(row, "convert", sampler):
            tsr.convert(src, cfg_json, folder)
        src.unlink()
    else:
        from lrm.models import build_model

        torch.manual_seed(0)
        cfg = load_config(name)
        save_checkpoint(build_model(cfg), cfg, folder)
    import gc

    gc.collect()
    with Stage(row, "load", sampler):
        model, cfg = load_checkpoint(folder)
    row["params_M"] = sum(p.numel() for p in model.parameters()) / 1e6
    s = cfg.model.encoder.image_size
    img = torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(0))
    c2w = C.orbit_camera(30.0, 20.0, cfg.camera.distance)[None, None]
    intr = C.intrinsics_from_fov(cfg.camera.fov_deg)[None, None]
    r = cfg.model.render
    with torch.no_grad():
        model(img)  # warm-up
        with Stage(row, "forward", sampler):
            tri = model(img)
        with Stage(row, "render", sampler):
            out = model.render(tri, c2w, intr, resolution=res)
        row["render_finite"] = bool(torch.isfinite(out["rgb"]).all())
        lin = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid * 2 * r.radius - r.radius
        with Stage(row, "grid", sampler):
            chunk = 1 << 18
            dens = torch.empty(grid ** 3)
            xs = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), -1).reshape(-1, 3)
            for i in range(0, xs.shape[0], chunk):
                dens[i:i + chunk] = model.query(tri, xs[None, i:i + chunk])["density"][0]
    import resource

    row.update(res=res, samples=r.n_samples + r.n_importance, grid=grid,
               process_peak_GB=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
               loadavg_end=os.getloadavg()[0])
    sampler.stop()
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="triposr,large")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--grid", type=int, default=256)
    ap.add_argument("--workdir", default="/tmp/bench_triposr")
    ap.add_argument("--json", default=None)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if a.one:
        print(json.dumps(run_one(a.one, work, a.res, a.grid, a.threads)))
        return
    if "triposr" in a.configs.split(",") and not MANIFEST.is_file():
        sys.exit(f"{MANIFEST} not found")
    rows = []
    for name in a.configs.split(","):
        cmd = [sys.executable, __file__, "--one", name, "--res", str(a.res), "--grid", str(a.grid),
               "--threads", str(a.threads), "--workdir", str(work)]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        if out.returncode:
            print(f"{name}: failed\n{out.stderr[-3000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    print(f"\ncpu, {a.threads} threads, fp32, no grad. Each cell: wall s (process CPU s / threads), peak RSS "
          "during the stage. On a machine shared with other jobs the wall time grows with the load; "
          "CPU s / threads is the better estimate of an idle machine's wall time.")
    print("| stage | " + " | ".join(f"{r['config']} ({r['params_M']:.0f} M)" for r in rows) + " | TripoSR's own code |")
    print("|---|" + "---|" * len(rows) + "---|")
    ref = {"forward": f"{REFERENCE['forward_s']} s", "render": f"{REFERENCE['render_s']} s"}
    stages = [("convert", "convert TripoSR ckpt"), ("load", "load checkpoint"), ("forward", "image → triplane (512² in)"),
              ("render", f"one {a.res}² view"), ("grid", f"density grid {a.grid}³")]
    for key, label in stages:
        cells = [f"{r[key + '_s']:.1f} s ({r[key + '_cpu_s'] / r['threads']:.1f} s), {r[key + '_peak_GB']:.2f} GB"
                 if key + "_s" in r else "—" for r in rows]
        print(f"| {label} | " + " | ".join(cells) + f" | {ref.get(key, '—')} |")
    print("| process peak RSS | " + " | ".join(f"{r['process_peak_GB']:.2f} GB" for r in rows) + " | — |")
    print("| load average (start → end) | " + " | ".join(f"{r['loadavg_start']:.1f} → {r['loadavg_end']:.1f}"
                                                    for r in rows) + " | — |")


if __name__ == "__main__":
    main()
