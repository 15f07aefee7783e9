"""Queries of an MKID photon store: the photons of some resonators and/or a time range, reading only the
rows they need through the partition index (``photon_index``, see :mod:`detflow.instruments.mkid_plan`).

- a time range: the files whose photons span it (``time_min``/``time_max``), one contiguous row range;
- resonators: per file, each resonator's rows (``first_row`` plus the counts of the resonators before it),
  read as one orthogonal selection: zarr fetches each inner chunk holding them once (with shards: the
  shard's index, then only those chunks' bytes).

``store`` is a path or a zarr store object (e.g. a wrapper counting what is read).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import zarr

from ..errors import DetflowInputError

COLUMNS = ("pixel", "time", "phase", "baseline")


def _group(store, path: str):
    return zarr.open_group(str(store) if isinstance(store, (str, Path)) else store, path=path, mode="r")


def photon_index(store) -> dict[str, np.ndarray]:
    """The partition index as numpy arrays: ``count (file, resonator)``, ``first_row``, ``rows``, ``time_min``,
    ``time_max``, ``second`` (file) and ``resonator`` (the resonator ids, ascending)."""
    g = _group(store, "photon_index")
    return {k: np.asarray(g[k][...]) for k in ("count", "first_row", "rows", "time_min", "time_max", "second",
                                                "resonator")}  # fmt: skip


def files_in(index: dict, t0: int | None = None, t1: int | None = None) -> np.ndarray:
    """Indices of the files with photons in ``[t0, t1)`` (microseconds since the start)."""
    lo = 0 if t0 is None else t0
    hi = np.iinfo(np.uint64).max if t1 is None else t1
    return np.flatnonzero((index["rows"] > 0) & (index["time_max"] >= lo) & (index["time_min"] < hi))


def rows_of(index: dict, resids: Sequence[int], files: np.ndarray | None = None) -> np.ndarray:
    """The rows (ascending) of the resonators ``resids`` in ``files`` (default: all)."""
    res = index["resonator"]
    want = np.unique(np.asarray(resids, dtype=np.int64))
    slots = np.searchsorted(res, want)
    bad = (slots >= res.size) | (res[np.minimum(slots, res.size - 1)] != want)
    if bad.any():
        raise DetflowInputError("photon_index", "resonator", "a resonator of the beammap with flag 0",
                                int(want[bad][0]))  # fmt: skip
    files = np.arange(index["rows"].size) if files is None else files
    count = index["count"][files].astype(np.int64)
    before = np.cumsum(count, axis=1) - count  # rows of the resonators before each, per file
    out = []
    for k, f in enumerate(files):
        lo = index["first_row"][f].astype(np.int64) + before[k, slots]
        n = count[k, slots]
        out += [np.arange(a, a + m) for a, m in zip(lo, n) if m]
    return np.concatenate(out) if out else np.empty(0, np.int64)


def read_photons(store, resids: Sequence[int] | None = None, t0: int | None = None, t1: int | None = None,
                 columns: Sequence[str] = COLUMNS) -> dict[str, np.ndarray]:  # fmt: skip
    """The photons of ``resids`` (default: all) with ``t0 <= time < t1`` (microseconds since the start; default:
    all), in store order (by file, then resonator, then time), reading only the rows of those files and
    resonators."""
    index = photon_index(store)
    g = _group(store, "photons")
    files = files_in(index, t0, t1)
    need = list(dict.fromkeys([*columns, "time"])) if (t0 is not None or t1 is not None) else list(columns)
    if resids is None:
        if files.size == 0:
            out = {c: g[c][0:0] for c in need}
        else:
            lo = int(index["first_row"][files[0]])
            hi = int(index["first_row"][files[-1]] + index["rows"][files[-1]])
            out = {c: np.asarray(g[c][lo:hi]) for c in need}
    else:
        rows = rows_of(index, resids, files)
        out = {c: np.asarray(g[c].get_orthogonal_selection(rows)) if rows.size else g[c][0:0] for c in need}
    if t0 is not None or t1 is not None:
        t = out["time"]
        keep = np.ones(t.size, bool)
        if t0 is not None:
            keep &= t >= np.uint64(t0)
        if t1 is not None:
            keep &= t < np.uint64(t1)
        out = {c: v[keep] for c, v in out.items()}
    return {c: out[c] for c in columns}
