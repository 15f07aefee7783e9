"""A plain CCD/CMOS imager (``pipeline: ccd``): header keywords, frame types and FITS sections, as data.

What the reader turns into frame coordinates (:data:`KEYWORDS`), how IMAGETYP values name the frame types
(:data:`IMAGETYP`: the spellings of IRAF, MaxIm DL, N.I.N.A. and ccdproc's tutorials), and the FITS
section notation of BIASSEC/TRIMSEC/DATASEC (:func:`parse_section`): 1-based, inclusive, x first, as IRAF
and ccdproc's ``slice_from_string(..., fits_convention=True)`` read it.
"""

from __future__ import annotations

import re

# frame coordinate -> header keyword (read from the image HDU, else the primary header)
KEYWORDS = {"exptime": "EXPTIME", "imagetyp": "IMAGETYP", "filter": "FILTER", "date_obs": "DATE-OBS"}
EXPTIME_FALLBACK = ("EXPOSURE", "EXPTIME")  # an exposure time under another common name
SECTION_KEYWORDS = ("BIASSEC", "TRIMSEC", "DATASEC")

# frame types and the IMAGETYP values (lower case, spaces and dashes removed) that name them; any other
# value (object, light, science...) or no IMAGETYP is a science frame
FRAME_TYPES = ("bias", "dark", "flat", "science")
IMAGETYP = {
    "bias": ("bias", "zero", "biasframe", "zeroframe"),
    "dark": ("dark", "darkframe", "darkcurrent"),
    "flat": ("flat", "flatfield", "flatframe", "domeflat", "skyflat", "twilightflat", "lampflat"),
}


def frame_type(imagetyp) -> str:
    """``bias``, ``dark``, ``flat`` or ``science`` for an IMAGETYP value (None: science)."""
    key = re.sub(r"[\s_-]", "", str(imagetyp or "")).lower()
    return next((kind for kind, names in IMAGETYP.items() if key in names), "science")


_RANGE = re.compile(r"^(?:(\*|:)|(\d+):(\d+))$")


def parse_section(text: str, shape: tuple[int, int] | None = None) -> tuple[slice, slice]:
    """``(rows, cols)`` 0-based slices of a FITS section ``[x0:x1,y0:y1]`` (1-based, inclusive; ``*`` or
    ``:`` a whole axis). ``shape``: the frame's ``(ny, nx)``, which the section must lie in. Raises
    ValueError saying what is wrong (reversed ranges, which flip the image, are refused)."""
    body = re.sub(r"\s", "", str(text))
    if not (body.startswith("[") and body.endswith("]")) or body.count(",") != 1:
        raise ValueError(f"a FITS section [x0:x1,y0:y1], got {text!r}")
    out = []
    for axis, part in zip(("x", "y"), body[1:-1].split(",")):
        m = _RANGE.match(part)
        if m is None:
            raise ValueError(f"a FITS section [x0:x1,y0:y1] (1-based, inclusive), got {text!r}")
        if m.group(1):
            out.append(slice(None))
            continue
        a, b = int(m.group(2)), int(m.group(3))
        if not 1 <= a <= b:
            raise ValueError(f"a FITS section of 1-based increasing ranges, got {axis} {a}:{b} in {text!r}")
        out.append(slice(a - 1, b))
    cols, rows = out
    if shape is not None:
        for s, n, axis in ((rows, shape[0], "y"), (cols, shape[1], "x")):
            if s.stop is not None and s.stop > n:
                raise ValueError(f"a section inside the frame ({n} pixels along {axis}), got {text!r}")
    return rows, cols


def section_size(text: str, shape: tuple[int, int]) -> tuple[int, int]:
    """``(ny, nx)`` of a section of a frame of ``shape``."""
    rows, cols = parse_section(text, shape)
    return len(range(*rows.indices(shape[0]))), len(range(*cols.indices(shape[1])))
