"""Reader for a generic FITS ramp cube: one image HDU holding (nread, ny, nx) or (nframe, nread, ny, nx).

A 4-D cube is (integration, group, y, x) as JWST writes it: each integration is one ramp, a ``frame``
of the dataset. Read timing comes from the headers, the cube's own HDU first, then the primary
header, then the others (JWST keeps these keywords in the primary header): ``TFRAME`` (or
``FRMTIME``) the frame time in s (or, without it, ``TGROUP / (NFRAMES + GROUPGAP)``), ``NFRAMES``
frames averaged per read (default 1), ``GROUPGAP`` frames dropped between reads (default 0),
``FRAME0`` the index of the first frame read (default 1: frame 0 is the reset at t = 0, as in Roman
read patterns, and the first read of a ramp cube comes one frame time after it). ``NBORDER`` is the
width of the reference-pixel border on every side (default 0: a cube has no reference pixels unless
its header says so). The headers are kept losslessly in the dataset's ``inputs`` attrs.
"""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
from astropy.io import fits

from .. import schema
from ..errors import DetflowInputError
from .chunking import pixel_tiles
from .fits_input import check_data_complete, hdu_shape, image_hdus, open_fits
from .roman_l1 import frame_coords


class _FitsArray:
    def __init__(self, path, hdu, shape, dtype):
        self.path, self.hdu = str(path), hdu
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)

    def __getitem__(self, index):
        with fits.open(self.path, memmap=False) as hdul:
            return np.array(hdul[self.hdu].section[index], dtype=self.dtype)


def _image_hdu(path, hdul) -> int:
    cubes = image_hdus(hdul, (3, 4))
    if not cubes:
        raise DetflowInputError(path, "HDU", "an image HDU with a 3-D (read, y, x) or 4-D cube", "none")
    return cubes[0]


def _keyword(path, hdul, idx: int, names: tuple[str, ...], default=None, kind=float):
    """The first of ``names`` found in the cube's header, else the primary header, else any other."""
    order = [idx] + [i for i in range(len(hdul)) if i != idx]
    for i in order:
        for name in names:
            if name in hdul[i].header:
                value = hdul[i].header[name]
                try:
                    return kind(value)
                except (TypeError, ValueError):
                    raise DetflowInputError(path, f"HDU {i} header {name}", f"a {kind.__name__}", repr(value)) from None
    return default


def open_fits_ramp(path: str | Path, chunks: dict | None = None) -> xr.Dataset:
    path = Path(path)
    with open_fits(path) as hdul:
        idx = _image_hdu(path, hdul)
        check_data_complete(path, hdul, idx, "ramp cube")
        shape = hdu_shape(hdul, idx)
        dtype = np.asarray(hdul[idx].section[(slice(0, 1),) * len(shape)]).dtype  # as astropy scales it
        nfr = _keyword(path, hdul, idx, ("NFRAMES",), 1, int)
        gap = _keyword(path, hdul, idx, ("GROUPGAP",), 0, int)
        f0 = _keyword(path, hdul, idx, ("FRAME0",), 1, int)
        nborder = _keyword(path, hdul, idx, ("NBORDER",), 0, int)
        tframe = _keyword(path, hdul, idx, ("TFRAME", "FRMTIME"))
        if tframe is None and nfr + gap > 0:
            tgroup = _keyword(path, hdul, idx, ("TGROUP",))
            tframe = None if tgroup is None else tgroup / (nfr + gap)
        header_text = [h.header.tostring() for h in hdul]
    if tframe is None or not tframe > 0:
        raise DetflowInputError(path, "header TFRAME", "the frame time in s (> 0; or TGROUP), in the cube's or the "
                                "primary header", tframe)  # fmt: skip
    if nfr < 1 or gap < 0 or f0 < 0:
        raise DetflowInputError(path, "header NFRAMES, GROUPGAP, FRAME0", "NFRAMES >= 1, GROUPGAP >= 0, FRAME0 >= 0",
                                f"{nfr}, {gap}, {f0}")  # fmt: skip
    nframe, nread, ny, nx = shape if len(shape) == 4 else (1, *shape)
    if not 0 <= 2 * nborder < min(ny, nx):
        raise DetflowInputError(path, "header NBORDER", f"a reference border narrower than half the {ny}x{nx} frame",
                                nborder)  # fmt: skip
    ty, tx = pixel_tiles(nread, ny, nx, chunks, border=nborder)
    chunks4 = ((1,) * nframe, (nread,), ty, tx)
    src = _FitsArray(path, idx, shape, dtype)
    meta = np.empty((0,) * len(shape), dtype=dtype)
    cube = da.from_array(src, chunks=chunks4 if len(shape) == 4 else chunks4[1:], meta=meta)
    if len(shape) == 3:
        cube = cube[None]
    rp = [[f0 + i * (nfr + gap) + k for k in range(nfr)] for i in range(nread)]
    info = {"read_pattern": rp, "frame_time": float(tframe), "guide_window": [-1, -1, -1, -1],
            "data_encoding_offset": 0.0}  # fmt: skip
    ds = xr.Dataset({"data": (schema.DIMS_L1, cube, {"units": "DN"})})
    ds = ds.assign_coords(frame_coords([path] * nframe, [info] * nframe))
    ds = ds.assign_coords({schema.Y: np.arange(ny), schema.X: np.arange(nx)})
    ds.attrs["instrument"] = "generic_hxrg"
    ds.attrs["nborder"] = nborder
    ds.attrs["inputs"] = [{"path": str(path), "fits_headers": header_text}]
    return ds
