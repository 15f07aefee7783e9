"""What defines a WFI simulation and what it returns: :class:`SimConfig` (validated, frozen) with its
derived quantities, :class:`SimProducts`, the calibration file names, the default read pattern, and the
simulated epoch the files' timestamps count from."""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from detflow.instruments.roman_wfi import Geometry

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


def _iso(t: _dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}"
