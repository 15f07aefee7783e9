"""What every EXCAM step module shares: the family name, the L2a and L2b recipes, the reasons a frame is
left out of the combines (:data:`REJECT`, bits of ``rejected``), and the helpers that run a step's numerics
on its dataset: on chunks of whole frames (:func:`_map_frames`) or pixel by pixel with per-frame values and
(y, x) maps (:func:`_pixelwise`)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from ...instruments import roman_excam
from ...schema import FRAME

FAMILY = "roman_excam"
L2A_RECIPE = ["excam_bias", "excam_cosmics", "excam_nonlin"]
L2B_RECIPE = ["excam_frame_select", "excam_electrons", "excam_dark", "excam_desmear", "excam_flat", "excam_badpix"]

# reasons a frame is left out of the combines (bits of ``rejected``)
REJECT = {"oversaturated": 1, "bad_pixel_fraction": 2, "OVEREXP": 4, "tip_tilt_rms": 8, "tip_tilt_bias": 16,
          "header_range": 32}  # fmt: skip


def _geom(ds: xr.Dataset) -> roman_excam.ExcamGeometry:
    return roman_excam.GEOMETRIES[ds.attrs["geometry"]]


def _map_frames(ds: xr.Dataset, func, template: xr.Dataset, **kwargs) -> xr.Dataset:
    """``func(block, **kwargs) -> Dataset`` on each chunk of whole frames (numpy inside). The attrs
    (every input's headers) stay out of the tasks and are put back on the result."""
    bare, tmpl = ds.copy(), template.copy()
    bare.attrs, tmpl.attrs = {}, {}
    out = xr.map_blocks(func, bare, kwargs=kwargs, template=tmpl)
    frame_coords = {k: v for k, v in ds.coords.items() if v.dims == (FRAME,)}
    out = out.assign_coords(frame_coords)  # numpy metadata, not lazy copies
    out.attrs = dict(ds.attrs)
    return out


def _per_frame(a, nf: int) -> np.ndarray:
    """A per-frame value as apply_ufunc hands it over ((f,), (f, 1, 1) or a scalar) as (nf,) float64."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    return np.broadcast_to(a, (nf,)) if a.size == 1 else a


def _image(a) -> np.ndarray:
    """A (y, x) map as apply_ufunc hands it over (with leading axes of length 1 or none)."""
    a = np.asarray(a)
    return a.reshape(a.shape[-2:])


def _pixelwise(func, *args, nout: int, dtypes, **kwargs):
    """``func`` on (frame, y, x) DataArrays, per-frame DataArrays and (y, x) maps, lazily or in memory."""
    return xr.apply_ufunc(func, *args, kwargs=kwargs, dask="parallelized", output_dtypes=list(dtypes),
                          output_core_dims=[()] * nout)  # fmt: skip
