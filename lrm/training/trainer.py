"""The LRM trainer (``train.py`` is a thin wrapper around :func:`main`).

One optimiser step = ``train.grad_accum`` micro-batches of ``train.batch_size`` objects per process. Per
object: one input view -> triplane; ``data.num_views_target`` supervision views, each supervised on
``train.render.rays_per_view`` random pixels or one random ``train.render.patch_size``² patch.

Runs unchanged as ``python train.py``, under ``torchrun``/``accelerate launch`` (DDP, any number of
processes) and under ``accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml`` (GPU).
Randomness of a step (data, pixel choice, sample jitter) is a function of (seed, step, rank), and the
checkpoint holds model, optimiser, scheduler, RNG states and the data position, so a resumed run gives
bit-identical weights to an uninterrupted one (synthetic data; shards re-seed the stream on resume).
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from omegaconf import DictConfig, open_dict

from .. import cameras as cam
from ..config import load_config, save_config
from . import checkpoint as ckpt
from ..data.batch import check_batch
from .data import make_source, resolve_source
from .defaults import apply_defaults
from ..checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, is_checkpoint_dir as is_model_folder, \
    read_checkpoint, save_state_dict
from ..config import ConfigError
from ..outdir import OutputExistsError, check_target
from .losses import compute_losses, load_lpips, mask_iou, psnr
from .optim import make_optimizer, make_scheduler

log = logging.getLogger("lrm.train")
EXPORT_NAMES = {WEIGHTS_NAME, CONFIG_NAME}  # what run_dir/model held before it had an ownership marker


# ----------------------------------------------------------------------------------------------- config / CLI
def parse_args(argv: Optional[Sequence[str]] = None):
    p = argparse.ArgumentParser(description="Train the LRM (see docs/training.md).")
    p.add_argument("--config", default="tiny", help="config file or name in configs/ (default: tiny)")
    p.add_argument("--output-dir", default=None, help="run folder (default: <train.output_root>/<run name>)")
    p.add_argument("--max-steps", type=int, default=None, help="optimiser steps (overrides train.max_steps)")
    p.add_argument("--resume", default=None,
                   help="'latest' (newest complete checkpoint of the run), a checkpoints/step_N folder, a run "
                        "folder, or an exported model folder (model.safetensors + config.yaml: weights only)")
    p.add_argument("--init-from", default=None,
                   help="exported model folder (model.safetensors + config.yaml) or run folder: start from its "
                        "weights with a fresh optimiser, schedule and step count (train.init_from)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. data.path=/shards train.lr=1e-4")
    return p.parse_args(argv)


def build_config(config: Optional[str], overrides: Sequence[str] = (), max_steps: Optional[int] = None) -> DictConfig:
    cfg = apply_defaults(load_config(config, overrides))
    if max_steps is not None:
        cfg.train.max_steps = int(max_steps)
    return cfg


def launcher_requested_processes(pid: Optional[int] = None) -> Optional[int]:
    """``--num_processes N`` of an ``accelerate launch`` parent process (Linux /proc), else None."""
    try:
        args = Path(f"/proc/{pid or os.getppid()}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    if not any("accelerate" in a for a in args[:3]):
        return None
    for i, a in enumerate(args):
        if a.startswith("--num_processes="):
            return int(a.split("=", 1)[1])
        if a in ("--num_processes", "--num-processes") and i + 1 < len(args):
            return int(args[i + 1])
    return None


def check_world_size(num_processes: int, env=None, requested: Optional[int] = None) -> None:
    """Stop when the launcher started (or was asked for) a different number of processes than accelerate
    sees: N copies would each train alone (duplicated work), or one process would run where N were asked for
    (``accelerate launch --num_processes 2 --cpu`` does that)."""
    env = os.environ if env is None else env
    ws = env.get("WORLD_SIZE")
    if ws is not None and int(ws) != int(num_processes):
        raise RuntimeError(
            f"the launcher started WORLD_SIZE={ws} processes but accelerate sees num_processes={num_processes}: "
            "training would be duplicated, not distributed. On CPU launch with `torchrun --nproc_per_node N "
            "train.py` or `accelerate launch --multi_gpu --num_processes N train.py` (see docs/training.md).")
    if ws is None and requested is not None and int(requested) != int(num_processes):
        raise RuntimeError(
            f"accelerate launch was asked for --num_processes {requested} but started {num_processes} process(es) "
            "(`--cpu` with several processes needs an MPI host file and silently runs one). On CPU use "
            "`accelerate launch --multi_gpu --num_processes N train.py` or `torchrun --nproc_per_node N train.py`.")


def _mixed_precision(tcfg) -> Optional[str]:
    mp = tcfg.mixed_precision
    mp = "no" if mp is False or mp is None else str(mp)  # YAML 1.1 / dotted overrides read `no` as false
    if mp != "auto":
        return mp
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return None  # the launcher's config decides
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def make_accelerator(cfg):
    from accelerate import Accelerator

    kw = dict(gradient_accumulation_steps=int(cfg.train.grad_accum), step_scheduler_with_optimizer=False,
              mixed_precision=_mixed_precision(cfg.train))
    if not torch.cuda.is_available():
        kw["cpu"] = True  # needed for multi-process gloo on CPU (platform-notes.md)
    acc = Accelerator(**kw)
    ds = acc.state.deepspeed_plugin
    if ds is not None:  # fill what the launcher's DeepSpeed config leaves on "auto"
        from .deepspeed_config import fill_auto

        fill_auto(ds.deepspeed_config, cfg, acc.num_processes)
    return acc


# ----------------------------------------------------------------------------------------------- state
class TrainState:
    """Counters saved in every checkpoint (as JSON: lrm/training/checkpoint.py)."""

    def __init__(self):
        self.step = 0  # optimiser steps done (applied or skipped)
        self.position = 0  # micro-batches consumed from the data source (incl. unusable ones)
        self.skipped_steps = 0
        self.bad_batches = 0
        self.samples = 0
        self.cpu_s = 0.0  # CPU seconds spent on training steps so far (all runs of this lineage)

    def state_dict(self):
        return dict(vars(self))

    def load_state_dict(self, d):
        for k, v in d.items():
            setattr(self, k, v)


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and its live children (data-loader workers): the
    measure recipes are compared by on a shared machine, where wall time depends on the load."""
    try:
        import psutil

        me = psutil.Process()
        total = sum(me.cpu_times()[:2])
        for c in me.children(recursive=True):
            try:
                total += sum(c.cpu_times()[:2])
            except psutil.Error:
                pass
        return total
    except ImportError:  # pragma: no cover - psutil is a core dependency
        return time.process_time()


class StopFlag:
    """SIGTERM/SIGINT -> finish the current step, checkpoint, exit cleanly. A second SIGINT aborts."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def install(self):
        if sys.platform == "win32" or not _in_main_thread():
            return self
        for s in (signal.SIGTERM, signal.SIGINT):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("received %s: will checkpoint after this step and exit", signal.Signals(signum).name)

    def restore(self):
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}


def _in_main_thread():
    import threading

    return threading.current_thread() is threading.main_thread()


# ----------------------------------------------------------------------------------------------- rays
def sample_rays(batch, rcfg, generator: torch.Generator):
    """Pick supervised pixels per view. Returns rays_o, rays_d [B, K*N, 3], rgb [B, K*N, 3], mask [B, K*N],
    the patch side (0 when pixels are scattered) and depth [B, K*N] (None unless the batch has target_depth)."""
    rgb, mask = batch["target_rgb"], batch["target_mask"]
    b, k, h, w, _ = rgb.shape
    dev = rgb.device
    patch = int(rcfg.patch_size)
    n_rays = int(rcfg.rays_per_view)
    if patch > 0:
        patch = min(patch, h, w)
        oy = torch.randint(0, h - patch + 1, (b, k, 1, 1), generator=generator, device=dev)
        ox = torch.randint(0, w - patch + 1, (b, k, 1, 1), generator=generator, device=dev)
        gy, gx = torch.meshgrid(torch.arange(patch, device=dev), torch.arange(patch, device=dev), indexing="ij")
        rows = (oy + gy).reshape(b, k, -1)
        cols = (ox + gx).reshape(b, k, -1)
    elif 0 < n_rays < h * w:
        fg = float(rcfg.get("fg_fraction", 0.0))
        if fg > 0:  # mixture: fg of the rays from foreground pixels, the rest uniform over the image
            m = (mask.reshape(b * k, h * w) > 0.5).float()
            p = (1 - fg) / (h * w) + fg * m / m.sum(-1, keepdim=True).clamp_min(1.0)
            p = torch.where(m.sum(-1, keepdim=True) > 0, p, torch.full_like(p, 1.0 / (h * w)))
            flat = torch.multinomial(p, n_rays, replacement=True, generator=generator).reshape(b, k, n_rays)
        else:
            flat = torch.randint(0, h * w, (b, k, n_rays), generator=generator, device=dev)
        rows, cols = flat // w, flat % w
    else:
        rows = torch.arange(h, device=dev).repeat_interleave(w).expand(b, k, -1)
        cols = torch.arange(w, device=dev).repeat(h).expand(b, k, -1)
    uv = torch.stack([cols, rows], -1).to(batch["target_c2w"].dtype) + 0.5
    rays_o, rays_d = cam.get_rays(batch["target_c2w"], batch["target_intrinsics"], h, w, uv=uv)
    idx = (rows * w + cols).reshape(b, k, -1)
    t_rgb = rgb.reshape(b, k, h * w, 3).gather(2, idx[..., None].expand(-1, -1, -1, 3))
    t_mask = mask.reshape(b, k, h * w).gather(2, idx)
    n = idx.shape[-1]
    t_depth = None
    if "target_depth" in batch:
        t_depth = batch["target_depth"].reshape(b, k, h * w).gather(2, idx).reshape(b, k * n)
    return (rays_o.reshape(b, k * n, 3), rays_d.reshape(b, k * n, 3), t_rgb.reshape(b, k * n, 3),
            t_mask.reshape(b, k * n), patch, t_depth)


class TrainStep(torch.nn.Module):
    """The LRM plus its ray rendering as ONE forward, so DDP / DeepSpeed (ZeRO-3 included) see every
    parameter use inside the wrapped module's forward. State-dict keys get the prefix ``lrm.``.

    ``checkpoint_rays > 0`` renders the rays in chunks of that many per image under activation checkpointing:
    each chunk's samples are re-drawn from a per-chunk seed and its decoder activations recomputed in the
    backward pass, so render memory is one chunk's instead of all rays' (one extra decoder forward)."""

    def __init__(self, lrm: torch.nn.Module, checkpoint_rays: int = 0):
        super().__init__()
        self.lrm = lrm
        self.checkpoint_rays = int(checkpoint_rays)
        self.use_checkpoint = True  # False: same chunks and seeds without recomputation (tests)

    def _chunk(self, tri, rays_o, rays_d, background, seed):
        g = None
        if seed is not None:
            g = torch.Generator(device=rays_o.device)
            g.manual_seed(seed)
        return self.lrm.render_rays(tri, rays_o, rays_d, randomize=True, background=background, generator=g)

    def forward(self, images, cameras, rays_o, rays_d, background, generator=None, points=None):
        """-> (render outputs, triplanes); with ``points`` [B, P, 3] the outputs also hold the field there:
        ``point_density`` [B, P] and ``point_rgb`` [B, P, 3] (3D supervision, no ray marching)."""
        tri = self.lrm(images, cameras)
        out = self._render(tri, rays_o, rays_d, background, generator)
        if points is not None and points.shape[1] > 0:
            q = self.lrm.query(tri, points)
            out = dict(out, point_density=q["density"].reshape(points.shape[:2]), point_rgb=q["rgb"])
        return out, tri

    def _render(self, tri, rays_o, rays_d, background, generator):
        c = self.checkpoint_rays
        if c <= 0 or c >= rays_o.shape[1]:
            return self.lrm.render_rays(tri, rays_o, rays_d, randomize=True, background=background,
                                        generator=generator)
        from torch.utils.checkpoint import checkpoint

        outs = []
        for i in range(0, rays_o.shape[1], c):
            seed = None if generator is None else int(torch.randint(0, 2 ** 62, (1,), generator=generator,
                                                                    device=generator.device))
            args = (tri, rays_o[:, i:i + c], rays_d[:, i:i + c], background, seed)
            if self.use_checkpoint and torch.is_grad_enabled():
                outs.append(checkpoint(self._chunk, *args, use_reentrant=False))
            else:
                outs.append(self._chunk(*args))
        return {k: torch.cat([o[k] for o in outs], 1) for k in outs[0]}


def step_losses(step_module, batch: Dict, tcfg, generator: torch.Generator, lpips_model=None) -> Dict:
    """Loss terms of one micro-batch through a (possibly DDP/DeepSpeed-wrapped) :class:`TrainStep`."""
    rays_o, rays_d, t_rgb, t_mask, patch, t_depth = sample_rays(batch, tcfg.render, generator)
    parts = [batch[k] for k in ("points", "surface_points") if k in batch]
    points = torch.cat(parts, 1) if parts else None
    out, tri = step_module(batch["input_images"], batch["input_cameras"], rays_o, rays_d,
                           batch["background"][:, None, :], generator, points)
    targets = {"depth": t_depth}
    if points is not None:
        n = batch["points"].shape[1] if "points" in batch else 0
        targets.update(occupancy=batch.get("occupancy"), surface_rgb=batch.get("surface_rgb"),
                       n_occupancy=n, point_step=float(tcfg.points.step))
    return compute_losses(out, t_rgb, t_mask, tcfg.loss, triplanes=tri, lpips_model=lpips_model, patch=patch,
                          targets=targets)


def _to_device(batch: Dict, device) -> Dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _step_generator(seed: int, step: int, micro: int, rank: int, device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed((int(seed) * 1_000_003 + step * 1009 + micro * 101 + rank * 7 + 12345) % (1 << 62))
    return g


# ----------------------------------------------------------------------------------------------- validation
@torch.no_grad()
def validate(model, batch: Dict, resolution: int, n_views: int) -> Dict[str, torch.Tensor]:
    """Full-image renders of the first ``n_views`` supervision views of a fixed batch (no jitter), scored against
    the targets resized to ``resolution`` (returned too, with the triplanes)."""
    was = model.training
    model.eval()
    try:
        c2w = batch["target_c2w"][:, :n_views]
        intr = batch["target_intrinsics"][:, :n_views]
        tri = model(batch["input_images"], batch["input_cameras"])
        out = model.render(tri, c2w, intr, resolution=resolution, randomize=False,
                           background=batch["background"][:, None, :])
    finally:
        model.train(was)
    tgt = batch["target_rgb"][:, :n_views]
    msk = batch["target_mask"][:, :n_views]
    if tgt.shape[2] != resolution:  # compare at the rendered resolution
        b, v, h, w, _ = tgt.shape
        tgt = torch.nn.functional.interpolate(tgt.reshape(b * v, h, w, 3).permute(0, 3, 1, 2), size=resolution,
                                              mode="area").permute(0, 2, 3, 1).reshape(b, v, resolution, resolution, 3)
        msk = torch.nn.functional.interpolate(msk.reshape(b * v, 1, h, w), size=resolution,
                                              mode="area").reshape(b, v, resolution, resolution)
    return {"psnr": psnr(out["rgb"].clamp(0, 1), tgt), "mask_iou": mask_iou(out["opacity"], msk),
            "pred": out["rgb"].clamp(0, 1), "target": tgt, "target_mask": msk, "triplane": tri}


def fixed_val_batch(cfg) -> Dict:
    """The validation batch logged throughout a run: the first batch of the val split (white background)."""
    n = int(cfg.train.val_batch_size)
    if resolve_source(cfg) == "synthetic":
        n = min(n, max(1, int(cfg.data.synthetic.num_val_objects)))
    try:
        return make_source(cfg, "val", 0, 1, batch_size=n).get(0)
    except FileNotFoundError as e:  # no val shards (tiny data sets): use training objects, say so
        log.warning("no validation split (%s); validating on the first training batch", e)
        return make_source(cfg, "train", 0, 1, batch_size=n).get(0)


def image_grid(batch: Dict, val: Dict) -> torch.Tensor:
    """[3, H, W] grid: per object, row 1 input views + targets, row 2 blank + predictions."""
    pred, tgt = val["pred"].float().cpu(), val["target"].float().cpu()
    b, v, r = pred.shape[:3]
    inp = batch["input_images"].float().cpu()
    n_in = inp.shape[1]
    inp = torch.nn.functional.interpolate(inp.flatten(0, 1), size=r, mode="area").unflatten(0, (b, n_in))
    rows = []
    for i in range(b):
        rows.append(torch.cat(list(inp[i].permute(0, 2, 3, 1)) + list(tgt[i]), 1))
        rows.append(torch.cat([torch.ones(r, n_in * r, 3)] + list(pred[i]), 1))
    return torch.cat(rows, 0).permute(2, 0, 1).clamp(0, 1)


# ----------------------------------------------------------------------------------------------- main loop
def resolve_resume(resume: Optional[str], run_dir: Path):
    """-> (checkpoint folder or None, export folder for init weights or None). Checkpoints are verified: a
    damaged one named explicitly raises CheckpointError; ``latest`` falls back to the newest intact one."""
    if not resume:
        return None, None
    if resume == "latest":
        return ckpt.usable_latest(run_dir / "checkpoints"), None
    p = Path(resume)
    if ckpt.is_checkpoint_dir(p):
        return ckpt.verify_checkpoint(p), None
    if is_model_folder(p):
        return None, p
    if (p / "checkpoints").is_dir():
        found = ckpt.usable_latest(p / "checkpoints")
        if found is None:
            raise FileNotFoundError(f"--resume {resume}: no complete checkpoint under {p / 'checkpoints'}")
        return found, None
    raise FileNotFoundError(f"--resume {resume}: not a checkpoint folder (with {ckpt.MARKER}), a run folder or an "
                            "exported model folder (model.safetensors + config.yaml)")


def train(cfg: DictConfig, output_dir: Optional[str] = None, resume: Optional[str] = None) -> Dict:
    """Train; returns ``{"model": unwrapped model, "step", "run_dir", "interrupted", "history"}``."""
    from accelerate.utils import set_seed

    from ..models import build_model

    tcfg = cfg.train
    accelerator = make_accelerator(cfg)
    check_world_size(accelerator.num_processes, requested=launcher_requested_processes())
    is_main = accelerator.is_main_process
    run_dir = Path(output_dir or Path(tcfg.output_root) / (tcfg.run_name or cfg.name))
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_root = run_dir / "checkpoints"

    resume_dir, init_dir = resolve_resume(resume, run_dir)
    if is_main:
        check_target(run_dir / "model", legacy_names=EXPORT_NAMES)  # refuse now, not after training
        ckpt.start_lineage(ckpt_root, resume_dir)
    accelerator.wait_for_everyone()
    if init_dir is None and tcfg.init_from:
        init_dir = Path(tcfg.init_from)
        if not is_model_folder(init_dir) and is_model_folder(init_dir / "model"):
            init_dir = init_dir / "model"  # a run folder: its exported model
        if not is_model_folder(init_dir):
            raise FileNotFoundError(f"--init-from {tcfg.init_from}: not an exported model folder "
                                    "(model.safetensors + config.yaml) or a run folder with model/")

    if int(tcfg.threads) > 0 and accelerator.device.type == "cpu":
        torch.set_num_threads(int(tcfg.threads))
    set_seed(int(cfg.seed))
    model = build_model(cfg)
    if init_dir is not None and resume_dir is None:
        _, sd = read_checkpoint(init_dir)
        model.load_state_dict(sd, strict=True)
        log.info("initialised weights from %s", init_dir)
    model.train()
    optimizer = make_optimizer(model, tcfg)
    scheduler = make_scheduler(optimizer, tcfg)
    model, optimizer, scheduler = accelerator.prepare(
        TrainStep(model, int(tcfg.render.checkpoint_rays)), optimizer, scheduler)
    state = TrainState()
    if resume_dir is not None:
        state.load_state_dict(ckpt.load_checkpoint(accelerator, resume_dir))
        log.info("resumed from %s at step %d", resume_dir, state.step)
    elif resume == "latest" and is_main:
        log.info("--resume latest: no checkpoint in %s, starting from scratch", ckpt_root)

    raw = accelerator.unwrap_model(model).lrm
    device = accelerator.device
    rank, world = accelerator.process_index, accelerator.num_processes
    with open_dict(cfg):
        cfg.data.source = resolve_source(cfg)  # "auto" decided once, recorded in the run's config
    if is_main:
        save_config(cfg, run_dir / "config.yaml")
    source = make_source(cfg, "train", rank, world)
    source.start(state.position)
    lpips_model = load_lpips(tcfg.loss.lpips_path) if float(tcfg.loss.lpips) > 0 else None
    if lpips_model is not None:
        lpips_model.to(device)
    val_res = int(tcfg.val_resolution or cfg.data.image_size)
    val_batch = None
    if int(tcfg.val_every) > 0 or int(tcfg.image_every) > 0:
        val_batch = _to_device(fixed_val_batch(cfg), device)

    writer = None
    if is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"))
    stop = StopFlag().install()
    max_steps = int(tcfg.max_steps)
    accum = int(tcfg.grad_accum)
    bs = int(tcfg.batch_size)
    history: List[Dict] = []
    from tqdm.auto import tqdm

    bar = tqdm(total=max_steps, initial=state.step, disable=not (is_main and tcfg.progress), dynamic_ncols=True,
               desc="train")
    nonfinite_streak = 0
    last_saved = state.step if resume_dir is not None else -1
    interrupted = False
    window = {"t0": time.time(), "n": 0, "terms": {}}
    cpu_mark = cpu_seconds()

    def next_batch():
        bad_run = 0
        while True:
            pos = state.position
            state.position += 1
            try:
                batch = source.get(pos)
                why = check_batch(batch)
            except Exception as e:  # a corrupt sample / shard never stops training
                why = f"{type(e).__name__}: {e}"
            if why is None:
                return _to_device(batch, device)
            state.bad_batches += 1
            bad_run += 1
            log.warning("rank %d: skipping unusable batch at position %d (%s)", rank, pos, why)
            if bad_run >= int(tcfg.max_bad_batches):
                raise RuntimeError(f"{bad_run} unusable batches in a row; last: {why}")

    def do_checkpoint(step):
        nonlocal last_saved
        if last_saved == step:
            return
        ckpt.save_checkpoint(accelerator, ckpt_root, step, keep_last=int(tcfg.keep_last),
                             trainer_state=state.state_dict())
        last_saved = step

    try:
        while state.step < max_steps:
            step = state.step
            bad = False
            terms_acc: Dict[str, float] = {}
            for micro in range(accum):
                batch = next_batch()
                gen = _step_generator(cfg.seed, step, micro, rank, device)
                with accelerator.accumulate(model):
                    with accelerator.autocast():
                        terms = step_losses(model, batch, tcfg, gen, lpips_model)
                    loss = terms["total"]
                    finite = accelerator.gather(torch.isfinite(loss.detach()).reshape(1).float()).min() > 0
                    if finite and not bad:
                        accelerator.backward(loss)
                    else:
                        bad = True
                for k, v in terms.items():
                    terms_acc[k] = terms_acc.get(k, 0.0) + float(v.detach()) / accum
            grad_norm = None
            if bad:
                reason = "non-finite loss"
            else:
                clip = float(tcfg.grad_clip) if float(tcfg.grad_clip) > 0 else float("inf")
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), clip)
                if grad_norm is None and hasattr(model, "get_global_grad_norm"):  # DeepSpeed clips itself
                    grad_norm = model.get_global_grad_norm()
                grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
                reason = "non-finite gradient norm" if not math.isfinite(grad_norm) and not \
                    accelerator.state.deepspeed_plugin else None
            if reason is None:
                optimizer.step()
                scheduler.step()
                nonfinite_streak = 0
            else:
                state.skipped_steps += 1
                nonfinite_streak += 1
                log.warning("step %d skipped: %s (%d in a row)", step, reason, nonfinite_streak)
                if writer is not None:
                    writer.add_scalar("train/skipped_steps", state.skipped_steps, step)
                if nonfinite_streak >= int(tcfg.max_nonfinite):
                    raise FloatingPointError(
                        f"aborting: {nonfinite_streak} training steps in a row had a {reason} (step {step}). "
                        "Lower train.lr, raise train.warmup_steps or check the data; resume from the last "
                        "checkpoint with --resume latest.")
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.samples += bs * accum * world
            now_cpu = cpu_seconds()
            state.cpu_s += now_cpu - cpu_mark
            cpu_mark = now_cpu
            bar.update(1)

            # ---- logging
            window["n"] += 1
            for k, v in terms_acc.items():
                window["terms"][k] = window["terms"].get(k, 0.0) + v
            rec = {"step": state.step, "loss": terms_acc.get("total", float("nan")), "grad_norm": grad_norm,
                   "lr": scheduler.get_last_lr()[0], "skipped": reason is not None, "time": time.time()}
            history.append(rec)
            if is_main and (state.step % max(1, int(tcfg.log_every)) == 0 or state.step == max_steps):
                dt = max(1e-9, time.time() - window["t0"])
                sps = window["n"] * bs * accum * world / dt
                for k, v in window["terms"].items():
                    writer.add_scalar(f"loss/{k}", v / window["n"], state.step)
                writer.add_scalar("train/lr", rec["lr"], state.step)
                if grad_norm is not None:
                    writer.add_scalar("train/grad_norm", grad_norm, state.step)
                writer.add_scalar("train/samples_per_s", sps, state.step)
                writer.add_scalar("train/s_per_step", dt / window["n"], state.step)
                writer.add_scalar("train/cpu_minutes", state.cpu_s / 60.0, state.step)
                writer.add_scalar("train/samples", state.samples, state.step)
                bar.set_postfix(loss=f"{window['terms'].get('total', 0) / window['n']:.4f}",
                                sps=f"{sps:.2f}")
                window = {"t0": time.time(), "n": 0, "terms": {}}
            # ---- validation (all ranks run it: ZeRO-3 needs every rank in the forward; only main logs)
            ve, ie = int(tcfg.val_every), int(tcfg.image_every)
            want_val = val_batch is not None and ((ve > 0 and state.step % ve == 0) or state.step == max_steps)
            want_img = val_batch is not None and ie > 0 and (state.step % ie == 0 or state.step == max_steps)
            if want_val or want_img:
                t_val = time.time()
                v = validate(raw, val_batch, val_res, int(tcfg.val_views))
                rec["val_psnr"], rec["val_mask_iou"] = float(v["psnr"]), float(v["mask_iou"])
                if is_main:
                    writer.add_scalar("val/psnr", rec["val_psnr"], state.step)
                    writer.add_scalar("val/mask_iou", rec["val_mask_iou"], state.step)
                    if want_img:
                        writer.add_image("val/input_target_prediction", image_grid(val_batch, v), state.step)
                    writer.flush()
                window["t0"] += time.time() - t_val  # speed figures exclude validation
                cpu_mark = cpu_seconds()  # and so does the CPU budget
            # ---- checkpoints and signals (the stop decision is collective)
            stop_now = accelerator.gather(torch.tensor([1.0 if stop.signum else 0.0], device=device)).max() > 0
            if int(tcfg.ckpt_every) > 0 and state.step % int(tcfg.ckpt_every) == 0:
                do_checkpoint(state.step)
            if stop_now:
                interrupted = True
                break
            budget = float(tcfg.max_cpu_minutes)
            if budget > 0 and state.cpu_s >= budget * 60.0:
                log.info("CPU budget of %.1f min reached at step %d", budget, state.step)
                break
        do_checkpoint(state.step)
        export_dir = run_dir / "model"
        sd = accelerator.get_state_dict(model)  # collective (gathers ZeRO-3 shards)
        if is_main:
            save_state_dict({k[len("lrm."):]: v for k, v in sd.items()}, cfg, export_dir)
            if interrupted:
                log.warning("stopped by signal at step %d; checkpoint %s. Continue with --resume latest",
                            state.step, ckpt_root / f"step_{state.step}")
        accelerator.wait_for_everyone()
    finally:
        stop.restore()
        bar.close()
        if writer is not None:
            writer.close()
    return {"model": raw, "step": state.step, "run_dir": run_dir, "interrupted": interrupted, "history": history,
            "state": state.state_dict(), "accelerator": accelerator}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = build_config(args.config, args.overrides, args.max_steps)
        if args.init_from:
            with open_dict(cfg):
                cfg.train.init_from = args.init_from
        res = train(cfg, output_dir=args.output_dir, resume=args.resume)
    except (ConfigError, CheckpointError, OutputExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0 if res is not None else 1
