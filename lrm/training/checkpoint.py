"""Training checkpoints: ``accelerator.save_state`` folders ``checkpoints/step_N``, written atomically.

A checkpoint is first written to ``checkpoints/.tmp-step_N`` by every process (model, optimiser, scheduler,
per-process RNG states, the trainer state incl. data position); every file is fsynced, then a ``COMPLETE``
marker is written and the main process renames the folder to ``step_N``. ``latest_checkpoint`` only considers
``step_N`` folders holding the marker, so a half-written checkpoint (killed mid-write) is never picked, and
:func:`usable_latest` also verifies the files (a damaged newest checkpoint falls back to the previous one with
a warning). Older ones beyond ``keep_last`` are deleted.

Nothing is unpickled on resume: the trainer state and the RNG states are JSON files of ours, the model is
safetensors, and accelerate reads its optimiser / scheduler files with ``torch.load(weights_only=True)``
(tensors and plain containers only). accelerate's pickled RNG files are not kept.
:func:`start_lineage` moves checkpoints of an abandoned future aside when a run resumes from an older one.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from ..checkpoint import CheckpointError, verify_safetensors
from ..outdir import fsync_tree

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
STATE_NAME = "trainer_state.json"
RNG_NAME = "rng_state_{}.json"
LEGACY_STATE_NAME = "custom_checkpoint_0.pkl"  # accelerate's register_for_checkpointing (before JSON)
_STEP_RE = re.compile(r"^step_(\d+)$")
_ANY_STEP_RE = re.compile(r"^(?:\.tmp-)?step_(\d+)$")
_CUSTOM_RE = re.compile(r"^custom_checkpoint_\d+\.pkl$")


def complete_checkpoints(ckpt_root) -> List[Path]:
    """Complete ``step_N`` folders, oldest first."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and (p / MARKER).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(ckpt_root) -> Optional[Path]:
    c = complete_checkpoints(ckpt_root)
    return c[-1] if c else None


def is_checkpoint_dir(path) -> bool:
    return (Path(path) / MARKER).is_file()


# ----------------------------------------------------------------------------------------------- verification
def _verify_file(p: Path) -> None:
    if p.suffix == ".safetensors":
        verify_safetensors(p)
    elif p.suffix == ".json":
        try:
            json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{p} is damaged ({type(e).__name__})") from None
    elif p.suffix in (".bin", ".pt"):  # torch.save zip archives: central directory + CRCs
        try:
            with zipfile.ZipFile(p) as z:
                bad = z.testzip()
        except (OSError, zipfile.BadZipFile) as e:
            raise CheckpointError(f"{p} is damaged ({e})") from None
        if bad is not None:
            raise CheckpointError(f"{p} is damaged (CRC mismatch in {bad})")


def verify_checkpoint(folder) -> Path:
    """Raise :class:`CheckpointError` unless ``folder`` is a complete checkpoint whose files are intact."""
    folder = Path(folder)
    if not is_checkpoint_dir(folder):
        raise CheckpointError(f"{folder} is not a complete training checkpoint (no {MARKER} marker)")
    if not (folder / STATE_NAME).is_file() and not (folder / LEGACY_STATE_NAME).is_file():
        raise CheckpointError(f"checkpoint {folder} is incomplete: {STATE_NAME} missing")
    for p in sorted(folder.iterdir()):
        if p.is_file():
            _verify_file(p)
    return folder


def usable_latest(ckpt_root) -> Optional[Path]:
    """The newest complete checkpoint that verifies; damaged newer ones are skipped with a warning. Raises
    :class:`CheckpointError` when checkpoints exist but none is usable."""
    found = complete_checkpoints(ckpt_root)
    for p in reversed(found):
        try:
            return verify_checkpoint(p)
        except CheckpointError as e:
            log.warning("skipping damaged checkpoint: %s; falling back to the previous one", e)
    if found:
        raise CheckpointError(f"no usable checkpoint in {ckpt_root}: all {len(found)} are damaged")
    return None


# ----------------------------------------------------------------------------------------------- lineage
def start_lineage(ckpt_root, resumed: Optional[Path]) -> Optional[Path]:
    """Before a run (re)starts: move every ``step_N`` / ``.tmp-step_N`` that is not part of its history, i.e.
    later than the checkpoint it resumes from (all of them when it does not resume from this folder), into
    ``abandoned-<UTC time>/``. Nothing is deleted; ``latest`` and pruning then only see the current lineage."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return None
    start = None
    if resumed is not None and Path(resumed).resolve().parent == root.resolve():
        start = int(_STEP_RE.match(Path(resumed).name).group(1))
    later = [p for p in root.iterdir()
             if (m := _ANY_STEP_RE.match(p.name)) and (start is None or int(m.group(1)) > start)]
    if not later:
        return None
    dest = root / time.strftime("abandoned-%Y%m%dT%H%M%SZ", time.gmtime())
    n = 1
    while dest.exists():
        n += 1
        dest = dest.with_name(f"{dest.name.split('.')[0]}.{n}")
    dest.mkdir()
    for p in later:
        os.replace(p, dest / p.name)
    log.warning("resuming from %s: moved %d later checkpoint(s) of an abandoned run into %s",
                resumed or "scratch", len(later), dest)
    return dest


# ----------------------------------------------------------------------------------------------- state files
def write_json(path: Path, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f)


def rng_state(accelerator_step: int) -> dict:
    """Python, NumPy, torch (and CUDA) RNG states as plain JSON."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    cuda = [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else []
    return {"python": [version, list(internal), gauss], "numpy": [name, keys.tolist(), int(pos), int(has_gauss),
            float(cached)], "torch": torch.get_rng_state().tolist(), "cuda": cuda, "accelerator_step": accelerator_step}


def restore_rng(d: dict) -> int:
    """Inverse of :func:`rng_state`; returns the accelerator's micro-step counter."""
    version, internal, gauss = d["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = d["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(d["torch"], dtype=torch.uint8))
    if d["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in d["cuda"]])
    return int(d["accelerator_step"])


def read_trainer_state(folder) -> dict:
    """The trainer counters of a checkpoint: JSON, or (checkpoints of older versions) accelerate's pickle read
    with ``weights_only=True``, which refuses anything but plain containers and tensors."""
    folder = Path(folder)
    if (folder / STATE_NAME).is_file():
        return json.loads((folder / STATE_NAME).read_text())
    try:
        state = torch.load(folder / LEGACY_STATE_NAME, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  UnpicklingError for anything that is not plain data
        raise CheckpointError(f"{folder / LEGACY_STATE_NAME} holds more than plain data; refusing to load it "
                              f"({type(e).__name__})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{folder / LEGACY_STATE_NAME} does not hold trainer counters")
    return state


@contextlib.contextmanager
def _without_custom_pickles(folder: Path):
    """A temporary folder of links to ``folder``'s entries minus ``custom_checkpoint_*.pkl``: accelerate would
    unpickle those with ``weights_only=False`` (and refuses a folder holding more of them than are registered)."""
    with tempfile.TemporaryDirectory(prefix="lrm-resume-") as view:
        for p in folder.iterdir():
            if not _CUSTOM_RE.match(p.name):
                os.symlink(p.resolve(), Path(view) / p.name)
        yield Path(view)


def load_checkpoint(accelerator, folder) -> dict:
    """Collective: restore model, optimiser, scheduler (accelerate) and this rank's RNG; returns the trainer
    state dict."""
    folder = Path(folder)
    try:
        with _without_custom_pickles(folder) as view:
            accelerator.load_state(str(view))
    except Exception as e:  # noqa: BLE001  e.g. UnpicklingError: weights_only refused a non-data object
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"cannot load checkpoint {folder}: {type(e).__name__}: {first}") from None
    rng = folder / RNG_NAME.format(accelerator.process_index)
    if rng.is_file():
        accelerator.step = restore_rng(json.loads(rng.read_text()))
    return read_trainer_state(folder)


# ----------------------------------------------------------------------------------------------- save
def _write_marker(folder: Path) -> None:
    with open(folder / MARKER, "w") as f:
        f.write("ok\n")
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(accelerator, ckpt_root, step: int, keep_last: int = 3, extra: Optional[dict] = None,
                    trainer_state: Optional[dict] = None) -> Path:
    """Collective: every process must call it. Returns the final folder."""
    root = Path(ckpt_root)
    final = root / f"step_{step}"
    tmp = root / f".tmp-step_{step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    rank = accelerator.process_index
    (tmp / f"random_states_{rank}.pkl").unlink(missing_ok=True)  # accelerate pickles them; ours are JSON
    write_json(tmp / RNG_NAME.format(rank), rng_state(accelerator.step))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / STATE_NAME, trainer_state or {})
        meta = {"step": step, "num_processes": accelerator.num_processes, **(extra or {})}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        fsync_tree(tmp)  # the data is on disk before the marker says it is complete
        _write_marker(tmp)
        if final.exists():  # same step saved twice (e.g. signal right after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _prune(root, step, keep_last)
        log.info("checkpoint saved: %s", final)
    accelerator.wait_for_everyone()
    return final


def _prune(root: Path, step: int, keep_last: int) -> None:
    """Delete complete checkpoints older than the newest ``keep_last`` (never ones newer than ``step``)."""
    if keep_last <= 0:
        return
    for old in complete_checkpoints(root)[:-keep_last]:
        if int(_STEP_RE.match(old.name).group(1)) < step:
            shutil.rmtree(old, ignore_errors=True)
