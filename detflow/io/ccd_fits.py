"""Reader for plain CCD/CMOS frames: FITS files of one 2-D image each (any integer or float BITPIX).

Each file is one frame: its image HDU (the only one with a 2-D image, or the one the job names) is read
by one task, as float64 ADU with BZERO/BSCALE applied. Headers are read and checked before any pixel: the
HDU, the shape (every frame alike), that the data is all there (a truncated file is a damaged input),
EXPTIME a number when present, and BIASSEC/TRIMSEC/DATASEC valid FITS sections inside the frame. The
keywords of :data:`detflow.instruments.ccd.KEYWORDS` become frame coordinates (``exptime``, ``imagetyp``,
``filter``, ``date_obs``, with ``frame_type`` from IMAGETYP and the three sections); every header is kept
whole in the ``inputs`` attribute. The result: ``data`` (frame, y, x), lazy.
"""

from __future__ import annotations

from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr
from astropy.io import fits

from .. import schema
from ..errors import CorruptInputError, DetflowInputError
from ..instruments import ccd
from . import expand_inputs, skipped_record
from .fits_input import check_data_complete, hdu_shape, open_fits

BITPIX = {8, 16, 32, 64, -32, -64}


def _pick_hdu(path: Path, hdul, hdu) -> int:
    images = [i for i, h in enumerate(hdul) if getattr(h, "is_image", False) and h.header.get("NAXIS", 0) > 0]
    if hdu is not None:
        names = {i: str(h.name).upper() for i, h in enumerate(hdul)}
        idx = hdu if isinstance(hdu, int) else next((i for i, n in names.items() if n == str(hdu).upper()), None)
        if idx is None or not 0 <= idx < len(hdul) or idx not in images:
            raise DetflowInputError(path, "hdu", f"an image HDU ({', '.join(map(str, images)) or 'none here'})", hdu)
        return idx
    if len(images) != 1:
        raise DetflowInputError(path, "HDU", "one image HDU (or name it: hdu)",
                                f"{len(images)} ({', '.join(f'{i} {hdul[i].name}' for i in images)})")  # fmt: skip
    return images[0]


def read_ccd_header(path: str | Path, hdu: int | str | None = None) -> dict:
    """Validated metadata of one frame file (no pixel data is read)."""
    path = Path(path)
    with open_fits(path) as hdul:
        idx = _pick_hdu(path, hdul, hdu)
        header, primary = hdul[idx].header, hdul[0].header
        naxis, bitpix = int(header.get("NAXIS", 0)), int(header.get("BITPIX", 0))
        shape = hdu_shape(hdul, idx)
        if naxis != 2 or min(shape) < 1:
            raise DetflowInputError(path, f"NAXIS of HDU {idx}", "a 2-D image", f"NAXIS {naxis}, shape {shape}")
        if bitpix not in BITPIX:
            raise DetflowInputError(path, "BITPIX", "8, 16, 32, 64, -32 or -64", bitpix)
        check_data_complete(path, hdul, idx)
        text = [x.header.tostring() for x in hdul]

    def card(key):
        return header[key] if key in header else primary.get(key)

    meta = {"path": path, "hdu": idx, "shape": shape, "headers": text}
    exptime = next((card(k) for k in ccd.EXPTIME_FALLBACK if card(k) is not None), None)
    try:
        meta["exptime"] = np.nan if exptime is None else float(exptime)
    except (TypeError, ValueError):
        raise DetflowInputError(path, "EXPTIME", "the exposure time in s (a number)", repr(exptime)) from None
    for coord, key in ccd.KEYWORDS.items():
        if coord != "exptime":
            meta[coord] = "" if card(key) is None else str(card(key)).strip()
    meta["frame_type"] = ccd.frame_type(meta["imagetyp"])
    for key in ccd.SECTION_KEYWORDS:
        value = card(key)
        if value is not None:
            try:
                ccd.parse_section(str(value), shape)
            except ValueError as exc:
                raise DetflowInputError(path, key, str(exc)) from None
        meta[key.lower()] = "" if value is None else str(value).strip()
    return meta


def _read_frame(path: str, hdu: int) -> np.ndarray:
    with fits.open(path, memmap=False) as hdul:
        return np.asarray(hdul[hdu].data, dtype=np.float64)[None]


def frames_dataset(metas: list[dict]) -> xr.Dataset:
    """The lazy (frame, y, x) dataset of validated frames (one task per file)."""
    ny, nx = metas[0]["shape"]
    for m in metas[1:]:
        if m["shape"] != (ny, nx):
            raise DetflowInputError(m["path"], "NAXIS1/NAXIS2", f"{nx}x{ny} like {metas[0]['path'].name}",
                                    f"{m['shape'][1]}x{m['shape'][0]}")  # fmt: skip
    frames = [da.from_delayed(dask.delayed(_read_frame, pure=True)(str(m["path"]), m["hdu"]), (1, ny, nx),
                              dtype=np.float64) for m in metas]  # fmt: skip
    ds = xr.Dataset({"data": (schema.DIMS_L2, da.concatenate(frames, axis=0), {"units": "adu"})})
    coords = {"source_file": (schema.FRAME, [m["path"].name for m in metas]),
              "exptime": (schema.FRAME, np.array([m["exptime"] for m in metas], np.float64), {"units": "s"})}  # fmt: skip
    for name in ("imagetyp", "frame_type", "filter", "date_obs", "biassec", "trimsec", "datasec"):
        coords[name] = (schema.FRAME, [m[name] for m in metas])
    ds = ds.assign_coords(coords).assign_coords({schema.Y: np.arange(ny), schema.X: np.arange(nx)})
    ds.attrs["instrument"] = "ccd"
    ds.attrs["inputs"] = [{"path": str(m["path"]), "hdu": m["hdu"], "fits_headers": m["headers"]} for m in metas]
    return ds


def open_ccd_frames(paths, hdu: int | str | None = None, skip_corrupt: bool = False) -> xr.Dataset:
    """Open frame files as one lazy dataset, in file order.

    ``skip_corrupt``: damaged files (unreadable FITS, truncated data) are left out and listed in the
    ``skipped_inputs`` attribute; files with wrong content (no image, several images, other shape) are
    always errors."""
    metas, skipped, damaged = [], [], []
    for f in expand_inputs(paths):
        try:
            metas.append(read_ccd_header(f, hdu))
        except CorruptInputError as exc:
            if not skip_corrupt:
                raise
            skipped.append(skipped_record(exc))
            damaged.append(exc)
    if not metas:  # nothing to go on with: each file's own error
        raise DetflowInputError.combine(damaged)
    ds = frames_dataset(metas)
    if skipped:
        ds.attrs["skipped_inputs"] = skipped
    return ds


def read_master(path: str | Path, hdu: int | str | None = None) -> tuple[np.ndarray, dict]:
    """A master calibration frame from a FITS file (read now: it is one frame) and its metadata."""
    meta = read_ccd_header(path, hdu)
    return _read_frame(str(meta["path"]), meta["hdu"])[0], meta
