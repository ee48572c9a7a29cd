"""Any local folder of GLB/glTF/OBJ/PLY/OFF/STL files (a user's own objects, GSO, OmniObject3D...).

``--folder PATH`` (repeatable via comma) and ``--folder-up y|z`` (default ``z``; glTF/GLB files are
always +Y up by the glTF spec). The uid is ``<folder name>-<relative path without suffix>``. The licence
is read from a ``LICENSE``/``licence.txt`` first line next to the file or in the folder root, else
``unknown (user folder)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

from . import MESH_SUFFIXES_SRC, SourceObject, file_loader, safe_uid, sorted_files

NAME = "folder"


def available():
    return True, ""


def _licence(p: Path, root: Path) -> str:
    for d in (p.parent, root):
        for name in ("LICENSE", "LICENSE.txt", "licence.txt", "license.txt"):
            f = d / name
            if f.is_file():
                first = f.read_text(errors="replace").strip().splitlines()
                return first[0][:120] if first else "unknown (user folder)"
    return "unknown (user folder)"


def objects(num: Optional[int] = None, folder=None, folder_up: str = "z", **_) -> Iterator[SourceObject]:
    if not folder:
        return
    roots = [Path(f) for f in (folder.split(",") if isinstance(folder, str) else folder)]
    n = 0
    for root in roots:
        for p in sorted_files(root, MESH_SUFFIXES_SRC):
            if num is not None and n >= num:
                return
            n += 1
            up = "y" if p.suffix.lower() in (".glb", ".gltf") else folder_up
            rel = p.relative_to(root).with_suffix("")
            yield SourceObject(safe_uid(root.name, str(rel)), NAME, _licence(p, root), file_loader(p, None, up), {"path": str(p)})
