"""L1 -> L2a, last step: the nonlinearity correction (``excam_nonlin``): each pixel times the relative gain
at its DN and the frame's EM gain, from the II&T table."""

from __future__ import annotations

import numpy as np
import xarray as xr
from pydantic import Field

from ...kernels import emccd
from ...schema import DQ
from ..registry import StepParams, record, register
from .common import FAMILY, _map_frames


class NonlinParams(StepParams):
    threshold: float | None = Field(None, description="flag NONLINEAR where the bias-subtracted DN exceed this "
                                    "(before the correction; corgidrp threshold)")  # fmt: skip


def _nonlin_block(block: xr.Dataset, table: np.ndarray, threshold) -> xr.Dataset:
    out = block.copy(deep=True)
    gains, counts, rel = table[0, 1:], table[1:, 0], table[1:, 1:]
    data, dq = out["data"].values, out["dq"].values
    for i, g in enumerate(np.asarray(block["em_gain"].values, dtype=np.float64)):
        if threshold is not None:
            dq[i] |= np.where(data[i] > threshold, np.uint32(DQ.NONLINEAR), np.uint32(0))
        curve = emccd.relgain_curve(gains, counts, rel, g)
        data[i] *= emccd.relative_gain(data[i], counts, curve)
        if "read_noise" in out:  # noise about zero signal is scaled by the relative gain there
            out["read_noise"].values[i] *= float(emccd.relative_gain(np.array(0.0), counts, curve))
    return out


@register("excam_nonlin", NonlinParams, FAMILY)
def excam_nonlin(ds: xr.Dataset, refs: xr.Dataset | None, p: NonlinParams) -> xr.Dataset:
    """Nonlinearity: multiply by the relative gain at each pixel's DN and the frame's EM gain."""
    if refs is None or "nonlin_table" not in refs:
        return record(ds, "excam_nonlin", "SKIPPED", p, "no non_linearity_filepath")
    out = _map_frames(ds, _nonlin_block, ds, table=np.asarray(refs["nonlin_table"].values), threshold=p.threshold)
    return record(out, "excam_nonlin", "COMPLETE", p)
