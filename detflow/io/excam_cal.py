"""Calibration inputs of an EXCAM run, as the II&T ``config_file.yaml`` names them, into one dataset.

Each map is a FITS image (the first 2-D image HDU; an ``ERR`` HDU, 2-D or ``(1, y, x)``, is kept as its
error). A map is either the image area of the frames' geometry (1024x1024 for SCI) or the full frame
(1200x2200), which is cropped to the image area. Any other shape is one clear error naming the file.

=============================  ======================  ===================================
config key                     variable                 content
=============================  ======================  ===================================
non_linearity_filepath         ``nonlin_table``         relative-gain table (CSV/text or FITS)
dark_current_map               ``dark_current``         e-/pix/s
fixed_pattern_noise            ``fpn``                  e- (seen through the EM gain: F/g)
EXCAM_clock_induced_charge     ``cic``                  e-/pix/frame
master_dark_filepath           ``master_dark``          e- (a traditional master dark)
flatfield_filepath             ``flat``                 unitless
badpix_filepath                ``badpix``               nonzero = bad
=============================  ======================  ===================================
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr
from astropy.io import fits

from ..errors import DetflowInputError
from ..instruments.roman_excam import ExcamGeometry
from .excam_l1 import check_nonlin_table, read_nonlin_table

MAPS = {
    "dark_current_map": "dark_current",
    "fixed_pattern_noise": "fpn",
    "EXCAM_clock_induced_charge": "cic",
    "master_dark_filepath": "master_dark",
    "flatfield_filepath": "flat",
    "badpix_filepath": "badpix",
}
UNITS = {"dark_current": "electron / s", "fpn": "electron", "cic": "electron", "master_dark": "electron",
         "flat": "", "badpix": ""}  # fmt: skip


def variables_of(key: str) -> set[str]:
    """The dataset variables :func:`open_excam_references` makes of one config key."""
    if key == "non_linearity_filepath":
        return {"nonlin_table"}
    return {MAPS[key], f"{MAPS[key]}_err"} if key in MAPS else set()


def _read_image(path: Path, key: str) -> tuple[np.ndarray, np.ndarray | None]:
    if not path.is_file():
        raise DetflowInputError(path, key, "an existing FITS image", "no such file")
    try:
        with fits.open(path, memmap=False) as hdul:
            images = [h for h in hdul if getattr(h, "is_image", False) and h.data is not None and h.data.ndim >= 2]
            if not images:
                raise DetflowInputError(path, key, "a FITS file with a 2-D image HDU", "no image data")
            data = np.asarray(images[0].data, dtype=np.float64)
            err = np.asarray(hdul["ERR"].data, dtype=np.float64) if "ERR" in hdul else None
    except DetflowInputError:
        raise
    except Exception as exc:
        raise DetflowInputError(path, key, "a readable FITS file", f"{type(exc).__name__}: {exc}") from None
    data = np.squeeze(data)
    if err is not None:
        err = np.squeeze(err)
        if err.shape != data.shape:
            err = None
    return data, err


def _to_image(a: np.ndarray, geom: ExcamGeometry, path: Path, key: str) -> np.ndarray:
    img = geom.image
    if a.shape == (img.rows, img.cols):
        return a
    if a.shape == (geom.frame_rows, geom.frame_cols):
        return a[img.slices]
    raise DetflowInputError(path, key, f"the {geom.name} image area {img.rows}x{img.cols} or the full frame "
                            f"{geom.frame_rows}x{geom.frame_cols}", "x".join(map(str, a.shape)))  # fmt: skip


def open_excam_references(paths: dict[str, str | Path | None], geom: ExcamGeometry) -> xr.Dataset:
    """The calibration inputs named in ``paths`` (config keys above; ``None`` = not given), checked and
    cut to the image area. ``attrs["reference_files"]`` lists what was read."""
    out = xr.Dataset(attrs={"reference_files": []})
    for key, value in paths.items():
        if value is None:
            continue
        path = Path(value)
        if key == "non_linearity_filepath":
            if path.suffix.lower() in (".fits", ".fit", ".fz"):
                table, _ = _read_image(path, key)
                check_nonlin_table(table, path)
            else:
                table = read_nonlin_table(path)
            out["nonlin_table"] = (("table_row", "table_col"), table)
        elif key in MAPS:
            name = MAPS[key]
            data, err = _read_image(path, key)
            data = _to_image(data, geom, path, key)
            if name != "badpix" and not np.isfinite(data).all():
                raise DetflowInputError(path, key, "finite values", f"{int((~np.isfinite(data)).sum())} NaN/inf pixels")
            if name == "badpix":
                out[name] = (("y", "x"), (np.nan_to_num(data) != 0).astype(np.uint8))
            else:
                out[name] = (("y", "x"), data, {"units": UNITS[name]})
                if err is not None:
                    out[f"{name}_err"] = (("y", "x"), _to_image(err, geom, path, key))
        else:
            raise DetflowInputError(None, key, "a calibration key: non_linearity_filepath, " + ", ".join(MAPS),
                                    "unknown key")  # fmt: skip
        out.attrs["reference_files"].append({"name": key, "path": str(path), "used": True})
    return out
