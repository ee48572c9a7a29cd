"""Debian ``libcgal-demo``: dense ``.off`` scans shipped inside ``/usr/share/doc/libcgal-dev/data.tar.gz``
(bunny, armadillo, elephant, dragon, camel, cow, ...). Geometry only: rendered with a neutral grey (the
dataset builder does not invent colours for real scans). A curated list of real shapes (not the
parser/unit-test meshes), each rotated to +Z up (``Y_UP``). Licence: CGAL is GPL-3+/LGPL-3+ (see the package's copyright file).
"""
from __future__ import annotations

import functools
import io
import tarfile
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import trimesh

from . import SourceObject, load_parts, safe_uid

NAME = "cgal"
LICENCE = "GPL-3+/LGPL-3+ (CGAL, Debian libcgal-demo)"
ARCHIVE = Path("/usr/share/doc/libcgal-dev/data.tar.gz")
CURATED = (
    "armadillo", "bear", "bull", "bunny00", "cactus", "camel", "ChineseDragon-10kv", "cow", "dino",
    "diplodocus", "dragknob", "elephant", "elk", "fandisk", "femur", "hand", "head", "helmet", "homer",
    "knot1", "lion", "lion-head", "man", "mannequin-devil", "mushroom", "nefertiti", "pig", "pinion",
    "rotor", "spool", "triceratops", "turbine", "anchor", "blade", "bones", "couplingdown", "joint",
)

#: scans stored +Y up (checked visually: upright after rotating +Y to +Z); the rest are +Z up or symmetric
Y_UP = {"armadillo", "bear", "bull", "bunny00", "cactus", "camel", "ChineseDragon-10kv", "cow", "diplodocus",
        "elephant", "elk", "head", "homer", "lion", "nefertiti", "pig", "triceratops"}


def available():
    return ARCHIVE.is_file(), "apt-get install libcgal-demo"


def load(name: str):
    with tarfile.open(ARCHIVE) as tf:
        data = tf.extractfile(f"data/meshes/{name}.off").read()
    parts = load_parts(data, "off", "y" if name in Y_UP else "z")
    for p in parts:
        p.visual = trimesh.visual.ColorVisuals(p, face_colors=np.tile([185, 185, 185, 255], (len(p.faces), 1)))
    return parts


def objects(num: Optional[int] = None, **_) -> Iterator[SourceObject]:
    if not ARCHIVE.is_file():
        return
    with tarfile.open(ARCHIVE) as tf:
        names = {Path(n).stem for n in tf.getnames() if n.startswith("data/meshes/") and n.endswith(".off")}
    n = 0
    for name in CURATED:
        if name not in names:
            continue
        if num is not None and n >= num:
            return
        n += 1
        yield SourceObject(safe_uid("cgal", name), NAME, LICENCE, functools.partial(load, name), {"file": f"{name}.off"})
