"""What defines an EXCAM simulation: :class:`ExcamSimConfig` (every parameter, checked on construction,
with the quantities derived from them: geometry, smear, tail length), :class:`SimResult` (the paths
written) and the constants they use (ADC range, cosmic-ray hit rate, pixel area)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detflow.errors import DetflowInputError
from detflow.instruments import roman_excam

_ADC_MAX = 65535.0
CR_HIT_RATE = 5.0e4  # cosmic-ray hits per m^2 per s at L2 (corgidrp DetectorParams CRHITRT)
PIXEL_AREA = 1.69e-10  # m^2 (13 um pixels)


_CFG = "ExcamSimConfig"


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
