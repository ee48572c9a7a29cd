"""Plot a run's tensorboard scalars (loss terms, validation PSNR and mask IoU) to one PNG.

    python -m lrm.training.curves runs/default --out docs/images/default_curves.png

Reads every event file under ``RUN/tb`` (resumed runs write several); later files win for repeated steps.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

PANELS = [("loss/total", "training loss (total)"), ("loss/rgb", "RGB MSE"), ("val/psnr", "validation PSNR (dB)"),
          ("val/mask_iou", "validation mask IoU")]


def read_scalars(run: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted((run / "tb").rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no tensorboard event files under {run / 'tb'}")
    series: dict = {}
    for f in files:
        ea = EventAccumulator(str(f))
        ea.Reload()
        for tag in ea.Tags().get("scalars", []):
            d = series.setdefault(tag, {})
            for ev in ea.Scalars(tag):
                d[ev.step] = ev.value
    return {k: sorted(v.items()) for k, v in series.items()}


def plot(series: dict, out: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.2))
    for ax, (tag, label) in zip(axes, PANELS):
        pts = series.get(tag, [])
        if pts:
            x, y = np.array(pts).T
            ax.plot(x, y, lw=0.8, alpha=0.4 if tag.startswith("loss") else 1.0, marker="" if tag.startswith("loss") else ".")
            if tag.startswith("loss") and len(y) > 20:
                k = max(5, len(y) // 50)
                ax.plot(x[k - 1:], np.convolve(y, np.ones(k) / k, mode="valid"), lw=1.5)
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--title", default="")
    a = ap.parse_args(argv)
    try:
        series = read_scalars(a.run)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = plot(series, a.out or a.run / "curves.png", a.title)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
