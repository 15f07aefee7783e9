"""The data model shared by every detector family: dims, DQ bits, variable names, units, attrs.

Everything here is declared once and imported everywhere else, so a store written by any pipeline
reads the same way.
"""

from __future__ import annotations

import datetime as _dt
import enum
import math
from pathlib import PurePath
from typing import Any

import numpy as np

# ---- dims ---------------------------------------------------------------------------------------
FRAME = "frame"  # exposure
READ = "read"  # non-destructive read or resultant (length 1 for single-read detectors)
Y = "y"  # detector row
X = "x"  # detector column
DIMS_L1 = (FRAME, READ, Y, X)
DIMS_L2 = (FRAME, Y, X)


# ---- DQ bits (JWST/Roman convention, identical to roman_datamodels.dqflags.pixel) ---------------
class DQ(enum.IntFlag):
    GOOD = 0
    DO_NOT_USE = 1 << 0
    SATURATED = 1 << 1
    JUMP_DET = 1 << 2
    DROPOUT = 1 << 3
    GW_AFFECTED_DATA = 1 << 4
    PERSISTENCE = 1 << 5
    AD_FLOOR = 1 << 6
    OUTLIER = 1 << 7
    UNRELIABLE_ERROR = 1 << 8
    NON_SCIENCE = 1 << 9
    DEAD = 1 << 10
    HOT = 1 << 11
    WARM = 1 << 12
    LOW_QE = 1 << 13
    TELEGRAPH = 1 << 15
    NONLINEAR = 1 << 16
    BAD_REF_PIXEL = 1 << 17
    NO_FLAT_FIELD = 1 << 18
    NO_GAIN_VALUE = 1 << 19
    NO_LIN_CORR = 1 << 20
    NO_SAT_CHECK = 1 << 21
    UNRELIABLE_BIAS = 1 << 22
    UNRELIABLE_DARK = 1 << 23
    UNRELIABLE_SLOPE = 1 << 24
    UNRELIABLE_FLAT = 1 << 25
    RESERVED_5 = 1 << 26
    RESERVED_6 = 1 << 27
    UNRELIABLE_RESET = 1 << 28
    RESERVED_7 = 1 << 29
    OTHER_BAD_PIXEL = 1 << 30
    REFERENCE_PIXEL = 1 << 31


DQ_DTYPE = np.uint32


def dq_attrs() -> dict[str, Any]:
    """CF attributes that make a DQ variable self-describing (flag_masks / flag_meanings)."""
    flags = [f for f in DQ if f.value != 0]
    return {
        "flag_masks": [int(f.value) for f in flags],
        "flag_meanings": " ".join(f.name for f in flags),
        "long_name": "data quality bit flags (JWST/Roman convention)",
        "units": "1",
    }


# Footprint (pixels) each DQ bit masks in the "good pixel" mask of exports and sky estimates, as the
# PIT's PixelMask1: 1 the pixel, 5 plus its nearest neighbours, 9 the 3x3 box, 25 the 5x5 box.
# SATURATED is not masked (bright stars keep their pre-saturation slopes).
PIXEL_MASK_1 = {
    "DO_NOT_USE": 1, "JUMP_DET": 5, "DROPOUT": 25, "GW_AFFECTED_DATA": 1, "PERSISTENCE": 1, "AD_FLOOR": 5,
    "UNRELIABLE_ERROR": 1, "NON_SCIENCE": 1, "DEAD": 9, "HOT": 9, "WARM": 1, "LOW_QE": 9, "TELEGRAPH": 1,
    "NO_FLAT_FIELD": 9, "NO_GAIN_VALUE": 9, "NO_LIN_CORR": 9, "NO_SAT_CHECK": 9, "UNRELIABLE_BIAS": 1,
    "UNRELIABLE_DARK": 9, "UNRELIABLE_SLOPE": 9, "UNRELIABLE_FLAT": 9, "UNRELIABLE_RESET": 9,
    "OTHER_BAD_PIXEL": 9,
}  # fmt: skip


def mask_sizes(table: dict[str, int]) -> np.ndarray:
    """(32,) int8 footprint per bit number from a ``{flag name: footprint}`` table."""
    sizes = np.zeros(32, dtype=np.int8)
    for name, size in table.items():
        if size not in (0, 1, 5, 9, 25):
            raise ValueError(f"{name}: footprint must be 1, 5, 9 or 25 pixels, got {size}")
        sizes[int(DQ[name.upper()]).bit_length() - 1] = size
    return sizes


def flag_where(cond, flag: int):
    """``flag`` (uint32) where ``cond`` is true, else 0; works on numpy, dask and xarray alike."""
    return cond.astype(DQ_DTYPE) * DQ_DTYPE(flag)


def dq_names(value: int) -> list[str]:
    """The flag names set in one DQ value."""
    return [f.name for f in DQ if f.value and (int(value) & f.value)]


# ---- variables and units ------------------------------------------------------------------------
UNITS = {
    "DN": "DN",
    "DN/s": "DN / s",
    "DN2/s2": "DN2 / s2",
    "e": "electron",
    "e/s": "electron / s",
    "e/DN": "electron / DN",
    "s": "s",
}


# ---- attrs --------------------------------------------------------------------------------------
def sanitize_attrs(value: Any) -> Any:
    """Return a JSON-safe copy of ``value`` (attrs must survive zarr v3 JSON metadata).

    numpy scalars and arrays become Python numbers and lists, paths and dates strings, non-finite
    floats strings ("nan", "inf"), mappings get string keys. Anything else is ``str()``-ed.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else str(v)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return sanitize_attrs(value.tolist())
    if isinstance(value, dict):
        return {str(k): sanitize_attrs(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [sanitize_attrs(v) for v in value]
    if isinstance(value, (PurePath, _dt.date, _dt.datetime)):
        return str(value)
    if hasattr(value, "model_dump"):  # pydantic
        return sanitize_attrs(value.model_dump(mode="json"))
    return str(value)
