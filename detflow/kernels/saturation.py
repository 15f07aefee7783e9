"""Saturation and A/D-floor flagging of one exposure's resultants.

Semantics of ``stcal.saturation.saturation.flag_saturated_pixels`` as the Roman pipelines call it:

1. A resultant is SATURATED once any resultant up to it reached the per-pixel threshold (thresholds
   that are NaN or flagged NO_SAT_CHECK are replaced by ``atod_limit + 1`` before these kernels);
   resultants at or below 0 DN get AD_FLOOR | DO_NOT_USE. SATURATED is grown by ``ngrow`` pixels in a
   square box, resultant by resultant.
2. Read-pattern dilution: a resultant averaging several frames can saturate part-way through. If it
   is not yet flagged, the next one is saturated, and it exceeds ``threshold * mean(frames) /
   last(frame)``, it gets DO_NOT_USE (grown by ``ngrow`` too).
3. Second-resultant check (three or more resultants): DO_NOT_USE on resultant 1 when resultant 2 is
   saturated, resultant 1 is not, the first resultant extrapolates below the threshold and the
   1-to-0 difference exceeds ``(threshold - R0) / N_1``.
4. ``backup`` passes (romancal): a multi-frame resultant takes SATURATED from the next resultant.

Because SATURATED is cumulative along the ramp, each pixel's flags are described by one number, the
first saturated resultant; growing SATURATED in every resultant is a minimum filter of that map, and
a dilution candidate can only sit at the resultant just before it. The spatial work is therefore
done on small per-pixel maps (``first_crossing`` -> ``min_filter`` -> ``dilution_candidates``, then
``apply_saturation`` reads the candidates of the neighbours), and only those maps need halos between
tiles, not the resultant cubes. Input group flags are assumed to carry no SATURATED bits (true after
dq_init); they are kept as they are.

The DQ values come in ``flags`` (:func:`dq_flags`, :data:`F_SAT` ... indices); nothing here imports the package.
"""

from __future__ import annotations

import numba
import numpy as np

from ._config import CACHE

# index of each DQ value in the ``flags`` vector
F_SAT, F_DNU, F_ADF = range(3)


def dq_flags(saturated, do_not_use, ad_floor) -> np.ndarray:
    """The ``flags`` vector of :func:`dilution_candidates` and :func:`apply_saturation` from the DQ bit values."""
    return np.array([saturated, do_not_use, ad_floor], dtype=np.uint32)


@numba.njit(nogil=True, cache=CACHE)
def first_crossing(data, thresh, out):
    """``out[y, x]`` = first resultant with ``data >= thresh`` (``n`` if none). data (n, ny, nx)."""
    n, ny, nx = data.shape
    for y in range(ny):
        for x in range(nx):
            out[y, x] = n
    for g in range(n - 1, -1, -1):
        for y in range(ny):
            for x in range(nx):
                if data[g, y, x] >= thresh[y, x]:
                    out[y, x] = g


@numba.njit(nogil=True, cache=CACHE)
def min_filter(a, k, out):
    """Minimum over the (2k+1)^2 box around each pixel, the box cut at the array edges."""
    ny, nx = a.shape
    tmp = np.empty_like(a)
    for y in range(ny):
        for x in range(nx):
            m = a[y, x]
            for xx in range(max(0, x - k), min(nx, x + k + 1)):
                m = min(m, a[y, xx])
            tmp[y, x] = m
    for y in range(ny):
        for x in range(nx):
            m = tmp[y, x]
            for yy in range(max(0, y - k), min(ny, y + k + 1)):
                m = min(m, tmp[yy, x])
            out[y, x] = m


@numba.njit(nogil=True, cache=CACHE)
def dilution_candidates(data, gdq, thresh, check, first_sat, dilution, flags, out):
    """``out[y, x]`` = the resultant a dilution DO_NOT_USE starts from at this pixel, or -1.

    ``first_sat`` is the grown first saturated resultant; the candidate is the resultant just before
    it, when it averages several frames and already exceeds the diluted threshold. ``flags`` from :func:`dq_flags`.
    """
    sat_dnu = flags[F_SAT] | flags[F_DNU]
    n, ny, nx = data.shape
    for y in range(ny):
        for x in range(nx):
            out[y, x] = -1
            g = first_sat[y, x] - 1
            if g < 0 or g > n - 2 or dilution[g] == 1.0:
                continue
            v = data[g, y, x]
            if v <= 0 or (gdq[g, y, x] & sat_dnu) != 0:
                continue
            f = dilution[g] if check[y, x] else 1.0
            if v >= thresh[y, x] * f:
                out[y, x] = g


@numba.njit(nogil=True, cache=CACHE)
def apply_saturation(data, gdq, thresh, first_sat, cand, k, first_mean, third_last, second_n, multi, backup,
                     flags, out):  # fmt: skip
    """Write the group flags of a tile into ``out`` (n, ny, nx).

    ``first_sat`` (ny, nx) the grown first saturated resultant; ``cand`` (ny + 2k, nx + 2k) the
    dilution candidates with a halo of ``k`` (-1 outside the detector); ``first_mean``,
    ``third_last``, ``second_n``: ``mean(rp[0])``, ``rp[2][-1]``, ``len(rp[1])`` (0 disables the
    second-resultant check); ``multi`` (n,) True for multi-frame resultants; ``flags`` from :func:`dq_flags`.
    """
    sat, dnu, adf_dnu = flags[F_SAT], flags[F_DNU], flags[F_ADF] | flags[F_DNU]
    n, ny, nx = data.shape
    for y in range(ny):
        for x in range(nx):
            fs = first_sat[y, x]
            t = thresh[y, x]
            grp2 = False
            if n > 2 and second_n > 0 and fs == 2:
                r0 = data[0, y, x]
                grp2 = (r0 / first_mean) * third_last < t and (data[1, y, x] - r0) > (t - r0) / second_n
            for _ in range(backup):
                if fs >= 1 and fs <= n - 1 and multi[fs - 1]:
                    fs -= 1
            for g in range(n):
                f = gdq[g, y, x]
                if g >= fs:
                    f |= sat
                if data[g, y, x] <= 0:
                    f |= adf_dnu
                out[g, y, x] = f
            if grp2:
                out[1, y, x] |= dnu
            for yy in range(y, y + 2 * k + 1):
                for xx in range(x, x + 2 * k + 1):
                    c = cand[yy, xx]
                    if c >= 0:
                        out[c, y, x] |= dnu
