"""L2a -> L2b, last steps: the flat division (``excam_flat``; NaN and NO_FLAT_FIELD where the flat is 0) and
the bad-pixel map (``excam_badpix``: OR'ed into DQ, flagged pixels set to NaN)."""

from __future__ import annotations

import numpy as np
import xarray as xr
from pydantic import Field

from ...kernels import emccd
from ...schema import DQ, FRAME, X, Y
from ..registry import StepParams, record, register
from .common import FAMILY, _image, _pixelwise


class FlatParams(StepParams):
    pass


def _flat_np(data, err, dq, flat, flat_err, with_err):
    out = np.empty(data.shape), np.empty(data.shape), np.empty(data.shape, dtype=np.uint32)
    emccd.divide_flat(data, np.broadcast_to(err, data.shape), np.broadcast_to(dq, data.shape), _image(flat),
                      _image(flat_err), with_err, np.uint32(DQ.NO_FLAT_FIELD), *out)  # fmt: skip
    return out


@register("excam_flat", FlatParams, FAMILY)
def excam_flat(ds: xr.Dataset, refs: xr.Dataset | None, p: FlatParams) -> xr.Dataset:
    """Flat division; NaN and NO_FLAT_FIELD where the flat is 0."""
    if refs is None or "flat" not in refs:
        return record(ds, "excam_flat", "SKIPPED", p, "no flatfield_filepath")
    with_err = "flat_err" in refs
    data, err, dq = _pixelwise(_flat_np, ds["data"].astype(np.float64, copy=False),
                               ds["err"].astype(np.float64, copy=False), ds["dq"].astype(np.uint32, copy=False),
                               refs["flat"],
                               refs["flat_err"] if with_err else xr.zeros_like(refs["flat"]), nout=3,
                               dtypes=(np.float64, np.float64, np.uint32), with_err=with_err)  # fmt: skip
    out = ds.assign(data=data, err=err, dq=dq).transpose(FRAME, Y, X, ...)
    out["data"].attrs["units"] = out["err"].attrs["units"] = "electron"
    return record(out, "excam_flat", "COMPLETE", p)


class BadpixParams(StepParams):
    nan_flagged: bool = Field(True, description="set every flagged pixel to NaN (corgidrp correct_bad_pixels)")


def _badpix_np(data, dq, badpix, with_map, nan_flagged):
    out = np.empty(data.shape), np.empty(data.shape, dtype=np.uint32)
    emccd.flag_bad_pixels(data, np.broadcast_to(dq, data.shape), _image(badpix), with_map, np.uint32(DQ.DO_NOT_USE),
                          nan_flagged, *out)  # fmt: skip
    return out


@register("excam_badpix", BadpixParams, FAMILY)
def excam_badpix(ds: xr.Dataset, refs: xr.Dataset | None, p: BadpixParams) -> xr.Dataset:
    """Bad-pixel map OR'ed into DQ (DO_NOT_USE); flagged pixels set to NaN."""
    with_map = refs is not None and "badpix" in refs
    badpix = refs["badpix"] if with_map else xr.zeros_like(ds["dq"].isel({FRAME: 0}, drop=True), dtype=np.uint8)
    data, dq = _pixelwise(_badpix_np, ds["data"].astype(np.float64, copy=False), ds["dq"].astype(np.uint32, copy=False),
                          badpix, nout=2,
                          dtypes=(np.float64, np.uint32), with_map=with_map, nan_flagged=p.nan_flagged)  # fmt: skip
    out = ds.assign(dq=dq.transpose(FRAME, Y, X))
    if p.nan_flagged:
        out["data"] = data.transpose(FRAME, Y, X)
        out["data"].attrs = ds["data"].attrs
    note = "" if refs is not None and "badpix" in refs else "no badpix_filepath: flagged pixels only"
    return record(out, "excam_badpix", "COMPLETE", p, note)
