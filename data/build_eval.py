#!/usr/bin/env python
"""Dev evaluation set of package-shipped real objects (placeholder; writer below)."""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def eval_objects(num=None):
    """Real package-shipped objects with GT meshes: pybullet textured, pymeshlab, assimp test models, CGAL."""
    from data.sources import get_source

    out = []
    for name, kw in (("pybullet", {"random_shapes": False, "only": None}), ("pymeshlab", {}), ("assimp", {}), ("cgal", {})):
        mod = get_source(name)
        if not mod.available()[0]:
            continue
        if name == "pybullet":
            kw["only"] = mod.TEXTURED
        out.extend(mod.objects(**kw))
    return out[:num] if num is not None else out


def eval_uids():
    return {o.uid for o in eval_objects()}
