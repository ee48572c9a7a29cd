"""Objaverse as a mesh source (selection, licences and download: objaverse_catalog.py).

Options (``lrm-build-data``): ``--objaverse-uids FILE|a,b,c``, ``--objaverse-lvis cat1,cat2``,
``--objaverse-count N``; annotation files via the env vars ``LRM_OBJAVERSE_ANNOTATIONS`` and
``LRM_OBJAVERSE_LVIS`` (JSON, optionally gzipped) for offline selection. Licence per object from the
annotations. Downloads happen once, in parallel, before rendering.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional

from . import SourceObject, file_loader

NAME = "objaverse"
LICENCE = "per object (Objaverse annotations)"


def available():
    try:
        import importlib.util

        return importlib.util.find_spec("objaverse") is not None, "pip install objaverse"
    except Exception:  # noqa: BLE001
        return False, "pip install objaverse"


def objects(uids=None, lvis=None, count=None, processes: int = 4, **_) -> Iterator[SourceObject]:
    from . import objaverse_catalog as ov

    if isinstance(uids, str):
        uids = Path(uids).read_text().split() if Path(uids).is_file() else [u for u in uids.split(",") if u]
    ann = ov.load_annotations(os.environ.get("LRM_OBJAVERSE_ANNOTATIONS"), uids)
    cats = [c for c in lvis.split(",") if c] if isinstance(lvis, str) else lvis
    lv = ov.load_lvis(os.environ.get("LRM_OBJAVERSE_LVIS")) if cats else None
    sel = ov.select_uids(ann, uids=uids, lvis=lv, categories=cats, count=count)
    paths = ov.download(sel, processes)
    for uid in sel:
        if uid in paths:
            yield SourceObject(f"objaverse-{uid}", NAME, ov.licence_name(ann[uid]), file_loader(paths[uid], None, "y"),
                               {"objaverse_uid": uid, "name": ann[uid].get("name")})
