"""Files that are complete or absent: written under a temporary sibling name and renamed into place.

Every file detflow writes outside a zarr store's own chunk writes (exports, reports, simulated inputs, job
records, checksum cache entries, resume markers, shard files) goes through :func:`atomic_path` or
:func:`atomic_write`: a reader (another worker, a second run, a crash) sees the old file or the new one,
never half of one. The temporary file is ``.<name>.<random>.partial`` in the same directory (a rename
within one file system is atomic; the leading dot keeps it out of ``*``-globs); it is removed when the
write fails or is interrupted. A file a killed process left under that name is recognised by
:data:`TEMP_GLOB` (a committed store drops any it holds).

``fsync=True`` also flushes the file and its directory (durable after a power loss, not only after a
crash of the process); most callers do not need it and do not pay for it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

TEMP_GLOB = ".*.partial"  # the name of a temporary file (matched by Path.glob/rglob)


def temp_path(path: str | Path) -> Path:
    """A fresh temporary sibling of ``path``: ``.<name>.<8 hex>.partial``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")


def temp_leftovers(path: str | Path) -> list[Path]:
    """The temporary files of ``path`` a killed writer left (:func:`temp_path` names)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.partial")) if path.parent.is_dir() else []


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; when the block ends without an exception it
    is renamed to ``path`` (replacing a file there), otherwise removed and the exception goes on."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
        if fsync:
            _fsync(path.parent, directory=True)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write(path: str | Path, data: str | bytes | Iterable[bytes] | Callable[[Path], object], *,
                 fsync: bool = False, encoding: str = "utf-8") -> Path:  # fmt: skip
    """Write ``path`` atomically (see the module): ``data`` is text, bytes, an iterable of byte strings
    (written one after the other, not joined) or a function that writes the file it is given. Returns
    ``path``."""
    path = Path(path)
    with atomic_path(path, fsync=fsync) as tmp:
        if callable(data):
            data(tmp)
        elif isinstance(data, str):
            tmp.write_text(data, encoding=encoding)
        elif isinstance(data, bytes | bytearray | memoryview):
            tmp.write_bytes(data)
        else:
            with open(tmp, "wb") as f:
                f.writelines(data)
    return path
