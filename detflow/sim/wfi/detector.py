"""The per-pixel truth of the detector and the scene, shared by all exposures: bias, full well, gain,
read noise, nonlinearity, dead and hot pixels, dark current, flat, IPC kernel, amp33, and the point
sources rendered with a pixel-integrated Gaussian PSF."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from detflow.sim.wfi_sky import star_pixel

from .config import SimConfig


# =================================================================================================
# small numerical helpers
# =================================================================================================
def _clipped_normal(rng: np.random.Generator, shape, clip: float = 3.0) -> np.ndarray:
    z = rng.standard_normal(shape, dtype=np.float32)
    np.clip(z, -clip, clip, out=z)
    return z


def _inverse_nonlinearity(s: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """f^-1(s) for f(D) = D - beta D^2 (the root with f'(D) > 0; exact for beta = 0)."""
    return 2.0 * s / (1.0 + np.sqrt(1.0 - 4.0 * beta * s))


# =================================================================================================
# the detector and scene truth
# =================================================================================================
@dataclass
class _Detector:
    """Per-pixel truth shared by all exposures. (N, N) maps unless noted; (A, A) for active-only."""

    sref: np.ndarray  # bias, raw DN
    well: np.ndarray  # hard full well, raw DN
    sat_thresh: np.ndarray  # reference saturation threshold (NaN: no check)
    gain: np.ndarray
    inv_gain: np.ndarray  # 1/gain on live active pixels, 0 on border and dead pixels
    rn: np.ndarray
    beta: np.ndarray
    smin: np.ndarray
    smax: np.ndarray
    no_lin_corr: np.ndarray  # bool
    flat: np.ndarray  # (A, A)
    dark_e: np.ndarray  # (A, A) e/s, 0 on dead pixels
    dead: np.ndarray  # (A, A) bool
    hot: np.ndarray  # (A, A) bool
    kernel: np.ndarray  # (3, 3, A, A)
    amp33_med: np.ndarray  # (N, cw)
    amp33_std: np.ndarray  # (N, cw)
    sources_e: np.ndarray  # (A, A) e/s of the point sources (before flat/IPC)
    src_x: np.ndarray  # (nsources,) centres, 0-based full-frame pixels; the star_radec star last
    src_y: np.ndarray


def _pick_pixels(rng: np.random.Generator, n_active: int, count: int, exclude: np.ndarray | None = None):
    """``count`` distinct flat indices into the (A, A) active area (avoiding ``exclude`` if given)."""
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    pool = n_active * n_active
    pick = rng.choice(pool, size=min(pool, count * 2 + 8), replace=False)
    if exclude is not None:
        pick = pick[~exclude.reshape(-1)[pick]]
    return np.sort(pick[:count])


def _build_detector(cfg: SimConfig, rng: np.random.Generator) -> _Detector:
    geom = cfg.geometry
    n, na, cw = geom.nside, geom.nactive, geom.channel_width
    act = geom.active
    f32 = np.float32

    # bias: per-pixel scatter plus a per-channel offset
    sref = (cfg.bias_dn + cfg.bias_rms_dn * _clipped_normal(rng, (n, n))).astype(f32)
    chan_offset = (0.25 * cfg.bias_rms_dn * rng.standard_normal(geom.nchannel)).astype(f32)
    sref += np.repeat(chan_offset, cw)[None, :]

    well = sref + f32(cfg.saturation_dn - cfg.bias_dn) + f32(cfg.saturation_rms_dn) * _clipped_normal(rng, (n, n))
    sat_thresh = (well - f32(cfg.saturation_margin_dn)).astype(f32)

    gain = (cfg.gain_mean * (1 + cfg.gain_rms * _clipped_normal(rng, (n, n)))).astype(f32)
    rn = (cfg.read_noise_dn * (1 + cfg.read_noise_rms * _clipped_normal(rng, (n, n)))).astype(f32)

    # dead / hot pixels (active area)
    n_dead = int(round(cfg.dead_pixel_fraction * na * na))
    n_hot = int(round(cfg.hot_pixel_fraction * na * na))
    dead = np.zeros((na, na), dtype=bool)
    dead.reshape(-1)[_pick_pixels(rng, na, n_dead)] = True
    hot = np.zeros((na, na), dtype=bool)
    hot.reshape(-1)[_pick_pixels(rng, na, n_hot, exclude=dead)] = True

    inv_gain = np.zeros((n, n), dtype=f32)
    inv_gain[act] = 1.0 / gain[act]
    inv_gain[act][dead] = 0.0

    # dark current: gamma-distributed around the mean, hot pixels 0.5-20 e/s
    dark_e = (cfg.dark_e_per_s * rng.gamma(4.0, 0.25, size=(na, na))).astype(f32)
    n_hot_true = int(hot.sum())
    dark_e[hot] = (10 ** rng.uniform(np.log10(0.5), np.log10(20.0), n_hot_true)).astype(f32)
    dark_e[dead] = 0.0

    # nonlinearity: per-pixel beta on active pixels; border and NO_LIN_CORR pixels linear
    beta = np.zeros((n, n), dtype=f32)
    beta[act] = cfg.nonlin_beta * (1 + cfg.nonlin_beta_rms * _clipped_normal(rng, (na, na)))
    no_lin_corr = np.zeros((n, n), dtype=bool)
    nlc = _pick_pixels(rng, na, cfg.n_no_lin_corr, exclude=dead)
    nlc_mask = np.zeros((na, na), dtype=bool)
    nlc_mask.reshape(-1)[nlc] = True
    no_lin_corr[act] = nlc_mask
    beta[no_lin_corr] = 0.0
    smin = (sref - f32(cfg.nonlin_smin_offset_dn)).astype(f32)
    smax = well  # the model covers everything up to the hard full well

    # NaN saturation thresholds on a handful of live active pixels
    nsc = _pick_pixels(rng, na, cfg.n_no_sat_check, exclude=dead)
    st_act = sat_thresh[act].copy()
    st_act.reshape(-1)[nsc] = np.nan
    sat_thresh[act] = st_act

    # flat: smooth separable large-scale pattern + pixel-to-pixel scatter, mean 1
    u = (np.arange(na) + 0.5) / na
    smooth = np.zeros((na, na), dtype=np.float64)
    for _ in range(4):
        kx, ky = rng.uniform(0.3, 2.0, 2)
        px, py = rng.uniform(0, 2 * np.pi, 2)
        cx, sx = np.cos(2 * np.pi * kx * u + px), np.sin(2 * np.pi * kx * u + px)
        cy, sy = np.cos(2 * np.pi * ky * u + py), np.sin(2 * np.pi * ky * u + py)
        smooth += np.outer(cy, cx) - np.outer(sy, sx)  # cos(a + b), separably
    sd = smooth.std()
    smooth *= (0.6 * cfg.flat_rms / sd) if sd > 0 else 0.0
    flat = (1.0 + smooth).astype(f32)
    del smooth
    flat += f32(0.8 * cfg.flat_rms) * _clipped_normal(rng, (na, na))
    np.clip(flat, 0.5, None, out=flat)
    flat /= f32(flat.mean(dtype=np.float64))

    # IPC kernel: slightly stronger horizontal than vertical coupling, per-pixel scatter
    kernel = np.empty((3, 3, na, na), dtype=f32)
    a_h, a_v, a_d = cfg.ipc_alpha * 1.05, cfg.ipc_alpha * 0.95, cfg.ipc_alpha_diag
    centre = np.ones((na, na), dtype=f32)
    for (a, b), amp in {
        (1, 0): a_h, (1, 2): a_h, (0, 1): a_v, (2, 1): a_v,
        (0, 0): a_d, (0, 2): a_d, (2, 0): a_d, (2, 2): a_d,
    }.items():  # fmt: skip
        plane = kernel[a, b]
        plane[...] = _clipped_normal(rng, (na, na))
        plane *= f32(amp * cfg.ipc_rms)
        plane += f32(amp)
        centre -= plane
    kernel[1, 1] = centre
    del centre

    # amp33: level near the bias with a slow row drift, white noise like a normal pixel
    amp33_med = (
        cfg.bias_dn
        + 0.25 * cfg.bias_rms_dn * rng.standard_normal()
        + 5.0 * np.linspace(-1, 1, n)[:, None]
        + 0.1 * cfg.bias_rms_dn * rng.standard_normal((n, cw))
    ).astype(f32)
    amp33_std = (cfg.read_noise_dn * (1 + cfg.read_noise_rms * _clipped_normal(rng, (n, cw)))).astype(f32)

    sources_e, src_x, src_y = _render_sources(cfg, rng)

    return _Detector(
        sref=sref, well=well.astype(f32), sat_thresh=sat_thresh, gain=gain, inv_gain=inv_gain, rn=rn,
        beta=beta, smin=smin, smax=smax, no_lin_corr=no_lin_corr, flat=flat, dark_e=dark_e, dead=dead,
        hot=hot, kernel=kernel, amp33_med=amp33_med, amp33_std=amp33_std, sources_e=sources_e,
        src_x=src_x + geom.nborder, src_y=src_y + geom.nborder,
    )  # fmt: skip


def _stamp_psf(img: np.ndarray, xc: np.ndarray, yc: np.ndarray, total: np.ndarray, sig: float) -> None:
    """Add point sources of ``total`` e/s centred at ``(xc, yc)`` (pixel indices of ``img``, pixel
    centres at integers) to ``img``: a Gaussian PSF of sigma ``sig`` integrated over each pixel."""
    from scipy.special import ndtr

    na = img.shape[0]
    half = int(math.ceil(5 * sig)) + 1
    offs = np.arange(-half, half + 1)

    def profile(c):
        pix = np.rint(c).astype(np.int64)[:, None] + offs[None, :]
        w = ndtr((pix + 0.5 - c[:, None]) / sig) - ndtr((pix - 0.5 - c[:, None]) / sig)
        ok = (pix >= 0) & (pix < na)
        return np.clip(pix, 0, na - 1), np.where(ok, w, 0.0)

    px, wx = profile(np.asarray(xc, dtype=np.float64))
    py, wy = profile(np.asarray(yc, dtype=np.float64))
    stamp = np.asarray(total, dtype=np.float64)[:, None, None] * wy[:, :, None] * wx[:, None, :]
    yy = np.broadcast_to(py[:, :, None], stamp.shape)
    xx = np.broadcast_to(px[:, None, :], stamp.shape)
    np.add.at(img, (yy.ravel(), xx.ravel()), stamp.ravel())


def _render_sources(cfg: SimConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point sources with a pixel-integrated Gaussian PSF, (A, A) e/s before flat and IPC, and their
    centres (x, y) in active-area pixels; the ``star_radec`` star is the last one.

    Three brightness classes: sources that saturate early (within ~1.5-4 frame times), late
    (55-95% of the ramp) and faint ones that never saturate. Source 0 is early and source 1 late
    whenever there are enough sources, so small test frames have both.
    """
    from scipy.special import ndtr

    na, nb = cfg.geometry.nactive, cfg.geometry.nborder
    nsrc = cfg.resolved_n_sources
    img = np.zeros((na, na), dtype=np.float64)
    star = star_pixel(cfg)
    xs, ys = ([star[0] - nb], [star[1] - nb]) if star else ([], [])
    if star:
        _stamp_psf(img, np.array(xs), np.array(ys), np.array([cfg.star_e_per_s]), cfg.psf_sigma_px)
    if nsrc == 0:
        return img.astype(np.float32), np.array(xs, np.float64), np.array(ys, np.float64)
    sig = cfg.psf_sigma_px
    t_last = (cfg.nframes - 1) * cfg.frame_time
    # electrons a centred peak pixel holds at the saturation threshold (nominal pixel)
    s_thresh = cfg.saturation_dn - cfg.saturation_margin_dn - cfg.bias_dn
    d_thresh = float(_inverse_nonlinearity(np.array(s_thresh), np.array(cfg.nonlin_beta)))
    e_sat = d_thresh * cfg.gain_mean
    peak_frac = (ndtr(0.5 / sig) - ndtr(-0.5 / sig)) ** 2

    u = rng.uniform(size=nsrc)
    early_cut = cfg.frac_early_saturating
    late_cut = early_cut + cfg.frac_late_saturating
    cls = np.where(u < early_cut, 0, np.where(u < late_cut, 1, 2))  # 0 early, 1 late, 2 faint
    if nsrc >= 3:
        cls[0], cls[1] = 0, 1
    t_sat = np.where(
        cls == 0,
        rng.uniform(1.5, 4.0, nsrc) * cfg.frame_time,
        rng.uniform(0.55, 0.95, nsrc) * t_last,
    )
    peak_rate = np.maximum(e_sat / t_sat - cfg.sky_e_per_s, 1.0)
    faint_lo = max(0.1 * cfg.sky_e_per_s, 0.05)
    faint_hi = max(0.25 * e_sat / t_last, 2 * faint_lo)
    faint = np.exp(rng.uniform(np.log(faint_lo), np.log(faint_hi), nsrc))
    peak_rate = np.where(cls == 2, faint, peak_rate)
    total = peak_rate / peak_frac

    margin = 2.0
    xc = rng.uniform(margin, na - 1 - margin, nsrc)
    yc = rng.uniform(margin, na - 1 - margin, nsrc)
    _stamp_psf(img, xc, yc, total, sig)
    return img.astype(np.float32), np.concatenate([xc, xs]), np.concatenate([yc, ys])
