"""The ``ipc`` step (each linearised resultant deconvolved with the per-pixel ``ipc4d`` kernel, in
electrons) with the deconvolution itself, which the flat step applies to its reference too; and the
``dark_current`` step (``tbar_j * dark_slope`` subtracted from each resultant), whose dark slope map is
deconvolved the same way when the ipc step ran and is used by the fused linearity + dark + ramp fit too."""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr
from pydantic import Field

from ...kernels import ipc as kipc
from ...schema import FRAME, READ, X, Y
from ..registry import StepParams, record, register
from .common import FAMILY, _active_mask, _geom


# ---- IPC ------------------------------------------------------------------------------------------
class IPCParams(StepParams):
    order: int = Field(2, ge=1, le=4, description="order of the IPC inversion (error ~ alpha^(order+1))")


def _ipc_block(data, kernel, gain, *, order):
    out = np.empty(data.shape, dtype=np.float32)
    for f in range(data.shape[0]):
        for r in range(data.shape[1]):
            kipc.ipc_reverse(data[f, r], kernel, gain[0, 0], order, out[f, r])
    return out


def ipc_gain(refs: xr.Dataset) -> xr.DataArray:
    """The gain (e/DN) the IPC deconvolution converts with: where it is not finite and > 0 (those pixels
    are flagged NO_GAIN_VALUE), the mean of the usable gains, so that no NaN spreads to the neighbours."""
    g = refs["gain_data"].astype(np.float32)
    ok = np.isfinite(g) & (g > 0)
    return xr.where(ok, g, g.where(ok).mean()).astype(np.float32)


def ipc_deconvolve(arr: da.Array, kernel: da.Array, gain: da.Array, nb: int, order: int) -> da.Array:
    """IPC-deconvolve the active region of every (frame, read) plane of ``arr`` (DN, in electrons via
    ``gain``); the reference border is passed through. Tiles exchange halos of ``order`` pixels."""
    n = arr.shape[-1]
    act = arr[..., nb : n - nb, nb : n - nb].astype(np.float32)
    kern = kernel.rechunk({2: act.chunks[2], 3: act.chunks[3]})
    g = gain[nb : n - nb, nb : n - nb].astype(np.float64).rechunk(act.chunks[2:])[None, None]
    halo = {0: 0, 1: 0, 2: order, 3: order}
    res = da.map_overlap(_ipc_block, act, kern, g, depth=[halo, halo, halo], boundary="none", trim=True,
                         align_arrays=False, dtype=np.float32, order=order, meta=np.empty((0,) * 4, np.float32))  # fmt: skip
    full = da.pad(res, ((0, 0), (0, 0), (nb, nb), (nb, nb))).rechunk(arr.chunks)
    yy = da.arange(n, chunks=arr.chunks[2])[:, None]
    xx = da.arange(n, chunks=arr.chunks[3])[None, :]
    inside = (yy >= nb) & (yy < n - nb) & (xx >= nb) & (xx < n - nb)
    return da.where(inside, full, arr).astype(np.float32)


@register("ipc", IPCParams, FAMILY)
def ipc(ds: xr.Dataset, refs: xr.Dataset, p: IPCParams) -> xr.Dataset:
    """IPC deconvolution of each linearised resultant with the per-pixel ``ipc4d`` kernel, in electrons."""
    if "ipc4d_data" not in refs:
        return record(ds, "ipc", "SKIPPED", p, "no ipc4d reference")
    geom = _geom(ds)
    data = ds["data"].transpose(FRAME, READ, Y, X)
    darr = da.asarray(data.data).rechunk({0: 1, 1: -1})
    out_arr = ipc_deconvolve(darr, refs["ipc4d_data"].data, ipc_gain(refs).data, geom.nborder, p.order)
    out = ds.copy()
    out["data"] = data.copy(data=out_arr).transpose(*ds["data"].dims)
    out.attrs["ipc_order"] = p.order  # dark_current deconvolves the dark slope the same way
    return record(out, "ipc", "COMPLETE", p)


# ---- dark current ---------------------------------------------------------------------------------
class DarkParams(StepParams):
    pass


def _dark_map(ds: xr.Dataset, refs: xr.Dataset) -> xr.DataArray:
    """The dark slope on the active pixels, 0 on the reference border (float32); IPC-deconvolved like
    the data when the ipc step ran (the dark reference is measured through IPC)."""
    geom = _geom(ds)
    dark = refs["dark_dark_slope"].astype(np.float32)
    if ds.attrs.get("ipc_order"):
        arr = ipc_deconvolve(dark.data[None, None], refs["ipc4d_data"].data, ipc_gain(refs).data,
                             geom.nborder, int(ds.attrs["ipc_order"]))[0, 0]  # fmt: skip
        dark = dark.copy(data=arr)
    return dark * _active_mask(ds, geom).astype(np.float32)


@register("dark_current", DarkParams, FAMILY)
def dark_current(ds: xr.Dataset, refs: xr.Dataset, p: DarkParams) -> xr.Dataset:
    """Subtract ``tbar_j * dark_slope`` from each resultant (active pixels; reference pixels untouched)."""
    out = ds.copy()
    out["data"] = (ds["data"] - ds["tbar"].astype(np.float32) * _dark_map(ds, refs)).astype(np.float32, copy=False)
    out["data"].attrs = ds["data"].attrs
    return record(out, "dark_current", "COMPLETE", p)
