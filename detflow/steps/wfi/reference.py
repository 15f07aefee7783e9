"""The corrections from reference data before linearity: ``refpix`` (row step from amp33 or the border
columns, channel step from the border rows, on the dark-subtracted cube) and ``bias_correction`` (the
``biascorr`` reference subtracted)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import xarray as xr
from pydantic import Field

from ...schema import READ, X, Y
from ..registry import StepParams, record, register
from .common import FAMILY, _geom, _pixel_index, _rechunk


# ---- reference pixels -----------------------------------------------------------------------------
class RefPixParams(StepParams):
    row_slope: Literal["auto", "fit", "pink_model"] = Field(
        "auto", description="row-step gain m: fitted, from the read reference's 1/f model, or the model when "
                            "the data have amp33 and the reference has the model (as gen_cal_image)")  # fmt: skip
    channel: bool = Field(True, description="subtract each channel's line through its bottom and top reference rows")
    fit_rows: Literal["active", "all"] = Field(
        "active", description="rows of the row-step fit: 'active' (the illuminated rows); 'all' includes the "
                              "dark border rows as gen_cal_image does, which biases m by the step between them")  # fmt: skip


def pink_model_slope(pink: dict) -> float:
    """Optimal row-step gain from the 1/f model of the read reference (the PIT's formula)."""
    cvar = pink["C_PINK"] ** 2
    m = pink["M_PINK"]
    return m * cvar / (m * m * cvar + pink["RU_PINK"] ** 2 + pink["std_median"] ** 2 / 128 / np.log(4096))


def _median(a: xr.DataArray, dims: list[str]) -> xr.DataArray:
    """Lazy median over ``dims`` (each made one chunk), float32 like the PIT's image arrays."""
    a = _rechunk(a, {d: -1 for d in dims})
    return xr.apply_ufunc(
        lambda v: np.median(v, axis=tuple(range(-len(dims), 0))).astype(np.float32), a,
        input_core_dims=[dims], dask="parallelized", output_dtypes=[np.float32])  # fmt: skip


@register("refpix", RefPixParams, FAMILY)
def refpix(ds: xr.Dataset, refs: xr.Dataset, p: RefPixParams) -> xr.Dataset:
    """Reference-pixel correction per resultant on the dark-subtracted cube: row step, channel step."""
    n = ds.sizes[X]
    geom = _geom(ds)
    nb, cw = geom.nborder, geom.channel_width
    nread = ds.sizes[READ]
    if nb == 0:
        return record(ds, "refpix", "SKIPPED", p, "no reference pixels (reference border 0)")
    if "dark_data" not in refs or refs.sizes["dark_k"] < nread:
        return record(ds, "refpix", "SKIPPED", p, "the dark reference has no roman.data cube for every resultant")
    dark = refs["dark_data"].isel(dark_k=slice(0, nread)).rename(dark_k=READ).astype(np.float32, copy=False)
    img = ds["data"] - dark
    has33 = "amp33" in ds and "read_amp33_med" in refs
    # row step: per row, the science median against the reference median (amp33, else the 4+4 border
    # columns), m from a least-squares line over all rows (or the 1/f model); subtract m (ref - median ref)
    sci_med = _median(img.isel({X: slice(nb, n - nb)}), [X])
    if has33:
        a = ds["amp33"].astype(np.float32) - refs["read_amp33_med"].astype(np.float32, copy=False)
        a = a - _median(a, [Y, "x_amp33"])
        ref_med = _rechunk(_median(a, ["x_amp33"]), {Y: sci_med.chunks[sci_med.get_axis_num(Y)]})
    else:
        ref_med = _median(xr.concat([img.isel({X: slice(0, nb)}), img.isel({X: slice(n - nb, n)})], X), [X])
    rm, sm = _rechunk(ref_med, {Y: -1}), _rechunk(sci_med, {Y: -1})
    mode = p.row_slope
    if mode == "auto":
        mode = "pink_model" if has33 and "read_pink_model" in refs else "fit"
    if mode == "pink_model":
        if "read_pink_model" not in refs:
            raise KeyError("row_slope: pink_model needs M_PINK, RU_PINK, C_PINK in the read reference")
        m = pink_model_slope(refs["read_pink_model"].attrs)
    else:
        # least squares over the active rows only: the border rows see no light, and the step from
        # them to the illuminated rows is not reference-pixel noise (it biases the PIT's m)
        rows = {Y: slice(nb, n - nb) if p.fit_rows == "active" else slice(None)}
        ra, sa = rm.isel(rows), sm.isel(rows)
        dr = ra - ra.mean(Y)
        m = (dr * (sa - sa.mean(Y))).sum(Y) / (dr * dr).sum(Y)
    img = img - m * (ref_med - _median(rm, [Y]))
    # channel step: a line through the medians of the bottom and top reference rows of each channel
    if p.channel:

        def channel_medians(rows):
            block = img.isel({Y: rows}).coarsen({X: cw}).construct({X: ("channel", "col")})
            return _rechunk(_median(block, [Y, "col"]), {"channel": -1})

        bottom = channel_medians(slice(0, nb))
        top = channel_medians(slice(n - nb, n))
        y0, y1 = (nb - 1) / 2.0, n - nb + (nb - 1) / 2.0  # row centres of the two reference bands
        slope = (top - bottom) / (y1 - y0)
        chan = xr.DataArray(np.arange(n) // cw, dims=X)
        yy, _ = _pixel_index(ds)
        img = img - (bottom.isel(channel=chan) + slope.isel(channel=chan) * (yy.astype(np.float32) - y0))
    out = ds.copy()
    result = (img + dark).astype(np.float32).transpose(*ds["data"].dims).assign_attrs(ds["data"].attrs)
    if ds["data"].chunks:  # keep the tiles of the input (the per-channel terms would split x otherwise)
        result = _rechunk(result, dict(zip(ds["data"].dims, ds["data"].chunks)))
    out["data"] = result
    return record(out, "refpix", "COMPLETE", p, f"row step {mode}{', channel step' if p.channel else ''}")


# ---- bias correction ------------------------------------------------------------------------------
class BiasCorrParams(StepParams):
    pass


@register("bias_correction", BiasCorrParams, FAMILY)
def bias_correction(ds: xr.Dataset, refs: xr.Dataset, p: BiasCorrParams) -> xr.Dataset:
    """Subtract the ``biascorr`` reference (its last ``nread`` resultants) from the active region."""
    nread = ds.sizes[READ]
    if "biascorr_data" not in refs or refs.sizes["biascorr_k"] < nread:
        return record(ds, "bias_correction", "SKIPPED", p, "no biascorr reference for every resultant")
    k = refs.sizes["biascorr_k"]
    corr = refs["biascorr_data"].isel(biascorr_k=slice(k - nread, k)).rename(biascorr_k=READ)
    out = ds.copy()
    out["data"] = (ds["data"] - corr.astype(np.float32)).astype(np.float32).transpose(*ds["data"].dims)
    out["data"].attrs = ds["data"].attrs
    return record(out, "bias_correction", "COMPLETE", p)
