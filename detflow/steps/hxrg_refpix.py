"""Reference-pixel correction of ground-based HxRG reads (family ``hxrg_ground``), per read, then the strip.

Dataset in: ``data`` (frame, read, y, x) DN on the whole array (reference pixels included). Each read is
corrected on its own, per output section (``noutputs`` sections of the columns) and per column parity
(even, odd), from 3-sigma clipped means (:func:`astropy.stats.sigma_clip`, iterated until nothing more is
clipped: scipy.stats.sigmaclip's result, which jwst's refpix uses):

* ``trim``: nothing subtracted; ``constant``: one mean of the bottom and top reference rows (all columns);
* ``constant_off``: per output and parity, the average of the bottom and the top means (jwst's top/bottom
  correction with ``odd_even_columns``);
* ``ramp``: per output and parity, the line through the bottom and top means placed at their true mean
  rows (rows 1-3 and 2044-2046 of IO:I: 2 and 2045); ``compat_rows`` puts them at IO:I's 1.5 and 2055.5;
* ``column``: the side reference columns (left and right), per row, smoothed along the rows (``gaussian``:
  the rows' mean over the columns, Gaussian of ``sigma`` rows, IO:I's kernel exp(-r^2/100): sigma 7.07;
  ``median``: jwst's running median of ``window`` rows of each side, reflected at the ends, the two
  sides averaged), subtracted from every pixel of its row;
* ``full``: ``ramp`` then ``column``.

``skip_border`` leaves the outermost reference row and column out of the means (IO:I: "these could be
wrong"). Then ``strip`` keeps the active region (its detector coordinates kept). Lazy on dask (the
reference regions are small: each is made one chunk along the rows and columns), eager on numpy.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import xarray as xr
from astropy.stats import sigma_clip
from pydantic import Field
from scipy.ndimage import gaussian_filter1d

from ..instruments.hxrg_ground import COMPAT_RAMP_ROWS, sections
from ..schema import X, Y
from .registry import StepParams, record, register

FAMILY = "hxrg_ground"
MODES = ("none", "trim", "constant", "constant_off", "ramp", "column", "full")


class RefPixParams(StepParams):
    mode: Literal["none", "trim", "constant", "constant_off", "ramp", "column", "full"] = Field(
        "full", description="none: nothing, no strip; trim: strip only; constant, constant_off, ramp, column, full"
    )
    ref: tuple[int, int, int, int] = Field((4, 4, 4, 4), description="reference rows/columns: bottom, top, left, "
                                           "right")  # fmt: skip
    noutputs: int | None = Field(None, ge=1, description="output sections across the columns (null: NOUTPUTS)")
    skip_border: bool = Field(True, description="leave the outermost reference row/column out of the means")
    compat_rows: bool = Field(False, description="ramp: the bottom/top means at rows 1.5 and 2055.5 (IO:I's "
                              "remove_reference.py) instead of their true mean rows")  # fmt: skip
    clip_sigma: float | None = Field(3.0, gt=0, description="sigma clipping of the means (null: plain means)")
    column_smoothing: Literal["gaussian", "median"] = Field("gaussian", description="side columns along the rows: "
                                                            "IO:I's Gaussian or jwst's running median")  # fmt: skip
    sigma: float = Field(50**0.5, gt=0, description="Gaussian sigma (rows)")
    window: int = Field(11, ge=1, description="running-median window (rows, odd)")
    strip: bool = Field(True, description="keep the active region only")


def clipped_mean(a: np.ndarray, sigma: float | None) -> np.ndarray:
    """The mean over the last axis after iterative sigma clipping about the mean (NaN ignored)."""
    if sigma is None:
        return np.nanmean(a, axis=-1)
    with np.errstate(invalid="ignore"):
        c = sigma_clip(a, sigma=sigma, maxiters=None, cenfunc="mean", stdfunc="std", axis=-1, masked=True)
    return np.ma.filled(c.mean(axis=-1).astype(np.float64), np.nan)


def _section_means(a: np.ndarray, nout: int, sigma: float | None) -> np.ndarray:
    """(..., rows, nx) -> (..., nout * 2): clipped means per output section and column parity (even first)."""
    *lead, nr, nx = a.shape
    w = nx // nout
    b = a.reshape(*lead, nr, nout, w // 2, 2)
    b = np.moveaxis(b, (-3, -1), (-4, -3))  # (..., nout, parity, rows, w/2)
    return clipped_mean(b.reshape(*lead, nout, 2, nr * (w // 2)), sigma).reshape(*lead, nout * 2)


def _all_mean(a: np.ndarray, sigma: float | None) -> np.ndarray:
    return clipped_mean(a.reshape(*a.shape[:-2], -1), sigma)


def _whole(a: xr.DataArray, dims) -> xr.DataArray:
    return a.chunk(dict.fromkeys(dims, -1)) if a.chunks is not None else a


def _reduce(region: xr.DataArray, func, out_dim: str | None, size: int, **kw) -> xr.DataArray:
    """``func`` over the (y, x) of a small region, per frame and read: -> (frame, read[, out_dim])."""
    return xr.apply_ufunc(func, _whole(region, (Y, X)), kwargs=kw, input_core_dims=[[Y, X]],
                          output_core_dims=[[out_dim]] if out_dim else [[]], dask="parallelized",
                          output_dtypes=[np.float64],
                          dask_gufunc_kwargs={"output_sizes": {out_dim: size}} if out_dim else {})  # fmt: skip


def _rows(ny: int, ref: tuple[int, int, int, int], skip: bool) -> tuple[np.ndarray, np.ndarray]:
    b, t = ref[0], ref[1]
    s = 1 if skip else 0
    return np.arange(min(s, b - 1) if b else 0, b), np.arange(ny - t, ny - (min(s, t - 1) if t else 0))


def _cols(nx: int, ref: tuple[int, int, int, int], skip: bool) -> tuple[np.ndarray, np.ndarray]:
    l, r = ref[2], ref[3]  # noqa: E741
    s = 1 if skip else 0
    return np.arange(min(s, l - 1) if l else 0, l), np.arange(nx - r, nx - (min(s, r - 1) if r else 0))


def noutputs_of(ds: xr.Dataset, p: RefPixParams) -> int:
    """The output sections: the parameter, else the frames' one NOUTPUTS (ValueError otherwise)."""
    if p.noutputs is not None:
        return p.noutputs
    values = np.unique(np.asarray(ds["noutputs"].values, np.float64)) if "noutputs" in ds.coords else np.array([])
    if values.size != 1 or not np.isfinite(values[0]):
        raise ValueError(f"one NOUTPUTS for every frame (or noutputs in the job), got {values.tolist()}")
    return int(values[0])


def top_bottom(ds: xr.Dataset, p: RefPixParams) -> xr.DataArray:
    """The top/bottom correction of each read (frame, read, y, x), lazy on dask data."""
    data = ds["data"]
    ny, nx = data.sizes[Y], data.sizes[X]
    rb, rt = _rows(ny, p.ref, p.skip_border)
    bottom, top = data.isel({Y: rb}), data.isel({Y: rt})
    if p.mode == "constant":
        both = xr.concat([bottom, top], Y)
        return _reduce(both, _all_mean, None, 0, sigma=p.clip_sigma)
    nout = noutputs_of(ds, p)
    w = sections(nx, nout)
    if w % 2:
        raise ValueError(f"an even number of columns per output ({nx} / {nout} = {w})")
    mb = _reduce(bottom, _section_means, "section", 2 * nout, nout=nout, sigma=p.clip_sigma)
    mt = _reduce(top, _section_means, "section", 2 * nout, nout=nout, sigma=p.clip_sigma)
    sec = xr.DataArray((np.arange(nx) // w) * 2 + np.arange(nx) % 2, dims=X)
    mb, mt = mb.isel(section=sec), mt.isel(section=sec)  # (frame, read, x)
    if p.mode == "constant_off":
        return 0.5 * (mb + mt)
    yb, yt = COMPAT_RAMP_ROWS if p.compat_rows else (float(rb.mean()), float(rt.mean()))
    frac = xr.DataArray((np.arange(ny) - yb) / (yt - yb), dims=Y)
    return mb + (mt - mb) * frac


def _smooth_gaussian(side: np.ndarray, sigma: float) -> np.ndarray:
    """(..., y, cols) -> (..., y): the rows' mean over the columns, Gaussian along the rows (reflected)."""
    return gaussian_filter1d(np.nanmean(side, axis=-1), sigma, axis=-1, mode="reflect")


def _running_median(side: np.ndarray, window: int) -> np.ndarray:
    """(..., y, cols) -> (..., y): the median of ``window`` rows x all columns (ends reflected, jwst)."""
    window += 1 - window % 2
    h = window // 2
    pad = [(0, 0)] * (side.ndim - 2) + [(h, h), (0, 0)]
    win = np.lib.stride_tricks.sliding_window_view(np.pad(side, pad, mode="reflect"), window, axis=-2)
    return np.nanmedian(win.reshape(*win.shape[:-2], -1), axis=-1)


def side_columns(ds: xr.Dataset, p: RefPixParams) -> xr.DataArray | None:
    """The side-column correction of each row (frame, read, y); None without side reference columns."""
    data = ds["data"]
    left, right = _cols(data.sizes[X], p.ref, p.skip_border)
    sides = [data.isel({X: c}) for c in (left, right) if c.size]
    if not sides:
        return None

    def smooth(region):
        if p.column_smoothing == "gaussian":
            return xr.apply_ufunc(_smooth_gaussian, _whole(region, (Y, X)), kwargs={"sigma": p.sigma},
                                  input_core_dims=[[Y, X]], output_core_dims=[[Y]], dask="parallelized",
                                  output_dtypes=[np.float64])  # fmt: skip
        return xr.apply_ufunc(_running_median, _whole(region, (Y, X)), kwargs={"window": p.window},
                              input_core_dims=[[Y, X]], output_core_dims=[[Y]], dask="parallelized",
                              output_dtypes=[np.float64])  # fmt: skip

    if p.column_smoothing == "gaussian":
        return smooth(xr.concat(sides, X))
    return sum(smooth(s) for s in sides) / len(sides)


def strip_slices(ny: int, nx: int, ref: tuple[int, int, int, int]) -> tuple[slice, slice]:
    return slice(ref[0], ny - ref[1]), slice(ref[2], nx - ref[3])


@register("hxrg_refpix", RefPixParams, FAMILY)
def hxrg_refpix(ds: xr.Dataset, refs: xr.Dataset | None, p: RefPixParams) -> xr.Dataset:
    """Reference pixels per read, output and column parity (trim ... full), then the strip to the active region."""
    if p.mode == "none":
        return record(ds, "hxrg_refpix", "SKIPPED", p, "refpix: none")
    ny, nx = ds.sizes[Y], ds.sizes[X]
    has_rows, has_cols = p.ref[0] > 0 and p.ref[1] > 0, p.ref[2] > 0 or p.ref[3] > 0
    need_rows = p.mode in ("constant", "constant_off", "ramp", "full")
    need_cols = p.mode in ("column", "full")
    if (need_rows and not has_rows) or (need_cols and not has_cols):
        if not any(p.ref):
            return record(ds, "hxrg_refpix", "SKIPPED", p, "no reference pixels")
        raise ValueError(f"refpix {p.mode} needs reference {'rows at the bottom and top' if need_rows else 'columns'}"
                         f", got ref {list(p.ref)}")  # fmt: skip
    data = ds["data"]
    notes = []
    if need_rows:
        data = data - top_bottom(ds, p)
        notes.append(f"{p.mode if p.mode != 'full' else 'ramp'} ({noutputs_of(ds, p)} outputs)"
                     if p.mode != "constant" else "constant")  # fmt: skip
    if need_cols:
        side = side_columns(ds.assign(data=data), p)
        data = data - side
        notes.append(f"column ({p.column_smoothing})")
    out = ds.copy()
    out["data"] = data.astype(np.float64).assign_attrs(ds["data"].attrs)
    if p.strip:
        rows, cols = strip_slices(ny, nx, p.ref)
        out = out.isel({Y: rows, X: cols})
        notes.append(f"stripped to rows {rows.start}:{rows.stop}, columns {cols.start}:{cols.stop}")
    return record(out, "hxrg_refpix", "COMPLETE", p, "; ".join(notes))
