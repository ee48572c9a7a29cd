"""Test meshes shipped by the pip package ``pymeshlab`` (``pymeshlab/tests/sample_meshes``): textured
bunny (10 k faces), cow, airplane, vertex-coloured airplane PLY, bone. Licence: GPL-3.0 (pymeshlab)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

from . import SourceObject, file_loader, folder_available, limit, package_dir, safe_uid

NAME = "pymeshlab"
LICENCE = "GPL-3.0 (pymeshlab)"
FILES = (("bunny10k_textured.obj", "y"), ("cow.obj", "z"), ("airplane.obj", "z"), ("colored_airplane.ply", "z"),
         ("bone.ply", "z"))


def root() -> Optional[Path]:
    d = package_dir("pymeshlab")  # without importing its Qt/C++ libraries
    return d / "tests" / "sample_meshes" if d else None


def available():
    return folder_available(root(), "pip install pymeshlab")


def objects(num: Optional[int] = None, **_) -> Iterator[SourceObject]:
    r = root()
    if folder_available(r)[0]:
        yield from limit((SourceObject(safe_uid("pml", Path(name).stem), NAME, LICENCE, file_loader(r / name, None, up),
                                       {"file": name}) for name, up in FILES if (r / name).is_file()), num)
