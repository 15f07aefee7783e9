"""L2a -> L2b: DN to detected electrons (``excam_electrons``): times the k gain, divided by the EM gain; the
error with the read noise and the excess-noise factor."""

from __future__ import annotations

import numpy as np
import xarray as xr
from pydantic import Field

from ...instruments import roman_excam
from ...kernels import emccd
from ...schema import FRAME
from ..registry import StepParams, record, register
from .common import FAMILY, _per_frame, _pixelwise


class ElectronsParams(StepParams):
    eperdn: float = Field(9.55, gt=0, description="k gain (e-/DN)")
    shot_noise: bool = Field(True, description="add the read noise (measured in each frame's prescan) and the "
                             "ENF-amplified Poisson noise of the detected electrons to err")  # fmt: skip
    n_stages: int = Field(roman_excam.N_EM_STAGES, ge=1, description="gain-register cells (excess-noise factor)")


def _electrons_np(data, err, scale, rn2, f2, shot):
    nf = data.shape[0]
    out_d, out_e = np.empty(data.shape), np.empty(data.shape)
    emccd.electrons_frames(
        data, err, _per_frame(scale, nf), _per_frame(rn2, nf), _per_frame(f2, nf), shot, out_d, out_e
    )
    return out_d, out_e


@register("excam_electrons", ElectronsParams, FAMILY)
def excam_electrons(ds: xr.Dataset, refs: xr.Dataset | None, p: ElectronsParams) -> xr.Dataset:
    """DN to detected electrons: times the k gain, over the EM gain; error with the excess-noise factor."""
    g = ds["em_gain"].astype(np.float64)
    scale = p.eperdn / g
    rn2 = (ds["read_noise"] * scale) ** 2 if p.shot_noise else xr.zeros_like(scale)
    f2 = xr.DataArray(emccd.enf(g.values, p.n_stages) ** 2, dims=FRAME)
    data, err = _pixelwise(_electrons_np, ds["data"].astype(np.float64, copy=False), ds["err"].astype(np.float64, copy=False), scale, rn2,
                           f2, nout=2, dtypes=(np.float64, np.float64), shot=p.shot_noise)  # fmt: skip
    out = ds.assign(data=data.transpose(*ds["data"].dims), err=err.transpose(*ds["err"].dims))
    out["data"].attrs["units"] = out["err"].attrs["units"] = "electron"
    out.attrs["eperdn"] = p.eperdn
    return record(out, "excam_electrons", "COMPLETE", p)
