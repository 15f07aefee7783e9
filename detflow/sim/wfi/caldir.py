"""The calibration directory: the eight reference files (mask, saturation, Legendre linearity, dark, gain,
read noise, flat, IPC kernel) written from the detector truth, with the per-pixel Legendre fit of the
inverse nonlinearity."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from numba import njit

from detflow.io.roman_dm import reference_model
from detflow.schema import DQ

from .config import _EPOCH, SimConfig, _iso
from .detector import _Detector
from .writer import _Writer

log = logging.getLogger("detflow.sim.wfi")  # the package's logger: the simulator logs under one name


@njit(nogil=True, cache=False)
def _fit_legendre_pixels(smin, smax, sref, beta, z_fit, proj, z_chk, v_chk, coef):
    """Per pixel: least-squares Legendre fit of f^-1(S - Sref) at the nodes ``z_fit`` (``proj`` =
    pinv of the Vandermonde matrix), c_0 shifted so phi(Sref) = 0 after float32 rounding, stored in
    ``coef`` (ncoef, ny, nx) float32. Returns the largest |phi - f^-1| of the stored coefficients on
    the check nodes ``z_chk`` (``v_chk`` their Vandermonde matrix).
    """
    ncoef, m = proj.shape
    mchk = z_chk.shape[0]
    ny, nx = sref.shape
    target = np.empty(m)
    c = np.empty(ncoef)
    c32 = np.empty(ncoef)
    p_ref = np.empty(ncoef)
    maxerr = 0.0
    for y in range(ny):
        for x in range(nx):
            lo = np.float64(smin[y, x])
            span = np.float64(smax[y, x]) - lo
            ref = np.float64(sref[y, x])
            b = np.float64(beta[y, x])
            for j in range(m):
                s = lo + 0.5 * (z_fit[j] + 1.0) * span - ref
                target[j] = 2.0 * s / (1.0 + np.sqrt(1.0 - 4.0 * b * s))
            for ell in range(ncoef):
                acc = 0.0
                for j in range(m):
                    acc += proj[ell, j] * target[j]
                c[ell] = acc
            # Legendre polynomials at z(Sref) (Bonnet recurrence)
            z_ref = -1.0 + 2.0 * (ref - lo) / span
            p_ref[0] = 1.0
            if ncoef > 1:
                p_ref[1] = z_ref
            for ell in range(1, ncoef - 1):
                p_ref[ell + 1] = ((2 * ell + 1) * z_ref * p_ref[ell] - ell * p_ref[ell - 1]) / (ell + 1)
            phi = 0.0
            for ell in range(ncoef):
                phi += c[ell] * p_ref[ell]
            c[0] -= phi
            phi32 = 0.0
            for ell in range(ncoef):
                c32[ell] = np.float32(c[ell])
                phi32 += np.float64(c32[ell]) * p_ref[ell]
            c32[0] = np.float32(np.float64(c32[0]) - phi32)  # undo float32 rounding at Sref
            for ell in range(ncoef):
                coef[ell, y, x] = c32[ell]
            for j in range(mchk):
                s = lo + 0.5 * (z_chk[j] + 1.0) * span - ref
                g = 2.0 * s / (1.0 + np.sqrt(1.0 - 4.0 * b * s))
                v = 0.0
                for ell in range(ncoef):
                    v += v_chk[j, ell] * np.float64(c32[ell])
                err = abs(v - g)
                if err > maxerr:
                    maxerr = err
    return maxerr


def _fit_linearity(det: _Detector, ncoef: int) -> tuple[np.ndarray, float]:
    """Per-pixel Legendre fit of f^-1(S - Sref) over [Smin, Smax] for all pixels.

    One fixed set of Chebyshev nodes in z and one pseudo-inverse serve every pixel (the fit is a
    small matrix-vector product per pixel). Returns the float32 coefficients (ncoef, N, N) with
    phi(Sref) = 0, and the largest error of the stored float32 model against f^-1 on a check grid
    (both ends of the interval and the points between the nodes).
    """
    from numpy.polynomial import legendre as L

    n = det.sref.shape[0]
    m = max(4 * ncoef, 32)
    z_fit = np.cos(np.pi * (np.arange(m) + 0.5) / m)  # Chebyshev nodes
    proj = np.ascontiguousarray(np.linalg.pinv(L.legvander(z_fit, ncoef - 1)))  # (ncoef, m)
    z_chk = np.concatenate([[-1.0, 1.0], np.cos(np.pi * np.arange(1, m) / m)])
    v_chk = np.ascontiguousarray(L.legvander(z_chk, ncoef - 1))
    coef = np.empty((ncoef, n, n), dtype=np.float32)
    maxerr = _fit_legendre_pixels(det.smin, det.smax, det.sref, det.beta, z_fit, proj, z_chk, v_chk, coef)
    return coef, float(maxerr)


def _cal_meta(reftype: str, description: str) -> dict:
    return {
        "reftype": reftype,
        "pedigree": "SIMULATION",
        "description": description,
        "author": "detflow.sim.wfi",
        "origin": "detflow",
        "useafter": _iso(_EPOCH),
        "instrument": {"name": "WFI", "detector": "WFI01"},
    }


def _write_caldir(w: _Writer, cfg: SimConfig, det: _Detector, paths: dict[str, Path], dark_slope: np.ndarray):
    """Write the eight calibration files; returns the linearity fit's max error (DN)."""
    geom = cfg.geometry
    n, act = geom.nside, geom.active
    f32 = np.float32
    border = np.ones((n, n), dtype=bool)
    border[act] = False
    ref_bit = _u32(DQ.REFERENCE_PIXEL)

    # mask
    dq = np.zeros((n, n), dtype=np.uint32)
    dq[border] = ref_bit
    dq_act = dq[act]  # a view: the updates land in dq
    dq_act[det.dead] |= _u32(DQ.DEAD | DQ.DO_NOT_USE)
    dq_act[det.hot] |= _u32(DQ.HOT)
    w.model(paths["mask"], reference_model(_cal_meta("MASK", "simulated bad-pixel mask"), {"dq": dq}))

    # saturation
    w.model(paths["saturation"], reference_model(
        _cal_meta("SATURATION", "raw-DN saturation threshold (NaN: no check)"),
        {"data": det.sat_thresh.astype(f32), "dq": np.zeros((n, n), dtype=np.uint32)}))  # fmt: skip

    # linearity (Legendre)
    t0 = time.perf_counter()
    coef, maxerr = _fit_linearity(det, cfg.nonlin_ncoef)
    log.info("linearity fit: %.1f s, max model error %.2e DN", time.perf_counter() - t0, maxerr)
    if maxerr > 0.01:
        log.warning("Legendre linearity model error %.3g DN exceeds 0.01 DN; raise nonlin_ncoef", maxerr)
    lin_dq = np.zeros((n, n), dtype=np.uint32)
    lin_dq[border] = ref_bit
    lin_dq[det.no_lin_corr] |= _u32(DQ.NO_LIN_CORR)
    w.asdf(
        paths["linearitylegendre"],
        {
            "meta": _cal_meta("LINEARITYLEGENDRE", "phi(S) = sum_l c_l P_l(z), z = -1 + 2 (S - Smin)/(Smax - Smin)"),
            "data": coef,
            "Smin": det.smin,
            "Smax": det.smax,
            "Sref": det.sref,
            "dq": lin_dq,
        },
    )
    del coef

    # dark: expected raw dark+bias resultants. The mean over a resultant's frames of
    # Sref + f(a t_k) is Sref + a <t> - beta a^2 <t^2> (exact while below the full well).
    rate_sq_beta = det.beta * dark_slope * dark_slope
    cube = np.empty((cfg.ngroups, n, n), dtype=f32)
    for r, frames in enumerate(cfg.read_pattern):
        t = np.asarray(frames, dtype=np.float64) * cfg.frame_time
        plane = cube[r]
        np.multiply(dark_slope, f32(t.mean()), out=plane)
        plane += det.sref
        plane -= rate_sq_beta * f32((t**2).mean())
        np.minimum(plane, det.well, out=plane)
    del rate_sq_beta
    dark_dq = np.zeros((n, n), dtype=np.uint32)
    dark_dq[act][det.hot] = _u32(DQ.HOT)  # dark_dq[act] is a view
    w.model(paths["dark"], reference_model(
        _cal_meta("DARK", "expected raw dark+bias resultants; dark_slope in DN_lin/s"),
        {"dark_slope": dark_slope.astype(f32), "dark_slope_error": np.zeros((n, n), f32), "dq": dark_dq},
        extra={"data": cube}))  # fmt: skip
    del cube

    w.model(paths["gain"], reference_model(_cal_meta("GAIN", "gain, e/DN"), {"data": det.gain}))
    w.model(paths["read"], reference_model(
        _cal_meta("READNOISE", "single-frame read noise, DN; amp33 and 1/f model"), {"data": det.rn},
        extra={"amp33": {"valid": True, "med": det.amp33_med, "std": det.amp33_std, "M_PINK": 1.0,
                         "RU_PINK": float(cfg.amp33_pink_dn)},
               "anc": {"C_PINK": float(cfg.pink_noise_dn), "U_PINK": float(cfg.pink_uncorr_dn)}}))  # fmt: skip
    na = geom.nactive
    w.model(paths["flat"], reference_model(
        _cal_meta("FLAT", "true relative QE, active area"),
        {"data": det.flat, "dq": np.zeros((na, na), np.uint32), "err": np.zeros((na, na), f32)}))  # fmt: skip
    ipc_desc = "kernel[1+dy,1+dx,y,x]: share of (y,x) landing in (y+dy,x+dx)"
    w.asdf(paths["ipc4d"], {"meta": _cal_meta("IPC4D", ipc_desc), "data": det.kernel})
    return maxerr


def _u32(flag) -> np.uint32:
    return np.uint32(int(flag))
