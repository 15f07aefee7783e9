"""Constants of the CMOS analyses: the outlier classes, default statistics, and the columns of every table."""

from __future__ import annotations

import numpy as np

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
