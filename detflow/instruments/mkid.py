"""MKID photon-counting arrays (MEC, DARKNESS, XKID): the instrument's knowledge, as data.

Facts from mkidcore 1.9 (``mkidcore/instruments.py``, ``pixelflags.py``, ``binfile/binprocessor.c``),
restated here:

- array sizes ``(ncols, nrows)``: MEC 140 x 146, DARKNESS and XKID 80 x 125; dead time 10 us, wavelength
  range 700-1500 nm, energy bin width 0.1 eV;
- the default beammaps are regular (checked against mkidcore's ``mec.bmap``, ``darkness.bmap`` and
  ``xkid.bmap``: every line follows these formulas): resonator id ``10000 * feedline + index``; MEC has 10
  feedlines of 14 columns x 146 rows, ``index = (x - 14 (feedline - 1)) * 146 + y``; DARKNESS and XKID have
  5 feedlines of 80 columns x 25 rows, ``index = (y - 25 (feedline - 1)) * 80 + x``; every flag 0;
- beammap flags (a code per resonator in the beammap file, not bits): 0 good, 1 noDacTone, 2 failed,
  3 yFailed, 4 xFailed, 5 double, 6 wrongFeedline, 7 duplicatePixel;
- the ``.bin`` packet format (the readout's Gen2 firmware): see :data:`PACKET`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MkidPreset:
    name: str
    ncols: int  # x
    nrows: int  # y
    feedlines: int
    deadtime_us: float = 10.0
    minimum_wavelength_nm: float = 700.0
    maximum_wavelength_nm: float = 1500.0
    energy_bin_width_ev: float = 0.1
    maximum_count_rate: float = 5000.0  # counts/s per pixel the readout keeps up with

    def attrs(self) -> dict:
        return {"instrument": self.name, "ncols": self.ncols, "nrows": self.nrows, "deadtime_us": self.deadtime_us,
                "minimum_wavelength_nm": self.minimum_wavelength_nm,
                "maximum_wavelength_nm": self.maximum_wavelength_nm,
                "energy_bin_width_ev": self.energy_bin_width_ev}  # fmt: skip


PRESETS = {
    "mec": MkidPreset("MEC", 140, 146, 10),
    "darkness": MkidPreset("DARKNESS", 80, 125, 5),
    "xkid": MkidPreset("XKID", 80, 125, 5),
}

# beammap flag codes (mkidcore.pixelflags.beammap) and their meanings
BEAMMAP_FLAGS = ("good", "noDacTone", "failed", "yFailed", "xFailed", "double", "wrongFeedline", "duplicatePixel")
NO_RESONATOR = 255  # the flag image's value where no resonator of the beammap sits
NO_RESID = np.uint32(2**32 - 1)  # the resid image's value there

# The .bin stream: 64-bit big-endian words; a header word starts with the 0xFF marker
PACKET = {
    "marker": 0xFF,  # header [63:56]
    "roach_bits": (55, 48),
    "frame_bits": (47, 36),
    "timestamp_bits": (35, 0),  # 0.5 ms ticks since 00:00 UTC, 1 January of the file's year
    "x_bits": (63, 54),
    "y_bits": (53, 44),
    "offset_bits": (43, 35),  # microseconds within the tick
    "phase_bits": (34, 17),  # signed 18 bit
    "baseline_bits": (16, 0),  # signed 17 bit
    "max_photons": 100,  # photon words per packet
    "frame_end_x": 511,  # a photon word with x = 511 closes a frame: not a photon
}
TICK_US = 500
PHASE_DEG_PER_COUNT = (180.0 / math.pi) / 2**15
BASELINE_DEG_PER_COUNT = (180.0 / math.pi) / 2**14


def preset(name: str) -> MkidPreset:
    return PRESETS[name.lower()]


def default_beammap(name: str) -> np.ndarray:
    """The preset's default beammap as ``(n, 4)`` int64 rows ``resID flag x y`` (mkidcore's regular layout)."""
    p = preset(name)
    x, y = np.meshgrid(np.arange(p.ncols), np.arange(p.nrows), indexing="ij")
    x, y = x.ravel(), y.ravel()
    if p.name == "MEC":
        fl = x // 14 + 1
        index = (x - 14 * (fl - 1)) * 146 + y
    else:
        fl = y // 25 + 1
        index = (y - 25 * (fl - 1)) * 80 + x
    rows = np.stack([10000 * fl + index, np.zeros_like(x), x, y], axis=1).astype(np.int64)
    return rows[np.argsort(rows[:, 0], kind="stable")]


def flag_attrs() -> dict:
    """CF attributes of the beammap flag image (codes, not bits)."""
    codes = list(range(len(BEAMMAP_FLAGS))) + [NO_RESONATOR]
    return {"flag_values": codes, "flag_meanings": " ".join([*BEAMMAP_FLAGS, "no_resonator"]),
            "long_name": "beammap flag of the resonator at the pixel (mkidcore codes)"}  # fmt: skip
