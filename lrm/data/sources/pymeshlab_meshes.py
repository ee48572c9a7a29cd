"""Test meshes shipped by the pip package ``pymeshlab`` (``pymeshlab/tests/sample_meshes``): textured
bunny (10 k faces), cow, airplane, vertex-coloured airplane PLY, bone. Licence: GPL-3.0 (pymeshlab)."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Iterator, Optional

from . import SourceObject, file_loader, safe_uid

NAME = "pymeshlab"
LICENCE = "GPL-3.0 (pymeshlab)"
FILES = (("bunny10k_textured.obj", "y"), ("cow.obj", "z"), ("airplane.obj", "z"), ("colored_airplane.ply", "z"),
         ("bone.ply", "z"))


def root() -> Optional[Path]:
    spec = importlib.util.find_spec("pymeshlab")  # without importing its Qt/C++ libraries
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "tests" / "sample_meshes"


def available():
    r = root()
    return (r is not None and r.is_dir()), "pip install pymeshlab"


def objects(num: Optional[int] = None, **_) -> Iterator[SourceObject]:
    r = root()
    if r is None or not r.is_dir():
        return
    n = 0
    for name, up in FILES:
        if (r / name).is_file():
            if num is not None and n >= num:
                return
            n += 1
            yield SourceObject(safe_uid("pml", Path(name).stem), NAME, LICENCE, file_loader(r / name, None, up), {"file": name})
