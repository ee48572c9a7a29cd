"""Debian ``assimp-testmodels``: a curated list of real test models (glTF/OBJ) that trimesh reads:
duck, Wuson, Cesium milk truck, 2-cylinder engine, textured box, teapots, spider... Many files in the
package are deliberately broken parser tests, so only a fixed list is used. Licence: BSD-3-clause
(Debian copyright of assimp); individual sample models keep their authors' terms (see the package).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import functools
import os

from . import DEFAULT_CACHE, SourceObject, file_loader, load_parts, safe_uid

NAME = "assimp"
LICENCE = "BSD-3-clause (Debian assimp-testmodels)"
ROOT = Path("/usr/share/assimp/models")

#: (relative path, up axis); glTF is +Y up, these OBJ/PLY/STL files too unless noted
CANDIDATES = [
    ("glTF/CesiumMilkTruck/CesiumMilkTruck.gltf", "y"),  # glTF 1: converted with `assimp export`
    ("glTF2/2CylinderEngine-glTF-Binary/2CylinderEngine.glb", "y"),
    ("glTF2/BoxTextured-glTF/BoxTextured.gltf", "y"),
    ("OBJ/spider.obj", "y"),
    ("OBJ/WusonOBJ.obj", "y"),
    ("OBJ/regr01.obj", "y"),
    ("STL/sphereWithHole.stl", "z"),
    ("Collada/duck.dae", "y"),
    ("Collada/teapots.DAE", "y"),
]


def load_via_assimp(path: str, cache_dir: str, up: str):
    from .flightgear import convert

    return load_parts(str(convert(path, cache_dir)), None, up)


def available():
    return ROOT.is_dir(), "apt-get install assimp-testmodels"


def objects(num: Optional[int] = None, **_) -> Iterator[SourceObject]:
    if not ROOT.is_dir():
        return
    n = 0
    seen = set()
    for rel, up in CANDIDATES:
        p = ROOT / rel
        if not p.is_file() or p.suffix.lower() == ".x":
            continue
        stem = p.stem.lower()
        if stem in seen:  # the same model in several formats: keep the first
            continue
        seen.add(stem)
        if num is not None and n >= num:
            return
        n += 1
        uid = safe_uid("assimp", p.stem)
        if "glTF/" in rel:  # glTF 1.0: trimesh reads only glTF 2
            cache = Path(os.environ.get("LRM_DATA_CACHE", DEFAULT_CACHE)) / "assimp" / uid
            loader = functools.partial(load_via_assimp, str(p), str(cache), up)
        else:
            loader = file_loader(p, None, up)
        yield SourceObject(uid, NAME, LICENCE, loader, {"path": rel})
