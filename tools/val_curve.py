"""A run's curve on the whole val split: a markdown table and a plot from `lrm.training.validation --json` files.

    python -m lrm.training.export runs/x/checkpoints/step_500 --out runs/x/m_500     # each kept step
    python -m lrm.training.validation runs/x/m_500 --mesh-thresholds 8,14 --json runs/x/m_500/val.json
    python tools/val_curve.py 500=runs/x/m_500/val.json 1000=runs/x/m_1000/val.json \
        --baseline "stage 7=runs/x/val_start.json" --out docs/images/curve.png

Each point is STEP=JSON; a baseline is LABEL=JSON, drawn as a dashed line (e.g. the checkpoint the run started
from). The table has PSNR, mask IoU and the mesh silhouette IoU at every level the files share.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Tuple


def read_point(spec: str) -> Tuple[str, dict]:
    key, sep, path = spec.partition("=")
    if not sep or not key or not path:
        raise ValueError(f"expected KEY=FILE.json, got {spec!r}")
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read a validation result ({type(e).__name__})") from None
    if not isinstance(data, dict) or "psnr" not in data or "mask_iou" not in data:
        raise ValueError(f"{path}: not a `lrm.training.validation --json` result (no psnr / mask_iou)")
    return key, data


def shared_levels(results: List[dict]) -> List[str]:
    levels = None
    for r in results:
        keys = set((r.get("mesh_iou") or {}).keys())
        levels = keys if levels is None else levels & keys
    return sorted(levels or (), key=float)


def table(points: List[Tuple[int, dict]], baselines: List[Tuple[str, dict]]) -> str:
    levels = shared_levels([r for _, r in points + baselines])
    head = ["", "val PSNR (dB)", "val mask IoU"] + [f"mesh silhouette at {float(v):g}" for v in levels]
    rows = [head, ["---"] * len(head)]
    for label, r in [(b, r) for b, r in baselines] + [(f"step {s}", r) for s, r in points]:
        rows.append([label, f"{r['psnr']:.2f}", f"{r['mask_iou']:.3f}"] + [f"{r['mesh_iou'][v]:.3f}" for v in levels])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def plot(points: List[Tuple[int, dict]], baselines: List[Tuple[str, dict]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = shared_levels([r for _, r in points + baselines])
    steps = [s for s, _ in points]
    panels: List[Tuple[str, callable]] = [("val PSNR (dB)", lambda r: r["psnr"]),
                                          ("val mask IoU", lambda r: r["mask_iou"])]
    panels += [(f"mesh silhouette IoU at {float(v):g}", (lambda v: lambda r: r["mesh_iou"][v])(v)) for v in levels]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (name, get) in zip(axes[0], panels):
        ax.plot(steps, [get(r) for _, r in points], "o-", label="run")
        for i, (label, r) in enumerate(baselines):
            ax.axhline(get(r), ls="--", color=f"C{i + 1}", label=label)
        ax.set_xlabel("step")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("points", nargs="+", help="STEP=validation.json, one per scored checkpoint")
    p.add_argument("--baseline", action="append", default=[], help="LABEL=validation.json (a dashed line)")
    p.add_argument("--out", help="write the plot here (.png)")
    p.add_argument("--title", default="whole val split")
    args = p.parse_args(argv)
    try:
        points: Dict[int, dict] = {}
        for spec in args.points:
            key, data = read_point(spec)
            try:
                points[int(key)] = data
            except ValueError:
                raise ValueError(f"a point's key must be its step (an integer), got {key!r}") from None
        baselines = [read_point(spec) for spec in args.baseline]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ordered = sorted(points.items())
    print(table(ordered, baselines))
    if args.out:
        plot(ordered, baselines, Path(args.out), args.title)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
