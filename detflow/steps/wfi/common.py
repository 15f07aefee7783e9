"""What the WFI steps share: the detector geometry of a dataset and its active-pixel mask, the read
patterns of its exposures, rechunking that leaves coordinates alone, and the slicing of ``apply_ufunc``
blocks frame by frame for the per-tile kernels."""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr

from ...errors import DetflowInputError
from ...instruments.roman_wfi import Geometry, border_of
from ...schema import READ, X, Y

FAMILY = "roman_wfi"


def _pixel_index(ds: xr.Dataset) -> tuple[xr.DataArray, xr.DataArray]:
    """Row and column indices as lazy 1-D arrays chunked like ``data``: masks built from them stay
    lazy and tiled (a full-frame numpy mask would be shipped inside the graph)."""
    chunks = ds["data"].chunksizes if ds["data"].chunks else {}
    y = da.arange(ds.sizes[Y], chunks=chunks.get(Y, -1))
    x = da.arange(ds.sizes[X], chunks=chunks.get(X, -1))
    return xr.DataArray(y, dims=Y), xr.DataArray(x, dims=X)


def _geom(ds: xr.Dataset) -> Geometry:
    """The detector geometry of a dataset: its frame size and its reference border (``nborder``)."""
    return Geometry.for_shape(ds.sizes[Y], ds.sizes[X], border_of(ds.attrs))


def _active_mask(ds: xr.Dataset, geom: Geometry) -> xr.DataArray:
    """True on the active pixels, False on the reference border."""
    y, x = _pixel_index(ds)
    nb, n = geom.nborder, geom.nside
    return (y >= nb) & (y < n - nb) & (x >= nb) & (x < n - nb)


def _read_patterns(ds: xr.Dataset) -> list[list[list[int]]]:
    if ds.sizes[READ] < 2:
        src = ds["source_file"].values[0] if "source_file" in ds.coords else None
        raise DetflowInputError(src, "read_pattern", "at least 2 resultants (a slope needs two reads)",
                                f"{ds.sizes[READ]} resultant")  # fmt: skip
    first = ds["read_first"].values
    count = ds["read_nframes"].values
    return [[list(range(int(f), int(f) + int(c))) for f, c in zip(fr, cr)] for fr, cr in zip(first, count)]


def _rechunk(a: xr.DataArray, chunks: dict) -> xr.DataArray:
    """Rechunk the data only: ``DataArray.chunk`` would also turn numpy coordinates into dask arrays,
    and merging those with the originals later compares them, which computes."""
    if not isinstance(a.data, da.Array):
        return a
    return a.copy(data=a.data.rechunk({a.get_axis_num(d): c for d, c in chunks.items()}))


def _frame(a: np.ndarray, f: int, ncore: int = 0) -> np.ndarray:
    """Frame ``f`` of an ``apply_ufunc`` block, as (y, x, *core) with broadcastable y and x.

    ``apply_ufunc`` hands each argument with the loop dims (frame, y, x) it has, leading ones dropped
    and inner missing ones of length 1; ``ncore`` is the number of core dims at the end.
    """
    missing = 3 + ncore - a.ndim
    if missing:
        a = a.reshape((1,) * missing + a.shape)
    return a[f if a.shape[0] > 1 else 0]


def _tile(a: np.ndarray, f: int, shape: tuple[int, ...]) -> np.ndarray:
    """Frame ``f`` of a block, broadcast (without copying) to the tile ``shape`` (y, x, *core)."""
    return np.broadcast_to(_frame(a, f, len(shape) - 2), shape)


def _nframes(*arrays_ncore) -> int:
    return max(a.shape[0] if a.ndim - nc == 3 else 1 for a, nc in arrays_ncore)
