"""The WFI L2 product: the slope products on the active region, with the reference border pixels and
amp33 kept alongside."""

from __future__ import annotations

import xarray as xr

from ... import schema
from ...schema import X, Y
from .common import _geom


# ---- the L2 product -------------------------------------------------------------------------------
def l2_product(l1: xr.Dataset, fitted: xr.Dataset) -> xr.Dataset:
    """The WFI L2 group: slope products on the active region, border reference pixels alongside (none
    for a detector without a reference border)."""
    geom = _geom(l1)
    nb, n = geom.nborder, geom.nside
    act = fitted.isel({Y: slice(nb, n - nb), X: slice(nb, n - nb)})
    border = {}
    for name, arr in (("border_ref_pix", l1["data"]), ("dq_border_ref_pix", fitted["dq"])):
        if nb == 0:  # no reference pixels: nothing to keep
            break
        border.update({
            f"{name}_left": arr.isel({X: slice(0, nb)}).rename({Y: "y_full", X: "x_left"}),
            f"{name}_right": arr.isel({X: slice(n - nb, n)}).rename({Y: "y_full", X: "x_right"}),
            f"{name}_bottom": arr.isel({Y: slice(0, nb)}).rename({Y: "y_bottom", X: "x_full"}),
            f"{name}_top": arr.isel({Y: slice(n - nb, n)}).rename({Y: "y_top", X: "x_full"}),
        })  # fmt: skip
    out = act.assign({k: v.drop_vars([c for c in v.coords if c not in v.dims and c != "source_file"])
                      for k, v in border.items()})  # fmt: skip
    if "amp33" in l1:
        out["amp33"] = l1["amp33"].rename({Y: "y_full"})
    for k in border:
        out[k].attrs = {"units": "DN"} if not k.startswith("dq_") else schema.dq_attrs()
    out.attrs = dict(fitted.attrs)
    out.attrs["product"] = "roman_wfi_l2"
    out.attrs["geometry"] = {"nside": n, "nborder": nb, "nchannel": geom.nchannel}
    return out
