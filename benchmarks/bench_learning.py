#!/usr/bin/env python
"""Learning efficiency: what each training recipe reaches for the same CPU budget, in one run.

    python benchmarks/bench_learning.py --cpu-minutes 8 --parallel 2              # every recipe below
    python benchmarks/bench_learning.py --recipes baseline,all --cpu-minutes 20

Each recipe trains ``tiny`` from scratch (``train.py``, its own process, ``train.threads`` threads) until its
training steps have used ``--cpu-minutes`` of CPU (process + data-loader workers: the load on a shared
machine changes wall time, not CPU time; ``train.max_cpu_minutes``). Then, for each final model: PSNR and
mask IoU over the whole ``val`` split (``lrm.training.validation``), and F@0.02 / Chamfer on the real
objects of ``data/eval/dev`` (``lrm.evaluate``, when that set exists). Prints one table and saves the
fixed-batch validation curves against CPU minutes to ``--plot``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

THREE_D = ["train.loss.occupancy=0.2", "train.loss.surface_rgb=1.0"]
DEPTH = ["train.loss.depth=0.2"]
JITTER = ["data.color_jitter=0.5"]
PIXEL = ["model.pixel_plane.enabled=true"]  # pixel-aligned features (lrm/models/pixel_plane.py)
PLANES64 = ["model.upsampler.kernel=4"]  # 64² planes instead of 32²
DEPTH_GATE = ["model.pixel_plane.depth_bands=4"]  # pixel features gated by depth bands (lrm/models/decoder.py)
INPUT_DEPTH = ["train.loss.input_depth=1.0"]  # pixel-plane channel 3 supervised by the input view's depth
EFF_WEIGHTS = os.environ.get("LRM_EFFICIENTNET_LITE0", "data/weights/efficientnet-lite0.safetensors")
EFF = ["model.encoder.kind=efficientnet_lite0"]  # the convolutional encoder (lrm/models/efficientnet_lite.py)
EFF_PRETRAINED = EFF + [f"model.encoder.pretrained_path={EFF_WEIGHTS}"]  # ... from ImageNet weights
#: recipe name -> overrides on top of configs/tiny.yaml's training section as it was before these switches
RECIPES = {
    "baseline": [],
    "3d": THREE_D,
    "depth": DEPTH,
    "jitter": JITTER,
    "all": THREE_D + DEPTH + JITTER,
    "all-bf16": THREE_D + DEPTH + JITTER + ["train.mixed_precision=bf16"],
    "all-bf16-pixel": THREE_D + DEPTH + JITTER + ["train.mixed_precision=bf16"] + PIXEL,
    "all-bf16-pixel64": THREE_D + DEPTH + JITTER + ["train.mixed_precision=bf16"] + PIXEL + PLANES64,
    "all-bf16-pixel64-gate": THREE_D + DEPTH + JITTER + ["train.mixed_precision=bf16"] + PIXEL + PLANES64 + DEPTH_GATE,
    # fp32: for CPUs without native bf16 (there bf16 is emulated and slower)
    "all-pixel64": THREE_D + DEPTH + JITTER + PIXEL + PLANES64,
    "all-pixel64-indepth": THREE_D + DEPTH + JITTER + PIXEL + PLANES64 + INPUT_DEPTH,
    "all-pixel64-eff": THREE_D + DEPTH + JITTER + PIXEL + PLANES64 + EFF_PRETRAINED,
    "all-pixel64-effrand": THREE_D + DEPTH + JITTER + PIXEL + PLANES64 + EFF,
}
#: the switches tiny.yaml turns on now, reset so "baseline" is the previous recipe
OFF = ["train.loss.occupancy=0", "train.loss.surface_rgb=0", "train.loss.depth=0", "data.color_jitter=0",
       "train.mixed_precision=no", "model.pixel_plane.enabled=false", "model.upsampler.kernel=2",
       "model.pixel_plane.depth_bands=0", "train.loss.input_depth=0", "model.encoder.kind=vit"]


def train_cmd(name: str, out: Path, minutes: float, threads: int, extra) -> list:
    return [sys.executable, str(ROOT / "train.py"), "--config", "tiny", "--output-dir", str(out / name),
            "--max-steps", "1000000", *OFF, *RECIPES[name], f"train.max_cpu_minutes={minutes}",
            f"train.threads={threads}", "train.val_every=50", "train.image_every=0", "train.ckpt_every=200",
            "train.progress=false", *extra]


def run_all(names, out: Path, minutes: float, parallel: int, threads: int, extra) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    pending, running = list(names), []
    while pending or running:
        while pending and len(running) < parallel:
            n = pending.pop(0)
            if (out / n / "model" / "model.safetensors").is_file():
                print(f"[bench] {n}: already trained, reusing {out / n}", flush=True)
                continue
            (out / n).mkdir(parents=True, exist_ok=True)
            log = open(out / n / "train.log", "w")
            print(f"[bench] {n}: training for {minutes} CPU-min", flush=True)
            running.append((n, subprocess.Popen(train_cmd(n, out, minutes, threads, extra), stdout=log,
                                                stderr=subprocess.STDOUT, env=env, cwd=ROOT), log))
        time.sleep(5)
        for item in list(running):
            n, proc, log = item
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                print(f"[bench] {n}: exit {proc.returncode}", flush=True)


def score(name: str, out: Path, data: str, eval_set: str, limit, dev_limit: int = 0) -> dict:
    from lrm.training.curves import read_scalars

    model = out / name / "model"
    row = {"recipe": name}
    s = read_scalars(out / name)
    row["steps"] = int(s["train/cpu_minutes"][-1][0]) if s.get("train/cpu_minutes") else None
    row["cpu_min"] = s["train/cpu_minutes"][-1][1] if s.get("train/cpu_minutes") else None
    row["samples"] = s["train/samples"][-1][1] if s.get("train/samples") else None
    vj = out / name / "val.json"
    if not vj.is_file():
        cmd = [sys.executable, "-m", "lrm.training.validation", str(model), "--data", data, "--json", str(vj)]
        if limit:
            cmd += ["--limit", str(limit)]
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    v = json.loads(vj.read_text())
    row.update(val_psnr=v["psnr"], val_mask_iou=v["mask_iou"], val_objects=v["objects"])
    if eval_set and Path(eval_set).is_dir():
        ev = out / name / "eval"
        if not (ev / "report.md").is_file():
            subprocess.run([sys.executable, "-m", "lrm.evaluate", "--eval-set", eval_set, "--method",
                            f"lrm:{model}", "--out", str(ev), "--set", "render_resolution=64", "--quiet",
                            "--max-objects", str(dev_limit)],
                           check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        row.update(dev_metrics(ev))
    return row


def dev_metrics(ev: Path) -> dict:
    """Means over the objects the evaluation scored (per-object records under ``ev/objects``)."""
    vals = {"f_score": [], "chamfer": []}
    for f in sorted((ev / "objects").rglob("*.json")):
        r = json.loads(f.read_text())
        if r.get("status") != "ok":
            continue
        for k, key in (("f_score", "fscore@0.02"), ("chamfer", "chamfer")):
            if r.get(key) is not None:
                vals[k].append(float(r[key]))
    return {f"dev_{k}": (sum(v) / len(v) if v else None) for k, v in vals.items()}


def plot(names, out: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lrm.training.curves import read_scalars

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for n in names:
        s = read_scalars(out / n)
        cpu = dict(s.get("train/cpu_minutes", []))
        for ax, tag in zip(axes, ("val/psnr", "val/mask_iou", "loss/rgb")):
            pts = [(cpu[st], v) for st, v in s.get(tag, []) if st in cpu]
            if pts:
                x, y = zip(*pts)
                ax.plot(x, y, label=n, lw=1.2)
    for ax, t in zip(axes, ("fixed val batch PSNR (dB)", "fixed val batch mask IoU", "train RGB MSE")):
        ax.set_title(t)
        ax.set_xlabel("CPU minutes")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"[bench] curves -> {path}")


def fmt(v, spec):
    return "–" if v is None else format(v, spec)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default=",".join(RECIPES))
    p.add_argument("--cpu-minutes", type=float, default=20.0, help="CPU budget per recipe")
    p.add_argument("--parallel", type=int, default=1, help="recipes trained at once")
    p.add_argument("--threads", type=int, default=1, help="torch threads per training process")
    p.add_argument("--out", default="runs/bench_learning")
    p.add_argument("--data", default="data/shards/default")
    p.add_argument("--eval-set", default="data/eval/dev")
    p.add_argument("--val-limit", type=int, default=None, help="score at most N val objects (default: all)")
    p.add_argument("--dev-limit", type=int, default=0, help="evaluate the first N dev objects (default 0: all)")
    p.add_argument("--plot", default="docs/images/bench_learning.png")
    p.add_argument("overrides", nargs="*", help="extra overrides for every recipe")
    a = p.parse_args(argv)
    names = [n.strip() for n in a.recipes.split(",") if n.strip()]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        print(f"error: unknown recipe(s) {unknown}; choose from {list(RECIPES)}", file=sys.stderr)
        return 2
    out = Path(a.out)
    run_all(names, out, a.cpu_minutes, a.parallel, a.threads, a.overrides)
    rows = [score(n, out, a.data, a.eval_set, a.val_limit, a.dev_limit) for n in names]
    (out / "table.json").write_text(json.dumps(rows, indent=1))
    print(f"\nLearning efficiency at {a.cpu_minutes:g} CPU-min per recipe (tiny from scratch; val = "
          f"{a.val_limit or 'all'} val objects x 4 novel views at 64²; dev = {a.eval_set}, "
          f"{a.dev_limit or 'all'} objects, geometry in the canonical frame):\n")
    print("| recipe | steps | samples | CPU min | val PSNR | val mask IoU | dev F@0.02 | dev Chamfer |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['recipe']} | {r['steps']} | {fmt(r['samples'], '.0f')} | {fmt(r['cpu_min'], '.1f')} | "
              f"{fmt(r['val_psnr'], '.2f')} | {fmt(r['val_mask_iou'], '.3f')} | {fmt(r.get('dev_f_score'), '.3f')} | "
              f"{fmt(r.get('dev_chamfer'), '.4f')} |")
    plot(names, out, Path(a.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
