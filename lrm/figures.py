"""Picture of what a checkpoint makes of some images: input, volume-rendered novel views, mesh renders.

    python -m lrm.figures examples/*.png [--checkpoint checkpoints/default] \
        [--out docs/images/default_checkpoint_examples.png] [--views 4] [--resolution 128]

One row per image: the preprocessed model input, ``--views`` views volume-rendered from the triplane by the
shared renderer (orbit at 20° elevation, azimuths 45°, 135°, ...: none is the input view), then the extracted
mesh (``Pipeline.run``, vertex colours) rasterised from the same cameras with a headlight.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch


def example_rows(pipe, images, views: int = 4, resolution: int = 128, elevation: float = 20.0):
    from . import cameras as C
    from .render.raster import render_mesh
    from .stages import render_views

    cam = pipe.cfg.camera
    c2w = C.orbit_cameras(views, elevation, cam.distance, start_azimuth_deg=45.0)
    intr = C.intrinsics_from_fov(cam.fov_deg)
    rows = []
    for path in images:
        res = pipe.run(str(path))
        inp = torch.from_numpy(res.input_image).permute(2, 0, 1)[None].float()
        inp = torch.nn.functional.interpolate(inp, size=resolution, mode="area")[0].permute(1, 2, 0).numpy()
        tiles = [inp]
        tiles += [v["rgb"].clamp(0, 1).numpy() for v in render_views(pipe.model, res.triplane, c2w, intr, resolution)]
        for i in range(views):
            if len(res.mesh.faces):
                rgba, _ = render_mesh(res.mesh, c2w[i], intr, resolution, ambient=0.5, ssaa=2)
                tiles.append(rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:]))
            else:
                tiles.append(np.ones((resolution, resolution, 3), np.float32))
        rows.append(np.concatenate(tiles, 1))
    return np.concatenate(rows, 0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--out", default="docs/images/default_checkpoint_examples.png")
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--resolution", type=int, default=128)
    a = p.parse_args(argv)
    import imageio.v3 as iio

    from .pipeline import Pipeline
    from .preprocess import InputError

    try:
        pipe = Pipeline.from_pretrained(a.checkpoint)
        grid = example_rows(pipe, a.images, a.views, a.resolution)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(a.out, (grid * 255 + 0.5).clip(0, 255).astype(np.uint8))
    print(f"wrote {a.out} ({len(a.images)} rows: input | {a.views} volume renders | {a.views} mesh renders)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
