"""Counter-based random numbers: every deviate is a pure function of (stream key, element index).

Noise realizations must be identical whatever the chunking and the number of workers, so no deviate
may depend on which task drew it or on what that task drew before. Each deviate is therefore computed
from its own coordinates: the 64-bit stream key (one per layer, noise component and resultant, from
:func:`stream_key`) and the element's index in a fixed, full-frame numbering (``y * nside + x``). Any
tile, in any order, on any worker, produces the same numbers.

The bits come from the SplitMix64 output function (Steele, Lea & Flood 2014) applied to
``key + (counter + 1) * 0x9E3779B97F4A7C15``; each index owns a run of ``2**20`` counters, so
rejection samplers (gamma, Poisson, Pearson IV) draw as many uniforms as they need per element.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ._config import CACHE

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_SUB = 20  # counters per element: 2**20 uniforms
_TWO_PI = 2.0 * math.pi
_INV53 = 1.0 / 9007199254740992.0  # 2**-53


def stream_key(seed: int | tuple[int, ...], *path: int) -> int:
    """A 64-bit key for one stream, e.g. ``stream_key(seed, layer, component, resultant)``.

    Derived with :class:`numpy.random.SeedSequence` (entropy ``seed``, ``spawn_key=path``): distinct
    paths give statistically independent streams. A tuple ``seed`` (``(seed, detector)``) prefixes its
    tail to the path."""
    if isinstance(seed, tuple):
        seed, path = seed[0], (*seed[1:], *path)
    ss = np.random.SeedSequence(int(seed), spawn_key=tuple(int(p) for p in path))
    return int(ss.generate_state(1, dtype=np.uint64)[0])


@numba.njit(nogil=True, cache=CACHE, inline="always")
def _mix(z):
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@numba.njit(nogil=True, cache=CACHE, inline="always")
def uniform(key, index, k):
    """The ``k``-th uniform deviate in (0, 1] of element ``index`` of stream ``key``."""
    c = (np.uint64(index) << np.uint64(_SUB)) + np.uint64(k) + np.uint64(1)
    bits = _mix(np.uint64(key) + c * _GAMMA) >> np.uint64(11)
    return (np.float64(bits) + 1.0) * _INV53


@numba.njit(nogil=True, cache=CACHE, inline="always")
def normal(key, index, k):
    """A standard normal deviate from uniforms ``k`` and ``k + 1`` of element ``index`` (Box-Muller)."""
    u1 = uniform(key, index, k)
    u2 = uniform(key, index, k + 1)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(_TWO_PI * u2)


@numba.njit(nogil=True, cache=CACHE, inline="always")
def gauss(key, index):
    """The standard normal deviate of element ``index`` of a Gaussian field: elements ``2m`` and
    ``2m + 1`` are the cosine and sine halves of one Box-Muller pair (uniforms of element ``m``)."""
    m = index >> 1
    r = math.sqrt(-2.0 * math.log(uniform(key, m, 0)))
    phi = _TWO_PI * uniform(key, m, 1)
    return r * math.cos(phi) if index & 1 == 0 else r * math.sin(phi)


@numba.njit(nogil=True, cache=CACHE)
def gauss_run(key, start, n, out):
    """``out[i] = gauss(key, start + i)``, both halves of a pair from one evaluation."""
    i = 0
    while i < n:
        e = start + i
        m = e >> 1
        r = math.sqrt(-2.0 * math.log(uniform(key, m, 0)))
        phi = _TWO_PI * uniform(key, m, 1)
        if e & 1 == 0:
            out[i] = r * math.cos(phi)
            if i + 1 < n:
                out[i + 1] = r * math.sin(phi)
            i += 2
        else:
            out[i] = r * math.sin(phi)
            i += 1


@numba.njit(nogil=True, cache=CACHE)
def gauss_tile(key, y0, x0, ny, nx, stride, out):
    """``out[i, j]`` = ``gauss(key, (y0 + i) * stride + x0 + j)``: a tile of a full-frame Gaussian field."""
    for i in range(ny):
        gauss_run(key, (y0 + i) * stride + x0, nx, out[i])


def normals(key: int, y0: int, x0: int, ny: int, nx: int, stride: int) -> np.ndarray:
    """Float64 tile ``[y0:y0+ny, x0:x0+nx]`` of the Gaussian field of stream ``key`` (row length ``stride``)."""
    out = np.empty((ny, nx), dtype=np.float64)
    gauss_tile(np.uint64(key), y0, x0, ny, nx, stride, out)
    return out


def normal_vector(key: int, n: int, start: int = 0) -> np.ndarray:
    """Elements ``start .. start + n - 1`` of the Gaussian field of stream ``key``."""
    out = np.empty(n, dtype=np.float64)
    gauss_run(np.uint64(key), start, n, out)
    return out


@numba.njit(nogil=True, cache=CACHE, inline="always")
def poisson_consts(lam):
    """What a Poisson draw of mean ``lam`` needs that depends on ``lam`` only (computed once per pixel
    when a pixel draws many deviates of one mean)."""
    if not lam > 0.0:
        return 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    if lam < 10.0:
        return math.exp(-lam), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    slam = math.sqrt(lam)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    return 0.0, math.log(lam), b, a, math.log(1.1239 + 1.1328 / (b - 3.4)), 0.9277 - 3.6224 / (b - 2.0), 0.0


@numba.njit(nogil=True, cache=CACHE, inline="always")
def poisson_with(key, index, k0, lam, c):
    """:func:`poisson` with the constants ``c = poisson_consts(lam)`` given."""
    if not lam > 0.0:  # also NaN: the caller screens non-finite means
        return 0, k0
    k = k0
    if lam < 10.0:
        u = uniform(key, index, k)
        k += 1
        p = c[0]
        cdf = p
        n = 0
        while u > cdf and n < 1000:
            n += 1
            p *= lam / n
            cdf += p
        return n, k
    loglam, b, a, log_invalpha, vr = c[1], c[2], c[3], c[4], c[5]
    while True:
        u = uniform(key, index, k) - 0.5
        v = uniform(key, index, k + 1)
        k += 2
        us = 0.5 - abs(u)
        n = math.floor((2.0 * a / us + b) * u + lam + 0.43)
        if us >= 0.07 and v <= vr:
            return int(n), k
        if n < 0 or (us < 0.013 and v > us):
            continue
        if math.log(v) + log_invalpha - math.log(a / (us * us) + b) <= -lam + n * loglam - math.lgamma(n + 1.0):
            return int(n), k


@numba.njit(nogil=True, cache=CACHE, inline="always")
def poisson(key, index, k0, lam):
    """A Poisson deviate of mean ``lam`` from the uniforms of element ``index`` starting at ``k0``.

    Returns ``(count, next k)``. Inversion by sequential search for ``lam < 10``; above, the
    transformed rejection with squeeze of Hormann (1993, PTRS), exact for every mean.
    """
    return poisson_with(key, index, k0, lam, poisson_consts(lam))
