"""Training checkpoints: ``accelerator.save_state`` folders ``checkpoints/step_N``, written atomically.

A checkpoint is first written to ``checkpoints/.tmp-step_N`` by every process (model, optimiser, scheduler,
per-process RNG states, the trainer state incl. data position), then a ``COMPLETE`` marker is written and
the main process renames it to ``step_N``. ``latest_checkpoint`` only considers ``step_N`` folders holding
the marker, so a half-written checkpoint (killed mid-write) is never picked. Older ones beyond
``keep_last`` are deleted.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import List, Optional

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
_STEP_RE = re.compile(r"^step_(\d+)$")


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


def save_checkpoint(accelerator, ckpt_root, step: int, keep_last: int = 3, extra: Optional[dict] = None) -> Path:
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
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        meta = {"step": step, "num_processes": accelerator.num_processes, **(extra or {})}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        with open(tmp / MARKER, "w") as f:
            f.write("ok\n")
            f.flush()
            os.fsync(f.fileno())
        if final.exists():  # same step saved twice (e.g. signal right after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in complete_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        log.info("checkpoint saved: %s", final)
    accelerator.wait_for_everyone()
    return final
