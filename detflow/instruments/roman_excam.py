"""Roman Coronagraph EXCAM (EMCCD, e2v CCD201-20): frame geometries, header keywords, constants.

Geometry is data: each preset maps a region name to ``(rows, cols, row0, col0)`` in the full L1 frame,
and names the reliable prescan columns (absolute column indices) used for the row-by-row bias. The
presets are those of the public pipelines (the II&T L1 -> L2b code and corgidrp ``detector_areas``),
with one correction: in ENG_CONV the reliable window is columns 1200-1400 of the frame, which upstream
writes relative to its prescan region (placing it at 2272-2472, outside a 2200-column frame).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..schema import DQ

ROW_READ_TIME = 223.5e-6  # s, parallel transfer time per row (desmear)
N_EM_STAGES = 604  # gain register cells, for the excess-noise factor
DATA_LEVEL = "L1"


@dataclass(frozen=True)
class Region:
    rows: int
    cols: int
    row0: int
    col0: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.row0, self.row0 + self.rows), slice(self.col0, self.col0 + self.cols)

    def inside(self, nrows: int, ncols: int) -> bool:
        return self.row0 >= 0 and self.col0 >= 0 and self.row0 + self.rows <= nrows and self.col0 + self.cols <= ncols


@dataclass(frozen=True)
class ExcamGeometry:
    name: str
    frame_rows: int
    frame_cols: int
    regions: dict[str, Region]
    reliable_cols: tuple[int, int]  # absolute [start, stop) of the prescan columns used for the bias

    @property
    def image(self) -> Region:
        return self.regions["image"]

    @property
    def prescan(self) -> Region:
        return self.regions["prescan"]

    def check(self) -> None:
        for name, r in self.regions.items():
            if not r.inside(self.frame_rows, self.frame_cols):
                raise ValueError(
                    f"{self.name}: region {name} {r} outside the {self.frame_rows}x{self.frame_cols} frame"
                )
        p = self.prescan
        a, b = self.reliable_cols
        if not (p.col0 <= a < b <= p.col0 + p.cols):
            raise ValueError(f"{self.name}: reliable prescan columns {a}:{b} outside the prescan {p}")


def _geom(name, frame_rows, frame_cols, reliable, **regions) -> ExcamGeometry:
    g = ExcamGeometry(name, frame_rows, frame_cols, {k: Region(*v) for k, v in regions.items()}, reliable)
    g.check()
    return g


GEOMETRIES: dict[str, ExcamGeometry] = {
    "SCI": _geom("SCI", 1200, 2200, (800, 1000),
                 image=(1024, 1024, 13, 1088), prescan=(1200, 1088, 0, 0),
                 parallel_overscan=(163, 1056, 1037, 1088), serial_overscan=(1200, 56, 0, 2144)),
    "ENG": _geom("ENG", 2200, 2200, (800, 1000),
                 image=(1024, 1024, 13, 1088), prescan=(2200, 1088, 0, 0),
                 parallel_overscan=(1163, 1056, 1037, 1088), serial_overscan=(2200, 56, 0, 2144)),
    "ENG_EM": _geom("ENG_EM", 2200, 2200, (800, 1000),
                    image=(2048, 1024, 13, 1088), lower_image=(1024, 1024, 13, 1088),
                    upper_image=(1024, 1024, 1037, 1088), prescan=(2200, 1088, 0, 0),
                    parallel_overscan=(130, 1056, 2070, 1088), serial_overscan=(2200, 56, 0, 2144)),
    # conventional-gain readout: the geometry is mirrored; the largest serial non-image region (the
    # serial overscan on the right) serves as the prescan
    "ENG_CONV": _geom("ENG_CONV", 2200, 2200, (1200, 1400),
                      image=(2048, 1024, 13, 48), lower_image=(1024, 1024, 13, 48),
                      upper_image=(1024, 1024, 1037, 48), prescan=(2200, 1128, 0, 1072),
                      parallel_overscan=(130, 1056, 2070, 16), serial_overscan=(2200, 16, 0, 0)),
}  # fmt: skip


def geometry_for(arrtype: str | None, shape: tuple[int, int]) -> ExcamGeometry:
    """The preset named by ARRTYPE (checked against the frame shape), else the one the shape implies."""
    if arrtype:
        key = str(arrtype).strip().upper()
        if key not in GEOMETRIES:
            raise KeyError(f"ARRTYPE {arrtype!r}: expected one of {', '.join(GEOMETRIES)}")
        g = GEOMETRIES[key]
        if tuple(shape) != (g.frame_rows, g.frame_cols):
            raise ValueError(f"ARRTYPE {key} frames are {g.frame_rows}x{g.frame_cols}, got {shape[0]}x{shape[1]}")
        return g
    matches = [g for g in GEOMETRIES.values() if (g.frame_rows, g.frame_cols) == tuple(shape)]
    if not matches:
        raise KeyError(f"frame shape {shape[0]}x{shape[1]}: no EXCAM geometry (SCI 1200x2200, ENG 2200x2200)")
    return matches[0]  # SCI for 1200x2200, ENG for 2200x2200 (ENG_EM/ENG_CONV need ARRTYPE)


def em_gain(header) -> tuple[float, str]:
    """EM gain of an L1 frame and the keyword it came from: EMGAIN_M (measured), else EMGAIN_A (applied),
    else the commanded gain, CMDGAIN (older files; it wins over EMGAIN_C, as corgidrp maps it), EMGAIN_C,
    EM_GAIN. Only positive values count (corgidrp's synthesized darks carry EMGAIN_M = -999).
    Raises KeyError naming the keywords tried."""
    for key in ("EMGAIN_M", "EMGAIN_A", "CMDGAIN", "EMGAIN_C", "EM_GAIN"):
        v = header.get(key)
        try:
            g = float(v)
        except (TypeError, ValueError):
            continue
        if g > 0:
            return g, key
    raise KeyError("EMGAIN_M, EMGAIN_A, CMDGAIN, EMGAIN_C or EM_GAIN (a positive EM gain)")


# ---- coronagraph inner working angle (left out of the cosmic-ray search, as corgidrp does) ------------
TELESCOPE_DIAMETER_M = 2.36  # effective primary diameter (lambda/D)
PLATESCALE_ARCSEC = 0.0218  # EXCAM arcsec per pixel
# CFAM filter central wavelengths (nm): the TV-40b measured value where there is one, else Phase C
CFAM_CENTER_NM = {
    "1": 573.8, "2": 659.4, "3": 729.3, "4": 825.5, "1A": 554.8, "1B": 574.5, "1C": 594.7, "2A": 614.2,
    "2B": 639.4, "2C": 655.65, "3A": 680.37, "3B": 702.04, "3C": 726.00, "3G": 752.5, "3D": 753.83,
    "3E": 776.44, "4A": 791.7, "4B": 823.9, "4C": 856.5,
}  # fmt: skip
IWA_LAMBDA_OVER_D = {"NFOV": 3.0, "WFOV": 5.9}  # default IWA radius per Lyot stop (LSAMNAME); others 0


def cfam_center_nm(band: str) -> float:
    """Central wavelength of a CFAM filter name ("3C", "1F" = band 1); KeyError for an unknown name."""
    key = str(band).strip().upper()
    if key.endswith("F"):
        key = key[0]
    return CFAM_CENTER_NM[key]


def iwa_radius_pix(band: str, radius_lambda_d: float, platescale: float = PLATESCALE_ARCSEC) -> int:
    """An IWA radius in lambda/D at the filter's central wavelength, in whole pixels."""
    arcsec = radius_lambda_d * cfam_center_nm(band) * 1e-9 / TELESCOPE_DIAMETER_M * 206265.0
    return int(round(arcsec / platescale))


# ---- corgidrp DQ bits (the II&T/corgidrp bpmap files) <-> ours ---------------------------------------
CORGI_TO_DQ = {1: DQ.DO_NOT_USE, 2: DQ.HOT, 4: DQ.NO_FLAT_FIELD, 32: DQ.SATURATED, 64: DQ.NONLINEAR, 128: DQ.JUMP_DET}
"""corgidrp DQ bit -> ours (1:1, so the export maps back exactly)."""


def corgi_bits(dq: np.ndarray) -> np.ndarray:
    """Our DQ as corgidrp's bit meanings (uint8): what the II&T/corgidrp bpmap files hold."""
    out = np.zeros(np.shape(dq), dtype=np.uint8)
    for bit, flag in CORGI_TO_DQ.items():
        out |= np.where((np.asarray(dq) & int(flag)) != 0, np.uint8(bit), np.uint8(0))
    return out


def from_corgi_bits(bits) -> int:
    """corgidrp DQ bits (an int) as our DQ bits."""
    out = 0
    for bit, flag in CORGI_TO_DQ.items():
        if int(bits) & bit:
            out |= int(flag)
    return out
