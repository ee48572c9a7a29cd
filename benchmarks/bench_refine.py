"""Seconds per refinement step (lrm/refine/) with the default checkpoint and a prior of realistic cost.

    nice -n 19 python benchmarks/bench_refine.py [--steps 6] [--image examples/duck.png] [--json out.json]

The prior is a random-weight diffusers UNet2DModel (~2.4 M parameters, 64², x_t + condition image + relative
camera as input channels: the size of the project's zero123-tiny pixel prior), so its cost, not its output,
is realistic. Each mode runs ``--steps`` and then twice as many steps at the default RefineConfig (first at the coarse
and then at the fine render side); the difference is the cost per step, the rest what a run pays once, and the table
projects a whole refinement at the default number of steps from both. Wall and process CPU
seconds are both reported (the machine is shared; CPU time is the steadier number).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class UNetPrior:
    """ViewPrior protocol around a random diffusers UNet2DModel (cost stand-in for the trained pixel prior)."""

    def __init__(self, resolution=64, channels=(48, 96, 96), T=1000):
        from diffusers import UNet2DModel

        from lrm.diffusion.prior import Condition  # noqa: F401 (protocol type)

        self.resolution, self.num_train_timesteps = resolution, T
        betas = torch.linspace(1e-4, 0.02, T)
        self.alphas_cumprod = torch.cumprod(1 - betas, 0)
        self.unet = UNet2DModel(sample_size=resolution, in_channels=3 + 3 + 4, out_channels=3,
                                block_out_channels=channels, layers_per_block=1,
                                down_block_types=("DownBlock2D",) * len(channels),
                                up_block_types=("UpBlock2D",) * len(channels), norm_num_groups=16).eval()
        self.unet.requires_grad_(False)
        self.params = sum(p.numel() for p in self.unet.parameters())

    def _resize(self, x):
        return torch.nn.functional.interpolate(x, size=(self.resolution,) * 2, mode="bilinear", align_corners=False)

    def condition(self, image):
        from lrm.diffusion.prior import Condition

        return Condition(image=image, extras={"x": self._resize(image) * 2 - 1})

    def encode(self, rgb):
        return self._resize(rgb) * 2 - 1

    def decode(self, x0):
        return (x0 + 1) / 2

    def predict_noise(self, x_t, t, cond, rel):
        n = x_t.shape[0]
        c = cond.extras["x"].expand(n, -1, -1, -1) if cond is not None else torch.zeros_like(x_t)
        r = rel.view(n, 4, 1, 1).expand(n, 4, *x_t.shape[-2:]).to(x_t)
        return self.unet(torch.cat([x_t, c, r], 1), t).sample


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6, help="steps measured per mode (projected to the default)")
    ap.add_argument("--image", default=str(ROOT / "examples" / "duck.png"))
    ap.add_argument("--modes", default="ref,sds,scratch")
    ap.add_argument("--anchor-baseline", action="store_true",
                    help="also time each mode with w_anchor 0 (the anchor term's cost, side by side)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from lrm.pipeline import Pipeline
    from lrm.refine import RefineConfig, refine

    torch.manual_seed(0)
    pipe = Pipeline.from_pretrained()
    pre = pipe.preprocess(args.image)
    tri = pipe.triplane(pre.image)
    prior = UNetPrior()
    default = RefineConfig()
    # one prior call's cost
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        prior.predict_noise(x, torch.tensor([500]), None, torch.zeros(1, 4))
        t0 = time.perf_counter()
        for _ in range(5):
            prior.predict_noise(x, torch.tensor([500]), None, torch.zeros(1, 4))
        call_s = (time.perf_counter() - t0) / 5
    rows = []
    runs = [(m, default.w_anchor) for m in args.modes.split(",")]
    if args.anchor_baseline:
        runs = [r for m, w in runs for r in ((m, w), (m, 0.0))]
    for mode, w_anchor in runs:
        # the same schedule as the default run, compressed to --steps (half coarse, half fine)
        # Two runs, --steps and twice that: their difference is the per-step cost, the rest is what a refinement
        # pays once (set-up, first calls); the projection is once + default.steps x per step.
        timed = []
        for n in (args.steps, 2 * args.steps):
            cfg = replace(default, mode=mode, steps=n, save_every=0, w_anchor=w_anchor,
                          resolution_milestones=tuple(0.5 for _ in default.resolution_milestones))
            w0, c0 = time.perf_counter(), time.process_time()
            res = refine(tri, pipe, pre.image, prior if mode != "ref" else None, cfg, mask=pre.rgba[..., 3],
                         progress=False)
            timed.append((time.perf_counter() - w0, time.process_time() - c0, res.stats))
        (w1, c1, _), (w2, c2, s) = timed
        n = args.steps
        step_w, step_c = max(w2 - w1, 0.0) / n, max(c2 - c1, 0.0) / n
        once_w, once_c = max(w1 - n * step_w, 0.0), max(c1 - n * step_c, 0.0)
        label = mode if w_anchor == default.w_anchor else f"{mode} (w_anchor {w_anchor:g})"
        rows.append({"mode": label, "s_per_step_wall": step_w, "s_per_step_cpu": step_c,
                     "steps_per_s": 1.0 / step_w if step_w > 0 else float("inf"),
                     "renders_per_step": s["renders"] / (2 * n), "prior_calls_per_step": s["prior_calls"] / (2 * n),
                     "once_wall_s": once_w, "projected_wall_s": once_w + step_w * default.steps,
                     "projected_cpu_s": once_c + step_c * default.steps})
    print(f"default RefineConfig: steps {default.steps}, resolutions {default.resolutions} "
          f"(milestones {default.resolution_milestones}), samples {default.n_samples}+{default.n_importance}, "
          f"views {default.n_views}, w_anchor {default.w_anchor:g}, guidance scale {default.sds.guidance_scale}; prior {prior.params / 1e6:.2f} M "
          f"params at 64², {call_s:.3f} s per call (batch 1); threads {torch.get_num_threads()}")
    print("| mode | s/step wall | s/step CPU | steps/s | renders/step | prior calls/step | once per run wall s | "
          f"projected {default.steps} steps wall s | CPU s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['s_per_step_wall']:.2f} | {r['s_per_step_cpu']:.2f} | {r['steps_per_s']:.2f} | "
              f"{r['renders_per_step']:.0f} | {r['prior_calls_per_step']:.0f} | {r['once_wall_s']:.1f} | "
              f"{r['projected_wall_s']:.1f} | {r['projected_cpu_s']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "prior_call_s": call_s, "prior_params": prior.params}))


if __name__ == "__main__":
    main()
