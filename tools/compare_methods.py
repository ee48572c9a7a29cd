"""Per-object comparison of two methods in an evaluation run (``results.csv`` of ``python -m lrm.evaluate``):
the share of objects on which method B beats method A on each metric, and the mean differences.

    python tools/compare_methods.py runs/eval_refine/results.csv lrm lrm+sds [--metrics psnr,fscore@0.02,chamfer]
"""
from __future__ import annotations

import argparse
import csv
import sys

LOWER_IS_BETTER = {"chamfer"}


def load(path, method):
    rows = [r for r in csv.DictReader(open(path)) if r["method"] == method and r["status"] == "ok"]
    return {r["uid"]: r for r in rows}


def compare(a: dict, b: dict, metric: str):
    uids = sorted(set(a) & set(b))
    if uids and metric not in a[uids[0]]:
        raise KeyError(f"no metric {metric!r} in the results (columns: {', '.join(a[uids[0]])})")
    pairs = [(float(a[u][metric]), float(b[u][metric])) for u in uids if a[u][metric] and b[u][metric]]
    if not pairs:
        return None
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    wins = sum(sign * (y - x) > 0 for x, y in pairs)
    return {"objects": len(pairs), "wins": wins, "share": wins / len(pairs),
            "mean_a": sum(x for x, _ in pairs) / len(pairs), "mean_b": sum(y for _, y in pairs) / len(pairs)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results")
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--metrics", default="psnr,fscore@0.02,chamfer,volume_iou")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
