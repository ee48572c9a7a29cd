"""Refine an infer.py output folder: ``python -m lrm.refine OUT_DIR [--mode sds|ref|scratch] [--prior DIR] ...``

Reads OUT_DIR/triplane.safetensors, input.png and input_mask.png (docs/refine.md), optimises the triplane and writes a
new folder (default OUT_DIR-refined-<mode>) with mesh, triplane, turntable (--video), progress renders and
refine.json. A bad input prints one ``error:`` line and exits 2 with no files written.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m lrm.refine", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", help="a folder infer.py wrote for one image (OUT/<name>)")
    p.add_argument("--mode", default="sds", choices=["sds", "ref", "scratch"],
                   help="sds: reference + SDS; ref: reference losses only (no prior); scratch: SDS from a noise triplane")
    p.add_argument("--prior", default=None, help="diffusion prior folder (default: checkpoints/zero123-tiny)")
    p.add_argument("--checkpoint", default=None,
                   help="the LRM checkpoint that made the triplane (default: the one timings.json names, else default)")
    p.add_argument("--out", default=None, help="output folder (default: OUT_DIR-refined-<mode>)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--decoder-lr", type=float, default=None, help="> 0: also optimise the decoder")
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--n-views", type=int, default=None)
    p.add_argument("--anchor", type=float, default=None, dest="w_anchor",
                   help="weight of the term that keeps the field's opacity near the starting one (RefineConfig.w_anchor)")
    p.add_argument("--save-every", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--format", default="glb", choices=["glb", "obj", "ply"])
    p.add_argument("--orientation", default="viewer", choices=["viewer", "canonical"])
    p.add_argument("--mc-resolution", type=int, default=None)
    p.add_argument("--level", default=None,
                   help="the refined mesh's density level: checkpoint (default: its infer.refined_mc_threshold, else "
                        "infer.mc_threshold), a number, or silhouette (matched to the input mask)")
    p.add_argument("--video", action="store_true")
    p.add_argument("--video-format", default="mp4", choices=["mp4", "gif"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--debug", action="store_true")
    return p.parse_args(argv)


def config_from_args(args, steps=None):
    from .loop import RefineConfig
    from ..guidance import SDSConfig

    kw = {"mode": args.mode}
    for key in ("steps", "lr", "decoder_lr", "n_views", "save_every", "seed", "level", "w_anchor"):
        if getattr(args, key, None) is not None:
            kw[key] = getattr(args, key)
    if steps is not None:
        kw["steps"] = steps
    if getattr(args, "guidance_scale", None) is not None:
        kw["sds"] = SDSConfig(guidance_scale=args.guidance_scale)
    return RefineConfig(**kw)


def checkpoint_for(record: dict, given):
    if given:
        return Path(given)
    name = record.get("checkpoint")
    if name and name != "default" and Path(name).is_dir():
        return Path(name)
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from ..checkpoint import CheckpointError
    from ..config import ConfigError
    from ..outdir import OutputExistsError, check_target
    from ..pipeline import Pipeline
    from ..preprocess import InputError
    from .io import default_target, load_prior, read_output_dir, refine_to_folder
    from .loop import RefineError

    errors = (InputError, CheckpointError, ConfigError, OutputExistsError, RefineError)
    try:
        cfg = config_from_args(args)
        src = Path(args.out_dir)
        final = Path(args.out) if args.out else default_target(src, cfg.mode)
        if final.resolve() == src.resolve():
            raise InputError("--out must be a new folder, not the input folder")
        check_target(final, args.overwrite)
        inputs = read_output_dir(src)
        pipe = Pipeline.from_pretrained(checkpoint_for(inputs["record"], args.checkpoint), device=args.device,
                                        mc_resolution=args.mc_resolution)
        from .loop import check_triplane

        tri = check_triplane(inputs["triplane"], pipe.model, str(src / "triplane.safetensors"))
        prior = load_prior(args.prior, pipe.device) if cfg.uses_prior else None
        res = refine_to_folder(pipe, tri, inputs["image"], inputs["mask"], prior, cfg, final, fmt=args.format,
                               orientation=args.orientation, video=args.video, video_format=args.video_format,
                               overwrite=args.overwrite, source=str(src))
    except errors as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = res.stats
    print(f"{src} -> {final}  ({cfg.mode}, {s['steps']} steps in {s['seconds']:.1f}s, {s['renders']} renders, "
          f"{s['prior_calls']} prior calls, {s['skipped']} skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
