#!/usr/bin/env python
"""Data benchmarks: build throughput, loader throughput, and a tiny-model training-step proxy.

    python benchmarks/bench_data.py --shards data/shards/default            # loader + step (needs shards)
    python benchmarks/bench_data.py --build 40                              # also a small timed build

Loader: batches/s for ``make_loader`` (K target views, image size, batch size, workers) after warm-up.
Step proxy: ``tiny`` config LRM, forward (encoder+transformer+upsampler) + volume rendering of
``--rays`` random rays per target view + MSE + backward + AdamW, on the same batch shape. The loader must
deliver a batch faster than one step takes. Results printed as JSON (and written to ``--out``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def bench_loader(shards, K, size, batch, workers, n_batches, warmup=2):
    from lrm.data import make_loader

    it = iter(make_loader(shards, num_views_target=K, image_size=size, batch_size=batch, num_workers=workers, seed=0))
    for _ in range(warmup):
        next(it)
    t = time.perf_counter()
    for _ in range(n_batches):
        b = next(it)
    dt = time.perf_counter() - t
    return {"workers": workers, "batches_per_s": n_batches / dt, "s_per_batch": dt / n_batches,
            "objects_per_s": n_batches * batch / dt}, b


def bench_step(batch, rays, n_steps):
    from lrm.cameras import get_rays
    from lrm.config import load_config
    from lrm.models import build_model

    cfg = load_config("tiny")
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    B, K, H, W, _ = batch["target_rgb"].shape
    views = batch["input_images"]
    img = torch.nn.functional.interpolate(views.flatten(0, 1), size=cfg.model.encoder.image_size,
                                          mode="bilinear").unflatten(0, views.shape[:2])
    times = []
    for i in range(n_steps + 1):
        t = time.perf_counter()
        planes = model(img, batch["input_cameras"])
        o, d = get_rays(batch["target_c2w"], batch["target_intrinsics"], H, W)  # [B,K,HW,3]
        idx = torch.randint(0, H * W, (rays,))
        o, d = o[:, :, idx].reshape(B, -1, 3), d[:, :, idx].reshape(B, -1, 3)
        gt = batch["target_rgb"].reshape(B, K, H * W, 3)[:, :, idx].reshape(B, -1, 3)
        out = model.render_rays(planes, o, d)
        loss = torch.nn.functional.mse_loss(out["rgb"], gt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i > 0:  # first step warms up allocators
            times.append(time.perf_counter() - t)
    return {"s_per_step": sum(times) / len(times), "rays_per_view": rays, "params": sum(p.numel() for p in model.parameters())}


def bench_build(n, workers, views, res):
    from lrm.data.build import build, parse_args

    with tempfile.TemporaryDirectory() as tmp:
        args = parse_args(["--sources", "procedural,pybullet", "--num", str(n), "--out", tmp, "--views", str(views),
                           "--resolution", str(res), "--workers", str(workers), "--quiet"])
        t = time.perf_counter()
        man = build(args)
        dt = time.perf_counter() - t
        size = sum(f.stat().st_size for f in Path(tmp).glob("*.tar"))
    n_ok = man["counts"]["objects"]
    return {"objects": n_ok, "seconds": dt, "objects_per_s": n_ok / dt, "images_per_s": n_ok * views / dt,
            "est_minutes_for_2000": 2000 / (n_ok / dt) / 60, "mb_per_object": size / max(n_ok, 1) / 2**20}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", default="data/shards/default")
    p.add_argument("--K", type=int, default=4)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--workers", default="0,2")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--rays", type=int, default=1024)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--build", type=int, default=0, help="also time a build of this many objects")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    res = {"machine": f"{os.cpu_count()} CPU cores", "torch": torch.__version__,
           "loadavg_1min": os.getloadavg()[0], "config": vars(a)}
    if a.build:
        res["build"] = bench_build(a.build, 2, 24, 256)
    batch = None
    res["loader"] = []
    for w in [int(x) for x in a.workers.split(",")]:
        r, batch = bench_loader(a.shards, a.K, a.size, a.batch, w, a.batches)
        res["loader"].append(r)
    res["step"] = bench_step(batch, a.rays, a.steps)
    best = max(r["batches_per_s"] for r in res["loader"])
    res["loader_faster_than_step"] = 1.0 / best < res["step"]["s_per_step"]
    res["ratio_step_over_batch"] = res["step"]["s_per_step"] * best
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
