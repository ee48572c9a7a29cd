"""Meshes shipped by the pip package ``pybullet`` (``pybullet_data``).

* ``random_urdfs/NNN/NNN.obj``: ~1000 random untextured shapes; each gets a seeded random colour or
  procedural texture (uid ``pybullet-rand-NNN``).
* A few named objects, textured where the package ships a texture (duck, soccer ball, textured torus,
  tray, ...); uid ``pybullet-<name>``; these also go to the dev eval set.
Licence: pybullet is zlib-licensed; the package states no separate licence for its data files, so
``zlib (pybullet_data)`` is recorded.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from . import SourceObject, load_parts
from .textures import decorate

NAME = "pybullet"
LICENCE = "zlib (pybullet_data)"

#: name -> (relative path, up axis)
NAMED = {
    "duck": ("duck.obj", "y"),
    "soccerball": ("soccerball.obj", "z"),
    "torus_textured": ("torus/torus_textured.obj", "z"),
    "textured_sphere": ("textured_sphere_smooth.obj", "z"),
    "tray": ("tray/tray_textured.obj", "z"),
    "table": ("table/table.obj", "z"),
    "table_square": ("table_square/table.obj", "z"),
    "mug": ("objects/mug.obj", "z"),
    "lego": ("lego/lego.obj", "z"),
    "jenga": ("jenga/jenga.obj", "z"),
    "domino": ("domino/domino.obj", "z"),
    "bunny": ("bunny.obj", "z"),
    "cube_textured": ("cube.obj", "z"),
    "shape_sorter": ("toys/shape_sorter.obj", "z"),
    "teddy": ("teddy2_VHACD_CHs.obj", "y"),
}
#: the textured ones (go to the dev eval set)
TEXTURED = ("duck", "soccerball", "torus_textured", "tray")


def data_path() -> Optional[Path]:
    try:
        import pybullet_data
    except ImportError:
        return None
    return Path(pybullet_data.getDataPath())


def available():
    p = data_path()
    return (p is not None and (p / "random_urdfs").is_dir()), "pip install pybullet"


def load_random(path: str, index: int):
    parts = load_parts(path)
    rng = np.random.default_rng([7, index])
    return [decorate(p, rng, p_texture=0.5) for p in parts]


def objects(num: Optional[int] = None, named: bool = True, random_shapes: bool = True, only=None, **_) -> Iterator[SourceObject]:
    root = data_path()
    if root is None:
        return
    n = 0
    if named:
        for name, (rel, up) in NAMED.items():
            if only is not None and name not in only:
                continue
            if (root / rel).is_file():
                if num is not None and n >= num:
                    return
                n += 1
                yield SourceObject(f"pybullet-{name}", NAME, LICENCE,
                                   functools.partial(load_parts, str(root / rel), None, up), {"path": rel})
    if random_shapes:
        for d in sorted((root / "random_urdfs").iterdir()):
            obj = d / f"{d.name}.obj"
            if not obj.is_file():
                continue
            if num is not None and n >= num:
                return
            n += 1
            yield SourceObject(f"pybullet-rand-{d.name}", NAME, LICENCE,
                               functools.partial(load_random, str(obj), int(d.name)),
                               {"path": str(obj.relative_to(root))})
