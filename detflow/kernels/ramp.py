"""Up-the-ramp slope fitting with jump detection, for resultants of non-destructive reads: the PIT's fit
(``ramp_fit: {pit_compat: true}``; the default fit is :mod:`detflow.kernels.ramp_gls`, which shares the
read-pattern functions and tables here).

Numerics (Casertano et al. 2022, PASP 134 014001; Sharma & Casertano 2024, PASP 136 054504), as in the
Roman PIT ``gen_cal_image`` with its later upstream fixes:

* Resultant ``i`` averages ``N_i`` consecutive frames starting at frame index ``t0_i``:
  ``tbar_i = (t0_i + (N_i - 1)/2) dt`` and ``tau_i = (t0_i + (N_i - 1)(2 N_i - 1)/(6 N_i)) dt``.
* The full ramp is fit with fixed optimal weights ``K`` (sum zero, ``sum K tbar = 1``) computed for one
  signal-to-read-noise ratio ``u = slope / gain / sigma_read**2``; the first resultant may be excluded.
* A ramp cut short by saturation (or by a do-not-use or non-finite resultant: a NaN resultant is a
  missing one) is fit with the two-point slope between its first used and last good resultant; two
  usable resultants give the CDS slope.
* A pixel whose gain is not a finite positive number gets ``var_poisson`` NaN and NO_GAIN_VALUE |
  DO_NOT_USE; a read noise that is not finite and >= 0 gives ``var_rnoise`` NaN and UNRELIABLE_ERROR |
  DO_NOT_USE; neither gets jump detection (no noise model). Every NaN output carries DO_NOT_USE.
* Variances: ``var_poisson = cP * max(slope / gain, 0)`` with ``cP = sum K_i^2 tau_i + 2 sum_{j<i} K_i
  K_j tbar_j`` and ``var_rnoise = sigma_read^2 * sum K_i^2 / N_i`` (weights and ``tau`` aligned index
  by index).
* Jumps: every single difference (i, i+1) and double difference (i, i+2) of used resultants gives a
  slope estimate; its excess over the fitted slope, divided by its standard deviation (with the
  covariance of the two estimates), is compared to a threshold interpolated in log slope between
  ``(IthreshA, SthreshA)`` and ``(IthreshB, SthreshB)``. A ramp with exactly three used resultants gets
  no double difference. Flagged pixels are not refit (the PIT rejects jump-hit pixels downstream).

Everything that depends only on the read pattern (weights of every truncation, variance coefficients of
every difference) is tabulated once per exposure by :func:`ramp_tables`; the per-pixel kernel
:func:`fit_ramp` only does O(n) work per pixel.

The DQ values come in ``flags`` (:func:`dq_flags`, :data:`F_SAT` ... indices, the first six of
:func:`detflow.kernels.ramp_gls.dq_flags`); nothing here imports the package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from ._config import CACHE
from .linearity import FASTMATH, linearize_ramps

# index of each DQ value in the ``flags`` vector
F_SAT, F_DNU, F_JUMP, F_REF, F_NGV, F_UERR = range(6)

# index of each parameter in the ``params`` vector handed to the kernel
P_START, P_STHRESH_A, P_STHRESH_B, P_ITHRESH_A, P_ITHRESH_B, P_DETECT = range(6)


def resultant_times(read_pattern, frame_time: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(tbar, tau, N)`` of each resultant (Casertano et al. 2022, eqs. for consecutive frames)."""
    n = np.array([len(r) for r in read_pattern], dtype=np.int64)
    t0 = np.array([r[0] for r in read_pattern], dtype=np.float64)
    tbar = (t0 + (n - 1) / 2.0) * frame_time
    tau = (t0 + (n - 1) * (2 * n - 1) / (6.0 * n)) * frame_time
    return tbar, tau, n


def optimal_weights(tbar, tau, nframes, u: float, start: int = 1) -> np.ndarray:
    """Fixed optimal slope weights ``K`` for ``slope = sum_i K_i R_i`` (zero before ``start``).

    The resultant covariance in units of the single-read variance is
    ``C_ii = 1/N_i + u tau_i``, ``C_ij = u tbar_min(i,j)``; the weights are the generalised least-squares
    solution for the slope of a line with free intercept.
    """
    tb = np.asarray(tbar, dtype=np.float64)[start:]
    ta = np.asarray(tau, dtype=np.float64)[start:]
    nf = np.asarray(nframes, dtype=np.float64)[start:]
    m = tb.size
    k = np.zeros(len(tbar), dtype=np.float64)
    if m < 2:
        return k
    cov = u * np.minimum.outer(tb, tb)
    cov[np.diag_indices(m)] = 1.0 / nf + u * ta
    w = np.linalg.inv(cov)
    ws = w.sum(axis=0)
    wt = w @ tb
    f0, f1, f2 = w.sum(), wt.sum(), tb @ wt
    k[start:] = (f0 * wt - f1 * ws) / (f0 * f2 - f1**2)
    return k


def _poisson_form(a, b, tbar, tau) -> float:
    """Covariance form for Poisson noise: ``sum_ij a_i b_j Cov_P(R_i, R_j)`` per unit rate."""
    cov = np.minimum.outer(tbar, tbar)
    cov[np.diag_indices(len(tbar))] = tau
    return float(a @ cov @ b)


@dataclass(frozen=True)
class RampTables:
    """Per-read-pattern tables for :func:`fit_ramp` (index ``L`` = number of leading resultants kept)."""

    weights: np.ndarray  # (n+1, n)   slope weights of the ramp truncated to L resultants
    coef_poisson: np.ndarray  # (n+1,)  slope Poisson variance per unit (rate / gain)
    coef_read: np.ndarray  # (n+1,)     slope read variance per unit single-read variance
    diff_poisson: np.ndarray  # (n+1, n, 2) variance coefficients of each difference minus the slope
    diff_read: np.ndarray  # (n+1, n, 2)
    # the same, flattened per truncation for the kernel: the differences of truncation L are
    # ``pair_start[L]:pair_start[L+1]`` of the ``pair_*`` arrays
    pair_start: np.ndarray  # (n+2,) int64
    pair_i: np.ndarray  # (P,) int64  first resultant of the difference
    pair_j: np.ndarray  # (P,) int64  second resultant
    pair_inv_dt: np.ndarray  # (P,) 1 / (tbar_j - tbar_i)
    pair_poisson: np.ndarray  # (P,)
    pair_read: np.ndarray  # (P,)
    tbar: np.ndarray  # (n,)
    tau: np.ndarray  # (n,)
    nframes: np.ndarray  # (n,)


def ramp_tables(read_pattern, frame_time: float, u: float, start: int = 1, two_point: bool = True) -> RampTables:
    """Tabulate weights and variance coefficients for every truncation of one read pattern (a truncated
    ramp: the PIT's two-point slope, or with ``two_point=False`` the optimal weights of its resultants)."""
    tbar, tau, nf = resultant_times(read_pattern, frame_time)
    n = len(read_pattern)
    weights = np.zeros((n + 1, n))
    cp = np.full(n + 1, np.nan)
    cr = np.full(n + 1, np.nan)
    dp = np.full((n + 1, n, 2), np.nan)
    dr = np.full((n + 1, n, 2), np.nan)
    inv_n = 1.0 / nf
    for L in range(start + 2, n + 1):
        if L == n or not two_point:
            k = optimal_weights(tbar[:L], tau[:L], nf[:L], u, start)
            k = np.concatenate([k, np.zeros(n - L)])
        else:
            k = np.zeros(n)
            k[L - 1] = 1.0 / (tbar[L - 1] - tbar[start])
            k[start] = -k[L - 1]
        weights[L] = k
        cp[L] = _poisson_form(k, k, tbar, tau)
        cr[L] = float(np.sum(k * k * inv_n))
        for i in range(start, L - 1):
            for di in (1, 2):
                if i + di > L - 1 or (di == 2 and L - start == 3):
                    continue
                w = -k.copy()
                dt = tbar[i + di] - tbar[i]
                w[i + di] += 1.0 / dt
                w[i] -= 1.0 / dt
                if np.max(np.abs(w)) <= 1e-9 * np.max(np.abs(k)):
                    continue  # this difference is the fitted slope itself (two usable resultants)
                dp[L, i, di - 1] = _poisson_form(w, w, tbar, tau)
                dr[L, i, di - 1] = float(np.sum(w * w * inv_n))
    start_idx = np.zeros(n + 2, dtype=np.int64)
    pi, pj, pdt, pp, pr = [], [], [], [], []
    for L in range(n + 1):
        start_idx[L] = len(pi)
        for i in range(n):
            for d in range(2):
                if np.isfinite(dp[L, i, d]):
                    pi.append(i)
                    pj.append(i + d + 1)
                    pdt.append(1.0 / (tbar[i + d + 1] - tbar[i]))
                    pp.append(dp[L, i, d])
                    pr.append(dr[L, i, d])
    start_idx[n + 1] = len(pi)
    return RampTables(weights, cp, cr, dp, dr, start_idx, np.array(pi, np.int64), np.array(pj, np.int64),
                      np.array(pdt), np.array(pp), np.array(pr), tbar, tau, nf.astype(np.float64))  # fmt: skip


def dq_flags(sat, dnu, jump, ref, no_gain, unreliable_error) -> np.ndarray:
    """The ``flags`` vector of :func:`fit_ramps` from the DQ bit values."""
    return np.array([sat, dnu, jump, ref, no_gain, unreliable_error], dtype=np.uint32)


def ramp_params(start=1, sthresh_a=5.5, sthresh_b=4.5, ithresh_a=1.0, ithresh_b=1000.0, detect=True):
    p = np.zeros(6)
    p[P_START], p[P_STHRESH_A], p[P_STHRESH_B] = start, sthresh_a, sthresh_b
    p[P_ITHRESH_A], p[P_ITHRESH_B], p[P_DETECT] = ithresh_a, ithresh_b, 1.0 if detect else 0.0
    return p


@numba.njit(nogil=True, cache=CACHE, fastmath=FASTMATH)
def fit_ramps(resultants, gdq, pixeldq, gain, read_noise, weights, coef_poisson, coef_read, pair_start, pair_i,
              pair_j, pair_inv_dt, pair_poisson, pair_read, params, flags, slope, var_rnoise, var_poisson,
              dq_out):  # fmt: skip
    """Fit every pixel ramp of a tile.

    Inputs: ``resultants`` (ny, nx, n) linearised, dark-subtracted DN (any strides); ``gdq`` (ny, nx, n)
    group flags after saturation; ``pixeldq``, ``gain`` (e/DN), ``read_noise`` (DN per single read),
    each (ny, nx); the :class:`RampTables` arrays of the exposure; ``params`` from :func:`ramp_params`,
    ``flags`` from :func:`dq_flags`.
    Outputs (ny, nx), filled in place: slope (DN/s), var_rnoise, var_poisson (DN^2/s^2), and the flags
    to OR into the pixel DQ: the OR of the used resultants' flags (without DO_NOT_USE), SATURATED if any
    resultant saturated, JUMP_DET if a jump was found, DO_NOT_USE if fewer than two usable resultants
    remain (a non-finite resultant is unusable; then also the flags of the resultant that ended the
    ramp) or the gain or read noise is unusable (see the module notes). Reference pixels get a slope and no flags.
    """
    f_sat, f_dnu, f_jump, f_ref = flags[F_SAT], flags[F_DNU], flags[F_JUMP], flags[F_REF]
    f_ngv, f_uerr = flags[F_NGV], flags[F_UERR]
    ny, nx, n = resultants.shape
    start = int(params[P_START])
    detect = params[P_DETECT] != 0.0
    sa = params[P_STHRESH_A]
    sb = params[P_STHRESH_B]
    ia = params[P_ITHRESH_A]
    ib = params[P_ITHRESH_B]
    inv_log_span = 1.0 / math.log(ib / ia)
    t2_min = min(sa, sb) ** 2  # no difference below the lowest threshold: no log needed
    for y in range(ny):
        for x in range(nx):
            # the usable ramp: from ``start`` up to the first saturated, do-not-use or non-finite resultant
            last = n
            anysat = np.uint32(0)
            for g in range(n):
                anysat |= gdq[y, x, g] & f_sat
            for g in range(start, n):
                if gdq[y, x, g] & (f_sat | f_dnu) or not math.isfinite(resultants[y, x, g]):
                    last = g
                    break
            pflags = np.uint32(0)
            for g in range(last):
                pflags |= gdq[y, x, g]
            pflags = (pflags & ~f_dnu) | anysat
            g_raw = float(gain[y, x])
            rn_raw = float(read_noise[y, x])
            good_gain = g_raw > 0.0 and g_raw < math.inf  # False for NaN
            good_rn = rn_raw >= 0.0 and rn_raw < math.inf
            if not good_gain:
                pflags |= f_ngv | f_dnu
            if not good_rn:
                pflags |= f_uerr | f_dnu
            is_ref = (pixeldq[y, x] & f_ref) != 0
            if last - start < 2:
                if last < n:  # why the ramp ended (AD_FLOOR, ...)
                    pflags |= gdq[y, x, last] & ~f_dnu
                slope[y, x] = np.nan
                var_rnoise[y, x] = np.nan
                var_poisson[y, x] = np.nan
                dq_out[y, x] = np.uint32(0) if is_ref else pflags | f_dnu
                continue
            s = 0.0
            for g in range(start, last):
                s += weights[last, g] * resultants[y, x, g]
            g_eff = min(max(g_raw, 1e-4), 1e4)
            rate = max(s / g_eff, 0.0)
            rn2 = rn_raw * rn_raw
            slope[y, x] = s
            var_poisson[y, x] = coef_poisson[last] * rate if good_gain else np.nan
            var_rnoise[y, x] = coef_read[last] * rn2 if good_rn else np.nan
            if is_ref:
                dq_out[y, x] = np.uint32(0)
                continue
            if detect and good_gain and good_rn:
                # the largest (excess / sigma)^2 over the differences, branch-free (positive excess only)
                best = 0.0
                for k in range(pair_start[last], pair_start[last + 1]):
                    excess = (resultants[y, x, pair_j[k]] - resultants[y, x, pair_i[k]]) * pair_inv_dt[k] - s
                    e = max(excess, 0.0)
                    var = max(rate * pair_poisson[k] + rn2 * pair_read[k], 1e-30)
                    best = max(best, e * e / var)
                if best > t2_min:  # only then is the log-interpolated threshold needed
                    xs = min(max(s, ia), ib)
                    thresh = sa + (sb - sa) * math.log(xs / ia) * inv_log_span
                    if best > thresh * thresh:
                        pflags |= f_jump
            dq_out[y, x] = pflags


@numba.njit(nogil=True, cache=CACHE)
def linearize_dark_fit(raw, coefs, smin, smax, sref, lin_dq, gdq, exempt_first, pit_sticky, lin_flags, dark_slope,
                       tbar, pixeldq, gain, read_noise, weights, coef_poisson, coef_read, pair_start, pair_i, pair_j,
                       pair_inv_dt, pair_poisson, pair_read, params, flags, slope, var_rnoise, var_poisson,
                       dq_out):  # fmt: skip
    """Linearity, dark subtraction and ramp fit of a tile, one detector row at a time.

    Calls :func:`~detflow.kernels.linearity.linearize_ramps` on a row into a row buffer (which stays
    in cache), subtracts ``float32(tbar) * dark_slope`` in float32, and calls :func:`fit_ramps` on it:
    the numerics of the three steps chained, without writing the linearised cube to memory.
    ``dq_out`` is the OR of the linearity flags and the ramp flags (``pixeldq`` not included).
    """
    ny, nx, n = raw.shape
    row = np.empty((1, nx, n), dtype=np.float32)
    lin_row = np.empty((1, nx), dtype=np.uint32)
    tb32 = tbar.astype(np.float32)
    for y in range(ny):
        linearize_ramps(raw[y : y + 1], coefs[y : y + 1], smin[y : y + 1], smax[y : y + 1], sref[y : y + 1],
                        lin_dq[y : y + 1], gdq[y : y + 1], exempt_first, pit_sticky, lin_flags, row, lin_row)  # fmt: skip
        for x in range(nx):
            d = dark_slope[y, x]
            for g in range(n):
                row[0, x, g] = row[0, x, g] - tb32[g] * d
        fit_ramps(row, gdq[y : y + 1], pixeldq[y : y + 1] | lin_row, gain[y : y + 1], read_noise[y : y + 1],
                  weights, coef_poisson, coef_read, pair_start, pair_i, pair_j, pair_inv_dt, pair_poisson, pair_read,
                  params, flags, slope[y : y + 1], var_rnoise[y : y + 1], var_poisson[y : y + 1], dq_out[y : y + 1])  # fmt: skip
        for x in range(nx):
            dq_out[y, x] |= lin_row[0, x]
