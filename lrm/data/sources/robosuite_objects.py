"""Object meshes shipped by the pip package ``robosuite`` (``robosuite/models/assets/objects/meshes``,
MIT). Located without importing robosuite (which needs MuJoCo). Skipped when not installed."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

from . import MESH_SUFFIXES_SRC, SourceObject, file_loader, folder_available, limit, package_dir, safe_uid, sorted_files

NAME = "robosuite"
LICENCE = "MIT (robosuite)"


def root() -> Optional[Path]:
    d = package_dir("robosuite")
    return d / "models" / "assets" / "objects" / "meshes" if d else None


def available():
    return folder_available(root(), "pip install robosuite")


def objects(num: Optional[int] = None, **_) -> Iterator[SourceObject]:
    r = root()
    if folder_available(r)[0]:
        yield from limit((SourceObject(safe_uid("robosuite", p.stem), NAME, LICENCE, file_loader(p), {"file": p.name})
                          for p in sorted_files(r, MESH_SUFFIXES_SRC)), num)
