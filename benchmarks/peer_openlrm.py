#!/usr/bin/env python
"""OpenLRM's own code, one training step at reference configuration (a), on CPU with random weights.

    python benchmarks/peer_openlrm.py --openlrm DIR [--steps 5] [--warmup 2] [--threads 2]

DIR is a checkout of OpenLRM (https://github.com/3DTopia/OpenLRM, measured at 3108b69); its modules are imported
from there at run time, nothing of it lives in this repository. Prints one line ``RESULT {json}`` with the keys of
bench_train.py's measure_step that apply (s_per_step, forward_s, cpu_s_per_step, peak_rss_gb, params_m, config,
...); cpu_s_per_step is process CPU seconds (all threads), which a busy machine inflates far less than wall time. The
measurement runs in its own subprocess so its peak RSS is its own.

What is built (shared/reference-figures.md, configuration (a)), all with OpenLRM's classes:
- ``ModelLRM`` with OpenLRM's train-sample.yaml settings except the sizes of (a): encoder ``dinov2_vits14_reg``
  (ViT dim 384, patch 14, 4 register tokens, trainable), truncated to 6 blocks; transformer 512 x 6, 8 heads,
  MLP x4, camera-modulated norms (ModLN) with camera_embed_dim 1024 (train-sample.yaml's value; it reproduces the
  111 M parameters quoted for (b)); 3 x 32² plane tokens -> stride-2 transposed conv -> 3 x 32 x 64²;
  OSGDecoder 96 -> 64 -> 64 -> 64 -> 4; 96 samples per ray = 48 stratified + 48 importance.
- Random init, no download: OpenLRM's ``Dinov2Wrapper._build_dinov2`` always asks for pretrained weights, so it is
  replaced for this process by a call to the same hub function with ``pretrained=False``, whose model then keeps
  its first ``--vit-depth`` blocks (OpenLRM's ``vit_small`` fixes depth 12). The backbone keeps OpenLRM's hub
  defaults otherwise (518² position table interpolated to 224² in every forward, layer scale 1.0).
- A synthetic batch shaped as OpenLRM's ObjaverseDataset gives it (batch 1 object, 2 render views, 64x64 region,
  full resolution 64, anchors 0), cameras built with OpenLRM's datasets/cam_utils.py (loaded by file path: the
  datasets package needs megfile).
- The step of LRMTrainer.train_epoch: forward, PixelLoss (MSE) x 1.0 + TVLoss(planes) x 5e-4 (no LPIPS),
  backward, clip_grad_norm 1.0, AdamW(lr 4e-4, betas 0.9/0.95, weight decay 0.05 except biases and LayerNorms),
  zero_grad. torch.compile is disabled as train-sample.yaml does (``compile.disable: true``; ``--compile`` keeps
  OpenLRM's decorators live). xFormers is disabled (its kernels are CUDA-only).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODEL_FILE = Path("openlrm") / "models" / "modeling_lrm.py"

# Configuration (a) in OpenLRM's ModelLRM arguments (train-sample.yaml with the sizes of (a))
MODEL_A = dict(camera_embed_dim=1024, rendering_samples_per_ray=96, transformer_dim=512, transformer_layers=6,
               transformer_heads=8, triplane_low_res=32, triplane_high_res=64, triplane_dim=32, encoder_freeze=False,
               encoder_type="dinov2", encoder_model_name="dinov2_vits14_reg", encoder_feat_dim=384)
TRAIN_A = dict(source_image_res=224, render_views=2, render_region=64, pixel_weight=1.0, tv_weight=5e-4,
               lr=4e-4, weight_decay=0.05, betas=(0.9, 0.95), clip_grad_norm=1.0)


class PeerError(RuntimeError):
    """OpenLRM could not be found, imported or run."""


def check_dir(openlrm_dir) -> Path:
    """The OpenLRM checkout as a Path; PeerError with a clear message when it does not look like one."""
    d = Path(openlrm_dir).expanduser()
    if not d.is_dir():
        raise PeerError(f"OpenLRM checkout not found: {d} is not a directory")
    if not (d / MODEL_FILE).is_file():
        raise PeerError(f"{d} is not an OpenLRM checkout (no {MODEL_FILE})")
    return d.resolve()


def _load_file_module(name: str, path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def import_openlrm(openlrm_dir: Path, vit_depth: int, compile_: bool = False):
    """Import OpenLRM's pieces from the checkout: (ModelLRM, PixelLoss, TVLoss, cam_utils module). Patches its
    DINOv2 loader in this process to random init and ``vit_depth`` blocks."""
    os.environ.setdefault("XFORMERS_DISABLED", "1")  # its DINOv2 layers would take CUDA-only xFormers kernels
    sys.path.insert(0, str(openlrm_dir))
    import torch
    from accelerate import PartialState

    PartialState(cpu=True)  # OpenLRM logs through accelerate's logger, which needs a state (its runner has one)
    from openlrm.utils.compile import configure_dynamo

    configure_dynamo({"disable": not compile_, "suppress_errors": True})  # train-sample.yaml: compile.disable
    from openlrm.losses import PixelLoss, TVLoss
    from openlrm.models import ModelLRM
    from openlrm.models.encoders.dinov2_wrapper import Dinov2Wrapper

    original = Dinov2Wrapper._build_dinov2

    def build_random(model_name, modulation_dim=None, pretrained=True):
        model = original(model_name, modulation_dim=modulation_dim, pretrained=False)
        if model.chunked_blocks:
            raise PeerError("unexpected chunked DINOv2 blocks; cannot truncate")
        model.blocks = torch.nn.ModuleList(list(model.blocks)[:vit_depth])
        model.n_blocks = vit_depth
        return model

    Dinov2Wrapper._build_dinov2 = staticmethod(build_random)
    cam_utils = _load_file_module("openlrm_cam_utils", openlrm_dir / "openlrm" / "datasets" / "cam_utils.py")
    return ModelLRM, PixelLoss, TVLoss, cam_utils


def synthetic_batch(cam_utils, n_views: int, source_res: int, region: int, seed: int = 0) -> dict:
    """One object as OpenLRM's ObjaverseDataset returns it (with the batch dimension the loader adds): cameras on a
    circle at distance 2 looking at the origin, normalised the dataset's way, random images."""
    import math

    import torch

    g = torch.Generator().manual_seed(seed)
    az = torch.arange(n_views, dtype=torch.float32) * (2 * math.pi / max(n_views, 3))
    pos = torch.stack([2.0 * torch.cos(az) * math.cos(0.3), 2.0 * torch.sin(az) * math.cos(0.3),
                       torch.full_like(az, 2.0 * math.sin(0.3))], -1)
    poses = cam_utils.center_looking_at_camera_pose(pos)  # (M, 3, 4)
    poses = cam_utils.camera_normalization_objaverse("auto", poses)
    intr = cam_utils.create_intrinsics(f=0.75, c=0.5)  # (3, 2)
    return {
        "source_camera": cam_utils.build_camera_principle(poses[:1], intr[None]),  # (1, 16)
        "render_camera": cam_utils.build_camera_standard(poses, intr.repeat(n_views, 1, 1))[None],  # (1, M, 25)
        "source_image": torch.rand(1, 3, source_res, source_res, generator=g),
        "render_image": torch.rand(1, n_views, 3, region, region, generator=g),
        "render_anchors": torch.zeros(1, n_views, 2, dtype=torch.long),
        "render_full_resolutions": torch.full((1, n_views, 1), float(region)),
        "render_bg_colors": torch.ones(1, n_views, 1),
    }


def optimizer_groups(model):
    """LRMTrainer._build_optimizer's split: LayerNorm parameters and biases without weight decay."""
    import torch

    no_decay = []
    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm):
            no_decay.extend(m.parameters())
        elif getattr(m, "bias", None) is not None:
            no_decay.append(m.bias)
    ids = {id(p) for p in no_decay}
    decay = [p for p in model.parameters() if id(p) not in ids and p.requires_grad]
    return decay, [p for p in no_decay if p.requires_grad]


def measure(openlrm_dir: Path, steps: int, warmup: int, threads: int, vit_depth: int = 6,
            camera_embed_dim: int = 1024, compile_: bool = False) -> dict:
    """In this process: median seconds of OpenLRM's training step at (a), its forward (model + losses), peak RSS."""
    import resource

    import torch

    torch.set_num_threads(threads)
    ModelLRM, PixelLoss, TVLoss, cam_utils = import_openlrm(openlrm_dir, vit_depth, compile_)
    torch.manual_seed(0)
    model = ModelLRM(**{**MODEL_A, "camera_embed_dim": camera_embed_dim})
    model.train()
    t = TRAIN_A
    decay, no_decay = optimizer_groups(model)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": t["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=t["lr"], betas=t["betas"])
    pixel_loss, tv_loss = PixelLoss(), TVLoss()
    data = synthetic_batch(cam_utils, t["render_views"], t["source_image_res"], t["render_region"])
    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # KiB on Linux
    rss_before = rss()

    def one():
        t0, c0 = time.perf_counter(), time.process_time()
        out = model(image=data["source_image"], source_camera=data["source_camera"],
                    render_cameras=data["render_camera"], render_anchors=data["render_anchors"],
                    render_resolutions=data["render_full_resolutions"], render_bg_colors=data["render_bg_colors"],
                    render_region_size=t["render_region"])
        loss = pixel_loss(out["images_rgb"], data["render_image"]) * t["pixel_weight"]
        loss = loss + tv_loss(out["planes"]) * t["tv_weight"]
        t1 = time.perf_counter()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t["clip_grad_norm"])
        opt.step()
        opt.zero_grad()
        if not torch.isfinite(loss):
            raise PeerError(f"OpenLRM step gave a non-finite loss ({loss.item()})")
        return (t1 - t0, time.perf_counter() - t0, time.process_time() - c0, tuple(out["images_rgb"].shape),
                tuple(out["planes"].shape))

    times, fwd, cpu = [], [], []
    for i in range(steps + warmup):
        f, s, c, rgb_shape, plane_shape = one()
        if i >= warmup:
            times.append(s)
            fwd.append(f)
            cpu.append(c)
    enc = model.encoder.model
    return {"config": "small", "variant": "openlrm (peer)", "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "s_per_step": statistics.median(times), "forward_s": statistics.median(fwd),
            "cpu_s_per_step": statistics.median(cpu),
            "peak_rss_gb": rss(), "rss_after_build_gb": rss_before, "threads": threads, "steps": steps,
            "warmup": warmup, "mixed_precision": "no", "extra": [], "compile": compile_,
            "built": {"vit_depth": len(enc.blocks), "vit_dim": enc.embed_dim, "register_tokens": enc.num_register_tokens,
                      "patch": enc.patch_size, "camera_embed_dim": camera_embed_dim,
                      "transformer_layers": len(model.transformer.layers), "images_rgb": list(rgb_shape),
                      "planes": list(plane_shape), "samples_per_ray": MODEL_A["rendering_samples_per_ray"]},
            "openlrm_dir": str(openlrm_dir)}


def run_peer(openlrm_dir, steps: int = 5, warmup: int = 2, threads: int = 2, extra_args=()) -> dict:
    """Run the measurement in a fresh subprocess (clean peak RSS); its result dict, or PeerError with the child's
    error line."""
    d = check_dir(openlrm_dir)
    r = subprocess.run([sys.executable, __file__, "--child", "--openlrm", str(d), "--steps", str(steps),
                        "--warmup", str(warmup), "--threads", str(threads), *extra_args],
                       capture_output=True, text=True)
    line = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
    if r.returncode or not line:
        err = [l for l in (r.stdout + r.stderr).splitlines() if l.startswith("error: ")]
        raise PeerError(err[-1][7:] if err else f"OpenLRM run failed (exit {r.returncode}): {r.stderr[-1500:]}")
    return json.loads(line[-1][7:])


def check_import(openlrm_dir) -> None:
    """Import OpenLRM's modules in a subprocess (a few seconds); PeerError when the directory or the import fails."""
    d = check_dir(openlrm_dir)
    r = subprocess.run([sys.executable, __file__, "--check", "--openlrm", str(d)], capture_output=True, text=True)
    if r.returncode:
        err = [l for l in (r.stdout + r.stderr).splitlines() if l.startswith("error: ")]
        raise PeerError(err[-1][7:] if err else f"importing OpenLRM from {d} failed: {r.stderr[-1500:]}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--openlrm", required=True, metavar="DIR", help="a checkout of OpenLRM (imported from there)")
    p.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--vit-depth", type=int, default=6, help="DINOv2 blocks kept (configuration (a): 6)")
    p.add_argument("--camera-embed-dim", type=int, default=1024,
                   help="OpenLRM's camera_embed_dim (train-sample.yaml: 1024)")
    p.add_argument("--compile", action="store_true", help="keep OpenLRM's torch.compile decorators live")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.steps < 1 or a.warmup < 0 or a.threads < 1 or a.vit_depth < 1:
        p.error("--steps and --threads must be >= 1, --warmup >= 0, --vit-depth >= 1")
    try:
        d = check_dir(a.openlrm)
        if a.check:
            import_openlrm(d, a.vit_depth)
            return 0
        if a.child:
            print("RESULT " + json.dumps(measure(d, a.steps, a.warmup, a.threads, a.vit_depth, a.camera_embed_dim,
                                                 a.compile)), flush=True)
            return 0
        extra = ["--vit-depth", str(a.vit_depth), "--camera-embed-dim", str(a.camera_embed_dim),
                 *(["--compile"] if a.compile else [])]
        print("RESULT " + json.dumps(run_peer(d, a.steps, a.warmup, a.threads, extra)))
        return 0
    except PeerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"error: importing OpenLRM from {a.openlrm} failed: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
