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
   The tables and plots of both analyses are written by :mod:`detflow.reports.cmos`, which computes nothing.

Table columns are the ``*_COLUMNS`` constants (:mod:`.columns`); the reports write CSVs with exactly those
columns. Modules: :mod:`.times`, :mod:`.frames` (inputs, the frame pass), :mod:`.stats` (per-frame statistics,
trends), :mod:`.flats` (what both flat analyses share), :mod:`.structure`, :mod:`.degradation`.
"""

from .columns import (
    CLASS_CODE,
    CLASSES,
    DEGRADATION_FRAME_COLUMNS,
    FRAME_STATS_COLUMNS,
    GROUP_COLUMNS,
    META_COLUMNS,
    PERCENTILES,
    PIXEL_COLUMNS,
    SAMPLE_PIXELS,
    SATURATED_COLUMNS,
    STRUCTURE_COLUMNS,
    STRUCTURE_FRAME_COLUMNS,
    TREND_COLUMNS,
    TREND_STATS,
)
from .degradation import DegradationResult, degradation_analysis, degradation_maps
from .flats import temperature_clusters
from .stats import fit_trends, frame_statistics, frame_temperature
from .structure import StructureResult, structure_analysis
from .times import frame_times, parse_timestamps

__all__ = [
    "CLASSES", "CLASS_CODE", "DEGRADATION_FRAME_COLUMNS", "FRAME_STATS_COLUMNS", "GROUP_COLUMNS", "META_COLUMNS",
    "PERCENTILES", "PIXEL_COLUMNS", "SAMPLE_PIXELS", "SATURATED_COLUMNS", "STRUCTURE_COLUMNS",
    "STRUCTURE_FRAME_COLUMNS", "TREND_COLUMNS", "TREND_STATS", "DegradationResult", "StructureResult",
    "degradation_analysis", "degradation_maps", "fit_trends", "frame_statistics", "frame_temperature", "frame_times",
    "parse_timestamps", "structure_analysis", "temperature_clusters",
]  # fmt: skip
