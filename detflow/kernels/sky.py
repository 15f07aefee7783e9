"""Sky level estimators on one image (plain NumPy and SciPy; no dask, no I/O).

* :func:`smooth_mode`: the mode of a Gaussian-smoothed histogram, robust to sources.
* :func:`sky_block_medians` + :func:`sky_fit`: a 2-D Legendre polynomial of total degree <= order,
  least-squares through the medians of an ``nblock x nblock`` grid of blocks; :func:`medfit` both and
  the model (the PIT's ``medfit``).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.special import eval_legendre
from scipy.stats import norm


def bin4(a: np.ndarray) -> np.ndarray:
    ny, nx = a.shape[-2] // 4 * 4, a.shape[-1] // 4 * 4
    return a[..., :ny, :nx].reshape(a.shape[:-2] + (ny // 4, 4, nx // 4, 4)).mean(axis=(-3, -1))


def smooth_mode(values: np.ndarray, pc: float = 25.0, pksmooth: float = 0.5, niter: int = 3) -> float:
    """Mode of a Gaussian-smoothed histogram (NaNs ignored): start at the median with the IQR width,
    three times take the peak of 19 kernel-density samples and refine it by a parabola."""
    v = values[np.isfinite(values)].astype(np.float64)
    if v.size == 0:
        return np.nan
    c1, ctr, c3 = np.percentile(v, [pc, 50.0, 100.0 - pc])
    sigma = (c3 - c1) / (norm.ppf((100.0 - pc) / 100.0) * 2)
    if not sigma > 0:
        return float(ctr)
    n = 21
    for _ in range(niter):
        z = ctr + np.linspace(-1, 1, n) * sigma
        hist = np.zeros(n)
        for i in range(1, n - 1):
            hist[i] = np.exp(-0.5 * ((z[i] - v) / (pksmooth * sigma)) ** 2).sum()
        i = int(np.argmax(hist))
        b = (hist[i + 1] - hist[i - 1]) / 2.0
        a = (hist[i + 1] + hist[i - 1]) / 2.0 - hist[i]
        ctr = z[i] + (z[1] - z[0]) * (-b / 2.0 / a)
    return float(ctr)


def legendre_basis(order: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Products P_i(u) P_j(v), i + j <= order, ordered i then j (the PIT's coefficient order)."""
    return np.stack([eval_legendre(i, u) * eval_legendre(j, v)
                     for i in range(order + 1) for j in range(order + 1 - i)])  # fmt: skip


def sky_block_medians(img: np.ndarray, nblock: int = 8) -> np.ndarray:
    """NaN-medians of an ``nblock x nblock`` grid of equal blocks centred on the image."""
    ny, nx = img.shape
    ky, kx = ny // nblock, nx // nblock
    py, px = (ny % nblock) // 2, (nx % nblock) // 2
    sub = img[py : py + nblock * ky, px : px + nblock * kx].reshape(nblock, ky, nblock, kx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks give NaN, left out of the fit
        return np.nanmedian(sub, axis=(1, 3))


def sky_fit(meds: np.ndarray, ny: int, nx: int, order: int, nblock: int = 8) -> np.ndarray:
    """Least-squares coefficients of the 2-D Legendre sky (total degree <= order) through block medians
    at the block centres, in ``u = 2 x / nx - 1``, ``v = 2 y / ny - 1``."""
    ky, kx = ny // nblock, nx // nblock
    py, px = (ny % nblock) // 2, (nx % nblock) // 2
    u1 = 2 * (px - 0.5 + kx * np.linspace(0.5, nblock - 0.5, nblock)) / nx - 1
    v1 = 2 * (py - 0.5 + ky * np.linspace(0.5, nblock - 0.5, nblock)) / ny - 1
    u, v = np.meshgrid(u1, v1)
    basis = legendre_basis(order, u, v)
    ok = np.isfinite(meds)
    b = basis[:, ok]
    return np.linalg.solve(b @ b.T, b @ meds[ok])


def sky_model(coefs: np.ndarray, ny: int, nx: int, order: int) -> np.ndarray:
    """The Legendre sky ``sum c_k P_i(u) P_j(v)`` on an ``ny x nx`` grid (float32)."""
    u = 2 * np.arange(nx) / nx - 1
    v = 2 * np.arange(ny) / ny - 1
    uu, vv = np.meshgrid(u, v)
    return np.tensordot(coefs, legendre_basis(order, uu, vv), axes=1).astype(np.float32)


def medfit(img: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """``(coefficients, model)`` of the Legendre sky through the block medians of one image."""
    ny, nx = img.shape
    coefs = sky_fit(sky_block_medians(img), ny, nx, order)
    return coefs, sky_model(coefs, ny, nx, order)
