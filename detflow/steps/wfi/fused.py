"""Linearity, dark current and ramp fit fused into one pass per tile (registered as the fusion of those
three steps): the same numerics and records as the three steps in a row, without materialising the
linearised cube."""

from __future__ import annotations

import numpy as np
import xarray as xr

from ...kernels import ramp as kramp
from ...kernels import ramp_gls as kgls
from ...schema import READ
from ..registry import record, register_fusion
from .common import _frame, _nframes, _tile
from .ipc_dark import DarkParams, _dark_map
from .nonlinearity import _LIN_FLAGS, LinearityParams, _linearity_inputs
from .ramp import RampFitParams, _l2_dataset, _ramp_inputs, ramp_note, ramp_tables_for


# ---- linearity + dark + ramp fit fused ------------------------------------------------------------
def _chain_block(raw, coefs, smin, smax, sref, lin_dq, gdq, exempt, dark, tbar, pdq, gain, rn, *tables, sticky, ncore):
    nf = _nframes((raw, 1), (gdq, 1), (pdq, 0))
    ny, nx, n = np.broadcast_shapes(raw.shape[-3:], gdq.shape[-3:])
    outs = [np.empty((nf, ny, nx), dtype=t) for t in (np.float32, np.float32, np.float32, np.uint32)]
    tile = (ny, nx)
    pit = ncore[0] == 2
    for f in range(nf):
        tb = _frame(tbar, f, 1)[0, 0]
        (kramp.linearize_dark_fit if pit else kgls.linearize_dark_fit)(
            _tile(raw, f, (ny, nx, n)), _tile(coefs, f, (ny, nx, coefs.shape[-1])), _tile(smin, f, tile),
            _tile(smax, f, tile), _tile(sref, f, tile), _tile(lin_dq, f, tile), _tile(gdq, f, (ny, nx, n)),
            bool(_frame(exempt, f).flat[0]), bool(sticky), _LIN_FLAGS, _tile(dark, f, tile), *((tb,) if pit else ()),
            _tile(pdq, f, tile), _tile(gain, f, tile), _tile(rn, f, tile),
            *(_frame(t, f, nc)[0, 0] for t, nc in zip(tables, ncore)), *(o[f] for o in outs))  # fmt: skip
    return tuple(outs)


@register_fusion(("linearity", "dark_current", "ramp_fit"))
def linearity_dark_ramp(ds: xr.Dataset, refs: xr.Dataset, lin: LinearityParams, dark: DarkParams,
                        ramp: RampFitParams) -> xr.Dataset:  # fmt: skip
    """``ramp_fit(dark_current(linearity(ds)))`` in one pass per tile (same numerics, same records).

    The runtime uses it when a recipe runs these three steps in a row: the linearised cube is never
    materialised, which halves the memory traffic of the pipeline.
    """
    t = ramp_tables_for(ds, ramp)
    extra, core = _ramp_inputs(ds, ramp, t)
    coefs, smin, smax, sref, lin_dq, exempt = _linearity_inputs(ds, refs, lin)
    slope, vr, vp, dq = xr.apply_ufunc(
        _chain_block,
        ds["data"].astype(np.float32, copy=False), coefs, smin, smax, sref, lin_dq, ds["groupdq"], exempt,
        _dark_map(ds, refs), ds["tbar"], ds["pixeldq"], refs["gain_data"].astype(np.float32, copy=False),
        refs["read_data"].astype(np.float32, copy=False), *extra,
        kwargs={"sticky": lin.pit_sticky_no_lin_corr, "ncore": [len(c) for c in core]},
        input_core_dims=[[READ], ["linearitylegendre_k"], [], [], [], [], [READ], [], [], [READ], [], [], [],
                         *core],
        output_core_dims=[[], [], [], []],
        dask="parallelized", output_dtypes=[np.float32, np.float32, np.float32, np.uint32],
    )  # fmt: skip
    out = _l2_dataset(ds, t, slope, vr, vp, ds["pixeldq"] | dq)
    out = record(out, "linearity", "COMPLETE", lin)
    out = record(out, "dark_current", "COMPLETE", dark)
    return record(out, "ramp_fit", "COMPLETE", ramp, ramp_note(ds, ramp))
