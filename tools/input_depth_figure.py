"""A picture of what the pixel plane knows about depth: for the first val objects, the input view, its true depth
offsets on the pixel plane's grid (the ``train.loss.input_depth`` target) and the model's channel 3, on one colour
scale (cube radii, nearer = darker), with the L1 per object in the title.

    OMP_NUM_THREADS=1 python tools/input_depth_figure.py MODEL [MODEL2 ...] --out docs/images/input_depth.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="exported model folders (pixel plane on)")
    ap.add_argument("--data", default="data/shards/default")
    ap.add_argument("--limit", type=int, default=6)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lrm.checkpoint import CheckpointError, load_checkpoint
    from lrm.data import make_loader
    from lrm.training.lrm_task import input_depth_targets
    from lrm.training.losses import input_depth_l1

    out = Path(a.out)
    if out.exists():
        print(f"error: {out} exists; remove it or pick another --out", file=sys.stderr)
        return 2
    try:
        models = [load_checkpoint(m)[0].eval() for m in a.models]
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if any(m.pixel_plane is None for m in models):
        print("error: every model needs the pixel plane (model.pixel_plane.enabled)", file=sys.stderr)
        return 2
    torch.manual_seed(1234)  # the views lrm.training.validation draws
    size = int(models[0].cfg.encoder.image_size)
    loader = make_loader(a.data, num_views_target=1, image_size=size, batch_size=1, num_workers=0, shuffle=False,
                         seed=1234, split="val", background="white", repeat=False, extras={"input_depth": True})
    cols = 2 + len(models)
    fig, axes = plt.subplots(a.limit, cols, figsize=(2.2 * cols, 2.2 * a.limit), squeeze=False)
    n = 0
    for b in loader:
        if n >= a.limit:
            break
        row = axes[n]
        row[0].imshow(b["input_images"][0, 0].permute(1, 2, 0).clamp(0, 1).numpy())
        row[0].set_title("input", fontsize=8)
        for k, m in enumerate(models):
            with torch.no_grad():
                tri = m(b["input_images"], b["input_cameras"])
            t = input_depth_targets(b, tri, m.cfg)
            (off, w), pred = t["input_depth"], t["predicted_input_depth"]
            fg = (w[0] > 0.5).numpy()
            lo, hi = float(off[0][w[0] > 0.5].min()), float(off[0][w[0] > 0.5].max())
            if k == 0:
                row[1].imshow(torch.where(w[0] > 0.5, off[0], torch.nan).numpy(), vmin=lo - 0.1, vmax=hi + 0.1,
                              cmap="viridis")
                row[1].set_title("true depth offset", fontsize=8)
            row[2 + k].imshow(torch.where(torch.from_numpy(fg), pred[0], torch.nan).numpy(), vmin=lo - 0.1,
                              vmax=hi + 0.1, cmap="viridis")
            row[2 + k].set_title(f"{Path(a.models[k]).name}: L1 {float(input_depth_l1(pred, off, w)):.3f}", fontsize=8)
        for ax in row:
            ax.axis("off")
        n += 1
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp" + out.suffix)
    fig.savefig(tmp, dpi=80)
    tmp.replace(out)
    print(f"wrote {out} ({n} val objects)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
