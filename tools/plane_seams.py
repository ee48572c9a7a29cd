"""Patch seams of a model's triplanes: how much more the planes, and the density field near the surface, jump across
the upsampler's patch borders than inside a patch (lrm.models.upsampler.seam_ratio; 1 = no patch structure).

    python tools/plane_seams.py checkpoints/default examples/*.png
    python tools/plane_seams.py "stage 11=checkpoints/default" "stage 12=runs/s18/m12_6000" examples/*.png

A transposed convolution with kernel = stride paints each token's patch alone, and a decoder reading such planes
shows the patch grid as creases in the mesh, every stride texels (docs/architecture.md, ``model.upsampler.overlap``).
The density is read at the learned planes' texel centres (H^3 points), and a neighbour pair counts where its log
density is between ``--level``/5 and ``--level``*5 at both ends (the band the surface is cut from).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch


def density_seam_ratio(log_density: np.ndarray, period: int, band: np.ndarray) -> float:
    """seam_ratio of a 3D log-density grid sampled at texel centres, over neighbour pairs with both ends in ``band``."""
    across, inside = [], []
    for axis in range(3):
        d = np.abs(np.diff(log_density, axis=axis))
        n = log_density.shape[axis]
        keep = np.minimum(band.take(range(n - 1), axis=axis), band.take(range(1, n), axis=axis))
        shape = [1, 1, 1]
        shape[axis] = n - 1
        border = np.broadcast_to(((np.arange(n - 1) % period) == period - 1).reshape(shape), d.shape)
        across.append(d[border & keep])
        inside.append(d[~border & keep])
    a, i = np.concatenate(across), np.concatenate(inside)
    return float(a.mean() / max(i.mean(), 1e-12)) if len(a) and len(i) else float("nan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("items", nargs="+", help="[LABEL=]MODEL_DIR ... then image files")
    p.add_argument("--level", type=float, default=12.0, help="density level of the surface band (default 12)")
    a = p.parse_args(argv)
    from PIL import Image

    from lrm.mesh import query_chunked
    from lrm.models.upsampler import seam_ratio
    from lrm.pipeline import Pipeline

    models = [x for x in a.items if Path(x.partition("=")[2] or x).is_dir()]
    images = [x for x in a.items if x not in models]
    if not models or not images:
        print("plane_seams: give at least one model folder and one image", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    print(f"| model | image | plane seam ratio | density seam ratio (level {a.level:g}) |\n|---|---|---|---|")
    for spec in models:
        label, sep, path = spec.partition("=")
        label, path = (label, path) if sep else (Path(spec).name, spec)
        pipe = Pipeline.from_pretrained(path)
        k = int(pipe.cfg.model.upsampler.kernel)
        r = float(pipe.cfg.model.render.radius)
        for image in images:
            tri = pipe.triplane(pipe.preprocess(Image.open(image)).image)
            learned = tri[:, :3]
            h = learned.shape[-1]
            c = (torch.arange(h, dtype=torch.float32) + 0.5) * (2 * r / h) - r  # texel centres
            pts = torch.stack(torch.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)
            with torch.no_grad():
                dens = query_chunked(pipe.density_fn(tri), pts).reshape(h, h, h).numpy()
            logd = np.log(np.maximum(dens, 1e-6))
            band = (dens > a.level / 5) & (dens < a.level * 5)
            print(f"| {label} | {Path(image).name} | {seam_ratio(learned, k):.2f} | "
                  f"{density_seam_ratio(logd, k, band):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
