"""benchmarks/bench_train.py's same-window comparison with OpenLRM (--peer-openlrm): the ratio helper and the CLI's
refusal of a bad checkout. Nothing here needs OpenLRM."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench_train = _load("bench_train")
peer_openlrm = _load("peer_openlrm")


def _rounds(values):
    return [{"round": k, "s_per_step": v, "peak_rss_gb": 1.0} for k, v in values.items()]


def test_same_window_ratio_pairs_runs_of_the_same_round():
    # load changes between rounds: per-round ratios are all 0.5, the ratio of the medians would be 30/30 = 1.0
    ours, peer = _rounds({0: 10.0, 1: 40.0, 2: 30.0}), _rounds({0: 20.0, 1: 80.0, 2: 60.0})
    peer[2]["s_per_step"] = 30.0  # round 2 the peer was as slow as ours: ratios 0.5, 0.5, 1.0
    assert bench_train.same_window_ratio(ours, peer, "s_per_step") == pytest.approx(0.5)
    assert bench_train.same_window_ratio(ours, peer[:1], "s_per_step") == pytest.approx(0.5)  # round 0 only
    assert bench_train.same_window_ratio(ours[2:], peer[:2], "s_per_step") is None  # no round in common
    assert bench_train.ratio_cell(None) == "-"
    assert bench_train.ratio_cell(0.934) == "0.93x"


def test_merge_rounds_keeps_round_indices_for_the_ratio():
    rs = [{"config": "small", "variant": "", "s_per_step": s, "forward_s": 1.0, "peak_rss_gb": 2.0, "round": k}
          for k, s in enumerate([3.0, 1.0, 2.0])]
    merged = bench_train.merge_rounds(rs)
    assert merged["s_per_step"] == 2.0
    assert [r["round"] for r in merged["rounds"]] == [0, 1, 2]


def test_check_dir_wants_an_openlrm_checkout(tmp_path):
    with pytest.raises(peer_openlrm.PeerError, match="not a directory"):
        peer_openlrm.check_dir(tmp_path / "missing")
    with pytest.raises(peer_openlrm.PeerError, match="not an OpenLRM checkout"):
        peer_openlrm.check_dir(tmp_path)
    f = tmp_path / peer_openlrm.MODEL_FILE
    f.parent.mkdir(parents=True)
    f.write_text("")
    assert peer_openlrm.check_dir(tmp_path) == tmp_path.resolve()


@pytest.mark.parametrize("args, message", [
    (["--configs", "small", "--peer-openlrm", "{missing}"], "not a directory"),
    (["--configs", "small", "--peer-openlrm", "{tmp}"], "not an OpenLRM checkout"),
    (["--configs", "tiny", "--peer-openlrm", "{tmp}"], "add it to --configs"),
])
def test_bench_train_refuses_a_bad_peer_before_measuring(tmp_path, args, message):
    args = [x.format(missing=tmp_path / "missing", tmp=tmp_path) for x in args]
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--proc-steps", "0", *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "| config |" not in r.stdout  # nothing measured
