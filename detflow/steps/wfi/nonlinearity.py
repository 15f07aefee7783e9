"""The ``linearity`` step: the Legendre nonlinearity correction per tile (NO_LIN_CORR where extrapolated),
and the reference inputs it shares with the fused linearity + dark + ramp fit."""

from __future__ import annotations

import numpy as np
import xarray as xr
from pydantic import Field

from ... import schema
from ...kernels import linearity as klin
from ...schema import DQ, FRAME, READ, X, Y
from ..registry import StepParams, record, register
from .common import FAMILY, _frame, _nframes, _read_patterns, _tile

# the DQ values the kernels take as arguments (kernels import nothing from the package)
_LIN_FLAGS = klin.dq_flags(DQ.NO_LIN_CORR, DQ.REFERENCE_PIXEL, DQ.SATURATED)


# ---- linearity ------------------------------------------------------------------------------------
class LinearityParams(StepParams):
    exempt_reset: bool = Field(
        True, description="clip and never flag the first resultant when it is the reset read [0]"
    )
    pit_sticky_no_lin_corr: bool = Field(
        False, description="gen_cal_image 1.0 compatibility: resultants after the first extrapolated one get S - Sref"
    )


def _linearity_block(raw, coefs, smin, smax, sref, lin_dq, gdq, exempt, sticky):
    nf = _nframes((raw, 1), (gdq, 1))
    ny, nx, n = np.broadcast_shapes(raw.shape[-3:], gdq.shape[-3:])
    out = np.empty((nf, ny, nx, n), dtype=np.float32)
    dq = np.empty((nf, ny, nx), dtype=np.uint32)
    tile = (ny, nx)
    for f in range(nf):
        klin.linearize_ramps(
            _tile(raw, f, (ny, nx, n)), _tile(coefs, f, (ny, nx, coefs.shape[-1])), _tile(smin, f, tile),
            _tile(smax, f, tile), _tile(sref, f, tile), _tile(lin_dq, f, tile), _tile(gdq, f, (ny, nx, n)),
            bool(_frame(exempt, f).flat[0]), bool(sticky), _LIN_FLAGS, out[f], dq[f])  # fmt: skip
    return out, dq


def _linearity_inputs(ds: xr.Dataset, refs: xr.Dataset, p: LinearityParams):
    exempt = xr.DataArray([p.exempt_reset and rp[0] == [0] for rp in _read_patterns(ds)], dims=FRAME)
    lin_dq = refs["linearitylegendre_dq"].astype(np.uint32) if "linearitylegendre_dq" in refs else \
        xr.zeros_like(refs["linearitylegendre_Sref"], dtype=np.uint32)  # fmt: skip
    f32 = [refs[f"linearitylegendre_{k}"].astype(np.float32, copy=False) for k in ("data", "Smin", "Smax", "Sref")]
    return (*f32, lin_dq, exempt)


@register("linearity", LinearityParams, FAMILY)
def linearity(ds: xr.Dataset, refs: xr.Dataset, p: LinearityParams) -> xr.Dataset:
    """Legendre nonlinearity correction to DN_lin above bias; NO_LIN_CORR where extrapolated."""
    coefs, smin, smax, sref, lin_dq, exempt = _linearity_inputs(ds, refs, p)
    data, dq = xr.apply_ufunc(
        _linearity_block,
        ds["data"].astype(np.float32, copy=False), coefs, smin, smax, sref, lin_dq, ds["groupdq"], exempt,
        kwargs={"sticky": p.pit_sticky_no_lin_corr},
        input_core_dims=[[READ], ["linearitylegendre_k"], [], [], [], [], [READ], []],
        output_core_dims=[[READ], []],
        dask="parallelized", output_dtypes=[np.float32, np.uint32],
    )  # fmt: skip
    out = ds.copy()
    out["data"] = data.assign_attrs(units="DN", long_name="linearised signal above bias")
    out["pixeldq"] = (ds["pixeldq"] | dq).astype(np.uint32).transpose(FRAME, Y, X)
    out["pixeldq"].attrs = schema.dq_attrs()
    return record(out, "linearity", "COMPLETE", p)
