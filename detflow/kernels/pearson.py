"""Pseudo-Poisson bias noise ("O" layer): Pearson-family deviates with the moments of a fitted slope.

A slope fitted with fixed weights ``W`` from resultants of Poisson-distributed frames has, per unit of
intensity ``I``, the central moments ``mu2 = t21 I``, ``mu3 = t31 I`` and ``mu4 = 3 t21^2 I^2 + t41 I``
(the ``t`` are the "tilde nu" coefficients of :func:`tilde_nus`, as in ``romanimpreprocess`` 1.0,
``GalPoisson``). The O layer draws, for every pixel, one zero-mean deviate with exactly these four
moments from the Pearson system, chosen by ``beta1 = mu3^2 / mu2^3`` and ``beta2 = mu4 / mu2^2``:

* below the type III line ``beta2 = 1.5 beta1 + 3``: type I, a scaled and shifted beta variate
  ``G_a / (G_a + G_b)`` from two gamma variates;
* on that line: type III, a gamma variate;
* between it and the type V curve ``beta2 = (48 + 39 beta1 + 6 (4 + beta1)^1.5) / (32 - beta1)``:
  type VI, a beta-prime variate ``G_a / G_b``;
* on the curve: type V, an inverse gamma variate ``1 / G``;
* above it (and ``beta1 < 32``): type IV, by Devroye's (1986, ch. VII.2) rejection method for
  log-concave densities applied to the density of ``theta = atan((x - lambda)/a)``, proportional to
  ``cos(theta)^(2m-2) exp(-nu theta)`` (Heinrich 2004, "A guide to the Pearson type IV distribution",
  CDF/MEMO/STATISTICS/PUBLIC/6820, section 7). Its normalisation uses ``|Gamma(m + i nu/2)|``, computed
  here from differences of Stirling series so that it stays accurate for the very large ``m`` and ``nu``
  of bright pixels, and the acceptance test and the output are written in terms of the offset from the
  mode so that neither loses precision there.

The region tests reproduce the reference's ``draw_from_Pearson`` with ``atol=0`` expression by
expression (NumPy, same operations), so every element gets the same type; elements outside the
admissible region (``beta2 > beta1 + 1`` etc.) and type IV elements with ``beta1 >= 32`` get 0. The
skewness has the sign of ``t31``. Gamma variates come from Marsaglia & Tsang (2000, ACM TOMS 26 363),
with ``G_a = G_{a+1} U^{1/a}`` for ``a < 1`` (kept in logarithms, so tiny shapes do not underflow).

Randomness: the ``k``-th uniform of element ``e`` is ``rng.uniform(key, index[e], k)`` (counter-based,
:mod:`detflow.kernels.rng`), so a deviate depends only on ``(key, index[e], t's, intensity[e])`` and
not on which other elements are drawn in the same call, nor in which order.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from . import rng
from ._config import CACHE

# type codes returned by :func:`pearson_type` (0: not drawn, deviate 0)
NONE, TYPE_I, TYPE_III, TYPE_IV, TYPE_V, TYPE_VI = 0, 1, 3, 4, 5, 6

I_MIN = 0.01  # intensities are clipped to at least this (as in the reference)
_BLOCK = 1 << 18  # elements classified per NumPy pass (bounds the temporaries)

_HALF_LOG_PI = 0.5 * math.log(math.pi)
_LOG2 = math.log(2.0)
_HALF_PI = 0.5 * math.pi
# Stirling series of log Gamma(z): sum_k B_2k / (2k (2k-1)) z^(1-2k), k = 1..7
_STIRLING = (
    1.0 / 12.0,
    -1.0 / 360.0,
    1.0 / 1260.0,
    -1.0 / 1680.0,
    1.0 / 1188.0,
    -691.0 / 360360.0,
    1.0 / 156.0,
)
_STIRLING_MIN = 12.0  # shift arguments up to at least this before using the series


# ---------------------------------------------------------------------------------------------
# moment coefficients of the fitted slope
# ---------------------------------------------------------------------------------------------


def tilde_nus(nframes, first_frame, weights) -> tuple[float, float, float]:
    """``(t21, t31, t41)`` for a ramp whose resultant i averages nframes[i] consecutive frames starting at frame
    index first_frame[i], fitted with slope weights `weights` (one per resultant).

    Per unit intensity in electrons per frame. With ``c_j = sum_i weights[i] * f_ij`` where ``f_ij`` is
    the fraction of the frames of resultant ``i`` with index ``>= j`` (``j = 1 .. last frame``), and
    ``s_p = sum_j c_j^p``: ``t21 = s_2``, ``t31 = s_3 - 3 s_2^2``, ``t41 = s_4 - 10 s_2 s_3 + 15 s_2^3``
    (the combination used by ``romanimpreprocess``; its ``t42`` is ``3 t21^2``).
    """
    n = np.asarray(nframes, dtype=np.int64).ravel()
    a = np.asarray(first_frame, dtype=np.int64).ravel()
    w = np.asarray(weights, dtype=np.float64).ravel()
    if not (n.size == a.size == w.size):
        raise ValueError("nframes, first_frame and weights need one entry per resultant")
    if n.size == 0 or np.any(n < 1) or np.any(a < 0):
        raise ValueError("every resultant needs at least one frame and a non-negative first frame")
    end = a + n  # one past the last frame of each resultant
    j = np.arange(1, int(end.max()), dtype=np.int64)
    frac = np.clip(end[:, None] - j[None, :], 0, n[:, None]) / n[:, None]
    c = w @ frac
    c2 = c * c
    s2 = float(np.sum(c2))
    s3 = float(np.sum(c2 * c))
    s4 = float(np.sum(c2 * c2))
    return s2, s3 - 3.0 * s2 * s2, s4 - 10.0 * s2 * s3 + 15.0 * s2**3


def tilde_nus_per_second(nframes, first_frame, weights, frame_time: float) -> tuple[float, float, float]:
    """:func:`tilde_nus` rescaled from electrons per frame to electrons per second, as the reference does
    before drawing: ``(t21 * ft, t31 * ft**2, t41 * ft**3)``; ``weights`` are slope weights per second."""
    t21, t31, t41 = tilde_nus(nframes, first_frame, weights)
    ft = float(frame_time)
    return t21 * ft, t31 * ft**2, t41 * ft**3


@numba.njit(nogil=True, cache=CACHE)
def tilde_nus_pixels(weights, first_frame, nframes, frame_time, t21, t31, t41):
    """:func:`tilde_nus_per_second` of every pixel's own slope weights ``weights[y, x]`` ((ny, nx, n), one
    per resultant), into the (ny, nx) outputs ``t21``, ``t31``, ``t41``; O(frames + n) per pixel."""
    ny, nx, n = weights.shape
    last = 0
    for r in range(n):
        last = max(last, first_frame[r] + nframes[r])
    ft = float(frame_time)
    for i in range(ny):
        for j in range(nx):
            w = weights[i, j]
            s2 = 0.0
            s3 = 0.0
            s4 = 0.0
            full = 0.0  # the weights of the resultants that start at or after frame f
            r = n - 1
            for f in range(last - 1, 0, -1):
                while r >= 0 and first_frame[r] >= f:
                    full += w[r]
                    r -= 1
                c = full
                if r >= 0 and f < first_frame[r] + nframes[r]:  # f inside resultant r: the share at or after f
                    c += w[r] * (first_frame[r] + nframes[r] - f) / nframes[r]
                c2 = c * c
                s2 += c2
                s3 += c2 * c
                s4 += c2 * c2
            t21[i, j] = s2 * ft
            t31[i, j] = (s3 - 3.0 * s2 * s2) * ft * ft
            t41[i, j] = (s4 - 10.0 * s2 * s3 + 15.0 * s2 * s2 * s2) * ft * ft * ft


# ---------------------------------------------------------------------------------------------
# Pearson type of every element
# ---------------------------------------------------------------------------------------------


def _betas(t21, t31, t41, intensity) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clipped intensity, beta1 and beta2, with exactly the reference's floating-point operations (the
    ``t`` scalars, or arrays like ``intensity``)."""
    t21, t31, t41 = ((float(t) if np.ndim(t) == 0 else np.asarray(t, dtype=float)) for t in (t21, t31, t41))
    inten = np.clip(np.asarray(intensity, dtype=float), I_MIN, None)
    b1 = t31**2 / (t21**3 * inten)
    b2 = (3 * t21**2 * inten + t41) / (t21**2 * inten)
    return inten, b1, b2


def _classify(b1: np.ndarray, b2: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        base = (b2 > 0) & (b1 >= 0) & (b2 > b1 + 1) & (b2 > 0.75 * b1)
        line3 = 1.5 * b1 + 3
        curve5 = (48 + 39 * b1 + 6 * (4 + b1) ** 1.5) / (32 - b1)
        code = np.zeros(b1.shape, dtype=np.int8)
        # same precedence as the reference (later assignments win; only III and V can overlap, at beta1 = 0)
        code[base & (b2 < line3)] = TYPE_I
        code[base & (b2 == line3)] = TYPE_III
        code[base & (b2 == curve5)] = TYPE_V
        code[base & (b2 > line3) & (b2 < curve5)] = TYPE_VI
        code[base & (b2 > curve5) & (b1 < 32)] = TYPE_IV
    return code


def pearson_type(t21: float, t31: float, t41: float, intensity) -> np.ndarray:
    """The Pearson type code (``TYPE_I`` .. ``TYPE_VI``, or ``NONE``) of every element, as an int8 array."""
    _, b1, b2 = _betas(t21, t31, t41, intensity)
    return _classify(b1, b2)


def target_moments(t21: float, t31: float, t41: float, intensity) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mu2, mu3, mu4)`` aimed at for each element (intensity clipped at ``I_MIN``)."""
    inten = np.clip(np.asarray(intensity, dtype=float), I_MIN, None)
    return t21 * inten, t31 * inten, 3.0 * t21**2 * inten**2 + t41 * inten


# ---------------------------------------------------------------------------------------------
# samplers (numba); every one takes the element's stream (key, idx) and its next counter k, and
# returns (value, next counter)
# ---------------------------------------------------------------------------------------------


@numba.njit(nogil=True, cache=CACHE)
def _gamma_ge1(key, idx, k, a):
    """Marsaglia-Tsang gamma variate of shape ``a >= 1``: returns ``(d, v, k)`` with ``G = d * v``."""
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        x = rng.normal(key, idx, k)
        k += 2
        v = 1.0 + c * x
        if v <= 0.0:
            continue
        v = v * v * v
        u = rng.uniform(key, idx, k)
        k += 1
        x2 = x * x
        if u < 1.0 - 0.0331 * x2 * x2:
            return d, v, k
        if math.log(u) < 0.5 * x2 + d * (1.0 - v + math.log(v)):
            return d, v, k


@numba.njit(nogil=True, cache=CACHE)
def _gamma(key, idx, k, a):
    """Gamma variate of shape ``a > 0`` (unit scale)."""
    if a >= 1.0:
        d, v, k = _gamma_ge1(key, idx, k, a)
        return d * v, k
    d, v, k = _gamma_ge1(key, idx, k, a + 1.0)
    u = rng.uniform(key, idx, k)
    return math.exp(math.log(d * v) + math.log(u) / a), k + 1


@numba.njit(nogil=True, cache=CACHE)
def _log_gamma(key, idx, k, a):
    """Logarithm of a gamma variate of shape ``a > 0`` (no underflow for tiny shapes)."""
    d, v, k = _gamma_ge1(key, idx, k, a if a >= 1.0 else a + 1.0)
    lg = math.log(d * v)
    if a >= 1.0:
        return lg, k
    u = rng.uniform(key, idx, k)
    return lg + math.log(u) / a, k + 1


@numba.njit(nogil=True, cache=CACHE)
def _beta(key, idx, k, a, b):
    """Beta(a, b) variate as ``G_a / (G_a + G_b)``."""
    if a >= 1.0 and b >= 1.0:
        ga, k = _gamma(key, idx, k, a)
        gb, k = _gamma(key, idx, k, b)
        return ga / (ga + gb), k
    la, k = _log_gamma(key, idx, k, a)
    lb, k = _log_gamma(key, idx, k, b)
    if la >= lb:
        return 1.0 / (1.0 + math.exp(lb - la)), k
    e = math.exp(la - lb)
    return e / (1.0 + e), k


@numba.njit(nogil=True, cache=CACHE)
def _beta_prime(key, idx, k, a, b):
    """Beta-prime(a, b) variate as ``G_a / G_b``."""
    if a >= 1.0 and b >= 1.0:
        ga, k = _gamma(key, idx, k, a)
        gb, k = _gamma(key, idx, k, b)
        return ga / gb, k
    la, k = _log_gamma(key, idx, k, a)
    lb, k = _log_gamma(key, idx, k, b)
    return math.exp(la - lb), k


@numba.njit(nogil=True, cache=CACHE)
def _lgamma_re_excess(m, y):
    """``Re log Gamma(m + i y) - log Gamma(m)`` for ``m > 0``, accurate for any size of ``m`` and ``y``."""
    acc = 0.0
    while m < _STIRLING_MIN:  # log|Gamma(z)| = log|Gamma(z + 1)| - log|z|
        t = y / m
        acc -= 0.5 * math.log1p(t * t)
        m += 1.0
    t = y / m
    # Re[(z - 1/2) log z - z] - [(m - 1/2) log m - m], z = m + i y
    res = 0.5 * (m - 0.5) * math.log1p(t * t) - y * math.atan(t)
    wz = 1.0 / complex(m, y)
    wz2 = wz * wz
    wm = 1.0 / m
    wm2 = wm * wm
    for c in _STIRLING:
        res += c * (wz.real - wm)
        wz *= wz2
        wm *= wm2
    return acc + res


@numba.njit(nogil=True, cache=CACHE)
def _lgamma_half_excess(m):
    """``log Gamma(m + 1/2) - log Gamma(m)`` for ``m > 0``."""
    acc = 0.0
    while m < _STIRLING_MIN:
        acc -= math.log1p(0.5 / m)
        m += 1.0
    res = m * math.log1p(0.5 / m) + 0.5 * math.log(m) - 0.5
    wh = 1.0 / (m + 0.5)
    wh2 = wh * wh
    wm = 1.0 / m
    wm2 = wm * wm
    for c in _STIRLING:
        res += c * (wh - wm)
        wh *= wh2
        wm *= wm2
    return acc + res


@numba.njit(nogil=True, cache=CACHE)
def _log_norm_theta(m, nu):
    """Log of the normalisation of ``cos(theta)^(2m-2) exp(-nu theta)`` on ``(-pi/2, pi/2)``:
    ``2^(2m-2) |Gamma(m + i nu/2)|^2 / (pi Gamma(2m-1))``, rewritten with the duplication formula
    ``Gamma(2m-1) = 2^(2m-1) Gamma(m) Gamma(m+1/2) / (sqrt(pi) (2m-1))`` so that no large terms cancel."""
    return (
        math.log(2.0 * m - 1.0) - _LOG2 - _HALF_LOG_PI + 2.0 * _lgamma_re_excess(m, 0.5 * nu) - _lgamma_half_excess(m)
    )


@numba.njit(nogil=True, cache=CACHE)
def _pearson4(key, idx, k, a, r, nu):
    """Zero-mean Pearson IV variate with density ``prop. to (1 + xi^2)^-m exp(-nu atan xi)``,
    ``xi = (x - lambda) / a``, ``m = r/2 + 1``, ``lambda = a nu / r`` (which makes the mean zero).

    ``theta = atan(xi)`` has the log-concave density ``K cos(theta)^r exp(-nu theta)`` with mode
    ``M = -atan(nu / r)``; Devroye's method draws ``theta = M + d`` from the envelope
    ``f(M) min(1, exp(1 - f(M) |d|))`` (acceptance 1/4) and accepts with the exact density ratio."""
    m = 0.5 * r + 1.0
    t = nu / r  # tan(M) = -t
    mode = -math.atan(t)
    log_fmode = _log_norm_theta(m, nu) - 0.5 * r * math.log1p(t * t) + nu * math.atan(t)
    rc = math.exp(-log_fmode)  # 1 / f(M): width of the flat part of the envelope
    sec2 = 1.0 + t * t  # 1 / cos(M)^2
    while True:
        x = 4.0 * rng.uniform(key, idx, k)
        u = rng.uniform(key, idx, k + 1)
        k += 2
        right = x > 2.0
        if right:
            x -= 2.0
        z = 0.0
        if x > 1.0:  # exponential tail of the envelope
            z = math.log(x - 1.0)
            x = 1.0 - z
        d = rc * x if right else -rc * x
        if abs(mode + d) >= _HALF_PI:
            continue
        sd = math.sin(d)
        h = math.sin(0.5 * d)
        q = t * sd - 2.0 * h * h  # cos(M + d) / cos(M) - 1
        if q <= -1.0:
            continue
        if z + math.log(u) > r * math.log1p(q) - nu * d:  # log f(M + d) / f(M)
            continue
        # a (tan(M + d) - tan(M)) = a sin(d) / (cos(M) cos(M + d))
        return a * sd * sec2 / (1.0 + q), k


@numba.njit(nogil=True, cache=CACHE)
def _type5(key, idx, k, mu2, b1, sgn):
    """Shifted inverse gamma with variance ``mu2`` and skewness ``sgn * sqrt(b1)``."""
    if b1 <= 0.0:
        return math.sqrt(mu2) * rng.normal(key, idx, k), k + 2
    # skewness^2 of 1/G_alpha is 16 (alpha - 2) / (alpha - 3)^2; p = alpha + 1
    p = 4.0 * (1.0 + 2.0 / b1 + math.sqrt(4.0 + b1) / b1)
    g, k = _gamma(key, idx, k, p - 1.0)
    return sgn * math.sqrt(mu2 * (p - 3.0)) * ((p - 2.0) / g - 1.0), k


@numba.njit(nogil=True, cache=CACHE)
def _type3(key, idx, k, mu2, mu3):
    """Shifted gamma with variance ``mu2`` and third moment ``mu3``."""
    if mu3 == 0.0:
        return math.sqrt(mu2) * rng.normal(key, idx, k), k + 2
    theta = abs(mu3) / (2.0 * mu2)
    shape = mu2 / (theta * theta)
    g, k = _gamma(key, idx, k, shape)
    x = theta * (g - shape)
    return (x if mu3 > 0.0 else -x), k


@numba.njit(nogil=True, cache=CACHE)
def _draw_one(key, idx, code, mu2, mu3, b1, b2, sgn):
    k = 0
    if code == 1:
        den = (b2 - 3.0) - 1.5 * b1
        if den < 0.0:
            u = 3.0 * (b1 - b2 + 1.0) / den  # a + b
            v = b1 * (u + 2.0) ** 2 / (4.0 * (u + 1.0))  # (a - b)^2 / (a b)
            s = math.sqrt(v / (v + 4.0))
            big = 0.5 * u * (1.0 + s)
            small = 2.0 * u / ((v + 4.0) * (1.0 + s))  # = u (1 - s) / 2 without cancellation
            a, b = (big, small) if sgn < 0.0 else (small, big)
            y, k = _beta(key, idx, k, a, b)
            var = a * b / (u * u * (u + 1.0))
            return math.sqrt(mu2 / var) * (y - a / u)
        code = 3  # rounding put it on the type III line
    if code == 6 or code == 4:
        den = 2.0 * b2 - 3.0 * b1 - 6.0
        if den > 0.0:
            r = 6.0 * (b2 - b1 - 1.0) / den
            inner = 16.0 * (r - 1.0) - b1 * (r - 2.0) ** 2
            if code == 6 and inner < 0.0:
                # beta prime (alpha, beta = r + 1): beta1 fixes 2 alpha + beta - 1 = r (r-2) sqrt(b1/-inner)
                w = r * (r - 2.0) * math.sqrt(b1 / -inner)
                alpha = 8.0 * r * r * (r - 1.0) / (-inner * (w + r))  # = (w - r) / 2
                y, k = _beta_prime(key, idx, k, alpha, r + 1.0)
                var = alpha * (alpha + r) / ((r - 1.0) * r * r)
                return sgn * math.sqrt(mu2 / var) * (y - alpha / r)
            if code == 4 and inner > 0.0:
                nu = -sgn * r * (r - 2.0) * math.sqrt(b1 / inner)
                a = 0.25 * math.sqrt(mu2 * inner)
                x, k = _pearson4(key, idx, k, a, r, nu)
                return x
            code = 5  # on the type V curve within rounding
        else:
            code = 3
    if code == 5:
        x, k = _type5(key, idx, k, mu2, b1, sgn)
        return x
    if code == 3:
        x, k = _type3(key, idx, k, mu2, mu3)
        return x
    return 0.0


@numba.njit(nogil=True, cache=CACHE)
def _draw_kernel(t21, t31, inten, b1, b2, code, key, index, out):
    sgn = 1.0 if t31 >= 0.0 else -1.0
    for e in range(inten.size):
        c = code[e]
        if c == 0:
            out[e] = 0.0
        else:
            out[e] = _draw_one(key, index[e], c, t21 * inten[e], t31 * inten[e], b1[e], b2[e], sgn)


@numba.njit(nogil=True, cache=CACHE)
def _draw_kernel_each(t21, t31, inten, b1, b2, code, key, index, out):
    """:func:`_draw_kernel` with the ``t`` of each element."""
    for e in range(inten.size):
        c = code[e]
        if c == 0:
            out[e] = 0.0
        else:
            sgn = 1.0 if t31[e] >= 0.0 else -1.0
            out[e] = _draw_one(key, index[e], c, t21[e] * inten[e], t31[e] * inten[e], b1[e], b2[e], sgn)


def pearson_draws(t21, t31, t41, intensity: np.ndarray, key: int, index: np.ndarray) -> np.ndarray:
    """One zero-mean Pearson deviate per element with central moments ``mu2 = t21 I``, ``mu3 = t31 I``,
    ``mu4 = 3 t21^2 I^2 + t41 I`` (``I = max(intensity, 0.01)``); 0 where the reference draws nothing.

    The ``t`` are floats, or arrays of the shape of ``intensity`` (each element its own weights: a ramp fit
    with per-pixel weights). Element ``e`` uses the uniforms ``rng.uniform(key, index[e], k)``,
    ``k = 0, 1, ...``: its deviate is a pure function of ``(key, index[e], t21, t31, t41, intensity[e])``.
    ``index`` has the shape of ``intensity`` (e.g. ``y * nside + x``). Returns float64 with the shape of
    ``intensity``.
    """
    inten = np.asarray(intensity)
    idx = np.asarray(index)
    if idx.shape != inten.shape:
        raise ValueError(f"index shape {idx.shape} differs from intensity shape {inten.shape}")
    each = any(np.ndim(t) for t in (t21, t31, t41))
    if each:
        t21, t31, t41 = (np.broadcast_to(np.asarray(t, dtype=float), inten.shape).reshape(-1) for t in (t21, t31, t41))
    else:
        t21, t31, t41 = float(t21), float(t31), float(t41)
    flat_i = inten.reshape(-1)
    flat_idx = np.ascontiguousarray(idx.reshape(-1), dtype=np.int64)
    out = np.empty(flat_i.size, dtype=np.float64)
    ukey = np.uint64(int(key) & 0xFFFFFFFFFFFFFFFF)
    for s in range(0, flat_i.size, _BLOCK):
        e = min(s + _BLOCK, flat_i.size)
        if each:
            t = [np.ascontiguousarray(a[s:e]) for a in (t21, t31, t41)]
            clipped, b1, b2 = _betas(*t, flat_i[s:e])
            _draw_kernel_each(t[0], t[1], clipped, b1, b2, _classify(b1, b2), ukey, flat_idx[s:e], out[s:e])
        else:
            clipped, b1, b2 = _betas(t21, t31, t41, flat_i[s:e])
            code = _classify(b1, b2)
            _draw_kernel(t21, t31, clipped, b1, b2, code, ukey, flat_idx[s:e], out[s:e])
    return out.reshape(inten.shape)
