"""Plain CCD/CMOS imager steps (``pipeline: ccd``): overscan, trim, bias, dark, flat, sigma-clipped combine.

Dataset in: :func:`detflow.io.ccd_fits.open_ccd_frames` (``data`` (frame, y, x) float64 ADU, frame
coordinates ``exptime``, ``frame_type``, ``biassec``/``trimsec``/``datasec``...). Between steps: ``data``
(frame, y, x) float64, ``dq`` (frame, y, x) uint32 (:class:`detflow.schema.DQ`), ``overscan`` (frame, y)
the level subtracted from each row. ``refs``: the masters as (y, x) variables ``bias``, ``dark`` (its
``exptime`` attribute) and ``flat``, on the frames' grid after trim; a step whose master is absent records
SKIPPED. Every step works on numpy and on dask alike (xarray arithmetic): lazy on a lazy dataset.

The numerics are ccdproc's (2.5.1), step by step: ``subtract_overscan`` (``overscan_axis=1``: the overscan
collapsed along each row, by ``np.median`` or ``np.mean``; ``per_row`` is ``model=None``, ``constant`` the
``Polynomial1D(0)`` fit, the mean of the row values), ``trim_image``, ``subtract_bias``, ``subtract_dark``
(``master * data_exposure / dark_exposure``), ``flat_correct`` (``min_value`` clamp, divided by the
flat's mean or ``norm_value``) and ``Combiner.sigma_clipping`` (:func:`astropy.stats.sigma_clip`) then
``median_combine``/``average_combine`` (NaN-masked median or mean; uncertainty 1.4826 MAD or std, over
sqrt(n unmasked)). Tested against ccdproc in ``tests/test_ccd_vs_ccdproc.py``.
"""

from __future__ import annotations

import warnings
from typing import Literal

import dask.array as da
import numpy as np
import pydantic
import xarray as xr
from astropy.stats import median_absolute_deviation, sigma_clip
from pydantic import Field

from ..instruments.ccd import parse_section
from ..schema import DQ, FRAME, X, Y, dq_attrs, flag_where
from .registry import StepParams, record, register

FAMILY = "ccd"
PER_FRAME_RECIPE = ["ccd_overscan", "ccd_trim"]
CALIBRATE_RECIPE = ["ccd_bias", "ccd_dark", "ccd_flat"]
MAD_TO_SIGMA = 1.482602218505602  # ccdproc.sigma_func's factor


def _section(value: str | None) -> str | None:
    if value is not None:
        parse_section(value)  # ValueError says what is wrong
    return value


def common_value(ds: xr.Dataset, coord: str) -> str | None:
    """The one non-empty value of a frame coordinate (a header section), None if no frame has one;
    ValueError for frames that disagree."""
    if coord not in ds.coords:
        return None
    values = sorted({str(v) for v in np.asarray(ds[coord].values).ravel() if str(v)})
    if len(values) > 1:
        raise ValueError(f"one {coord.upper()} for every frame, got {', '.join(values)}")
    return values[0] if values else None


def _with_dq(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with a ``dq`` (DO_NOT_USE where the raw value is not finite) if it has none yet."""
    if "dq" in ds:
        return ds
    out = ds.copy()
    out["dq"] = flag_where(~np.isfinite(ds["data"]), DQ.DO_NOT_USE)
    return out


def _flag_nonfinite(ds: xr.Dataset, flag: int) -> xr.DataArray:
    return ds["dq"] | flag_where(~np.isfinite(ds["data"]), DQ.DO_NOT_USE | flag)


def _ref(refs: xr.Dataset | None, name: str, ds: xr.Dataset) -> xr.DataArray | None:
    """A master on the frames' grid (by position: its own pixel coordinates are not compared)."""
    if refs is None or name not in refs:
        return None
    ref = refs[name]
    want = (ds.sizes[Y], ds.sizes[X])
    if tuple(ref.shape) != want:
        raise ValueError(f"master {name}: {ref.shape[0]}x{ref.shape[1]} pixels, the frames {want[0]}x{want[1]} "
                         "(after trim)")  # fmt: skip
    return xr.DataArray(ref.data, dims=(Y, X), attrs=ref.attrs)


# ---- overscan and trim ------------------------------------------------------------------------------
class OverscanParams(StepParams):
    section: str | None = Field(None, description="the overscan, a FITS section [x0:x1,y0:y1] (1-based, "
                                "inclusive); null: the frames' BIASSEC")  # fmt: skip
    method: Literal["median", "mean"] = Field("median", description="how each row of the overscan is collapsed")
    model: Literal["constant", "per_row"] = Field("per_row", description="per_row: each row's value subtracted "
                                                  "from its row (ccdproc model=None); constant: their mean "
                                                  "(ccdproc model=Polynomial1D(0))")  # fmt: skip

    _check = pydantic.field_validator("section")(_section)


@register("ccd_overscan", OverscanParams, FAMILY)
def ccd_overscan(ds: xr.Dataset, refs: xr.Dataset | None, p: OverscanParams) -> xr.Dataset:
    """Overscan: each row's overscan median or mean (or their mean) subtracted (ccdproc subtract_overscan)."""
    ds = _with_dq(ds)
    section = p.section or common_value(ds, "biassec")
    if section is None:
        return record(ds, "ccd_overscan", "SKIPPED", p, "no section given and no BIASSEC")
    rows, cols = parse_section(section, (ds.sizes[Y], ds.sizes[X]))
    region = ds["data"].isel({Y: rows, X: cols})
    if region.sizes[Y] != ds.sizes[Y]:
        raise ValueError(f"an overscan section of every row (1:{ds.sizes[Y]}), got {section}")
    level = region.median(X) if p.method == "median" else region.mean(X)
    if p.model == "constant":
        level = level.mean(Y).broadcast_like(level)
    out = ds.copy()
    out["data"] = ds["data"] - level
    out["overscan"] = level.astype(np.float64)
    out["data"].attrs = dict(ds["data"].attrs)
    out["overscan"].attrs = {"units": ds["data"].attrs.get("units", "adu"),
                             "long_name": f"overscan level subtracted per row ({p.method}, {p.model}, {section})"}  # fmt: skip
    return record(out, "ccd_overscan", "COMPLETE", p, section)


class TrimParams(StepParams):
    section: str | None = Field(None, description="the part kept, a FITS section [x0:x1,y0:y1]; null: the "
                                "frames' TRIMSEC, else DATASEC")  # fmt: skip
    apply: bool = Field(True, description="false: keep the whole frame")

    _check = pydantic.field_validator("section")(_section)


@register("ccd_trim", TrimParams, FAMILY)
def ccd_trim(ds: xr.Dataset, refs: xr.Dataset | None, p: TrimParams) -> xr.Dataset:
    """Trim to a section (ccdproc trim_image): the job's, else TRIMSEC, else DATASEC."""
    section = (p.section or common_value(ds, "trimsec") or common_value(ds, "datasec")) if p.apply else None
    if section is None:
        return record(ds, "ccd_trim", "SKIPPED", p, "no section" if p.apply else "apply: false")
    rows, cols = parse_section(section, (ds.sizes[Y], ds.sizes[X]))
    return record(ds.isel({Y: rows, X: cols}), "ccd_trim", "COMPLETE", p, section)


# ---- calibration ------------------------------------------------------------------------------------
class BiasParams(StepParams):
    pass


@register("ccd_bias", BiasParams, FAMILY)
def ccd_bias(ds: xr.Dataset, refs: xr.Dataset | None, p: BiasParams) -> xr.Dataset:
    """Master bias subtracted (ccdproc subtract_bias)."""
    ds = _with_dq(ds)
    bias = _ref(refs, "bias", ds)
    if bias is None:
        return record(ds, "ccd_bias", "SKIPPED", p, "no master bias")
    out = ds.copy()
    out["data"] = ds["data"] - bias
    out["data"].attrs = dict(ds["data"].attrs)
    out["dq"] = _flag_nonfinite(out, DQ.UNRELIABLE_BIAS)
    return record(out, "ccd_bias", "COMPLETE", p)


class DarkParams(StepParams):
    scale: bool = Field(True, description="scale the master dark by the frame's EXPTIME over the dark's "
                        "(ccdproc subtract_dark scale=True)")  # fmt: skip


@register("ccd_dark", DarkParams, FAMILY)
def ccd_dark(ds: xr.Dataset, refs: xr.Dataset | None, p: DarkParams) -> xr.Dataset:
    """Master dark subtracted, scaled by exposure time (ccdproc subtract_dark)."""
    ds = _with_dq(ds)
    dark = _ref(refs, "dark", ds)
    if dark is None:
        return record(ds, "ccd_dark", "SKIPPED", p, "no master dark")
    out = ds.copy()
    if p.scale:
        t_dark = float(dark.attrs.get("exptime", np.nan))
        if not np.isfinite(ds["exptime"].values).all() or not t_dark > 0:
            raise ValueError(f"exposure times to scale the dark: frames {ds['exptime'].values.tolist()}, "
                             f"dark {t_dark}")  # fmt: skip
        ratio = xr.DataArray(np.asarray(ds["exptime"].values, np.float64) / t_dark, dims=(FRAME,))
        out["data"] = ds["data"] - dark * ratio
    else:
        out["data"] = ds["data"] - dark
    out["data"].attrs = dict(ds["data"].attrs)
    out["dq"] = _flag_nonfinite(out, DQ.UNRELIABLE_DARK)
    return record(out, "ccd_dark", "COMPLETE", p)


class FlatParams(StepParams):
    min_value: float | None = Field(None, description="flat values below this are set to it before normalizing "
                                    "(ccdproc min_value)")  # fmt: skip
    norm_value: float | None = Field(None, gt=0, description="divide the flat by this (default: its mean)")


@register("ccd_flat", FlatParams, FAMILY)
def ccd_flat(ds: xr.Dataset, refs: xr.Dataset | None, p: FlatParams) -> xr.Dataset:
    """Divided by the master flat normalized to its mean (ccdproc flat_correct)."""
    ds = _with_dq(ds)
    flat = _ref(refs, "flat", ds)
    if flat is None:
        return record(ds, "ccd_flat", "SKIPPED", p, "no master flat")
    if p.min_value is not None:
        flat = flat.where(~(flat < p.min_value), p.min_value)
    norm = p.norm_value if p.norm_value is not None else flat.mean()
    out = ds.copy()
    out["data"] = ds["data"] / (flat / norm)
    out["data"].attrs = dict(ds["data"].attrs)
    out["dq"] = _flag_nonfinite(out, DQ.UNRELIABLE_FLAT)
    return record(out, "ccd_flat", "COMPLETE", p)


# ---- the sigma-clipped combine (reduces the frame axis) ---------------------------------------------
class CombineParams(StepParams):
    method: Literal["median", "average"] = Field("median", description="ccdproc median_combine or average_combine")
    sigma_clip: bool = Field(True, description="reject outliers first (ccdproc Combiner.sigma_clipping)")
    low_thresh: float | None = Field(3.0, gt=0, description="rejection below the centre, in std (null: none)")
    high_thresh: float | None = Field(3.0, gt=0, description="rejection above the centre, in std (null: none)")
    cenfunc: Literal["median", "mean"] = Field("median", description="centre of the clipping")
    stdfunc: Literal["std", "mad_std"] = Field("std", description="spread of the clipping")
    maxiters: int | None = Field(1, ge=1, description="clipping iterations (null: until none is rejected)")
    bad_bits: int = Field(int(DQ.DO_NOT_USE), ge=0, description="DQ bits that leave a pixel of a frame out")


def _combine_block(data: np.ndarray, dq: np.ndarray, p: CombineParams) -> np.ndarray:
    """(frame, ty, tx) in, (4, ty, tx) out: combined value, uncertainty, frames used, DO_NOT_USE where none."""
    values = np.where((dq.astype(np.uint32) & np.uint32(p.bad_bits)) != 0, np.nan, data.astype(np.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels: NaN, counted below
        warnings.filterwarnings("ignore", message=".*contains NaN")
        if p.sigma_clip:
            clipped = sigma_clip(values, sigma_lower=p.low_thresh, sigma_upper=p.high_thresh, axis=0,
                                 maxiters=p.maxiters, cenfunc=p.cenfunc, stdfunc=p.stdfunc, masked=True, copy=True)  # fmt: skip
            values = np.where(np.ma.getmaskarray(clipped), np.nan, values)
        masked = np.isnan(values).sum(axis=0)
        ngood = values.shape[0] - masked
        if p.method == "median":
            value = np.nanmedian(values, axis=0)
            err = median_absolute_deviation(values, axis=0, ignore_nan=True) * MAD_TO_SIGMA
        else:
            value = np.nanmean(values, axis=0)
            err = np.nanstd(values, axis=0)
        err = err / np.sqrt(ngood)
    return np.stack([value, err, ngood, np.where(ngood == 0, float(DQ.DO_NOT_USE), 0.0)])


@register("ccd_combine", CombineParams, FAMILY, reduces=FRAME)
def ccd_combine(ds: xr.Dataset, refs: xr.Dataset | None, p: CombineParams) -> xr.Dataset:
    """Sigma-clipped median or mean over frames (ccdproc Combiner); reduces ``frame``, tile by tile."""
    ds = _with_dq(ds)
    data, dq = ds["data"].transpose(FRAME, Y, X).data, ds["dq"].transpose(FRAME, Y, X).data
    if isinstance(data, da.Array):
        data = data.rechunk({0: -1})
        dq = da.asarray(dq).rechunk(data.chunks)
        stack = da.map_blocks(_combine_block, data, dq, p=p, dtype=np.float64, chunks=((4,),) + data.chunks[1:],
                              meta=np.empty((0, 0, 0)))  # fmt: skip
    else:
        stack = _combine_block(np.asarray(data), np.asarray(dq), p)
    unit = ds["data"].attrs.get("units", "adu")
    coords = {k: ds.coords[k] for k in (Y, X) if k in ds.coords}
    out = xr.Dataset({
        "data": ((Y, X), stack[0], {"units": unit, "long_name": f"sigma-clipped {p.method} over frames"}),
        "err": ((Y, X), stack[1], {"units": unit, "long_name": "uncertainty of the combine (ccdproc's)"}),
        "ngood": ((Y, X), stack[2].astype(np.int32), {"long_name": "frames used per pixel"}),
        "dq": ((Y, X), stack[3].astype(np.uint32), dq_attrs()),
    }, coords=coords)  # fmt: skip
    out.attrs = {k: v for k, v in ds.attrs.items() if k not in ("inputs",)}
    out.attrs.update(frames=int(ds.sizes[FRAME]), combine=p.method)
    if "exptime" in ds.coords and ds.sizes[FRAME]:
        times = np.unique(np.asarray(ds["exptime"].values, np.float64))
        out.attrs["exptime"] = float(times[0]) if times.size == 1 else [float(t) for t in times]
    return record(out, "ccd_combine", "COMPLETE", p)


# ---- products ---------------------------------------------------------------------------------------
def frames_product(ds: xr.Dataset, dtype: str = "float32", long_name: str = "") -> xr.Dataset:
    """A per-frame group: ``data`` (frame, y, x) in ``dtype``, ``dq``, ``overscan`` if subtracted."""
    ds = _with_dq(ds)
    out = ds[[v for v in ("data", "dq", "overscan") if v in ds]].copy()
    out["data"] = ds["data"].astype(dtype)
    out["data"].attrs = {"units": ds["data"].attrs.get("units", "adu"), "long_name": long_name or "frames"}
    out["dq"] = ds["dq"].astype(np.uint32)
    out["dq"].attrs = dq_attrs()
    if "overscan" in out:
        out["overscan"].attrs = dict(ds["overscan"].attrs)
    out.attrs = dict(ds.attrs)
    return out
