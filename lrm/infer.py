"""Image -> textured mesh (+ turntable video), offline, with the shipped default checkpoint: the inference command
(``python infer.py``, ``lrm-infer``).

    python infer.py examples/duck.png [more.png ...] [--out outputs] [--checkpoint checkpoints/default]
        [--format glb|obj|ply] [--mc-resolution 129] [--mc-threshold T] [--mesh-smooth N] [--field-smooth SIGMA]
        [--texture vertex|uv] [--video]
        [--video-format mp4|gif] [--device cpu|cuda] [--precision fp32|bf16] [--mask mask.png] [--orientation viewer|canonical]
        [--refine sds|ref|scratch [--prior DIR] [--refine-steps N]]
    python infer.py a.png b.png c.png --cameras cams.json --checkpoint MULTIVIEW_MODEL   # one object, several views
    python infer.py image.png --frontend mv [--prior DIR] [--mv-checkpoint DIR] [--frontend-steps N]
        [--frontend-views joint|independent]

Per image it writes OUT/<name>/: mesh.<format>, triplane.safetensors (for SDS refinement), input.png (the
preprocessed model input), input_mask.png (its alpha), turntable.mp4 with --video, and timings.json. With --refine
the triplane is then optimised (lrm/refine/, docs/refine.md) and OUT/<name>-refined-<mode>/ is written as well. Outputs appear all at once (written
to a temporary folder, then renamed); a bad input gives one error line, a non-zero exit, and no files.
An existing OUT/<name> is replaced only if infer.py wrote it (its .lrm-output.json lists every file in it);
anything else is refused unless --overwrite is given (docs/guarantees.md).
With --cameras, the images are views of ONE object with known cameras (format: docs/inference.md,
lrm/cameras_file.py): one output folder OUT/<first image's name>/, with input_views.png beside input.png.
With --frontend mv, a diffusion prior first generates views at azimuth 90/180/270 (lrm/frontend.py) and a
multi-view checkpoint reconstructs from the input and them; OUT/<name>/ also holds generated_views.png and one
view_az*_el*.png per generated view (docs/inference.md, "Multi-view front end").
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

T_START = time.perf_counter()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", help="input image(s): RGBA PNG, or RGB on a plain background")
    p.add_argument("--out", default="outputs", help="output folder (default: outputs)")
    p.add_argument("--checkpoint", default=None, help="checkpoint folder (default: checkpoints/default)")
    p.add_argument("--format", default="glb", choices=["glb", "obj", "ply"])
    p.add_argument("--mc-resolution", type=int, default=None, help="marching-cubes grid points per side")
    p.add_argument("--mc-threshold", type=float, default=None, help="density level of the surface")
    p.add_argument("--mesh-smooth", type=int, default=None, metavar="N",
                   help="Taubin smoothing iterations of the mesh (0: off; default: the checkpoint's infer.mesh_smooth)")
    p.add_argument("--field-smooth", type=float, default=None, metavar="SIGMA",
                   help="smooth the density field (Gaussian of SIGMA world units, in the log domain) before marching "
                        "cubes (0: off; default: the checkpoint's infer.field_smooth)")
    p.add_argument("--texture", default=None, choices=["vertex", "uv"])
    p.add_argument("--texture-size", type=int, default=None)
    p.add_argument("--video", action="store_true", help="also render a turntable")
    p.add_argument("--video-format", default="mp4", choices=["mp4", "gif"])
    p.add_argument("--video-frames", type=int, default=None)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--precision", default=None, choices=["fp32", "bf16"],
                   help="image -> triplane precision (bf16: autocast for encoder + transformer; docs/inference.md)")
    p.add_argument("--mask", default=None, help="foreground mask (white = object) for a single RGB image")
    p.add_argument("--orientation", default="viewer", choices=["viewer", "canonical"],
                   help="viewer: +Y up, input view facing +Z (glTF viewers); canonical: the model's +Z-up frame")
    p.add_argument("--cameras", default=None, metavar="CAMS.JSON",
                   help="the images are views of one object with these cameras (needs a multi-view checkpoint)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT/<name> even if it is not a folder infer.py wrote")
    p.add_argument("--refine", default=None, choices=["sds", "ref", "scratch"],
                   help="refine the triplane after reconstruction (sds: + diffusion prior; ref: input view only)")
    p.add_argument("--prior", default=None, help="diffusion prior folder for --refine sds|scratch (default: "
                   "checkpoints/zero123-tiny) and --frontend mv (default: checkpoints/zero123-mv-tiny)")
    p.add_argument("--refine-steps", type=int, default=None, help="refinement steps (default: RefineConfig.steps)")
    p.add_argument("--frontend", default=None, choices=["mv"],
                   help="mv: generate views with the diffusion prior (--prior), reconstruct with a multi-view model")
    p.add_argument("--mv-checkpoint", default=None,
                   help="multi-view checkpoint for --frontend mv (default: checkpoints/mv-tiny)")
    p.add_argument("--frontend-steps", type=int, default=None, help="DDIM steps of --frontend mv (default 50)")
    p.add_argument("--frontend-guidance", type=float, default=None, help="CFG scale of --frontend mv (default 3)")
    p.add_argument("--frontend-seed", type=int, default=None, help="noise seed of --frontend mv (default 0)")
    p.add_argument("--frontend-views", default=None, choices=["joint", "independent"],
                   help="denoise the generated views together (cross-view attention; needs a prior trained with "
                   "model.joint_views, e.g. zero123-mv-tiny) or one by one (default: as the prior does)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p.parse_args(argv)


def check_output_dir(out: Path):
    from lrm.preprocess import InputError

    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as e:
        raise InputError(f"output folder is not writable: {out} ({e.strerror or e})") from None


def refine_target(out_root: Path, image: str, mode: str) -> Path:
    from lrm.refine import default_target

    return default_target(out_root / output_name(image), mode)


def publish_result(result, final: Path, args, info: dict, radius: float, extra=None) -> dict:
    """Write ``result`` (mesh in ``args.format``, video, input images) plus ``extra(tmp)``'s files and
    timings.json into a temporary folder, then rename it to ``final`` (nothing half-written is ever visible).
    Returns timings.json's content: ``info`` + faces, vertices, timings, stats and the mesh files."""
    from lrm.outdir import make_temp_dir, publish
    from lrm.outputs import write_result

    tmp = make_temp_dir(final)
    try:
        t = time.perf_counter()
        files = write_result(result, tmp, [args.format], args.orientation, args.video_format, radius=radius)
        if extra is not None:
            info = {**info, **(extra(tmp) or {})}
        result.timings["export"] = time.perf_counter() - t
        info = {**info, "faces": int(len(result.mesh.faces)), "vertices": int(len(result.mesh.vertices)),
                "timings_s": result.timings, "stats": result.stats, "mesh": [f.name for f in files[args.format]]}
        (tmp / "timings.json").write_text(json.dumps(info, indent=2))
        publish(tmp, final, overwrite=args.overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def timings_line(result) -> str:
    return "  ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())


def input_errors() -> tuple:
    """The exceptions that mean bad input (one ``error:`` line, exit 2)."""
    from lrm.checkpoint import CheckpointError
    from lrm.config import ConfigError
    from lrm.outdir import OutputExistsError
    from lrm.preprocess import InputError
    from lrm.refine import RefineError

    return InputError, CheckpointError, ConfigError, OutputExistsError, RefineError


def report_error(e: Exception, args, label: str = "") -> int:
    """One line on stderr for ``e`` and its exit code: 2 for bad input, else 1 (re-raised with --debug)."""
    if isinstance(e, input_errors()):
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.debug:
        raise e
    print(f"error: {label}{type(e).__name__}: {e} (rerun with --debug for a traceback)", file=sys.stderr)
    return 1


def run_command(args, work) -> int:
    """``work()`` under the command's error contract (:func:`report_error`; Ctrl-C -> 130)."""
    try:
        work()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line unless --debug
        return report_error(e, args)
    print(f"total {time.perf_counter() - T_START:.2f}s")
    return 0


def process(pipe, image: str, args, out_root: Path, prior=None) -> Path:
    from lrm.outputs import require_surface

    final = out_root / output_name(image)
    result = pipe.run(image, mask=args.mask, video=args.video)
    require_surface(result, image)
    info = {"image": str(image), "checkpoint": str(args.checkpoint or "default"), "device": str(pipe.device)}
    info = publish_result(result, final, args, info, pipe.cfg.model.render.radius)
    print(f"{image}: {info['faces']} faces -> {final}/mesh.{args.format}  {timings_line(result)}")
    if args.refine:
        from lrm.refine import refine_to_folder

        from lrm.refine.__main__ import config_from_args

        target = refine_target(out_root, image, args.refine)
        # an explicit --mc-threshold also sets the refined mesh's level; otherwise the checkpoint's level for refined
        # scenes (infer.refined_mc_threshold) applies
        level = args.mc_threshold
        cfg = config_from_args(argparse.Namespace(mode=args.refine, level=level), steps=args.refine_steps)
        res = refine_to_folder(pipe, result.triplane, result.input_image, result.input_mask, prior, cfg, target,
                               fmt=args.format, orientation=args.orientation, video=args.video,
                               video_format=args.video_format, overwrite=args.overwrite, source=str(final))
        print(f"{image}: refined ({args.refine}, {res.stats['steps']} steps, {res.stats['seconds']:.1f}s) -> {target}")
    return final


def output_name(image: str) -> str:
    stem = Path(image).stem
    return stem if stem not in ("", ".", "..") else "image"


def check_outputs(images, out_root: Path, overwrite: bool, refine: str = None) -> None:
    """Before any work: two inputs must not share an output folder, and no existing OUT/<name> may be one this
    program did not write (unless ``overwrite``)."""
    from lrm.outdir import check_target
    from lrm.preprocess import InputError

    seen = {}
    for image in images:
        key = output_name(image).casefold()  # X.png and x.png collide on case-insensitive file systems
        if key in seen:
            raise InputError(f"inputs {seen[key]} and {image} would both write {out_root / output_name(image)}: "
                             "rename one or run them separately")
        seen[key] = image
    for image in seen.values():
        check_target(out_root / output_name(image), overwrite)
        if refine:
            check_target(refine_target(out_root, image, refine), overwrite)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from lrm.outdir import sweep_stale
    from lrm.pipeline import Pipeline, check_options
    from lrm.preprocess import InputError, load_image

    errors = input_errors()
    out_root = Path(args.out)
    opts = dict(mc_resolution=args.mc_resolution, mc_threshold=args.mc_threshold, mesh_smooth=args.mesh_smooth,
                field_smooth=args.field_smooth, texture=args.texture, texture_size=args.texture_size, video_frames=args.video_frames, precision=args.precision)
    if args.frontend:
        return main_frontend(args, opts, out_root)
    if args.cameras:
        return main_views(args, opts, out_root)
    try:
        check_options(opts)
        check_outputs(args.images, out_root, args.overwrite, args.refine)
        if args.refine_steps is not None and args.refine_steps < 1:
            raise InputError(f"--refine-steps must be >= 1, got {args.refine_steps}")
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failures = 0
    valid = []
    for image in args.images:  # fail fast on unreadable inputs, before loading the model
        try:
            load_image(image)
            valid.append(image)
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            failures += 1
    if not valid:
        return 2
    try:
        check_output_dir(out_root)
        sweep_stale(out_root)
        if args.mask is not None:
            if len(valid) > 1:
                raise InputError("--mask applies to a single input image")
            load_image(args.mask)
        t = time.perf_counter()
        pipe = Pipeline.from_pretrained(args.checkpoint, device=args.device, **opts)
        load_s = time.perf_counter() - t
        print(f"loaded {args.checkpoint or 'default checkpoint'} on {pipe.device} in {load_s:.2f}s "
              f"(process start -> ready {time.perf_counter() - T_START:.2f}s)")
        prior = None
        if args.refine in ("sds", "scratch"):
            from lrm.refine import load_prior

            prior = load_prior(args.prior, pipe.device)
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for image in valid:
        try:
            process(pipe, image, args, out_root, prior)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except Exception as e:  # noqa: BLE001 - one line per failed image unless --debug
            report_error(e, args, label=f"{image}: ")
            failures += 1
    print(f"total {time.perf_counter() - T_START:.2f}s")
    return 1 if failures else 0


# ------------------------------------------------------------------ several views of one object (--cameras)
def process_views(pipe, rig, args, out_root: Path) -> Path:
    """All images as views of one object: OUT/<first image's name>/ (mesh, input.png = view 0, input_views.png)."""
    import numpy as np

    from lrm.multiview_input import run_views
    from lrm.outputs import require_surface, save_image

    final = out_root / output_name(args.images[0])
    result, views = run_views(pipe, args.images, rig, video=args.video)
    require_surface(result, args.images[0])
    info = {"images": [str(i) for i in args.images], "cameras": str(args.cameras),
            "checkpoint": str(args.checkpoint or "default"), "device": str(pipe.device)}

    def strip(tmp: Path) -> None:
        save_image(np.concatenate(list(views), 1), tmp / "input_views.png")

    info = publish_result(result, final, args, info, pipe.cfg.model.render.radius, extra=strip)
    print(f"{len(args.images)} views: {info['faces']} faces -> {final}/mesh.{args.format}  {timings_line(result)}")
    return final


def main_views(args, opts, out_root: Path) -> int:
    """infer.py IMAGES --cameras CAMS.JSON: check everything (cameras file, images, output) before loading the
    model; one error line and exit 2 on bad input."""
    from lrm.cameras_file import read_cameras_file
    from lrm.outdir import check_target, sweep_stale
    from lrm.pipeline import Pipeline, check_options
    from lrm.preprocess import InputError, load_image

    def work():
        check_options(opts)
        if args.mask is not None:
            raise InputError("--mask applies to a single input image, not to --cameras views")
        rig = read_cameras_file(args.cameras, args.images)
        for image in args.images:
            load_image(image)
        check_target(out_root / output_name(args.images[0]), args.overwrite)
        check_output_dir(out_root)
        sweep_stale(out_root)
        pipe = Pipeline.from_pretrained(args.checkpoint, device=args.device, **opts)
        process_views(pipe, rig, args, out_root)

    return run_command(args, work)


# ------------------------------------------------------------------ multi-view front end (--frontend mv)
def frontend_config(args):
    """FrontendConfig from the --frontend-* flags, checked."""
    import math

    from lrm.frontend import FrontendConfig
    from lrm.preprocess import InputError

    cfg = FrontendConfig()
    steps = cfg.steps if args.frontend_steps is None else args.frontend_steps
    guidance = cfg.guidance if args.frontend_guidance is None else args.frontend_guidance
    if not 1 <= steps <= 1000:
        raise InputError(f"--frontend-steps must be in [1, 1000], got {steps}")
    if not (math.isfinite(guidance) and 0.0 <= guidance <= 100.0):
        raise InputError(f"--frontend-guidance must be in [0, 100], got {guidance}")
    joint = {None: cfg.joint, "joint": True, "independent": False}[getattr(args, "frontend_views", None)]
    return FrontendConfig(steps=int(steps), guidance=float(guidance),
                          seed=cfg.seed if args.frontend_seed is None else int(args.frontend_seed), joint=joint)


def process_frontend(args, fe, prior_dir: Path, mv_dir: Path, opts, out_root: Path) -> Path:
    """lrm.frontend.run_frontend (prior -> views, freed -> multi-view LRM) -> OUT/<name>/ with the generated views."""
    from lrm.cameras import fov_from_intrinsics
    from lrm.frontend import run_frontend, view_file_name, views_strip
    from lrm.outputs import require_surface, save_image

    image = args.images[0]
    fr = run_frontend(image, prior_dir, mv_dir, fe, args.device, args.mask, args.video, progress=True, **opts)
    result, gen = fr.result, fr.generated
    require_surface(result, image)
    final = out_root / output_name(image)
    names = [view_file_name(p) for p in gen.poses]

    def views(tmp: Path) -> None:
        save_image(views_strip(gen.images), tmp / "generated_views.png")
        save_image(views_strip(fr.views), tmp / "input_views.png")
        for name, view in zip(names, gen.images):
            save_image(view, tmp / name)

    info = {"image": str(image), "frontend": "mv", "prior": str(prior_dir), "checkpoint": str(mv_dir),
            "device": fr.device,
            "generated_views": {**gen.info, "files": names, "prior_foreground_ratio": fr.prior_foreground_ratio,
                                "distance": float(gen.c2w[0, :3, 3].norm()),
                                "fov_deg": float(fov_from_intrinsics(gen.intrinsics[0]))}}
    info = publish_result(result, final, args, info, fr.radius, extra=views)
    print(f"{image}: {len(gen.poses)} generated views ({fe.steps} DDIM steps, {gen.seconds:.2f}s) + input -> "
          f"{info['faces']} faces -> {final}/mesh.{args.format}  {timings_line(result)}")
    return final


def main_frontend(args, opts, out_root: Path) -> int:
    """infer.py IMAGE --frontend mv: every check (options, image, output folder, prior folder, multi-view checkpoint
    from its config) before any model is loaded; one error line and exit 2 on bad input."""
    from lrm.checkpoint import CheckpointError
    from lrm.diffusion.pixel_prior import DEFAULT_MV_PRIOR, folder_joint_views
    from lrm.frontend import DEFAULT_MV_CHECKPOINT, check_multiview_checkpoint
    from lrm.outdir import check_target, sweep_stale
    from lrm.pipeline import check_options
    from lrm.preprocess import InputError, load_image

    def work():
        nonlocal opts
        opts = check_options(opts)
        for flag, given in (("--cameras", args.cameras), ("--refine", args.refine), ("--checkpoint", args.checkpoint)):
            if given:
                raise InputError(f"--frontend mv does not take {flag} (the multi-view model: --mv-checkpoint)")
        if len(args.images) != 1:
            raise InputError(f"--frontend mv takes one image, got {len(args.images)} (run once per image)")
        fe = frontend_config(args)
        load_image(args.images[0])
        if args.mask is not None:
            load_image(args.mask)
        check_target(out_root / output_name(args.images[0]), args.overwrite)
        prior_dir = Path(args.prior) if args.prior else DEFAULT_MV_PRIOR
        if not prior_dir.exists():
            raise CheckpointError(f"diffusion prior not found: {prior_dir} (train one: docs/diffusion.md; or pass "
                                  "--prior DIR)")
        if fe.joint and not folder_joint_views(prior_dir):
            raise InputError("--frontend-views joint needs a prior trained with cross-view attention (model.joint_views, "
                             f"e.g. --config zero123-mv-tiny); {prior_dir} denoises views one by one")
        mv_dir, _ = check_multiview_checkpoint(Path(args.mv_checkpoint) if args.mv_checkpoint
                                               else DEFAULT_MV_CHECKPOINT)
        check_output_dir(out_root)
        sweep_stale(out_root)
        process_frontend(args, fe, prior_dir, mv_dir, opts, out_root)

    return run_command(args, work)


if __name__ == "__main__":
    sys.exit(main())
