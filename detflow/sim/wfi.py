"""Roman WFI (H4RG) exposure simulator with known truth.

``simulate(outdir, SimConfig(...))`` writes Roman-like L1 ASDF exposures, the matching calibration
directory (the ``CALDIR`` files of the PIT ``gen_cal_image`` job format) and a ``truth.npz``, all
derived from one seeded truth. Sizes are parameters: tests use ``nside=64``/``128``, the demo and the
benchmarks the flight ``4096``.

Output layout (``outdir``)::

    l1/exposure_000.asdf ...      one per exposure (roman_datamodels ScienceRawModel)
    caldir/{mask,saturation,linearitylegendre,dark,gain,read,flat,ipc4d}.asdf
    wcs.txt                       the celestial WCS (FITS header cards, 0-based full-frame pixels)
    truth.npz
    gen_cal_image.yaml            (if ``write_job_yaml``) PIT job: IN, OUT, CALDIR, FITSWCS, RAMP_OPT_PARS...

The ASDF files are tagged Roman datamodels (roman_datamodels opens them; metadata the schemas require
and the simulator does not know holds roman_datamodels' placeholders): ``mask``, ``saturation``,
``dark``, ``gain``, ``read``, ``flat`` are ``MaskRefModel``... ``FlatRefModel``, with the extra
fields below beside the schema's. ``linearitylegendre`` and ``ipc4d`` are the PIT's own formats,
which no roman_datamodels model describes: plain ``roman`` trees.

Sky: a TAN projection centred on the detector centre at (``ra_deg``, ``dec_deg``), pixel scale
``pixel_scale_arcsec``, detector +y at ``pa_deg`` east of north, optional SIP distortion ``wcs_sip``.
With ``star_radec`` a star of ``star_e_per_s`` is placed at that sky position (the WCS gives its
pixel), besides the random sources.

Nothing is ever overwritten: if any of these files exists ``simulate`` raises
:class:`detflow.errors.OutputExistsError` before doing any work; if the simulation fails part-way the
files it already wrote are removed again (complete or absent).

Physics of one exposure
-----------------------
``N = nside``, ``A = N - 8`` active pixels per side, a 4-pixel reference border. Frames ``k = 0..K-1``
(``K`` = last frame number of the read pattern + 1) are read at ``t_k = k * frame_time``; frame 0 is
the reset (zero charge). Per active pixel the charge rate in e/s is
``flat * (sky + sources) + dark`` (dead pixels: nothing, they read bias only). Charge accumulates
frame by frame with Poisson increments (or the exact mean with ``poisson=False``); cosmic rays add a
lognormal jump of charge at a random frame. The IPC forward operator
(:func:`detflow.kernels.ipc.ipc_forward`, per-pixel kernel, in electrons) acts on the accumulated
charge, division by the gain gives the linear signal ``D`` (DN_lin), and the classical
nonlinearity gives the raw signal ``S = Sref + f(D)``, ``f(D) = D - beta * D**2``, capped at the
pixel's hard full well. Read noise (white, per pixel and frame) and a 1/f ("pink") stream are then
added; the pink stream is generated in readout-time order (32 channels of ``N/32`` columns read in
parallel, row by row, odd channels reversed) and is common to all channels (``pink_noise_dn``,
"C_PINK"), optionally plus an independent stream per channel (``pink_uncorr_dn``, "U_PINK"). It
appears in the reference pixels and, scaled by ``M_PINK = 1``, in amp33. The ADC clips at 0 and
65535. Frames of one resultant are averaged and rounded to uint16. Reference pixels get no charge:
bias + noise only (their ``Sref`` is their bias). amp33 is its median level + pink + white noise.

Calibration files (``roman`` tree of each ASDF file; ``N x N`` unless stated)
----------------------------------------------------------------------------
- ``mask``: ``dq`` uint32 = REFERENCE_PIXEL on the border, DEAD|DO_NOT_USE on dead pixels, HOT on hot
  pixels. (``MaskRefModel``)
- ``saturation``: ``data`` float32 raw-DN threshold = hard full well - ``saturation_margin_dn``;
  ``n_no_sat_check`` active pixels are NaN (stcal flags those NO_SAT_CHECK); ``dq`` uint32 zeros.
  (``SaturationRefModel``)
- ``linearitylegendre``: ``data`` (ncoef, N, N) float32 Legendre coefficients ``c_l``; ``Smin``,
  ``Smax``, ``Sref`` float32; ``dq`` uint32 (REFERENCE_PIXEL border, NO_LIN_CORR on
  ``n_no_lin_corr`` active pixels, which the simulator makes exactly linear). The linearised
  signal is ``phi(S) = sum_l c_l P_l(z)``, ``z = -1 + 2 (S - Smin) / (Smax - Smin)``, a per-pixel
  least-squares fit (Chebyshev nodes) of ``f^-1(S - Sref)`` over ``[Smin, Smax]``
  (``Smin = Sref - nonlin_smin_offset_dn``, ``Smax`` = hard full well) with ``c_0`` shifted so that
  ``phi(Sref) = 0`` (to float32 rounding). Reference pixels have ``beta = 0`` (``phi = S - Sref``).
- ``dark``: ``data`` (ngroups, N, N) float32: the expected raw dark+bias resultants for the sim read
  pattern (noise-free, nonlinearity included, no sky); ``dark_slope`` float32 DN_lin/s: the dark
  current as a dark calibration would measure it, ``ipc_forward(dark_e) / gain`` (the simulator's
  dark charge goes through IPC like every other charge, so this is what the pipeline must subtract
  to recover ``slope_dn``); ``dark_slope_error`` zeros (exact); ``dq`` uint32 (HOT on hot pixels).
  (``DarkRefModel``; ``data`` is an extra field there)
- ``gain``: ``data`` float32 e/DN. (``GainRefModel``)
- ``read``: ``data`` float32 single-frame read noise (DN); ``amp33`` = ``{"valid": True, "med":
  (N, N/32) float32 amp33 level, "std": (N, N/32) float32 amp33 white noise per frame, "M_PINK":
  multiplier of the common pink stream in amp33 (1.0), "RU_PINK": amplitude of amp33's own pink
  stream}``; ``anc`` = ``{"C_PINK": common pink amplitude, "U_PINK": per-channel pink amplitude}``.
  Pink amplitudes ``A`` mean: variance ``A**2`` per unit of ln(frequency) (``S(f) = A**2 / f``),
  one stream of ``N * N/32`` samples per frame, mean removed per frame (the PIT ``C_PINK``
  convention); the per-frame rms is about ``A * sqrt(ln(N * N/32))``, ~7.3 DN for A = 2 at N = 4096.
  (``ReadnoiseRefModel``; ``amp33`` and ``anc`` extra fields)
- ``flat``: ``data`` (A, A) float32 true relative QE (mean 1 over the active area; dead pixels keep
  their nominal value, they are handled by the mask); ``dq``, ``err`` zeros. (``FlatRefModel``) It
  holds no pixel-area factor: with the job's ``FITSWCS`` the flat step divides it by the TAN WCS's
  area factor, which differs from 1 by < 2e-6 at N = 4096 without ``wcs_sip``.
- ``ipc4d``: ``data`` (3, 3, A, A) float32 per-pixel kernel, ``kernel[1+dy, 1+dx, y, x]`` = fraction
  of pixel (y, x)'s charge landing in (y+dy, x+dx); centre = 1 - sum of the others.

L1 files (``ScienceRawModel``): ``data`` (ngroups, N, N) uint16, ``amp33`` (ngroups, N, N/32) uint16,
``meta`` with ``exposure`` (read_pattern, frame_time, ngroups, nresultants, start_time, end_time,
exposure_time, type...), ``guide_star`` (window_xstart/xstop/ystart/ystop, -1 without a window),
``instrument``, ``pointing``/``wcsinfo`` (the pointing), ``filename``.

``truth.npz`` (float32 (N, N) maps unless stated; active pixels at ``[4:-4, 4:-4]``)
-----------------------------------------------------------------------------------
- ``slope_dn``: the rate a correct L1->L2 pipeline *without* IPC and flat correction recovers for
  exposure 0, DN_lin/s: ``ipc_forward(flat * (sky + sources)) / gain``; dark current excluded
  (subtracted by the pipeline), 0 on reference and dead pixels.
- ``sky_slope_dn``: ``ipc_forward(flat) / gain``, the slope per 1 e/s of sky; exposure ``i`` has
  ``slope_dn + (sky_e_per_s_exposure[i] - sky_e_per_s_exposure[0]) * sky_slope_dn``.
- ``flux_e``: e/s reaching the pixel before flat and IPC (sky + sources), 0 on the border.
- ``flat``: true relative QE (0 on the border). ``gain`` (e/DN), ``read_noise`` (DN per frame),
  ``bias_dn`` (= ``Sref``, raw DN), ``nonlin_beta`` (1/DN; 0 on the border and NO_LIN_CORR pixels).
- ``dark_dn_per_s``: the dark slope as in ``dark.asdf`` (``ipc_forward(dark_e) / gain``).
- ``saturated`` (bool): the pixel reaches its saturation threshold in some resultant of exposure 0.
- ``dead``, ``hot`` (bool).
- cosmic rays, 1-D arrays over all hits of all exposures: ``cr_y``, ``cr_x`` (full-frame pixel),
  ``cr_frame`` (first frame that contains the charge, 1..K-1), ``cr_resultant`` (first resultant
  holding a frame >= cr_frame, -1 if none), ``cr_amp_e`` (deposited electrons, before IPC),
  ``cr_exposure``.
- 1-D: ``resultant_times`` (ngroups,) mean frame time of each resultant (s);
  ``sky_e_per_s_exposure`` (n_exposures,).
- 0-d scalars: ``nside``, ``nborder``, ``frame_time``, ``seed``, ``n_exposures``, ``sky_e_per_s``,
  ``gain_mean``, ``read_noise_dn``, ``dark_e_per_s``, ``pink_noise_dn``, ``nonlin_fit_maxerr_dn``
  (largest |phi - f^-1| of the stored float32 model on a check grid), ``config_json`` (str),
  ``wcs_header`` (str, the contents of ``wcs.txt``).
- sources, 1-D: ``src_x``, ``src_y`` (centres, 0-based full-frame pixels; the ``star_radec`` star
  last), ``src_ra``, ``src_dec`` (degrees, through the WCS); with ``star_radec`` the 0-d ``star_ra``,
  ``star_dec``, ``star_x``, ``star_y``, ``star_e_per_s``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from numba import njit
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from detflow.errors import OutputExistsError
from detflow.instruments.roman_wfi import Geometry
from detflow.io.roman_dm import reference_model, science_raw_model, write_model
from detflow.io.store.atomic import atomic_write, temp_leftovers
from detflow.kernels.ipc import ipc_forward
from detflow.schema import DQ
from detflow.sim.wfi_sky import sim_wcs, star_pixel

__all__ = ["SimConfig", "SimProducts", "simulate", "sim_wcs", "CAL_NAMES", "DEFAULT_READ_PATTERN"]

log = logging.getLogger(__name__)

CAL_NAMES = ("mask", "saturation", "linearitylegendre", "dark", "gain", "read", "flat", "ipc4d")

DEFAULT_READ_PATTERN: list[list[int]] = [
    [1],
    [2, 3],
    [4, 5, 6, 7],
    [8, 9, 10, 11],
    [12, 13, 14, 15],
    [16, 17, 18, 19, 20, 21, 22, 23],
    [24, 25, 26, 27, 28, 29, 30, 31],
    [32, 33, 34, 35, 36, 37, 38, 39],
]

_ADC_MAX = 65535.0
_EPOCH = _dt.datetime(2027, 1, 1, 0, 0, 0)


# =================================================================================================
# configuration and products
# =================================================================================================
class SimConfig(BaseModel):
    """Everything that defines a simulation. Frozen; change a copy with ``cfg.model_copy(update=...)``.

    Fractional scatters (``*_rms``) are relative per-pixel Gaussian scatters, clipped at 3 sigma.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # geometry and timing
    nside: int = 4096
    read_pattern: list[list[int]] = Field(default_factory=lambda: [list(r) for r in DEFAULT_READ_PATTERN])
    frame_time: float = 3.04
    n_exposures: int = 1
    seed: int = 0
    poisson: bool = True  # False: charge accumulates at exactly its mean (noiseless tests)

    # scene (electrons per second)
    sky_e_per_s: float = 1.5
    sky_exposure_rms: float = 0.02  # relative sky change of exposures 1, 2, ... (exposure 0 = sky_e_per_s)
    n_sources: int | None = None  # None: source_density * A**2 (at least 3)
    source_density: float = 2.5e-4  # point sources per active pixel when n_sources is None
    psf_sigma_px: float = 0.8  # Gaussian PSF sigma, pixels
    frac_early_saturating: float = 0.03  # of the sources: saturate within ~1.5-4 frame times
    frac_late_saturating: float = 0.07  # of the sources: saturate at 55-95% of the ramp

    # dark current
    dark_e_per_s: float = 0.005
    hot_pixel_fraction: float = 2e-4  # hot pixels: 0.5-20 e/s, flagged HOT
    dead_pixel_fraction: float = 1e-4  # dead pixels: no response, flagged DEAD|DO_NOT_USE

    # electronics
    gain_mean: float = 1.8  # e/DN
    gain_rms: float = 0.03
    read_noise_dn: float = 6.5  # per single frame
    read_noise_rms: float = 0.10
    pink_noise_dn: float = 2.0  # common-mode 1/f amplitude (C_PINK)
    pink_uncorr_dn: float = 0.0  # independent 1/f per channel (U_PINK); costs 32 extra FFTs per frame
    amp33_pink_dn: float = 0.0  # amp33's own 1/f on top of the common stream (RU_PINK)
    bias_dn: float = 10000.0
    bias_rms_dn: float = 200.0

    # cosmic rays
    cr_rate: float = 6e-5  # hits per pixel per second (~0.7% of pixels in the default 118 s ramp)
    cr_median_e: float = 700.0
    cr_sigma_ln: float = 0.8  # lognormal width of the CR amplitude

    # optics / pixel response
    ipc_alpha: float = 0.015  # nearest neighbour
    ipc_alpha_diag: float = 0.002
    ipc_rms: float = 0.05
    flat_rms: float = 0.03

    # nonlinearity and saturation
    # beta: the default 2e-6 (not the 5e-6 one might expect) keeps f(D) = D - beta D^2 monotonic up to
    # the ~52000 DN full well (f peaks at 1/(4 beta)) and lets a 9-term Legendre model invert it to
    # well below 0.01 DN; about 12% nonlinearity at full well.
    nonlin_beta: float = 2e-6
    nonlin_beta_rms: float = 0.05
    nonlin_ncoef: int = 9
    nonlin_smin_offset_dn: float = 1000.0  # Smin = Sref - this
    saturation_dn: float = 62000.0  # mean raw-DN hard full well; per pixel: its bias + (this - bias_dn) + scatter
    saturation_rms_dn: float = 300.0
    saturation_margin_dn: float = 500.0  # reference threshold = hard full well - this
    n_no_sat_check: int = 5  # NaN saturation thresholds
    n_no_lin_corr: int = 3  # NO_LIN_CORR pixels (linear in the sim)

    guide_window: tuple[int, int, int, int] | None | Literal["auto"] = "auto"  # (x0, x1, y0, y1)
    write_job_yaml: bool = True

    # sky coordinates: a TAN projection (optionally with SIP distortion), written as the FITSWCS file wcs.txt
    ra_deg: float = 270.0  # sky position of the detector centre, pixel ((N-1)/2, (N-1)/2) 0-based full frame
    dec_deg: float = 66.56
    pa_deg: float = 0.0  # position angle of the detector +y axis, degrees east of north
    pixel_scale_arcsec: float = 0.11
    wcs_sip: dict[str, float] | None = None  # SIP distortion {"A_2_0": 1e-7, "B_1_1": ...} (pixel units)
    star_radec: tuple[float, float] | None = None  # a reference star at this (RA, Dec) in degrees
    star_e_per_s: float = 1500.0  # its total rate, e/s before flat and IPC (the default never saturates)

    # ---- validation ------------------------------------------------------------------------------
    @field_validator("read_pattern")
    @classmethod
    def _check_read_pattern(cls, rp: list[list[int]]) -> list[list[int]]:
        if not rp or any(len(r) == 0 for r in rp):
            raise ValueError("read_pattern must be a non-empty list of non-empty lists of frame numbers")
        flat = [f for r in rp for f in r]
        if min(flat) < 0 or any(b <= a for a, b in zip(flat, flat[1:])):
            raise ValueError(f"read_pattern frame numbers must be >= 0 and strictly increasing, got {rp}")
        return rp

    @model_validator(mode="after")
    def _check(self) -> "SimConfig":
        geom = Geometry()
        if self.nside % geom.nchannel or self.nside < geom.nchannel:
            raise ValueError(f"nside must be a multiple of {geom.nchannel} and >= 32, got {self.nside}")
        positive = ("frame_time", "gain_mean", "psf_sigma_px", "cr_median_e", "pixel_scale_arcsec")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        non_negative = (
            "sky_e_per_s", "sky_exposure_rms", "source_density", "frac_early_saturating",
            "frac_late_saturating", "dark_e_per_s", "hot_pixel_fraction", "dead_pixel_fraction",
            "gain_rms", "read_noise_dn", "read_noise_rms", "pink_noise_dn", "pink_uncorr_dn",
            "amp33_pink_dn", "bias_rms_dn", "cr_rate", "cr_sigma_ln", "ipc_alpha", "ipc_alpha_diag",
            "ipc_rms", "flat_rms", "nonlin_beta", "nonlin_beta_rms", "saturation_rms_dn",
            "saturation_margin_dn", "n_no_sat_check", "n_no_lin_corr", "seed", "star_e_per_s",
        )  # fmt: skip
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.n_exposures < 1:
            raise ValueError(f"n_exposures must be >= 1, got {self.n_exposures}")
        if self.n_sources is not None and self.n_sources < 0:
            raise ValueError(f"n_sources must be >= 0 or None, got {self.n_sources}")
        if self.nonlin_ncoef < 2:
            raise ValueError(f"nonlin_ncoef must be >= 2, got {self.nonlin_ncoef}")
        if max(self.gain_rms, self.read_noise_rms, self.ipc_rms, self.nonlin_beta_rms) >= 1 / 3:
            raise ValueError("relative scatters (*_rms) must be < 1/3 so 3-sigma clipped values stay positive")
        if 4 * (self.ipc_alpha + self.ipc_alpha_diag) * (1 + 3 * self.ipc_rms) >= 0.5:
            raise ValueError("IPC coupling too large: the kernel centre must stay above 0.5")
        well_signal = self.saturation_dn - self.bias_dn
        if well_signal - 3 * self.saturation_rms_dn <= self.saturation_margin_dn + 100:
            raise ValueError(
                f"saturation_dn ({self.saturation_dn}) must lie well above bias_dn ({self.bias_dn}) "
                f"+ saturation_margin_dn ({self.saturation_margin_dn})"
            )
        # f(D) = D - beta D^2 rises only up to 1/(4 beta): the full well must stay below that
        beta_max = self.nonlin_beta * (1 + 3 * self.nonlin_beta_rms)
        s_max = well_signal + 3 * self.saturation_rms_dn
        if 4 * beta_max * s_max >= 0.9:
            raise ValueError(
                f"nonlin_beta={self.nonlin_beta} is too strong for a full well of {s_max:.0f} DN above "
                f"bias: f(D) = D - beta*D^2 peaks at 1/(4 beta) = {1 / (4 * beta_max):.0f} DN; lower "
                "nonlin_beta or saturation_dn"
            )
        if not -90 <= self.dec_deg <= 90 or (self.star_radec is not None and not -90 <= self.star_radec[1] <= 90):
            raise ValueError("declinations must lie in [-90, 90] degrees")
        bad_sip = [k for k in (self.wcs_sip or {}) if not re.fullmatch(r"[AB]_[0-9]_[0-9]", k)]
        if bad_sip:
            raise ValueError(f"wcs_sip keys are A_p_q or B_p_q (p, q single digits), got {bad_sip}")
        gw = self.guide_window
        if isinstance(gw, tuple):
            x0, x1, y0, y1 = gw
            if not (0 <= x0 < x1 <= self.nside and 0 <= y0 < y1 <= self.nside):
                raise ValueError(f"guide_window (xstart, xstop, ystart, ystop) must lie inside the frame, got {gw}")
        return self

    # ---- derived quantities ----------------------------------------------------------------------
    @property
    def geometry(self) -> Geometry:
        return Geometry(nside=self.nside)

    @property
    def nframes(self) -> int:
        """K: frames 0..K-1 are clocked (frame 0 is the reset read at t=0)."""
        return self.read_pattern[-1][-1] + 1

    @property
    def ngroups(self) -> int:
        return len(self.read_pattern)

    @property
    def resultant_times(self) -> np.ndarray:
        return np.array([self.frame_time * float(np.mean(r)) for r in self.read_pattern])

    @property
    def resolved_n_sources(self) -> int:
        if self.n_sources is not None:
            return self.n_sources
        return max(3, int(round(self.source_density * self.geometry.nactive**2)))

    def resolved_guide_window(self) -> tuple[int, int, int, int] | None:
        """(xstart, xstop, ystart, ystop) or None; "auto" is a small window inside the active area."""
        if self.guide_window != "auto":
            return self.guide_window
        n = self.nside
        size = max(4, min(16, n // 8))
        x0, y0 = n // 4, n // 2
        return (x0, x0 + size, y0, y0 + size)


@dataclass(frozen=True)
class SimProducts:
    """What ``simulate`` wrote (absolute paths)."""

    l1_files: list[Path]
    caldir: dict[str, Path]
    truth_file: Path
    job_yaml: Path | None
    wcs_file: Path | None = None


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


def _iso(t: _dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}"


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


# =================================================================================================
# writing
# =================================================================================================
class _Writer:
    """Writes files atomically (:func:`~detflow.io.store.atomic_write`) and remembers them so a failed run
    can clean up."""

    def __init__(self) -> None:
        self.created: list[Path] = []
        self.dirs: list[Path] = []

    def mkdir(self, path: Path) -> None:
        if not path.exists():
            path.mkdir(parents=True)
            self.dirs.append(path)

    def asdf(self, path: Path, roman: dict) -> Path:
        import asdf

        atomic_write(path, lambda tmp: asdf.AsdfFile({"roman": roman}).write_to(str(tmp)))
        self.created.append(path)
        return path

    def model(self, path: Path, model) -> Path:
        """A roman_datamodels model as ``{"roman": model}`` (written under a temporary name by write_model)."""
        write_model(path, model)
        self.created.append(path)
        return path

    def npz(self, path: Path, arrays: dict) -> Path:
        def save(tmp: Path) -> None:
            with open(tmp, "wb") as fh:  # a file object: np.savez would add ".npz" to a name without it
                np.savez(fh, **arrays)

        atomic_write(path, save)
        self.created.append(path)
        return path

    def text(self, path: Path, text: str) -> Path:
        atomic_write(path, text)
        self.created.append(path)
        return path

    def cleanup(self) -> None:
        for p in self.created:
            p.unlink(missing_ok=True)
        for d in reversed(self.dirs):
            try:
                d.rmdir()
            except OSError:
                pass


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


# =================================================================================================
# entry point
# =================================================================================================
def _planned_paths(outdir: Path, cfg: SimConfig):
    l1 = [outdir / "l1" / f"exposure_{i:03d}.asdf" for i in range(cfg.n_exposures)]
    cal = {name: outdir / "caldir" / f"{name}.asdf" for name in CAL_NAMES}
    truth = outdir / "truth.npz"
    job = outdir / "gen_cal_image.yaml" if cfg.write_job_yaml else None
    return l1, cal, truth, job, outdir / "wcs.txt"


def simulate(outdir: str | os.PathLike, config: SimConfig | None = None) -> SimProducts:
    """Simulate ``config.n_exposures`` WFI exposures plus calibration files and truth into ``outdir``.

    Raises :class:`detflow.errors.OutputExistsError` (before any work) if any output file exists.
    """
    cfg = config if config is not None else SimConfig()
    outdir = Path(outdir).resolve()
    l1_paths, cal_paths, truth_path, job_path, wcs_path = _planned_paths(outdir, cfg)
    planned = [*l1_paths, *cal_paths.values(), truth_path, wcs_path] + ([job_path] if job_path else [])
    existing = [p for p in planned if p.exists() or temp_leftovers(p)]
    if existing:
        raise OutputExistsError(
            existing[0],
            "outdir",
            "a directory without earlier simulator outputs (simulate never overwrites)",
            got=f"{len(existing)} existing output file(s)",
        )

    star_pixel(cfg)  # a star outside the active area is refused before any work
    w = _Writer()
    try:
        return _simulate_into(cfg, outdir, w, l1_paths, cal_paths, truth_path, job_path, wcs_path)
    except BaseException:
        w.cleanup()
        raise


def _simulate_into(cfg, outdir, w, l1_paths, cal_paths, truth_path, job_path, wcs_path) -> SimProducts:
    t_start = time.perf_counter()
    geom = cfg.geometry
    n, act = geom.nside, geom.active
    f32 = np.float32
    w.mkdir(outdir)
    w.mkdir(outdir / "l1")
    w.mkdir(outdir / "caldir")

    root = np.random.SeedSequence(cfg.seed)
    det_ss, exp_root = root.spawn(2)
    det = _build_detector(cfg, np.random.default_rng(det_ss))
    log.info("detector truth built in %.1f s", time.perf_counter() - t_start)

    # truth maps that need the IPC operator
    def embed(active_map: np.ndarray) -> np.ndarray:
        full = np.zeros((n, n), dtype=f32)
        full[act] = active_map
        return full

    inv_gain_act = det.inv_gain[act]
    # dead pixels collect no charge, so they send none to their neighbours either
    live_flat = np.where(det.dead, f32(0.0), det.flat)
    dark_slope = embed(ipc_forward(det.dark_e, det.kernel) * inv_gain_act)
    sky_slope = embed(ipc_forward(live_flat, det.kernel) * inv_gain_act)
    photo = live_flat * (f32(cfg.sky_e_per_s) + det.sources_e)
    slope_dn = embed(ipc_forward(photo, det.kernel) * inv_gain_act)
    del photo, live_flat

    wcs = sim_wcs(cfg)
    wcs_header = wcs.to_header(relax=True).tostring()
    w.text(wcs_path, wcs_header)
    src_radec = wcs.all_pix2world(np.column_stack([det.src_x, det.src_y]), 0).reshape(-1, 2)
    maxerr = _write_caldir(w, cfg, det, cal_paths, dark_slope)
    log.info("caldir written at %.1f s", time.perf_counter() - t_start)

    exp_seeds = exp_root.spawn(cfg.n_exposures)
    skies: list[float] = []
    cr: dict[str, list[np.ndarray]] = {k: [] for k in ("y", "x", "frame", "resultant", "amp", "exposure")}
    saturated = None
    nb = geom.nborder
    for i, path in enumerate(l1_paths):
        t0 = time.perf_counter()
        rng = np.random.default_rng(exp_seeds[i])
        sky = cfg.sky_e_per_s if i == 0 else cfg.sky_e_per_s * (1.0 + cfg.sky_exposure_rms * rng.standard_normal())
        skies.append(float(sky))
        data, amp33, hits = _simulate_exposure(cfg, det, rng, float(sky))
        if i == 0:
            thresh = det.sat_thresh
            with np.errstate(invalid="ignore"):
                saturated = np.zeros((n, n), dtype=bool)
                for r in range(cfg.ngroups):
                    saturated |= data[r] >= thresh  # NaN thresholds compare False
        cr["y"].append(hits.y + nb)
        cr["x"].append(hits.x + nb)
        cr["frame"].append(hits.frame)
        cr["resultant"].append(hits.resultant)
        cr["amp"].append(hits.amp)
        cr["exposure"].append(np.full(hits.y.shape, i, dtype=np.int64))
        w.model(path, science_raw_model(data, amp33, _l1_meta(cfg, i, path.name)))
        del data, amp33
        log.info("exposure %d simulated and written in %.1f s", i, time.perf_counter() - t0)

    dead_full = np.zeros((n, n), dtype=bool)
    dead_full[act] = det.dead
    hot_full = np.zeros((n, n), dtype=bool)
    hot_full[act] = det.hot
    truth = {
        "slope_dn": slope_dn,
        "sky_slope_dn": sky_slope,
        "flux_e": embed(f32(cfg.sky_e_per_s) + det.sources_e),
        "flat": embed(det.flat),
        "gain": det.gain,
        "read_noise": det.rn,
        "bias_dn": det.sref,
        "nonlin_beta": det.beta,
        "dark_dn_per_s": dark_slope,
        "saturated": saturated,
        "dead": dead_full,
        "hot": hot_full,
        "cr_y": np.concatenate(cr["y"]).astype(np.int32),
        "cr_x": np.concatenate(cr["x"]).astype(np.int32),
        "cr_frame": np.concatenate(cr["frame"]).astype(np.int32),
        "cr_resultant": np.concatenate(cr["resultant"]).astype(np.int32),
        "cr_amp_e": np.concatenate(cr["amp"]).astype(f32),
        "cr_exposure": np.concatenate(cr["exposure"]).astype(np.int32),
        "resultant_times": cfg.resultant_times.astype(f32),
        "sky_e_per_s_exposure": np.asarray(skies, dtype=f32),
        "nside": np.array(n),
        "nborder": np.array(nb),
        "frame_time": np.array(cfg.frame_time, dtype=f32),
        "seed": np.array(cfg.seed),
        "n_exposures": np.array(cfg.n_exposures),
        "sky_e_per_s": np.array(cfg.sky_e_per_s, dtype=f32),
        "gain_mean": np.array(cfg.gain_mean, dtype=f32),
        "read_noise_dn": np.array(cfg.read_noise_dn, dtype=f32),
        "dark_e_per_s": np.array(cfg.dark_e_per_s, dtype=f32),
        "pink_noise_dn": np.array(cfg.pink_noise_dn, dtype=f32),
        "nonlin_fit_maxerr_dn": np.array(maxerr, dtype=f32),
        "config_json": np.array(cfg.model_dump_json()),
        "wcs_header": np.array(wcs_header),
        "src_x": det.src_x,
        "src_y": det.src_y,
        "src_ra": src_radec[:, 0],
        "src_dec": src_radec[:, 1],
    }
    if cfg.star_radec is not None:
        truth.update(star_ra=np.array(cfg.star_radec[0]), star_dec=np.array(cfg.star_radec[1]),
                     star_x=np.array(det.src_x[-1]), star_y=np.array(det.src_y[-1]),
                     star_e_per_s=np.array(cfg.star_e_per_s))  # fmt: skip
    w.npz(truth_path, truth)

    if job_path is not None:
        import yaml

        job = {
            "IN": str(l1_paths[0]),
            "OUT": str(outdir / "l2.zarr"),
            "CALDIR": {name: str(p) for name, p in cal_paths.items()},
            "FITSWCS": str(wcs_path),
            "RAMP_OPT_PARS": {"slope": 0.4, "gain": 1.8, "sigma_read": 6.5},
            "JUMP_DETECT_PARS": {"SthreshA": 5.5, "SthreshB": 4.5, "IthreshA": 1.0, "IthreshB": 1000.0},
        }
        w.text(job_path, yaml.safe_dump(job, sort_keys=False))

    log.info("simulate: %d exposure(s) of %d^2 in %.1f s", cfg.n_exposures, n, time.perf_counter() - t_start)
    return SimProducts(l1_files=list(l1_paths), caldir=dict(cal_paths), truth_file=truth_path, job_yaml=job_path,
                       wcs_file=wcs_path)  # fmt: skip


def load_truth(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read ``truth.npz`` into a dict (``config_json`` parsed into ``config``)."""
    with np.load(path, allow_pickle=False) as z:
        out = {k: z[k] for k in z.files}
    out["config"] = json.loads(str(out["config_json"]))
    return out
