"""Up-the-ramp slopes from every good resultant: generalised least squares over ramp segments.

The default ramp fit (the PIT's fixed-weight fit with its truncations is :mod:`detflow.kernels.ramp`).

* The usable resultants of a pixel are those from ``start`` up to the first SATURATED one (saturation
  ends the ramp: later resultants are saturated too), without the DO_NOT_USE and non-finite ones,
  which are skipped (the fit uses the resultants on either side of them).
* The ramp is split into segments at every jump: before each resultant flagged JUMP_DET on input
  and wherever jump detection finds one. Each segment has its own intercept; all share the slope.
* The fit is the generalised least-squares slope of the differences of consecutive usable
  resultants of each segment, ``D = R_j - R_i``, whose expectation is ``slope (tbar_j - tbar_i)``.
  Their covariance (``sigma^2`` the single-read variance, ``a = rate / gain`` in DN/s per e/DN) is
  tridiagonal: ``Var D = sigma^2 (1/N_i + 1/N_j) + a (tau_i + tau_j - 2 tbar_i)`` and, for two
  differences sharing resultant ``j``, ``Cov = -sigma^2 / N_j + a (tbar_j - tau_j)``; differences in
  different segments are uncorrelated. So the fit is Casertano et al. (2022) optimal weighting of each
  segment for its own length and signal, the segments combined by inverse variance (Brandt 2024, PASP
  136 045004, treats jumps the same way), in O(n) per pixel (a tridiagonal solve).
* The weights are computed for the pixel's own signal: a first fit with the nominal ``u`` (the PIT's
  RAMP_OPT_PARS), then with ``a = max(slope, 0) / gain`` of the previous fit.
* Jumps (Sharma & Casertano 2024 statistics): every single difference and every double difference
  (two consecutive differences of a segment) is an unbiased slope estimate ``e``; as the fit is the
  best linear unbiased one, ``Var(e - slope) = Var(e) - Var(slope)`` exactly. The largest positive
  ``(e - slope) / sd`` above the threshold (interpolated in log slope between ``(IthreshA, SthreshA)``
  and ``(IthreshB, SthreshB)``) splits the ramp there (a double difference: on both sides of its
  middle resultant, which may hold part of the jump); the ramp is refitted and searched again.
* Variances: ``var_rnoise = sigma^2 w' S_R w`` and ``var_poisson = max(slope, 0) / gain w' S_P w`` for
  the final weights ``w``.
* No difference left (fewer than two usable resultants in every segment): a one-resultant slope from
  a zero point when allowed, flagged with the ``one`` flag (UNRELIABLE_SLOPE): mode 1, the first
  resultant (left out of the fit by ``start = 1``, e.g. the reset read) if it is finite and not
  saturated; mode 2, zero signal at ``t = 0`` (bias-subtracted ramps). Otherwise NaN and DO_NOT_USE.
* Gain and read-noise checks, reference pixels and the DQ propagation as in the PIT kernel: see
  :func:`fit_ramps`.

The DQ values come in ``flags`` (:data:`F_SAT` ... indices); nothing here imports the package.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ._config import CACHE
from .linearity import FASTMATH, linearize_ramps

# index of each DQ value in the ``flags`` vector
F_SAT, F_DNU, F_JUMP, F_REF, F_NGV, F_UERR, F_ONE = range(7)
# index of each parameter in the ``params`` vector
(P_START, P_DETECT, P_STHRESH_A, P_STHRESH_B, P_ITHRESH_A, P_ITHRESH_B, P_ONE, P_U, P_GAIN,
 P_SIGMA) = range(10)  # fmt: skip
ONE_OFF, ONE_FIRST, ONE_ZERO = 0, 1, 2


def gls_params(start=1, detect=True, sthresh_a=5.5, sthresh_b=4.5, ithresh_a=1.0, ithresh_b=1000.0, one=ONE_FIRST,
               u=0.4 / 1.8 / 6.5**2, gain=1.8, sigma_read=6.5) -> np.ndarray:  # fmt: skip
    """The ``params`` vector of :func:`fit_ramps` (``u = slope / gain / sigma_read**2`` of the first pass;
    ``gain`` and ``sigma_read`` stand in for a pixel's unusable ones in the weights)."""
    p = np.zeros(10)
    p[P_START], p[P_DETECT], p[P_ONE] = start, 1.0 if detect else 0.0, one
    p[P_STHRESH_A], p[P_STHRESH_B], p[P_ITHRESH_A], p[P_ITHRESH_B] = sthresh_a, sthresh_b, ithresh_a, ithresh_b
    p[P_U], p[P_GAIN], p[P_SIGMA] = u, gain, sigma_read
    return p


def dq_flags(sat, dnu, jump, ref, no_gain, unreliable_error, one_resultant) -> np.ndarray:
    """The ``flags`` vector of :func:`fit_ramps` from the DQ bit values."""
    return np.array([sat, dnu, jump, ref, no_gain, unreliable_error, one_resultant], dtype=np.uint32)


@numba.njit(nogil=True, cache=CACHE, fastmath=FASTMATH)
def _build(R, use, brk, m, tbar, tau, inv_n, D, dt, rd, ro, pd, po, cpl, kpos):
    """The present differences of a pixel (those not across a break) and their covariance terms;
    returns their number. ``ro``/``po``/``cpl`` of difference ``p`` couple it to difference ``p - 1``."""
    npres = 0
    prev = -2
    for k in range(m - 1):
        if brk[k]:
            continue
        i = use[k]
        j = use[k + 1]
        D[npres] = float(R[j]) - float(R[i])
        dt[npres] = tbar[j] - tbar[i]
        rd[npres] = inv_n[i] + inv_n[j]
        pd[npres] = tau[i] + tau[j] - 2.0 * tbar[i]
        c = prev == k - 1
        cpl[npres] = c
        ro[npres] = -inv_n[i] if c else 0.0
        po[npres] = tbar[i] - tau[i] if c else 0.0
        kpos[npres] = k
        prev = k
        npres += 1
    return npres


@numba.njit(nogil=True, cache=CACHE, fastmath=FASTMATH)
def _solve(npres, a, sig2, D, dt, rd, ro, pd, po, diag, off, lf, x, q):
    """GLS slope of the differences for ``C = sig2 S_R + a S_P``: ``(slope, 1/F, vr, vp)`` with ``1/F``
    the slope variance under ``C``, ``vr = w' S_R w``, ``vp = w' S_P w``. Leaves ``C = L diag(diag) L'``
    (``lf`` the subdiagonal of the unit bidiagonal ``L``), ``x = C^-1 dt`` and ``q = C^-1 D``."""
    for p in range(npres):
        diag[p] = sig2 * rd[p] + a * pd[p]
        off[p] = sig2 * ro[p] + a * po[p]
    x[0] = dt[0]
    q[0] = D[0]
    for p in range(1, npres):  # L D L' factorisation and forward substitution
        lf[p] = off[p] / diag[p - 1]
        diag[p] -= lf[p] * off[p]
        x[p] = dt[p] - lf[p] * x[p - 1]
        q[p] = D[p] - lf[p] * q[p - 1]
    x[npres - 1] /= diag[npres - 1]
    q[npres - 1] /= diag[npres - 1]
    for p in range(npres - 2, -1, -1):
        x[p] = x[p] / diag[p] - lf[p + 1] * x[p + 1]
        q[p] = q[p] / diag[p] - lf[p + 1] * q[p + 1]
    f = 0.0
    s = 0.0
    for p in range(npres):
        f += dt[p] * x[p]
        s += dt[p] * q[p]
    inv_f = 1.0 / f
    vr = 0.0
    vp = 0.0
    for p in range(npres):
        w = x[p] * inv_f
        vr += w * w * rd[p]
        vp += w * w * pd[p]
        if p > 0:
            w0 = x[p - 1] * inv_f
            vr += 2.0 * w0 * w * ro[p]
            vp += 2.0 * w0 * w * po[p]
    return s * inv_f, inv_f, vr, vp


@numba.njit(nogil=True, cache=CACHE, fastmath=FASTMATH)
def _jump_test(npres, s, inv_f, diag, lf, x, q, cpl, zd, zo):
    """The largest step statistic of the fit left by :func:`_solve`: ``(t^2, p, double)``.

    A jump between the resultants of difference ``p`` adds to ``D_p`` only; with the residual
    ``r = D - slope dt``, the score statistic of that step is ``(C^-1 r)_p / sqrt(Z_pp - x_p^2 F^-1)``
    (``Z = C^-1``), unit normal without a jump (the generalised least-squares test for one more
    intercept). A double (``p`` and ``p + 1``, sharing a resultant, a jump inside it) uses ``c = e_p +
    e_(p+1)``. Only positive steps count. ``Z``'s diagonal and first off-diagonal come from the
    factorisation: ``Z_pp = 1/d_p + l_(p+1)^2 Z_(p+1,p+1)``, ``Z_(p,p+1) = -l_(p+1) Z_(p+1,p+1)``.
    """
    zd[npres - 1] = 1.0 / diag[npres - 1]
    for p in range(npres - 2, -1, -1):
        zo[p + 1] = -lf[p + 1] * zd[p + 1]
        zd[p] = 1.0 / diag[p] + lf[p + 1] * lf[p + 1] * zd[p + 1]
    best = 0.0
    where = -1
    double = False
    for p in range(npres):
        num = q[p] - s * x[p]
        if num > 0.0:
            v = zd[p] - x[p] * x[p] * inv_f
            if v > 1e-9 * zd[p]:
                t2 = num * num / v
                if t2 > best:
                    best, where, double = t2, p, False
        if p + 1 < npres and cpl[p + 1]:
            num2 = num + q[p + 1] - s * x[p + 1]
            if num2 > 0.0:
                xs = x[p] + x[p + 1]
                v = zd[p] + zd[p + 1] + 2.0 * zo[p + 1] - xs * xs * inv_f
                if v > 1e-9 * (zd[p] + zd[p + 1]):
                    t2 = num2 * num2 / v
                    if t2 > best:
                        best, where, double = t2, p, True
    return best, where, double


@numba.njit(nogil=True, cache=CACHE, fastmath=FASTMATH)
def fit_ramps(resultants, gdq, pixeldq, gain, read_noise, tbar, tau, nframes, params, flags, slope, var_rnoise,
              var_poisson, dq_out, jump_gdq):  # fmt: skip
    """Fit every pixel ramp of a tile: :func:`fit_ramps_weights` without the weights."""
    fit_ramps_weights(resultants, gdq, pixeldq, gain, read_noise, tbar, tau, nframes, params, flags, slope,
                      var_rnoise, var_poisson, dq_out, jump_gdq, np.zeros((0, 0, 0)))  # fmt: skip


@numba.njit(nogil=True, cache=CACHE, fastmath=FASTMATH)
def fit_ramps_weights(resultants, gdq, pixeldq, gain, read_noise, tbar, tau, nframes, params, flags, slope,
                      var_rnoise, var_poisson, dq_out, jump_gdq, weights):  # fmt: skip
    """Fit every pixel ramp of a tile (see the module notes).

    Inputs: ``resultants`` (ny, nx, n) linearised, dark-subtracted DN; ``gdq`` (ny, nx, n) group flags
    after saturation; ``pixeldq``, ``gain`` (e/DN), ``read_noise`` (DN per single read), each (ny, nx);
    ``tbar``, ``tau`` (s) and ``nframes`` of the resultants (n,); ``params`` from :func:`gls_params`,
    ``flags`` from :func:`dq_flags`. Outputs (ny, nx), filled in place: slope (DN/s), var_rnoise,
    var_poisson (DN^2/s^2), and the flags to OR into the pixel DQ: the OR of the group flags up to the
    end of the ramp (without DO_NOT_USE), SATURATED if any resultant saturated, JUMP_DET if the ramp
    was split (on input or by detection), the one-resultant flag, DO_NOT_USE with NaN when no slope
    can be formed (then also the flags of the resultant that ended the ramp) or with the gain or read
    noise checks. ``jump_gdq`` (ny, nx, n) gets JUMP_DET OR'ed on the first resultant after each jump
    found (pass a (0, 0, 0) array to skip). ``weights`` (ny, nx, n) gets the fit's linear weights,
    ``slope = sum_g weights[g] * resultants[g]`` (zero for unused resultants and NaN slopes; the weights of
    the final fit: its segments, skipped resultants and signal level), or pass a (0, 0, 0) array to skip.
    They propagate any resultant perturbation (e.g. a noise realization) through the same fit.
    Reference pixels get a slope and no flags.
    """
    ny, nx, n = resultants.shape
    start = int(params[P_START])
    detect = params[P_DETECT] != 0.0
    sa = params[P_STHRESH_A]
    sb = params[P_STHRESH_B]
    ia = params[P_ITHRESH_A]
    ib = params[P_ITHRESH_B]
    one_mode = int(params[P_ONE])
    u_nom = params[P_U]
    inv_log_span = 1.0 / math.log(ib / ia)
    f_sat, f_dnu, f_jump, f_ref = flags[F_SAT], flags[F_DNU], flags[F_JUMP], flags[F_REF]
    mark = jump_gdq.shape[0] == ny and jump_gdq.shape[1] == nx and jump_gdq.shape[2] == n
    keep_w = weights.shape[0] == ny and weights.shape[1] == nx and weights.shape[2] == n
    inv_n = np.empty(n)
    tb = np.empty(n)
    ta = np.empty(n)
    for g in range(n):
        inv_n[g] = 1.0 / nframes[g]
        tb[g] = tbar[g]
        ta[g] = tau[g]
    use = np.empty(n, np.int64)
    brk = np.zeros(n, np.bool_)
    kpos = np.empty(n, np.int64)
    cpl = np.zeros(n, np.bool_)
    D = np.empty(n)
    dt = np.empty(n)
    rd = np.empty(n)
    ro = np.empty(n)
    pd = np.empty(n)
    po = np.empty(n)
    diag = np.empty(n)
    off = np.empty(n)
    lf = np.empty(n)
    x = np.empty(n)
    q = np.empty(n)
    zd = np.empty(n)
    zo = np.empty(n)
    for y in range(ny):
        for xx in range(nx):
            R = resultants[y, xx]
            G = gdq[y, xx]
            last = n
            anysat = np.uint32(0)
            for g in range(n):
                anysat |= G[g] & f_sat
            for g in range(start, n):
                if G[g] & f_sat:
                    last = g
                    break
            pflags = np.uint32(0)
            for g in range(last):
                pflags |= G[g]
            pflags = (pflags & ~f_dnu) | anysat
            # the usable resultants and the input jumps (a break before a JUMP_DET resultant)
            m = 0
            pending = False
            for g in range(start, last):
                pending = pending or (G[g] & f_jump) != 0
                if G[g] & f_dnu or not math.isfinite(R[g]):
                    continue
                if m > 0:
                    brk[m - 1] = pending
                pending = False
                use[m] = g
                m += 1
            g_raw = float(gain[y, xx])
            rn_raw = float(read_noise[y, xx])
            good_gain = g_raw > 0.0 and g_raw < math.inf  # False for NaN
            good_rn = rn_raw >= 0.0 and rn_raw < math.inf
            if not good_gain:
                pflags |= flags[F_NGV] | f_dnu
            if not good_rn:
                pflags |= flags[F_UERR] | f_dnu
            is_ref = (pixeldq[y, xx] & f_ref) != 0
            g_eff = g_raw if good_gain else params[P_GAIN]
            g_eff = min(max(g_eff, 1e-4), 1e4)
            sig2 = rn_raw * rn_raw if good_rn else params[P_SIGMA] ** 2
            sig2 = max(sig2, 1e-12)
            npres = _build(R, use, brk, m, tb, ta, inv_n, D, dt, rd, ro, pd, po, cpl, kpos)
            s = np.nan
            vs = np.nan
            vr = np.nan
            vp = np.nan
            if keep_w:
                for g in range(n):
                    weights[y, xx, g] = 0.0
            if npres > 0:
                s, vs, vr, vp = _solve(npres, u_nom * sig2, sig2, D, dt, rd, ro, pd, po, diag, off, lf, x, q)
                for _ in range(m):  # at most one split per usable resultant
                    a = max(s, 0.0) / g_eff
                    s, vs, vr, vp = _solve(npres, a, sig2, D, dt, rd, ro, pd, po, diag, off, lf, x, q)
                    if not (detect and good_gain and good_rn and not is_ref):
                        break
                    best, where, double = _jump_test(npres, s, vs, diag, lf, x, q, cpl, zd, zo)
                    if where < 0:
                        break
                    xs = min(max(s, ia), ib)
                    thresh = sa + (sb - sa) * math.log(xs / ia) * inv_log_span
                    if best <= thresh * thresh:
                        break
                    k = kpos[where]
                    brk[k] = True
                    if double:  # a jump inside the middle resultant: leave it out
                        brk[k + 1] = True
                    else:  # a multi-frame resultant either side may hold part of the jump: leave it out
                        if k + 1 < m - 1 and nframes[use[k + 1]] > 1:
                            brk[k + 1] = True
                        if k > 0 and nframes[use[k]] > 1:
                            brk[k - 1] = True
                    if mark:
                        jump_gdq[y, xx, use[k + 1]] |= f_jump
                    npres = _build(R, use, brk, m, tb, ta, inv_n, D, dt, rd, ro, pd, po, cpl, kpos)
                    if npres == 0:
                        s = np.nan
                        break
                    s, vs, vr, vp = _solve(npres, a, sig2, D, dt, rd, ro, pd, po, diag, off, lf, x, q)  # weights follow
            if keep_w and npres > 0 and math.isfinite(s):  # x = C^-1 dt and vs = 1/F of the final solve
                for p in range(npres):
                    k = kpos[p]
                    wp = x[p] * vs
                    weights[y, xx, use[k + 1]] += wp
                    weights[y, xx, use[k]] -= wp
            for k in range(m - 1):
                if brk[k]:
                    pflags |= f_jump
                    brk[k] = False
            if npres > 0:
                vr *= sig2
                vp *= max(s, 0.0) / g_eff
            elif m > 0 and one_mode != 0:
                u0 = use[0]
                if one_mode == 1 and start == 1 and not (G[0] & f_sat) and math.isfinite(R[0]):
                    dt0 = tb[u0] - tb[0]
                    s = (float(R[u0]) - float(R[0])) / dt0
                    vr = sig2 * (inv_n[0] + inv_n[u0]) / (dt0 * dt0)
                    vp = max(s, 0.0) / g_eff * (ta[u0] + ta[0] - 2.0 * tb[0]) / (dt0 * dt0)
                    pflags |= flags[F_ONE]
                    if keep_w:
                        weights[y, xx, u0] = 1.0 / dt0
                        weights[y, xx, 0] = -1.0 / dt0
                elif one_mode == 2 and tb[u0] > 0.0:
                    s = float(R[u0]) / tb[u0]
                    vr = sig2 * inv_n[u0] / (tb[u0] * tb[u0])
                    vp = max(s, 0.0) / g_eff * ta[u0] / (tb[u0] * tb[u0])
                    pflags |= flags[F_ONE]
                    if keep_w:
                        weights[y, xx, u0] = 1.0 / tb[u0]
            if not math.isfinite(s):
                if last < n:  # why the ramp ended (AD_FLOOR, ...)
                    pflags |= G[last] & ~f_dnu
                slope[y, xx] = np.nan
                var_rnoise[y, xx] = np.nan
                var_poisson[y, xx] = np.nan
                dq_out[y, xx] = np.uint32(0) if is_ref else pflags | f_dnu
                continue
            slope[y, xx] = s
            var_rnoise[y, xx] = vr if good_rn else np.nan
            var_poisson[y, xx] = vp if good_gain else np.nan
            dq_out[y, xx] = np.uint32(0) if is_ref else pflags


@numba.njit(nogil=True, cache=CACHE)
def linearize_dark_fit(raw, coefs, smin, smax, sref, lin_dq, gdq, exempt_first, pit_sticky, lin_flags, dark_slope,
                       pixeldq, gain, read_noise, tbar, tau, nframes, params, flags, slope, var_rnoise, var_poisson,
                       dq_out):  # fmt: skip
    """Linearity, dark subtraction and :func:`fit_ramps` of a tile, one detector row at a time (the
    linearised row stays in cache; the numerics of the three steps chained). ``dq_out`` is the OR of
    the linearity flags and the ramp flags (``pixeldq`` not included)."""
    ny, nx, n = raw.shape
    row = np.empty((1, nx, n), dtype=np.float32)
    lin_row = np.empty((1, nx), dtype=np.uint32)
    tb32 = tbar.astype(np.float32)
    nomark = np.zeros((0, 0, 0), dtype=np.uint32)
    for y in range(ny):
        linearize_ramps(raw[y : y + 1], coefs[y : y + 1], smin[y : y + 1], smax[y : y + 1], sref[y : y + 1],
                        lin_dq[y : y + 1], gdq[y : y + 1], exempt_first, pit_sticky, lin_flags, row, lin_row)  # fmt: skip
        for x in range(nx):
            d = dark_slope[y, x]
            for g in range(n):
                row[0, x, g] = row[0, x, g] - tb32[g] * d
        fit_ramps(row, gdq[y : y + 1], pixeldq[y : y + 1] | lin_row, gain[y : y + 1], read_noise[y : y + 1], tbar,
                  tau, nframes, params, flags, slope[y : y + 1], var_rnoise[y : y + 1], var_poisson[y : y + 1],
                  dq_out[y : y + 1], nomark)  # fmt: skip
        for x in range(nx):
            dq_out[y, x] |= lin_row[0, x]
