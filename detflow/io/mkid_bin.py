"""MKID raw data: beammaps in mkidcore's text format and ``.bin`` packet streams, decoded lazily.

- :func:`read_beammap`: ``resID flag x y`` per line (a fifth column, the resonance frequency, is allowed
  and ignored; coordinates are floored, as mkidcore does); or a preset's default beammap.
- :func:`bin_files`: the ``<unix seconds>.bin`` files of a directory (glob, list) within a time range.
- :func:`scan_file` / :func:`decode_file`: one file, memory-mapped, through the numba kernels of
  :mod:`detflow.kernels.mkid`: the photons kept per resonator, then the photons themselves grouped by
  resonator id and in time order within each.
- :func:`photon_columns`: the lazy ``pixel``/``time``/``phase``/``baseline`` columns of many files (one
  decoding task per file), given the counts of the scanning pass.

Times are microseconds since ``origin`` (a unix second: the start of the time range, else the first
file's second), as uint64. A header's tick is checked against its file's second (within
:data:`HEADER_TOLERANCE_S`): a file whose packets say another time is refused, naming the word.
"""

from __future__ import annotations

import calendar
import datetime as dt
import glob
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np

from ..errors import CorruptInputError, DetflowInputError
from ..instruments import mkid as mi
from ..kernels import mkid as km

log = logging.getLogger("detflow")
HEADER_TOLERANCE_S = 3  # a header may be stamped this far outside its file's second (mkidcore allows 3 s)
BIN_NAME = re.compile(r"^(\d+)\.bin$")


@dataclass(frozen=True)
class Beammap:
    """A beammap on an ``ncols x nrows`` array: one entry per resonator (``resid``, ``flag``, ``x``, ``y``)."""

    resid: np.ndarray  # int64
    flag: np.ndarray  # int64, mkidcore codes (0 good)
    x: np.ndarray
    y: np.ndarray
    ncols: int
    nrows: int
    source: str

    @property
    def good(self) -> np.ndarray:
        """The resonator ids whose photons are kept (flag 0), ascending: the slots of the decoder."""
        return np.sort(self.resid[self.flag == 0])

    def images(self) -> tuple[np.ndarray, np.ndarray]:
        """``(resid, flag)`` images over ``(y, x)``: a good resonator wins a pixel over flagged ones."""
        resid = np.full((self.nrows, self.ncols), mi.NO_RESID, np.uint32)
        flag = np.full((self.nrows, self.ncols), mi.NO_RESONATOR, np.uint8)
        order = np.argsort(self.flag == 0, kind="stable")  # flagged first, good last (written over them)
        resid[self.y[order], self.x[order]] = self.resid[order]
        flag[self.y[order], self.x[order]] = np.minimum(self.flag[order], mi.NO_RESONATOR - 1)
        return resid, flag

    def slot_map(self) -> np.ndarray:
        """``int32 (y, x)``: the decoder slot of the good resonator at a pixel, -2 a flagged one, -1 none."""
        resid, flag = self.images()
        out = np.where(flag == mi.NO_RESONATOR, -1, -2).astype(np.int32)
        good = flag == 0
        out[good] = np.searchsorted(self.good, resid[good]).astype(np.int32)
        return out


def read_beammap(path: str | Path | None, instrument: str) -> Beammap:
    """The beammap file ``path`` (mkidcore's text format) on the instrument's array, or the instrument's
    default beammap when ``path`` is None."""
    p = mi.preset(instrument)
    if path is None:
        rows = mi.default_beammap(instrument)
        return Beammap(rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3], p.ncols, p.nrows, f"default:{instrument}")
    path = Path(path)
    if not path.is_file():
        raise DetflowInputError(path, "beammap", "a beammap file (mkidcore's text format: resID flag x y)",
                                "no such file")  # fmt: skip
    try:
        data = np.loadtxt(path, ndmin=2, dtype=np.float64)
    except ValueError as exc:
        raise DetflowInputError(
            path, "beammap", "lines of numbers 'resID flag x y'", str(exc).splitlines()[0]
        ) from None
    if data.size == 0 or data.shape[1] not in (4, 5):
        raise DetflowInputError(path, "beammap", "4 columns (resID flag x y)", f"{data.shape[1]} columns")
    bad = np.flatnonzero(~np.isfinite(data[:, :4]).all(axis=1))
    if bad.size:
        raise DetflowInputError(path, f"line {bad[0] + 1}", "finite numbers", "NaN or inf")
    resid, flag = data[:, 0], data[:, 1]
    for name, col in (("resID", resid), ("flag", flag)):
        wrong = np.flatnonzero((col != np.round(col)) | (col < 0) | (col >= 2**32 - 1))
        if wrong.size:
            raise DetflowInputError(path, f"line {wrong[0] + 1}: {name}", "a non-negative integer", col[wrong[0]])
    x, y = np.floor(data[:, 2]).astype(np.int64), np.floor(data[:, 3]).astype(np.int64)
    for name, col, n in (("x", x, p.ncols), ("y", y, p.nrows)):
        wrong = np.flatnonzero((col < 0) | (col >= n))
        if wrong.size:
            raise DetflowInputError(path, f"line {wrong[0] + 1}: {name}", f"0..{n - 1} ({p.name} is {p.ncols} x "
                                    f"{p.nrows})", data[wrong[0], 2 if name == "x" else 3])  # fmt: skip
    resid, flag = resid.astype(np.int64), flag.astype(np.int64)
    uniq, first, n = np.unique(resid, return_index=True, return_counts=True)
    if (n > 1).any():
        raise DetflowInputError(path, "resID", "each resonator once", f"{uniq[n > 1][0]} on several lines")
    good = flag == 0
    cell = y[good] * p.ncols + x[good]
    cu, cn = np.unique(cell, return_counts=True)
    if (cn > 1).any():
        c = cu[cn > 1][0]
        raise DetflowInputError(path, f"pixel x={c % p.ncols} y={c // p.ncols}", "one unflagged resonator",
                                f"{int(cn[cn > 1][0])}")  # fmt: skip
    return Beammap(resid, flag, x, y, p.ncols, p.nrows, str(path))


def _second(path: Path) -> int:
    m = BIN_NAME.match(path.name)
    if m is None:
        raise DetflowInputError(path, "name", "<unix seconds>.bin", path.name)
    return int(m.group(1))


def bin_files(inputs, start: int | None = None, stop: int | None = None) -> list[tuple[Path, int]]:
    """``(path, unix second)`` of the ``.bin`` files named by ``inputs`` (a directory, glob, file, or a list of
    these), by second; with ``start``/``stop`` (unix seconds) the files from ``start - 1`` (packets stamped
    early) to ``stop`` (the photons kept are cut to ``[start, stop)`` by time)."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if BIN_NAME.match(q.name))
            if not found:
                raise DetflowInputError(p, "input", "a directory holding <unix seconds>.bin files", "none")
            paths += found
        elif any(c in str(item) for c in "*?["):
            found = sorted(Path(q) for q in glob.glob(str(item)))
            if not found:
                raise DetflowInputError(item, "input", "a glob matching at least one .bin file", "no match")
            paths += found
        elif not p.is_file():
            raise DetflowInputError(p, "input", "an existing .bin file or directory", "no such file")
        else:
            paths.append(p)
    files = sorted({(p, _second(p)) for p in paths}, key=lambda f: (f[1], str(f[0])))
    seconds = [s for _, s in files]
    if len(set(seconds)) != len(seconds):
        dup = next(s for s in seconds if seconds.count(s) > 1)
        raise DetflowInputError(inputs, "input", "one file per second", f"several {dup}.bin")
    lo = -(2**62) if start is None else start - 1
    hi = 2**62 if stop is None else stop
    chosen = [(p, s) for p, s in files if lo <= s <= hi]
    if not chosen:
        raise DetflowInputError(inputs, "start/stop", f".bin files within {start}..{stop}",
                                f"files from {seconds[0]} to {seconds[-1]}")  # fmt: skip
    for p, _ in chosen:
        size = p.stat().st_size
        if size % 8:
            raise CorruptInputError(p, "size", "a whole number of 64-bit words (a truncated file?)",
                                    f"{size} bytes, {size % 8} after the last whole word")  # fmt: skip
    gaps = np.flatnonzero(np.diff([s for _, s in chosen]) > 1)
    if gaps.size:
        log.warning("%d gap(s) in the .bin seconds, the first after %s", gaps.size, chosen[gaps[0]][0].name)
    return chosen


def year_start(second: int) -> int:
    """Unix time of 00:00 UTC on 1 January of the year holding ``second``."""
    year = dt.datetime.fromtimestamp(second, dt.UTC).year
    return calendar.timegm((year, 1, 1, 0, 0, 0))


def _words(path: Path) -> np.ndarray:
    size = path.stat().st_size
    if size % 8:
        raise CorruptInputError(path, "size", "a whole number of 64-bit words", f"{size} bytes")
    if size == 0:
        return np.empty(0, np.uint64)
    return np.memmap(path, dtype="<u8", mode="r")


@dataclass(frozen=True)
class Window:
    """What the kernels need to know about one file: the photon time window and the header check."""

    origin: int  # unix second of time 0
    t_lo: int  # microseconds since origin
    t_hi: int

    def args(self, second: int) -> tuple[int, int, int, int, int]:
        ys = year_start(second)
        tick_lo = (second - ys - HEADER_TOLERANCE_S) * 2000
        tick_hi = (second - ys + 1 + HEADER_TOLERANCE_S) * 2000
        return (ys - self.origin) * 1_000_000, self.t_lo, self.t_hi, max(tick_lo, 0), tick_hi


def _check(path: Path, second: int, stats: np.ndarray) -> None:
    if stats[km.ERR] == km.ERR_HEADER_TIME:
        ys = year_start(second)
        when = dt.datetime.fromtimestamp(ys + stats[km.ERR_VAL] / 2000, dt.UTC).isoformat(timespec="milliseconds")
        raise DetflowInputError(path, f"header at byte {stats[km.ERR_AT] * 8}: timestamp",
                                f"within {HEADER_TOLERANCE_S} s of the file's second "
                                f"({dt.datetime.fromtimestamp(second, dt.UTC).isoformat()})",
                                f"{stats[km.ERR_VAL]} ticks ({when})")  # fmt: skip
    if stats[km.ERR] == km.ERR_CHANGED:
        raise DetflowInputError(path, "content", "the file as it was counted", "another content (changed meanwhile)")


def scan_file(path: str | Path, second: int, slot_map: np.ndarray, n_slots: int,
              window: Window) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """``(counts, stats)`` of one file: the kept photons per slot (uint32) and the decoder's statistics."""
    path = Path(path)
    counts = np.zeros(n_slots, np.int64)
    stats = np.zeros(km.NSTATS, np.int64)
    km.scan_bin(_words(path), slot_map, *window.args(second), mi.PACKET["max_photons"], mi.PACKET["frame_end_x"],
                counts, stats)  # fmt: skip
    _check(path, second, stats)
    return counts.astype(np.uint32), stats  # (a resonator holds fewer than 2^32 photons a second)


def decode_file(path: str | Path, second: int, slot_map: np.ndarray, good: np.ndarray, window: Window,
                counts: np.ndarray) -> dict[str, np.ndarray]:  # fmt: skip
    """The kept photons of one file (``counts``: its :func:`scan_file` counts), grouped by resonator id
    (ascending) and in time order within each: ``pixel`` uint32, ``time`` uint64 (us since the origin),
    ``phase`` and ``baseline`` float32 degrees."""
    path = Path(path)
    starts = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=starts[1:])
    n = int(starts[-1])
    out = {"pixel": np.empty(n, np.uint32), "time": np.empty(n, np.uint64), "phase": np.empty(n, np.float32),
           "baseline": np.empty(n, np.float32)}  # fmt: skip
    stats = np.zeros(km.NSTATS, np.int64)
    rec = np.empty((n, 2), np.uint64)
    km.decode_bin(_words(path), slot_map, *window.args(second), mi.PACKET["max_photons"], mi.PACKET["frame_end_x"],
                  starts, good.astype(np.uint32), mi.PHASE_DEG_PER_COUNT, mi.BASELINE_DEG_PER_COUNT, rec,
                  rec.view(np.float32), out["pixel"], out["time"], out["phase"], out["baseline"], stats)  # fmt: skip
    _check(path, second, stats)
    return out


def scan_files(files: list[tuple[Path, int]], beam: Beammap, window: Window):
    """A lazy ``(counts (file, slot) uint32, stats (file, stat) int64)``: one scanning task per file."""
    slot_map, n = beam.slot_map(), beam.good.size
    parts = [dask.delayed(scan_file, pure=True)(str(p), s, slot_map, n, window) for p, s in files]
    return dask.delayed(_stack, pure=True)(parts)


def _stack(parts):
    return np.stack([c for c, _ in parts]), np.stack([s for _, s in parts])


def photon_columns(files: list[tuple[Path, int]], beam: Beammap, window: Window,
                   counts: np.ndarray) -> dict[str, da.Array]:  # fmt: skip
    """The lazy photon columns of ``files`` in file order (one decoding task per file, ``counts[i]`` its
    photons per slot), each file's photons grouped by resonator and in time order within each."""
    slot_map, good = beam.slot_map(), beam.good
    dtypes = {"pixel": np.uint32, "time": np.uint64, "phase": np.float32, "baseline": np.float32}
    cols: dict[str, list] = {k: [] for k in dtypes}
    for (p, s), c in zip(files, counts):
        n = int(c.sum())
        if n == 0:
            continue
        d = dask.delayed(decode_file, pure=True)(str(p), s, slot_map, good, window, c)
        for k, t in dtypes.items():
            cols[k].append(da.from_delayed(d[k], (n,), dtype=t))
    return {k: da.concatenate(v) if v else np.empty(0, dtypes[k]) for k, v in cols.items()}
