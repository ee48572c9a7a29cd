"""The training runner: what every kind of run shares (a :class:`~lrm.training.task.Task` supplies the rest).

``Runner(cfg).run()`` = named build steps, then one :meth:`Runner.train_step` per optimiser step followed by
logging, validation, checkpoints and the stop checks. One optimiser step = ``train.grad_accum`` micro-batches
of ``train.batch_size`` samples per process.

Runs unchanged as ``python train.py``, under ``torchrun``/``accelerate launch`` (DDP, any number of
processes) and under ``accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml`` (GPU).
Randomness of a step is a function of (seed, step, micro-batch, rank) (:func:`step_generator`), and the
checkpoint holds model, optimiser, scheduler, RNG states and the data position, so a resumed run gives
bit-identical weights to an uninterrupted one when the task's batch source is indexed by position.
"""
from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from omegaconf import DictConfig

from . import checkpoint as ckpt
from ..checkpoint import CONFIG_NAME, WEIGHTS_NAME, is_checkpoint_dir as is_model_folder, read_checkpoint
from ..config import save_config
from ..outdir import check_target
from .optim import make_optimizer, make_scheduler
from .task import Task

log = logging.getLogger("lrm.train")
EXPORT_NAMES = {WEIGHTS_NAME, CONFIG_NAME}  # what run_dir/model held before it had an ownership marker


# ----------------------------------------------------------------------------------------------- launcher
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
    mp = str(mp)
    if mp.lower() in ("false", "none", "no"):  # YAML 1.1 / dotted overrides read `no` as false ("False" in a str field)
        mp = "no"
    if mp != "auto":
        if mp == "bf16" and not torch.cuda.is_available():
            from ..precision import warn_if_emulated_bf16

            warn_if_emulated_bf16("cpu", "train.mixed_precision")
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


def to_device(batch: Dict, device) -> Dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def step_generator(seed: int, step: int, micro: int, rank: int, device) -> torch.Generator:
    """The generator of one micro-batch: a function of (seed, step, micro, rank) only (exact resume)."""
    g = torch.Generator(device=device)
    g.manual_seed((int(seed) * 1_000_003 + step * 1009 + micro * 101 + rank * 7 + 12345) % (1 << 62))
    return g


# ----------------------------------------------------------------------------------------------- resume
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


def resolve_init_from(init_from) -> Path:
    """``train.init_from``: an exported model folder, or a run folder (its ``model/``)."""
    init_dir = Path(init_from)
    if not is_model_folder(init_dir) and is_model_folder(init_dir / "model"):
        init_dir = init_dir / "model"  # a run folder: its exported model
    if not is_model_folder(init_dir):
        raise FileNotFoundError(f"--init-from {init_from}: not an exported model folder "
                                "(model.safetensors + config.yaml) or a run folder with model/")
    return init_dir


# ----------------------------------------------------------------------------------------------- runner
class Runner:
    """One training run of ``task`` (default: the one ``cfg.task`` names). ``run()`` returns
    ``{"model": bare model, "step", "run_dir", "interrupted", "history", "state", "accelerator"}``."""

    def __init__(self, cfg: DictConfig, task: Optional[Task] = None, output_dir: Optional[str] = None,
                 resume: Optional[str] = None):
        if task is None:
            from .tasks import make_task

            task = make_task(cfg)
        self.cfg, self.tcfg, self.task = cfg, cfg.train, task
        self.output_dir, self.resume = output_dir, resume
        self.state = TrainState()
        self.history: List[Dict] = []
        self.max_steps = int(self.tcfg.max_steps)
        self.accum = int(self.tcfg.grad_accum)
        self.interrupted = False
        self.writer = self.bar = self.stop = None
        self.nonfinite_streak = 0

    # ---- the run
    def run(self) -> Dict:
        self.build_accelerator()
        self.build_run_dir()
        self.build_model()
        self.build_optimizer()
        self.load_state()
        self.build_data()
        self.build_loss()
        self.build_validation()
        self.build_logging()
        try:
            while self.state.step < self.max_steps:
                rec, terms = self.train_step(self.state.step)
                self.log_step(rec, terms)
                self.maybe_validate(rec)
                if self.after_step():
                    break
            self.finish()
        finally:
            self.close()
        return self.result()

    # ---- build steps
    def build_accelerator(self) -> None:
        self.accelerator = acc = make_accelerator(self.cfg)
        check_world_size(acc.num_processes, requested=launcher_requested_processes())
        self.is_main, self.device = acc.is_main_process, acc.device
        self.rank, self.world = acc.process_index, acc.num_processes

    def build_run_dir(self) -> None:
        """The run folder; the resume / warm-start sources; refuses a foreign ``model/`` before training."""
        tcfg = self.tcfg
        self.run_dir = Path(self.output_dir or Path(tcfg.output_root) / (tcfg.run_name or self.cfg.name))
        self.ckpt_root = self.run_dir / "checkpoints"
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.resume_dir, self.init_dir = resolve_resume(self.resume, self.run_dir)
        if self.is_main:
            check_target(self.run_dir / "model", legacy_names=EXPORT_NAMES)  # refuse now, not after training
            ckpt.start_lineage(self.ckpt_root, self.resume_dir)
        self.accelerator.wait_for_everyone()
        if self.init_dir is None and tcfg.init_from:
            self.init_dir = resolve_init_from(tcfg.init_from)
        if tcfg.get("init_keep", None) and self.init_dir is None:
            log.warning("train.init_keep is set without --init-from (or on resume): it has no effect")

    def build_model(self) -> None:
        from accelerate.utils import set_seed

        if int(self.tcfg.threads) > 0 and self.device.type == "cpu":
            torch.set_num_threads(int(self.tcfg.threads))
        set_seed(int(self.cfg.seed))
        self.model = self.task.build_model()
        if self.init_dir is not None and self.resume_dir is None:
            _, sd = read_checkpoint(self.init_dir)
            self.task.load_init_weights(self.model, sd, self.init_dir)
            log.info("initialised weights from %s", self.init_dir)
        self.model.train()

    def build_optimizer(self) -> None:
        """AdamW + warm-up cosine (lrm/training/optim.py), then ``accelerator.prepare`` of the training module."""
        optimizer = make_optimizer(self.model, self.tcfg)
        scheduler = make_scheduler(optimizer, self.tcfg)
        self.module, self.optimizer, self.scheduler = self.accelerator.prepare(
            self.task.wrap_for_training(self.model), optimizer, scheduler)

    def load_state(self) -> None:
        if self.resume_dir is not None:
            self.state.load_state_dict(ckpt.load_checkpoint(self.accelerator, self.resume_dir))
            log.info("resumed from %s at step %d", self.resume_dir, self.state.step)
        elif self.resume == "latest" and self.is_main:
            log.info("--resume latest: no checkpoint in %s, starting from scratch", self.ckpt_root)
        self.last_saved = self.state.step if self.resume_dir is not None else -1

    def build_data(self) -> None:
        """Settle the run's config (saved as run_dir/config.yaml), then the training batch source."""
        self.task.resolve_config(self.cfg)
        if self.is_main:
            save_config(self.cfg, self.run_dir / "config.yaml")
        self.source = self.task.build_source("train", self.rank, self.world, self.state.position)
        if hasattr(self.source, "start"):
            self.source.start(self.state.position)

    def build_loss(self) -> None:
        self.task.build_loss(self.device)

    def build_validation(self) -> None:
        self.val_batch = None
        if int(self.tcfg.val_every) > 0 or int(self.tcfg.image_every) > 0:
            self.val_batch = self.task.validation_batch(self.device)

    def build_logging(self) -> None:
        from tqdm.auto import tqdm

        if self.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tb"))
        self.stop = StopFlag().install()
        self.bar = tqdm(total=self.max_steps, initial=self.state.step, dynamic_ncols=True, desc="train",
                        disable=not (self.is_main and self.tcfg.progress))
        self.window = {"t0": time.time(), "n": 0, "terms": {}}
        self.cpu_mark = cpu_seconds()

    # ---- one optimiser step
    def next_batch(self) -> Dict:
        """The next usable batch on the device; unusable ones are skipped and counted."""
        bad_run = 0
        while True:
            pos = self.state.position
            self.state.position += 1
            try:
                batch = self.source.get(pos)
                why = self.task.check_batch(batch)
            except Exception as e:  # a corrupt sample / shard never stops training
                why = f"{type(e).__name__}: {e}"
            if why is None:
                return to_device(batch, self.device)
            self.state.bad_batches += 1
            bad_run += 1
            log.warning("rank %d: skipping unusable batch at position %d (%s)", self.rank, pos, why)
            if bad_run >= int(self.tcfg.max_bad_batches):
                raise RuntimeError(f"{bad_run} unusable batches in a row; last: {why}")

    def micro_step(self, step: int, micro: int, skip_backward: bool) -> Tuple[Dict[str, torch.Tensor], bool]:
        """Loss terms of one micro-batch and whether its loss is finite on every rank (backward if so)."""
        acc = self.accelerator
        batch = self.next_batch()
        gen = step_generator(self.cfg.seed, step, micro, self.rank, self.device)
        with acc.accumulate(self.module):
            with acc.autocast():
                terms = self.task.step_losses(self.module, batch, gen)
            loss = terms["total"]
            finite = bool(acc.gather(torch.isfinite(loss.detach()).reshape(1).float()).min() > 0)
            if finite and not skip_backward:
                acc.backward(loss)
        return terms, finite

    def clip_gradients(self) -> Tuple[float, Optional[str]]:
        """-> (gradient norm, reason to skip the step or None)."""
        acc, tcfg = self.accelerator, self.tcfg
        clip = float(tcfg.grad_clip) if float(tcfg.grad_clip) > 0 else float("inf")
        grad_norm = acc.clip_grad_norm_(self.module.parameters(), clip)
        if grad_norm is None and hasattr(self.module, "get_global_grad_norm"):  # DeepSpeed clips itself
            grad_norm = self.module.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        bad = not math.isfinite(grad_norm) and not acc.state.deepspeed_plugin
        return grad_norm, "non-finite gradient norm" if bad else None

    def skip_step(self, step: int, reason: str) -> None:
        self.state.skipped_steps += 1
        self.nonfinite_streak += 1
        log.warning("step %d skipped: %s (%d in a row)", step, reason, self.nonfinite_streak)
        if self.writer is not None:
            self.writer.add_scalar("train/skipped_steps", self.state.skipped_steps, step)
        if self.nonfinite_streak >= int(self.tcfg.max_nonfinite):
            raise FloatingPointError(
                f"aborting: {self.nonfinite_streak} training steps in a row had a {reason} (step {step}). "
                "Lower train.lr, raise train.warmup_steps or check the data; resume from the last "
                "checkpoint with --resume latest.")

    def train_step(self, step: int) -> Tuple[Dict, Dict[str, float]]:
        """One optimiser step (``grad_accum`` micro-batches) -> (its history record, the mean loss terms)."""
        bad, terms_acc = False, {}
        for micro in range(self.accum):
            terms, finite = self.micro_step(step, micro, skip_backward=bad)
            bad = bad or not finite
            for k, v in terms.items():
                terms_acc[k] = terms_acc.get(k, 0.0) + float(v.detach()) / self.accum
        grad_norm, reason = (None, "non-finite loss") if bad else self.clip_gradients()
        if reason is None:
            self.optimizer.step()
            self.scheduler.step()
            self.nonfinite_streak = 0
        else:
            self.skip_step(step, reason)
        self.optimizer.zero_grad(set_to_none=True)
        st = self.state
        st.step += 1
        st.samples += int(self.tcfg.batch_size) * self.accum * self.world
        now_cpu = cpu_seconds()
        st.cpu_s += now_cpu - self.cpu_mark
        self.cpu_mark = now_cpu
        self.bar.update(1)
        rec = {"step": st.step, "loss": terms_acc.get("total", float("nan")), "grad_norm": grad_norm,
               "lr": self.scheduler.get_last_lr()[0], "skipped": reason is not None, "time": time.time()}
        self.history.append(rec)
        return rec, terms_acc

    # ---- after a step
    def log_step(self, rec: Dict, terms: Dict[str, float]) -> None:
        """Every loss term and lr / grad norm / speed / CPU minutes / samples, every ``train.log_every`` steps."""
        w, step = self.window, self.state.step
        w["n"] += 1
        for k, v in terms.items():
            w["terms"][k] = w["terms"].get(k, 0.0) + v
        if not self.is_main or not (step % max(1, int(self.tcfg.log_every)) == 0 or step == self.max_steps):
            return
        dt = max(1e-9, time.time() - w["t0"])
        sps = w["n"] * int(self.tcfg.batch_size) * self.accum * self.world / dt
        add = self.writer.add_scalar
        for k, v in w["terms"].items():
            add(f"loss/{k}", v / w["n"], step)
        add("train/lr", rec["lr"], step)
        if rec["grad_norm"] is not None:
            add("train/grad_norm", rec["grad_norm"], step)
        add("train/samples_per_s", sps, step)
        add("train/s_per_step", dt / w["n"], step)
        add("train/cpu_minutes", self.state.cpu_s / 60.0, step)
        add("train/samples", self.state.samples, step)
        self.bar.set_postfix(loss=f"{w['terms'].get('total', 0) / w['n']:.4f}", sps=f"{sps:.2f}")
        self.window = {"t0": time.time(), "n": 0, "terms": {}}

    def maybe_validate(self, rec: Dict) -> None:
        """Task metrics every ``train.val_every`` steps and its image every ``train.image_every`` (and at the
        last step). All ranks run it (ZeRO-3 needs every rank in the forward); only the main rank logs."""
        step, ve, ie = self.state.step, int(self.tcfg.val_every), int(self.tcfg.image_every)
        want_val = (ve > 0 and step % ve == 0) or step == self.max_steps
        want_img = ie > 0 and (step % ie == 0 or step == self.max_steps)
        if self.val_batch is None or not (want_val or want_img):
            return
        t_val = time.time()
        metrics = {k: float(v) for k, v in self.task.validate(self.model, self.val_batch).items()}
        image = self.task.validation_image(self.model, self.val_batch) if want_img else None
        rec.update({f"val_{k}": v for k, v in metrics.items()})
        if self.is_main:
            for k, v in metrics.items():
                self.writer.add_scalar(f"val/{k}", v, step)
            if image is not None:
                self.writer.add_image(self.task.image_tag, image, step)
            self.writer.flush()
        self.window["t0"] += time.time() - t_val  # speed figures exclude validation
        self.cpu_mark = cpu_seconds()  # and so does the CPU budget

    def save_checkpoint(self) -> None:
        if self.last_saved == self.state.step:
            return
        ckpt.save_checkpoint(self.accelerator, self.ckpt_root, self.state.step, keep_last=int(self.tcfg.keep_last),
                             trainer_state=self.state.state_dict())
        self.last_saved = self.state.step

    def after_step(self) -> bool:
        """Checkpoint every ``train.ckpt_every``; True to stop (a signal on any rank, or the CPU budget)."""
        stop_now = self.accelerator.gather(
            torch.tensor([1.0 if self.stop.signum else 0.0], device=self.device)).max() > 0
        ce = int(self.tcfg.ckpt_every)
        if ce > 0 and self.state.step % ce == 0:
            self.save_checkpoint()
        if stop_now:
            self.interrupted = True
            return True
        budget = float(self.tcfg.max_cpu_minutes)
        if budget > 0 and self.state.cpu_s >= budget * 60.0:
            log.info("CPU budget of %.1f min reached at step %d", budget, self.state.step)
            return True
        return False

    # ---- the end
    def finish(self) -> None:
        """Final checkpoint and the exported ``run_dir/model`` (through ``task.export``)."""
        self.save_checkpoint()
        sd = self.accelerator.get_state_dict(self.module)  # collective (gathers ZeRO-3 shards)
        if self.is_main:
            self.task.export(self.task.model_state_dict(sd), self.run_dir / "model")
            if self.interrupted:
                log.warning("stopped by signal at step %d; checkpoint %s. Continue with --resume latest",
                            self.state.step, self.ckpt_root / f"step_{self.state.step}")
        self.accelerator.wait_for_everyone()

    def close(self) -> None:
        if self.stop is not None:
            self.stop.restore()
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()

    def result(self) -> Dict:
        return {"model": self.model, "step": self.state.step, "run_dir": self.run_dir,
                "interrupted": self.interrupted, "history": self.history, "state": self.state.state_dict(),
                "accelerator": self.accelerator}
