"""results.csv, report.md and its figures from the per-object records of a run.

Figures (matplotlib, Agg): ``metrics.png`` (bars per method, mean ± std), ``time_vs_quality.png`` (wall time per
object against F@0.02 and PSNR), ``sweep_<key>.png`` (metric against a swept parameter, one line per method) and
``grid.png`` (input / GT / each method's renders for a few objects).
"""
from __future__ import annotations

import csv
import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

#: (key, label, higher is better)
TABLE_METRICS = [
    ("chamfer", "CD ↓", False),
    ("fscore@0.02", "F@0.02 ↑", True),
    ("fscore@0.05", "F@0.05 ↑", True),
    ("fscore@0.1", "F@0.1 ↑", True),
    ("volume_iou", "IoU ↑", True),
    ("psnr", "PSNR ↑", True),
    ("ssim", "SSIM ↑", True),
    ("mask_iou", "mask IoU ↑", True),
    ("lpips", "LPIPS ↓", False),
    ("time_s", "time s", False),
    ("external_time_s", "tool time s", False),
    ("peak_mem_mb", "peak MB", False),
    ("mem_increase_mb", "+MB", False),
]
CSV_COLUMNS = ["method", "base_method", "params", "uid", "status", "error", "oracle", "aligned", "chamfer",
               "chamfer_pred_to_gt", "chamfer_gt_to_pred", "fscore@0.02", "fscore@0.05", "fscore@0.1", "volume_iou",
               "psnr", "ssim", "mask_iou", "lpips", "time_s", "external_time_s", "setup_s", "align_s", "render_s",
               "peak_mem_mb", "mem_increase_mb", "mem_kind", "empty_mesh", "device", "inside_test", "render_source", "align_chamfer", "align_scale"]


def _val(r: dict, k: str) -> Optional[float]:
    v = r.get(k)
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(float(v)) else None


def write_csv(records: Sequence[dict], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in records:
            row = dict(r)
            row["params"] = json.dumps(r.get("params", {}), sort_keys=True)
            w.writerow(row)
    return path


def summarize(records: Sequence[dict]) -> "OrderedDict[str, dict]":
    """method -> {n, n_ok, failed uids, per metric (mean, std, count)} in first-seen order."""
    out: "OrderedDict[str, dict]" = OrderedDict()
    for r in records:
        s = out.setdefault(r["method"], {"n": 0, "n_ok": 0, "failed": [], "values": {}, "oracle": False,
                                         "aligned": False, "base_method": r.get("base_method"),
                                         "sweep": r.get("sweep") or {}})
        s["n"] += 1
        s["oracle"] |= bool(r.get("oracle"))
        if r.get("status") != "ok":
            s["failed"].append(r["uid"])
            continue
        s["n_ok"] += 1
        s["aligned"] |= bool(r.get("aligned"))
        s["n_empty"] = s.get("n_empty", 0) + bool(r.get("empty_mesh"))
        for k, _, _ in TABLE_METRICS:
            v = _val(r, k)
            if v is not None:
                s["values"].setdefault(k, []).append(v)
    for s in out.values():
        s["stats"] = {k: (float(np.mean(v)), float(np.std(v)), len(v)) for k, v in s["values"].items()}
    return out


def _fmt(k: str, mean: float, std: float) -> str:
    if k in ("chamfer",):
        return f"{mean:.4f} ± {std:.4f}"
    if k in ("psnr",):
        return f"{mean:.2f} ± {std:.2f}"
    if k in ("time_s", "external_time_s"):
        return f"{mean:.2f} ± {std:.2f}"
    if k in ("peak_mem_mb", "mem_increase_mb"):
        return f"{mean:.0f} ± {std:.0f}"
    return f"{mean:.3f} ± {std:.3f}"


def markdown_table(summary: "OrderedDict[str, dict]") -> str:
    cols = [(k, lab) for k, lab, _ in TABLE_METRICS if any(k in s["stats"] for s in summary.values())]
    head = "| method | ok/n | " + " | ".join(lab for _, lab in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    for name, s in summary.items():
        tag = name + (" (oracle)" if s["oracle"] else "") + (" (aligned)" if s["aligned"] else "")
        cells = []
        for k, _ in cols:
            st = s["stats"].get(k)
            cells.append(_fmt(k, st[0], st[1]) if st else "–")
        lines.append(f"| {tag} | {s['n_ok']}/{s['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metric_bars(summary, path: Path) -> Optional[Path]:
    keys = [(k, lab) for k, lab, _ in TABLE_METRICS
            if k not in ("time_s", "external_time_s", "peak_mem_mb", "mem_increase_mb") and any(k in s["stats"] for s in summary.values())]
    if not keys:
        return None
    plt = _plt()
    names = list(summary)
    ncol = min(4, len(keys))
    nrow = math.ceil(len(keys) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.8 * nrow), squeeze=False)
    for ax, (k, lab) in zip(axes.flat, keys):
        m = [summary[n]["stats"].get(k, (np.nan, 0, 0))[0] for n in names]
        e = [summary[n]["stats"].get(k, (np.nan, 0, 0))[1] for n in names]
        ax.bar(range(len(names)), m, yerr=e, color=[f"C{i % 10}" for i in range(len(names))], capsize=3)
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=7)
        ax.set_title(lab, fontsize=9)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_time_vs_quality(records, path: Path) -> Optional[Path]:
    ok = [r for r in records if r.get("status") == "ok" and _val(r, "time_s") is not None]
    if not ok:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    names = list(OrderedDict.fromkeys(r["method"] for r in ok))
    handles = []
    for ax, (k, lab) in zip(axes, [("fscore@0.02", "F@0.02"), ("psnr", "PSNR (dB)")]):
        handles = []
        for i, n in enumerate(names):
            rs = [r for r in ok if r["method"] == n and _val(r, k) is not None]
            t = [max(r.get("external_time_s") or r["time_s"], 1e-4) for r in rs]
            handles.append(ax.scatter(t, [r[k] for r in rs], color=f"C{i % 10}", s=18))
            if rs:
                ax.scatter([np.mean(t)], [np.mean([r[k] for r in rs])], color=f"C{i % 10}", marker="*", s=140,
                           edgecolor="k")
        ax.set_xscale("log")
        ax.set_xlabel("wall time per object (s, log)")
        ax.set_ylabel(lab)
    axes[1].legend(handles, names, fontsize=7, loc="best")
    fig.suptitle("time vs quality (dots: objects, stars: means)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sweeps(summary, out: Path) -> List[Path]:
    by_key: Dict[str, Dict[str, list]] = {}
    for name, s in summary.items():
        for k, v in (s["sweep"] or {}).items():
            base = name.split("[", 1)[0]
            by_key.setdefault(k, {}).setdefault(base, []).append((v, s))
    paths = []
    for key, bases in by_key.items():
        plt = _plt()
        metrics = [("chamfer", "CD ↓"), ("fscore@0.02", "F@0.02 ↑"), ("volume_iou", "IoU ↑"), ("psnr", "PSNR ↑"),
                   ("time_s", "time s")]
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.0 * len(metrics), 2.8))
        handles = []
        for ax, (m, lab) in zip(axes, metrics):
            handles = []
            for i, (base, pts) in enumerate(bases.items()):
                pts = sorted(pts, key=lambda x: (isinstance(x[0], str), x[0]))
                xs = [str(v) for v, _ in pts]
                ys = [s["stats"].get(m, (np.nan, 0, 0))[0] for _, s in pts]
                es = [s["stats"].get(m, (np.nan, 0, 0))[1] for _, s in pts]
                handles.append(ax.errorbar(range(len(xs)), ys, yerr=es, marker="o", capsize=3, color=f"C{i % 10}"))
                ax.set_xticks(range(len(xs)), xs)
            ax.set_xlabel(key)
            ax.set_title(lab, fontsize=9)
        axes[0].legend(handles, list(bases), fontsize=7)
        fig.tight_layout()
        p = out / f"sweep_{''.join(c if c.isalnum() else '_' for c in key)}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def image_grid(out: Path, methods: Sequence[str], uids: Sequence[str], dirnames: Dict[str, str],
               path: Path, n_objects: int = 3) -> Optional[Path]:
    """Rows: objects; columns: input, GT, each method (a strip of the saved novel views, first one shown)."""
    import imageio

    from .runner import variant_dirname

    uids = [u for u in uids if (out / "renders" / "_gt" / f"{u}.png").is_file()][:n_objects]
    if not uids:
        return None
    plt = _plt()
    cols = ["input", "GT"] + list(methods)
    fig, axes = plt.subplots(len(uids), len(cols), figsize=(2.6 * len(cols), 1.55 * len(uids) + 0.4), squeeze=False)
    for i, u in enumerate(uids):
        gt = imageio.imread(out / "renders" / "_gt" / f"{u}.png")
        h = gt.shape[0]
        for j, c in enumerate(cols):
            ax = axes[i, j]
            ax.set_xticks([]), ax.set_yticks([])
            if c == "input":
                img = imageio.imread(out / "renders" / "_gt" / f"{u}_input.png")
            elif c == "GT":
                img = gt
            else:
                p = out / "renders" / (dirnames.get(c) or variant_dirname(c)) / f"{u}.png"
                img = imageio.imread(p) if p.is_file() else np.full((h, 2 * h, 3), 235, np.uint8)
            ax.imshow(img[:, : 2 * h] if c != "input" else img)  # first two saved views
            if i == 0:
                ax.set_title(c, fontsize=8)
            if j == 0:
                ax.set_ylabel(u, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------ report
def write_report(out: Path, records: Sequence[dict], run_info: Optional[dict] = None,
                 dirnames: Optional[Dict[str, str]] = None) -> Dict[str, Path]:
    out = Path(out)
    run_info = run_info or (json.loads((out / "run.json").read_text()) if (out / "run.json").is_file() else {})
    files = {"csv": write_csv(records, out / "results.csv")}
    summary = summarize(records)
    dirnames = dirnames or {}
    figs = {"metrics": plot_metric_bars(summary, out / "metrics.png"),
            "time_vs_quality": plot_time_vs_quality(records, out / "time_vs_quality.png")}
    for p in plot_sweeps(summary, out):
        figs[p.stem] = p
    figs["grid"] = image_grid(out, list(summary), run_info.get("objects") or sorted({r["uid"] for r in records}),
                              dirnames, out / "grid.png")
    proto = run_info.get("protocol", {})
    devices = sorted({r.get("device") for r in records if r.get("device")})
    lpips_notes = sorted({r.get("lpips_note") for r in records if r.get("lpips_note")})
    L = ["# Evaluation report", ""]
    L.append(f"Eval set: `{run_info.get('eval_set', '?')}` — {len(run_info.get('objects', []))} objects. "
             f"Device: {', '.join(devices) or '?'}.")
    if proto:
        L.append(f"Protocol: {proto.get('n_surface_samples')} surface samples (seed {proto.get('sample_seed')}), "
                 f"F-score τ = {proto.get('fscore_taus')}, volume IoU {proto.get('iou_resolution')}³ over "
                 f"[-{proto.get('radius')}, {proto.get('radius')}]³ (winding number ≥ 0.5), "
                 f"{proto.get('n_views')} novel views at {proto.get('resolution')}² "
                 f"(elevations {proto.get('elevations_deg')}°, every {proto.get('azimuth_step_deg')}° azimuth), "
                 f"white background. Alignment: `{run_info.get('align', 'auto')}` "
                 "(auto = only for methods whose frame is unknown).")
    L += ["", "## Results (mean ± std over objects that succeeded)", "", markdown_table(summary), ""]
    L.append("Lead with **F@0.02** and **Chamfer**: at τ = 0.05 / 0.1 even the GT's bounding box (`bbox`, an oracle "
             "that reads the GT) scores high on box-like objects. `sphere` and `hull` are the calibration floor "
             "from the single input view. Time is the method's wall time per object (image → mesh/renderer; "
             "alignment and metric rendering excluded); memory is the process peak RSS on CPU or "
             "`torch.cuda.max_memory_allocated` on GPU.")
    empties = [f"`{n}` on {s['n_empty']}/{s['n_ok']}" for n, s in summary.items() if s.get("n_empty")]
    if empties:
        L.append("Empty predictions (no surface; F-scores and IoU count as 0, Chamfer is left out of the mean): "
                 + ", ".join(empties) + ".")
    L.append("`tool time s` is the time an outside tool reported for itself (`timings.json`); `time s` for "
             "`meshes:` methods is only loading. `peak MB` is the process's peak during the method (it includes "
             "whatever earlier methods left loaded), `+MB` the increase over the method's start.")
    devs = OrderedDict()
    for r in records:
        d = (r.get("info") or {}).get("protocol_deviation") if isinstance(r.get("info"), dict) else None
        if d:
            devs.setdefault(r["method"], d)
    if devs:
        L.append("**Protocol deviations**: " + "; ".join(f"`{n}`: {d}" for n, d in devs.items()) + ".")
    if lpips_notes:
        L.append(f"LPIPS: {'; '.join(lpips_notes)}.")
    failed = {n: s["failed"] for n, s in summary.items() if s["failed"]}
    if failed:
        L += ["", "## Failures", ""]
        errs = {(r["method"], r["uid"]): r.get("error", "") for r in records if r.get("status") != "ok"}
        for n, uids in failed.items():
            for u in uids:
                L.append(f"- `{n}` / `{u}`: {errs.get((n, u), '')}")
    L += ["", "## Figures", ""]
    for name, p in figs.items():
        if p is not None:
            L.append(f"![{name}]({Path(p).name})")
            L.append("")
    L.append("Per-object numbers: `results.csv`; per-object JSON (incl. errors, alignment transforms, stage timings): "
             "`objects/<method>/<uid>.json`.")
    (out / "report.md").write_text("\n".join(L) + "\n")
    files["report"] = out / "report.md"
    files.update({k: v for k, v in figs.items() if v is not None})
    return files
