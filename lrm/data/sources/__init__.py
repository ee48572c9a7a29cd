"""Mesh sources. One module each, one interface::

    mod.available() -> (bool, reason)           # cheap; False when the package/files are missing
    mod.objects(**options) -> Iterator[SourceObject]

A :class:`SourceObject` is light (uid, source, licence, a picklable loader): the builder skips finished
uids without loading anything, and worker processes call ``obj.load()`` which returns a list of
trimesh parts in a +Z-up world (not yet normalised; the builder normalises) or raises ``MeshError``.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

from ..mesh import MESH_SUFFIXES, MeshError, Parts, load_parts  # noqa: F401  (re-exported for source modules)

MESH_SUFFIXES_SRC = (".glb", ".gltf", ".obj", ".ply", ".off", ".stl")
#: converted meshes (assimp / FlightGear -> OBJ), relative to the working directory like ``--out`` (the checkout
#: root: ``data/cache``, git-ignored); ``$LRM_DATA_CACHE`` overrides
DEFAULT_CACHE = Path("data") / "cache"

#: name -> module (under lrm.data.sources) for ``--sources``.
SOURCE_MODULES: Dict[str, str] = {
    "procedural": "lrm.data.sources.procedural",
    "products": "lrm.data.sources.products",
    "pybullet": "lrm.data.sources.pybullet_objects",
    "flightgear": "lrm.data.sources.flightgear",
    "assimp": "lrm.data.sources.assimp_models",
    "cgal": "lrm.data.sources.cgal",
    "pymeshlab": "lrm.data.sources.pymeshlab_meshes",
    "robosuite": "lrm.data.sources.robosuite_objects",
    "folder": "lrm.data.sources.folder",
    "objaverse": "lrm.data.sources.objaverse_source",
}


@dataclass
class SourceObject:
    uid: str
    source: str
    licence: str
    loader: Callable[[], Parts]
    meta: dict = field(default_factory=dict)

    def load(self) -> Parts:
        return self.loader()


def get_source(name: str):
    if name not in SOURCE_MODULES:
        raise KeyError(f"unknown source {name!r}; known: {', '.join(SOURCE_MODULES)}")
    return importlib.import_module(SOURCE_MODULES[name])


#: the sources of the dev evaluation set (package-shipped real objects, docs/evaluation.md "Evaluation sets");
#: their objects are held out of training sets (``lrm-build-data --include-eval`` keeps them)
DEV_EVAL_SOURCES = ("pybullet", "pymeshlab", "assimp", "cgal")


def dev_eval_objects(num: Optional[int] = None, sources=DEV_EVAL_SOURCES, log=None) -> List[SourceObject]:
    """The dev evaluation set's objects: pybullet's textured objects, pymeshlab's test meshes, the curated assimp
    test models and CGAL scans (a source whose package is absent is skipped, with a line to ``log``)."""
    names = [s.strip() for s in sources.split(",")] if isinstance(sources, str) else list(sources)
    out: List[SourceObject] = []
    for name in filter(None, names):
        mod = get_source(name)
        ok, why = mod.available()
        if not ok:
            if log:
                log(f"source {name!r} unavailable ({why}); skipped")
            continue
        if name == "pybullet":
            out.extend(mod.objects(random_shapes=False, only=mod.TEXTURED))
        elif name == "procedural":
            out.extend(mod.objects(num=num or 4, seed=12345))
        else:
            out.extend(mod.objects())
    return out[:num] if num is not None else out


def dev_eval_uids() -> set:
    """uids of the dev evaluation set (held out of training sets)."""
    return {o.uid for o in dev_eval_objects()}


def package_dir(package: str) -> Optional[Path]:
    """The folder of an installed package, found without importing it (None when it is not installed)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def folder_available(folder: Optional[Path], how: str = ""):
    """``available()`` of a source whose meshes sit in one folder: (whether it exists, how to install it)."""
    return (folder is not None and folder.is_dir()), how


def safe_uid(*parts: str) -> str:
    """A uid usable as a webdataset key and folder name: [A-Za-z0-9_-] only (no dots)."""
    s = "-".join(parts)
    out = "".join(c if (c.isalnum() or c in "_-") else "_" for c in s)
    if len(out) > 80:
        out = out[:60] + "_" + hashlib.sha1(s.encode()).hexdigest()[:12]
    return out


def file_loader(path, file_type: Optional[str] = None, up: str = "z") -> Callable[[], Parts]:
    return functools.partial(load_parts, str(path), file_type, up)


def limit(it: Iterator[SourceObject], num: Optional[int]) -> Iterator[SourceObject]:
    for i, o in enumerate(it):
        if num is not None and i >= num:
            return
        yield o


def sorted_files(root: Path, suffixes) -> List[Path]:
    return sorted(p for p in Path(root).rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
