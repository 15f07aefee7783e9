"""L2a -> L2b: the readout smear removed (``excam_desmear``; EXCAM has no shutter), cosmic-ray pixels filled
from their nearest neighbours for the smear."""

from __future__ import annotations

import numpy as np
import xarray as xr
from pydantic import Field

from ...instruments import roman_excam
from ...kernels import emccd
from ...schema import DQ
from ..registry import StepParams, record, register
from .common import FAMILY, _map_frames


class DesmearParams(StepParams):
    apply: bool = Field(True, description="desmear (EXCAM has no shutter: the scene smears during the readout)")
    row_time: float = Field(roman_excam.ROW_READ_TIME, gt=0, description="parallel transfer time per row (s)")


def _desmear_block(block: xr.Dataset, row_time: float) -> xr.Dataset:
    dq = block["dq"].values
    data = np.empty(block["data"].shape, dtype=block["data"].dtype)
    for i, t in enumerate(np.asarray(block["exptime"].values, dtype=np.float64)):
        data[i] = emccd.desmear_masked(block["data"].values[i], (dq[i] & np.uint32(DQ.JUMP_DET)) != 0, row_time, t)
    out = block.copy()  # the other variables are not changed: not copied
    out["data"] = block["data"].copy(data=data)
    return out


@register("excam_desmear", DesmearParams, FAMILY)
def excam_desmear(ds: xr.Dataset, refs: xr.Dataset | None, p: DesmearParams) -> xr.Dataset:
    """Remove the readout smear (cosmic-ray pixels filled from their nearest neighbours for the smear)."""
    if not p.apply:
        return record(ds, "excam_desmear", "SKIPPED", p, "desmear off")
    if not (ds["exptime"].values > 0).all():
        return record(ds, "excam_desmear", "SKIPPED", p, "EXPTIME 0: no smear model")
    out = _map_frames(ds, _desmear_block, ds, row_time=p.row_time)
    return record(out, "excam_desmear", "COMPLETE", p)
