"""EMCCD photon counting (Roman Coronagraph EXCAM) on plain arrays: threshold, count, and correct.

High-gain, short frames hold at most a few electrons per pixel; after the gain register one electron is
thousands of electrons at the output, so a threshold ``t`` (``T_factor`` read-noise sigmas) separates
"one or more electrons" from read noise. Counting over ``N`` frames gives the fraction ``p = n / N`` of
frames above threshold; the mean electron count ``lam`` per pixel and frame follows from inverting
the detection probability (Nemati et al. 2020, SPIE 11443, 114435F; Ludwick et al., JATIS 9, 048006)

    eps(lam) = e^-x (lam c1 + lam^2/2 c2 + lam^3/6 c3) / (1 + lam + lam^2/2 + lam^3/6),  x = t / g,

the Poisson series of 1, 2 and 3 electrons (truncated and renormalised), each weighted by the chance
``c_k = sum_{j<k} x^j / j!`` that k electrons amplified by the gamma-distributed gain register end up
above ``t``. The start value is the one-electron inverse ``-ln(1 - p e^x)`` (``p`` itself where the
log has no value), refined by Newton steps on ``N eps(lam) - n`` (two by default), as corgidrp 5.1.1's
``get_pc_mean`` does. Pixels with no count are 0, as are pixels where a Newton step has no finite value.

The statistical variance of ``lam`` is ``eps (1 - eps) / N * B^2`` with
``B = e^x + e^(2x) (1 - x) eps + e^(3x) (1 - 2x + 5x^2/4) eps^2`` (the binomial variance of the counted
fraction through the series inverse of ``eps``); the error also spans the rates counted from the
frames moved up and down by their own errors: ``max(lam_up + sd - lam, lam - lam_low + sd)``.

* :func:`pc_threshold`: the threshold in electrons, with corgidrp's checks.
* :func:`detection_probability`, :func:`coincidence_correct`, :func:`pc_variance`: the scalar
  corrections (numba scalars, and array wrappers for plain use).
* :func:`pc_mean_stack`: the kernel: one ``(frame, y, x)`` tile -> mean rate, error, good frames, DQ.
* :func:`photon_count_mean`: allocates the outputs and calls the kernel.
* :func:`subtract_pc_dark`: dark subtraction and the clip at zero that finish corgidrp's product.

Frames whose DQ has any of ``bad_bits`` are left out of a pixel's counts (corgidrp leaves out any
nonzero DQ: ``bad_bits = 0xFFFFFFFF``). Intended difference from corgidrp: a non-finite value also
leaves its frame out (corgidrp counts a NaN as a frame below threshold).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ._config import CACHE

ALL_BITS = np.uint32(0xFFFFFFFF)
NEGATIVE_RATE_FLAG = np.uint32(256)  # corgidrp's value for a negative corrected rate (detflow DQ.UNRELIABLE_ERROR)


def pc_threshold(read_noise: float, t_factor: float = 5.0, em_gain: float | None = None) -> float:
    """The photon-counting threshold ``t_factor * read_noise`` in electrons; refuses a non-positive read
    noise, a negative threshold and (given ``em_gain``) a threshold at or above the EM gain."""
    if not read_noise > 0:
        raise ValueError(f"read noise must be > 0 electrons for photon counting, got {read_noise}")
    thresh = float(t_factor) * float(read_noise)
    if thresh < 0:
        raise ValueError(f"the photon-counting threshold must be >= 0, got {thresh}")
    if em_gain is not None and thresh >= em_gain:
        raise ValueError(f"the photon-counting threshold ({thresh} e-) must be below the EM gain ({em_gain})")
    return thresh


# ---- scalar corrections (numba; callable from Python on scalars) ----------------------------------------
@numba.njit(nogil=True, cache=CACHE)
def _series(lam, x):
    """Numerator and denominator of eps (without e^-x) and their derivatives in lam."""
    c2 = 1.0 + x
    c3 = 1.0 + x + 0.5 * x * x
    num = lam * (1.0 + lam * (0.5 * c2 + lam * c3 / 6.0))
    dnum = 1.0 + lam * (c2 + 0.5 * lam * c3)
    den = 1.0 + lam * (1.0 + lam * (0.5 + lam / 6.0))
    dden = 1.0 + lam * (1.0 + 0.5 * lam)
    return num, dnum, den, dden


@numba.njit(nogil=True, cache=CACHE)
def detection_probability(lam, thresh, em_gain):
    """``eps(lam)``: the chance that a pixel with mean ``lam`` electrons per frame reads above ``thresh``
    after a gain register of mean gain ``em_gain`` (series to 3 electrons)."""
    x = thresh / em_gain
    num, _, den, _ = _series(lam, x)
    return math.exp(-x) * num / den


@numba.njit(nogil=True, cache=CACHE)
def _correct(nobs, nfr, thresh, em_gain, niter):
    if nfr <= 0 or nobs == 0:
        return 0.0
    x = thresh / em_gain
    p = nobs / nfr
    arg = 1.0 - p * math.exp(x)
    lam = -math.log(arg) if arg > 0 else p
    if lam == 0:
        return 0.0
    ex = math.exp(-x)
    for _ in range(niter):
        num, dnum, den, dden = _series(lam, x)
        f = nfr * ex * num / den - nobs
        d = nfr * ex * (dnum * den - num * dden) / (den * den)
        if not (math.isfinite(f) and math.isfinite(d)) or d == 0.0:
            return 0.0
        step = f / d
        if not math.isfinite(step):
            return 0.0
        lam -= step
    return lam


@numba.njit(nogil=True, cache=CACHE)
def _variance(lam, nfr, thresh, em_gain):
    if nfr <= 0:
        return np.nan
    x = thresh / em_gain
    eps = detection_probability(lam, thresh, em_gain)
    q = eps * (1.0 - eps)
    if q < 0 or not math.isfinite(q):
        return np.nan
    b = math.exp(x) + math.exp(2 * x) * (1.0 - x) * eps + math.exp(3 * x) * (1.0 - 2 * x + 1.25 * x * x) * eps * eps
    return q / nfr * b * b


@numba.njit(nogil=True, cache=CACHE)
def _apply2(fn_id, a, b, thresh, em_gain, niter, out):
    for i in range(out.size):
        if fn_id == 0:
            out[i] = _correct(a[i], b[i], thresh, em_gain, niter)
        else:
            out[i] = _variance(a[i], b[i], thresh, em_gain)


def _broadcast_call(fn_id, a, b, thresh, em_gain, niter):
    a, b = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64))
    out = np.empty(a.shape)
    _apply2(fn_id, np.ascontiguousarray(a).ravel(), np.ascontiguousarray(b).ravel(), float(thresh),
            float(em_gain), int(niter), out.reshape(-1))  # fmt: skip
    return out if out.ndim else float(out)


def coincidence_correct(nobs, nframes, thresh: float, em_gain: float, niter: int = 2):
    """Mean electrons per pixel and frame from ``nobs`` counts in ``nframes`` frames (arrays broadcast):
    the one-electron inverse refined by ``niter`` Newton steps; 0 where nothing was counted, no frame
    was good or a step has no finite value."""
    if int(niter) < 1:
        raise ValueError(f"niter must be an integer >= 1, got {niter}")
    return _broadcast_call(0, nobs, nframes, thresh, em_gain, niter)


def pc_variance(lam, nframes, thresh: float, em_gain: float):
    """Statistical variance of the corrected rate ``lam`` from ``nframes`` frames (arrays broadcast);
    NaN where no frame was good or the binomial variance is negative (a negative ``lam``)."""
    return _broadcast_call(1, lam, nframes, thresh, em_gain, 1)


# ---- the kernel -----------------------------------------------------------------------------------------
@numba.njit(nogil=True, cache=CACHE)
def pc_mean_stack(data, err, dq, bad_bits, thresh, em_gain, niter, neg_flag, mean, err_out, ngood, dq_out):
    """Photon-count a ``(frame, y, x)`` tile and correct it, per pixel. ``data``: bias-subtracted
    electrons at the gain register's output (DN times the k gain, not divided by the EM gain);
    ``thresh`` in the same electrons; the rate is electrons per frame before the gain register.

    A frame counts for a pixel when ``data > thresh``; frames whose DQ has any of ``bad_bits`` or a
    non-finite value are left out. ``mean`` = the corrected rate (electrons per frame, not clipped: a
    dark is subtracted and the clip applied by :func:`subtract_pc_dark`), ``err_out`` = its error
    (statistical, widened by the rates counted on ``data +- err``), ``ngood`` = the frames used,
    ``dq_out`` = OR of every frame's DQ where no frame is good (NaN error, rate 0), ``neg_flag`` where
    the rate came out negative, else 0.
    """
    nf, ny, nx = data.shape
    for i in range(ny):
        for j in range(nx):
            n = 0
            c = 0
            cu = 0
            cl = 0
            flags = np.uint32(0)
            for f in range(nf):
                q = dq[f, i, j]
                flags |= q
                v = np.float64(data[f, i, j])
                if (q & bad_bits) != 0 or not math.isfinite(v):
                    continue
                e = np.float64(err[f, i, j])
                n += 1
                if v > thresh:
                    c += 1
                if v + e > thresh:
                    cu += 1
                if v - e > thresh:
                    cl += 1
            ngood[i, j] = n
            lam = _correct(np.float64(c), np.float64(n), thresh, em_gain, niter)
            up = _correct(np.float64(cu), np.float64(n), thresh, em_gain, niter)
            low = _correct(np.float64(cl), np.float64(n), thresh, em_gain, niter)
            var = _variance(lam, np.float64(n), thresh, em_gain)
            sd = math.sqrt(var) if var >= 0 else np.nan
            a = up + sd - lam
            b = lam - low + sd
            err_out[i, j] = a if a >= b else (b if b > a else np.nan)  # NaN if either is NaN
            mean[i, j] = lam
            if n == 0:
                dq_out[i, j] = flags
            elif lam < 0:
                dq_out[i, j] = neg_flag
            else:
                dq_out[i, j] = 0


def photon_count_mean(data, err, dq, thresh: float, em_gain: float, bad_bits=ALL_BITS, niter: int = 2,
                      neg_flag=NEGATIVE_RATE_FLAG):  # fmt: skip
    """``(mean, err, ngood, dq)`` of a ``(frame, y, x)`` tile (see :func:`pc_mean_stack`); ``err`` and
    ``dq`` may be None (zero errors, no flags)."""
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"expected a (frame, y, x) stack, got shape {data.shape}")
    if int(niter) < 1:
        raise ValueError(f"niter must be an integer >= 1, got {niter}")
    err = np.zeros(data.shape, np.float32) if err is None else np.asarray(err)
    dq = np.zeros(data.shape, np.uint32) if dq is None else np.asarray(dq, np.uint32)
    shape = data.shape[1:]
    mean, err_out = np.empty(shape), np.empty(shape)
    ngood, dq_out = np.empty(shape, np.int64), np.empty(shape, np.uint32)
    pc_mean_stack(data, err, dq, np.uint32(bad_bits), float(thresh), float(em_gain), int(niter), np.uint32(neg_flag),
                  mean, err_out, ngood, dq_out)  # fmt: skip
    return mean, err_out, ngood, dq_out


def subtract_pc_dark(mean, err, dq, dark=None, dark_err=None, dark_dq=None):
    """The photon-counted product: ``max(mean - dark, 0)``, errors in quadrature, DQ OR'ed (no dark:
    only the clip at zero), as corgidrp finishes ``get_pc_mean``."""
    mean = np.asarray(mean, np.float64)
    err = np.asarray(err, np.float64)
    dq = np.asarray(dq, np.uint32)
    if dark is not None:
        mean = mean - np.asarray(dark, np.float64)
        if dark_err is not None:
            err = np.sqrt(err**2 + np.asarray(dark_err, np.float64) ** 2)
        if dark_dq is not None:
            dq = dq | np.asarray(dark_dq, np.uint32)
    return np.maximum(mean, 0.0), err, dq
