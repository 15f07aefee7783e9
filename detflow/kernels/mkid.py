"""MKID ``.bin`` packet streams decoded on plain arrays: a counting pass and a decoding pass.

A file is a run of 64-bit big-endian words, given here as the file's bytes viewed as little-endian
``uint64`` (a memory map; each word is byte-swapped here). Bit layout (MSB first):

- header: 0xFF marker [63:56], roach [55:48], frame [47:36], timestamp [35:0] in 0.5 ms ticks since
  00:00 UTC on 1 January of the file's year;
- photon: x [63:54], y [53:44], microsecond offset within the tick [43:35], phase [34:17] (signed 18 bit),
  baseline [16:0] (signed 17 bit); ``x = 511`` closes a frame (not a photon).

Photon time (microseconds since the observation's start) = ``year_off_us + tick * 500 + offset`` with
``year_off_us`` the start of the file's year minus the observation's start. A photon is kept when its pixel
``(x, y)`` holds a resonator of the beammap whose flag is 0 (``slot_map[y, x] >= 0``: its index among the
kept resonators sorted by id; -1 no resonator, -2 flagged) and its time is in ``[t_lo, t_hi)``; the others
are counted by cause in ``stats`` (indices below). Photon words before the first header have no time
(counted as orphans).

:func:`scan_bin` counts the kept photons per resonator (``counts``: the sizes a store needs before it
is written); :func:`decode_bin` writes them grouped by resonator (ascending id, the order of the slots)
and in time order within a resonator, given each resonator's first row (``cursor``). Errors are returned
in ``stats`` (``ERR``, ``ERR_AT`` the word index, ``ERR_VAL``), never raised: a header whose tick is outside
``[tick_lo, tick_hi)`` (the file's second and its tolerance) is ``ERR_HEADER_TIME``.
"""

from __future__ import annotations

import numba
import numpy as np

from ._config import CACHE

# stats indices
WORDS, PACKETS, PHOTONS, FRAME_ENDS, UNMAPPED, FLAGGED, OUT_OF_RANGE, ORPHANS, LONG_PACKETS, BAD_OFFSET = range(10)
TMIN, TMAX, ERR, ERR_AT, ERR_VAL = range(10, 15)
NSTATS = 15
STAT_NAMES = ("words", "packets", "photons", "frame_ends", "dropped_unmapped", "dropped_flagged",
              "dropped_out_of_range", "orphan_words", "long_packets", "bad_offsets")  # fmt: skip
ERR_HEADER_TIME = 1  # a header's tick outside the file's second (ERR_VAL: the tick)
ERR_CHANGED = 2  # a resonator's count differs from the counting pass (ERR_AT: the slot)

_M8 = np.uint64(0xFF)


@numba.njit(nogil=True, inline="always", cache=CACHE)
def bswap64(w):
    """The word with its bytes reversed (big-endian file word -> value)."""
    w = ((w & np.uint64(0x00000000FFFFFFFF)) << np.uint64(32)) | (w >> np.uint64(32))
    w = ((w & np.uint64(0x0000FFFF0000FFFF)) << np.uint64(16)) | ((w & np.uint64(0xFFFF0000FFFF0000)) >> np.uint64(16))
    return ((w & np.uint64(0x00FF00FF00FF00FF)) << np.uint64(8)) | ((w & np.uint64(0xFF00FF00FF00FF00)) >> np.uint64(8))


@numba.njit(nogil=True, inline="always", cache=CACHE)
def _signed(raw, bits):
    half = np.int64(1) << np.int64(bits - 1)
    return raw - (half << np.int64(1)) if raw >= half else raw


@numba.njit(nogil=True, cache=CACHE)
def _walk(words, slot_map, year_off_us, t_lo, t_hi, tick_lo, tick_hi, max_photons, frame_end_x, stats, counts,
          cursor, rec_u, rec_f, phase_scale, base_scale, write):  # fmt: skip
    ny, nx = slot_map.shape
    for k in range(NSTATS):
        stats[k] = 0
    stats[TMIN] = np.iinfo(np.int64).max
    stats[TMAX] = np.iinfo(np.int64).min
    stats[WORDS] = words.size
    have_header = False
    base_us = np.int64(0)
    in_packet = 0
    for i in range(words.size):
        w = bswap64(words[i])
        if (w >> np.uint64(56)) == _M8:
            tick = np.int64(w & np.uint64(0xFFFFFFFFF))
            if tick < tick_lo or tick >= tick_hi:
                stats[ERR] = ERR_HEADER_TIME
                stats[ERR_AT] = i
                stats[ERR_VAL] = tick
                return
            have_header = True
            base_us = year_off_us + tick * 500
            stats[PACKETS] += 1
            in_packet = 0
            continue
        if not have_header:
            stats[ORPHANS] += 1
            continue
        in_packet += 1
        if in_packet == max_photons + 1:
            stats[LONG_PACKETS] += 1
        x = np.int64(w >> np.uint64(54))
        if x == frame_end_x:
            stats[FRAME_ENDS] += 1
            continue
        y = np.int64((w >> np.uint64(44)) & np.uint64(0x3FF))
        off = np.int64((w >> np.uint64(35)) & np.uint64(0x1FF))
        if off >= 500:
            stats[BAD_OFFSET] += 1
        if x >= nx or y >= ny:
            stats[UNMAPPED] += 1
            continue
        s = slot_map[y, x]
        if s == -1:
            stats[UNMAPPED] += 1
            continue
        if s < 0:
            stats[FLAGGED] += 1
            continue
        t = base_us + off
        if t < t_lo or t >= t_hi:
            stats[OUT_OF_RANGE] += 1
            continue
        stats[PHOTONS] += 1
        stats[TMIN] = min(stats[TMIN], t)
        stats[TMAX] = max(stats[TMAX], t)
        if not write:
            counts[s] += 1
            continue
        j = cursor[s]
        if j >= counts[s]:  # more photons than counted (``counts``: each slot's end row when writing)
            stats[ERR] = ERR_CHANGED
            stats[ERR_AT] = s
            return
        cursor[s] = j + 1
        rec_u[j, 0] = np.uint64(t)  # one 16-byte record per photon: one write stream per resonator
        rec_f[j, 2] = np.float32(np.float64(_signed(np.int64((w >> np.uint64(17)) & np.uint64(0x3FFFF)), 18))
                                  * phase_scale)  # fmt: skip
        rec_f[j, 3] = np.float32(np.float64(_signed(np.int64(w & np.uint64(0x1FFFF)), 17)) * base_scale)


@numba.njit(nogil=True, cache=CACHE)
def scan_bin(words, slot_map, year_off_us, t_lo, t_hi, tick_lo, tick_hi, max_photons, frame_end_x, counts, stats):
    """Count the kept photons of one file per resonator slot (added to ``counts``); ``stats`` filled."""
    _walk(words, slot_map, year_off_us, t_lo, t_hi, tick_lo, tick_hi, max_photons, frame_end_x, stats, counts,
          np.empty(0, np.int64), np.empty((0, 2), np.uint64), np.empty((0, 4), np.float32), 1.0, 1.0, False)  # fmt: skip


@numba.njit(nogil=True, cache=CACHE)
def decode_bin(words, slot_map, year_off_us, t_lo, t_hi, tick_lo, tick_hi, max_photons, frame_end_x, starts, resid,
               phase_scale, base_scale, rec_u, rec_f, out_pixel, out_time, out_phase, out_base, stats):  # fmt: skip
    """Decode one file's kept photons into the ``out_*`` columns: slot ``s`` fills rows
    ``starts[s]:starts[s + 1]`` (``starts``: the cumulative counts of :func:`scan_bin`, ``n_slots + 1``),
    in time order. ``rec_u`` (n, 2) uint64 and ``rec_f`` (n, 4) float32 are two views of one scratch
    buffer: each photon is scattered as one 16-byte record (time, phase, baseline), then the columns are
    read out in order (one write stream per resonator instead of four: fewer cache misses).
    ``stats[PHOTONS]`` is the number written; a file with other counts than ``starts`` says (``ERR_CHANGED``)
    without writing past a resonator's rows."""
    cursor = starts[:-1].copy()
    _walk(words, slot_map, year_off_us, t_lo, t_hi, tick_lo, tick_hi, max_photons, frame_end_x, stats, starts[1:],
          cursor, rec_u, rec_f, phase_scale, base_scale, True)  # fmt: skip
    if stats[ERR] != 0:
        return
    for j in range(out_time.size):  # the columns, read in order from the records
        out_time[j] = rec_u[j, 0]
        out_phase[j] = rec_f[j, 2]
        out_base[j] = rec_f[j, 3]
    for s in range(starts.size - 1):
        if cursor[s] != starts[s + 1]:  # the file changed between the passes
            stats[ERR] = ERR_CHANGED
            stats[ERR_AT] = s
            stats[ERR_VAL] = cursor[s] - starts[s]
            return
        lo, hi = starts[s], starts[s + 1]
        out_pixel[lo:hi] = resid[s]
        ordered = True
        for j in range(lo + 1, hi):
            if out_time[j] < out_time[j - 1]:
                ordered = False
                break
        if not ordered:
            order = np.argsort(out_time[lo:hi], kind="mergesort") + lo
            out_time[lo:hi] = out_time[order]
            out_phase[lo:hi] = out_phase[order]
            out_base[lo:hi] = out_base[order]
