"""Novel views from one image with a view-conditioned prior: DDIM sampling with classifier-free guidance.

    python -m lrm.diffusion.sample IMAGE --azimuth 90[,180,...] [--elevation 10] [--checkpoint DIR]
        [--steps 50] [--guidance 3.0] [--seed 0] [--out DIR] [--device cpu] [--overwrite] [--independent]

The input is preprocessed as infer.py does (lrm/preprocess.py: foreground crop, padded square, composited on
white). Sampling uses only the ``ViewPrior`` interface (lrm/diffusion/prior.py), so ``--checkpoint`` may be the
project's own exported prior (``model.safetensors`` + ``config.yaml``, ``task: zero123``) or a diffusers folder of
the public Zero-1-to-3 weights. ``--azimuth`` / ``--elevation`` are offsets from the input view in degrees
(azimuth toward +Y, i.e. the object turns as seen from above; elevation up); one PNG per azimuth is written to
``--out`` (default ``outputs/<image name>-views``), a new or empty folder or one this program wrote
(lrm/outdir.py: written to a temporary folder, then renamed into place), with ``input.png`` and ``sampling.json``.
A prior trained with cross-view attention (``model.joint_views``) denoises the requested views together, unless
``--independent``.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from .prior import guided_noise, is_joint, relative_camera_from_angles


def ddim_scheduler(prior, steps: int):
    """A diffusers DDIMScheduler on the prior's own noise schedule (betas recovered from ``alphas_cumprod``), with
    "trailing" timestep spacing (the first step starts at t = T-1, so few steps still start from pure noise) and
    ᾱ = 1 after the last step. Pixel priors (``prior.sample_clip``) clip the x0 estimate to their range."""
    from diffusers import DDIMScheduler

    ac = prior.alphas_cumprod.detach().double().cpu()
    betas = 1.0 - ac / torch.cat([ac.new_ones(1), ac[:-1]])
    clip = getattr(prior, "sample_clip", None)
    sch = DDIMScheduler(num_train_timesteps=int(prior.num_train_timesteps), trained_betas=betas.numpy(),
                        clip_sample=clip is not None, clip_sample_range=float(clip or 1.0), set_alpha_to_one=True,
                        timestep_spacing="trailing", prediction_type="epsilon")
    sch.set_timesteps(int(steps))
    return sch


@torch.no_grad()
def sample_views(prior, image: Tensor, rel_camera: Tensor, steps: int = 50, guidance: float = 3.0,
                 generator: Optional[torch.Generator] = None, progress: bool = False, num_views: int = 1,
                 noise: Optional[Tensor] = None) -> Tensor:
    """Target views [N, 3, h, w] in [0, 1] at the ``N`` relative cameras ``rel_camera`` [N, 4] of the input
    ``image`` [1, 3, H, W] (RGB in [0, 1] on white), or of N input images [N, 3, H, W], one per camera.
    Deterministic given ``generator`` (DDIM, eta = 0): the initial noise is drawn on the CPU from it, unless
    ``noise`` (shaped like the N samples) is given. ``num_views`` V > 1 (a joint prior): the N rows are N / V
    objects of V consecutive views, denoised together (cross-view attention) in the same DDIM loop."""
    device = prior.alphas_cumprod.device
    n = rel_camera.shape[0]
    if image.shape[0] not in (1, n):
        raise ValueError(f"sample_views: {image.shape[0]} input images for {n} cameras (give 1 or {n})")
    if num_views != 1 and (num_views < 1 or n % num_views or not is_joint(prior)):
        raise ValueError(f"sample_views: num_views={num_views} needs a joint prior and a number of cameras ({n}) "
                         "divisible by it")
    cond = prior.condition(image.to(device))
    shape = prior.encode(image[:1].to(device)).shape[1:]
    if noise is None:
        x = torch.randn((n, *shape), generator=generator).to(device)
    elif tuple(noise.shape) != (n, *shape):
        raise ValueError(f"sample_views: noise has shape {tuple(noise.shape)}, expected {(n, *shape)}")
    else:
        x = noise.to(device, torch.float32)
    rel_camera = rel_camera.to(device)
    sch = ddim_scheduler(prior, steps)
    timesteps = sch.timesteps
    if progress:
        from tqdm import tqdm

        timesteps = tqdm(timesteps, desc="DDIM", leave=False)
    for t in timesteps:
        eps, _ = guided_noise(prior, x, t.expand(n).to(device), cond, rel_camera, guidance, num_views)
        x = sch.step(eps, t, x).prev_sample
    return prior.decode(x)


# ---------------------------------------------------------------------------------------------------- CLI
def _numbers(text: str, flag: str) -> List[float]:
    from ..preprocess import InputError

    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{flag} must be a number or a comma-separated list of numbers, got {text!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise InputError(f"{flag} must hold finite numbers, got {text!r}")
    return values


def view_name(azimuth: float, elevation: float) -> str:
    """``view_az+90_el+10.png``: the file of one sampled view."""
    return f"view_az{azimuth:+g}_el{elevation:+g}.png"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m lrm.diffusion.sample", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", help="input image: RGBA PNG, or RGB on a plain background")
    p.add_argument("--azimuth", default="90", help="azimuth offset(s) in degrees, comma-separated (default 90)")
    p.add_argument("--elevation", default="0",
                   help="elevation offset in degrees, one value or one per azimuth (default 0)")
    p.add_argument("--checkpoint", default=None,
                   help="prior folder: exported zero123 model or diffusers Zero-1-to-3 (default checkpoints/zero123-tiny)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (default 3.0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default outputs/<image name>-views)")
    p.add_argument("--foreground-ratio", type=float, default=None,
                   help="share of the frame the object's longer side fills (default: the prior's, else 0.85)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--independent", action="store_true",
                   help="with a joint prior (model.joint_views), sample the views one by one instead of together")
    p.add_argument("--overwrite", action="store_true", help="replace --out even if this program did not write it")
    return p.parse_args(argv)


def check_request(args) -> tuple:
    """(azimuths, elevations) after checking every option, before any work."""
    from ..preprocess import InputError

    az = _numbers(args.azimuth, "--azimuth")
    el = _numbers(args.elevation, "--elevation")
    if len(el) == 1:
        el = el * len(az)
    if len(el) != len(az):
        raise InputError(f"--elevation needs one value or one per azimuth ({len(az)}), got {len(el)}")
    if len({view_name(a, e) for a, e in zip(az, el)}) != len(az):
        raise InputError("the same (azimuth, elevation) is asked for twice")
    if any(abs(e) > 90 for e in el):
        raise InputError("--elevation offsets must be within [-90, 90] degrees")
    if not 1 <= args.steps <= 1000:
        raise InputError(f"--steps must be in [1, 1000], got {args.steps}")
    if not (math.isfinite(args.guidance) and 0.0 <= args.guidance <= 100.0):
        raise InputError(f"--guidance must be in [0, 100], got {args.guidance}")
    if args.foreground_ratio is not None and not 0.05 <= args.foreground_ratio <= 1.0:
        raise InputError(f"--foreground-ratio must be in [0.05, 1], got {args.foreground_ratio}")
    return az, el


def save_png(rgb: Tensor, path: Path) -> None:
    """[3, H, W] in [0, 1] -> 8-bit RGB PNG."""
    from PIL import Image

    arr = (rgb.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype("uint8")
    Image.fromarray(arr).save(path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from ..checkpoint import CheckpointError
    from ..config import ConfigError
    from ..outdir import OutputExistsError, check_target, make_temp_dir, publish, sweep_stale
    from ..pipeline import resolve_device
    from ..preprocess import InputError, load_image, preprocess
    from .pixel_prior import DEFAULT_PRIOR, load_prior

    errors = (InputError, CheckpointError, ConfigError, OutputExistsError, FileNotFoundError)
    out = Path(args.out) if args.out else Path("outputs") / f"{Path(args.image).stem or 'image'}-views"
    ckpt = Path(args.checkpoint) if args.checkpoint else DEFAULT_PRIOR
    try:
        az, el = check_request(args)
        load_image(args.image)  # fail fast on an unreadable input, before loading the prior
        check_target(out, args.overwrite)
        if not ckpt.exists():
            hint = " (train it: see docs/diffusion.md)" if args.checkpoint is None else ""
            raise CheckpointError(f"prior checkpoint not found: {ckpt}{hint}")
        device = resolve_device(args.device)
        t0 = time.perf_counter()
        prior = load_prior(ckpt, device)
        load_s = time.perf_counter() - t0
        ratio = args.foreground_ratio or float(getattr(prior, "foreground_ratio", None) or 0.85)
        pre = preprocess(args.image, max(256, int(prior.resolution)), foreground_ratio=ratio)
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    image = torch.from_numpy(pre.image).permute(2, 0, 1)[None].float()
    rel = relative_camera_from_angles(torch.tensor(el), torch.tensor(az))
    joint = is_joint(prior) and not args.independent  # a joint prior denoises all requested views together
    t0 = time.perf_counter()
    views = sample_views(prior, image, rel, args.steps, args.guidance, torch.Generator().manual_seed(args.seed),
                         progress=True, num_views=len(az) if joint else 1)
    sample_s = time.perf_counter() - t0
    sweep_stale(out.parent)
    tmp = make_temp_dir(out)
    try:
        save_png(image[0], tmp / "input.png")
        names = [view_name(a, e) for a, e in zip(az, el)]
        for v, name in zip(views, names):
            save_png(v, tmp / name)
        info = {"image": str(args.image), "checkpoint": str(ckpt), "steps": args.steps, "guidance": args.guidance,
                "seed": args.seed, "device": str(device), "foreground_ratio": ratio, "joint": joint,
                "views": [{"azimuth": a, "elevation": e, "file": n} for a, e, n in zip(az, el, names)],
                "timings_s": {"load": load_s, "sample": sample_s}}
        (tmp / "sampling.json").write_text(json.dumps(info, indent=2))
        publish(tmp, out, overwrite=args.overwrite)
    except OutputExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"{args.image}: {len(names)} view(s) in {sample_s:.2f}s ({args.steps} DDIM steps, guidance "
          f"{args.guidance}) -> {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
