"""Where a store may be written: refusals before any work (an output that exists, one ``overwrite`` must not
replace, one another writer holds, a read-only directory), and what a detflow store is."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from ...errors import DetflowInputError, OutputExistsError
from ..lock import JobProbe, check_unlocked

STORE_MARKS = ("detflow_version", "pipeline")  # root attributes every detflow product store has
WRITE_ERRNOS = {errno.ENOSPC: "free space on the output's file system", errno.EDQUOT: "disk quota for the output",
                errno.EROFS: "a writable file system for the output", errno.EACCES: "write permission for the output",
                errno.EPERM: "write permission for the output", errno.EFBIG: "files as large as the output's"}  # fmt: skip


class OutputWriteError(DetflowInputError):
    """The output cannot be written (read-only, no permission, full): one line, with what to do."""


def is_detflow_store(path: str | Path) -> bool:
    """A detflow product store: a directory whose ``zarr.json`` is a group with detflow's root attributes
    (``detflow_version``, ``pipeline``), which every finished store has."""
    try:
        meta = json.loads((Path(path) / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    return meta.get("node_type") == "group" and isinstance(attrs, dict) and all(k in attrs for k in STORE_MARKS)


def store_attrs(path: str | Path) -> dict | None:
    """The root attributes of a detflow store (None: not one)."""
    if not is_detflow_store(path):
        return None
    return json.loads((Path(path) / "zarr.json").read_text())["attributes"]


def _writable(path: Path) -> None:
    """Refuse at once an output whose directory cannot be written (read-only file system, no permission)."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        why = "a read-only file system" if _read_only(parent) else "no write permission"
        raise OutputWriteError(path, "output", "a directory this user can write to", f"{parent}: {why}")


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_output(path: str | Path, overwrite: bool = False, kind: str = "store", probe: JobProbe | None = None) -> Path:
    """Refuse, before any work starts, an output that exists (unless ``overwrite``), that ``overwrite``
    must not replace (``kind="store"``: anything but a detflow store; ``kind="file"``, an exported file:
    anything but a file), that another writer holds (``<out>.lock``) or whose directory is read-only."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise OutputExistsError(path, "output", "a path that does not exist yet (or overwrite: true)",
                                    "it exists")  # fmt: skip
        replaceable(path, kind)
    if kind == "store":
        check_unlocked(path, probe)
    _writable(path)
    return path


def replaceable(path: Path, kind: str) -> None:
    """Refuse to replace what ``overwrite`` must not (``kind``: ``"store"`` or ``"file"``)."""
    if kind == "store" and not is_detflow_store(path):
        what = "a directory" if path.is_dir() else "a file" if path.is_file() else "something"
        raise OutputExistsError(path, "output", "a detflow store to replace (overwrite removes nothing else)",
                                f"{what} that is not one (no zarr.json with detflow_version and pipeline)")  # fmt: skip
    if kind == "file" and not path.is_file():
        raise OutputExistsError(path, "output", "a file to replace (overwrite replaces files only)",
                                "a directory" if path.is_dir() else "not a regular file")  # fmt: skip


def write_error(path: Path, exc: OSError, hint: str | None) -> OutputWriteError:
    """The one-line error of a write that failed for want of space, quota or permission (``exc.errno`` in
    :data:`WRITE_ERRNOS`), with ``hint`` (what to do with the partial store) appended."""
    where = f" ({exc.filename})" if exc.filename else ""
    got = f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror}{where}" + (f"; {hint}" if hint else "")
    return OutputWriteError(path, "write", WRITE_ERRNOS[exc.errno], got)
