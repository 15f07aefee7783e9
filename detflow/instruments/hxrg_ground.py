"""Ground-based HAWAII-2RG imagers (``pipeline: hxrg_ground``): presets, file names, header keywords, as data.

Facts from the Liverpool Telescope IO:I pipeline (LivTel/ioi_pipeline: ``utility.py``, ``remove_reference.py``,
``combine.py``, ``stack.py``): one FITS file per read, named the LT way
``<inst>_<type>_<date>_<run>_<dither>_<exp>_<level>.fits`` (``i_e_20150227_1_1_1_0.fits``: the reads of an
exposure are the files of one run and dither, ordered by ``INTTIME``) or the Teledyne way
``<inst>_R<run>_M<group>_N<read>.fits`` (the reads of one run); ``NOUTPUTS`` 1, 4 or 32 outputs across the
2048 columns; four reference rows and columns on each side, the outermost ones left out of the reference
means ("these could be wrong"); ``ASICGAIN`` 8/10/12/13 (dB) -> 3.05/2.12/1.50/1.06 e/DN; Fowler pairs
are pedestal (``SEQNUM_M`` 1) and signal (``SEQNUM_M`` 2) reads paired by ``SEQNUM_N``, their EXPTIME the
mean INTTIME difference plus 1.265 s (the read time the IDL control software adds); the RAMP reference
correction places the bottom and top means at rows 1.5 and 2055.5 (the true mean rows of rows 1-3 and
2044-2046 are 2 and 2045). Readers and steps import this module; it imports nothing from the package.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# ASICGAIN (dB) -> gain (e/DN), IO:I (stack.py)
ASICGAIN_E_PER_DN = {8: 3.05, 10: 2.12, 12: 1.50, 13: 1.06}
FOWLER_READ_TIME = 1.265  # s added to a Fowler EXPTIME (pipeline.ini fowler_bodge)
COMPAT_RAMP_ROWS = (1.5, 2055.5)  # the abscissae remove_reference.py gives the bottom and top reference means
PEDESTAL_GROUP, SIGNAL_GROUP = 1, 2  # SEQNUM_M of the Fowler pedestal and signal reads

LT_NAME = re.compile(r"^(?P<inst>[A-Za-z0-9]+)_(?P<type>[A-Za-z0-9]+)_(?P<date>\d{8})_(?P<run>\d+)_(?P<dither>\d+)_"
                     r"(?P<exp>\d+)_(?P<level>\d+)$")  # fmt: skip
TELEDYNE_NAME = re.compile(r"^(?P<inst>[A-Za-z0-9]+)_R(?P<run>\d+)_M(?P<group>\d+)_N(?P<read>\d+)$")

# per-read header keywords -> coordinate (read from the image HDU, else the primary header)
READ_KEYS = {"inttime": "INTTIME", "seqnum_r": "SEQNUM_R", "seqnum_m": "SEQNUM_M", "seqnum_n": "SEQNUM_N",
             "acqtime": "ACQTIME"}  # fmt: skip
# per-exposure keywords (from its first read) -> frame coordinate; numbers where they are numbers
FRAME_KEYS = {"noutputs": "NOUTPUTS", "asicgain": "ASICGAIN", "exptime_header": "EXPTIME", "ra": "RA", "dec": "DEC",
              "acqtime1": "ACQTIME1", "object": "OBJECT", "filter": "FILTER1"}  # fmt: skip
CUBE_KEYS = ("NGROUPS", "NFRAMES", "GROUPGAP", "TFRAME", "TGROUP")  # JWST-style (integration, group, y, x) SCI


@dataclass(frozen=True)
class Geometry:
    """A detector's pixel layout: ``ref`` reference rows/columns (bottom, top, left, right) around the active
    region; ``noutputs`` readout sections across the columns (None: from NOUTPUTS); ``gain`` e/DN (None:
    from ASICGAIN); ``skip_border`` leaves the outermost reference row/column out of the means."""

    ny: int | None
    nx: int | None
    ref: tuple[int, int, int, int]
    noutputs: int | None
    gain: float | None
    skip_border: bool = True
    read_noise: float = 10.0  # DN per read: a nominal value for the error estimate


PRESETS = {
    "ioi": Geometry(2048, 2048, (4, 4, 4, 4), None, None, True, 10.0),
    "generic": Geometry(None, None, (0, 0, 0, 0), 1, 1.0, False, 10.0),
}


def gain_of(asicgain) -> float | None:
    """IO:I's gain (e/DN) for an ASICGAIN value (None: not one of 8, 10, 12, 13 dB)."""
    try:
        return ASICGAIN_E_PER_DN.get(int(round(float(asicgain))))
    except (TypeError, ValueError):
        return None


def parse_name(stem: str) -> dict | None:
    """The fields of an LT (``naming: lt``) or Teledyne (``naming: teledyne``) file name stem, None for neither."""
    m = LT_NAME.match(stem)
    if m:
        d = m.groupdict()
        out = {k: int(d[k]) for k in ("run", "dither", "exp", "level")}
        return dict(out, naming="lt", inst=d["inst"], type=d["type"], date=d["date"])
    m = TELEDYNE_NAME.match(stem)
    if m:
        d = m.groupdict()
        return {"naming": "teledyne", "inst": d["inst"], "type": "", "date": "", "run": int(d["run"]), "dither": 0,
                "group": int(d["group"]), "exp": int(d["read"]), "level": 0}  # fmt: skip
    return None


def lt_product_name(first_read_stem: str, level: int = 1) -> str:
    """The LT name of a per-exposure (level 1: ``..._<run>_<dither>_0_1.fits``) product, from its first read's."""
    parts = first_read_stem.split("_")
    return "_".join(parts[:5]) + f"_0_{level}.fits"


def sections(nx: int, noutputs: int) -> int:
    """The columns per output section; ValueError when ``noutputs`` does not divide the columns."""
    if noutputs < 1 or nx % noutputs:
        raise ValueError(f"a number of outputs dividing the {nx} columns, got {noutputs}")
    return nx // noutputs
