"""Debian ``flightgear-data-models``: ~523 textured AC3D models (buildings, vehicles, airport objects...).

trimesh cannot read ``.ac``: each model is converted once with Debian ``assimp-utils``
(``assimp export in.ac out.obj``) into a cache folder; textures (PNG/JPEG/SGI ``.rgb``/DDS) are converted
to PNG next to it and the ``.mtl`` is rewritten to point at them. AC3D is +Y up.
Cloud/effect sprites (``Weather``, ``Effects``, ``Astro``) are excluded by default. Licence: GPL-2+ (Debian copyright).
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterator, Optional

from PIL import Image

from . import DEFAULT_CACHE, MeshError, SourceObject, load_parts, safe_uid

NAME = "flightgear"
LICENCE = "GPL-2+ (Debian flightgear-data-models)"
ROOT = Path("/usr/share/games/flightgear/Models")
EXCLUDE = ("Weather", "Effects", "Astro")


def available():
    if not ROOT.is_dir():
        return False, "apt-get install flightgear-data-models"
    if shutil.which("assimp") is None:
        return False, "apt-get install assimp-utils"
    return True, ""


def _find_texture(name: str, ac_dir: Path) -> Optional[Path]:
    for cand in (ac_dir / name, ac_dir / Path(name).name):
        if cand.is_file():
            return cand
    base = Path(name).name.lower()
    for d in (ac_dir, ac_dir.parent):
        for p in d.rglob("*"):
            if p.name.lower() == base and p.is_file():
                return p
    return None


def convert(ac_path: str, cache_dir: str) -> Path:
    """AC3D -> OBJ + MTL + PNG textures in ``cache_dir`` (idempotent); returns the OBJ path."""
    out = Path(cache_dir)
    obj = out / "model.obj"
    if obj.is_file() and (out / "done").is_file():
        return obj
    out.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["assimp", "export", ac_path, str(obj)], capture_output=True, text=True, timeout=120)
    if r.returncode != 0 or not obj.is_file():
        raise MeshError(f"assimp export failed: {(r.stdout + r.stderr).strip()[-200:]}")
    mtl = out / "model.mtl"
    if mtl.is_file():
        text = mtl.read_text(errors="replace")
        ac_dir = Path(ac_path).parent

        def repl(m):
            src = _find_texture(m.group(2).strip(), ac_dir)
            if src is None:
                return ""  # drop a missing texture: material colour only
            dst = out / (re.sub(r"[^A-Za-z0-9_-]", "_", src.stem) + ".png")
            if not dst.is_file():
                try:
                    Image.open(src).convert("RGBA").save(dst)
                except Exception:  # noqa: BLE001
                    return ""
            return f"{m.group(1)} {dst.name}"

        text = re.sub(r"^(map_Kd)\s+(.+)$", repl, text, flags=re.M)
        mtl.write_text(text)
    (out / "done").write_text("ok")
    return obj


def load(ac_path: str, cache_dir: str):
    obj = convert(ac_path, cache_dir)
    return load_parts(str(obj), None, "y")


def objects(num: Optional[int] = None, cache: Optional[str] = None, exclude=EXCLUDE, **_) -> Iterator[SourceObject]:
    if not available()[0]:
        return
    cache = Path(cache or os.environ.get("LRM_DATA_CACHE", DEFAULT_CACHE)) / "flightgear"
    n = 0
    for p in sorted(ROOT.rglob("*.ac")):
        rel = p.relative_to(ROOT)
        if rel.parts[0] in exclude:
            continue
        if num is not None and n >= num:
            return
        n += 1
        uid = safe_uid("fg", str(rel.with_suffix("")))
        yield SourceObject(uid, NAME, LICENCE, functools.partial(load, str(p), str(cache / uid)), {"path": str(rel)})
