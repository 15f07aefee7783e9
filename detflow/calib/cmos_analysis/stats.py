"""Per-frame statistics of a CMOS section (:func:`frame_statistics`) and their linear trends against
temperature and time (:func:`fit_trends`)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from astropy.stats import sigma_clipped_stats

from .columns import F8, PERCENTILES, SAMPLE_PIXELS, TREND_COLUMNS, TREND_STATS, _pcol
from .frames import _dn, _frame_pass, _meta, _section_name
from .times import frame_times


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


def frame_temperature(stats: pd.DataFrame) -> pd.Series:
    """The temperature of each row of a per-frame table: the logged ``temp``, else the set point ``filetemp``."""
    return stats["temp"].where(np.isfinite(stats["temp"]), stats["filetemp"])


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
    df["_T"] = frame_temperature(df)
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
