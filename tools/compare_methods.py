"""Per-object comparison of two methods in an evaluation run: the share of objects on which method B beats
method A on each metric, and the means. RESULTS is a run folder of ``python -m lrm.evaluate`` (every record of every
method run into it, from ``objects/*/*.json``) or one run's ``results.csv``.

    python tools/compare_methods.py runs/eval_refine lrm lrm+sds [--metrics psnr,fscore@0.02,chamfer]
        [--plot docs/images/refine_quality_vs_time.png]     # every method of the run: mean quality vs seconds
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

LOWER_IS_BETTER = {"chamfer"}


def records(path):
    path = Path(path)
    if path.is_dir():
        return [json.loads(f.read_text()) for f in sorted(path.glob("objects/*/*.json"))]
    return list(csv.DictReader(open(path)))


def load(path, method):
    return {r["uid"]: r for r in records(path) if r["method"] == method and r["status"] == "ok"}


def compare(a: dict, b: dict, metric: str):
    uids = sorted(set(a) & set(b))
    if uids and not any(metric in a[u] or metric in b[u] for u in uids):
        raise KeyError(f"no metric {metric!r} in the results (e.g. {', '.join(list(a[uids[0]])[:12])})")
    pairs = [(float(a[u][metric]), float(b[u][metric])) for u in uids  # objects where both have it
             if a[u].get(metric) not in ("", None) and b[u].get(metric) not in ("", None)]
    if not pairs:
        return None
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    wins = sum(sign * (y - x) > 0 for x, y in pairs)
    return {"objects": len(pairs), "wins": wins, "share": wins / len(pairs),
            "mean_a": sum(x for x, _ in pairs) / len(pairs), "mean_b": sum(y for _, y in pairs) / len(pairs)}


def plot_quality_vs_time(path, out, metrics=("psnr", "fscore@0.02")) -> None:
    """Mean of each metric (empty meshes count as 0) against mean seconds per object, one point per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {}
    for r in records(path):
        if r["status"] == "ok":
            by.setdefault(r["method"], []).append(r)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.4), squeeze=False)
    for ax, k in zip(axes[0], metrics):
        for m, rs in sorted(by.items()):
            t = sum(float(r["time_s"]) for r in rs) / len(rs)
            v = sum(float(r.get(k) or 0.0) for r in rs) / len(rs)
            ax.scatter(t, v)
            ax.annotate(m, (t, v), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("seconds per object")
        ax.set_ylabel(k)
    fig.suptitle(f"{path}: mean quality against time")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results")
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--metrics", default="psnr,fscore@0.02,chamfer,volume_iou")
    ap.add_argument("--plot", default=None, help="also write a quality-vs-seconds plot of every method here")
    args = ap.parse_args(argv)
    a, b = load(args.results, args.a), load(args.results, args.b)
    if not a or not b:
        print(f"error: no ok records for {args.a if not a else args.b} in {args.results}", file=sys.stderr)
        return 2
    print(f"| metric | objects | {args.b} better | share | mean {args.a} | mean {args.b} |")
    print("|---|---|---|---|---|---|")
    for m in args.metrics.split(","):
        try:
            c = compare(a, b, m)
        except KeyError as e:
            print(f"error: {e.args[0]}", file=sys.stderr)
            return 2
        if c:
            print(f"| {m} | {c['objects']} | {c['wins']} | {c['share']:.0%} | {c['mean_a']:.4g} | {c['mean_b']:.4g} |")
    if args.plot:
        plot_quality_vs_time(args.results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
