"""Output folders that appear all at once and never replace what this program did not write.

Every folder the CLIs publish (infer.py's ``OUT/<name>``, model checkpoints) is written to a temporary sibling
``.<name>.tmp-<pid>-<random>``, given the user's umask permissions, fsynced, and then renamed into place. The
folder holds an ownership marker (:data:`OWNER_MARKER`, a JSON list of the files written). An existing folder
is replaced only when every entry in it is listed in its marker (or is one of ``legacy_names``, the names a
pre-marker version of the same writer used); otherwise :class:`OutputExistsError` is raised unless the caller
was asked to overwrite. Stale temporary folders of killed runs are swept by :func:`sweep_stale`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterable

OWNER_MARKER = ".lrm-output.json"
#: ``.<name>.tmp-<pid>-<random>`` / ``.<name>.old-<pid>-<random>``: the temporary folders this module makes.
_TEMP_RE = re.compile(r"^\..+\.(?:tmp|old)-(?P<pid>\d+)-[A-Za-z0-9_]+$")
STALE_AFTER_S = 3600.0


class OutputExistsError(RuntimeError):
    """The target exists and is not a folder this program wrote (one line; pass overwrite to replace it)."""


def user_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_temp_dir(final: Path) -> Path:
    """An empty temporary sibling of ``final`` named so :func:`sweep_stale` can recognise it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))


def _entries(folder: Path) -> set:
    return {p.name for p in folder.iterdir()}


def _marked_names(folder: Path) -> set:
    try:
        names = json.loads((folder / OWNER_MARKER).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    return {str(n) for n in names} | {OWNER_MARKER}


def is_owned(folder: Path, legacy_names: Iterable[str] = ()) -> bool:
    """True when ``folder`` is a real folder whose every entry this program wrote (per its marker), or, for a
    folder without a marker, whose every entry is one of ``legacy_names`` (an empty folder holds nothing to lose)."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return False
    allowed = _marked_names(folder) or set(legacy_names)
    entries = _entries(folder)
    return entries <= allowed and all((folder / n).is_file() and not (folder / n).is_symlink() for n in entries)


def check_target(final: Path, overwrite: bool = False, legacy_names: Iterable[str] = ()) -> None:
    """Raise :class:`OutputExistsError` if publishing to ``final`` would replace something not ours."""
    final = Path(final)
    if overwrite or not (final.exists() or final.is_symlink()) or is_owned(final, legacy_names):
        return
    what = "folder" if final.is_dir() and not final.is_symlink() else "file"
    raise OutputExistsError(f"{final} exists and is a {what} this program did not write; not replacing it "
                            "(move it away or pass --overwrite)")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file in ``folder`` and the folder itself to disk."""
    for p in Path(folder).iterdir():
        if p.is_file():
            _fsync(p)
    _fsync(Path(folder))


def seal(tmp: Path) -> None:
    """Write the ownership marker, apply the user's umask (mkdtemp makes 0700) and fsync ``tmp``."""
    names = sorted(_entries(tmp) - {OWNER_MARKER})
    (tmp / OWNER_MARKER).write_text(json.dumps({"written_by": "lrm", "files": names}) + "\n")
    mask = user_umask()
    os.chmod(tmp, 0o777 & ~mask)
    for p in tmp.iterdir():
        os.chmod(p, 0o666 & ~mask)
    fsync_tree(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def publish(tmp: Path, final: Path, overwrite: bool = False, legacy_names: Iterable[str] = ()) -> Path:
    """Seal ``tmp`` and rename it to ``final``; an existing ``final`` is replaced only if :func:`check_target`
    allows it. On any failure ``tmp`` is removed and ``final`` is left as it was."""
    tmp, final = Path(tmp), Path(final)
    try:
        check_target(final, overwrite, legacy_names)
        seal(tmp)
        old = None
        if final.exists() or final.is_symlink():
            old = final.with_name(f".{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        _remove(old)
    return final


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _newest_mtime(folder: Path) -> float:
    times = [folder.lstat().st_mtime] + [p.lstat().st_mtime for p in folder.iterdir()]
    return max(times)


def is_stale_temp(path: Path, now: float = None, min_age_s: float = STALE_AFTER_S) -> bool:
    """A temporary folder of ours (name pattern, our uid) whose writer is gone and that nothing touched lately."""
    m = _TEMP_RE.match(path.name)
    if not m or path.is_symlink() or not path.is_dir():
        return False
    try:
        if path.lstat().st_uid != os.getuid() or _pid_alive(int(m.group("pid"))):
            return False
        return (now or time.time()) - _newest_mtime(path) >= min_age_s
    except OSError:
        return False


def sweep_stale(parent: Path, min_age_s: float = STALE_AFTER_S) -> list:
    """Remove stale temporary folders (see :func:`is_stale_temp`) directly under ``parent``; returns them."""
    parent = Path(parent)
    if not parent.is_dir():
        return []
    now = time.time()
    gone = [p for p in parent.iterdir() if is_stale_temp(p, now, min_age_s)]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone
