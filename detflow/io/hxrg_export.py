"""FITS exports of the ``hxrg_ground`` per-exposure products, with IO:I's LT names and keywords.

Each exposure of the store's ``frames`` group becomes ``<inst>_<type>_<date>_<run>_<dither>_0_1.fits``
(IO:I's level-1 name; :func:`detflow.instruments.hxrg_ground.product_name` for the other layouts): the
first read's header without the per-read keywords (``SEQNUM_R/M/N``, ``SEQNNAME``, ``INTTIME``, as IO:I's
``_purge_obsolete_headers``), ``EXPTIME``, ``MJD``/``DATE``/``DATE-OBS``/``UTSTART`` from ``ACQTIME`` and
``ACQTIME1``, the processing keywords (``L1REFSUB``, ``L1FMCO``, ``L1FMCOME``, ``L1FMCOPA``, ``L1LCOR``),
``BUNIT``, and ``EXTNAME = IM_NONSS``; ``ERR`` and ``DQ`` extensions follow. Written from the committed
store (nothing recomputed), each file atomically.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import xarray as xr
from astropy.io import fits

from ..instruments.hxrg_ground import product_name
from . import expand_inputs
from .store import atomic_write

PER_READ = ("SEQNUM_R", "SEQNUM_M", "SEQNUM_N", "SEQNNAME", "INTTIME")


def names_of(frames: xr.Dataset) -> list[str]:
    """The product file names of a ``frames`` group's exposures, in order."""
    c = {k: frames[k].values for k in ("naming", "inst", "exptype", "date", "run", "dither", "source_file",
                                        "integration")}  # fmt: skip
    return [product_name(str(c["naming"][i]), str(c["inst"][i]), str(c["exptype"][i]), str(c["date"][i]),
                         int(c["run"][i]), int(c["dither"][i]), str(c["source_file"][i]), int(c["integration"][i]))
            for i in range(frames.sizes["frame"])]  # fmt: skip


def _header(first_read: Path, frames: xr.Dataset, i: int, root: dict) -> fits.Header:
    with fits.open(first_read, memmap=False) as hdul:
        h = hdul[0].header.copy()
    for k in ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "BZERO", "BSCALE", *PER_READ):
        h.remove(k, ignore_missing=True, remove_all=True)
    steps = {s["name"]: s for s in root.get("steps", [])}
    ref, comb = steps.get("hxrg_refpix", {}), steps.get("hxrg_combine", {})
    h["EXPTIME"] = (float(frames["exptime"].values[i]), "[s] exposure time")
    acq = h.get("ACQTIME")
    if isinstance(acq, (int, float)):
        h["MJD"] = (float(acq) - 2400000.5, "modified Julian date of the first read")
    try:
        when = dt.datetime.strptime(str(h.get("ACQTIME1", "")), "%Y-%m-%d-%H:%M:%S.%f")
        h["DATE"], h["DATE-OBS"], h["UTSTART"] = (when.strftime("%Y-%m-%d"), when.strftime("%Y-%m-%dT%H:%M:%S"),
                                                  when.strftime("%H:%M:%S"))  # fmt: skip
    except ValueError:
        pass
    mode = ref.get("params", {}).get("mode", "none")
    h["L1REFSUB"] = (int(ref.get("status") == "COMPLETE"), f"reference subtracted ({mode})")
    h["L1FMCO"] = (1, "frame combined")
    h["L1FMCOME"] = (str(comb.get("params", {}).get("mode", "")).upper(), "frame combination method")
    h["L1FMCOPA"] = (comb.get("params", {}).get("fowler_pairs") or 0, "num pairs used (fowler only)")
    h["L1LCOR"] = (int("nonlinearity corrected" in " ".join(root.get("history", []))), "linearity corrected")
    h["BUNIT"] = frames["data"].attrs.get("units", "")
    h["EXTNAME"] = "IM_NONSS"
    h["ORIGIN"] = "detflow hxrg_ground"
    return h


def export_frames(store: str | Path, outdir: str | Path, inputs) -> list[Path]:
    """Write every exposure of the store's ``frames`` group as an LT-named FITS file in ``outdir``."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    frames = xr.open_zarr(store, group="frames")
    root = xr.open_datatree(store, engine="zarr").attrs
    by_name = {p.name: p for p in expand_inputs(inputs)}
    written = []
    for i, name in enumerate(names_of(frames)):
        f = frames.isel(frame=i)
        hdus = fits.HDUList([fits.PrimaryHDU(np.asarray(f["data"].values, np.float32),
                                             _header(by_name[str(f["source_file"].values)], frames, i, root)),
                             fits.ImageHDU(np.asarray(f["err"].values, np.float32), name="ERR"),
                             fits.ImageHDU(np.asarray(f["dq"].values, np.uint32), name="DQ")])  # fmt: skip
        written.append(atomic_write(outdir / name, hdus.writeto))
    return written
