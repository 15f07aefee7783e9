"""Reader for a generic FITS ramp cube: one image HDU holding (nread, ny, nx) or (nframe, nread, ny, nx).

Read timing comes from the header: ``TFRAME`` (or ``FRMTIME``) the frame time in s, ``NFRAMES`` frames
averaged per read (default 1), ``GROUPGAP`` frames dropped between reads (default 0), ``FRAME0`` the
index of the first frame (default 0). The header is kept losslessly in the dataset's ``inputs`` attrs.
"""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
from astropy.io import fits

from .. import schema
from ..errors import CorruptInputError, DetflowInputError
from .chunking import pixel_chunks
from .roman_l1 import frame_coords


class _FitsArray:
    def __init__(self, path, hdu, shape, dtype):
        self.path, self.hdu = str(path), hdu
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)

    def __getitem__(self, index):
        with fits.open(self.path, memmap=False) as hdul:
            return np.array(hdul[self.hdu].section[index], dtype=self.dtype)


def _image_hdu(path, hdul) -> int:
    for i, h in enumerate(hdul):
        if getattr(h, "is_image", False) and h.header.get("NAXIS", 0) in (3, 4):
            return i
    raise DetflowInputError(path, "HDU", "an image HDU with a 3-D (read, y, x) or 4-D cube", "none")


def open_fits_ramp(path: str | Path, chunks: dict | None = None) -> xr.Dataset:
    path = Path(path)
    if not path.exists():
        raise DetflowInputError(path, "file", "an existing FITS file", "no such file")
    try:
        hdul = fits.open(path, memmap=False)
    except Exception as exc:
        raise CorruptInputError(path, "file", "a readable FITS file", f"{type(exc).__name__}: {exc}")
    with hdul:
        idx = _image_hdu(path, hdul)
        hdr = hdul[idx].header
        shape = tuple(int(hdr[f"NAXIS{k}"]) for k in range(hdr["NAXIS"], 0, -1))
        dtype = np.asarray(hdul[idx].section[(slice(0, 1),) * len(shape)]).dtype  # as astropy scales it
        tframe = hdr.get("TFRAME", hdr.get("FRMTIME"))
        if tframe is None or float(tframe) <= 0:
            raise DetflowInputError(path, f"HDU {idx} header TFRAME", "the frame time in s (> 0)", tframe)
        nfr, gap, f0 = int(hdr.get("NFRAMES", 1)), int(hdr.get("GROUPGAP", 0)), int(hdr.get("FRAME0", 0))
        header_text = [h.header.tostring() for h in hdul]
    cube = da.from_array(_FitsArray(path, idx, shape, dtype), chunks=-1 if len(shape) == 3 else None)
    if len(shape) == 3:
        cube = cube[None]
    nframe, nread, ny, nx = cube.shape
    ty, tx = pixel_chunks(nread, ny, nx, chunks)
    cube = cube.rechunk((1, nread, ty, tx))
    rp = [[f0 + i * (nfr + gap) + k for k in range(nfr)] for i in range(nread)]
    info = {"read_pattern": rp, "frame_time": float(tframe), "guide_window": [-1, -1, -1, -1],
            "data_encoding_offset": 0.0}  # fmt: skip
    ds = xr.Dataset({"data": (schema.DIMS_L1, cube, {"units": "DN"})})
    ds = ds.assign_coords(frame_coords([path] * nframe, [info] * nframe))
    ds = ds.assign_coords({schema.Y: np.arange(ny), schema.X: np.arange(nx)})
    ds.attrs["instrument"] = "generic_hxrg"
    ds.attrs["inputs"] = [{"path": str(path), "fits_headers": header_text}]
    return ds
