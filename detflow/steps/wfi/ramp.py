"""The ``ramp_fit`` step (slopes and jump detection, ending with the L2 dataset): the per-frame ramp tables,
the kernel inputs and the record note it shares with the fused linearity + dark + ramp fit and the noise
steps."""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import xarray as xr
from pydantic import Field

from ... import schema
from ...kernels import ramp as kramp
from ...kernels import ramp_gls as kgls
from ...schema import DQ, FRAME, READ, X, Y
from ..registry import StepParams, record, register
from .common import FAMILY, _frame, _nframes, _read_patterns, _tile

log = logging.getLogger("detflow")

# the DQ values the kernels take as arguments (kernels import nothing from the package)
_PIT_FLAGS = kramp.dq_flags(DQ.SATURATED, DQ.DO_NOT_USE, DQ.JUMP_DET, DQ.REFERENCE_PIXEL, DQ.NO_GAIN_VALUE,
                            DQ.UNRELIABLE_ERROR)  # fmt: skip
_GLS_FLAGS = kgls.dq_flags(DQ.SATURATED, DQ.DO_NOT_USE, DQ.JUMP_DET, DQ.REFERENCE_PIXEL, DQ.NO_GAIN_VALUE,
                           DQ.UNRELIABLE_ERROR, DQ.UNRELIABLE_SLOPE)  # fmt: skip


# ---- ramp fit + jump detection --------------------------------------------------------------------
class RampFitParams(StepParams):
    slope: float = Field(0.4, gt=0, description="RAMP_OPT_PARS slope (DN/s) the weights are optimised for")
    gain: float = Field(1.8, gt=0, description="RAMP_OPT_PARS gain (e/DN)")
    sigma_read: float = Field(6.5, gt=0, description="RAMP_OPT_PARS read noise (DN)")
    exclude_first: bool = Field(True, description="leave the first resultant out of the fit")
    jump_detection: bool = Field(True, description="flag jumps (Sharma & Casertano 2024)")
    SthreshA: float = Field(5.5, description="jump threshold (sigma) at slope IthreshA")
    SthreshB: float = Field(4.5, description="jump threshold (sigma) at slope IthreshB")
    IthreshA: float = Field(1.0, gt=0, description="slope (DN/s) of the first threshold point")
    IthreshB: float = Field(1000.0, gt=0, description="slope (DN/s) of the second threshold point")
    one_resultant: Literal["first_resultant", "zero", "off"] = Field(
        "first_resultant", description="a ramp with one usable resultant: slope from the first resultant "
        "(left out by exclude_first), from zero signal at t = 0 (bias-subtracted ramps), or none; flagged "
        "UNRELIABLE_SLOPE")  # fmt: skip
    pit_compat: bool = Field(False, description="the PIT's numerics bit for bit: fixed weights, a ramp ends at "
                             "its first do-not-use resultant, two-point slopes of truncated ramps, jumps "
                             "flagged but kept in the slope, no one-resultant slopes")  # fmt: skip


_ONE = {"first_resultant": kgls.ONE_FIRST, "zero": kgls.ONE_ZERO, "off": kgls.ONE_OFF}


def ramp_tables_for(ds: xr.Dataset, p: RampFitParams) -> dict[str, xr.DataArray]:
    """The :class:`~detflow.kernels.ramp.RampTables` of every frame, as DataArrays over ``frame``
    (the weights of a truncated ramp: the PIT's two-point slope with ``pit_compat``, else optimal)."""
    u = p.slope / p.gain / p.sigma_read**2
    start = 1 if p.exclude_first else 0
    tabs = [kramp.ramp_tables(rp, float(ft), u, start, two_point=p.pit_compat)
            for rp, ft in zip(_read_patterns(ds), ds["frame_time"].values)]  # fmt: skip

    npair = max(1, max(len(t.pair_i) for t in tabs))  # no pairs (two usable resultants): one unused entry

    def stack(field, dims):
        arrays = [getattr(t, field) for t in tabs]
        if dims == ("pair",):  # entries past a frame's pair_start are never read
            arrays = [np.pad(a, (0, npair - len(a))) for a in arrays]
        return xr.DataArray(np.stack(arrays), dims=(FRAME, *dims))

    return {
        "weights": stack("weights", ("trunc", READ)),
        "coef_poisson": stack("coef_poisson", ("trunc",)),
        "coef_read": stack("coef_read", ("trunc",)),
        "pair_start": stack("pair_start", ("trunc1",)),
        "pair_i": stack("pair_i", ("pair",)),
        "pair_j": stack("pair_j", ("pair",)),
        "pair_inv_dt": stack("pair_inv_dt", ("pair",)),
        "pair_poisson": stack("pair_poisson", ("pair",)),
        "pair_read": stack("pair_read", ("pair",)),
    }


def _ramp_block(data, gdq, pdq, gain, rn, *tables, ncore):
    nf = _nframes((data, 1), (gdq, 1), (pdq, 0))
    ny, nx, n = np.broadcast_shapes(data.shape[-3:], gdq.shape[-3:])
    outs = [np.empty((nf, ny, nx), dtype=t) for t in (np.float32, np.float32, np.float32, np.uint32)]
    tile = (ny, nx)
    pit = ncore[0] == 2  # the PIT tables start with the weights (trunc, read)
    extra = () if pit else (np.zeros((0, 0, 0), np.uint32),)
    for f in range(nf):
        (kramp.fit_ramps if pit else kgls.fit_ramps)(
            _tile(data, f, (ny, nx, n)), _tile(gdq, f, (ny, nx, n)), _tile(pdq, f, tile), _tile(gain, f, tile),
            _tile(rn, f, tile), *(_frame(t, f, nc)[0, 0] for t, nc in zip(tables, ncore)),
            *(o[f] for o in outs), *extra)  # fmt: skip
    return tuple(outs)


_TABLE_CORE_DIMS = [["trunc", READ], ["trunc"], ["trunc"], ["trunc1"], ["pair"], ["pair"], ["pair"], ["pair"],
                    ["pair"]]  # fmt: skip


def _ramp_inputs(ds: xr.Dataset, p: RampFitParams, t: dict) -> tuple[list, list[list[str]]]:
    """The kernel's per-frame inputs after the pixel arrays, and their core dims."""
    if p.pit_compat:
        flags = xr.DataArray(_PIT_FLAGS, dims="flag")
        return [*t.values(), _ramp_param_array(p), flags], [*_TABLE_CORE_DIMS, ["param"], ["flag"]]
    nfr = xr.DataArray(ds["read_nframes"].values.astype(np.float64), dims=(FRAME, READ))
    par = kgls.gls_params(1 if p.exclude_first else 0, p.jump_detection, p.SthreshA, p.SthreshB, p.IthreshA,
                          p.IthreshB, _ONE[p.one_resultant], p.slope / p.gain / p.sigma_read**2, p.gain,
                          p.sigma_read)  # fmt: skip
    times = [xr.DataArray(ds[k].values.astype(np.float64), dims=(FRAME, READ)) for k in ("tbar", "tau")]
    args = [*times, nfr, xr.DataArray(par, dims="param"), xr.DataArray(_GLS_FLAGS, dims="flag")]
    return args, [[READ], [READ], [READ], ["param"], ["flag"]]


def ramp_note(ds: xr.Dataset, p: RampFitParams) -> str:
    """What the ramp fit can do with these resultants, for its record (and a warning when it is nothing)."""
    usable = ds.sizes[READ] - (1 if p.exclude_first else 0)
    if usable >= 2:
        return "CDS (two-point) slopes: two usable resultants" if usable == 2 else ""
    if (
        usable == 1
        and not p.pit_compat
        and (p.one_resultant == "zero" or (p.exclude_first and p.one_resultant == "first_resultant"))
    ):
        msg = f"one-resultant slopes ({p.one_resultant} as zero point), every pixel UNRELIABLE_SLOPE"
        log.warning("ramp_fit: %s", msg)
        return msg
    msg = (f"no slope can be formed: {ds.sizes[READ]} resultants with exclude_first leave {usable} usable; every "
           "pixel is DO_NOT_USE with NaN slope (exclude_first: false gives the CDS slope)")  # fmt: skip
    log.warning("ramp_fit: %s", msg)
    return msg


def _ramp_param_array(p: RampFitParams) -> xr.DataArray:
    return xr.DataArray(kramp.ramp_params(1 if p.exclude_first else 0, p.SthreshA, p.SthreshB, p.IthreshA,
                                          p.IthreshB, p.jump_detection), dims="param")  # fmt: skip


def _l2_dataset(ds, t, slope, vr, vp, dq) -> xr.Dataset:
    dims = (FRAME, Y, X)
    out = xr.Dataset(
        {
            "data": slope.transpose(*dims).assign_attrs(units=schema.UNITS["DN/s"], long_name="slope"),
            "dq": dq.astype(np.uint32).transpose(*dims).assign_attrs(schema.dq_attrs()),
            "var_rnoise": vr.transpose(*dims).assign_attrs(
                units=schema.UNITS["DN2/s2"], long_name="slope variance from read noise"
            ),
            "var_poisson": vp.transpose(*dims).assign_attrs(
                units=schema.UNITS["DN2/s2"], long_name="slope variance from Poisson noise"
            ),
        },  # fmt: skip
        attrs=dict(ds.attrs),
    )
    out["err"] = np.sqrt(out["var_rnoise"] + out["var_poisson"]).astype(np.float32).assign_attrs(
        units=schema.UNITS["DN/s"], long_name="total slope uncertainty")  # fmt: skip
    keep = [c for c in ("source_file", "frame_time") if c in ds.coords]
    out = out.assign_coords({c: ds[c] for c in keep})
    return out.assign_coords(ramp_weights=t["weights"].isel(trunc=-1).assign_attrs(
        long_name="slope weights of a full ramp at the RAMP_OPT_PARS signal", units="1 / s"))  # fmt: skip


@register("ramp_fit", RampFitParams, FAMILY)
def ramp_fit(ds: xr.Dataset, refs: xr.Dataset, p: RampFitParams) -> xr.Dataset:
    """Slopes from every good resultant, split at jumps (see :mod:`detflow.kernels.ramp_gls`), or the
    PIT's fixed-weight fit with jump flags (``pit_compat``, :mod:`detflow.kernels.ramp`); returns L2."""
    t = ramp_tables_for(ds, p)
    extra, core = _ramp_inputs(ds, p, t)
    slope, vr, vp, dq = xr.apply_ufunc(
        _ramp_block,
        ds["data"].astype(np.float32, copy=False), ds["groupdq"], ds["pixeldq"],
        refs["gain_data"].astype(np.float32, copy=False), refs["read_data"].astype(np.float32, copy=False),
        *extra, kwargs={"ncore": [len(c) for c in core]},
        input_core_dims=[[READ], [READ], [], [], [], *core],
        output_core_dims=[[], [], [], []],
        dask="parallelized", output_dtypes=[np.float32, np.float32, np.float32, np.uint32],
    )  # fmt: skip
    out = _l2_dataset(ds, t, slope, vr, vp, ds["pixeldq"] | dq)
    return record(out, "ramp_fit", "COMPLETE", p, ramp_note(ds, p))
