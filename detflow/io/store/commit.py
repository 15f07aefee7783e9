"""The commit: a store written under a temporary sibling name goes into place whole, or not at all.

:func:`commit_store` drops what only the writing needed (resume markers, temporary files a killed worker
left), consolidates the metadata and swaps the store into place: an existing store at the output path is
first renamed aside (``<out>.old-<token>``), the new one renamed in, then the old one removed, so the output
path never holds half a store. A swap a kill interrupted is finished by :func:`recover_swap`.
"""

from __future__ import annotations

import glob
import logging
import shutil
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

import zarr

from .atomic import TEMP_GLOB

log = logging.getLogger("detflow")


def consolidate(tmp: str | Path) -> None:
    """Consolidate a zarr v3 store's metadata (a zarr-python convention in v3: its warning is silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(tmp))


def swap_into_place(tmp: Path, path: Path, token: str | None = None,
                    check: Callable[[Path], None] | None = None) -> Path:  # fmt: skip
    """Rename the directory ``tmp`` to ``path``. An existing ``path`` (``check(path)`` first, which may
    refuse it) is moved to ``<path>.old-<token>`` before and removed after, so the new store is in place
    before the old one goes."""
    old = None
    if path.exists() or path.is_symlink():
        if check is not None:
            check(path)
        old = path.with_name(f"{path.name}.old-{token or uuid.uuid4().hex[:8]}")
        path.rename(old)
    tmp.rename(path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


def commit_store(tmp: Path, path: Path, *, drop: tuple[str, ...] = (), token: str | None = None,
                 check: Callable[[Path], None] | None = None) -> Path:  # fmt: skip
    """Commit the store written at ``tmp`` to ``path``: remove the subdirectories ``drop`` (resume markers)
    and any temporary file (:data:`~detflow.io.store.atomic.TEMP_GLOB`: a shard a killed worker left half
    written), consolidate the metadata, :func:`swap_into_place`."""
    for name in drop:
        shutil.rmtree(tmp / name, ignore_errors=True)
    for stray in tmp.rglob(TEMP_GLOB):
        stray.unlink(missing_ok=True)
    consolidate(tmp)
    return swap_into_place(tmp, path, token, check)


def recover_swap(out: str | Path, is_store: Callable[[Path], bool], writer: str = "ingest") -> list[str]:
    """Finish a store swap a killed ``writer`` (a word for the messages: "an {writer}") left half done:
    ``<out>.old-*`` is the previous store, moved aside before the new one was renamed into place. Restored
    when ``out`` is missing and ``is_store(old)`` (the new store was not in place yet), else removed.
    Returns what was done, also logged."""
    out = Path(out)
    done = []
    olds = sorted(out.parent.glob(f"{glob.escape(out.name)}.old-*")) if out.parent.is_dir() else []
    for old in olds:
        if not out.exists() and is_store(old):
            old.rename(out)
            done.append(f"{old}: restored to {out} (an {writer} was interrupted while swapping the stores)")
        else:
            shutil.rmtree(old, ignore_errors=True)
            done.append(f"{old}: removed (the store an interrupted {writer} had replaced)")
        log.warning("%s", done[-1])
    return done
