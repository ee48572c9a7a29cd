"""``python -m lrm.evaluate`` / ``lrm-evaluate``: evaluate methods on an eval set and write the report."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

EPILOG = """methods: lrm[:CHECKPOINT] (Pipeline; --set config=tiny for a random-weight model), meshes:DIR
(outside tools, one mesh per uid; aligned to the GT), baselines sphere, hull and the oracle bbox; refinement
lrm+ref / lrm+sds / sds (from scratch) [:CHECKPOINT]; multi-view mv+lrm and gt-mv+lrm (docs/evaluation.md).
Examples:
  python -m lrm.evaluate --eval-set dev --method lrm,sphere,hull,bbox,meshes:out/tool_meshes --out runs/eval
  python -m lrm.evaluate --eval-set dev --method lrm --set config=tiny --sweep mc_resolution=48,96
  python -m lrm.evaluate --eval-set data/eval/dev --method lrm+sds --skip-objects 10 --max-objects 10"""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lrm-evaluate", description=__doc__, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval-set", required=True, help="evaluation-set folder (e.g. data/eval/dev), or 'smoke' for the small built-in set")
    ap.add_argument("--method", required=True, help="NAME[,NAME...]; NAME may carry an argument: meshes:DIR, lrm:CKPT")
    ap.add_argument("--out", default=None, help="output folder (default runs/eval/<eval set name>)")
    ap.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                    help="evaluate each value of a method parameter (repeatable: the product is swept)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="fix a method parameter for every method that has it (repeatable)")
    ap.add_argument("--align", choices=["auto", "on", "off"], default="auto",
                    help="auto: align only methods whose frame is unknown (meshes:DIR); on: force for all")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per object and method (0 = none)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-objects", type=int, default=0, help="evaluate only the first N objects")
    ap.add_argument("--skip-objects", type=int, default=0,
                    help="leave out the first N objects (with --max-objects: objects N+1..N+M, e.g. a held-out window)")
    ap.add_argument("--retry-failed", action="store_true", help="rerun objects recorded as failed")
    ap.add_argument("--save-meshes", action="store_true", help="also write each (aligned) predicted mesh")
    ap.add_argument("--mesh-renderer", default=None, metavar="MODULE:FUNC",
                    help="mesh renderer for mesh-only methods, render_mesh(mesh, c2w, intrinsics, resolution) -> "
                         "(rgba, depth) (default: lrm.render.raster.render_mesh). Use the same renderer that "
                         "made the eval set's GT views")
    ap.add_argument("--quiet", action="store_true")
    return ap


def _kv(items, what):
    out = {}
    for it in items:
        if "=" not in it:
            raise ValueError(f"{what} must look like key=value, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip()] = v
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("interrupted (finished objects are saved; rerun to resume)", file=sys.stderr)
        return 130


def _run(args) -> int:
    from .evalset import EvalSetError, resolve_eval_set
    from .methods import MethodError, make_method
    from .report import markdown_table, summarize, write_report
    from .runner import RunOptions, expand_variants, parse_value, run

    def fail(msg: str) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return 2

    try:
        set_params = {k: parse_value(v) for k, v in _kv(args.set, "--set").items()}
        sweeps = {k: [parse_value(x) for x in v.split(",") if x != ""] for k, v in _kv(args.sweep, "--sweep").items()}
    except ValueError as e:
        return fail(str(e))
    if args.skip_objects < 0 or args.max_objects < 0:
        return fail("--skip-objects and --max-objects must be >= 0")
    specs = [s.strip() for s in args.method.split(",") if s.strip()]
    if not specs:
        return fail("--method is empty")
    try:
        for s in specs:  # unknown / unavailable names fail before any work
            make_method(s, **{k: v for k, v in set_params.items() if k in _defaults(s)})
        variants = expand_variants(specs, set_params, sweeps)
    except MethodError as e:
        return fail(str(e))
    try:
        es = resolve_eval_set(args.eval_set)
    except EvalSetError as e:
        return fail(str(e))
    if args.skip_objects and args.skip_objects >= len(es.uids):
        return fail(f"--skip-objects {args.skip_objects} leaves none of the eval set's {len(es.uids)} objects")
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return fail("--device cuda asked for but no CUDA device is available")
    mesh_renderer = None
    if args.mesh_renderer:
        import importlib

        mod, _, fn = args.mesh_renderer.partition(":")
        try:
            mesh_renderer = getattr(importlib.import_module(mod), fn or "render_mesh")
        except (ImportError, AttributeError) as e:
            return fail(f"--mesh-renderer {args.mesh_renderer}: {e}")
    out = Path(args.out or Path("runs") / "eval" / es.root.name)
    opts = RunOptions(out=out, align=args.align, timeout_s=args.timeout or None, device=device, seed=args.seed,
                      retry_failed=args.retry_failed, save_meshes=args.save_meshes, max_objects=args.max_objects,
                      skip_objects=args.skip_objects, mesh_renderer=mesh_renderer,
                      progress=(lambda m: None) if args.quiet else (lambda m: print(m, flush=True)))
    t = time.perf_counter()
    records = run(es, variants, opts)
    files = write_report(out, records, dirnames={v.name: v.dirname for v in variants})
    print()
    print(markdown_table(summarize(records)))
    print(f"\n{len(records)} records in {time.perf_counter() - t:.1f} s; report: {files['report']}")
    return 0


def _defaults(spec):
    from .methods import method_defaults

    return method_defaults(spec)
