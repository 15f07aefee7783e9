"""The ``sky`` step on the slopes (histogram-mode sky, optional 2-D Legendre sky subtracted) and the
good-pixel mask grown from the DQ flags that it measures the sky on."""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr
from pydantic import Field

from ... import schema
from ...kernels import mask as kmask
from ...kernels import sky as ksky
from ...schema import FRAME, X, Y
from ..registry import StepParams, record, register
from .common import FAMILY, _geom, _rechunk


# ---- good-pixel mask and sky ----------------------------------------------------------------------
def _grow_block(dq, *, sizes):
    out = np.empty(dq.shape, dtype=bool)
    for f in range(dq.shape[0]):
        kmask.grow_bits(dq[f], sizes, out[f])
    return out


def grown_mask(dq: xr.DataArray, table: dict[str, int] | None = None) -> xr.DataArray:
    """True where a pixel is masked by the grown flags (``schema.PIXEL_MASK_1`` by default); lazy,
    tiles exchanging 2-pixel halos. ``dq`` is (frame, y, x)."""
    sizes = schema.mask_sizes(table or schema.PIXEL_MASK_1)
    dq = dq.transpose(FRAME, Y, X)
    arr = da.map_overlap(_grow_block, da.asarray(dq.data), depth={0: 0, 1: 2, 2: 2}, boundary="none",
                         dtype=bool, sizes=sizes, meta=np.empty((0, 0, 0), dtype=bool))  # fmt: skip
    return dq.copy(data=arr)


def _sky_model(coefs: xr.DataArray, slope: xr.DataArray, order: int) -> xr.DataArray:
    """``sum_k c_k P_i(u) P_j(v)`` on the grid of ``slope`` (separable, so built from 1-D Legendre rows)."""
    from scipy.special import eval_legendre

    ny, nx = slope.sizes[Y], slope.sizes[X]
    u = 2 * np.arange(nx) / nx - 1
    v = 2 * np.arange(ny) / ny - 1
    ij = [(i, j) for i in range(order + 1) for j in range(order + 1 - i)]
    lpx = xr.DataArray(np.stack([eval_legendre(i, u) for i, _ in ij]).astype(np.float32), dims=("sky_coef", X))
    lpy = xr.DataArray(np.stack([eval_legendre(j, v) for _, j in ij]).astype(np.float32), dims=("sky_coef", Y))
    chunks = dict(zip(slope.dims, slope.chunks)) if slope.chunks else {}
    lpx = lpx.chunk({"sky_coef": -1, X: chunks.get(X, -1)})
    lpy = lpy.chunk({"sky_coef": -1, Y: chunks.get(Y, -1)})
    return (coefs.astype(np.float32).chunk({"sky_coef": -1}) * lpy * lpx).sum("sky_coef").transpose(FRAME, Y, X)


class SkyParams(StepParams):
    order: int | None = Field(
        None, ge=0, le=10, description="SKYORDER: subtract a 2-D Legendre sky of this total degree"
    )


@register("sky", SkyParams, FAMILY)
def sky(ds: xr.Dataset, refs: xr.Dataset, p: SkyParams) -> xr.Dataset:
    """Histogram-mode sky of the 4x4-binned masked slopes (always); with ``order`` a 2-D Legendre sky
    fitted to the medians of an 8x8 grid of blocks is subtracted (``data_withsky`` keeps the slope)."""
    geom = _geom(ds)
    nb, n = geom.nborder, geom.nside
    act = {Y: slice(nb, n - nb), X: slice(nb, n - nb)}
    masked = grown_mask(ds["dq"]).isel(act)
    slope = ds["data"].transpose(FRAME, Y, X).isel(act)
    one = {Y: -1, X: -1}
    binned_src = _rechunk(xr.where(masked, np.float32(np.nan), slope).astype(np.float32), one)
    mode = xr.apply_ufunc(lambda a: ksky.smooth_mode(ksky.bin4(a)), binned_src, input_core_dims=[[Y, X]], vectorize=True,
                          dask="parallelized", output_dtypes=[np.float64])  # fmt: skip
    out = ds.copy()
    out["sky_mode"] = mode.astype(np.float32).assign_attrs(
        units=schema.UNITS["DN/s"], long_name="histogram-mode sky of the 4x4-binned masked slopes")  # fmt: skip
    if p.order is None:
        return record(out, "sky", "COMPLETE", p, "sky mode measured, no sky subtracted")
    a = geom.nactive
    meds = xr.apply_ufunc(ksky.sky_block_medians, _rechunk(slope, one), input_core_dims=[[Y, X]],
                          output_core_dims=[["sky_by", "sky_bx"]], vectorize=True, dask="parallelized",
                          output_dtypes=[np.float64], dask_gufunc_kwargs={"output_sizes": {"sky_by": 8, "sky_bx": 8}})  # fmt: skip
    ncoef = (p.order + 1) * (p.order + 2) // 2
    coefs = xr.apply_ufunc(lambda m: ksky.sky_fit(m, a, a, p.order), meds, input_core_dims=[["sky_by", "sky_bx"]],
                           output_core_dims=[["sky_coef"]], vectorize=True, dask="parallelized",
                           output_dtypes=[np.float64], dask_gufunc_kwargs={"output_sizes": {"sky_coef": ncoef}})  # fmt: skip
    model = _sky_model(coefs, slope, p.order).data
    model = da.pad(model, ((0, 0), (nb, nb), (nb, nb))).rechunk(ds["data"].transpose(FRAME, Y, X).data.chunks)
    out["data_withsky"] = ds["data"].copy().assign_attrs(long_name="slope before sky subtraction")
    full = ds["data"].transpose(FRAME, Y, X)
    out["data"] = full.copy(data=(full.data - model).astype(np.float32)).transpose(*ds["data"].dims)
    out["sky_coefs"] = coefs.astype(np.float32).assign_attrs(
        long_name=f"2-D Legendre sky coefficients, total degree <= {p.order}, order (i, j) i outer",
        units=schema.UNITS["DN/s"])  # fmt: skip
    return record(out, "sky", "COMPLETE", p, f"Legendre sky of order {p.order} subtracted")
