#!/usr/bin/env python
"""Training-step speed and memory on CPU: seconds/step and peak RSS for tiny and small at a fixed batch
(data loading excluded, as in shared/reference-figures.md), and trainer throughput with 1 vs 2 processes.

    python benchmarks/bench_train.py                      # tiny + small step table, 1 vs 2 processes (tiny)
    python benchmarks/bench_train.py --configs small --steps 5 --checkpoint-render
    python benchmarks/bench_train.py --configs small --proc-steps 0 --rounds 2 \
        --variants 'fp32:' 'bf16:train.mixed_precision=bf16' \
        'bf16+ckpt:train.mixed_precision=bf16,train.render.checkpoint_rays=1024'   # side by side, interleaved
    python benchmarks/bench_train.py --configs small --proc-steps 0 --peer-openlrm /tmp/openlrm_src
        # + OpenLRM's own step at (a) in each round, right after ours (benchmarks/peer_openlrm.py)

Each measurement runs in its own process (clean peak RSS). ``small`` is set to reference configuration (a):
224² input, ViT 384x6, transformer 512x6, 3x32x64² planes, 48+48 samples, 2 supervised views x 64x64 rays,
loss MSE + TV, AdamW, batch 1 object.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Reference figures (OpenLRM's own trainer on this kind of machine, 2 threads, fp32): shared/reference-figures.md
REFERENCE = {"small": {"s_per_step": 9.70, "peak_rss_gb": 3.93}}
PEER_CONFIG = "small"  # the config OpenLRM's own step (benchmarks/peer_openlrm.py) is measured beside

STEP_OVERRIDES = {
    "tiny": ["data.source=synthetic", "train.batch_size=1", "data.image_size=64", "data.num_views_target=2",
             "train.render.rays_per_view=512", "train.loss.tv=0.0"],
    "small": ["data.source=synthetic", "train.batch_size=1", "data.image_size=64", "data.num_views_target=2",
              "train.render.rays_per_view=4096", "train.loss.tv=0.01"],  # 2 views x 64x64 rays, MSE + TV
}


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # KiB on Linux


def module_timers(model):
    """Forward wall time per stage (encoder, transformer, upsampler, pixel plane, decoder calls) via hooks:
    (dict name -> [seconds, calls], remove())."""
    acc, handles = {}, []
    for name in ("encoder", "lift", "transformer", "upsampler", "pixel_plane", "decoder"):
        mod = getattr(model, name, None)
        if mod is None:
            continue
        acc[name] = [0.0, 0]

        def pre(_m, _a, name=name):
            acc[name].append(time.perf_counter())

        def post(_m, _a, _o, name=name):
            acc[name][0] += time.perf_counter() - acc[name].pop()
            acc[name][1] += 1

        handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    return acc, lambda: [h.remove() for h in handles]


def measure_step(name: str, steps: int, threads: int, extra, warmup: int = 1, profile: bool = False) -> dict:
    """In this process: median seconds of a full optimiser step (forward, render, losses, backward, AdamW), under
    bf16 autocast when the config's ``train.mixed_precision`` is bf16 (as the trainer does on CPU)."""
    import contextlib

    import torch

    from lrm.models import build_model
    from lrm.training.data import make_source
    from lrm.training.optim import make_optimizer
    from lrm.training.trainer import TrainStep, _step_generator, build_config, step_losses

    torch.set_num_threads(threads)
    cfg = build_config(name, STEP_OVERRIDES.get(name, []) + list(extra))
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    opt = make_optimizer(model, cfg.train)
    step = TrainStep(model, int(cfg.train.render.checkpoint_rays))
    batch = make_source(cfg, "train", 0, 1).get(0)  # fixed batch: data loading excluded
    rss_before = _rss_gb()
    bf16 = str(cfg.train.mixed_precision) == "bf16"
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def one(i):
        t0, c0 = time.perf_counter(), time.process_time()
        with autocast():
            terms = step_losses(step, batch, cfg.train, _step_generator(0, i, 0, 0, "cpu"))
        t1 = time.perf_counter()
        terms["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return t1 - t0, time.perf_counter() - t0, time.process_time() - c0

    times, fwd, cpu = [], [], []
    for i in range(steps + warmup):
        f, t, c = one(i)
        if i >= warmup:  # the first steps warm allocators and caches
            times.append(t)
            fwd.append(f)
            cpu.append(c)
    n_params = sum(p.numel() for p in model.parameters())
    out = {"config": name, "params_m": n_params / 1e6, "s_per_step": statistics.median(times),
           "forward_s": statistics.median(fwd), "cpu_s_per_step": statistics.median(cpu), "peak_rss_gb": _rss_gb(), "rss_after_build_gb": rss_before,
           "threads": threads, "steps": steps, "warmup": warmup, "mixed_precision": "bf16" if bf16 else "no",
           "extra": list(extra)}
    if profile:  # one more step: forward time per stage (hooks) and the top operators (forward + backward)
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        acc, remove = module_timers(model)
        with torch_profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            f, t, _ = one(steps + warmup)
        remove()
        out["profile"] = {"step_s": t, "forward_s": f, "stages_forward_s": {k: v[0] for k, v in acc.items()},
                          "decoder_calls": acc.get("decoder", [0, 0])[1],
                          "ops": prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18)}
    return out


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure_procs(nproc: int, steps: int, extra, threads: int = 0) -> dict:
    """Trainer throughput (objects/s, steady state) on tiny with nproc processes sharing the machine's cores."""
    out = Path(tempfile.mkdtemp(prefix=f"bench_train_{nproc}p_"))
    threads = threads or max(1, (os.cpu_count() or 2) // nproc)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    # the run folder is the last argument; everything before it is key=value overrides
    code = ("import json,sys\nfrom lrm.training.trainer import build_config, train\n"
            "cfg = build_config('tiny', sys.argv[2:-1], max_steps=int(sys.argv[1]))\n"
            "r = train(cfg, output_dir=sys.argv[-1])\n"
            "h, a = r['history'], r['accelerator']\n"
            "if a.is_main_process:\n"
            "    print('RESULT', json.dumps({'dt': h[-1]['time'] - h[1]['time'], 'steps': len(h) - 2,"
            " 'world': a.num_processes}))\n")
    script = out / "run.py"
    script.write_text(code)
    args = [str(steps), *STEP_OVERRIDES["tiny"], "train.progress=false", "train.val_every=0", "train.image_every=0",
            "train.ckpt_every=0", "train.log_every=1000", *extra, str(out / "run")]
    if nproc == 1:
        cmd = [sys.executable, str(script), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               str(_free_port()), str(script), *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    line = [l for l in r.stdout.splitlines() if l.startswith("RESULT")]
    if r.returncode or not line:
        raise RuntimeError(r.stderr[-3000:])
    res = json.loads(line[0][7:])
    res["objects_per_s"] = res["steps"] * res["world"] / res["dt"]
    res["s_per_step"] = res["dt"] / res["steps"]
    res["threads_per_proc"] = threads
    return res


def parse_variants(specs):
    """['label:k=v,k=v', ...] -> [(label, [k=v, ...])]; none given: one variant with no extra overrides."""
    if not specs:
        return [("", [])]
    out = []
    for spec in specs:
        label, _, rest = spec.partition(":")
        out.append((label or rest or "base", [kv for kv in rest.split(",") if kv]))
    return out


def merge_rounds(rs):
    """Several rounds of one (config, variant): median time per step and forward, the largest peak RSS."""
    out = dict(rs[0])
    out["s_per_step"] = statistics.median(r["s_per_step"] for r in rs)
    out["forward_s"] = statistics.median(r["forward_s"] for r in rs)
    out["peak_rss_gb"] = max(r["peak_rss_gb"] for r in rs)
    if all("cpu_s_per_step" in r for r in rs):
        out["cpu_s_per_step"] = statistics.median(r["cpu_s_per_step"] for r in rs)
    out["rounds"] = [{k: r.get(k) for k in ("round", "s_per_step", "forward_s", "cpu_s_per_step", "peak_rss_gb")}
                     for r in rs]
    return out


def same_window_ratio(ours_rounds, peer_rounds, key: str):
    """Median over rounds of ours[key] / peer[key], pairing each round with the peer's run of the same round (so a
    load change between rounds cancels); None when no round has both."""
    peer = {r["round"]: r[key] for r in peer_rounds if r.get("round") is not None and r.get(key)}
    ratios = [r[key] / peer[r["round"]] for r in ours_rounds if r.get("round") in peer and r.get(key) is not None]
    return statistics.median(ratios) if ratios else None


def ratio_cell(x) -> str:
    """A table cell for a ratio: '0.93x', or '-' when there is none."""
    return "-" if x is None else f"{x:.2f}x"


def _peer_module():
    """benchmarks/peer_openlrm.py, imported only when --peer-openlrm is given."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("peer_openlrm", Path(__file__).with_name("peer_openlrm.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["tiny", "small"])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--profile", action="store_true", help="one more step under torch.profiler: stage and operator table")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--proc-steps", type=int, default=12, help="trainer steps per run for 1 vs 2 processes (0: skip)")
    p.add_argument("--proc-threads", type=int, default=0,
                   help="torch threads per process in the 1-vs-2 runs (0: cores / processes)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child mode
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--variants", nargs="+", default=None, metavar="LABEL:KEY=V,KEY=V",
                   help="settings compared side by side (each config runs once per variant per round), e.g. "
                        "'fp32:' 'bf16:train.mixed_precision=bf16'")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds of the variants (medians reported)")
    p.add_argument("--peer-camera-embed-dim", type=int, default=1024,
                   help="OpenLRM's camera_embed_dim for the peer (its train-sample.yaml: 1024; ours at (a): 512)")
    p.add_argument("--peer-openlrm", default=None, metavar="DIR",
                   help="an OpenLRM checkout: in each round also run its own training step at (a) right after "
                        "config small (benchmarks/peer_openlrm.py) and print our rows relative to it")
    p.add_argument("overrides", nargs="*", help="extra key=value overrides for every run")
    a = p.parse_args()
    if a.one:
        print("RESULT " + json.dumps(measure_step(a.one, a.steps, a.threads, a.overrides, a.warmup, a.profile)))
        return
    peer = None
    if a.peer_openlrm:
        if PEER_CONFIG not in a.configs:
            print(f"error: --peer-openlrm compares with config {PEER_CONFIG}; add it to --configs", file=sys.stderr)
            sys.exit(2)
        peer = _peer_module()
        try:
            peer.check_import(a.peer_openlrm)
        except peer.PeerError as e:
            print(f"error: --peer-openlrm: {e}", file=sys.stderr)
            sys.exit(2)
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} cores, load average {load:.1f} at start; torch threads {a.threads}, fp32")
    variants = parse_variants(a.variants)
    runs, peer_runs = {}, []
    for k in range(max(a.rounds, 1)):
        for name in a.configs:
            for label, extra in variants:
                r = subprocess.run([sys.executable, __file__, "--one", name, "--steps", str(a.steps), "--threads",
                                    str(a.threads), "--warmup", str(a.warmup), *(["--profile"] if a.profile else []),
                                    *a.overrides, *extra], capture_output=True, text=True)
                line = [l for l in r.stdout.splitlines() if l.startswith("RESULT")]
                if r.returncode or not line:
                    print(f"{name} {label}: failed\n{r.stderr[-2000:]}")
                    continue
                runs.setdefault((name, label), []).append({**json.loads(line[0][7:]), "variant": label, "round": k})
            if peer is not None and name == PEER_CONFIG:  # same window as our variants of this round
                try:
                    peer_runs.append({**peer.run_peer(a.peer_openlrm, a.steps, a.warmup, a.threads,
                                                      ["--camera-embed-dim", str(a.peer_camera_embed_dim)]),
                                      "round": k})
                except peer.PeerError as e:
                    print(f"openlrm (peer): failed\n{e}")
    results = [merge_rounds(rs) for rs in runs.values()]
    peer_result = merge_rounds(peer_runs) if peer_runs else None
    print("\n| config | variant | precision | params | s/step (median) | forward s | CPU s/step | peak RSS | "
          "reference s/step | reference RSS | time vs first variant | RSS vs first variant | "
          "time vs OpenLRM (same rounds) | CPU time vs OpenLRM | RSS vs OpenLRM |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    first = {}
    for r in results + ([peer_result] if peer_result else []):
        ref = REFERENCE.get(r["config"], {})
        is_peer = r is peer_result
        f = r if is_peer else first.setdefault(r["config"], r)
        vs_peer = ["-", "-", "-"]
        if peer_result is not None and r["config"] == peer_result["config"]:
            vs_peer = [ratio_cell(same_window_ratio(r["rounds"], peer_result["rounds"], key))
                       for key in ("s_per_step", "cpu_s_per_step", "peak_rss_gb")]
        cpu = f"{r['cpu_s_per_step']:.2f}" if "cpu_s_per_step" in r else "-"
        print(f"| {r['config']} | {r['variant']} | {r['mixed_precision']} | {r['params_m']:.1f} M | "
              f"{r['s_per_step']:.2f} | {r['forward_s']:.2f} | {cpu} | {r['peak_rss_gb']:.2f} GB | "
              f"{ref.get('s_per_step', '-')} | {ref.get('peak_rss_gb', '-')} GB | "
              f"{'-' if is_peer else ratio_cell(r['s_per_step'] / f['s_per_step'])} | "
              f"{'-' if is_peer else ratio_cell(r['peak_rss_gb'] / f['peak_rss_gb'])} | {' | '.join(vs_peer)} |")
    for r in results:
        if "profile" in r:
            pr = r["profile"]
            stages = ", ".join(f"{k} {v:.2f} s" for k, v in pr["stages_forward_s"].items())
            print(f"\n{r['config']} {r['variant']} profiled step: {pr['step_s']:.2f} s (forward {pr['forward_s']:.2f} s; {stages}; "
                  f"{pr['decoder_calls']} decoder calls)\n{pr['ops']}")
    procs = []
    if a.proc_steps > 0:
        for n in (1, 2):
            try:
                procs.append(measure_procs(n, a.proc_steps, a.overrides, a.proc_threads))
            except RuntimeError as e:
                print(f"{n} processes: failed\n{e}")
        print("\n| processes | threads each | s/step | objects/s (tiny, batch 1 per process) |")
        print("|---|---|---|---|")
        for r in procs:
            print(f"| {r['world']} | {r['threads_per_proc']} | {r['s_per_step']:.3f} | {r['objects_per_s']:.2f} |")
    print(f"\nload average at end: {os.getloadavg()[0]:.1f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"steps": results, "procs": procs, "peer_openlrm": peer_result}, indent=1))


if __name__ == "__main__":
    main()
