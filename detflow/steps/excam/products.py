"""The L2a and L2b products of the working dataset (:func:`l2a_product`, :func:`l2b_product`: float32 on the
image area, with their units and DQ attributes) and the crop of a full-frame working dataset to the image
area (:func:`to_image_area`)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from ...schema import X, Y, dq_attrs
from .common import REJECT, _geom


def _product(ds: xr.Dataset, level: str, with_bias: bool) -> xr.Dataset:
    keep = ["data", "err", "dq", "rejected"] + (["bias", "read_noise"] if with_bias else [])
    out = ds[keep].copy()
    for name in ("data", "err", "bias", "read_noise"):
        if name in out:
            out[name] = out[name].astype(np.float32)
    out["dq"] = out["dq"].astype(np.uint32)
    out["dq"].attrs = dq_attrs()
    unit = "DN" if level == "L2a" else "electron"
    out["data"].attrs = {"units": unit, "long_name": f"EXCAM {level} image"}
    out["err"].attrs = {"units": unit, "long_name": "1-sigma error"}
    if with_bias:
        out["bias"].attrs = {"units": "DN", "long_name": "row bias subtracted (prescan median - bias_offset)"}
        out["read_noise"].attrs = {
            "units": "DN",
            "long_name": "read noise: rms of the reliable prescan (median over rows)",
        }
    out["rejected"].attrs = {"long_name": "why the frame is left out of the data-set products (0: kept)",
                             "flag_masks": list(REJECT.values()), "flag_meanings": " ".join(REJECT)}  # fmt: skip
    out.attrs = {k: v for k, v in ds.attrs.items() if k not in ("region",)}
    out.attrs["data_level"] = level
    return out


def l2a_product(ds: xr.Dataset) -> xr.Dataset:
    """The L2a group: data, err (DN), dq, per-row bias, rejected; float32 on the image area."""
    return _product(ds, "L2a", True)


def l2b_product(ds: xr.Dataset) -> xr.Dataset:
    """The L2b group: data, err (electrons), dq, rejected."""
    return _product(ds, "L2b", False)


def to_image_area(ds: xr.Dataset) -> xr.Dataset:
    """The image area of a full-frame working dataset, with image coordinates (0..n-1)."""
    geom = _geom(ds)
    img = geom.image
    if ds.attrs.get("region") == "full":
        ds = ds.isel({Y: geom.image.slices[0], X: geom.image.slices[1]})
    out = ds.assign_coords({Y: np.arange(img.rows), X: np.arange(img.cols)})
    out.attrs = dict(ds.attrs, region="image", image_row0=img.row0, image_col0=img.col0)
    return out
