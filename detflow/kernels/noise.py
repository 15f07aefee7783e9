"""Noise generators for WFI noise realizations (the PIT ``gen_noise_image`` layers).

Every deviate comes from :mod:`detflow.kernels.rng`, addressed by (stream key, full-frame element
index), so a realization is a function of the seed alone, never of tiling, task order or worker count.

* :func:`pink_block`: one channel's 1/f read noise, ``S(f) = 1/f`` in readout order (unit variance per
  unit of ln frequency), generated as a whole block by one FFT (Casertano-style: Gaussian Fourier
  amplitudes scaled by ``|f|^-1/2``).
* :func:`correlated_frame`: a resultant's correlated noise: the common 1/f stream times ``C_PINK`` plus
  each channel's own stream times ``U_PINK`` (odd channels read right to left), and the amp33 reference
  output built from its median, white noise and 1/f terms.
* :func:`zclip`: clip a layer at median +/- k IQR/1.349 (the ``z`` flag of ``R``).
* :func:`poisson_resampled_slopes`: Poisson noise resampled frame by frame through each pixel's ramp
  weights (the ``Pr`` layer); :func:`poisson_gaussian_slopes` its Gaussian limit, with the variance
  coefficient of those weights (:func:`poisson_coefficients`).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from . import rng
from ._config import CACHE


def zclip(img: np.ndarray, k: float) -> np.ndarray:
    """``img`` clipped at median +/- k IQR/1.34896 (NaNs ignored in the statistics, kept)."""
    q25, med, q75 = np.nanpercentile(img, [25, 50, 75])
    half = k * (q75 - q25) / 1.34896
    return np.clip(img, med - half, med + half).astype(np.float32)


def pink_block(key: int, nrows: int, width: int) -> np.ndarray:
    """A ``(nrows, width)`` block of 1/f noise (float64, zero mean) from stream ``key``."""
    n = 2 * nrows * width
    g = rng.normal_vector(key, 2 * n)
    k = np.arange(n, dtype=np.float64)
    k[n // 2 :] -= n  # signed frequency index
    amp = np.zeros(n)
    amp[1:] = np.abs(k[1:]) ** -0.5
    ft = (g[:n] + 1j * g[n:]) * amp
    block = np.fft.fft(ft).real[: n // 2] / math.sqrt(2.0)
    block -= block.mean()
    return block.reshape(nrows, width)


def correlated_frame(keys: dict[str, int], channel_keys: list[int], nside: int, nchannel: int, nframes: int,
                     c_pink: float, u_pink: float, amp33: dict | None) -> np.ndarray:  # fmt: skip
    """Correlated noise of one resultant averaging ``nframes`` reads: ``(nside, nside [+ w])`` float32.

    Columns ``0:nside`` hold the image's 1/f noise (common + per channel), divided by sqrt(nframes);
    with ``amp33`` (``med``, ``std`` arrays and ``M_PINK``, ``RU_PINK``) the last ``w`` columns hold
    the amp33 output itself: ``med + (std * white + RU_PINK * own 1/f + M_PINK * common) / sqrt(nframes)``.
    """
    cw = nside // nchannel
    scale = 1.0 / math.sqrt(nframes)
    width = nside + (cw if amp33 is not None else 0)
    out = np.zeros((nside, width), dtype=np.float32)
    common = pink_block(keys["common"], nside, cw) * c_pink if c_pink else np.zeros((nside, cw))
    for ch in range(nchannel):
        block = common.copy()
        if u_pink:
            block += pink_block(channel_keys[ch], nside, cw) * u_pink
        if ch % 2 == 1:
            block = block[:, ::-1]
        out[:, ch * cw : (ch + 1) * cw] = block * scale
    if amp33 is not None:
        white = rng.normals(keys["amp33_white"], 0, 0, nside, cw, cw) * amp33["std"]
        own = pink_block(keys["amp33_pink"], nside, cw) * amp33["RU_PINK"] if amp33["RU_PINK"] else 0.0
        out[:, nside:] = amp33["med"] + (white + own + amp33["M_PINK"] * common) * scale
    return out


@numba.njit(nogil=True, cache=CACHE)
def _frame_owner(first, nfr, nframes_total):
    owner = np.full(nframes_total, -1, dtype=np.int64)
    for j in range(first.size):
        for f in range(first[j], first[j] + nfr[j]):
            owner[f] = j
    return owner


@numba.njit(nogil=True, cache=CACHE)
def poisson_resampled_slopes(sky, gain, frame_time, first, nfr, weights, key, y0, x0, stride, out):
    """Slope noise of resampled Poisson counts (DN/s), one pixel at a time.

    Per pixel, ``e = max(sky * gain * frame_time, 0)`` electrons arrive in every frame; each frame's count
    is Poisson(e) - e (in DN: divided by gain), accumulated up the ramp; each resultant averages the
    accumulated values of its frames; the slope noise is ``weights[y, x] . delta_resultants``, the
    pixel's own slope weights (``weights`` (ny, nx, n); all zero: no noise).
    Frame ``f`` of pixel ``(y, x)`` draws from uniforms of element ``y * stride + x`` of stream ``key``.
    """
    ny, nx = sky.shape
    nres = first.size
    last = first[nres - 1] + nfr[nres - 1]
    owner = _frame_owner(first, nfr, last)
    delta = np.zeros(nres)
    for i in range(ny):
        for j in range(nx):
            w = weights[i, j]
            if not np.any(w != 0.0):
                out[i, j] = 0.0
                continue
            g = gain[i, j]
            e = np.float64(sky[i, j]) * g * frame_time
            if not np.isfinite(e):  # no level, no noise realization (NaN like the image)
                out[i, j] = np.nan
                continue
            e = max(e, 0.0)
            idx = (y0 + i) * stride + x0 + j
            delta[:] = 0.0
            cum = 0.0
            k = 0
            c = rng.poisson_consts(e)  # one mean for all the frames of a pixel
            for f in range(last):
                n, k = rng.poisson_with(key, idx, k, e, c)
                cum += (n - e) / g
                r = owner[f]
                if r >= 0:
                    delta[r] += cum / nfr[r]
            s = 0.0
            for r in range(nres):
                s += w[r] * delta[r]
            out[i, j] = s


@numba.njit(nogil=True, cache=CACHE)
def poisson_coefficients(weights, tbar, tau, out):
    """Per pixel ``w' S_P w``, the Poisson variance of the slope per unit rate/gain for the pixel's weights
    ``w = weights[y, x]``: ``S_P`` is ``tau_i`` on the diagonal and ``tbar_min(i, j)`` off it."""
    ny, nx, n = weights.shape
    for i in range(ny):
        for j in range(nx):
            w = weights[i, j]
            tail = 0.0  # sum of the weights after resultant r
            acc = 0.0
            for r in range(n - 1, -1, -1):
                wr = np.float64(w[r])
                acc += wr * wr * tau[r] + 2.0 * wr * tbar[r] * tail
                tail += wr
            out[i, j] = acc


@numba.njit(nogil=True, cache=CACHE)
def poisson_gaussian_slopes(sky, gain, coef_poisson, key, y0, x0, stride, out):
    """Gaussian slope noise with the Poisson variance ``coef_poisson[y, x] * max(sky, 0) / gain`` (DN/s)."""
    ny, nx = sky.shape
    for i in range(ny):
        for j in range(nx):
            c = coef_poisson[i, j]
            if not np.isfinite(sky[i, j]):
                out[i, j] = np.nan
                continue
            if not c > 0.0:
                out[i, j] = 0.0
                continue
            var = c * max(np.float64(sky[i, j]), 0.0) / gain[i, j]
            out[i, j] = math.sqrt(var) * rng.gauss(key, (y0 + i) * stride + x0 + j)
