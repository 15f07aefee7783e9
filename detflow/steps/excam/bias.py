"""L1 -> L2a, first step: the row-by-row bias from the prescan (``excam_bias``), which also crops the frame
to the image area (or keeps the full frame, ``region: full``) and measures each frame's read noise."""

from __future__ import annotations

from typing import Literal

import dask.array as da
import numpy as np
import xarray as xr
from pydantic import Field

from ...kernels import emccd
from ...schema import FRAME, X, Y
from ..registry import StepParams, record, register
from .common import FAMILY, _geom, _map_frames


class BiasParams(StepParams):
    bias_offset: float = Field(0.0, description="subtracted from the prescan median (II&T bias_offset, DN)")
    bias_offset_err: float = Field(0.0, ge=0, description="its error, added in quadrature to the row error (DN)")
    outlier_nsigma: float | None = Field(5.0, gt=0, description="rows whose prescan median is this many std "
                                         "from the median of all rows take that median (corgidrp num_stds); "
                                         "null: off (II&T)")  # fmt: skip
    region: Literal["image", "full"] = Field("image", description="'image': crop to the image area now (corgidrp "
                                             "default); 'full': keep the full frame through the cosmic-ray step "
                                             "so tails run on into the next row")  # fmt: skip


def _bias_block(block: xr.Dataset, cols, rows, xs, offset, offset_err, nsigma) -> xr.Dataset:
    raw = block["data"].values[:, 0]  # (f, rows, cols) uint16
    bias, err = emccd.row_bias(raw[:, rows], cols, offset, nsigma)
    read_noise = np.median(err, axis=1) * np.sqrt(cols[1] - cols[0])  # the prescan's rms: read noise (DN)
    data = raw[:, rows, xs].astype(np.float64) - bias[:, :, None]
    err = np.sqrt(err**2 + offset_err**2)
    dims = (FRAME, Y, X)
    return xr.Dataset({
        "data": (dims, data),
        "err": (dims, np.broadcast_to(err[:, :, None], data.shape).copy()),
        "dq": (dims, np.zeros(data.shape, dtype=np.uint32)),
        "bias": ((FRAME, Y), bias),
        "rejected": ((FRAME,), np.zeros(data.shape[0], dtype=np.uint8)),
        "read_noise": ((FRAME,), read_noise),
    }, coords={Y: block[Y].values[rows], X: block[X].values[xs]})  # fmt: skip


@register("excam_bias", BiasParams, FAMILY)
def excam_bias(ds: xr.Dataset, refs: xr.Dataset | None, p: BiasParams) -> xr.Dataset:
    """Row-by-row bias: median of the reliable prescan columns per row minus ``bias_offset``."""
    geom = _geom(ds)
    rows, xs = geom.image.slices if p.region == "image" else (slice(None), slice(None))
    ny = len(range(*rows.indices(geom.frame_rows)))
    nx = len(range(*xs.indices(geom.frame_cols)))
    fchunks = ds["data"].chunks[0] if ds["data"].chunks else (ds.sizes[FRAME],)
    f64 = da.zeros((ds.sizes[FRAME], ny, nx), chunks=(fchunks, ny, nx))
    template = xr.Dataset({
        "data": ((FRAME, Y, X), f64), "err": ((FRAME, Y, X), f64),
        "dq": ((FRAME, Y, X), f64.astype(np.uint32)),
        "bias": ((FRAME, Y), da.zeros((ds.sizes[FRAME], ny), chunks=(fchunks, ny))),
        "rejected": ((FRAME,), da.zeros(ds.sizes[FRAME], chunks=(fchunks,), dtype=np.uint8)),
        "read_noise": ((FRAME,), da.zeros(ds.sizes[FRAME], chunks=(fchunks,))),
    }, coords={Y: ds[Y].values[rows], X: ds[X].values[xs]})  # fmt: skip
    out = _map_frames(ds, _bias_block, template, cols=geom.reliable_cols, rows=rows, xs=xs, offset=p.bias_offset,
                      offset_err=p.bias_offset_err, nsigma=p.outlier_nsigma)  # fmt: skip
    out.attrs = dict(ds.attrs, region=p.region, bias_offset=p.bias_offset)
    out["data"].attrs["units"] = out["err"].attrs["units"] = out["bias"].attrs["units"] = "DN"
    return record(out, "excam_bias", "COMPLETE", p)
