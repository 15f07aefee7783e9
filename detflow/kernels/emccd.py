"""EMCCD (Roman Coronagraph EXCAM) numerics on plain arrays: row bias, nonlinearity, noise factors.

* :func:`row_bias`: per row, the median of the reliable prescan columns minus ``bias_offset``, with its
  error ``std / sqrt(ncols)``.
* :func:`relgain_curve` / :func:`relative_gain`: the relative-gain table (read and validated by
  :func:`detflow.io.excam_l1.read_nonlin_table`): linear in EM gain between the bracketing columns,
  then linear in DN, both constant beyond the table; the L2a counts are the bias-subtracted counts
  times the relative gain.
* :func:`enf`: the excess-noise factor ``sqrt(2 (g - 1) g^(-(N + 1)/N) + 1/g)`` of an N-stage gain
  register (N = 604 for EXCAM).
* :func:`saturation_dn`: ``sat_thresh * min(fwc_em, fwc_pp * g) / k`` in DN.
* :func:`flag_cosmics_frame`: saturated cosmic-ray plateaus with their tails (numba, row by row).
* :func:`combine_stack`: mean and median combines of a frame stack ignoring flagged frames, with the
  number of good frames, errors and the combined DQ (numba, one pass over the stack).
"""

from __future__ import annotations

import math
import warnings

import numba
import numpy as np

from ._config import CACHE


def row_bias(frame: np.ndarray, cols: tuple[int, int], bias_offset: float = 0.0, outlier_nsigma: float | None = None,
             mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """``(bias, err)`` per row from the prescan columns ``cols[0]:cols[1]`` of one or more frames
    (``(..., rows, columns)``); float64.

    ``mask`` (same shape as ``frame``, True = leave out, e.g. a cosmic-ray tail that ran on into the
    prescan) drops pixels from a row's median and error. With ``outlier_nsigma``, rows whose median
    lies more than that many standard deviations (over the rows of the frame) from the median of all
    rows take the median of all rows instead (corgidrp's guard against long cosmic tails; the rows
    are those of ``frame``, so the statistics depend on which rows are passed)."""
    block = np.asarray(frame[..., cols[0] : cols[1]], dtype=np.float64)
    if mask is not None and np.any(mask[..., cols[0] : cols[1]]):
        block = np.where(mask[..., cols[0] : cols[1]], np.nan, block)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a row with every reliable pixel masked: NaN
            med = np.nanmedian(block, axis=-1)
            err = np.nanstd(block, axis=-1) / np.sqrt(np.sum(np.isfinite(block), axis=-1))
    else:
        med = np.median(block, axis=-1)
        err = np.std(block, axis=-1) / np.sqrt(block.shape[-1])
    if outlier_nsigma is not None:
        centre = np.median(med, axis=-1, keepdims=True)
        spread = np.std(med, axis=-1, keepdims=True)
        med = np.where(np.abs(med - centre) > outlier_nsigma * spread, centre, med)
    return med - bias_offset, err


def relgain_curve(gains: np.ndarray, counts: np.ndarray, rel: np.ndarray, em_gain: float) -> np.ndarray:
    """Relative gains at ``em_gain`` for each DN of ``counts``: linear between the two bracketing
    columns of ``rel`` (one per EM gain of the increasing ``gains``), the edge column beyond."""
    if em_gain <= gains[0]:
        return rel[:, 0].copy()
    if em_gain >= gains[-1]:
        return rel[:, -1].copy()
    j = int(np.searchsorted(gains, em_gain, side="right") - 1)
    w = (em_gain - gains[j]) / (gains[j + 1] - gains[j])
    return (1 - w) * rel[:, j] + w * rel[:, j + 1]


def relative_gain(dn: np.ndarray, counts: np.ndarray, curve: np.ndarray) -> np.ndarray:
    """The relative gain of each bias-subtracted DN value (linear in DN, edge values beyond)."""
    return np.interp(dn, counts, curve)


def enf(g, n_stages: int = 604):
    """Excess-noise factor of an EM gain register of ``n_stages`` cells at gain ``g`` (>= 1)."""
    g = np.asarray(g, dtype=np.float64)
    return np.sqrt(2 * (g - 1) * g ** (-(n_stages + 1) / n_stages) + 1 / g)


def saturation_dn(em_gain: float, fwc_em_e: float, fwc_pp_e: float, eperdn: float, sat_thresh: float) -> float:
    """Saturation level in DN: the smaller of the gain-register and the pixel full wells (electrons at
    the output) times ``sat_thresh``, over the k gain."""
    return sat_thresh * min(fwc_em_e / eperdn, fwc_pp_e * em_gain / eperdn)


# ---- cosmic-ray plateaus ------------------------------------------------------------------------------
@numba.njit(nogil=True, cache=CACHE)
def _row_median_filter(row, size, out):
    """Running median of ``size`` samples (window ``[i - size//2, i + (size-1)//2]``, edges repeated,
    the element of rank ``size//2``: scipy.ndimage.median_filter's choice for even sizes)."""
    n = row.size
    buf = np.empty(size)
    lo = size // 2
    for i in range(n):
        for k in range(size):
            j = min(max(i - lo + k, 0), n - 1)
            buf[k] = row[j]
        buf.sort()
        out[i] = buf[size // 2]


@numba.njit(nogil=True, cache=CACHE)
def _row_nanmedian_filter(row, size, out):
    """:func:`_row_median_filter` over the finite samples of each window, the mean of the two middle ones
    for an even count (numpy's nanmedian, as corgidrp filters rows holding NaN), NaN for none."""
    n = row.size
    buf = np.empty(size)
    lo = size // 2
    for i in range(n):
        m = 0
        for k in range(size):
            v = row[min(max(i - lo + k, 0), n - 1)]
            if v == v:
                buf[m] = v
                m += 1
        if m == 0:
            out[i] = np.nan
            continue
        part = np.sort(buf[:m])
        out[i] = part[m // 2] if m % 2 else 0.5 * (part[m // 2 - 1] + part[m // 2])


@numba.njit(nogil=True, cache=CACHE)
def flag_cosmics_frame(img, fwc, sat_thresh, plat_thresh, cosm_filter, cosm_box, cosm_tail, full_frame, wrap_overlap,
                       mask):  # fmt: skip
    """Mask saturated cosmic-ray plateaus, their tails and a box around their heads in one frame.

    Rows whose maximum reaches ``sat_thresh * fwc`` are median-filtered over ``cosm_filter + 1`` pixels;
    from each filtered pixel at or above the threshold, walk back while the row stays at or above
    ``plat_thresh * fwc`` to the plateau head; mask the head and the ``cosm_filter + cosm_tail`` pixels
    after it (to the row end, or with ``full_frame`` onward into the next row: the serial register
    reads on) and a ``(2 cosm_box + 1)^2`` box centred on the head (inside the frame). ``mask`` (uint8,
    same shape) is OR'ed with 1. ``wrap_overlap``: the part of a tail past the row's end restarts that
    many pixels back: 1 as corgidrp 5.1.1 and II&T (at the row's last pixel, already masked, so it ends
    one pixel short in the next row), 0 to keep the length of a tail inside a row. Bias-subtracted DN
    in; NaNs are never a plateau, and a row holding any is filtered over its finite samples
    (:func:`_row_nanmedian_filter`).
    """
    nrow, ncol = img.shape
    sat = sat_thresh * fwc
    plat = plat_thresh * fwc
    filt = np.empty(ncol)
    heads = np.zeros(ncol, dtype=np.bool_)
    for r in range(nrow):
        row = img[r]
        top = -np.inf
        has_nan = False
        for c in range(ncol):
            if row[c] > top:
                top = row[c]
            elif row[c] != row[c]:
                has_nan = True
        if not top >= sat:
            continue
        if has_nan:  # pixels masked beforehand (median_filter_mode 2)
            _row_nanmedian_filter(row, cosm_filter + 1, filt)
        else:
            _row_median_filter(row, cosm_filter + 1, filt)
        heads[:] = False
        for c in range(ncol):
            if filt[c] >= sat:
                b = c
                while b > 0 and row[b] >= plat:
                    b -= 1
                if not row[b] >= plat:
                    b += 1
                heads[b] = True
        for b in range(ncol):
            if not heads[b]:
                continue
            stop = b + cosm_filter + cosm_tail + 1
            for c in range(b, min(stop, ncol)):
                mask[r, c] |= 1
            if full_frame and stop > ncol:
                over = stop - ncol - wrap_overlap
                rr, cc = r + 1, 0
                while over > 0 and rr < nrow:
                    mask[rr, cc] |= 1
                    over -= 1
                    cc += 1
                    if cc == ncol:
                        rr, cc = rr + 1, 0
            for rr in range(max(r - cosm_box, 0), min(r + cosm_box + 1, nrow)):
                for cc in range(max(b - cosm_box, 0), min(b + cosm_box + 1, ncol)):
                    mask[rr, cc] |= 1


# ---- data-set combines ----------------------------------------------------------------------------------
@numba.njit(nogil=True, cache=CACHE)
def combine_stack_flagged(data, err, dq, frame_flags, bad_bits, mean, median, err_mean, err_median, ngood, dq_out):
    """Mean and median over the frame axis of a ``(frame, y, x)`` tile, leaving out frames whose DQ has
    any of ``bad_bits`` (and non-finite values), one pixel at a time. ``frame_flags`` (frame,) uint32
    are OR'ed into every pixel of their frame (e.g. DO_NOT_USE for a rejected frame) without a copy of
    the stack.

    ``err_mean = sqrt(mean(err^2)) / sqrt(n)`` over the n good frames (standard propagation),
    ``err_median = err_mean * sqrt(pi / 2)``; ``ngood`` = n; ``dq_out`` = OR of every frame's DQ where
    no frame is good (NaN results), else 0. One pass for both combines: the stack is streamed a row
    of every frame at a time (contiguous reads) into a per-pixel buffer.
    """
    nf, ny, nx = data.shape
    vals = np.empty((nx, nf))
    n = np.empty(nx, dtype=np.int64)
    s = np.empty(nx)
    e2 = np.empty(nx)
    flags = np.empty(nx, dtype=np.uint32)
    inflate = math.sqrt(math.pi / 2.0)
    for i in range(ny):
        n[:] = 0
        s[:] = 0.0
        e2[:] = 0.0
        flags[:] = 0
        for f in range(nf):
            ff = frame_flags[f]
            for j in range(nx):
                q = dq[f, i, j] | ff
                flags[j] |= q
                v = data[f, i, j]
                if (q & bad_bits) != 0 or not np.isfinite(v):
                    continue
                k = n[j]
                vals[j, k] = v
                n[j] = k + 1
                s[j] += v
                e2[j] += np.float64(err[f, i, j]) ** 2
        for j in range(nx):
            m = n[j]
            ngood[i, j] = m
            if m == 0:
                mean[i, j] = median[i, j] = err_mean[i, j] = err_median[i, j] = np.nan
                dq_out[i, j] = flags[j]
                continue
            dq_out[i, j] = 0
            mean[i, j] = s[j] / m
            median[i, j] = np.median(vals[j, :m])
            em = math.sqrt(e2[j] / m) / math.sqrt(m)
            err_mean[i, j] = em
            err_median[i, j] = em * inflate


def combine_stack(data, err, dq, bad_bits, mean, median, err_mean, err_median, ngood, dq_out):
    """:func:`combine_stack_flagged` with no per-frame flags."""
    combine_stack_flagged(data, err, dq, np.zeros(data.shape[0], np.uint32), bad_bits, mean, median, err_mean,
                          err_median, ngood, dq_out)  # fmt: skip


# ---- L2a -> L2b ------------------------------------------------------------------------------------------
@numba.njit(nogil=True, cache=CACHE)
def fill_nearest(img):
    """Replace every NaN of ``img`` (in place) by the value of a near finite pixel, searching squares of
    growing half-width s = 1, 2, ...: row offsets in the order 0, 1, ..., s, -s, ..., -1, column offsets
    -s ... s; at each offset every still-NaN pixel whose neighbour there is inside the frame takes the
    neighbour's value as it was before that offset was applied (corgidrp's desmear fill, vectorised per
    offset, so the order and the result are the same)."""
    ny, nx = img.shape
    n = 0
    for r in range(ny):
        for c in range(nx):
            if np.isnan(img[r, c]):
                n += 1
    rr = np.empty(n, dtype=np.int64)
    cc = np.empty(n, dtype=np.int64)
    k = 0
    for r in range(ny):
        for c in range(nx):
            if np.isnan(img[r, c]):
                rr[k] = r
                cc[k] = c
                k += 1
    vals = np.empty(n)
    shift = 1
    limit = max(ny, nx)
    while n > 0 and shift < limit:
        for i in range(2 * shift + 1):
            rs = i if i <= shift else i - 2 * shift - 1
            for cs in range(-shift, shift + 1):
                if n == 0:
                    break
                for k in range(n):
                    r2, c2 = rr[k] + rs, cc[k] + cs
                    vals[k] = img[r2, c2] if 0 <= r2 < ny and 0 <= c2 < nx else np.nan
                m = 0
                for k in range(n):
                    if not np.isnan(vals[k]):
                        img[rr[k], cc[k]] = vals[k]
                    else:
                        rr[m] = rr[k]
                        cc[m] = cc[k]
                        m += 1
                n = m
        shift += 1


@numba.njit(nogil=True, cache=CACHE)
def desmear(img, row_time, exptime, out):
    """Remove the smear of a shutterless readout: ``out = img - smear`` with
    ``smear[r] = sum_{s <= r} a (1 + a)^(s - r - 1) img[s]``, ``a = row_time / exptime`` (rows in readout
    order). The sum obeys ``smear[r] = (smear[r-1] + a img[r]) / (1 + a)``: O(rows) per column
    instead of the direct O(rows^2)."""
    ny, nx = img.shape
    a = row_time / exptime
    inv = 1.0 / (1.0 + a)
    for j in range(nx):
        s = 0.0
        for r in range(ny):
            s = (s + a * img[r, j]) * inv
            out[r, j] = img[r, j] - s


def desmear_masked(img: np.ndarray, masked: np.ndarray, row_time: float, exptime: float) -> np.ndarray:
    """Desmear one image whose ``masked`` pixels (cosmic rays) were not smeared by the scene: the smear
    is computed with those pixels filled from their nearest unmasked neighbours (:func:`fill_nearest`),
    then removed from every pixel, the masked ones keeping their own value minus the smear."""
    work = np.array(img, dtype=np.float64)
    if masked.any():
        work[masked] = np.nan
        fill_nearest(work)
    out = np.empty_like(work)
    desmear(work, row_time, exptime, out)
    if masked.any():
        out[masked] = img[masked] - (work[masked] - out[masked])
    return out


def synthesized_dark(fpn, dark_current, cic, em_gain: float, exptime: float):
    """The master dark in electrons from the noise maps: ``F / g + t D + C`` (fixed-pattern noise seen
    through the EM gain, dark current rate, clock-induced charge)."""
    return np.asarray(fpn) / em_gain + exptime * np.asarray(dark_current) + np.asarray(cic)


def to_electrons(dn, err_dn, eperdn: float, em_gain: float, shot_noise: bool = False, n_stages: int = 604):
    """L2a DN to L2b detected electrons: ``dn * k / g``, the error scaled alike. With ``shot_noise``
    the Poisson noise of the detected electrons, amplified by the excess-noise factor of the gain
    register, is added in quadrature: ``err^2 += ENF(g)^2 max(e, 0)``."""
    scale = eperdn / em_gain
    e = np.asarray(dn) * scale
    err = np.asarray(err_dn) * scale
    if shot_noise:
        err = np.sqrt(err**2 + enf(em_gain, n_stages) ** 2 * np.maximum(e, 0))
    return e, err


# ---- the L2b steps, one pass each over a chunk of frames ---------------------------------------------------
# (frame, y, x) arrays, per-frame values (frame,), calibration maps (y, x). The arithmetic is that of the
# NumPy expressions in each docstring, operation for operation, so the results are the same to the bit
# (no fastmath: no contraction into fused multiply-adds); tests/test_excam_l2b_kernels.py checks them.
@numba.njit(nogil=True, cache=CACHE)
def electrons_frames(data, err, scale, rn2, f2, shot, out_data, out_err):
    """``d = data * scale``, ``e = err * scale``; with ``shot``: ``e = sqrt(e**2 + rn2 + f2 * clip(d, 0))``
    (NaN stays NaN)."""
    nf, ny, nx = data.shape
    for f in range(nf):
        s = scale[f]
        for i in range(ny):
            for j in range(nx):
                d = data[f, i, j] * s
                e = err[f, i, j] * s
                if shot:
                    c = 0.0 if d < 0.0 else d
                    e = np.sqrt(e * e + rn2[f] + f2[f] * c)
                out_data[f, i, j] = d
                out_err[f, i, j] = e


@numba.njit(nogil=True, cache=CACHE)
def subtract_synthesized_dark(data, fpn, dark_current, cic, gain, exptime, out):
    """``data - (fpn / gain + exptime * dark_current + cic)``, gain and exptime per frame."""
    nf, ny, nx = data.shape
    for f in range(nf):
        g = gain[f]
        t = exptime[f]
        for i in range(ny):
            for j in range(nx):
                out[f, i, j] = data[f, i, j] - (fpn[i, j] / g + t * dark_current[i, j] + cic[i, j])


@numba.njit(nogil=True, cache=CACHE)
def subtract_master_dark(data, err, dark, dark_err, with_err, out_data, out_err):
    """``data - dark``; with ``with_err``: ``err = sqrt(err**2 + dark_err**2)``, else err unchanged."""
    nf, ny, nx = data.shape
    for f in range(nf):
        for i in range(ny):
            for j in range(nx):
                out_data[f, i, j] = data[f, i, j] - dark[i, j]
                e = err[f, i, j]
                if with_err:
                    de = dark_err[i, j]
                    e = np.sqrt(e * e + de * de)
                out_err[f, i, j] = e


@numba.njit(nogil=True, cache=CACHE)
def divide_flat(data, err, dq, flat, flat_err, with_err, no_flat_bit, out_data, out_err, out_dq):
    """Where ``flat == 0``: NaN data and err, ``dq | no_flat_bit``. Elsewhere ``data / flat``,
    ``err / |flat|``; with ``with_err``: ``err = sqrt(err**2 + (data * flat_err / flat**2)**2)`` (``data``
    before the division)."""
    nf, ny, nx = data.shape
    for f in range(nf):
        for i in range(ny):
            for j in range(nx):
                fl = flat[i, j]
                q = dq[f, i, j]
                if fl == 0:
                    out_data[f, i, j] = np.nan
                    out_err[f, i, j] = np.nan
                    out_dq[f, i, j] = q | no_flat_bit
                    continue
                d = data[f, i, j]
                e = err[f, i, j] / abs(fl)
                if with_err:
                    r = d * flat_err[i, j] / (fl * fl)
                    e = np.sqrt(e * e + r * r)
                out_data[f, i, j] = d / fl
                out_err[f, i, j] = e
                out_dq[f, i, j] = q


@numba.njit(nogil=True, cache=CACHE)
def flag_bad_pixels(data, dq, badpix, with_map, bad_bit, nan_flagged, out_data, out_dq):
    """``dq | bad_bit`` where ``badpix != 0`` (with ``with_map``); with ``nan_flagged`` data NaN wherever the
    resulting dq is not 0."""
    nf, ny, nx = data.shape
    for f in range(nf):
        for i in range(ny):
            for j in range(nx):
                q = dq[f, i, j]
                if with_map and badpix[i, j] != 0:
                    q = q | bad_bit
                out_dq[f, i, j] = q
                out_data[f, i, j] = np.nan if nan_flagged and q != 0 else data[f, i, j]
