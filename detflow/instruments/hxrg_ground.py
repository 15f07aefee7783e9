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

import configparser
import re
from dataclasses import dataclass
from pathlib import Path

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


def product_name(
    naming: str,
    inst: str,
    exptype: str,
    date: str,
    run: int,
    dither: int,
    source: str = "",
    integration: int = 0,
    level: int = 1,
) -> str:
    """The file name of an exposure's product: LT's ``<inst>_<type>_<date>_<run>_<dither>_0_<level>.fits``
    (IO:I's ``write_combined_data_as_LT``), ``<inst>_R<run>_<level>.fits`` for Teledyne names, and
    ``<cube>_<integration>_<level>.fits`` for a cube."""
    if naming == "lt":
        return f"{inst}_{exptype}_{date}_{run}_{dither}_0_{level}.fits"
    if naming == "teledyne":
        return f"{inst}_R{run}_{level}.fits"
    stem = source.removesuffix(".gz").removesuffix(".fits").removesuffix(".fit")
    return f"{stem}_{integration}_{level}.fits"


def sections(nx: int, noutputs: int) -> int:
    """The columns per output section; ValueError when ``noutputs`` does not divide the columns."""
    if noutputs < 1 or nx % noutputs:
        raise ValueError(f"a number of outputs dividing the {nx} columns, got {noutputs}")
    return nx // noutputs


# ---- IO:I's paths.ini and pipeline.ini ----------------------------------------------------------------
IOI_REFPIX = {"TRIM": "trim", "CONSTANT": "constant", "CONSTANTOFF": "constant_off", "RAMP": "ramp",
              "COLUMN": "column", "FULL": "full"}  # fmt: skip
# sections of pipeline.ini this pipeline does not run yet (their settings are reported, not applied)
IOI_NOT_YET = ("flatfielding", "bad_pix_masking", "sky_subtraction", "registration", "stacking")


def read_ini(path) -> dict[str, dict[str, str]]:
    """An IO:I .ini file (``key: value ; comment``) as {section: {key: value}}; ValueError if unreadable."""
    ini = configparser.ConfigParser(inline_comment_prefixes=(";", "#"), strict=False)
    try:
        with open(path) as f:
            ini.read_file(f)
    except (OSError, configparser.Error) as exc:
        raise ValueError(f"an IO:I .ini file ({type(exc).__name__}: {exc})") from None
    return {s: dict(ini.items(s)) for s in ini.sections()}


def ioi_job_keys(pipeline_ini, paths_ini=None) -> tuple[dict, list[str]]:
    """The job keys IO:I's ``pipeline.ini`` (and ``paths.ini``, for the nonlinearity file) set, and the
    settings of stages not run here. ValueError naming the ``section.key`` that is wrong."""
    cfg = read_ini(pipeline_ini)
    out: dict = {}
    steps: dict = {}
    ref = cfg.get("reference_subtraction", {})
    if ref:
        method = ref.get("method", "").strip().upper()
        if method not in IOI_REFPIX:
            raise ValueError(f"reference_subtraction.method one of {', '.join(IOI_REFPIX)}, got {method!r}")
        out["refpix"] = IOI_REFPIX[method] if ref.get("do", "1").strip() != "0" else "none"
    comb = cfg.get("frame_combination", {})
    if comb:
        method = comb.get("method", "").strip().upper()
        if method not in ("CDS", "FOWLER"):
            raise ValueError(f"frame_combination.method CDS or FOWLER, got {method!r}")
        out["read_mode"] = method.lower()
        if method == "FOWLER":
            steps = {"fowler_pairs": int(comb.get("fowler_pairs", 1)),
                     "read_time": float(comb.get("fowler_bodge", FOWLER_READ_TIME))}  # fmt: skip
    if steps:
        out["steps"] = {"hxrg_combine": steps}
    lin = cfg.get("nonlinearity_corrections", {})
    if lin.get("do", "0").strip() == "1" and paths_ini is not None:
        paths = read_ini(paths_ini).get("nonlinearity_corrections", {})
        if "coeff_filename" in paths:
            base = Path(paths.get("path_nonlinearity_corrections", str(Path(paths_ini).parent)))
            base = base if base.is_absolute() else Path(paths_ini).parent / base
            out["nonlinearity"] = str(base / paths["coeff_filename"])
            out["nonlinearity_order"] = int(lin.get("order", 3))
    ignored = [f"{s} (do: 1)" for s in IOI_NOT_YET if cfg.get(s, {}).get("do", "0").strip() == "1"]
    return out, ignored
