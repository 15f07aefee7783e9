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


def export_wfi_asdf(store: str | Path, path: str | Path, frame: int = 0) -> Path:
    """An L2 ASDF laid out as the Roman tools lay it out (the PIT ``gen_cal_image`` output): ``roman``
    with ``data``, ``dq``, ``var_rnoise``, ``var_poisson``, ``err``, ``data_withsky``, the border
    reference pixels and their DQ, ``amp33`` and ``meta``; ``processinfo`` with the sky, the ramp
    weights and the configuration. Complete or absent."""
    import asdf

    tree = open_store(store)
    l2 = tree["l2"].to_dataset().isel(frame=frame)
    roman = {}
    for name in ("data", "dq", "var_rnoise", "var_poisson", "err", "data_withsky", "amp33",
                 "border_ref_pix_left", "border_ref_pix_right", "border_ref_pix_top", "border_ref_pix_bottom",
                 "dq_border_ref_pix_left", "dq_border_ref_pix_right", "dq_border_ref_pix_top",
                 "dq_border_ref_pix_bottom"):  # fmt: skip
        if name in l2:
            arr = l2[name].values
            roman[name] = arr.astype(np.float32) if arr.dtype.kind == "f" or name.startswith("border") else arr
    if "data_withsky" not in roman:
        roman["data_withsky"] = roman["data"]
    attrs = tree.attrs
    inputs = attrs.get("inputs", [])
    roman["meta"] = {
        "calibration_software_name": "detflow",
        "calibration_software_version": __version__,
        "l1_meta": inputs[frame].get("meta", {}) if len(inputs) > frame else {},
        "cal_step": {s["name"]: s["status"] for s in attrs.get("steps", [])},
        "wcs_header": tree["l2"].attrs.get("fits_wcs"),
    }
    steps = {s["name"]: s.get("params", {}) for s in attrs.get("steps", [])}
    processinfo = {
        "medsky": float(l2["sky_mode"].values) if "sky_mode" in l2 else None,
        "skyorder": int(steps.get("sky", {}).get("order") or -1),
        "skycoefs": l2["sky_coefs"].values.astype(np.float32) if "sky_coefs" in l2 else np.zeros(0, np.float32),
        "weights": l2["ramp_weights"].values.astype(np.float32) if "ramp_weights" in l2.coords else None,
        "ramp_opt_pars": {k: steps.get("ramp_fit", {}).get(k) for k in ("slope", "gain", "sigma_read")},
        "exclude_first": steps.get("ramp_fit", {}).get("exclude_first"),
        "config": attrs.get("job", {}),
        "log": attrs.get("history", []),
    }
    path = Path(path)
    tmp = path.with_name(path.name + f".partial-{os.getpid()}")
    asdf.AsdfFile({"roman": roman, "processinfo": processinfo}).write_to(tmp)
    tmp.replace(path)
    return path


def export_noise_asdf(store: str | Path, path: str | Path, frame: int = 0) -> Path:
    """The noise cube as the PIT ``gen_noise_image`` writes it: ``{"config": ..., "noise": (layer, y, x)}``
    (float16 or float32 as stored), with the layer codes and seed beside it. Complete or absent."""
    import asdf

    tree = open_store(store)
    noise = tree["noise"].to_dataset()
    cube = noise["noise"].isel(frame=frame).values
    out = {"config": tree.attrs.get("job", {}), "noise": cube, "layers": list(noise.attrs.get("layers", [])),
           "seed": noise.attrs.get("seed")}  # fmt: skip
    path = Path(path)
    tmp = path.with_name(path.name + f".partial-{os.getpid()}")
    asdf.AsdfFile(out).write_to(tmp)
    tmp.replace(path)
    return path


def export_noise_fits(store: str | Path, path: str | Path, frame: int = 0) -> Path:
    """The noise cube as one float32 primary HDU (FITS has no float16), layer codes in LAYERn keywords."""
    tree = open_store(store)
    noise = tree["noise"].to_dataset()
    hdu = fits.PrimaryHDU(noise["noise"].isel(frame=frame).values.astype(np.float32))
    hdu.header["SEED"] = (int(noise.attrs.get("seed", 0)), "noise realization seed")
    for i, code in enumerate(noise.attrs.get("layers", [])):
        hdu.header[f"LAYER{i}"] = (str(code), f"layer {i} code")
    hdu.header["CREATOR"] = f"detflow {__version__}"
    path = Path(path)
    tmp = path.with_name(path.name + f".partial-{os.getpid()}")
    hdu.writeto(tmp)
    tmp.replace(path)
    return path
