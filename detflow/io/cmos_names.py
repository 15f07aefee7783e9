"""CMOS raw file names: the frame number, exposure time, set point and attempt a name carries.

The camera software packs them into one name, ``BiasT0_exp0.012sAt0f1.raw`` (set point 0 C, 0.012 s,
attempt 0, frame 1); other tools write ``frame12.raw`` or ``f7_exp0.5s_T-10.0.raw``. A name is read as a
sequence of fields anywhere in its stem, left to right, with or without separators between them:

    T<temp>[C|degC]       set point, deg C: ``T0``, ``T-10``, ``T_25.5``, ``T+5C`` (a capital T, not
                          after a digit: the T of an ISO time stamp ``20240301T120000`` is no set point)
    exp[_]<t><s|ms|us>    exposure time: ``exp0.012s``, ``exp_250ms``, ``exp1e-05s``
    At<n> | attempt[_]<n> attempt number (``At`` with a capital A)
    f[_]<N> | frame[_]<N> frame number (the FrameNum of the temperature log)

When a field occurs more than once, the last occurrence counts (the camera writes the frame number
last, just before ``.raw``). Only the frame number is required.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DetflowInputError

UNITS = {"s": 1.0, "ms": 1e3, "us": 1e6}  # divisors to seconds (250 / 1e3, not 250 * 1e-3: correctly rounded)
_FIELD = re.compile(
    r"(?P<frame>(?i:frame|f)_?(?P<fn>\d+))"
    r"|(?P<exp>(?i:exp)_?(?P<ev>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)(?P<eu>(?i:ms|us|s)))"
    r"|(?P<att>(?:A[Tt]|(?i:attempt)_?)(?P<an>\d+))"
    r"|(?P<temp>(?<!\d)T_?(?P<tv>[-+]?\d+(?:\.\d+)?)(?:degC|C)?)"
)  # fmt: skip
EXPECTED = "a frame number in the name: f<N> or frame<N> (e.g. frame12.raw, BiasT0_exp0.012sAt0f1.raw)"


@dataclass(frozen=True)
class NameFields:
    """What a raw file name says (None / NaN / -1 where it says nothing)."""

    frame: int | None
    exptime: float  # s
    temperature: float  # deg C
    attempt: int


def parse_name(path: str | Path) -> NameFields:
    """The fields of a raw file name (see the module docstring); nothing is required here."""
    stem = Path(path).name
    if stem.lower().endswith(".raw"):
        stem = stem[:-4]
    frame, exptime, temperature, attempt = None, math.nan, math.nan, -1
    for m in _FIELD.finditer(stem):
        if m["frame"]:
            frame = int(m["fn"])
        elif m["exp"]:
            exptime = float(m["ev"]) / UNITS[m["eu"].lower()]
        elif m["att"]:
            attempt = int(m["an"])
        else:
            temperature = float(m["tv"])
    return NameFields(frame, exptime, temperature, attempt)


def frame_number(path: str | Path) -> int:
    """The frame number of a raw file name; a :class:`DetflowInputError` if it carries none."""
    n = parse_name(path).frame
    if n is None:
        raise DetflowInputError(path, "file name", EXPECTED, Path(path).name)
    return n
