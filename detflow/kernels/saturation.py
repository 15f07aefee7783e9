"""Saturation and A/D-floor flagging of one exposure's resultants (one pixel tile).

Semantics of ``stcal.saturation.saturation.flag_saturated_pixels`` as the Roman pipelines call it:

1. A resultant is SATURATED once any resultant up to it reached the per-pixel threshold (thresholds
   that are NaN or flagged NO_SAT_CHECK are replaced by ``atod_limit + 1`` before this kernel);
   resultants at or below 0 DN get AD_FLOOR | DO_NOT_USE. SATURATED is grown by ``ngrow`` pixels in a
   square box, resultant by resultant.
2. Read-pattern dilution: a resultant averaging several frames can saturate part-way through. If it
   is not yet flagged, the next one is saturated, and it exceeds ``threshold * mean(frames) /
   last(frame)``, it gets DO_NOT_USE (grown by ``ngrow`` too).
3. Second-resultant check (three or more resultants): DO_NOT_USE on resultant 1 when resultant 2 is
   saturated, resultant 1 is not, the first resultant extrapolates below the threshold and the
   1-to-0 difference exceeds ``(threshold - R0) / N_1``.
4. ``backup`` passes (romancal): a multi-frame resultant takes SATURATED from the next resultant.

The growth makes this a tile operation: call it on a tile with a halo of ``2 * ngrow`` pixels (the
dilution flags are grown from already-grown flags) and trim the halo.
"""

from __future__ import annotations

import numba
import numpy as np

from ..schema import DQ

_SAT = np.uint32(DQ.SATURATED)
_DNU = np.uint32(DQ.DO_NOT_USE)
_ADF = np.uint32(DQ.AD_FLOOR)


@numba.njit(nogil=True, cache=False)
def _grow(mask, ngrow):
    """Square-box binary dilation by ``ngrow`` pixels (outside the tile counts as unflagged)."""
    ny, nx = mask.shape
    tmp = np.zeros_like(mask)
    for y in range(ny):
        for x in range(nx):
            if mask[y, x]:
                lo = max(0, x - ngrow)
                hi = min(nx, x + ngrow + 1)
                for xx in range(lo, hi):
                    tmp[y, xx] = True
    out = np.zeros_like(mask)
    for y in range(ny):
        for x in range(nx):
            if tmp[y, x]:
                lo = max(0, y - ngrow)
                hi = min(ny, y + ngrow + 1)
                for yy in range(lo, hi):
                    out[yy, x] = True
    return out


@numba.njit(nogil=True, cache=False)
def flag_saturation(data, gdq, thresh, check, dilution, first_mean, third_last, second_n, ngrow,
                    backup_multi, backup):  # fmt: skip
    """Return updated group flags for one exposure tile.

    data (n, ny, nx) float32 resultants; gdq (n, ny, nx) uint32 input group flags (not modified);
    thresh (ny, nx) float32 thresholds (already with NO_SAT_CHECK pixels raised); check (ny, nx) bool,
    False where NO_SAT_CHECK (no dilution check there); dilution (n,) ``mean(frames)/last(frame)`` of
    each resultant; first_mean, third_last, second_n: ``mean(rp[0])``, ``rp[2][-1]``, ``len(rp[1])``;
    backup_multi (n,) bool, True where the resultant averages more than one frame.
    """
    n, ny, nx = data.shape
    out = gdq.copy()
    prev = np.zeros((ny, nx), dtype=np.bool_)
    for g in range(n):
        nsat = 0
        for y in range(ny):
            for x in range(nx):
                v = data[g, y, x]
                if v >= thresh[y, x]:
                    prev[y, x] = True
                if prev[y, x]:
                    out[g, y, x] |= _SAT
                if v <= 0:
                    out[g, y, x] |= _ADF | _DNU
                if out[g, y, x] & _SAT:
                    nsat += 1
        if ngrow > 0 and nsat > 0:
            sat = np.zeros((ny, nx), dtype=np.bool_)
            for y in range(ny):
                for x in range(nx):
                    sat[y, x] = (out[g, y, x] & _SAT) != 0
            grown = _grow(sat, ngrow)
            for y in range(ny):
                for x in range(nx):
                    if grown[y, x]:
                        out[g, y, x] |= _SAT

    for g in range(n - 2, -1, -1):
        if dilution[g] == 1.0:
            continue
        part = np.zeros((ny, nx), dtype=np.bool_)
        npart = 0
        for y in range(ny):
            for x in range(nx):
                if (out[g + 1, y, x] & _SAT) == 0 or (out[g, y, x] & (_SAT | _DNU)) != 0:
                    continue
                f = dilution[g] if check[y, x] else 1.0
                if data[g, y, x] >= thresh[y, x] * f:
                    part[y, x] = True
                    npart += 1
        if npart == 0:
            continue
        if ngrow > 0:
            part = _grow(part, ngrow)
        for y in range(ny):
            for x in range(nx):
                if part[y, x]:
                    out[g, y, x] |= _DNU

    if n > 2 and second_n > 0:
        for y in range(ny):
            for x in range(nx):
                t = thresh[y, x]
                r0 = data[0, y, x]
                ok = (r0 / first_mean) * third_last < t
                ok = ok and (data[1, y, x] - r0) > (t - r0) / second_n
                ok = ok and (out[2, y, x] & _SAT) != 0 and (out[1, y, x] & _SAT) == 0
                if ok:
                    out[1, y, x] |= _DNU

    for _ in range(backup):
        for g in range(n - 1):
            if backup_multi[g]:
                for y in range(ny):
                    for x in range(nx):
                        out[g, y, x] |= out[g + 1, y, x] & _SAT
    return out
