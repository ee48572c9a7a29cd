"""tools/val_curve.py: a run's whole-val curve as a table and a plot from validation --json files."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("val_curve", ROOT / "tools" / "val_curve.py")
vc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vc)


def _result(path, psnr, iou, mesh):
    path.write_text(json.dumps({"objects": 3, "psnr": psnr, "mask_iou": iou, "mesh_iou": mesh, "per_object": []}))
    return path


def test_table_orders_steps_and_keeps_only_shared_levels(tmp_path, capsys):
    a = _result(tmp_path / "a.json", 15.0, 0.6, {"8.0": 0.61, "14.0": 0.62})
    b = _result(tmp_path / "b.json", 16.0, 0.7, {"8.0": 0.71, "14.0": 0.72, "20.0": 0.5})
    base = _result(tmp_path / "s.json", 14.0, 0.5, {"14.0": 0.55, "8.0": 0.51})
    out = tmp_path / "c.png"
    assert vc.main([f"1000={b}", f"500={a}", "--baseline", f"start={base}", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "|  | val PSNR (dB) | val mask IoU | mesh silhouette at 8 | mesh silhouette at 14 |"
    assert lines[2].startswith("| start | 14.00 | 0.500 | 0.510 | 0.550")
    assert lines[3].startswith("| step 500 | 15.00") and lines[4].startswith("| step 1000 | 16.00 | 0.700 | 0.710")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_specs_are_one_line_errors(tmp_path, capsys):
    junk = tmp_path / "j.json"
    junk.write_text('{"loss": 1}')
    good = _result(tmp_path / "g.json", 15.0, 0.6, {})
    for argv in ([str(good)], [f"x={good}"], [f"5={junk}"], [f"5={tmp_path / 'missing.json'}"]):
        assert vc.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1
