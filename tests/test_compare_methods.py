"""tools/compare_methods.py: per-object wins counted with each metric's direction."""
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import compare_methods as cm  # noqa: E402


def _csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method", "uid", "status", "psnr", "chamfer"])
        w.writeheader()
        w.writerows(rows)


def test_wins_follow_the_metric_direction(tmp_path, capsys):
    p = tmp_path / "results.csv"
    _csv(p, [{"method": "a", "uid": "x", "status": "ok", "psnr": 10, "chamfer": 0.1},
             {"method": "b", "uid": "x", "status": "ok", "psnr": 12, "chamfer": 0.2},
             {"method": "a", "uid": "y", "status": "ok", "psnr": 15, "chamfer": 0.3},
             {"method": "b", "uid": "y", "status": "ok", "psnr": 14, "chamfer": 0.1},
             {"method": "b", "uid": "z", "status": "failed", "psnr": "", "chamfer": ""}])
    a, b = cm.load(p, "a"), cm.load(p, "b")
    assert cm.compare(a, b, "psnr") == {"objects": 2, "wins": 1, "share": 0.5, "mean_a": 12.5, "mean_b": 13.0}
    assert cm.compare(a, b, "chamfer")["wins"] == 1  # lower is better: y improves, x does not
    assert cm.main([str(p), "a", "b", "--metrics", "nosuch"]) == 2
    assert "no metric 'nosuch'" in capsys.readouterr().err
