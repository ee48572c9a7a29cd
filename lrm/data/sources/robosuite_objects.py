"""Object meshes shipped by the pip package ``robosuite`` (``robosuite/models/assets/objects/meshes``,
MIT). Located without importing robosuite (which needs MuJoCo). Skipped when not installed."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Iterator, Optional

from . import MESH_SUFFIXES_SRC, SourceObject, file_loader, safe_uid, sorted_files

NAME = "robosuite"
LICENCE = "MIT (robosuite)"


def root() -> Optional[Path]:
    spec = importlib.util.find_spec("robosuite")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "assets" / "objects" / "meshes"


def available():
    r = root()
    return (r is not None and r.is_dir()), "pip install robosuite"


def objects(num: Optional[int] = None, **_) -> Iterator[SourceObject]:
    r = root()
    if r is None or not r.is_dir():
        return
    for i, p in enumerate(sorted_files(r, MESH_SUFFIXES_SRC)):
        if num is not None and i >= num:
            return
        yield SourceObject(safe_uid("robosuite", p.stem), NAME, LICENCE, file_loader(p), {"file": p.name})
