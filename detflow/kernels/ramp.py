"""Up-the-ramp slope fitting with jump detection, for resultants of non-destructive reads.

Numerics (Casertano et al. 2022, PASP 134 014001; Sharma & Casertano 2024, PASP 136 054504), as in the
Roman PIT ``gen_cal_image`` with its later upstream fixes:

* Resultant ``i`` averages ``N_i`` consecutive frames starting at frame index ``t0_i``:
  ``tbar_i = (t0_i + (N_i - 1)/2) dt`` and ``tau_i = (t0_i + (N_i - 1)(2 N_i - 1)/(6 N_i)) dt``.
* The full ramp is fit with fixed optimal weights ``K`` (sum zero, ``sum K tbar = 1``) computed for one
  signal-to-read-noise ratio ``u = slope / gain / sigma_read**2``; the first resultant may be excluded.
* A ramp cut short by saturation (or by a do-not-use resultant) is fit with the two-point slope between
  its first used and last good resultant.
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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from ..schema import DQ

_SAT = np.uint32(DQ.SATURATED)
_DNU = np.uint32(DQ.DO_NOT_USE)
_JUMP = np.uint32(DQ.JUMP_DET)
_REF = np.uint32(DQ.REFERENCE_PIXEL)

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
    tbar: np.ndarray  # (n,)
    tau: np.ndarray  # (n,)
    nframes: np.ndarray  # (n,)


def ramp_tables(read_pattern, frame_time: float, u: float, start: int = 1) -> RampTables:
    """Tabulate weights and variance coefficients for every truncation of one read pattern."""
    tbar, tau, nf = resultant_times(read_pattern, frame_time)
    n = len(read_pattern)
    weights = np.zeros((n + 1, n))
    cp = np.full(n + 1, np.nan)
    cr = np.full(n + 1, np.nan)
    dp = np.full((n + 1, n, 2), np.nan)
    dr = np.full((n + 1, n, 2), np.nan)
    inv_n = 1.0 / nf
    for L in range(start + 2, n + 1):
        if L == n:
            k = optimal_weights(tbar, tau, nf, u, start)
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
    return RampTables(weights, cp, cr, dp, dr, tbar, tau, nf.astype(np.float64))


def ramp_params(start=1, sthresh_a=5.5, sthresh_b=4.5, ithresh_a=1.0, ithresh_b=1000.0, detect=True):
    p = np.zeros(6)
    p[P_START], p[P_STHRESH_A], p[P_STHRESH_B] = start, sthresh_a, sthresh_b
    p[P_ITHRESH_A], p[P_ITHRESH_B], p[P_DETECT] = ithresh_a, ithresh_b, 1.0 if detect else 0.0
    return p


@numba.guvectorize(
    [
        "void(float32[:], uint32[:], uint32, float32, float32, float64[:,:], float64[:], float64[:],"
        " float64[:,:,:], float64[:,:,:], float64[:], float64[:],"
        " float32[:], float32[:], float32[:], uint32[:])"
    ],
    "(n),(n),(),(),(),(m,n),(m),(m),(m,n,k),(m,n,k),(n),(p)->(),(),(),()",
    target="cpu",
    nopython=True,
    cache=False,
)
def fit_ramp(resultants, gdq, pixeldq, gain, read_noise, weights, coef_poisson, coef_read,
             diff_poisson, diff_read, tbar, params, slope, var_rnoise, var_poisson, dq_out):  # fmt: skip
    """Fit one pixel's ramp.

    Inputs: ``resultants`` (n,) linearised, dark-subtracted DN; ``gdq`` (n,) group flags after
    saturation; ``pixeldq``; ``gain`` e/DN; ``read_noise`` DN per single read; the
    :class:`RampTables` arrays; ``params`` from :func:`ramp_params`.
    Outputs: slope (DN/s), var_rnoise, var_poisson (DN^2/s^2), and the flags to OR into the pixel DQ:
    the OR of the used resultants' flags (without DO_NOT_USE), SATURATED if any resultant saturated,
    JUMP_DET if a jump was found, DO_NOT_USE if fewer than two usable resultants remain. Reference
    pixels get a slope and no flags.
    """
    n = resultants.shape[0]
    start = int(params[P_START])
    # the usable ramp: from ``start`` up to the first saturated or do-not-use resultant
    last = n
    anysat = np.uint32(0)
    for g in range(n):
        anysat |= gdq[g] & _SAT
    for g in range(start, n):
        if gdq[g] & (_SAT | _DNU):
            last = g
            break
    flags = np.uint32(0)
    for g in range(last):
        flags |= gdq[g]
    flags = (flags & ~_DNU) | anysat

    if last - start < 2:
        slope[0] = np.nan
        var_rnoise[0] = np.nan
        var_poisson[0] = np.nan
        dq_out[0] = np.uint32(0) if pixeldq & _REF else flags | _DNU
        return

    s = 0.0
    for g in range(start, last):
        s += weights[last, g] * resultants[g]
    g_eff = min(max(float(gain), 1e-4), 1e4)
    rate = max(s / g_eff, 0.0)
    rn2 = float(read_noise) * float(read_noise)
    slope[0] = s
    var_poisson[0] = coef_poisson[last] * rate
    var_rnoise[0] = coef_read[last] * rn2

    if pixeldq & _REF:
        dq_out[0] = np.uint32(0)
        return

    if params[P_DETECT] != 0.0:
        sa = params[P_STHRESH_A]
        sb = params[P_STHRESH_B]
        ia = params[P_ITHRESH_A]
        ib = params[P_ITHRESH_B]
        x = min(max(s, ia), ib)
        thresh = sa + (sb - sa) * math.log(x / ia) / math.log(ib / ia)
        for i in range(start, last - 1):
            for d in range(2):
                j = i + d + 1
                if j > last - 1:
                    continue
                vp = diff_poisson[last, i, d]
                if vp != vp:  # NaN: this difference is not used for this truncation
                    continue
                var = rate * vp + rn2 * diff_read[last, i, d]
                if var <= 0.0:
                    continue
                excess = (resultants[j] - resultants[i]) / (tbar[j] - tbar[i]) - s
                if excess / math.sqrt(var) > thresh:
                    flags |= _JUMP
    dq_out[0] = flags
