"""The ``flat`` step on the slopes: the flat map (clipped, pixel-area factor from the WCS removed,
IPC-deconvolved when the ipc step ran) and the flags it brings (NO_FLAT_FIELD, NO_GAIN_VALUE)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr
from pydantic import Field

from ... import schema
from ...instruments.roman_wfi import OMEGA_IDEAL
from ...kernels import pixel_area as kpix
from ...schema import DQ, X, Y
from ..registry import StepParams, record, register
from .common import FAMILY, _active_mask, _geom
from .ipc_dark import ipc_deconvolve, ipc_gain


# ---- flat field -----------------------------------------------------------------------------------
class FlatParams(StepParams):
    min_flat: float = Field(0.1, gt=0, description="NO_FLAT_FIELD below this flat value (then clipped to it)")
    max_flat: float = Field(10.0, gt=0, description="NO_FLAT_FIELD above this flat value (then clipped to it)")
    min_gain: float = Field(0.1, gt=0, description="NO_GAIN_VALUE at or below this gain (e/DN)")


def flat_map(ds: xr.Dataset, refs: xr.Dataset, p: FlatParams) -> tuple[xr.DataArray, xr.DataArray]:
    """The flat to divide by (full frame, 1 on the reference border, clipped, IPC-deconvolved in
    electrons when the ipc step ran) and the flags it brings (NO_FLAT_FIELD, NO_GAIN_VALUE)."""
    geom = _geom(ds)
    active = _active_mask(ds, geom)
    flat = xr.where(active, refs["flat_data"].astype(np.float32), np.float32(1.0))
    bad = (flat < p.min_flat) | (flat > p.max_flat) | flat.isnull()
    gain = refs["gain_data"].astype(np.float32)
    flags = schema.flag_where(bad, DQ.NO_FLAT_FIELD) | schema.flag_where(active & ~(gain > p.min_gain),
                                                                        DQ.NO_GAIN_VALUE)  # fmt: skip
    flat = flat.fillna(1.0).clip(p.min_flat, p.max_flat)
    if "wcs_header" in refs.attrs:  # the flat holds pixel area x QE: keep the QE (as the PIT does)
        flat = flat / _area_factor(flat, refs.attrs["wcs_header"])
    if ds.attrs.get("ipc_order") and "ipc4d_data" in refs:
        g = ipc_gain(refs).clip(p.min_gain, None)
        arr = ipc_deconvolve(da.asarray(flat.transpose(Y, X).data)[None, None], refs["ipc4d_data"].data,
                             da.asarray(g.transpose(Y, X).data), geom.nborder, int(ds.attrs["ipc_order"]))[0, 0]  # fmt: skip
        flat = flat.transpose(Y, X).copy(data=arr)
    return flat.astype(np.float32), flags


def _area_block(block, *, header: str, north: bool, nx: int, block_info=None):
    from astropy.io import fits
    from astropy.wcs import WCS

    (y0, y1), (x0, x1) = block_info[0]["array-location"]
    area = kpix.pixel_area(WCS(fits.Header.fromstring(header)), y0, y1, nx, north)
    return (area[:, x0:x1] / OMEGA_IDEAL).astype(np.float32)


def _area_factor(like: xr.DataArray, header: str) -> xr.DataArray:
    """Pixel solid angle over (0.11 arcsec)^2, tiled like ``like`` (y, x); pixel indices 0-based full frame."""
    from astropy.io import fits
    from astropy.wcs import WCS

    w = WCS(fits.Header.fromstring(header))
    north = float(w.all_pix2world([[-1.0, -1.0]], 0)[0, 1]) > 0  # the PIT's choice of projection pole
    like = like.transpose(Y, X)
    arr = da.map_blocks(_area_block, da.asarray(like.data), header=header, north=north, nx=like.sizes[X],
                        dtype=np.float32)  # fmt: skip
    return like.copy(data=arr)


@register("flat", FlatParams, FAMILY)
def flat(ds: xr.Dataset, refs: xr.Dataset, p: FlatParams) -> xr.Dataset:
    """Divide the slope by the flat and both variances by its square; NO_FLAT_FIELD, NO_GAIN_VALUE."""
    if "flat_data" not in refs:
        return record(ds, "flat", "SKIPPED", p, "no flat reference")
    f, flags = flat_map(ds, refs, p)
    out = ds.copy()
    out["data"] = (ds["data"] / f).astype(np.float32).assign_attrs(ds["data"].attrs)
    for v in ("var_rnoise", "var_poisson"):
        out[v] = (ds[v] / (f * f)).astype(np.float32).assign_attrs(ds[v].attrs)
    out["err"] = np.sqrt(out["var_rnoise"] + out["var_poisson"]).astype(np.float32).assign_attrs(ds["err"].attrs)
    out["dq"] = (ds["dq"] | flags).astype(np.uint32).transpose(*ds["dq"].dims).assign_attrs(ds["dq"].attrs)
    note = "IPC-deconvolved flat" if ds.attrs.get("ipc_order") else ""
    area = "pixel-area factor from the WCS" if "wcs_header" in refs.attrs else "pixel-area factor 1 (no WCS)"
    return record(out, "flat", "COMPLETE", p, (note + "; " if note else "") + area)
