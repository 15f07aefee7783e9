"""The simulated WFI exposure's sky: its celestial WCS and the pixel of the ``star_radec`` star.

The functions read the sky fields of a :class:`detflow.sim.wfi.SimConfig` (:class:`SkyConfig`); this module
does not import it (``sim.wfi`` imports this one).
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
from astropy.wcs import WCS, Sip

from detflow.instruments.roman_wfi import Geometry


class SkyConfig(Protocol):
    """The fields of :class:`detflow.sim.wfi.SimConfig` the sky is made from."""

    nside: int
    ra_deg: float
    dec_deg: float
    pa_deg: float
    pixel_scale_arcsec: float
    wcs_sip: dict[str, float] | None
    star_radec: tuple[float, float] | None

    @property
    def geometry(self) -> Geometry: ...


def sim_wcs(cfg: SkyConfig):
    """The simulated exposure's celestial WCS (astropy), for 0-based full-frame detector pixels: TAN
    about the detector centre at ``pixel_scale_arcsec``, +y at ``pa_deg`` east of north, east to the
    left (-x) at ``pa_deg = 0``, plus the ``wcs_sip`` distortion."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [cfg.ra_deg, cfg.dec_deg]
    w.wcs.crpix = [(cfg.nside + 1) / 2, (cfg.nside + 1) / 2]  # FITS pixels are 1-based
    th, scale = math.radians(cfg.pa_deg), cfg.pixel_scale_arcsec / 3600.0
    w.wcs.cd = scale * np.array([[-math.cos(th), math.sin(th)], [math.sin(th), math.cos(th)]])
    w.wcs.radesys = "ICRS"
    if cfg.wcs_sip:
        order = max(max(int(k[2]), int(k[4])) for k in cfg.wcs_sip)
        coef = {"A": np.zeros((order + 1, order + 1)), "B": np.zeros((order + 1, order + 1))}
        for key, value in cfg.wcs_sip.items():
            coef[key[0]][int(key[2]), int(key[4])] = value
        w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
        w.sip = Sip(coef["A"], coef["B"], None, None, w.wcs.crpix)
    w.wcs.set()
    return w


def star_pixel(cfg: SkyConfig) -> tuple[float, float] | None:
    """(x, y), 0-based full-frame, of ``star_radec``; ValueError unless it lies in the active area."""
    if cfg.star_radec is None:
        return None
    # quiet: far off the detector a SIP inversion need not converge; its best guess is far off too
    x, y = (float(v) for v in sim_wcs(cfg).all_world2pix([cfg.star_radec], 0, quiet=True)[0])
    nb, n = cfg.geometry.nborder, cfg.nside
    lo, hi = nb + 2.0, n - nb - 3.0
    if not (lo <= x <= hi and lo <= y <= hi):  # NaN fails too
        raise ValueError(f"star_radec {cfg.star_radec} lands at pixel (x, y) = ({x:.1f}, {y:.1f}), not inside the "
                         f"active area [{lo:g}, {hi:g}]")  # fmt: skip
    return x, y
