"""The truth of a simulated data set, drawn once from the seed's stream (0,): the scene
(:func:`default_scene`), the flat, dark current, CIC, fixed-pattern noise, bad pixels, the row bias pattern
and the mean charge per frame (:func:`_build_truth`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import ExcamSimConfig
from .emccd_model import _InverseNonlin, apply_smear


def default_scene(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A coronagraph-like scene in e-/pix/s: the residual speckle halo of a star behind an ideal
    coronagraph (``|FFT(P e^{i phi}) - FFT(P)|^2`` for a 30%-obscured pupil sampled at 2.3 pixels per
    lambda/D and a smooth random phase of 0.3 rad rms, PSD ~ f^-2.4), the core blocked by a focal-plane
    mask (transmission ``1 - exp(-(r / 2.5 lambda/D)^4)``), 30 times fainter in a 3-9 lambda/D dark
    hole, scaled to 1 e-/s mean at 9-12 lambda/D and capped at 50 e-/s; plus a 0.02 e-/s background and
    up to seven point sources (Gaussian, sigma 0.42 lambda/D, peaks 1-150 e-/s, 5-300 lambda/D from
    the centre). Centred on the image area; at the default EM gain 100 and 5 s nothing saturates."""
    ny, nx = shape
    n = int(2 ** math.ceil(math.log2(max(ny, nx))))
    lod = 2.3  # pixels per lambda/D
    yy, xx = np.indices((n, n), dtype=np.float64)
    yy -= n / 2
    xx -= n / 2
    rr = np.hypot(yy, xx)
    radius = n / (2 * lod)
    pupil = ((rr <= radius) & (rr >= 0.3 * radius)).astype(np.float64)
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), indexing="ij"))
    f0 = 2.0 / n
    amp = (f * f + f0 * f0) ** -0.6
    phase = np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, n))) * amp).real
    inside = pupil > 0
    phase *= 0.3 / phase[inside].std()  # 0.3 rad rms over the pupil
    e0 = np.fft.fftshift(np.fft.fft2(pupil))
    e1 = np.fft.fftshift(np.fft.fft2(pupil * np.exp(1j * phase)))
    halo = np.abs(e1 - e0) ** 2
    r_lod = rr / lod
    halo *= 1.0 - np.exp(-((r_lod / 2.5) ** 4))  # the focal-plane mask blocks the core
    halo[(r_lod >= 3) & (r_lod <= 9)] /= 30.0  # the dark hole
    ring = (r_lod >= 9) & (r_lod < 12)
    halo *= 1.0 / halo[ring].mean()  # 1 e-/s just outside the dark hole
    r0, c0 = n // 2 - ny // 2, n // 2 - nx // 2
    scene = np.minimum(halo[r0 : r0 + ny, c0 : c0 + nx], 50.0) + 0.02
    yi, xi = np.indices(shape, dtype=np.float64)
    cy, cx = ny / 2, nx / 2
    sigma = 0.42 * lod
    sources = [(5.0, 1.0), (7.0, 3.0), (12.0, 10.0), (25.0, 30.0), (60.0, 80.0), (150.0, 150.0), (300.0, 40.0)]
    for sep_lod, peak in sources:  # (separation in lambda/D, peak e-/s)
        ang = rng.uniform(0, 2 * np.pi)
        sy = cy + sep_lod * lod * math.sin(ang) + rng.uniform(-0.5, 0.5)
        sx = cx + sep_lod * lod * math.cos(ang) + rng.uniform(-0.5, 0.5)
        if not (5 <= sy < ny - 5 and 5 <= sx < nx - 5):
            continue
        a, b = int(sy) - 8, int(sx) - 8
        sl = (slice(max(a, 0), min(a + 17, ny)), slice(max(b, 0), min(b + 17, nx)))
        scene[sl] += peak * np.exp(-((yi[sl] - sy) ** 2 + (xi[sl] - sx) ** 2) / (2 * sigma**2))
    return scene


# =================================================================================================
# truth
# =================================================================================================
@dataclass
class _Truth:
    flux: np.ndarray
    flat: np.ndarray
    dark: np.ndarray
    cic: np.ndarray
    fpn: np.ndarray
    hot: np.ndarray
    low_qe: np.ndarray
    row_pattern: np.ndarray  # fixed per-row bias pattern, DN (frame rows)
    mean_e: np.ndarray  # pre-gain mean charge per frame (image area)
    nonlin: _InverseNonlin | None
    table: np.ndarray | None


def _pick(rng: np.random.Generator, size: int, fraction: float, exclude: np.ndarray | None = None) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    count = round(fraction * size)
    if count:
        pool = np.flatnonzero(~exclude.ravel()) if exclude is not None else np.arange(size)
        mask[rng.choice(pool, size=min(count, pool.size), replace=False)] = True
    return mask


def _smooth_noise(rng: np.random.Generator, n: int, width: float) -> np.ndarray:
    k = np.exp(-0.5 * (np.arange(-3 * width, 3 * width + 1) / width) ** 2)
    x = np.convolve(rng.standard_normal(n + k.size - 1), k / np.sqrt((k * k).sum()), mode="valid")
    return x


def _build_truth(cfg: ExcamSimConfig, table: np.ndarray | None, table_source) -> _Truth:
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(0,)))
    shape = cfg.image_shape
    ny, nx = shape
    size = ny * nx
    flux = cfg.flux if cfg.flux is not None else default_scene(shape, rng)
    # bad pixels: hot (dark current) and low QE (flat); disjoint
    hot = _pick(rng, size, cfg.hot_pixel_fraction).reshape(shape)
    low_qe = _pick(rng, size, cfg.bad_pixel_fraction, exclude=hot).reshape(shape)
    if cfg.flat is not None:
        flat = cfg.flat.copy()
    else:
        v = (np.arange(ny) - (ny - 1) / 2) / (ny / 2)
        u = (np.arange(nx) - (nx - 1) / 2) / (nx / 2)
        c = rng.standard_normal(5)
        low = (
            c[0] * v[:, None] + c[1] * u[None, :] + c[2] * (v[:, None] ** 2 - 1 / 3) + c[3] * (u[None, :] ** 2 - 1 / 3)
        )
        low = low + c[4] * v[:, None] * u[None, :]
        low *= cfg.flat_lowfreq_amp / max(low.std(), 1e-12)
        flat = 1.0 + low + cfg.flat_pixel_rms * np.clip(rng.standard_normal(shape), -4, 4)
        flat[low_qe] *= rng.uniform(0.05, 0.5, int(low_qe.sum()))
        flat /= flat[~low_qe].mean()
        flat = np.maximum(flat, 1e-3)
    dark = np.exp(cfg.dark_spread * np.clip(rng.standard_normal(shape), -4, 4))
    dark *= cfg.dark_current / dark[~hot].mean() if (~hot).any() else 1.0
    lo, hi = cfg.hot_pixel_factor
    dark[hot] = cfg.dark_current * rng.uniform(lo, hi, int(hot.sum()))
    cic = np.maximum(cfg.cic * (1.0 + cfg.cic_spread * np.clip(rng.standard_normal(shape), -4, 4)), 0.0)
    fpn = 0.6 * _smooth_noise(rng, nx, 2.0)[None, :] + 0.8 * rng.standard_normal(shape)
    fpn -= fpn.mean()
    fpn *= cfg.fpn_e / max(fpn.std(), 1e-12)
    rows = cfg.geom.frame_rows
    pattern = 0.8 * _smooth_noise(rng, rows, 15.0) + 0.6 * rng.standard_normal(rows)
    pattern -= pattern.mean()
    pattern *= cfg.row_bias_rms_dn / max(pattern.std(), 1e-12)
    light = flat * flux * cfg.exptime
    if cfg.smear:
        light = apply_smear(light, cfg.exptime)
    mean_e = light + dark * cfg.exptime + cic
    nonlin = _InverseNonlin(table, cfg.em_gain, table_source) if table is not None else None
    return _Truth(flux, flat, dark, cic, fpn, hot, low_qe, pattern, mean_e, nonlin, table)
