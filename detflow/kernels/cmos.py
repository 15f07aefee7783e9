"""CMOS calibration numerics that need a per-pixel loop: the exponential dark-current fit.

* :func:`fit_exp_model`: weighted nonlinear least squares of ``y = exp(x @ theta)`` for each row of a
  ``(pixels, points)`` array (one pixel's dark rates over its (temperature, exposure) groups), with a
  design ``x`` shared by every pixel: ``[1, T - Tmin]`` gives ``A exp(B (T - Tmin))`` (``theta =
  [ln A, B]``), ``[1, T - Tmin, ln t]`` gives ``A t^gamma exp(B (T - Tmin))``. Iterative (Gauss-Newton
  with step halving, started from the weighted straight-line fit of ``ln y``), hence numba.

* :func:`group_stats`: per pixel and per group of frames, the median or mean, the standard deviation
  (ddof 1) and the number of finite values, in one pass over a (frame, y, x) block as it is stored (the
  master of every (set point, exposure) group of a calibration stack).

The statuses (:data:`STATUS`) are shared with the vectorised linear fits of :mod:`detflow.calib.cmos`.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ._config import CACHE

# fit status per pixel (0 = fitted); the models' ``fit_failed`` maps hold these codes
OK, FEW_POINTS, NONPOSITIVE, SINGULAR, NOT_CONVERGED, SKIPPED = 0, 1, 2, 3, 4, 255
STATUS = {
    "ok": OK,
    "too_few_points": FEW_POINTS,  # fewer finite points than parameters + 1 (no residual dof for the errors)
    "non_positive": NONPOSITIVE,  # fewer positive points than parameters: no log-space start
    "singular": SINGULAR,  # degenerate design (e.g. every valid point at one temperature)
    "not_converged": NOT_CONVERGED,  # no convergence within maxiter, or a non-finite result
}


@numba.njit(nogil=True, cache=CACHE)
def inv_spd(a, out):
    """Inverse of the small symmetric positive-definite matrix ``a`` into ``out`` (Jacobi-scaled
    Cholesky); False (``out`` untouched) when ``a`` is singular to ~1e-12 relative."""
    p = a.shape[0]
    d = np.empty(p)
    for i in range(p):
        if not a[i, i] > 0.0:
            return False
        d[i] = 1.0 / math.sqrt(a[i, i])
    s = np.empty((p, p))
    for i in range(p):
        for j in range(p):
            s[i, j] = a[i, j] * d[i] * d[j]  # unit diagonal: the pivot test below is relative
    low = np.zeros((p, p))
    for j in range(p):
        v = s[j, j]
        for k in range(j):
            v -= low[j, k] * low[j, k]
        if not v > 1e-12:
            return False
        low[j, j] = math.sqrt(v)
        for i in range(j + 1, p):
            v = s[i, j]
            for k in range(j):
                v -= low[i, k] * low[j, k]
            low[i, j] = v / low[j, j]
    linv = np.zeros((p, p))  # inverse of the lower factor, column by column
    for j in range(p):
        linv[j, j] = 1.0 / low[j, j]
        for i in range(j + 1, p):
            v = 0.0
            for k in range(j, i):
                v -= low[i, k] * linv[k, j]
            linv[i, j] = v / low[i, i]
    for i in range(p):
        for j in range(p):
            v = 0.0
            for k in range(max(i, j), p):
                v += linv[k, i] * linv[k, j]
            out[i, j] = v * d[i] * d[j]
    return True


@numba.njit(nogil=True, cache=CACHE)
def _eta(x, k, theta):
    v = 0.0
    for j in range(theta.size):
        v += x[k, j] * theta[j]
    return v


@numba.njit(nogil=True, cache=CACHE)
def _chi2(y, w, x, theta, idx, n):
    c = 0.0
    for q in range(n):
        k = idx[q]
        r = y[k] - math.exp(_eta(x, k, theta))
        c += w[k] * r * r
    return c


@numba.njit(nogil=True, cache=CACHE)
def _accumulate(m, g, x, k, wm, gz):
    """One point of weighted normal equations: ``m += wm x_k x_k^T``, ``g += gz x_k``."""
    p = m.shape[0]
    for a in range(p):
        g[a] += gz * x[k, a]
        for b in range(p):
            m[a, b] += wm * x[k, a] * x[k, b]


@numba.njit(nogil=True, cache=CACHE)
def _gauss_newton_normal(y, w, x, theta, idx, n, m, g):
    """``m = J^T W J`` and ``g = J^T W r`` of ``y ~ exp(x @ theta)`` at ``theta`` (``J = f x``)."""
    m[:, :] = 0.0
    g[:] = 0.0
    for q in range(n):
        k = idx[q]
        f = math.exp(_eta(x, k, theta))
        _accumulate(m, g, x, k, w[k] * f * f, w[k] * f * (y[k] - f))


@numba.njit(nogil=True, cache=CACHE)
def fit_exp_model(y, w, x, fit, maxiter, tol, params, cov, chi2, nused, status):
    """Weighted least squares of ``y[i] ~ exp(x @ theta)`` for every row ``i`` of ``y`` where ``fit[i]``.

    ``y``, ``w`` (pixels, n): observations and their weights ``1 / sigma^2`` (points with a non-finite
    ``y`` or ``w``, or ``w <= 0``, are left out); ``x`` (n, p) the design. Start: the straight-line fit
    of ``ln y`` over the positive points weighted by ``w y^2`` (``var(ln y) ~ sigma^2 / y^2``); then
    Gauss-Newton in linear space (the step halved until chi-square does not grow) until every step is
    below ``tol (1 + |theta|)`` or chi-square stops falling (1e-12 relative). Outputs per row:
    ``params`` (p) = theta, ``cov`` (p, p) = ``(J^T W J)^-1 chi2 / (n - p)`` (scaled by the reduced
    chi-square), ``chi2`` the reduced chi-square ``sum w r^2 / (n - p)``, ``nused`` the points used and
    ``status`` (:data:`STATUS`; rows with ``fit[i]`` False get SKIPPED and NaN).
    """
    npix, n = y.shape
    p = x.shape[1]
    idx = np.empty(n, np.int64)
    m = np.empty((p, p))
    minv = np.empty((p, p))
    g = np.empty(p)
    theta = np.empty(p)
    trial = np.empty(p)
    step = np.empty(p)
    for i in range(npix):
        params[i, :] = np.nan
        cov[i, :, :] = np.nan
        chi2[i] = np.nan
        nused[i] = 0
        if not fit[i]:
            status[i] = SKIPPED
            continue
        yi = y[i]
        wi = w[i]
        nv = 0
        npos = 0
        for k in range(n):
            if math.isfinite(yi[k]) and math.isfinite(wi[k]) and wi[k] > 0.0:
                idx[nv] = k
                nv += 1
                if yi[k] > 0.0:
                    npos += 1
        nused[i] = nv
        if nv < p + 1:
            status[i] = FEW_POINTS
            continue
        if npos < p:
            status[i] = NONPOSITIVE
            continue
        # log-space start: weighted linear least squares of ln y on x over the positive points
        m[:, :] = 0.0
        g[:] = 0.0
        for q in range(nv):
            k = idx[q]
            if yi[k] <= 0.0:
                continue
            wl = wi[k] * yi[k] * yi[k]
            _accumulate(m, g, x, k, wl, wl * math.log(yi[k]))
        if not inv_spd(m, minv):
            status[i] = SINGULAR
            continue
        for a in range(p):
            v = 0.0
            for b in range(p):
                v += minv[a, b] * g[b]
            theta[a] = v
        c_old = _chi2(yi, wi, x, theta, idx, nv)
        converged = False
        singular = False
        for _ in range(maxiter):
            _gauss_newton_normal(yi, wi, x, theta, idx, nv, m, g)
            if not inv_spd(m, minv):
                singular = True
                break
            small = True
            for a in range(p):
                v = 0.0
                for b in range(p):
                    v += minv[a, b] * g[b]
                step[a] = v
                if abs(v) > tol * (1.0 + abs(theta[a])):
                    small = False
            lam = 1.0
            c_new = np.inf
            for _h in range(40):
                for a in range(p):
                    trial[a] = theta[a] + lam * step[a]
                c_new = _chi2(yi, wi, x, trial, idx, nv)
                if c_new <= c_old:
                    break
                lam *= 0.5
            if c_new <= c_old:
                theta[:] = trial
                if c_old - c_new <= 1e-12 * c_old:
                    small = True  # chi-square no longer moves: at the minimum to rounding
                c_old = c_new
            else:
                small = True  # no descent along the Gauss-Newton step: at the minimum to rounding
            if small:
                converged = True
                break
        if singular:
            status[i] = SINGULAR
            continue
        _gauss_newton_normal(yi, wi, x, theta, idx, nv, m, g)  # covariance at the solution
        if not inv_spd(m, minv):
            status[i] = SINGULAR
            continue
        red = c_old / (nv - p)
        ok = converged and math.isfinite(red)
        for a in range(p):
            ok = ok and math.isfinite(theta[a])
        if not ok:
            status[i] = NOT_CONVERGED
            continue
        params[i, :] = theta
        for a in range(p):
            for b in range(p):
                cov[i, a, b] = minv[a, b] * red
        chi2[i] = red
        status[i] = OK


@numba.njit(nogil=True, cache=CACHE)
def group_stats(block, good, members, starts, use_median, value, std, count):
    """Per group ``g`` (frames ``members[starts[g]:starts[g+1]]`` of ``block`` (frame, y, x)) and pixel:
    ``value`` the median (``use_median``; the mean of the two middle values for an even count, as
    numpy's) or the mean of the finite values of the frames where ``good``, ``std`` their standard
    deviation with ddof 1 (NaN below 2 values), ``count`` how many; outputs (group, y, x). The frames
    of a group are copied to a (members, pixels) buffer row by row (contiguous reads), then each pixel's
    column is reduced."""
    ng = starts.size - 1
    ny, nx = block.shape[1], block.shape[2]
    npx = ny * nx
    width = 0
    for g in range(ng):
        width = max(width, starts[g + 1] - starts[g])
    buf = np.empty((width, npx))
    vals = np.empty(width)
    for g in range(ng):
        m = 0
        for q in range(starts[g], starts[g + 1]):
            f = members[q]
            if not good[f]:
                continue
            for y in range(ny):
                for x in range(nx):
                    buf[m, y * nx + x] = block[f, y, x]
            m += 1
        for p in range(npx):
            n = 0
            total = 0.0
            for k in range(m):
                v = buf[k, p]
                if v == v:
                    vals[n] = v
                    total += v
                    n += 1
            y, x = p // nx, p % nx
            count[g, y, x] = n
            if n == 0:
                value[g, y, x] = np.nan
                std[g, y, x] = np.nan
                continue
            mean = total / n
            ss = 0.0
            for k in range(n):
                d = vals[k] - mean
                ss += d * d
            std[g, y, x] = math.sqrt(ss / (n - 1)) if n > 1 else np.nan
            if use_median:
                part = np.sort(vals[:n])
                value[g, y, x] = part[n // 2] if n % 2 else 0.5 * (part[n // 2 - 1] + part[n // 2])
            else:
                value[g, y, x] = mean
