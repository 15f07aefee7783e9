"""Frame times of the CMOS analyses: time stamps in the formats cameras write, parsed to UTC, and the time axis
(``t_days``) of a section (formats: :mod:`detflow.calib.cmos_analysis`)."""

from __future__ import annotations

import datetime as _dt
import math
import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ...schema import FRAME
from .columns import F8
from .frames import _src

# ---- time stamps -----------------------------------------------------------------------------------------------
_MISSING = {"", "nan", "nat", "none", "null", "na", "n/a", "-"}
_COMPACT = re.compile(r"^(\d{4})(\d{2})(\d{2})[T_ -]?(\d{2})(\d{2})(\d{2})(?:[.,](\d+))?$")
_TIME_ONLY = re.compile(r"^\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?$")
_DEC_COMMA = re.compile(r"(\d{1,2}:\d{2}:\d{2}),(\d+)")
_NUMBER = re.compile(r"^[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?$")
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?$")


def _naive(ts) -> pd.Timestamp:
    if ts is pd.NaT or ts is None:
        return pd.NaT
    ts = pd.Timestamp(ts)
    return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts


def _from_number(x: float) -> pd.Timestamp:
    if not math.isfinite(x):
        return pd.NaT
    unit = "s" if abs(x) < 1e11 else "ms" if abs(x) < 1e14 else "us" if abs(x) < 1e17 else "ns"
    try:
        return pd.Timestamp(x, unit=unit)
    except (ValueError, OverflowError):
        return pd.NaT


def _one_time(v: Any, dayfirst: bool) -> pd.Timestamp:
    if v is None:
        return pd.NaT
    if isinstance(v, (pd.Timestamp, _dt.datetime, np.datetime64)):
        return _naive(v)
    if isinstance(v, bytes):
        v = v.decode(errors="replace")
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
        return _from_number(float(v))
    s = str(v).strip()
    if s.lower() in _MISSING:
        return pd.NaT
    m = _COMPACT.match(s)
    if m:
        s = f"{m[1]}-{m[2]}-{m[3]}T{m[4]}:{m[5]}:{m[6]}" + (f".{m[7]}" if m[7] else "")
    elif _NUMBER.match(s):
        return _from_number(float(s))
    s = _DEC_COMMA.sub(r"\1.\2", s)
    if _TIME_ONLY.match(s):
        s = "1970-01-01 " + s.replace(",", ".")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _naive(pd.to_datetime(s, dayfirst=dayfirst))
    except (ValueError, TypeError, OverflowError):
        return pd.NaT


def parse_timestamps(values: Sequence | np.ndarray, *, dayfirst: bool = False) -> np.ndarray:
    """Time stamps to ``datetime64[ns]`` (naive UTC), NaT where unparseable (formats:
    :mod:`detflow.calib.cmos_analysis`).

    Ambiguous dates such as ``01/03/2024`` are read month first unless ``dayfirst``."""
    arr = np.asarray(values, dtype=object).ravel()
    out = np.full(arr.shape, np.datetime64("NaT"), dtype="datetime64[ns]")
    text = np.array([str(v).strip() if isinstance(v, str) else "" for v in arr], dtype=object)
    iso = np.array([bool(_ISO.match(s)) for s in text], dtype=bool)
    if iso.any():  # the common case, vectorised
        out[iso] = pd.to_datetime(pd.Series(text[iso]), format="ISO8601", errors="coerce").to_numpy("datetime64[ns]")
    cache: dict = {}
    for i in np.flatnonzero(~iso | np.isnat(out)):
        v = arr[i]
        key = (type(v).__name__, str(v))
        if key not in cache:
            ts = _one_time(v, dayfirst)
            cache[key] = np.datetime64("NaT") if ts is pd.NaT else np.datetime64(ts.to_datetime64(), "ns")
        out[i] = cache[key]
    return out


def frame_times(ds: xr.Dataset, origin: Any = None, *, dayfirst: bool = False, warn: bool = True) -> pd.DataFrame:
    """Per frame (dataset order): ``time`` (datetime64, NaT if unparseable), ``t_days`` (days since
    ``origin``, default the earliest parsed time) and ``time_source`` ("timestamp", "interpolated" in
    frame order between parsed neighbours, or "frame_order" when no stamp parses: ``t_days`` is then the
    frame position). ``attrs``: ``time_unit`` ("day" or "frame") and ``origin``."""
    n = int(ds.sizes[FRAME])
    raw = ds["timestamp"].values if "timestamp" in ds.variables else None
    times = parse_timestamps(raw, dayfirst=dayfirst) if raw is not None else np.full(n, np.datetime64("NaT"), "M8[ns]")
    ok = ~np.isnat(times)
    pos = np.arange(n, dtype=F8)
    if ok.any():
        o = np.datetime64(pd.Timestamp(origin).to_datetime64(), "ns") if origin is not None else times[ok].min()
        t = np.full(n, np.nan)
        t[ok] = (times[ok] - o) / np.timedelta64(1, "D")
        source = np.where(ok, "timestamp", "interpolated").astype(object)
        if not ok.all():
            t[~ok] = np.interp(pos[~ok], pos[ok], t[ok])
            if warn:
                bad = raw[~ok][:3]
                warnings.warn(f"{_src(ds)}: {int((~ok).sum())} of {n} time stamps do not parse (e.g. {list(bad)}): "
                              "their times are interpolated in frame order", stacklevel=2)  # fmt: skip
        unit, origin_out = "day", pd.Timestamp(o)
    else:
        t, source, unit, origin_out = pos, np.full(n, "frame_order", dtype=object), "frame", None
        if warn and n:
            warnings.warn(f"{_src(ds)}: no time stamp parses: frame order is the time axis (t_days = frame "
                          "position)", stacklevel=2)  # fmt: skip
    df = pd.DataFrame({"time": pd.to_datetime(times), "t_days": t, "time_source": source})
    df.attrs.update(time_unit=unit, origin=origin_out)
    return df


def _origin(*datasets: xr.Dataset | None, dayfirst: bool = False) -> pd.Timestamp | None:
    found = []
    for ds in datasets:
        if ds is not None and "timestamp" in ds.variables:
            t = parse_timestamps(ds["timestamp"].values, dayfirst=dayfirst)
            if (~np.isnat(t)).any():
                found.append(t[~np.isnat(t)].min())
    return pd.Timestamp(min(found)) if found else None
