"""CMOS calibration-data analyses: per-frame trends, new structures in the flats, flat degradation.

Inputs are the section datasets :func:`detflow.io.cmos_raw.open_cmos_section` returns: ``data`` (frame,
y, x) float32 DN with the whole frame axis in every dask chunk, and the frame coordinates ``temp``,
``filetemp``, ``exptime``, ``timestamp``, ``filter``, ``path`` (``caltype``, ``frame``); missing ones
are tolerated (no time stamps: frame order; no ``filter``: "none"; no ``temp``: ``filetemp``). Integer
data (``open_cmos_section(..., scaled=False)``, a length-1 ``read`` axis) are divided by ``data_scale``.

What is lazy and what is computed
---------------------------------
Per-pixel work is a dask graph over pixel tiles with the frame axis whole (``xr.apply_ufunc(...,
dask="parallelized")``). Whole-frame scalars (the mean, the saturation count, the robust centre and
sigma of a difference image) are computed first, in one pass that also gathers a fixed pixel sample
(below). :func:`degradation_maps` returns its maps lazily; the ``*_analysis`` functions compute the
2-D maps once (the tables are derived from them) and keep the (frame, y, x) cubes (``deviation``,
``outlier_class`` / ``flagged``) lazy in ``result.cube``.

Pixel sample: medians, percentiles, sigma-clipped statistics and robust sigmas of a frame need the
whole frame, which the tile layout (all frames of a tile per chunk) cannot stream. They are computed
on a fixed pseudo-random subset of rows x columns (``sample_pixels``, 65536 by default; every pixel
when the frame is smaller; random rows and columns, so that no column or row pattern aliases), which
costs ``frames * sample_pixels * 4`` bytes. ``n``, ``mean``, ``std`` (ddof 0), ``min``, ``max`` and the
saturation counts use every pixel.

Time: :func:`parse_timestamps` reads ISO 8601 (the simulator's ``2024-03-01T08:00:00.000``), with or
without ``T``, a decimal comma in the seconds, a UTC offset (converted to UTC), ``YYYYMMDD[_T]HHMMSS``,
Unix seconds (or ms/us/ns by magnitude) and a time of day alone (dated 1970-01-01); anything else is
NaT. :func:`frame_times` gives ``t_days`` since an origin (the earliest time of the analysis); frames
whose stamp does not parse get a time interpolated in frame order; if none parses, ``t_days`` is the
frame position and the tables say ``time_unit = "frame"`` (slopes "per day" are then per frame).

1. :func:`structure_analysis`: per-frame statistics of each section (:func:`frame_statistics`) and
   linear trends of them against temperature and time (:func:`fit_trends`, per section, filter and
   exposure time: separate fits against T and against t, and a joint fit when T and t are not
   collinear); then new structures in the flats: each flat, divided by its mean, minus a reference
   (default: the median of the ``n_ref`` earliest flats of its (filter, temperature, exposure) group,
   which are not tested; or a given map, divided by its mean), centred on its median; pixels with
   ``|d| > nsigma * sigma`` (``sigma``: 1.4826 MAD or the astropy sigma-clipped std of the frame's
   difference) are flagged. Pixels flagged in at least ``min_frames`` frames are labelled into
   connected structures (scipy.ndimage.label, 8-connected by default); a structure's ``first_*`` is the
   frame by which ``max(2, first_fraction * size)`` of its pixels (all, if fewer) had been flagged at
   least once (a growing structure is seen when it appears, a lone noise hit in its footprint does not
   date it); ``first_any_t_days`` is when its first pixel was.
2. :func:`degradation_analysis`: flats with a saturated pixel (stored value >= ``saturation``; the
   *stored* integers, before division by data_scale, e.g. 60000 of 65520 for 12-bit data left-shifted
   in 16 bits; ``saturation_units="dn"`` for DN) are discarded and listed; optional dark subtraction
   (the dark frames averaged per (temperature, exposure) group; each flat takes the group nearest in
   temperature, then in exposure); normalisation (mean or median); per (filter, temperature, exposure)
   group (temperatures clustered within ``temp_tol``, on the set point ``filetemp`` by default: the
   exposure and the filter change the per-pixel response, so only like flats are compared) each frame
   is compared with the earliest frame (``n_ref`` earliest) of its group: ``ratio - 1`` (default) or
   difference, centred on its median (a frame-wide change is not a structure); outliers beyond
   ``nsigma`` robust sigma. Per pixel and group, over the tested frames in time order:

   - ``transient``: flagged once;
   - ``growing``: flagged at least twice and the deviation keeps growing after the first flag: over
     the frames from the first flag on (at least ``min_growth_frames``), the weighted (1 / sigma^2 of
     each frame) slope of ``sign * deviation`` against time is above ``growth_sigma`` times its error
     (the error from the frames' sigma, inflated by sqrt(chi2 / dof) when the scatter is larger);
   - ``persistent``: flagged at least twice, in at least ``persist_frac`` (0.5) of the frames since its
     first flag (a step that stays: dust, a settled deposit);
   - ``intermittent``: flagged at least twice, less often than that.

   Class codes 0..4 are :data:`CLASSES` (``none`` .. ``growing``, in increasing severity).
   :func:`write_degradation_report` writes the tables and the plots of :func:`plot_degradation`.

Table columns are the ``*_COLUMNS`` constants below; CSVs are written with exactly those columns.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import dask
import numpy as np
import pandas as pd
import xarray as xr
from astropy.stats import sigma_clipped_stats
from scipy import ndimage

from ..errors import DetflowInputError, OutputExistsError
from ..schema import FRAME, X, Y, sanitize_attrs

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "CLASSES", "CLASS_CODE", "DEGRADATION_FRAME_COLUMNS", "FRAME_STATS_COLUMNS", "GROUP_COLUMNS", "PIXEL_COLUMNS",
    "SATURATED_COLUMNS", "STRUCTURE_COLUMNS", "STRUCTURE_FRAME_COLUMNS", "TREND_COLUMNS", "DegradationResult",
    "StructureResult", "degradation_analysis", "degradation_maps", "fit_trends", "frame_statistics",
    "frame_times", "parse_timestamps", "plot_degradation", "plot_structures", "plot_trends", "structure_analysis",
    "temperature_clusters", "write_degradation_report", "write_structure_report",
]  # fmt: skip

CLASSES = ("none", "transient", "intermittent", "persistent", "growing")
CLASS_CODE = {c: i for i, c in enumerate(CLASSES)}
PERCENTILES = (1.0, 5.0, 25.0, 75.0, 95.0, 99.0)
TREND_STATS = ("mean", "median", "std", "sc_std")
SAMPLE_PIXELS = 2**16
MAD_SIGMA = 1.482602218505602
_CLASSIFY_ELEMENTS = 2**21  # pixels x frames per classification pass (float64 temporaries of 16 MiB)
F4, F8 = np.float32, np.float64


def _pcol(q: float) -> str:
    return f"p{q:g}"


META_COLUMNS = ("frame", "path", "timestamp", "time", "t_days", "time_source", "temp", "filetemp", "exptime",
                "filter")  # fmt: skip
FRAME_STATS_COLUMNS = ("section", *META_COLUMNS, "n_pixels", "mean", "std", "min", "max", "median",
                       *(_pcol(q) for q in PERCENTILES), "sc_mean", "sc_median", "sc_std", "n_sample")  # fmt: skip
"""Columns of :func:`frame_statistics` (with the default percentiles): one row per frame."""
TREND_COLUMNS = ("section", "filter", "exptime", "stat", "n", "temp_min", "temp_max", "days_span", "time_unit",
                 "slope_per_degC", "slope_per_degC_err", "intercept_0C", "rms_temp", "slope_per_day",
                 "slope_per_day_err", "intercept_t0", "rms_time", "corr_temp_time", "joint_slope_per_degC",
                 "joint_slope_per_degC_err", "joint_slope_per_day", "joint_slope_per_day_err")  # fmt: skip
"""Columns of :func:`fit_trends`: one row per (section, filter, exposure time, statistic)."""
_FLAT_COLUMNS = (*META_COLUMNS, "group", "is_reference", "norm", "centre", "sigma", "threshold")
STRUCTURE_FRAME_COLUMNS = (*_FLAT_COLUMNS, "n_flagged", "n_positive", "n_negative")
"""Columns of ``StructureResult.flat_frames``: one row per flat."""
STRUCTURE_COLUMNS = ("label", "size", "centroid_y", "centroid_x", "y0", "y1", "x0", "x1", "first_frame",
                     "first_path", "first_time", "first_t_days", "first_any_t_days", "max_flag_count",
                     "mean_flag_count", "mean_dev", "peak_dev")  # fmt: skip
"""Columns of ``StructureResult.structures``: one row per connected structure (y1, x1 inclusive)."""
DEGRADATION_FRAME_COLUMNS = (*_FLAT_COLUMNS, "dark_temp", "dark_exptime", "n_outliers",
                             *(f"n_{c}" for c in CLASSES[1:]), "mean_dev", "mean_abs_dev")  # fmt: skip
"""Columns of ``DegradationResult.frames``: one row per analysed (unsaturated) flat."""
PIXEL_COLUMNS = ("y", "x", "group", "filter", "temp", "exptime", "class", "n_flagged", "n_tested", "n_since_first",
                 "flag_fraction", "first_frame", "first_path", "first_time", "first_t_days", "mean_dev", "peak_dev",
                 "last_dev", "trend_per_day", "trend_err", "growth_z")  # fmt: skip
"""Columns of ``DegradationResult.pixels``: one row per (group, outlier pixel)."""
SATURATED_COLUMNS = ("frame", "path", "timestamp", "filter", "temp", "exptime", "max_stored", "max_dn",
                     "n_saturated", "saturation")  # fmt: skip
"""Columns of ``DegradationResult.saturated``: one row per discarded flat."""
GROUP_COLUMNS = ("group", "filter", "temp", "exptime", "n_frames", "n_reference", "reference_frames",
                 "reference_path", "t_first_days", "t_last_days", *(f"n_{c}" for c in CLASSES[1:]))  # fmt: skip
"""Columns of ``DegradationResult.groups``: one row per (filter, temperature, exposure) group."""

# per-pixel quantities of the degradation tile function (one float32 stack, unpacked into the maps)
_Q = ("class", "n_flagged", "n_since_first", "first_pos", "mean_dev", "peak_dev", "last_dev", "trend", "trend_err",
      "growth_z")  # fmt: skip
_QI = {q: i for i, q in enumerate(_Q)}


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
    """Time stamps to ``datetime64[ns]`` (naive UTC), NaT where unparseable (formats: module docstring).

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


# ---- input ----------------------------------------------------------------------------------------------------
def _src(ds: Any) -> str:
    if isinstance(ds, xr.Dataset):
        return str(ds.encoding.get("source") or ds.attrs.get("source") or ds.attrs.get("section_root") or "<dataset>")
    return "<input>"


def _dn(ds: Any, name: str) -> tuple[xr.DataArray, float]:
    """``data`` as float32 DN (frame, y, x), the frame axis one chunk; and data_scale (stored counts per DN)."""
    if not isinstance(ds, xr.Dataset) or "data" not in ds:
        raise DetflowInputError(_src(ds), name, "a CMOS section dataset with a 'data' variable (open_cmos_section)",
                                type(ds).__name__)  # fmt: skip
    data = ds["data"]
    if "read" in data.dims:
        if data.sizes["read"] != 1:
            raise DetflowInputError(_src(ds), f"{name} read axis", "length 1", data.sizes["read"])
        data = data.isel(read=0, drop=True)
    if set(data.dims) != {FRAME, Y, X}:
        raise DetflowInputError(_src(ds), f"{name} data dims", f"({FRAME}, {Y}, {X})", data.dims)
    if data.sizes[FRAME] == 0:
        raise DetflowInputError(_src(ds), name, "at least one frame", 0)
    data = data.transpose(FRAME, Y, X)
    scale = data.attrs.get("data_scale", ds.attrs.get("data_scale", 1))
    try:
        scale = float(scale)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError
    except (TypeError, ValueError):
        raise DetflowInputError(_src(ds), "data_scale", "a positive number", scale) from None
    if np.issubdtype(data.dtype, np.integer):
        data = data.astype(F4) / F4(scale)  # stored counts -> DN
        data.attrs = {k: v for k, v in data.attrs.items() if k not in ("scale_factor", "add_offset")}  # unpacked
    elif data.dtype != F4:
        data = data.astype(F4)
    if data.chunks is not None and len(data.chunks[0]) > 1:
        data = data.chunk({FRAME: -1})
    return data, scale


def _coord(ds: xr.Dataset, name: str, default: Any, dtype=None) -> np.ndarray:
    n = ds.sizes[FRAME]
    if name in ds.variables and ds[name].dims == (FRAME,):
        v = np.asarray(ds[name].values)
    else:
        v = np.full(n, default)
    return v.astype(dtype) if dtype is not None else v


def _text(values: np.ndarray) -> np.ndarray:
    """Strings (any numpy string dtype, StringDType included) as an object array of str."""
    return np.array([str(v) for v in np.asarray(values).ravel()], dtype=object)


def _meta(ds: xr.Dataset, times: pd.DataFrame) -> pd.DataFrame:
    temp = _coord(ds, "temp", np.nan, F8)
    filetemp = _coord(ds, "filetemp", np.nan, F8)
    filt = np.array([v if v not in ("", "nan") else "none" for v in _text(_coord(ds, "filter", "none"))], object)
    return pd.DataFrame({
        "frame": np.asarray(ds[FRAME].values), "path": _text(_coord(ds, "path", "")),
        "timestamp": _text(_coord(ds, "timestamp", "")), "time": times["time"].to_numpy(),
        "t_days": times["t_days"].to_numpy(), "time_source": times["time_source"].to_numpy(), "temp": temp,
        "filetemp": filetemp, "exptime": _coord(ds, "exptime", np.nan, F8), "filter": filt,
    })  # fmt: skip


def _section_name(ds: xr.Dataset, default: str) -> str:
    if "caltype" in ds.variables:
        vals = {str(v) for v in np.asarray(ds["caltype"].values).ravel()}
        if len(vals) == 1:
            return vals.pop().lower()
    return str(ds.attrs.get("caltype", default)).lower()


def _sample_index(h: int, w: int, n: int | None) -> tuple:
    """A fixed pseudo-random set of rows and columns (their outer product: ~n pixels); all when n >= h*w."""
    if n is None or h * w <= n:
        return slice(None), slice(None)
    ny = min(h, max(1, round(math.sqrt(n * h / w))))
    nx = min(w, max(1, n // ny))
    rng = np.random.default_rng(20240301)
    return np.sort(rng.choice(h, ny, replace=False)), np.sort(rng.choice(w, nx, replace=False))


def _frame_pass(data: xr.DataArray, sample_pixels: int | None, sat_dn: float | None = None) -> dict[str, np.ndarray]:
    """Exact per-frame reductions over every pixel, and the pixel sample (frame, ny, nx): one dask compute."""
    yi, xi = _sample_index(data.sizes[Y], data.sizes[X], sample_pixels)
    f8 = data.astype(F8)
    lazy = {"count": data.count((Y, X)), "mean": f8.mean((Y, X)), "std": f8.std((Y, X)), "min": data.min((Y, X)),
            "max": data.max((Y, X)), "sample": data.isel({Y: yi, X: xi})}  # fmt: skip
    if sat_dn is not None:
        lazy["n_sat"] = (data >= F4(sat_dn)).sum((Y, X))
    (vals,) = dask.compute({k: v.data for k, v in lazy.items()})
    out = {k: np.asarray(v) for k, v in vals.items()}
    out["yi"], out["xi"] = yi, xi
    return out


# ---- per-frame statistics and trends -------------------------------------------------------------------------
def _stats_table(meta: pd.DataFrame, fp: dict, section: str, percentiles: Sequence[float], sigma: float,
                 maxiters: int | None) -> pd.DataFrame:  # fmt: skip
    n = len(meta)
    s = fp["sample"].reshape(n, -1).astype(F8)
    df = meta.copy()
    df.insert(0, "section", section)
    df["n_pixels"] = fp["count"].astype(np.int64)
    for k in ("mean", "std", "min", "max"):
        df[k] = fp[k].astype(F8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        df["median"] = np.nanmedian(s, axis=1)
        for q in percentiles:
            df[_pcol(q)] = np.nanpercentile(s, q, axis=1)
        mean, median, std = sigma_clipped_stats(s, sigma=sigma, maxiters=maxiters, axis=1)
    df["sc_mean"], df["sc_median"], df["sc_std"] = np.asarray(mean, F8), np.asarray(median, F8), np.asarray(std, F8)
    df["n_sample"] = np.isfinite(s).sum(axis=1)
    return df


def frame_statistics(ds: xr.Dataset, *, percentiles: Sequence[float] = PERCENTILES, sigma: float = 3.0,
                     maxiters: int | None = 5, sample_pixels: int | None = SAMPLE_PIXELS, origin: Any = None,
                     section: str | None = None) -> pd.DataFrame:  # fmt: skip
    """One row per frame: :data:`FRAME_STATS_COLUMNS` (frame metadata; ``n_pixels``, ``mean``, ``std``,
    ``min``, ``max`` over every pixel; ``median``, ``p<q>``, and astropy ``sigma_clipped_stats``
    (``sigma``, ``maxiters``) ``sc_mean``/``sc_median``/``sc_std`` over the pixel sample). Computes."""
    data, _ = _dn(ds, "dataset")
    fp = _frame_pass(data, sample_pixels)
    times = frame_times(ds, origin)
    df = _stats_table(_meta(ds, times), fp, section or _section_name(ds, "section"), percentiles, sigma, maxiters)
    df.attrs.update(time_unit=times.attrs["time_unit"], sample_pixels=sample_pixels)
    return df


def _linfit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """OLS ``y = c + m x``: (m, m_err, c, rms); NaN where undetermined (errors need n >= 3)."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = len(x)
    if n < 2 or np.ptp(x) == 0:
        return (np.nan,) * 4
    xm = x.mean()
    sxx = ((x - xm) ** 2).sum()
    m = ((x - xm) * (y - y.mean())).sum() / sxx
    c = y.mean() - m * xm
    r = y - c - m * x
    s2 = (r**2).sum() / (n - 2) if n > 2 else np.nan
    return m, math.sqrt(s2 / sxx) if n > 2 else np.nan, c, math.sqrt(s2) if n > 2 else np.nan


def _jointfit(T: np.ndarray, t: np.ndarray, y: np.ndarray, max_corr: float) -> tuple[float, float, float, float]:
    ok = np.isfinite(T) & np.isfinite(t) & np.isfinite(y)
    T, t, y = T[ok], t[ok], y[ok]
    if len(y) < 4 or np.ptp(T) == 0 or np.ptp(t) == 0 or abs(np.corrcoef(T, t)[0, 1]) > max_corr:
        return (np.nan,) * 4
    A = np.column_stack([np.ones_like(T), T - T.mean(), t - t.mean()])
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    r = y - A @ coef
    cov = np.linalg.inv(A.T @ A) * (r @ r) / (len(y) - 3)
    return coef[1], math.sqrt(cov[1, 1]), coef[2], math.sqrt(cov[2, 2])


def fit_trends(stats: pd.DataFrame, columns: Sequence[str] = TREND_STATS,
               by: Sequence[str] = ("section", "filter", "exptime"), max_corr: float = 0.95) -> pd.DataFrame:  # fmt: skip
    """Linear trends of per-frame statistics (:func:`frame_statistics` rows): per group of ``by`` and
    statistic, ``stat = c + m T`` (T: ``temp``, else ``filetemp``; slope per deg C, ``intercept_0C``) and
    ``stat = c + m t`` (t: ``t_days``; slope per day, ``intercept_t0`` at the time origin) separately,
    each with its OLS standard error (from the residual scatter; NaN below 3 frames), and jointly
    ``c + mT T + mt t`` when |corr(T, t)| <= ``max_corr``. Columns: :data:`TREND_COLUMNS`."""
    if stats.empty:
        return pd.DataFrame(columns=list(TREND_COLUMNS))
    df = stats.copy()
    df["_T"] = df["temp"].where(np.isfinite(df["temp"]), df["filetemp"])
    df["_e"] = df["exptime"].round(9)
    keys = [k if k != "exptime" else "_e" for k in by]
    unit = stats.attrs.get("time_unit", "day")
    rows = []
    for key, part in df.groupby(keys, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        T, t = part["_T"].to_numpy(F8), part["t_days"].to_numpy(F8)
        corr = np.corrcoef(T, t)[0, 1] if len(T) > 2 and np.ptp(T) > 0 and np.ptp(t) > 0 else np.nan
        for c in columns:
            y = part[c].to_numpy(F8)
            mT, eT, cT, rT = _linfit(T, y)
            mt, et, ct, rt = _linfit(t, y)
            jT, jeT, jt, jet = _jointfit(T, t, y, max_corr)
            row = dict(zip([k if k != "_e" else "exptime" for k in keys], key))
            row.update(stat=c, n=int(np.isfinite(y).sum()), temp_min=np.nanmin(T) if np.isfinite(T).any() else np.nan,
                       temp_max=np.nanmax(T) if np.isfinite(T).any() else np.nan, days_span=float(np.ptp(t)),
                       time_unit=unit, slope_per_degC=mT, slope_per_degC_err=eT, intercept_0C=cT, rms_temp=rT,
                       slope_per_day=mt, slope_per_day_err=et, intercept_t0=ct, rms_time=rt, corr_temp_time=corr,
                       joint_slope_per_degC=jT, joint_slope_per_degC_err=jeT, joint_slope_per_day=jt,
                       joint_slope_per_day_err=jet)  # fmt: skip
            rows.append(row)
    out = pd.DataFrame(rows)
    for k in TREND_COLUMNS:
        if k not in out:
            out[k] = np.nan
    return out[list(TREND_COLUMNS)]


# ---- flats: groups, references, deviations ---------------------------------------------------------------------
def temperature_clusters(values: np.ndarray, tol: float) -> np.ndarray:
    """Cluster labels (0, 1, ... in increasing temperature; -1 for NaN): sorted values split where the gap
    to the previous exceeds ``tol``."""
    v = np.asarray(values, F8)
    out = np.full(v.shape, -1, np.int64)
    ok = np.flatnonzero(np.isfinite(v))
    if ok.size:
        order = ok[np.argsort(v[ok], kind="stable")]
        out[order] = np.concatenate([[0], np.cumsum(np.diff(v[order]) > tol)])
    return out


def _groups(meta: pd.DataFrame, temp_key: str, temp_tol: float) -> tuple[np.ndarray, pd.DataFrame]:
    """Group index per frame over (filter, temperature cluster, exposure) and a table of the groups."""
    tk = meta["filetemp"] if temp_key == "filetemp" else meta["temp"]
    other = meta["temp"] if temp_key == "filetemp" else meta["filetemp"]
    tval = tk.where(np.isfinite(tk), other).to_numpy(F8)
    tcl = temperature_clusters(tval, temp_tol)
    keys = pd.DataFrame({"filter": meta["filter"].to_numpy(), "tcl": tcl, "exptime": meta["exptime"].round(9)})
    rows = []
    gidx = np.empty(len(meta), np.int64)
    for g, (key, part) in enumerate(keys.groupby(["filter", "tcl", "exptime"], dropna=False, sort=True)):
        gidx[part.index.to_numpy()] = g
        ti = tval[part.index.to_numpy()]
        rows.append({"group": g, "filter": key[0], "temp": round(float(np.nanmean(ti)), 3) if np.isfinite(ti).any()
                     else np.nan, "exptime": float(key[2]), "n_frames": len(part)})  # fmt: skip
    return gidx, pd.DataFrame(rows)


def _robust(dev: np.ndarray, method: str, sigma_clip: float = 3.0) -> tuple[float, float]:
    d = dev[np.isfinite(dev)]
    if d.size == 0:
        return np.nan, np.nan
    if method == "mad":
        c = float(np.median(d))
        return c, float(MAD_SIGMA * np.median(np.abs(d - c)))
    _, med, std = sigma_clipped_stats(d, sigma=sigma_clip, maxiters=10)
    return float(med), float(std)


def _deviation_np(flat: np.ndarray, dark: np.ndarray | None, ref: np.ndarray | None, *, scale: np.ndarray,
                  dsel: np.ndarray | None, gidx: np.ndarray, ref_idx: list[np.ndarray] | None, compare: str,
                  ) -> np.ndarray:  # fmt: skip
    """(..., frame) flats -> deviations from their reference: ``x / ref - 1`` or ``x - ref`` with ``x = (flat
    - dark[dsel]) / scale``; ref: the given map (..., normalised) or, per group, the median of its reference
    frames (the frame itself when one)."""
    x = np.asarray(flat, dtype=F4)
    if dark is not None:
        x = x - np.asarray(dark, F4)[..., dsel]
    x = x / scale.astype(F4)

    def compare_to(xs: np.ndarray, r: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(r > 0, xs / r - 1, np.nan) if compare == "ratio" else xs - r

    if ref is not None:
        return compare_to(x, np.asarray(ref, F4)[..., None]).astype(F4, copy=False)
    dev = np.full_like(x, np.nan)
    for g, idx in enumerate(ref_idx):
        members = np.flatnonzero(gidx == g)
        if members.size == 0 or len(idx) == 0:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            rg = x[..., idx[0]] if len(idx) == 1 else np.nanmedian(x[..., idx], axis=-1)
        dev[..., members] = compare_to(x[..., members], rg[..., None])
    return dev


@dataclass
class _Flats:
    """Per-frame decisions made before the per-pixel graph."""

    data: xr.DataArray  # analysed (unsaturated) flats, DN
    table: pd.DataFrame  # per analysed flat: meta + group, is_reference, norm, centre, sigma, threshold (+ dark_*)
    groups: pd.DataFrame
    saturated: pd.DataFrame
    gidx: np.ndarray
    ref_idx: list[np.ndarray] | None
    ref_map: xr.DataArray | None
    dark: xr.DataArray | None  # (dgroup, y, x) masters
    dsel: np.ndarray | None
    test: np.ndarray  # tested frames (not reference frames)
    hist: tuple[np.ndarray, np.ndarray]  # counts, edges of the centred sample deviations of the tested frames
    fp: dict  # the frame pass of all input flats
    time_unit: str
    origin: pd.Timestamp | None
    scale: float  # data_scale
    params: dict


def _reference_map(reference: Any, data: xr.DataArray) -> xr.DataArray:
    ref = reference if isinstance(reference, xr.DataArray) else xr.DataArray(np.asarray(reference), dims=(Y, X))
    if set(ref.dims) != {Y, X} or ref.sizes[Y] != data.sizes[Y] or ref.sizes[X] != data.sizes[X]:
        raise DetflowInputError(None, "reference", f"a (y, x) map of shape {(data.sizes[Y], data.sizes[X])}",
                                dict(ref.sizes))  # fmt: skip
    ref = ref.transpose(Y, X).astype(F4).drop_vars([c for c in ref.coords], errors="ignore")
    mean = float(ref.mean())
    if not (math.isfinite(mean) and mean > 0):
        raise DetflowInputError(None, "reference", "a map with a positive finite mean", mean)
    ref = ref / F4(mean)
    if data.chunks is not None:
        ref = ref.chunk({Y: data.chunks[1], X: data.chunks[2]})
    return ref


def _prepare_flats(flat: xr.Dataset, dark: xr.Dataset | None, *, reference: Any, n_ref: int, normalise: str | None,
                   compare: str, temp_key: str, temp_tol: float, saturation: float | None, saturation_units: str,
                   max_saturated_fraction: float, sigma_method: str, nsigma: float, sample_pixels: int | None,
                   origin: Any, fp: dict | None = None) -> _Flats:  # fmt: skip
    if compare not in ("ratio", "difference"):
        raise DetflowInputError(None, "compare", "'ratio' or 'difference'", compare)
    if normalise not in ("mean", "median", None):
        raise DetflowInputError(None, "normalise", "'mean', 'median' or None", normalise)
    if sigma_method not in ("mad", "clipped"):
        raise DetflowInputError(None, "sigma_method", "'mad' or 'clipped'", sigma_method)
    if temp_key not in ("filetemp", "temp"):
        raise DetflowInputError(None, "temp_key", "'filetemp' or 'temp'", temp_key)
    if saturation_units not in ("stored", "dn"):
        raise DetflowInputError(None, "saturation_units", "'stored' or 'dn'", saturation_units)
    if int(n_ref) != n_ref or n_ref < 1:
        raise DetflowInputError(None, "n_ref", "a positive integer", n_ref)
    if "caltype" in flat.variables:
        bad = sorted({str(v) for v in np.asarray(flat["caltype"].values).ravel()} - {"FLAT"})
        if bad:
            raise DetflowInputError(_src(flat), "caltype", "FLAT frames only", bad)
    data, scale = _dn(flat, "flat")
    sat_dn = None if saturation is None else (float(saturation) / scale if saturation_units == "stored"
                                               else float(saturation))  # fmt: skip
    if fp is None or (sat_dn is not None and "n_sat" not in fp):
        fp = _frame_pass(data, sample_pixels, sat_dn)
    times = frame_times(flat, origin)
    meta = _meta(flat, times)
    # -- saturation
    if sat_dn is not None:
        sat = fp["n_sat"] > max_saturated_fraction * fp["count"]
        s = meta.loc[sat, ["frame", "path", "timestamp", "filter", "temp", "exptime"]].copy()
        s["max_stored"], s["max_dn"] = fp["max"][sat] * scale, fp["max"][sat].astype(F8)
        s["n_saturated"], s["saturation"] = fp["n_sat"][sat].astype(np.int64), float(saturation)
        saturated = s.reset_index(drop=True)[list(SATURATED_COLUMNS)]
    else:
        sat = np.zeros(len(meta), bool)
        saturated = pd.DataFrame(columns=list(SATURATED_COLUMNS))
    keep = np.flatnonzero(~sat)
    if keep.size == 0:
        raise DetflowInputError(_src(flat), "flat", "at least one unsaturated flat", f"{len(meta)} saturated")
    data = data.isel({FRAME: keep})
    meta = meta.iloc[keep].reset_index(drop=True)
    sample = fp["sample"][keep]
    means = fp["mean"][keep].astype(F8)
    nf = len(meta)
    gidx, groups = _groups(meta, temp_key, temp_tol)
    # -- darks: masters per (temperature, exposure) group, the nearest for each flat
    dstack = dsel = None
    dsample = None
    dmean = np.zeros(1)
    meta["dark_temp"] = meta["dark_exptime"] = np.nan
    if dark is not None:
        ddata, _ = _dn(dark, "dark")
        if (ddata.sizes[Y], ddata.sizes[X]) != (data.sizes[Y], data.sizes[X]):
            raise DetflowInputError(_src(dark), "dark frame shape", f"{(data.sizes[Y], data.sizes[X])} as the flats",
                                    (ddata.sizes[Y], ddata.sizes[X]))  # fmt: skip
        dfp = _frame_pass(ddata, sample_pixels)
        dmeta = _meta(dark, frame_times(dark, origin, warn=False))
        dg, dgroups = _groups(dmeta.assign(filter="none"), temp_key, temp_tol)
        masters, dsample_l, dmean_l = [], [], []
        for g in range(len(dgroups)):
            idx = np.flatnonzero(dg == g)
            masters.append(ddata.isel({FRAME: idx}).mean(FRAME))
            dsample_l.append(np.nanmean(dfp["sample"][idx], axis=0))
            dmean_l.append(float(np.mean(dfp["mean"][idx])))
        dstack = xr.concat(masters, dim="dgroup").transpose(Y, X, "dgroup")
        if data.chunks is not None:
            dstack = dstack.chunk({Y: data.chunks[1], X: data.chunks[2], "dgroup": -1})
        dsample, dmean = np.stack(dsample_l, axis=-1), np.asarray(dmean_l)
        dT, dt = dgroups["temp"].to_numpy(F8), dgroups["exptime"].to_numpy(F8)
        tk, other = ("filetemp", "temp") if temp_key == "filetemp" else ("temp", "filetemp")
        fT = meta[tk].where(np.isfinite(meta[tk]), meta[other]).to_numpy(F8)
        dsel = np.empty(nf, np.int64)
        for i in range(nf):  # nearest in temperature (to within temp_tol), then in exposure
            kT = np.round(np.abs(np.nan_to_num(dT - fT[i], nan=1e9)) / max(temp_tol, 1e-9))
            ke = np.abs(np.nan_to_num(dt - meta["exptime"].iloc[i], nan=1e9))
            dsel[i] = np.lexsort((ke, kT))[0]
        meta["dark_temp"], meta["dark_exptime"] = dT[dsel], dt[dsel]
    # -- normalisation
    s_xy = np.moveaxis(sample, 0, -1).astype(F4)  # (ny, nx, frame)
    if normalise == "mean":
        norm = means - (dmean[dsel] if dsel is not None else 0.0)
    elif normalise == "median":
        sub = s_xy - (dsample[..., dsel] if dsel is not None else 0)
        norm = np.nanmedian(sub.reshape(-1, nf), axis=0).astype(F8)
    else:
        norm = np.ones(nf)
    badn = np.flatnonzero(~(np.isfinite(norm) & (norm > 0)))
    if badn.size:
        raise DetflowInputError(meta["path"].iloc[badn[0]] or _src(flat), f"normalise={normalise!r}",
                                "a positive frame level (after the dark subtraction)", norm[badn[0]])  # fmt: skip
    # -- references
    ref_map = ref_idx = None
    is_ref = np.zeros(nf, bool)
    if reference is not None:
        ref_map = _reference_map(reference, data)
        ref_sample = np.asarray(ref_map.values)[np.ix_(*_ix(fp, data))]
    else:
        ref_idx = []
        for g in range(len(groups)):
            members = np.flatnonzero(gidx == g)
            order = members[np.lexsort((members, meta["t_days"].to_numpy()[members]))]
            ref_idx.append(order[: min(int(n_ref), len(order))])
            is_ref[ref_idx[-1]] = True
        ref_sample = None
    test = ~is_ref
    # -- the robust centre and sigma of each tested frame's deviation, on the pixel sample
    sdev = _deviation_np(s_xy, dsample, ref_sample, scale=norm, dsel=dsel, gidx=gidx, ref_idx=ref_idx,
                         compare=compare).reshape(-1, nf)  # fmt: skip
    centre, sigma = np.full(nf, np.nan), np.full(nf, np.nan)
    for i in np.flatnonzero(test):
        centre[i], sigma[i] = _robust(sdev[:, i], sigma_method)
    meta["group"], meta["is_reference"], meta["norm"] = gidx, is_ref, norm
    meta["centre"], meta["sigma"], meta["threshold"] = centre, sigma, nsigma * sigma
    # histogram of the centred deviations of the tested frames (for the plots)
    d = (sdev[:, test] - centre[test]).ravel()
    d = d[np.isfinite(d)]
    med_sig = float(np.nanmedian(sigma[test])) if test.any() else np.nan
    half = max(float(np.max(np.abs(d))) if d.size else 1.0, 8 * med_sig if math.isfinite(med_sig) else 0.0, 1e-9)
    edges = np.linspace(-half, half, 202)
    hist = (np.histogram(d, edges)[0], edges)
    # groups table (reference frames)
    groups["n_reference"] = [len(r) for r in ref_idx] if ref_idx is not None else 0
    groups["reference_frames"] = [";".join(str(v) for v in meta["frame"].to_numpy()[r]) for r in ref_idx] \
        if ref_idx is not None else "reference map"  # fmt: skip
    groups["reference_path"] = [str(meta["path"].iloc[r[0]]) if len(r) else "" for r in ref_idx] \
        if ref_idx is not None else ""  # fmt: skip
    t = meta["t_days"].to_numpy()
    groups["t_first_days"] = [float(t[gidx == g].min()) for g in range(len(groups))]
    groups["t_last_days"] = [float(t[gidx == g].max()) for g in range(len(groups))]
    params = {"n_ref": int(n_ref), "normalise": normalise, "compare": compare, "temp_key": temp_key,
              "temp_tol": temp_tol, "saturation": saturation, "saturation_units": saturation_units,
              "data_scale": scale, "max_saturated_fraction": max_saturated_fraction, "sigma_method": sigma_method,
              "nsigma": nsigma, "sample_pixels": sample_pixels, "dark": dark is not None,
              "reference": "map" if reference is not None else f"median of the earliest {n_ref} per group"}
    return _Flats(data, meta, groups, saturated, gidx, ref_idx, ref_map, dstack, dsel, test, hist, fp,
                  times.attrs["time_unit"], times.attrs["origin"] if origin is None else pd.Timestamp(origin), scale,
                  params)  # fmt: skip


def _ix(fp: dict, data: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    yi, xi = fp["yi"], fp["xi"]
    return (np.arange(data.sizes[Y]) if isinstance(yi, slice) else yi,
            np.arange(data.sizes[X]) if isinstance(xi, slice) else xi)  # fmt: skip


def _deviation_cube(fl: _Flats) -> xr.DataArray:
    """The centred deviations (frame, y, x) float32, lazily (one task per pixel tile, every frame)."""
    args = [fl.data]
    dims = [[FRAME]]
    if fl.dark is not None:
        args.append(fl.dark)
        dims.append(["dgroup"])
    if fl.ref_map is not None:
        args.append(fl.ref_map)
        dims.append([])
    kw = {"has_dark": fl.dark is not None, "has_ref": fl.ref_map is not None,
          "centre": fl.table["centre"].to_numpy(F4), "dev_kw": _dev_kw(fl)}
    dev = xr.apply_ufunc(_dev_tile, *args, input_core_dims=dims, output_core_dims=[[FRAME]], dask="parallelized",
                         output_dtypes=[F4], kwargs=kw)  # fmt: skip
    return dev.transpose(FRAME, Y, X)


def _dev_kw(fl: _Flats) -> dict:
    return {"scale": fl.table["norm"].to_numpy(F8), "dsel": fl.dsel, "gidx": fl.gidx, "ref_idx": fl.ref_idx,
            "compare": fl.params["compare"]}  # fmt: skip


def _dev_tile(flat, *extra, has_dark, has_ref, centre, dev_kw):
    dark = extra[0] if has_dark else None
    ref = extra[-1] if has_ref else None
    return _deviation_np(flat, dark, ref, **dev_kw) - centre


def _frame_vars(fl: _Flats) -> dict:
    t = fl.table
    return {"t_days": (FRAME, t["t_days"].to_numpy(F8), {"units": fl.time_unit}), "frame_group": (FRAME, fl.gidx),
            "is_reference": (FRAME, t["is_reference"].to_numpy(bool)), "norm": (FRAME, t["norm"].to_numpy(F8)),
            "centre": (FRAME, t["centre"].to_numpy(F8)), "sigma": (FRAME, t["sigma"].to_numpy(F8))}  # fmt: skip


# ---- 1. structure analysis ------------------------------------------------------------------------------------
@dataclass
class StructureResult:
    """What :func:`structure_analysis` found (tables computed; the cube lazy)."""

    frame_stats: dict[str, pd.DataFrame]  # section ("bias", "dark", "flat") -> FRAME_STATS_COLUMNS
    trends: pd.DataFrame  # TREND_COLUMNS
    flat_frames: pd.DataFrame | None  # STRUCTURE_FRAME_COLUMNS
    structures: pd.DataFrame | None  # STRUCTURE_COLUMNS
    maps: xr.Dataset | None  # flag_count, first_t_days, first_frame, mean_dev, peak_dev, label (y, x), computed
    cube: xr.Dataset | None  # deviation, flagged (frame, y, x), lazy
    groups: pd.DataFrame | None
    origin: pd.Timestamp | None
    time_unit: str
    params: dict = field(default_factory=dict)


def structure_analysis(bias: xr.Dataset | None = None, dark: xr.Dataset | None = None,
                       flat: xr.Dataset | None = None, *, reference: Any = None, nsigma: float = 5.0,
                       n_ref: int = 3, sigma_method: Literal["mad", "clipped"] = "mad", min_frames: int = 2,
                       min_size: int = 1, connectivity: int = 2, first_fraction: float = 0.1, temp_key: Literal["filetemp", "temp"] = "filetemp",
                       temp_tol: float = 0.5, saturation: float | None = None,
                       saturation_units: Literal["stored", "dn"] = "stored", percentiles: Sequence[float] = PERCENTILES,
                       trend_stats: Sequence[str] = TREND_STATS, sample_pixels: int | None = SAMPLE_PIXELS,
                       dayfirst: bool = False) -> StructureResult:  # fmt: skip
    """Per-frame statistics and their trends for each section given, and new structures in the flats.

    Structures: each flat over its mean, minus the reference (``reference=None``: the median of the
    ``n_ref`` earliest flats of its (filter, temperature, exposure) group, over their means, which are
    not tested; else a (y, x) map, over its mean), centred on the frame median; flagged where ``|d| >
    nsigma * sigma`` (``sigma_method``: "mad" 1.4826 MAD, or "clipped" astropy sigma-clipped std). Pixels
    flagged in >= ``min_frames`` frames are labelled (``connectivity`` 2: 8-connected; structures
    smaller than ``min_size`` pixels dropped); ``first_fraction``: see the module docstring. ``saturation`` (stored counts, as in
    :func:`degradation_analysis`) drops saturated flats first. Time origin: the earliest time stamp of
    all sections given."""
    if bias is None and dark is None and flat is None:
        raise DetflowInputError(None, "bias/dark/flat", "at least one section dataset", None)
    origin = _origin(bias, dark, flat, dayfirst=dayfirst)
    stats: dict[str, pd.DataFrame] = {}
    units = set()
    flat_fp = None
    for name, ds in (("bias", bias), ("dark", dark), ("flat", flat)):
        if ds is None:
            continue
        data, scale = _dn(ds, name)
        sat_dn = None
        if name == "flat" and saturation is not None:
            sat_dn = float(saturation) / scale if saturation_units == "stored" else float(saturation)
        fp = _frame_pass(data, sample_pixels, sat_dn)
        times = frame_times(ds, origin, dayfirst=dayfirst)
        units.add(times.attrs["time_unit"])
        df = _stats_table(_meta(ds, times), fp, name, percentiles, 3.0, 5)
        df.attrs.update(time_unit=times.attrs["time_unit"], sample_pixels=sample_pixels)
        stats[name] = df
        if name == "flat":
            flat_fp = fp
    time_unit = "day" if units == {"day"} else ("frame" if units == {"frame"} else "mixed")
    trends = pd.concat([fit_trends(df, trend_stats) for df in stats.values()], ignore_index=True)
    params = {"nsigma": nsigma, "min_frames": min_frames, "min_size": min_size, "connectivity": connectivity,
              "first_fraction": first_fraction, "percentiles": list(percentiles), "sample_pixels": sample_pixels}
    if flat is None:
        return StructureResult(stats, trends, None, None, None, None, None, origin, time_unit, params)
    fl = _prepare_flats(flat, None, reference=reference, n_ref=n_ref, normalise="mean", compare="difference",
                        temp_key=temp_key, temp_tol=temp_tol, saturation=saturation, saturation_units=saturation_units,
                        max_saturated_fraction=0.0, sigma_method=sigma_method, nsigma=nsigma,
                        sample_pixels=sample_pixels, origin=origin, fp=flat_fp)  # fmt: skip
    params.update(fl.params)
    dev = _deviation_cube(fl)
    thr = xr.DataArray(fl.table["threshold"].to_numpy(F4), dims=FRAME)
    test = xr.DataArray(fl.test, dims=FRAME)
    flags = test & (np.abs(dev) > thr)
    t = fl.table["t_days"].to_numpy(F8)
    order = np.lexsort((np.arange(len(t)), t))  # time order (ties: dataset order)
    rank = np.empty(len(t), np.int64)
    rank[order] = np.arange(len(t))
    big = len(t)
    kept = dev.where(flags)
    lazy_maps = {"flag_count": flags.sum(FRAME).astype(np.int32),
                 "first_rank": xr.where(flags, xr.DataArray(rank, dims=FRAME), big).min(FRAME),
                 "mean_dev": kept.mean(FRAME), "max_dev": kept.max(FRAME), "min_dev": kept.min(FRAME)}  # fmt: skip
    per_frame = {"n_flagged": flags.sum((Y, X)), "n_positive": (flags & (dev > 0)).sum((Y, X)),
                 "n_negative": (flags & (dev < 0)).sum((Y, X))}  # fmt: skip
    (m, pf) = dask.compute({k: v.data for k, v in lazy_maps.items()}, {k: v.data for k, v in per_frame.items()})
    table = fl.table.copy()
    for k, v in pf.items():
        table[k] = np.asarray(v, np.int64)
    first_rank = np.asarray(m["first_rank"])
    first_pos = np.where(first_rank < big, order[np.minimum(first_rank, big - 1)], -1)
    first_t = np.where(first_pos >= 0, t[np.maximum(first_pos, 0)], np.nan)
    mx, mn = np.asarray(m["max_dev"]), np.asarray(m["min_dev"])
    with np.errstate(invalid="ignore"):
        peak = np.where(np.abs(mn) > np.abs(mx), mn, mx)
    count = np.asarray(m["flag_count"])
    labels, structures = _label_structures(count, first_rank, order, np.asarray(m["mean_dev"]), peak, table,
                                           min_frames, min_size, connectivity, first_fraction)  # fmt: skip
    ycoord, xcoord = fl.data[Y], fl.data[X]
    maps = xr.Dataset(
        {"flag_count": ((Y, X), count, {"long_name": "frames in which the pixel was flagged", "units": "1"}),
         "first_frame": ((Y, X), np.where(first_pos >= 0, table["frame"].to_numpy()[np.maximum(first_pos, 0)], -1),
                         {"long_name": "frame coordinate of the first flag in time (-1: never)"}),
         "first_t_days": ((Y, X), first_t, {"units": fl.time_unit, "long_name": "time of the first flag"}),
         "mean_dev": ((Y, X), np.asarray(m["mean_dev"]), {"long_name": "mean deviation when flagged", "units": "1"}),
         "peak_dev": ((Y, X), peak, {"long_name": "the flagged deviation of largest |value|", "units": "1"}),
         "label": ((Y, X), labels, {"long_name": "connected structure (0: none)", "units": "1"})},
        coords={c: v for c, v in ((Y, ycoord), (X, xcoord)) if c in fl.data.coords},
        attrs=sanitize_attrs({"history": [f"structure_analysis {params}"], **params}))  # fmt: skip
    cube = xr.Dataset({"deviation": dev, "flagged": flags}, coords=_frame_vars(fl))
    return StructureResult(stats, trends, table[list(STRUCTURE_FRAME_COLUMNS)], structures, maps, cube,
                           fl.groups, origin, time_unit, params)  # fmt: skip


def _label_structures(count: np.ndarray, first_rank: np.ndarray, order: np.ndarray, mean_dev: np.ndarray,
                      peak: np.ndarray, table: pd.DataFrame, min_frames: int, min_size: int, connectivity: int,
                      first_fraction: float) -> tuple[np.ndarray, pd.DataFrame]:  # fmt: skip
    mask = count >= max(1, int(min_frames))
    lab, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(2, connectivity))
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    keep = np.flatnonzero(sizes >= max(1, int(min_size)))
    keep = keep[keep > 0]
    relabel = np.zeros(n + 1, np.int32)
    relabel[keep] = np.arange(1, len(keep) + 1)
    lab = relabel[lab]
    t = table["t_days"].to_numpy(F8)
    rows = []
    for k, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        sub = lab[sl] == k
        yy, xx = np.nonzero(sub)
        yy, xx = yy + sl[0].start, xx + sl[1].start
        ranks = np.sort(first_rank[yy, xx])
        need = min(len(ranks), max(2, math.ceil(first_fraction * len(ranks))))
        pos, pos_any = order[ranks[need - 1]], order[ranks[0]]  # enough of its pixels flagged; its first pixel
        pk = peak[yy, xx]
        rows.append({"label": k, "size": len(yy), "centroid_y": float(yy.mean()), "centroid_x": float(xx.mean()),
                     "y0": int(yy.min()), "y1": int(yy.max()), "x0": int(xx.min()), "x1": int(xx.max()),
                     "first_frame": table["frame"].iloc[pos], "first_path": table["path"].iloc[pos],
                     "first_time": table["time"].iloc[pos], "first_t_days": float(t[pos]),
                     "first_any_t_days": float(t[pos_any]), "max_flag_count": int(count[yy, xx].max()),
                     "mean_flag_count": float(count[yy, xx].mean()), "mean_dev": float(np.nanmean(mean_dev[yy, xx])),
                     "peak_dev": float(pk[np.nanargmax(np.abs(pk))])})  # fmt: skip
    return lab, pd.DataFrame(rows, columns=list(STRUCTURE_COLUMNS))


# ---- 2. degradation analysis ------------------------------------------------------------------------------------
def _classify_np(dev: np.ndarray, flags: np.ndarray, *, t: np.ndarray, sig: np.ndarray, gidx: np.ndarray,
                 test: np.ndarray, ng: int, growth_sigma: float, persist_frac: float, min_growth_frames: int,
                 ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Per pixel and group, over the group's tested frames in time order: the quantities :data:`_Q` and,
    per frame, the pixel's class where it is flagged (0 elsewhere). ``dev``, ``flags``: (P, frame)."""
    P, nf = dev.shape
    maps = np.full((P, ng, len(_Q)), np.nan, F4)
    ocls = np.zeros((P, nf), np.int8)
    for g in range(ng):
        idx = np.flatnonzero((gidx == g) & test)
        out = maps[:, g]
        if idx.size == 0:
            out[:, [_QI["class"], _QI["n_flagged"], _QI["n_since_first"]]] = 0
            out[:, _QI["first_pos"]] = -1
            continue
        idx = idx[np.lexsort((idx, t[idx]))]
        k = idx.size
        Fg, Dg, tg = flags[:, idx], dev[:, idx].astype(F8), t[idx]
        sg = np.maximum(np.nan_to_num(sig[idx], nan=np.inf), 1e-30)
        nflag = Fg.sum(1)
        hit = nflag > 0
        first = np.where(hit, Fg.argmax(1), k)
        fin = np.isfinite(Dg)
        after = (np.arange(k)[None, :] >= first[:, None]) & fin
        n_after = after.sum(1)
        sgn = np.sign(np.where(Fg, np.nan_to_num(Dg), 0).sum(1))
        sgn[sgn == 0] = 1
        w = np.where(after, 1.0 / sg[None, :] ** 2, 0.0)
        Yv = np.where(after, sgn[:, None] * np.nan_to_num(Dg), 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            W = w.sum(1)
            tm = (w * tg).sum(1) / W
            dt = tg[None, :] - tm[:, None]
            sxx = (w * dt * dt).sum(1)
            ym = (w * Yv).sum(1) / W
            slope = (w * dt * (Yv - ym[:, None])).sum(1) / sxx
            chi2 = (w * (Yv - ym[:, None] - slope[:, None] * dt) ** 2).sum(1)
            dof = n_after - 2
            err = np.sqrt(1.0 / sxx) * np.sqrt(np.maximum(1.0, np.where(dof > 0, chi2 / np.maximum(dof, 1), 1.0)))
            z = slope / err
            frac = nflag / np.maximum(n_after, 1)
            mean_dev = np.where(hit, np.where(Fg, np.nan_to_num(Dg), 0).sum(1) / np.maximum(nflag, 1), np.nan)
        fit_ok = (n_after >= max(2, min_growth_frames)) & (sxx > 0) & np.isfinite(z)
        cls = np.zeros(P, np.int8)
        cls[nflag == 1] = CLASS_CODE["transient"]
        multi = nflag >= 2
        cls[multi] = CLASS_CODE["intermittent"]
        cls[multi & (frac >= persist_frac)] = CLASS_CODE["persistent"]
        cls[multi & fit_ok & (z >= growth_sigma)] = CLASS_CODE["growing"]
        j = np.where(Fg, np.abs(np.nan_to_num(Dg)), -1.0).argmax(1)
        peak = np.where(hit, Dg[np.arange(P), j], np.nan)
        good = n_after >= 2
        out[:, _QI["class"]] = cls
        out[:, _QI["n_flagged"]] = nflag
        out[:, _QI["n_since_first"]] = np.where(hit, n_after, 0)
        out[:, _QI["first_pos"]] = np.where(hit, idx[np.minimum(first, k - 1)], -1)
        out[:, _QI["mean_dev"]] = mean_dev
        out[:, _QI["peak_dev"]] = peak
        out[:, _QI["last_dev"]] = Dg[:, -1]
        out[:, _QI["trend"]] = np.where(good & (sxx > 0), sgn * slope, np.nan)
        out[:, _QI["trend_err"]] = np.where(good & (sxx > 0), err, np.nan)
        out[:, _QI["growth_z"]] = np.where(good & (sxx > 0), z, np.nan)
        ocls[:, idx] = np.where(Fg, cls[:, None], 0)
    return maps, ocls


def _degradation_tile(flat, *extra, has_dark, has_ref, centre, thr, test, dev_kw, cls_kw):
    dark = extra[0] if has_dark else None
    ref = extra[-1] if has_ref else None
    dev = _deviation_np(flat, dark, ref, **dev_kw) - centre
    with np.errstate(invalid="ignore"):
        flags = test & (np.abs(dev) > thr)
    nf = dev.shape[-1]
    d2, f2 = dev.reshape(-1, nf), flags.reshape(-1, nf)
    maps = np.empty((d2.shape[0], cls_kw["ng"], len(_Q)), F4)
    ocls = np.empty(d2.shape, np.int8)
    block = max(1, _CLASSIFY_ELEMENTS // max(nf, 1))  # pixels per pass: bounds the float64 temporaries
    for p0 in range(0, d2.shape[0], block):
        maps[p0 : p0 + block], ocls[p0 : p0 + block] = _classify_np(d2[p0 : p0 + block], f2[p0 : p0 + block], **cls_kw)
    return maps.reshape(*dev.shape[:-1], *maps.shape[1:]), dev, ocls.reshape(dev.shape)


def _degradation_lazy(fl: _Flats, growth_sigma: float, persist_frac: float, min_growth_frames: int) -> xr.Dataset:
    ng = len(fl.groups)
    args, dims = [fl.data], [[FRAME]]
    if fl.dark is not None:
        args.append(fl.dark)
        dims.append(["dgroup"])
    if fl.ref_map is not None:
        args.append(fl.ref_map)
        dims.append([])
    tab = fl.table
    cls_kw = {"t": tab["t_days"].to_numpy(F8), "sig": tab["sigma"].to_numpy(F8), "gidx": fl.gidx, "test": fl.test,
              "ng": ng, "growth_sigma": growth_sigma, "persist_frac": persist_frac,
              "min_growth_frames": min_growth_frames}
    kw = {"has_dark": fl.dark is not None, "has_ref": fl.ref_map is not None, "centre": tab["centre"].to_numpy(F4),
          "thr": tab["threshold"].to_numpy(F4), "test": fl.test, "dev_kw": _dev_kw(fl), "cls_kw": cls_kw}
    stack, dev, ocls = xr.apply_ufunc(
        _degradation_tile, *args, input_core_dims=dims, output_core_dims=[["group", "quantity"], [FRAME], [FRAME]],
        dask="parallelized", output_dtypes=[F4, F4, np.int8], kwargs=kw,
        dask_gufunc_kwargs={"output_sizes": {"group": ng, "quantity": len(_Q)}})  # fmt: skip
    units = "1" if fl.params["compare"] == "ratio" or fl.params["normalise"] else "DN"
    q = {name: stack.isel(quantity=i, drop=True).transpose("group", Y, X) for i, name in enumerate(_Q)}
    cls_attrs = {"flag_values": list(range(len(CLASSES))), "flag_meanings": " ".join(CLASSES), "units": "1"}
    maps = {
        "outlier_class": (q["class"].astype(np.int8), cls_attrs),
        "n_flagged": (q["n_flagged"].astype(np.int32), {"long_name": "tested frames flagged", "units": "1"}),
        "n_since_first": (q["n_since_first"].astype(np.int32),
                          {"long_name": "tested frames from the first flag on", "units": "1"}),
        "first_pos": (q["first_pos"].astype(np.int32),
                      {"long_name": "position (in the analysed flats) of the first flagged frame, -1: never"}),
        "mean_dev": (q["mean_dev"], {"long_name": "mean deviation when flagged", "units": units}),
        "peak_dev": (q["peak_dev"], {"long_name": "flagged deviation of largest |value|", "units": units}),
        "last_dev": (q["last_dev"], {"long_name": "deviation in the group's latest frame", "units": units}),
        "trend": (q["trend"], {"long_name": "slope of the deviation from the first flag on",
                               "units": f"{units} / {fl.time_unit}"}),
        "trend_err": (q["trend_err"], {"units": f"{units} / {fl.time_unit}"}),
        "growth_z": (q["growth_z"], {"long_name": "slope of |deviation| over its error", "units": "1"}),
    }  # fmt: skip
    out = xr.Dataset({k: (v.dims, v.data, a) for k, (v, a) in maps.items()})
    out["class_max"] = out["outlier_class"].max("group").assign_attrs(cls_attrs)
    out["deviation"] = dev.transpose(FRAME, Y, X).assign_attrs(
        long_name=f"centred {fl.params['compare']} deviation from the group reference", units=units)
    out["outlier_class_frame"] = ocls.transpose(FRAME, Y, X).assign_attrs(
        long_name="the pixel's class where flagged in the frame, 0 elsewhere", **cls_attrs)
    g = fl.groups
    out = out.assign_coords({c: v for c, v in ((Y, fl.data[Y]), (X, fl.data[X])) if c in fl.data.coords})
    out = out.assign_coords(group=np.arange(ng), group_filter=("group", g["filter"].to_numpy().astype(str)),
                            group_temp=("group", g["temp"].to_numpy(F8)),
                            group_exptime=("group", g["exptime"].to_numpy(F8)), **_frame_vars(fl))  # fmt: skip
    out.attrs = sanitize_attrs({**fl.params, "growth_sigma": growth_sigma, "persist_frac": persist_frac,
                                "min_growth_frames": min_growth_frames, "classes": list(CLASSES),
                                "time_unit": fl.time_unit, "origin": fl.origin,
                                "history": ["degradation_maps"]})  # fmt: skip
    return out


def _prepare_degradation(flat, dark, saturation, nsigma, normalise, compare, n_ref, reference, temp_key, temp_tol,
                         saturation_units, max_saturated_fraction, sigma_method, sample_pixels, dayfirst):  # fmt: skip
    origin = _origin(flat, dayfirst=dayfirst)
    return _prepare_flats(flat, dark, reference=reference, n_ref=n_ref, normalise=normalise, compare=compare,
                          temp_key=temp_key, temp_tol=temp_tol, saturation=saturation,
                          saturation_units=saturation_units, max_saturated_fraction=max_saturated_fraction,
                          sigma_method=sigma_method, nsigma=nsigma, sample_pixels=sample_pixels, origin=origin)  # fmt: skip


def degradation_maps(flat: xr.Dataset, dark: xr.Dataset | None = None, *, saturation: float | None = 60000,
                     nsigma: float = 5.0, normalise: Literal["mean", "median"] | None = "mean",
                     compare: Literal["ratio", "difference"] = "ratio", n_ref: int = 1, reference: Any = None,
                     temp_key: Literal["filetemp", "temp"] = "filetemp", temp_tol: float = 0.5,
                     saturation_units: Literal["stored", "dn"] = "stored", max_saturated_fraction: float = 0.0,
                     sigma_method: Literal["mad", "clipped"] = "mad", growth_sigma: float = 3.0,
                     persist_frac: float = 0.5, min_growth_frames: int = 3, sample_pixels: int | None = SAMPLE_PIXELS,
                     dayfirst: bool = False) -> xr.Dataset:  # fmt: skip
    """The lazy per-pixel graph of :func:`degradation_analysis` (same parameters): maps (group, y, x)
    ``outlier_class``, ``n_flagged``, ``n_since_first``, ``first_pos``, ``mean_dev``, ``peak_dev``,
    ``last_dev``, ``trend``, ``trend_err``, ``growth_z``; ``class_max`` (y, x); cubes (frame, y, x)
    ``deviation`` and ``outlier_class_frame``; per analysed frame ``t_days``, ``group``, ``is_reference``,
    ``norm``, ``centre``, ``sigma``. The per-frame scalars are computed first (one pass)."""
    fl = _prepare_degradation(flat, dark, saturation, nsigma, normalise, compare, n_ref, reference, temp_key,
                              temp_tol, saturation_units, max_saturated_fraction, sigma_method, sample_pixels,
                              dayfirst)  # fmt: skip
    return _degradation_lazy(fl, growth_sigma, persist_frac, min_growth_frames)


@dataclass
class DegradationResult:
    """What :func:`degradation_analysis` found: tables, computed 2-D maps and the lazy cubes."""

    frames: pd.DataFrame  # DEGRADATION_FRAME_COLUMNS
    pixels: pd.DataFrame  # PIXEL_COLUMNS
    saturated: pd.DataFrame  # SATURATED_COLUMNS
    groups: pd.DataFrame  # GROUP_COLUMNS
    maps: xr.Dataset  # (group, y, x) maps and class_max (y, x), computed
    cube: xr.Dataset  # deviation, outlier_class_frame (frame, y, x), lazy
    hist: tuple[np.ndarray, np.ndarray]  # counts, edges: centred deviations of the tested frames (pixel sample)
    origin: pd.Timestamp | None
    time_unit: str
    params: dict = field(default_factory=dict)


def degradation_analysis(flat: xr.Dataset, dark: xr.Dataset | None = None, *, saturation: float | None = 60000,
                         nsigma: float = 5.0, normalise: Literal["mean", "median"] | None = "mean",
                         compare: Literal["ratio", "difference"] = "ratio", n_ref: int = 1, reference: Any = None,
                         temp_key: Literal["filetemp", "temp"] = "filetemp", temp_tol: float = 0.5,
                         saturation_units: Literal["stored", "dn"] = "stored", max_saturated_fraction: float = 0.0,
                         sigma_method: Literal["mad", "clipped"] = "mad", growth_sigma: float = 3.0,
                         persist_frac: float = 0.5, min_growth_frames: int = 3,
                         sample_pixels: int | None = SAMPLE_PIXELS, dayfirst: bool = False) -> DegradationResult:  # fmt: skip
    """Flat degradation (outgassing): outlier pixels per (filter, temperature, exposure) group against the
    group's earliest flat, classified over time (module docstring).

    ``saturation``: a flat is discarded when more than ``max_saturated_fraction`` of its pixels (0: any)
    reach it; in stored counts (the raw integers, before division by data_scale; 60000 suits 16-bit
    stores, 12-bit data left-shifted included) unless ``saturation_units="dn"``; None: no check.
    ``dark``: a dark section; each flat is reduced by the mean of the dark group nearest in temperature,
    then exposure. ``normalise``: divide each frame by its mean (every pixel) or median (pixel sample), or
    not. ``compare``: ``ratio`` (x / ref - 1) or ``difference`` (x - ref). ``n_ref``: the earliest frames
    of each group whose median is the reference (they are not tested); ``reference``: a (y, x) map
    instead. ``temp_key``/``temp_tol``: temperatures (the set point ``filetemp``, else the logged
    ``temp``) clustered with gaps above ``temp_tol`` deg C."""
    fl = _prepare_degradation(flat, dark, saturation, nsigma, normalise, compare, n_ref, reference, temp_key,
                              temp_tol, saturation_units, max_saturated_fraction, sigma_method, sample_pixels,
                              dayfirst)  # fmt: skip
    lazy = _degradation_lazy(fl, growth_sigma, persist_frac, min_growth_frames)
    map_names = [k for k, v in lazy.data_vars.items() if FRAME not in v.dims]
    oc, dev = lazy["outlier_class_frame"], lazy["deviation"]
    flagged = oc > 0
    per_frame = {"n_outliers": flagged.sum((Y, X))}
    for c in CLASSES[1:]:
        per_frame[f"n_{c}"] = (oc == CLASS_CODE[c]).sum((Y, X))
    per_frame["mean_dev"] = dev.where(flagged).mean((Y, X))
    per_frame["mean_abs_dev"] = np.abs(dev).where(flagged).mean((Y, X))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mv, pf = dask.compute({k: lazy[k].data for k in map_names}, {k: v.data for k, v in per_frame.items()})
    maps = lazy[map_names].copy()
    for k in map_names:
        maps[k] = maps[k].copy(data=np.asarray(mv[k]))
    frames = fl.table.copy()
    for k, v in pf.items():
        frames[k] = np.asarray(v)
    for k in ("n_outliers", *(f"n_{c}" for c in CLASSES[1:])):
        frames[k] = frames[k].astype(np.int64)
    frames = frames[list(DEGRADATION_FRAME_COLUMNS)]
    groups = fl.groups.copy()
    cm = maps["outlier_class"].values
    for c in CLASSES[1:]:
        groups[f"n_{c}"] = [(cm[g] == CLASS_CODE[c]).sum() for g in range(len(groups))]
    groups["n_frames"] = [int((fl.gidx == g).sum()) for g in range(len(groups))]
    pixels = _pixel_table(maps, fl)
    cube = lazy[["deviation", "outlier_class_frame"]]
    params = dict(maps.attrs)
    return DegradationResult(frames, pixels, fl.saturated, groups[list(GROUP_COLUMNS)], maps, cube, fl.hist,
                             fl.origin, fl.time_unit, params)  # fmt: skip


def _pixel_table(maps: xr.Dataset, fl: _Flats) -> pd.DataFrame:
    cls = maps["outlier_class"].values
    g, yy, xx = np.nonzero(cls > 0)
    tab, groups = fl.table, fl.groups
    first = maps["first_pos"].values[g, yy, xx].astype(np.int64)
    n_tested = np.array([int(((fl.gidx == k) & fl.test).sum()) for k in range(len(groups))])
    nflag = maps["n_flagged"].values[g, yy, xx].astype(np.int64)
    nsince = maps["n_since_first"].values[g, yy, xx].astype(np.int64)

    def v(name):
        return maps[name].values[g, yy, xx].astype(F8)

    df = pd.DataFrame({
        "y": np.asarray(maps[Y].values)[yy] if Y in maps.coords else yy,
        "x": np.asarray(maps[X].values)[xx] if X in maps.coords else xx,
        "group": g, "filter": groups["filter"].to_numpy()[g], "temp": groups["temp"].to_numpy()[g],
        "exptime": groups["exptime"].to_numpy()[g], "class": np.asarray(CLASSES, object)[cls[g, yy, xx]],
        "n_flagged": nflag, "n_tested": n_tested[g], "n_since_first": nsince,
        "flag_fraction": nflag / np.maximum(nsince, 1), "first_frame": tab["frame"].to_numpy()[first],
        "first_path": tab["path"].to_numpy()[first], "first_time": tab["time"].to_numpy()[first],
        "first_t_days": tab["t_days"].to_numpy()[first], "mean_dev": v("mean_dev"), "peak_dev": v("peak_dev"),
        "last_dev": v("last_dev"), "trend_per_day": v("trend"), "trend_err": v("trend_err"), "growth_z": v("growth_z"),
    })  # fmt: skip
    return df[list(PIXEL_COLUMNS)]


# ---- plots and reports --------------------------------------------------------------------------------------
_CLASS_COLOURS = ("#ffffff", "#1f77b4", "#ff7f0e", "#d62728", "#9467bd")


def _group_label(groups: pd.DataFrame, g: int) -> str:
    r = groups.iloc[g]
    return f"{r['filter']} {r['temp']:g} C {r['exptime']:g} s"


def _time_label(unit: str, origin) -> str:
    return f"days since {origin:%Y-%m-%d %H:%M}" if unit == "day" and origin is not None else "frame order"


def plot_trends(result: StructureResult, stat: str = "mean") -> Figure:
    """Per section: ``stat`` against temperature (colour: exposure time) and against time."""
    from matplotlib.figure import Figure

    secs = list(result.frame_stats)
    fig = Figure(figsize=(11, 3.2 * max(1, len(secs))), layout="constrained")
    axes = np.atleast_2d(fig.subplots(max(1, len(secs)), 2, squeeze=False))
    for row, sec in zip(axes, secs):
        df = result.frame_stats[sec]
        T = df["temp"].where(np.isfinite(df["temp"]), df["filetemp"])
        for e, part in df.assign(_T=T).groupby(df["exptime"].round(9)):
            row[0].plot(part["_T"], part[stat], "o", ms=3, label=f"{e:g} s")
            row[1].plot(part["t_days"], part[stat], "o", ms=3, label=f"{e:g} s")
        tr = result.trends[(result.trends["section"] == sec) & (result.trends["stat"] == stat)]
        for _, r in tr.iterrows():
            if np.isfinite(r["slope_per_degC"]):
                x = np.array([r["temp_min"], r["temp_max"]])
                row[0].plot(x, r["intercept_0C"] + r["slope_per_degC"] * x, "k-", lw=0.8)
        row[0].set_xlabel("temperature (deg C)")
        row[1].set_xlabel(_time_label(result.time_unit, result.origin))
        for ax in row:
            ax.set_ylabel(f"{sec} {stat} (DN)")
            ax.legend(fontsize="x-small", title="exptime", title_fontsize="x-small")
    fig.suptitle(f"per-frame {stat} against temperature and time")
    return fig


def plot_structures(result: StructureResult) -> Figure:
    """The flag-count map with the labelled structures, and the flagged pixels per flat against time."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    fig = Figure(figsize=(12, 4.5), layout="constrained")
    ax0, ax1 = fig.subplots(1, 2)
    if result.maps is None:
        ax0.text(0.5, 0.5, "no flats", ha="center")
        return fig
    im = ax0.imshow(result.maps["flag_count"].values, origin="lower", cmap="magma", interpolation="nearest")
    fig.colorbar(im, ax=ax0, label="frames flagged")
    for _, s in result.structures.iterrows():
        ax0.add_patch(Rectangle((s["x0"] - 0.5, s["y0"] - 0.5), s["x1"] - s["x0"] + 1, s["y1"] - s["y0"] + 1,
                                fill=False, ec="cyan", lw=1))  # fmt: skip
        ax0.text(s["x1"] + 1, s["y1"] + 1, str(int(s["label"])), color="cyan", fontsize=8)
    ax0.set_title(f"new structures ({len(result.structures)})")
    ax0.set_xlabel("x")
    ax0.set_ylabel("y")
    ff = result.flat_frames
    for g, part in ff[~ff["is_reference"]].groupby("group"):
        ax1.plot(part["t_days"], part["n_flagged"], "o-", ms=3, label=_group_label(result.groups, int(g)))
    ax1.set_xlabel(_time_label(result.time_unit, result.origin))
    ax1.set_ylabel(f"pixels beyond {result.params.get('nsigma', '')} sigma")
    ax1.legend(fontsize="x-small")
    return fig


def plot_degradation(result: DegradationResult) -> dict[str, Figure]:
    """``outliers_vs_time`` (outliers per frame, per group and per class), ``class_map`` (the most severe
    class of each pixel over the groups, and its peak deviation) and ``deviation_hist``."""
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.figure import Figure

    figs = {}
    fr = result.frames[~result.frames["is_reference"]]
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    ax0, ax1 = fig.subplots(1, 2)
    for g, part in fr.groupby("group"):
        part = part.sort_values("t_days")
        ax0.plot(part["t_days"], part["n_outliers"], "o-", ms=3, label=_group_label(result.groups, int(g)))
    ax0.set_ylabel("outlier pixels")
    ax0.legend(fontsize="x-small")
    ax0.set_title("outliers per frame, by group")
    for c, col in zip(CLASSES[1:], _CLASS_COLOURS[1:]):
        ax1.plot(fr["t_days"], fr[f"n_{c}"], "o", ms=3, color=col, label=c)
    ax1.set_ylabel("outlier pixels")
    ax1.legend(fontsize="x-small")
    ax1.set_title("outliers per frame, by pixel class")
    for ax in (ax0, ax1):
        ax.set_xlabel(_time_label(result.time_unit, result.origin))
    figs["outliers_vs_time"] = fig

    fig = Figure(figsize=(12, 4.5), layout="constrained")
    ax0, ax1 = fig.subplots(1, 2)
    cmap = ListedColormap(list(_CLASS_COLOURS))
    norm = BoundaryNorm(np.arange(-0.5, len(CLASSES)), cmap.N)
    im = ax0.imshow(result.maps["class_max"].values, origin="lower", cmap=cmap, norm=norm, interpolation="nearest")
    cb = fig.colorbar(im, ax=ax0, ticks=range(len(CLASSES)))
    cb.ax.set_yticklabels(CLASSES)
    ax0.set_title("outlier class (most severe over the groups)")
    peak = result.maps["peak_dev"].values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        j = np.nanargmax(np.where(np.isfinite(peak), np.abs(peak), -1), axis=0)
    pk = np.take_along_axis(peak, j[None], 0)[0] if peak.size else np.zeros(peak.shape[1:])
    lim = float(np.nanmax(np.abs(pk))) if np.isfinite(pk).any() else 1.0
    im = ax1.imshow(pk, origin="lower", cmap="coolwarm", vmin=-lim, vmax=lim, interpolation="nearest")
    fig.colorbar(im, ax=ax1, label="peak deviation")
    ax1.set_title("peak deviation of the outliers")
    for ax in (ax0, ax1):
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    figs["class_map"] = fig

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    counts, edges = result.hist
    ax.stairs(counts, edges, color="0.4", label="all tested pixels (sample)")
    px = result.pixels
    if len(px):
        data = [np.clip(px.loc[px["class"] == c, "peak_dev"].to_numpy(F8), edges[0], edges[-1]) for c in CLASSES[1:]]
        ax.hist(data, bins=edges, stacked=True, color=list(_CLASS_COLOURS[1:]), label=list(CLASSES[1:]))
    sig = float(np.nanmedian(result.frames["threshold"])) if result.frames["threshold"].notna().any() else np.nan
    if math.isfinite(sig):
        for s in (-sig, sig):
            ax.axvline(s, color="k", ls=":", lw=0.8)
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.5)
    ax.set_xlabel(f"deviation ({result.params.get('compare', '')}, centred)")
    ax.set_ylabel("pixels")
    ax.legend(fontsize="x-small")
    ax.set_title("deviations (outliers: peak deviation per pixel and group)")
    figs["deviation_hist"] = fig
    return figs


def _write(outdir: str | Path, tables: dict[str, pd.DataFrame], figures: dict[str, Figure],
           overwrite: bool) -> dict[str, Path]:  # fmt: skip
    outdir = Path(outdir)
    targets = {**{k: outdir / f"{k}.csv" for k in tables}, **{k: outdir / f"{k}.png" for k in figures}}
    clash = [p for p in targets.values() if p.exists()]
    if clash and not overwrite:
        raise OutputExistsError(clash[0], "outdir", "report files that do not exist yet (or overwrite=True)",
                                f"{len(clash)} exist")  # fmt: skip
    outdir.mkdir(parents=True, exist_ok=True)
    for k, p in targets.items():
        tmp = p.with_name(f"{p.name}.partial-{uuid.uuid4().hex[:8]}")
        try:
            if k in tables:
                tables[k].to_csv(tmp, index=False, date_format="%Y-%m-%dT%H:%M:%S.%f")
            else:
                figures[k].savefig(tmp, dpi=100, format="png")
            os.replace(tmp, p)
        finally:
            tmp.unlink(missing_ok=True)
    return targets


def write_structure_report(result: StructureResult, outdir: str | Path, *, overwrite: bool = False,
                           stats: Sequence[str] = ("mean", "std")) -> dict[str, Path]:  # fmt: skip
    """``frame_stats_<section>.csv``, ``trends.csv``, ``structure_frames.csv``, ``structures.csv`` and
    ``trends_<stat>.png``, ``structures_map.png`` in ``outdir`` (existing files refused unless ``overwrite``)."""
    tables = {f"frame_stats_{k}": v for k, v in result.frame_stats.items()}
    tables["trends"] = result.trends
    figures = {f"trends_{s}": plot_trends(result, s) for s in stats}
    if result.flat_frames is not None:
        tables["structure_frames"] = result.flat_frames
        tables["structures"] = result.structures
        figures["structures_map"] = plot_structures(result)
    return _write(outdir, tables, figures, overwrite)


def write_degradation_report(result: DegradationResult, outdir: str | Path, *, overwrite: bool = False,
                             prefix: str = "degradation") -> dict[str, Path]:  # fmt: skip
    """``<prefix>_frames.csv`` (:data:`DEGRADATION_FRAME_COLUMNS`), ``<prefix>_pixels.csv``
    (:data:`PIXEL_COLUMNS`), ``<prefix>_saturated.csv`` (:data:`SATURATED_COLUMNS`), ``<prefix>_groups.csv``
    (:data:`GROUP_COLUMNS`) and ``<prefix>_outliers_vs_time.png``, ``<prefix>_class_map.png``,
    ``<prefix>_deviation_hist.png`` in ``outdir``; existing files are refused (before anything is written)
    unless ``overwrite``. Returns {name: path}."""
    tables = {f"{prefix}_frames": result.frames, f"{prefix}_pixels": result.pixels,
              f"{prefix}_saturated": result.saturated, f"{prefix}_groups": result.groups}  # fmt: skip
    figures = {f"{prefix}_{k}": f for k, f in plot_degradation(result).items()}
    return _write(outdir, tables, figures, overwrite)
