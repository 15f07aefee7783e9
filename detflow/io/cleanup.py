"""What a failed or killed run leaves beside its output, and ``detflow clean`` removing it.

A run writes ``<out>.partial-<id>`` (renamed to ``<out>`` when complete), holds ``<out>.lock`` while it
writes and, when submitted, keeps its record in ``<out>.job.json``. A run that fails keeps its partial
store for the same job to resume; a killed one also leaves its lock. :func:`clean_output` removes what
is no longer in use, and nothing that is not detflow's.
"""

from __future__ import annotations

import glob
import json
import re
import shutil
from pathlib import Path

from ..errors import DetflowInputError
from .lock import JobProbe, check_unlocked, holder_alive, lock_path, read_lock
from .store import REGIONS, is_detflow_store

_PARTIAL = re.compile(r"\.(partial|old)-[0-9a-f]{8,32}$")


def is_detflow_partial(path: str | Path) -> bool:
    """A partial store detflow left: ``<out>.partial-<hex>`` (or ``<out>.old-<hex>``, a replaced store not yet
    removed) that is a zarr group with detflow's region markers, a CMOS section store being ingested (its
    ``l1`` group), or a complete detflow store."""
    p = Path(path)
    if not (_PARTIAL.search(p.name) and p.is_dir() and not p.is_symlink()):
        return False
    try:
        meta = json.loads((p / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    if meta.get("node_type") != "group":
        return False
    return (p / REGIONS).is_dir() or (p / "l1" / "zarr.json").is_file() or is_detflow_store(p)


def clean_output(out: str | Path, dry_run: bool = False, force: bool = False,
                 probe: JobProbe | None = None) -> list[tuple[Path, str]]:  # fmt: skip
    """What a failed or killed run left beside ``out``, removed (``dry_run``: only listed): partial stores
    ``<out>.partial-*``, a stale ``<out>.lock`` (``force``: also one whose holder cannot be checked from
    here), the job record ``<out>.job.json`` of a job that failed, was cancelled or was lost. Refuses,
    removing nothing, while a live writer holds the lock, and anything named like a partial store that
    is not one. Returns ``[(path, why)]``."""
    out = Path(out)
    found: list[tuple[Path, str]] = []
    holder = read_lock(out)
    if holder is not None:
        alive = holder_alive(holder, probe)
        if alive or (alive is None and not force):
            check_unlocked(out, probe)  # raises the one-line refusal naming the holder
        found.append((lock_path(out), "stale lock" if alive is False else "lock (--force)"))
    for p in sorted(out.parent.glob(f"{glob.escape(out.name)}.*")):
        if not _PARTIAL.search(p.name):
            continue
        if not is_detflow_partial(p):
            raise DetflowInputError(p, "clean", "a detflow partial store (a zarr group with _detflow_regions, or a "
                                    "CMOS section store being ingested)", "something else: nothing removed")  # fmt: skip
        found.append((p, "partial store"))
    guard = lock_path(out).with_name(lock_path(out).name + ".break")
    if guard.exists():
        found.append((guard, "stale lock guard"))
    record = out.with_name(out.name + ".job.json")
    rec = _read_json(record)
    if rec is not None:
        state = rec.get("state")
        if state in ("queued", "running") and holder_alive({"job": rec.get("id"), "scheduler": rec.get("scheduler"),
                                                            "output": str(out)}, probe) is False:  # fmt: skip
            state = "lost"
        if state in ("failed", "cancelled", "lost"):
            found.append((record, f"record of a {state} job"))
    if not dry_run:
        for p, _ in found:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
    return found


def _read_json(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
