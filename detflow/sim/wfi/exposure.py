"""One simulated L1 exposure: the frame-by-frame charge accumulation, readout and resultant averaging
(numba, single-threaded, nogil), the 1/f noise streams, the cosmic rays, and the L1 metadata."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

import numpy as np
from numba import njit

from detflow.kernels.ipc import ipc_forward

from .config import _EPOCH, SimConfig, _iso
from .detector import _Detector

_ADC_MAX = 65535.0


# =================================================================================================
# numba helpers (single-threaded, nogil)
# =================================================================================================
@njit(nogil=True, cache=False)
def _seed_numba(seed):
    np.random.seed(seed)


_RECIPROCALS = 1.0 / np.arange(1, 1002, dtype=np.float64)  # 1/k for the Poisson CDF walk


@njit(nogil=True, cache=False)
def _add_poisson(q, lam, exp_mlam, recip):
    """q += Poisson(lam) per pixel (numba's thread-local generator, seeded by ``_seed_numba``).

    Small means (< 40) use inversion of the CDF from one uniform (``exp_mlam`` = exp(-lam)
    precomputed, ``recip[k - 1] = 1/k``), larger means numba's ``np.random.poisson``.
    """
    ny, nx = q.shape
    for y in range(ny):
        for x in range(nx):
            mu = lam[y, x]
            if mu <= 0.0:
                continue
            if mu < 40.0:
                u = np.random.random()
                p = np.float64(exp_mlam[y, x])
                cdf = p
                k = 0
                while u > cdf and k < 1000:
                    p *= mu * recip[k]
                    k += 1
                    cdf += p
                q[y, x] += k
            else:
                q[y, x] += np.random.poisson(mu)


@njit(nogil=True, cache=False)
def _read_frame(acc, q_ipc, inv_gain, sref, beta, well, rn, normals, use_normals, common, uncorr, nb, cw):
    """Read one frame: charge -> raw DN with nonlinearity, full well, noise and ADC; acc += frame.

    q_ipc (A, A) charge after IPC; the (N, N) maps: inv_gain (0 on border/dead), sref, beta, well
    (hard full well, raw DN), rn (read noise DN), normals (unit Gaussians, used if use_normals);
    common (N, cw) pink stream in time order; uncorr (nch, N, cw) per-channel pink or (0, ., .).
    Channel ``ch`` holds columns ``ch*cw .. ch*cw + cw - 1``; odd channels are read right to left.
    """
    n = acc.shape[0]
    na = q_ipc.shape[0]
    nch = n // cw
    n_uncorr = uncorr.shape[0]
    for y in range(n):
        ya = y - nb
        row_active = ya >= 0 and ya < na
        for ch in range(nch):
            reverse = ch % 2 == 1
            for jj in range(cw):
                x = ch * cw + jj
                j = cw - 1 - jj if reverse else jj  # position of this pixel in readout time
                s = np.float64(sref[y, x])
                xa = x - nb
                if row_active and xa >= 0 and xa < na:
                    d = q_ipc[ya, xa] * inv_gain[y, x]
                    b = beta[y, x]
                    if b > 0.0 and d > 0.5 / b:
                        d = 0.5 / b  # f(D) peaks here; the full-well cap is far below anyway
                    s += d - b * d * d
                    if s > well[y, x]:
                        s = well[y, x]
                s += common[y, j]
                if n_uncorr > 0:
                    s += uncorr[ch, y, j]
                if use_normals:
                    s += rn[y, x] * normals[y, x]
                if s < 0.0:
                    s = 0.0
                elif s > 65535.0:
                    s = 65535.0
                acc[y, x] += s


@njit(nogil=True, cache=False)
def _finish_resultant(acc, nframes, out):
    """out = uint16(rint(acc / nframes)), and reset acc to 0."""
    ny, nx = acc.shape
    inv = 1.0 / nframes
    for y in range(ny):
        for x in range(nx):
            v = np.rint(acc[y, x] * inv)
            if v < 0.0:
                v = 0.0
            elif v > 65535.0:
                v = 65535.0
            out[y, x] = np.uint16(v)
            acc[y, x] = 0.0


def _pink_streams(rng: np.random.Generator, nstream: int, length: int, amplitude: float) -> np.ndarray:
    """``nstream`` independent 1/f streams of ``length`` samples, float32, mean removed.

    Power spectrum A^2/f: variance ``amplitude**2`` per unit of ln(frequency). Drawn as the first
    half of a periodic stream of twice the length so the ends are not forced to match.
    """
    m = 2 * length
    nfreq = m // 2 + 1
    k = np.arange(nfreq, dtype=np.float64)
    scale = np.zeros(nfreq)
    scale[1:-1] = 0.5 * m * amplitude / np.sqrt(k[1:-1])  # drop DC and Nyquist
    out = np.empty((nstream, length), dtype=np.float32)
    for i in range(nstream):
        spec = (rng.standard_normal(nfreq) + 1j * rng.standard_normal(nfreq)) * scale
        stream = np.fft.irfft(spec, n=m)[:length]
        out[i] = stream - stream.mean()
    return out


# =================================================================================================
# one exposure
# =================================================================================================
@dataclass
class _Hits:
    y: np.ndarray
    x: np.ndarray
    frame: np.ndarray
    resultant: np.ndarray
    amp: np.ndarray


def _draw_cosmic_rays(cfg: SimConfig, rng: np.random.Generator, dead: np.ndarray) -> _Hits:
    na = cfg.geometry.nactive
    k = cfg.nframes
    t_total = (k - 1) * cfg.frame_time
    nhit = int(rng.poisson(cfg.cr_rate * na * na * t_total)) if (cfg.cr_rate > 0 and k > 1) else 0
    flat_idx = rng.integers(0, na * na, nhit)
    frame = rng.integers(1, k, nhit) if nhit else np.zeros(0, dtype=np.int64)
    amp = (cfg.cr_median_e * np.exp(cfg.cr_sigma_ln * rng.standard_normal(nhit))).astype(np.float32)
    keep = ~dead.reshape(-1)[flat_idx]
    flat_idx, frame, amp = flat_idx[keep], frame[keep], amp[keep]
    order = np.argsort(frame, kind="stable")
    flat_idx, frame, amp = flat_idx[order], frame[order], amp[order]
    last_frames = np.array([r[-1] for r in cfg.read_pattern])
    res = np.searchsorted(last_frames, frame, side="left")
    res = np.where(res < len(last_frames), res, -1)
    ya, xa = np.divmod(flat_idx, na)
    return _Hits(ya.astype(np.int64), xa.astype(np.int64), frame.astype(np.int64), res.astype(np.int64), amp)


def _simulate_exposure(cfg: SimConfig, det: _Detector, rng: np.random.Generator, sky: float):
    """Returns (data uint16 (ng, N, N), amp33 uint16 (ng, N, cw), hits)."""
    geom = cfg.geometry
    n, na, nb, cw, nch = geom.nside, geom.nactive, geom.nborder, geom.channel_width, geom.nchannel
    f32 = np.float32
    ng, k_frames, dt = cfg.ngroups, cfg.nframes, cfg.frame_time

    rate = det.flat * f32(sky)
    rate += det.sources_e * det.flat
    rate += det.dark_e
    rate[det.dead] = 0.0
    lam = rate * f32(dt)
    del rate
    exp_mlam = np.exp(-lam) if cfg.poisson else None

    hits = _draw_cosmic_rays(cfg, rng, det.dead)
    hit_bounds = np.searchsorted(hits.frame, np.arange(k_frames + 1), side="left")

    frame_res = np.full(k_frames, -1, dtype=np.int64)
    for r, frames in enumerate(cfg.read_pattern):
        frame_res[frames] = r
    last_of = {frames[-1]: r for r, frames in enumerate(cfg.read_pattern)}

    _seed_numba(int(rng.integers(0, 2**32 - 1)))
    q = np.zeros((na, na), dtype=f32)
    q_ipc = np.empty((na, na), dtype=f32)
    acc = np.zeros((n, n), dtype=np.float64)
    acc33 = np.zeros((n, cw), dtype=np.float64)
    data = np.empty((ng, n, n), dtype=np.uint16)
    amp33 = np.empty((ng, n, cw), dtype=np.uint16)
    use_normals = cfg.read_noise_dn > 0
    normals = np.empty((n, n), dtype=f32) if use_normals else np.zeros((1, 1), dtype=f32)
    zero_stream = np.zeros((n, cw), dtype=f32)
    no_uncorr = np.zeros((0, 1, 1), dtype=f32)

    for k in range(k_frames):
        if k > 0:
            if cfg.poisson:
                _add_poisson(q, lam, exp_mlam, _RECIPROCALS)
            else:
                q += lam
            lo, hi = hit_bounds[k], hit_bounds[k + 1]
            if hi > lo:
                np.add.at(q, (hits.y[lo:hi], hits.x[lo:hi]), hits.amp[lo:hi])
        r = frame_res[k]
        if r < 0:
            continue  # clocked but not read into any resultant
        ipc_forward(q, det.kernel, out=q_ipc)
        if cfg.pink_noise_dn > 0:
            common = _pink_streams(rng, 1, n * cw, cfg.pink_noise_dn)[0].reshape(n, cw)
        else:
            common = zero_stream
        if cfg.pink_uncorr_dn > 0:
            uncorr = _pink_streams(rng, nch, n * cw, cfg.pink_uncorr_dn).reshape(nch, n, cw)
        else:
            uncorr = no_uncorr
        if use_normals:
            rng.standard_normal(out=normals, dtype=f32)
        _read_frame(acc, q_ipc, det.inv_gain, det.sref, det.beta, det.well, det.rn, normals, use_normals,
                    common, uncorr, nb, cw)  # fmt: skip
        # amp33: level + common pink (M_PINK = 1) + own pink + white noise, then the ADC
        a33 = det.amp33_med.astype(np.float64) + common
        if cfg.amp33_pink_dn > 0:
            a33 += _pink_streams(rng, 1, n * cw, cfg.amp33_pink_dn)[0].reshape(n, cw)
        if use_normals:
            a33 += det.amp33_std * rng.standard_normal((n, cw), dtype=f32)
        acc33 += np.clip(a33, 0.0, _ADC_MAX)
        if k in last_of:
            nfr = len(cfg.read_pattern[r])
            _finish_resultant(acc, float(nfr), data[r])
            amp33[r] = np.clip(np.rint(acc33 / nfr), 0, _ADC_MAX).astype(np.uint16)
            acc33[:] = 0.0
    return data, amp33, hits


def _l1_meta(cfg: SimConfig, index: int, filename: str) -> dict:
    gw = cfg.resolved_guide_window()
    x0, x1, y0, y1 = gw if gw is not None else (-1, -1, -1, -1)
    duration = cfg.nframes * cfg.frame_time
    start = _EPOCH + _dt.timedelta(seconds=index * (duration + 60.0))
    times = cfg.resultant_times
    return {
        "exposure": {
            "read_pattern": [list(map(int, r)) for r in cfg.read_pattern],
            "frame_time": float(cfg.frame_time),
            "ngroups": int(cfg.ngroups),
            "nresultants": int(cfg.ngroups),
            "start_time": _iso(start),
            "end_time": _iso(start + _dt.timedelta(seconds=duration)),
            "exposure_time": float((cfg.nframes - 1) * cfg.frame_time),
            "effective_exposure_time": float(times[-1] - times[0]),
            "ma_table_name": "detflow.sim.wfi",
            "truncated": False,
            "type": "WFI_IMAGE",
        },
        "pointing": {"target_ra": float(cfg.ra_deg), "target_dec": float(cfg.dec_deg)},
        "wcsinfo": {"ra_ref": float(cfg.ra_deg), "dec_ref": float(cfg.dec_deg)},
        "guide_star": {
            "window_xstart": int(x0),
            "window_xstop": int(x1),
            "window_ystart": int(y0),
            "window_ystop": int(y1),
        },
        "instrument": {"name": "WFI", "detector": "WFI01", "optical_element": "F158"},
        "filename": filename,
    }
