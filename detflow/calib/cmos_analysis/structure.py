"""The structure analysis: per-frame statistics and trends of each section, and new structures in the flats
(:func:`structure_analysis`; method: :mod:`detflow.calib.cmos_analysis`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import dask
import numpy as np
import pandas as pd
import xarray as xr
from scipy import ndimage

from ...errors import DetflowInputError
from ...schema import FRAME, X, Y, sanitize_attrs
from .columns import F4, F8, PERCENTILES, SAMPLE_PIXELS, STRUCTURE_COLUMNS, STRUCTURE_FRAME_COLUMNS, TREND_STATS
from .flats import _deviation_cube, _frame_vars, _prepare_flats
from .frames import _dn, _frame_pass, _meta
from .stats import _stats_table, fit_trends
from .times import _origin, frame_times


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
    smaller than ``min_size`` pixels dropped); ``first_fraction``: see :mod:`detflow.calib.cmos_analysis`.
    ``saturation`` (stored counts, as in :func:`degradation_analysis`) drops saturated flats first. Time
    origin: the earliest time stamp of all sections given."""
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
    params = {
        "nsigma": nsigma,
        "min_frames": min_frames,
        "min_size": min_size,
        "connectivity": connectivity,
        "first_fraction": first_fraction,
        "percentiles": list(percentiles),
        "sample_pixels": sample_pixels,
    }
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
