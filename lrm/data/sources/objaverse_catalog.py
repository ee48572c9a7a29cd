"""Objaverse (1.0) selection, licences and download, on top of the ``objaverse`` package.

Selection is pure and offline-testable: :func:`select_uids` picks from an annotations dict (uid -> the
package's annotation record) by an explicit uid list, LVIS categories and/or a count, deterministically
(sorted, then a seeded shuffle when sampling). Licences come from the annotations' ``license`` field.

:func:`download` calls ``objaverse.load_objects(uids, download_processes=N)``, which downloads in parallel
and resumes (files already under ``~/.objaverse`` are not fetched again). Without network it raises
:class:`ObjaverseUnavailable` with one clear message. Annotations can be read from a local JSON file
(``--objaverse-annotations``, same layout as ``objaverse.load_annotations()``), so selection never needs
the network; ``objaverse.load_annotations``/``load_lvis_annotations`` are used only when no file is given.
Objaverse GLBs are +Y up (glTF).
"""
from __future__ import annotations

import gzip
import importlib
import json
import random
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

#: Objaverse ``license`` values -> SPDX-like names recorded in our manifests
LICENCE_NAMES = {
    "by": "CC-BY-4.0",
    "by-sa": "CC-BY-SA-4.0",
    "by-nd": "CC-BY-ND-4.0",
    "by-nc": "CC-BY-NC-4.0",
    "by-nc-sa": "CC-BY-NC-SA-4.0",
    "by-nc-nd": "CC-BY-NC-ND-4.0",
    "cc0": "CC0-1.0",
}
#: licences that allow commercial use and derivatives (a sensible default filter)
PERMISSIVE = ("by", "by-sa", "cc0")


class ObjaverseUnavailable(RuntimeError):
    pass


def _objaverse():
    return importlib.import_module("objaverse")  # the pip package


def read_json(path) -> dict:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return json.load(f)


def licence_name(annotation: dict) -> str:
    raw = (annotation or {}).get("license")
    if raw is None:
        return "unknown (objaverse)"
    return LICENCE_NAMES.get(str(raw).lower(), str(raw))


def select_uids(
    annotations: Dict[str, dict],
    uids: Optional[Sequence[str]] = None,
    lvis: Optional[Dict[str, List[str]]] = None,
    categories: Optional[Iterable[str]] = None,
    count: Optional[int] = None,
    licences: Optional[Iterable[str]] = None,
    seed: int = 0,
) -> List[str]:
    """Deterministic selection. ``uids``: explicit list (kept in order, unknown uids dropped);
    ``categories``: LVIS categories (needs ``lvis``); ``licences``: allowed raw ``license`` values;
    ``count``: sample that many (seeded) from what remains (all annotated uids when nothing else given)."""
    if uids is not None:
        pool = [u[:-4] if u.endswith(".glb") else u for u in uids]
        pool = [u for u in dict.fromkeys(pool) if u in annotations]
    elif categories is not None:
        if lvis is None:
            raise ValueError("LVIS categories need the LVIS annotations")
        missing = [c for c in categories if c not in lvis]
        if missing:
            raise KeyError(f"unknown LVIS categories: {missing}")
        pool = sorted({u for c in categories for u in lvis[c] if u in annotations})
    else:
        pool = sorted(annotations)
    if licences is not None:
        allowed = {str(x).lower() for x in licences}
        pool = [u for u in pool if str(annotations[u].get("license", "")).lower() in allowed]
    if count is not None and count < len(pool):
        if uids is not None:
            pool = pool[:count]
        else:
            rng = random.Random(seed)
            pool = sorted(rng.sample(pool, count))
    return pool


def load_annotations(path=None, uids=None) -> Dict[str, dict]:
    if path is not None:
        return read_json(path)
    try:
        return _objaverse().load_annotations(uids)
    except Exception as e:  # noqa: BLE001
        raise ObjaverseUnavailable(_offline_message("annotations", e)) from e


def load_lvis(path=None) -> Dict[str, List[str]]:
    if path is not None:
        return read_json(path)
    try:
        return _objaverse().load_lvis_annotations()
    except Exception as e:  # noqa: BLE001
        raise ObjaverseUnavailable(_offline_message("LVIS annotations", e)) from e


def _offline_message(what: str, e: Exception) -> str:
    return (f"Objaverse {what} could not be downloaded ({type(e).__name__}: {str(e)[:160]}). This machine "
            "cannot reach huggingface.co. Download on a connected machine (lrm-build-data --sources "
            "objaverse ... there, or objaverse.load_objects) and copy ~/.objaverse here, or build from local "
            "GLBs with --sources folder --folder PATH.")


def download(uids: Sequence[str], processes: int = 4) -> Dict[str, str]:
    """uid -> local GLB path. Parallel; resumes (already-downloaded files are reused)."""
    if not uids:
        return {}
    try:
        return _objaverse().load_objects(list(uids), download_processes=max(1, int(processes)))
    except Exception as e:  # noqa: BLE001
        raise ObjaverseUnavailable(_offline_message("objects", e)) from e
