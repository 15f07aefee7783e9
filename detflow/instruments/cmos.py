"""CMOS characterisation camera: raw-tree conventions, frame defaults and the temperature-log keywords.

Data, not code. The raw tree a test campaign writes (see :mod:`detflow.io.cmos_raw`)::

    TestSection1/ ... /T<temp>/attempt<n>/       bias   (CALTYPE BIAS)
    TestSection2/ ... /T<temp>/<t>s/attempt<n>/  darks  (CALTYPE DARK)
    TestSection3/ ... /T<temp>/<t>s/attempt<n>/  flats  (CALTYPE FLAT)

each attempt holding a config file (``configFile.txt`` or ``config.txt``), a temperature log
(``temperatureLog.csv``, one row per frame keyed by ``FrameNum``) and ``frames/*.raw`` (headerless
little-endian ``uint16`` frames, ``uint8`` when BIT_DEPTH <= 8, shape (HEIGHT, WIDTH)).

The keyword names are those of the FITS index (``fits_index.csv``) the camera team's tools read; the
store coordinates are the same names in lower case.
"""

from __future__ import annotations

HEIGHT = 2048
WIDTH = 2048
BIT_DEPTH = 16
SEARCH_DEPTH = 6  # directory levels below a section root searched for attempts

# ---- sections ------------------------------------------------------------------------------------
SECTIONS = {"TestSection1": "BIAS", "TestSection2": "DARK", "TestSection3": "FLAT"}
CALTYPES = ("BIAS", "DARK", "FLAT")

# ---- files of an attempt (names matched case-insensitively, first match wins) -----------------------
CONFIG_NAMES = ("configFile.txt", "config.txt")
LOG_NAMES = ("temperatureLog.csv",)
FRAMES_DIR = "frames"
RAW_SUFFIX = ".raw"

# ---- temperature log -> keyword ------------------------------------------------------------------
US_PER_S = 1e6  # ExpTime and RealExpTime are logged in microseconds

# log column -> (keyword, divisor to the keyword's unit); None: kept as text. (value / 1e6 is the correctly
# rounded seconds: 10 us -> 1e-05 s, where value * 1e-6 gives 9.999999999999999e-06.) Columns are matched
# after lower-casing and dropping everything but letters and digits ("CCD_Temp" == "ccdtemp"); when
# several columns map to one keyword the first listed here wins (Temperature before its variants).
LOG_COLUMNS: dict[str, tuple[str, float | None]] = {
    "FrameNum": ("FRAMENUM", 1.0),
    "TimeStamp": ("TIMESTAMP", None),
    "ExtTemperature": ("EQTEMP", 1.0),
    "ExpTime": ("EXPTIME", US_PER_S),
    "RealExpTime": ("REXPTIME", US_PER_S),
    "ExpGain": ("GAIN", 1.0),
    "Temperature": ("TEMP", 1.0),
    "CCDTemp": ("TEMP", 1.0),
    "CCD_Temp": ("TEMP", 1.0),
    "CCDTemperature": ("TEMP", 1.0),
    "ChipTemp": ("TEMP", 1.0),
    "InitialTemp": ("TEMP_0", 1.0),
    "DeltaTemperature": ("DELTMP", 1.0),
    "PowerCons": ("POWCONS", 1.0),
}  # fmt: skip
FRAME_COLUMN = "FrameNum"

# keywords from the log, then those from the file name / folders / config / tree
LOG_KEYWORDS = ("FRAMENUM", "TIMESTAMP", "EQTEMP", "EXPTIME", "REXPTIME", "GAIN", "TEMP", "TEMP_0", "DELTMP",
                "POWCONS")  # fmt: skip
KEYWORDS = (*LOG_KEYWORDS, "FILETEMP", "CALTYPE", "FILTER", "ATTEMPT")
TEXT_KEYWORDS = ("TIMESTAMP", "CALTYPE", "FILTER")
INT_KEYWORDS = ("FRAMENUM", "ATTEMPT")
NO_FILTER = "none"

# ``fits_index.csv``: one row per frame
INDEX_COLUMNS = ("PATH", "CALTYPE", "FRAMENUM", "TIMESTAMP", "EQTEMP", "EXPTIME", "REXPTIME", "GAIN", "TEMP",
                 "TEMP_0", "DELTMP", "POWCONS", "FILETEMP", "FILTER", "ATTEMPT")  # fmt: skip

UNITS = {"EXPTIME": "s", "REXPTIME": "s", "TEMP": "deg_C", "TEMP_0": "deg_C", "DELTMP": "deg_C", "EQTEMP": "deg_C",
         "FILETEMP": "deg_C"}  # fmt: skip
DESCRIPTIONS = {
    "FRAMENUM": "frame number (file name; the temperature-log row)",
    "TIMESTAMP": "time stamp as written in the temperature log",
    "EQTEMP": "external (equipment) temperature",
    "EXPTIME": "commanded exposure time",
    "REXPTIME": "real exposure time",
    "GAIN": "camera gain setting (ExpGain)",
    "TEMP": "detector temperature",
    "TEMP_0": "detector temperature at the start of the attempt",
    "DELTMP": "temperature change logged by the camera",
    "POWCONS": "power consumption",
    "FILETEMP": "temperature set point from the file or folder name (T<value>)",
    "CALTYPE": "BIAS, DARK or FLAT (the test section)",
    "FILTER": "filter of the config file, 'none' if unknown",
    "ATTEMPT": "attempt number (attempt<n> folder), -1 if none",
    "PATH": "the raw file",
}
