"""Exporters: FITS for ds9 and older tools, from a written store (they never recompute the science)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from astropy.io import fits

from .. import __version__
from ..kernels.mask import grow_bits
from ..schema import PIXEL_MASK_1, mask_sizes
from .store import open_store

BAD_VALUE = -1000.0


def pit_fits_path(output: str | Path) -> Path:
    """Where the PIT's ``FITSOUT`` puts the FITS file: the output name without its 5-character
    extension (``.asdf`` there, ``.zarr`` here) plus ``_asdf_to.fits``."""
    s = str(output)
    return Path(s[:-5] + "_asdf_to.fits")


def export_wfi_fits(store: str | Path, path: str | Path, frame: int = 0) -> Path:
    """PIT ``FITSOUT`` layout: primary = slope, HDU 1 = dq, HDU 2 = slope where good else -1000 (good:
    not masked by the grown flags of ``PIXEL_MASK_1``; saturated pixels are kept), with the WCS and
    provenance keywords. Written under a temporary name and renamed: complete or absent."""
    tree = open_store(store)
    l2 = tree["l2"].to_dataset().isel(frame=frame)
    data = l2["data"].values.astype(np.float32)
    dq = l2["dq"].values.astype(np.uint32)
    masked = np.empty(dq.shape, dtype=bool)
    grow_bits(dq, mask_sizes(PIXEL_MASK_1), masked)
    hdr = fits.Header()
    if "fits_wcs" in tree["l2"].attrs:
        hdr.extend(fits.Header.fromstring(tree["l2"].attrs["fits_wcs"]), unique=True)
    hdr["BUNIT"] = (l2["data"].attrs.get("units", "DN / s"), "slope units")
    hdr["ORIGIN"] = "detflow"
    hdr["DFVERS"] = (__version__, "detflow version")
    hdr["DFSTORE"] = (str(Path(store).name), "detflow store this was exported from")
    if "source_file" in l2.coords:
        hdr["DFINPUT"] = (str(l2["source_file"].values), "L1 input file")
    for i, step in enumerate(tree.attrs.get("steps", [])[:99]):
        hdr[f"DFSTEP{i:02d}"] = f"{step['name']}={step['status']}"
    hdus = fits.HDUList([fits.PrimaryHDU(data, header=hdr),
                         fits.ImageHDU(dq, name="DQ"),
                         fits.ImageHDU(np.where(masked, np.float32(BAD_VALUE), data).astype(np.float32), name="GOOD")])  # fmt: skip
    path = Path(path)
    tmp = path.with_name(path.name + f".partial-{os.getpid()}")
    hdus.writeto(tmp)
    tmp.replace(path)
    return path
