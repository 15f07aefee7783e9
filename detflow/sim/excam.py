"""Roman Coronagraph EXCAM (EMCCD, e2v CCD201-20) L1 frame simulator with known truth.

``simulate_excam(outdir, ExcamSimConfig(...))`` writes EXCAM-like L1 FITS frames, the calibration
files an L1 -> L2b run needs (the II&T ``config_file.yaml`` format) and a ``truth.npz``, all derived
from one seeded truth. Frames always have the full size of the geometry preset
(:data:`detflow.instruments.roman_excam.GEOMETRIES`; SCI: 1200 x 2200, image area 1024 x 1024 at
row 13, column 1088); maps are on the preset's image area.

Output layout (``outdir``)::

    l1/<name>_L1_0000.fits ...           one frame per file: primary HDU + ImageHDU "SCI" (uint16)
    calib/dark_current_map.fits          e-/s (float64, image area)
    calib/fixed_pattern_noise.fits       e- at the output of the gain register (F)
    calib/clock_induced_charge.fits      e- per frame
    calib/flat.fits                      relative response, mean 1 over the good pixels
    calib/badpix.fits                    uint8, 1 = bad (hot or low-QE)
    calib/<nonlinearity table>.csv       the table given (copied), or a unity table
    truth.npz
    config_file.yaml                     II&T format, paths relative to ``outdir``

(``write_calibs=False`` writes only ``l1/`` and ``truth.npz``.) Nothing is ever overwritten: if
``outdir/l1`` holds any file, or any other output exists, :class:`detflow.errors.OutputExistsError`
is raised before any work; files are written under a temporary name and renamed, and a simulation that
fails part-way removes what it wrote (complete or absent).

Physics of one frame (image area, electrons unless stated)
----------------------------------------------------------
1. Mean charge ``lam = S(flat * flux * t) + D t + C``: ``S`` is the shutterless-readout smear
   (:func:`apply_smear`, along columns, readout order = increasing row, ``a = ROW_READ_TIME / t``):
   ``S(x)[r] = x[r] + a * sum_{s <= r} x[s]``, the forward map that
   :func:`detflow.kernels.emccd.desmear` inverts exactly. Only the light is smeared: dark current and
   CIC are what a dark calibration measures, and the pipeline subtracts the dark before it desmears
   (corgidrp's ``l2a_to_l2b`` order: dark_subtraction, desmear, flat_division).
2. ``n = Poisson(lam)``; cosmic rays (Poisson number per frame, mean ``cosmic_rate``, by default
   5e4 hits/m^2/s over the image area: ~44 in 5 s on 1024 x 1024 pixels; a short track of
   1-4 pixels, lognormal total charge of median ``cr_charge_e``, 60% in the head pixel) are added to
   ``n`` (they are not smeared: they arrive at one instant); ``n`` is clipped at ``fwc_pp_e``.
3. Gain register: ``Gamma(shape=n, scale=g)`` for ``n > 0`` (the Erlang model of emccd_detect's fast
   mode; ENF^2 = 2), ``n`` unchanged at ``g = 1``. Then, in serial readout order over the whole frame
   (row-major: prescan columns first, a row's end continues into the next row's prescan), charge
   above ``fwc_em_e`` spills into the following pixels (the saturated plateau), and each saturated
   run leaves a trap tail ``T (1 - q) q^(k-1)``, ``q = exp(-1/efold)``, ``T = cr_tail_frac * fwc_em_e``
   (``efold = clip(4 g / 1000, 0.5, 4)`` pixels unless given: ~2-5 pixels at g = 100, ~30-40 at
   g >= 1000), capped at ``fwc_em_e``.
4. Fixed-pattern noise ``F`` (image area, e- at the output) and Gaussian read noise ``read_noise_e``
   (every pixel of the frame) are added; ``/ eperdn`` gives linear DN.
5. Nonlinearity (if a table is given): raw = the solution of ``raw * relgain(raw, g) = linear``
   (:func:`inverse_nonlinearity`, exact per table segment), so the L2a correction (bias-subtracted DN
   times :func:`detflow.kernels.emccd.relative_gain`) recovers the linear DN.
6. Bias: ``bias_dn`` + a fixed row pattern (``row_bias_rms_dn``) + a per-frame offset
   (``bias_frame_rms_dn``) + per-frame row jitter (``row_bias_frame_rms_dn``), the same in the prescan
   and the image; rounded, clipped to 0..65535, uint16. Non-image pixels get no charge (bias + read
   noise + any serial spill/tail).

So the mean over frames of ``(L1 - row bias) * eperdn / g`` on the image area is
``S(flat flux t) + D t + C + F / g`` (truth ``expected_frame_e``), with per-frame variance
``ENF^2 lam + (read_noise_e / g)^2`` (no cosmic rays, no saturation, linear table).

``truth.npz`` (float64 image-area maps unless stated)
-----------------------------------------------------
``flux`` (e-/s), ``flat``, ``dark_current`` (e-/s), ``cic`` (e-), ``fpn`` (e-), ``badpix`` (uint8),
``hot``, ``low_qe`` (bool); ``expected_l2b_e`` = ``flux * exptime * flat`` (the dark-subtracted,
desmeared electrons, before flat division), ``expected_flat_corrected_e`` = ``flux * exptime``,
``expected_dark_e`` = ``F / g + D t + C`` (the master dark), ``expected_frame_e`` (above),
``mean_charge_e`` (``lam``, pre-gain); ``cosmic_mask`` (n_frames, rows, cols) bool: cosmic-ray
pixels, their spill plateau and tail pixels receiving at least ``max(read_noise_e, eperdn)`` e-;
``row_bias_dn`` (n_frames, frame_rows); 1-D over all hits: ``cr_frame``, ``cr_row``, ``cr_col``
(full-frame head pixel), ``cr_charge_e``; ``nonlin_table`` (the table used, or a 0-size array);
scalars ``exptime``, ``em_gain``, ``eperdn``, ``read_noise_e``, ``smear_a``, ``cr_tail_efold``,
``seed``, ``n_frames``, ``image_row0``, ``image_col0``, ``geometry`` (str), ``config_json`` (str).

Random numbers: truth maps from ``SeedSequence(seed, spawn_key=(0,))``, frame ``k`` from
``SeedSequence(seed, spawn_key=(1, k))``: frame ``k`` is the same whatever ``n_frames``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from numba import njit

from detflow.errors import DetflowInputError, OutputExistsError
from detflow.instruments import roman_excam
from detflow.io.excam_l1 import check_nonlin_table, read_nonlin_table
from detflow.io.store.atomic import atomic_write, temp_leftovers
from detflow.kernels._config import CACHE
from detflow.kernels.emccd import relgain_curve

__all__ = [
    "CALIB_FILES",
    "ExcamSimConfig",
    "SimResult",
    "apply_smear",
    "default_scene",
    "em_gain_register",
    "inverse_nonlinearity",
    "simulate_excam",
]  # fmt: skip

CALIB_FILES = {
    "dark_current_map": "calib/dark_current_map.fits",
    "fixed_pattern_noise": "calib/fixed_pattern_noise.fits",
    "EXCAM_clock_induced_charge": "calib/clock_induced_charge.fits",
    "flatfield_filepath": "calib/flat.fits",
    "badpix_filepath": "calib/badpix.fits",
}
_ADC_MAX = 65535.0
CR_HIT_RATE = 5.0e4  # cosmic-ray hits per m^2 per s at L2 (corgidrp DetectorParams CRHITRT)
PIXEL_AREA = 1.69e-10  # m^2 (13 um pixels)
_MJD0 = _dt.datetime(1858, 11, 17)
_CFG = "ExcamSimConfig"

# L1 header keywords with the values of corgidrp's L1 header definition (corgidrp 5.1.1
# ``data/header_formats/l1.csv``, as ``mocks.create_default_L1_headers`` fills them), minus the
# structural FITS cards; the simulator overrides the ones it knows (exposure, gains, times, names).
_PRIMARY_CARDS = {
    'VISITID': '0200001001001001001', 'CDMSVERS': '2.1.0', 'FSWDVERS': '1.1.5.1', 'MOCK': True, 'TELESCOP': 'ROMAN',
    'INSTRUME': 'CGI', 'DETECTOR': 'EXCAM', 'ORIGIN': 'SSC', 'FILETIME': '2024-04-03T10:54:01.932', 'DATAVERS': 1,
    'PROGNUM': '02000', 'EXECNUM': '01', 'CAMPAIGN': '001', 'SEGMENT': '001', 'OBSNUM': '001', 'VISNUM': '001',
    'CPGSFILE': 'campaign_0200001001001001001.xml', 'AUXFILE': 'aux_0200001001001001001.txt',
    'VISTYPE': 'CGIVST_TDD_OBS', 'TARGET': 'SIMULATED', 'RA': 0.0, 'DEC': 0.0, 'EQUINOX': 2000.0, 'RAPM': 0.0,
    'DECPM': 0.0, 'PSFREF': 0, 'OPGAIN': '1000', 'PHTCNT': 'AUTO', 'FRAMET': '30', 'PA_V3': 0.0, 'PA_APER': 0.0,
    'RA_BORE': 0.0, 'DEC_BORE': 0.0, 'RA_APER': 0.0, 'DEC_APER': 0.0, 'SVB_1': 0.0, 'SVB_2': 0.0, 'SVB_3': 0.0,
    'ROLL': 0.0, 'PITCH': 0.0, 'YAW': 0.0, 'FILENAME': 'cgi_0200001001001001001_20240403t105401_l1_.fits',
    'OBSNAME': 'SCI', 'WBJ_1': 0.0, 'WBJ_2': 0.0, 'WBJ_3': 0.0,
}  # fmt: skip
_IMAGE_CARDS = {
    'BUNIT': 'DN', 'ARRTYPE': 'SCI', 'SCTSRT': '2025-02-16T00:00:00', 'SCTEND': '2025-02-16T00:00:00',
    'FRMTYPE': 'NUM', 'ISHOWFSC': 0, 'ISACQ': 0, 'SPBAL': 0, 'ISFLAT': 0, 'SATSPOTS': False, 'STATUS': 0,
    'HVCBIAS': 0, 'OPMODE': 'NONE_DETON_0', 'EXPTIME': 60.0, 'EMGAIN_C': 1.0, 'UNITYG': 0, 'EMGAINA1': 0.0,
    'EMGAINA2': 0.0, 'EMGAINA3': 0.0, 'EMGAINA4': 0.0, 'EMGAINA5': 0.0, 'GAINTCAL': 0.0, 'EXCAMT': 0.0,
    'LOCAMT': 0.0, 'EMGAIN_A': 0.0, 'KGAINPAR': 0.0, 'CYCLES': 0, 'LASTEXP': 0, 'BLNKTIME': 0.0, 'BLNKCYC': 0,
    'EXPCYC': 0, 'OVEREXP': 0, 'NOVEREXP': 0.0, 'ISPC': 0, 'PROXET': 0.0, 'FCMLOOP': '0', 'FCMPOS': 0.0,
    'FSMINNER': '0', 'FSMLOS': '1', 'FSMPRFL': 'FSM_PROFILE_UNKNOWN', 'FSMRSTR': 0, 'FSMSG1': 0.0, 'FSMSG2': 0.0,
    'FSMSG3': 0.0, 'FSMX': 50.0, 'FSMY': 50.0, 'EACQ_ROW': 0.0, 'EACQ_COL': 0.0, 'SB_FP_DX': 0.0, 'SB_FP_DY': 0.0,
    'SB_FS_DX': 0.0, 'SB_FS_DY': 0.0, 'DMZLOOP': '0', '1SVALID': 1, 'Z2AVG': 0.0, 'Z2RES': 0.0, 'Z2VAR': 0.0,
    'Z3AVG': 0.0, 'Z3RES': 0.0, 'Z3VAR': 0.0, '10SVALID': 1, 'Z4AVG': 0.0, 'Z4RES': 0.0, 'Z5AVG': 0.0, 'Z5RES': 0.0,
    'Z6AVG': 0.0, 'Z6RES': 0.0, 'Z7AVG': 0.0, 'Z7RES': 0.0, 'Z8AVG': 0.0, 'Z8RES': 0.0, 'Z9AVG': 0.0, 'Z9RES': 0.0,
    'Z10AVG': 0.0, 'Z10RES': 0.0, 'Z11AVG': 0.0, 'Z11RES': 0.0, 'Z12AVG': 0.0, 'Z13AVG': 0.0, 'Z14AVG': 0.0,
    'SPAM_H': 0.0, 'SPAM_V': 0.0, 'SPAMNAME': 'OPEN', 'SPAMSP_H': 0.0, 'SPAMSP_V': 0.0, 'FPAM_H': 0.0, 'FPAM_V': 0.0,
    'FPAMNAME': 'HLC12_C2R1', 'FPAMSP_H': 0.0, 'FPAMSP_V': 0.0, 'LSAM_H': 0.0, 'LSAM_V': 0.0, 'LSAMNAME': 'OPEN',
    'LSAMSP_H': 0.0, 'LSAMSP_V': 0.0, 'FSAM_H': 0.0, 'FSAM_V': 0.0, 'FSAMNAME': 'R1C1', 'FSAMSP_H': 0.0,
    'FSAMSP_V': 0.0, 'CFAM_H': 0.0, 'CFAM_V': 0.0, 'CFAMNAME': '1F', 'CFAMSP_H': 0.0, 'CFAMSP_V': 0.0, 'DPAM_H': 0.0,
    'DPAM_V': 0.0, 'DPAMNAME': 'IMAGING', 'DPAMSP_H': 0.0, 'DPAMSP_V': 0.0, 'DATETIME': '2025-02-16T00:00:00',
    'FTIMEUTC': '2025-02-16T00:00:00', 'MJDSRT': 60722.0, 'MJDEND': 60722.00069, 'FILE0': 'simulated',
    'DATALVL': 'L1', 'MISSING': 0,
}  # fmt: skip


# =================================================================================================
# configuration and result
# =================================================================================================
@dataclass(eq=False)
class ExcamSimConfig:
    """Everything that defines an EXCAM simulation (see the module docstring for the model).

    Maps given as arrays (``flux``, ``flat``) are on the geometry's image area. Relative spreads are
    Gaussian (lognormal for the dark current).
    """

    n_frames: int = 10
    geometry: str = "SCI"  # preset in roman_excam.GEOMETRIES (SCI, ENG, ENG_EM)
    exptime: float = 5.0  # s
    em_gain: float = 100.0
    eperdn: float = 8.7  # k gain, e-/DN
    read_noise_e: float = 100.0  # e- rms at the output (before the k gain)
    # bias (DN): constant + fixed row pattern + per-frame offset + per-frame row jitter
    bias_dn: float = 1000.0
    row_bias_rms_dn: float = 3.0
    bias_frame_rms_dn: float = 1.0
    row_bias_frame_rms_dn: float = 0.5
    # dark current (e-/pix/s), CIC (e-/pix/frame), fixed-pattern noise (e- rms at the output)
    dark_current: float = 8.33e-4
    dark_spread: float = 0.1
    hot_pixel_fraction: float = 1e-4
    hot_pixel_factor: tuple[float, float] = (50.0, 500.0)  # hot pixels: dark_current times U(lo, hi)
    cic: float = 0.01
    cic_spread: float = 0.05
    fpn_e: float = 20.0
    # scene (e-/pix/s on the image area; None: default_scene) and response
    flux: np.ndarray | None = None
    flat: np.ndarray | None = None  # None: generated (mean 1, pixel-to-pixel and low-order variation)
    flat_pixel_rms: float = 0.01
    flat_lowfreq_amp: float = 0.03
    bad_pixel_fraction: float = 1e-4  # low-QE pixels (flat x U(0.05, 0.5)), flagged in badpix
    # cosmic rays (per frame, on the image area)
    cosmic_rate: float | None = None  # mean hits per frame; None: CR_HIT_RATE x pixel area x image pixels x exptime
    cr_charge_e: float = 3000.0  # median deposited charge per hit (pre-gain), lognormal sigma 0.5
    cr_tail_efold: float | None = None  # trap-tail e-folding length (pixels); None: clip(4 g / 1000, 0.5, 4)
    cr_tail_frac: float = 0.5  # charge in a trap tail, as a fraction of fwc_em_e
    # full wells (e-)
    fwc_em_e: float = 100000.0
    fwc_pp_e: float = 90000.0
    nonlin_table: str | os.PathLike | np.ndarray | None = None
    smear: bool = True
    seed: int = 0
    # file names and headers
    name: str = "excam_sim"
    vistype: str = "CGIVST_TDD_OBS"
    start_time: str = "2027-01-01T00:00:00"
    frame_interval: float | None = None  # s between frame starts; None: exptime + frame readout time

    def __post_init__(self) -> None:
        def bad(field, expected, got):
            raise DetflowInputError(_CFG, field, expected, got)

        if not (isinstance(self.n_frames, (int, np.integer)) and self.n_frames >= 1):
            bad("n_frames", "an integer >= 1", self.n_frames)
        key = str(self.geometry).strip().upper()
        if key not in roman_excam.GEOMETRIES or key == "ENG_CONV":
            bad("geometry", "SCI, ENG or ENG_EM (ENG_CONV reads through the conventional amplifier: not modelled)",
                self.geometry)  # fmt: skip
        self.geometry = key
        for name in ("exptime", "eperdn"):
            if not float(getattr(self, name)) > 0:
                bad(name, "a number > 0", getattr(self, name))
        if not float(self.em_gain) >= 1:
            bad("em_gain", "a number >= 1", self.em_gain)
        if self.cosmic_rate is None:
            self.cosmic_rate = CR_HIT_RATE * PIXEL_AREA * self.image_shape[0] * self.image_shape[1] * self.exptime
        for name in ("read_noise_e", "dark_current", "cic", "fpn_e", "cosmic_rate", "cr_charge_e", "dark_spread",
                     "cic_spread", "flat_pixel_rms", "flat_lowfreq_amp", "row_bias_rms_dn", "bias_frame_rms_dn",
                     "row_bias_frame_rms_dn", "cr_tail_frac"):  # fmt: skip
            v = float(getattr(self, name))
            if not (v >= 0 and math.isfinite(v)):
                bad(name, "a finite number >= 0", getattr(self, name))
        for name in ("hot_pixel_fraction", "bad_pixel_fraction"):
            if not 0 <= float(getattr(self, name)) < 0.5:
                bad(name, "a fraction in [0, 0.5)", getattr(self, name))
        if not (self.fwc_pp_e > 0 and self.fwc_em_e > 0):
            bad("fwc_em_e/fwc_pp_e", "full wells > 0", (self.fwc_em_e, self.fwc_pp_e))
        if self.cr_tail_efold is not None and not self.cr_tail_efold > 0:
            bad("cr_tail_efold", "a length > 0 pixels or None", self.cr_tail_efold)
        if not 0 <= self.bias_dn < _ADC_MAX:
            bad("bias_dn", "a level in 0..65535 DN", self.bias_dn)
        shape = self.image_shape
        for name in ("flux", "flat"):
            arr = getattr(self, name)
            if arr is None:
                continue
            arr = np.asarray(arr, dtype=np.float64)
            if arr.shape != shape:
                bad(name, f"an array of the {self.geometry} image area shape {shape}", arr.shape)
            if not np.all(np.isfinite(arr)) or (arr < 0).any() or (name == "flat" and (arr <= 0).any()):
                bad(name, "finite values " + ("> 0" if name == "flat" else ">= 0"), "other values")
            setattr(self, name, arr)
        try:
            _dt.datetime.fromisoformat(self.start_time)
        except (TypeError, ValueError):
            bad("start_time", "an ISO time (YYYY-MM-DDTHH:MM:SS)", self.start_time)

    @property
    def geom(self) -> roman_excam.ExcamGeometry:
        return roman_excam.GEOMETRIES[self.geometry]

    @property
    def image_shape(self) -> tuple[int, int]:
        g = roman_excam.GEOMETRIES[str(self.geometry).strip().upper()].image
        return (g.rows, g.cols)

    @property
    def smear_a(self) -> float:
        return roman_excam.ROW_READ_TIME / self.exptime if self.smear else 0.0

    @property
    def tail_efold(self) -> float:
        if self.cr_tail_efold is not None:
            return float(self.cr_tail_efold)
        return float(np.clip(4.0 * self.em_gain / 1000.0, 0.5, 4.0))

    def to_json(self) -> str:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray):
                v = f"array{list(v.shape)}"
            elif isinstance(v, os.PathLike):
                v = os.fspath(v)
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return json.dumps(out)


@dataclass(frozen=True)
class SimResult:
    """Paths of what :func:`simulate_excam` wrote."""

    outdir: Path
    l1_files: list[Path]
    calib: dict[str, Path]  # config_file.yaml key -> path (empty without write_calibs)
    truth: Path
    config: Path | None  # config_file.yaml (None without write_calibs)
    seconds: float


# =================================================================================================
# physics helpers (public: the tests and other simulators use them)
# =================================================================================================
def apply_smear(img: np.ndarray, exptime: float, row_time: float = roman_excam.ROW_READ_TIME) -> np.ndarray:
    """Shutterless-readout smear along columns (axis -2, readout order = increasing row):
    ``out[r] = img[r] + a * sum_{s <= r} img[s]``, ``a = row_time / exptime``.

    This is the exact inverse of :func:`detflow.kernels.emccd.desmear` (``s_r = (s_{r-1} + a y_r) /
    (1 + a)``, ``out = y - s``): with ``y = x + a cumsum(x)`` one has ``s_r = a cumsum(x)_r``.
    """
    img = np.asarray(img, dtype=np.float64)
    return img + (row_time / exptime) * np.cumsum(img, axis=-2)


class _InverseNonlin:
    """Exact inverse of ``f(y) = y * relgain(y)`` for one EM gain, ``relgain`` piecewise linear in DN
    (constant beyond the table, as :func:`detflow.kernels.emccd.relative_gain`). On each segment
    ``f`` is a quadratic ``s y^2 + b y``; its increasing root is ``2 x / (b + sqrt(b^2 + 4 s x))``
    (stable, and ``x / r`` where ``s = 0``)."""

    def __init__(self, table: np.ndarray, em_gain: float, source=None):
        gains, counts, rel = check_nonlin_table(table, source)
        r = relgain_curve(gains, counts, rel, em_gain)
        c = counts
        s = np.diff(r) / np.diff(c)
        fprime_lo = r[:-1] + s * c[:-1]  # f'(y) = r_i + s (2 y - c_i), linear on a segment
        fprime_hi = r[:-1] + s * (2 * c[1:] - c[:-1])
        if r[0] <= 0 or r[-1] <= 0 or (fprime_lo <= 0).any() or (fprime_hi <= 0).any():
            j = int(np.argmax((fprime_lo <= 0) | (fprime_hi <= 0)))
            raise DetflowInputError(source, f"nonlinearity table at EM gain {em_gain:g}, DN {c[j]:g}..{c[j + 1]:g}",
                                    "DN * relative gain increasing with DN (invertible)", "a decreasing segment")  # fmt: skip
        self.nodes = c * r  # f at the table DN values, increasing
        # segment 0: below the table (r0, slope 0); 1..n-1: table segments; n: above the table
        self.R = np.concatenate([[r[0]], r[:-1], [r[-1]]])
        self.S = np.concatenate([[0.0], s, [0.0]])
        self.C = np.concatenate([[c[0]], c[:-1], [c[-1]]])
        self.B = self.R - self.S * self.C

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        j = np.searchsorted(self.nodes, x, side="right")
        b, s = self.B[j], self.S[j]
        disc = np.maximum(b * b + 4.0 * s * x, 0.0)
        return 2.0 * x / (b + np.sqrt(disc))


def inverse_nonlinearity(dn_linear: np.ndarray, table: np.ndarray, em_gain: float) -> np.ndarray:
    """Raw bias-subtracted DN ``y`` with ``y * relative_gain(y) = dn_linear`` for the relative-gain
    ``table`` (row 0 = EM gains, column 0 = DN) at ``em_gain``: the nonlinearity that the L2a
    correction removes."""
    return _InverseNonlin(np.asarray(table, dtype=np.float64), em_gain)(dn_linear)


def em_gain_register(n: np.ndarray, em_gain: float, rng: np.random.Generator) -> np.ndarray:
    """Electrons out of the gain register for ``n`` electrons in: ``Gamma(shape=n, scale=g)`` where
    ``n > 0`` (0 stays 0), ``n`` itself at ``g = 1``. No saturation (see :func:`simulate_excam`)."""
    n = np.asarray(n, dtype=np.float64)
    if em_gain == 1:
        return n.copy()
    out = np.zeros_like(n)
    nz = n > 0
    out[nz] = rng.gamma(n[nz], em_gain)
    return out


@njit(nogil=True, cache=CACHE)
def _serial_overflow(q, fwc, efold, trapped, is_cr, thresh):
    """Gain-register saturation in serial readout order (``q`` flat, electrons, modified in place):
    charge above ``fwc`` moves on to the next pixel (the plateau); after each saturated run a trap
    tail ``trapped (1 - d) d^(k-1)``, ``d = exp(-1/efold)``, is added (capped at ``fwc``). ``is_cr``
    (in: cosmic-ray pixels) is extended to the plateau and to tail pixels receiving >= ``thresh`` of
    runs that a cosmic ray started or joined."""
    n = q.size
    decay = math.exp(-1.0 / efold)
    first = trapped * (1.0 - decay)
    carry = 0.0
    carry_cr = False
    run = False
    run_cr = False
    tail = 0.0
    tail_cr = False
    for i in range(n):
        v = q[i] + carry
        cr = is_cr[i] or (carry > 0.0 and carry_cr)
        carry = 0.0
        if v > fwc:
            carry = v - fwc
            v = fwc
            run_cr = (run_cr or cr) if run else cr
            carry_cr = run_cr
            run = True
            tail = 0.0
        else:
            if run:
                tail = first
                tail_cr = run_cr
                run = False
            if tail > 0.0:
                if tail_cr and tail >= thresh:
                    cr = True
                v = min(v + tail, fwc)
                tail *= decay
                if tail < 1e-3:
                    tail = 0.0
        q[i] = v
        is_cr[i] = cr


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


# =================================================================================================
# one frame
# =================================================================================================
def _cosmic_rays(cfg: ExcamSimConfig, rng: np.random.Generator, n: np.ndarray, mask: np.ndarray):
    """Add this frame's cosmic rays to the pre-gain charge ``n`` (image area) and mark them."""
    ny, nx = n.shape
    count = int(rng.poisson(cfg.cosmic_rate))
    rows, cols, charges = [], [], []
    for _ in range(count):
        r0, c0 = int(rng.integers(0, ny)), int(rng.integers(0, nx))
        length = int(rng.integers(1, 5))
        ang = rng.uniform(0, 2 * np.pi)
        total = cfg.cr_charge_e * float(np.exp(0.5 * rng.standard_normal()))
        w = np.full(length, 0.4 / (length - 1)) if length > 1 else np.ones(1)
        w[0] = 0.6 if length > 1 else 1.0
        for i in range(length):
            r, c = r0 + round(i * math.sin(ang)), c0 + round(i * math.cos(ang))
            if 0 <= r < ny and 0 <= c < nx:
                n[r, c] += round(total * w[i])
                mask[r, c] = True
        rows.append(r0)
        cols.append(c0)
        charges.append(total)
    return rows, cols, charges


def _simulate_frame(cfg: ExcamSimConfig, truth: _Truth, k: int):
    """One L1 frame: ``(uint16 frame, row bias DN, image-area cosmic-ray mask, hits)``."""
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(1, k)))
    geom = cfg.geom
    rs, cs = geom.image.slices
    shape = (geom.frame_rows, geom.frame_cols)
    row_bias = (cfg.bias_dn + truth.row_pattern + cfg.bias_frame_rms_dn * rng.standard_normal()
                + cfg.row_bias_frame_rms_dn * rng.standard_normal(geom.frame_rows))  # fmt: skip
    n = rng.poisson(truth.mean_e).astype(np.float64)
    crmask = np.zeros(cfg.image_shape, dtype=bool)
    hits = _cosmic_rays(cfg, rng, n, crmask)
    np.minimum(n, cfg.fwc_pp_e, out=n)
    electrons = np.zeros(shape)
    electrons[rs, cs] = em_gain_register(n, cfg.em_gain, rng)
    is_cr = np.zeros(shape, dtype=bool)
    is_cr[rs, cs] = crmask
    _serial_overflow(electrons.reshape(-1), float(cfg.fwc_em_e), cfg.tail_efold, cfg.cr_tail_frac * cfg.fwc_em_e,
                     is_cr.reshape(-1), max(cfg.read_noise_e, cfg.eperdn))  # fmt: skip
    electrons[rs, cs] += truth.fpn
    electrons += cfg.read_noise_e * rng.standard_normal(shape)
    dn = electrons / cfg.eperdn
    if truth.nonlin is not None:
        dn = truth.nonlin(dn)
    dn += row_bias[:, None]
    np.rint(dn, out=dn)
    np.clip(dn, 0.0, _ADC_MAX, out=dn)
    return dn.astype(np.uint16), row_bias, is_cr[rs, cs], hits


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
        missing = []
        p = path
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            d.mkdir()
            self.dirs.append(d)

    def write(self, path: Path, fn) -> Path:
        atomic_write(path, fn)
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


def _iso(t: _dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


def _mjd(t: _dt.datetime) -> float:
    return (t - _MJD0).total_seconds() / 86400.0


def _headers(cfg: ExcamSimConfig, k: int, filename: str) -> tuple[fits.Header, fits.Header]:
    geom = cfg.geom
    interval = cfg.frame_interval if cfg.frame_interval is not None else (
        cfg.exptime + geom.frame_rows * roman_excam.ROW_READ_TIME)  # fmt: skip
    start = _dt.datetime.fromisoformat(cfg.start_time) + _dt.timedelta(seconds=k * interval)
    end = start + _dt.timedelta(seconds=cfg.exptime)
    pri = fits.Header()
    for key, v in _PRIMARY_CARDS.items():
        pri[key] = v
    pri["HIERARCH DATA_LEVEL"] = roman_excam.DATA_LEVEL
    pri.update({"FILETIME": _iso(start), "VISTYPE": cfg.vistype, "OPGAIN": f"{cfg.em_gain:g}",
                "PHTCNT": "FALSE", "FRAMET": f"{cfg.exptime:g}", "FILENAME": filename})  # fmt: skip
    pri["SIMULATR"] = ("detflow.sim.excam", "simulated EXCAM frame with known truth")
    pri["SIMSEED"] = (int(cfg.seed), "simulator seed")
    pri["SIMFRAME"] = (int(k), "frame index k (random stream (1, k))")
    ext = fits.Header()
    for key, v in _IMAGE_CARDS.items():
        ext[key] = v
    ny, nx = cfg.image_shape
    ext.update({"ARRTYPE": geom.name, "SCTSRT": _iso(start), "SCTEND": _iso(end), "DATETIME": _iso(start),
                "FTIMEUTC": _iso(end), "MJDSRT": _mjd(start), "MJDEND": _mjd(end),
                "EACQ_ROW": float(ny // 2), "EACQ_COL": float(nx // 2), "FILE0": filename})  # fmt: skip
    ext["EXPTIME"] = (float(cfg.exptime), "exposure time (s)")
    ext["EMGAIN_C"] = (float(cfg.em_gain), "commanded EM gain")
    ext["EMGAIN_A"] = (float(cfg.em_gain), "actual EM gain")
    ext["KGAINPAR"] = (float(cfg.eperdn), "k gain (e-/DN)")
    ext["DATALVL"] = (roman_excam.DATA_LEVEL, "data level")
    return pri, ext


def _write_fits_frame(path: Path, data: np.ndarray, pri: fits.Header, ext: fits.Header) -> None:
    hdul = fits.HDUList([fits.PrimaryHDU(header=pri), fits.ImageHDU(data, header=ext, name="SCI")])
    hdul.writeto(path)


def _write_fits_map(path: Path, data: np.ndarray, bunit: str, what: str) -> None:
    hdu = fits.PrimaryHDU(data)
    hdu.header["BUNIT"] = bunit
    hdu.header["CONTENT"] = what
    hdu.header["SIMULATR"] = "detflow.sim.excam"
    hdu.writeto(path)


def _write_npz(path: Path, arrays: dict) -> None:
    """Like ``np.savez`` (``np.load`` reads it), but the boolean masks are deflated: a per-frame cosmic
    ray mask is 1 MB per frame uncompressed and almost all False."""
    with zipfile.ZipFile(path, "w", allowZip64=True) as zf:
        for name, arr in arrays.items():
            arr = np.asanyarray(arr)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if arr.dtype == bool else zipfile.ZIP_STORED
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, arr, allow_pickle=False)


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _config_yaml(cfg: ExcamSimConfig, calib: dict[str, str]) -> str:
    return f"""# detflow.sim.excam: simulated EXCAM data ({cfg.n_frames} frames, {cfg.geometry}, EXPTIME {cfg.exptime:g} s,
# EM gain {cfg.em_gain:g}, seed {cfg.seed}); the II&T L1 -> L2b config format, paths relative to this file

# Calibration paths
###################
flatfield_filepath: '{calib["flatfield_filepath"]}'
dark_current_map: '{calib["dark_current_map"]}'
fixed_pattern_noise: '{calib["fixed_pattern_noise"]}'
EXCAM_clock_induced_charge: '{calib["EXCAM_clock_induced_charge"]}'
badpix_filepath: '{calib["badpix_filepath"]}'
non_linearity_filepath: '{calib["non_linearity_filepath"]}'

# Detector parameters
#####################
fwc_em_e: {_fmt(cfg.fwc_em_e)}
fwc_pp_e: {_fmt(cfg.fwc_pp_e)}
bias_offset: 0
eperdn: {_fmt(cfg.eperdn)}

# png files creation
####################
generate_png_files: False
"""


def _unity_table() -> np.ndarray:
    table = np.ones((4, 6))
    table[0] = [np.nan, 1.0, 10.0, 100.0, 1000.0, 10000.0]
    table[1:, 0] = [0.0, 1000.0, 65535.0]
    return table


def _resolve_table(cfg: ExcamSimConfig):
    """``(table or None, source path or None)``."""
    t = cfg.nonlin_table
    if t is None:
        return None, None
    if isinstance(t, (str, os.PathLike)):
        return read_nonlin_table(t), Path(t)
    table = np.asarray(t, dtype=np.float64)
    check_nonlin_table(table, _CFG + ".nonlin_table")
    return table, None


def _planned(outdir: Path, cfg: ExcamSimConfig, source: Path | None, write_calibs: bool):
    l1 = [outdir / "l1" / f"{cfg.name}_L1_{k:04d}.fits" for k in range(cfg.n_frames)]
    calib: dict[str, Path] = {}
    if write_calibs:
        calib = {key: outdir / rel for key, rel in CALIB_FILES.items()}
        if source is not None:
            calib["non_linearity_filepath"] = outdir / "calib" / source.name
        elif cfg.nonlin_table is not None:
            calib["non_linearity_filepath"] = outdir / "calib" / "nonlin_table.csv"
        else:
            calib["non_linearity_filepath"] = outdir / "calib" / "nonlin_unity.csv"
    config = outdir / "config_file.yaml" if write_calibs else None
    return l1, calib, outdir / "truth.npz", config


def simulate_excam(outdir: str | os.PathLike, cfg: ExcamSimConfig | None = None, *,
                   write_calibs: bool = True) -> SimResult:  # fmt: skip
    """Simulate ``cfg.n_frames`` EXCAM L1 frames (and, with ``write_calibs``, the calibration files and
    ``config_file.yaml``) plus ``truth.npz`` into ``outdir``.

    Raises :class:`detflow.errors.OutputExistsError` (before any work) if ``outdir/l1`` holds any file
    or any output exists; on failure removes what it wrote.
    """
    t_start = time.perf_counter()
    cfg = cfg if cfg is not None else ExcamSimConfig()
    outdir = Path(outdir).resolve()
    table, source = _resolve_table(cfg)
    l1_paths, calib, truth_path, config_path = _planned(outdir, cfg, source, write_calibs)
    l1_dir = outdir / "l1"
    if l1_dir.is_dir() and any(l1_dir.iterdir()):
        raise OutputExistsError(l1_dir, "outdir", "no earlier L1 files in outdir/l1 (simulate_excam never overwrites)",
                                f"{sum(1 for _ in l1_dir.iterdir())} file(s)")  # fmt: skip
    planned = [*l1_paths, *calib.values(), truth_path] + ([config_path] if config_path else [])
    existing = [p for p in planned if p.exists() or temp_leftovers(p)]
    if existing:
        raise OutputExistsError(existing[0], "outdir", "a directory without earlier simulator outputs "
                                "(simulate_excam never overwrites)", f"{len(existing)} existing output file(s)")  # fmt: skip
    w = _Writer()
    try:
        return _simulate_into(cfg, outdir, w, table, source, l1_paths, calib, truth_path, config_path, t_start)
    except BaseException:
        w.cleanup()
        raise


def _simulate_into(cfg, outdir, w, table, source, l1_paths, calib, truth_path, config_path, t_start) -> SimResult:
    w.mkdir(outdir / "l1")
    truth = _build_truth(cfg, table, source)
    if calib:
        w.mkdir(outdir / "calib")
        maps = {"dark_current_map": (truth.dark, "electron / s", "dark current D"),
                "fixed_pattern_noise": (truth.fpn, "electron", "fixed-pattern noise F (gain-register output)"),
                "EXCAM_clock_induced_charge": (truth.cic, "electron", "clock-induced charge C per frame"),
                "flatfield_filepath": (truth.flat, "", "flat field (relative response)"),
                "badpix_filepath": ((truth.hot | truth.low_qe).astype(np.uint8), "", "bad pixels (1 = bad)")}  # fmt: skip
        for key, (data, unit, what) in maps.items():
            w.write(calib[key], lambda p, d=data, u=unit, s=what: _write_fits_map(p, d, u, s))
        nl = calib["non_linearity_filepath"]
        if source is not None:
            w.write(nl, lambda p: shutil.copyfile(source, p))
        else:
            tab = table if table is not None else _unity_table()
            w.write(nl, lambda p: np.savetxt(p, tab, delimiter=",", fmt="%.10g"))

    img_shape = cfg.image_shape
    cosmic = np.zeros((cfg.n_frames, *img_shape), dtype=bool)
    row_bias = np.zeros((cfg.n_frames, cfg.geom.frame_rows))
    cr = {"frame": [], "row": [], "col": [], "charge": []}
    geom = cfg.geom
    for k, path in enumerate(l1_paths):
        frame, rb, mask, (rows, cols, charges) = _simulate_frame(cfg, truth, k)
        cosmic[k], row_bias[k] = mask, rb
        cr["frame"] += [k] * len(rows)
        cr["row"] += [r + geom.image.row0 for r in rows]
        cr["col"] += [c + geom.image.col0 for c in cols]
        cr["charge"] += charges
        pri, ext = _headers(cfg, k, path.name)
        w.write(path, lambda p, f=frame, a=pri, b=ext: _write_fits_frame(p, f, a, b))

    g, t = float(cfg.em_gain), float(cfg.exptime)
    light = truth.flat * truth.flux * t
    arrays = {
        "flux": truth.flux, "flat": truth.flat, "dark_current": truth.dark, "cic": truth.cic, "fpn": truth.fpn,
        "badpix": (truth.hot | truth.low_qe).astype(np.uint8), "hot": truth.hot, "low_qe": truth.low_qe,
        "expected_l2b_e": light, "expected_flat_corrected_e": truth.flux * t,
        "expected_dark_e": truth.fpn / g + truth.dark * t + truth.cic,
        "expected_frame_e": truth.mean_e + truth.fpn / g, "mean_charge_e": truth.mean_e,
        "cosmic_mask": cosmic, "row_bias_dn": row_bias, "row_bias_pattern_dn": truth.row_pattern,
        "cr_frame": np.asarray(cr["frame"], dtype=np.int64), "cr_row": np.asarray(cr["row"], dtype=np.int64),
        "cr_col": np.asarray(cr["col"], dtype=np.int64), "cr_charge_e": np.asarray(cr["charge"], dtype=np.float64),
        "nonlin_table": table if table is not None else np.zeros((0, 0)),
        "exptime": np.float64(t), "em_gain": np.float64(g), "eperdn": np.float64(cfg.eperdn),
        "read_noise_e": np.float64(cfg.read_noise_e), "smear_a": np.float64(cfg.smear_a),
        "cr_tail_efold": np.float64(cfg.tail_efold), "seed": np.int64(cfg.seed), "n_frames": np.int64(cfg.n_frames),
        "image_row0": np.int64(geom.image.row0), "image_col0": np.int64(geom.image.col0),
        "geometry": np.str_(geom.name), "config_json": np.str_(cfg.to_json()),
    }  # fmt: skip
    w.write(truth_path, lambda p: _write_npz(p, arrays))
    if config_path is not None:
        rel = {key: p.relative_to(outdir).as_posix() for key, p in calib.items()}
        w.write(config_path, lambda p: p.write_text(_config_yaml(cfg, rel)))
    return SimResult(outdir, list(l1_paths), dict(calib), truth_path, config_path, time.perf_counter() - t_start)
