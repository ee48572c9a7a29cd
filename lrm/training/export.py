"""Export one training checkpoint (``RUN/checkpoints/step_N``) as a model folder, the way a run's end does.

    python -m lrm.training.export runs/x/checkpoints/step_500 --out runs/x/model_500

A run exports only its last step to ``RUN/model``; this makes any kept checkpoint a folder that ``infer.py
--checkpoint``, ``lrm.checkpoint.load_checkpoint``, validation and evaluation read (e.g. to score a run's curve
on the whole val split, or to ship an earlier step). The checkpoint is verified first (the optimiser files only
for zip integrity, never unpickled); its weights are read from safetensors and the run's ``config.yaml`` goes with
them. The output folder is written atomically and never replaces a folder this program did not write.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..checkpoint import CheckpointError
from ..outdir import OutputExistsError
from .checkpoint import verify_checkpoint

WEIGHTS = "model.safetensors"  # accelerate's name for the prepared module's weights in a step folder


def export_checkpoint(ckpt_dir, out_dir, run_config=None) -> Path:
    """Write ``out_dir`` (model.safetensors + config.yaml) from the training checkpoint ``ckpt_dir``; the config
    is ``run_config``, by default the ``config.yaml`` of the run folder the checkpoint is in."""
    from omegaconf import OmegaConf
    from safetensors.torch import load_file

    from .tasks import make_task

    ckpt_dir = Path(ckpt_dir)
    verify_checkpoint(ckpt_dir)  # COMPLETE marker, intact files
    weights = ckpt_dir / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{ckpt_dir} has no {WEIGHTS} (a checkpoint of a DeepSpeed run: export it with "
                              "the run's own finish, or zero_to_fp32)")
    if run_config is None:
        run_config = ckpt_dir.parent.parent / "config.yaml"
        if ckpt_dir.parent.name != "checkpoints" or not run_config.is_file():
            raise CheckpointError(f"{ckpt_dir}: not in RUN/checkpoints/ beside the run's config.yaml; name the "
                                  "run's config with --run-config")
    elif not Path(run_config).is_file():
        raise CheckpointError(f"run config {run_config} not found")
    cfg = OmegaConf.load(run_config)
    task = make_task(cfg)
    model_state = task.model_state_dict(load_file(str(weights)))
    if not model_state:
        raise CheckpointError(f"{weights}: no weights under the task's prefix {task.export_prefix!r}")
    task.export(model_state, Path(out_dir))
    return Path(out_dir)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lrm.training.export", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a training checkpoint folder, RUN/checkpoints/step_N")
    p.add_argument("--out", required=True, help="the model folder to write (must not exist, or be one we wrote)")
    p.add_argument("--run-config", help="the run's config.yaml (default: RUN/config.yaml of RUN/checkpoints/step_N)")
    args = p.parse_args(argv)
    try:
        out = export_checkpoint(args.checkpoint, args.out, args.run_config)
    except OutputExistsError:
        print(f"error: {args.out} exists and is not a model folder this program wrote; not replacing it (choose "
              "another --out)", file=sys.stderr)
        return 2
    except (CheckpointError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {args.checkpoint} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
