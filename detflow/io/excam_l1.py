"""Reader for Roman Coronagraph EXCAM L1 frames (FITS: primary HDU + an image HDU of uint16 counts).

Each file is one frame. Headers are checked before any pixel is read: ``DATA_LEVEL`` (or corgidrp's
``DATALVL``) must be ``L1``, ``EXPTIME`` a positive number, the EM gain found by
:func:`detflow.instruments.roman_excam.em_gain`, and the geometry preset named by ``ARRTYPE`` (or
implied by the frame shape) must fit the frame. A data set is one exposure time and one EM gain: mixed
frames are refused with the groups listed, or split into one dataset per group with ``group=True``.

:func:`read_nonlin_table` reads the relative-gain table (CSV: row 0 = EM gains, increasing; column 0
= DN, increasing; ``[0, 0]`` = NaN; body = relative gains) and validates it.

The result has dims ``(frame, read, y, x)`` (``read`` of length 1), lazy: one task reads one frame.
``exptime``, ``em_gain``, ``source_file`` and ``arrtype`` are coordinates on ``frame``; both headers
of every file are kept losslessly in the ``inputs`` attrs.
"""

from __future__ import annotations

from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr
from astropy.io import fits

from .. import schema
from ..errors import CorruptInputError, DetflowInputError  # noqa: F401 (CorruptInputError: re-exported)
from ..instruments import roman_excam
from .fits_input import check_data_complete, hdu_shape, image_hdus, open_fits


def _card(headers, *keys):
    for key in keys:
        for h in headers:
            if key in h:
                return h[key], key
    return None, keys[0]


def read_excam_header(path: str | Path) -> dict:
    """Validated metadata of one L1 file (no pixel data is read)."""
    path = Path(path)
    with open_fits(path, "EXCAM L1 FITS file") as hdul:
        images = image_hdus(hdul)
        if not images:
            raise DetflowInputError(path, "HDU", "an image HDU with the 2-D L1 frame", "none")
        idx = images[0]
        headers = [hdul[idx].header, hdul[0].header]
        shape = hdu_shape(hdul, idx)
        bitpix = int(hdul[idx].header["BITPIX"])
        text = [h.header.tostring() for h in hdul]
        check_data_complete(path, hdul, idx, "frame")
    level, key = _card(headers, "DATA_LEVEL", "DATALVL")
    if str(level).strip().upper() != roman_excam.DATA_LEVEL:
        raise DetflowInputError(path, key, f"DATA_LEVEL {roman_excam.DATA_LEVEL}", level)
    exptime, _ = _card(headers, "EXPTIME")
    try:
        exptime = float(exptime)
    except (TypeError, ValueError):
        raise DetflowInputError(path, "EXPTIME", "the exposure time in s (a number >= 0)", exptime) from None
    if not exptime >= 0:
        raise DetflowInputError(path, "EXPTIME", "the exposure time in s (a number >= 0)", exptime)
    merged = {k: v for h in reversed(headers) for k, v in h.items()}
    try:
        gain, gain_key = roman_excam.em_gain(merged)
    except KeyError as exc:
        raise DetflowInputError(path, "EM gain", exc.args[0], "none") from None
    arrtype, _ = _card(headers, "ARRTYPE")
    try:
        geom = roman_excam.geometry_for(arrtype, shape)
    except (KeyError, ValueError) as exc:
        raise DetflowInputError(path, "ARRTYPE" if arrtype else "NAXIS1/NAXIS2", "a known EXCAM geometry",
                                str(exc.args[0])) from None  # fmt: skip
    if bitpix not in (8, 16, 32):  # 16 with BZERO 32768 is how FITS stores uint16
        raise DetflowInputError(path, "BITPIX", "integer counts (8, 16 or 32)", bitpix)
    return {"path": path, "hdu": idx, "shape": shape, "exptime": exptime, "em_gain": gain, "em_gain_key": gain_key,
            "arrtype": geom.name, "headers": text}  # fmt: skip


def _read_frame(path: str, hdu: int) -> np.ndarray:
    with fits.open(path, memmap=False) as hdul:
        return np.asarray(hdul[hdu].data).astype(np.uint16)[None, None]


def _dataset(metas: list[dict]) -> xr.Dataset:
    rows, cols = metas[0]["shape"]
    frames = [da.from_delayed(dask.delayed(_read_frame, pure=True)(str(m["path"]), m["hdu"]),
                              (1, 1, rows, cols), dtype=np.uint16) for m in metas]  # fmt: skip
    cube = da.concatenate(frames, axis=0)
    ds = xr.Dataset({"data": (schema.DIMS_L1, cube, {"units": "DN"})})
    ds = ds.assign_coords({
        "source_file": (schema.FRAME, [m["path"].name for m in metas]),
        "exptime": (schema.FRAME, np.array([m["exptime"] for m in metas]), {"units": "s"}),
        "em_gain": (schema.FRAME, np.array([m["em_gain"] for m in metas])),
        "arrtype": (schema.FRAME, [m["arrtype"] for m in metas]),
        schema.Y: np.arange(rows), schema.X: np.arange(cols),
    })  # fmt: skip
    ds.attrs["instrument"] = "roman_excam"
    ds.attrs["geometry"] = metas[0]["arrtype"]
    ds.attrs["inputs"] = [{"path": str(m["path"]), "fits_headers": m["headers"], "em_gain_keyword": m["em_gain_key"]}
                          for m in metas]  # fmt: skip
    return ds


def open_excam_l1(paths, group: bool = False, skip_corrupt: bool = False
                  ) -> xr.Dataset | dict[tuple[float, float, str], xr.Dataset]:  # fmt: skip
    """Open EXCAM L1 files as one lazy dataset (or, with ``group``, one per (EXPTIME, EM gain, ARRTYPE)).

    ``skip_corrupt``: damaged files (unreadable FITS, truncated data) are left out and listed in the
    ``skipped_inputs`` attribute (file, field, reason) instead of failing the data set; valid files
    with wrong content (DATA_LEVEL, geometry, mixed gains) are always errors."""
    from . import expand_inputs, skipped_record

    files = expand_inputs(paths)
    metas, skipped, damaged = [], [], []
    for f in files:
        try:
            metas.append(read_excam_header(f))
        except CorruptInputError as exc:
            if not skip_corrupt:
                raise
            skipped.append(skipped_record(exc))
            damaged.append(exc)
    if not metas:  # nothing to go on with: each file's own error
        raise DetflowInputError.combine(damaged)
    if skipped:
        out = open_excam_l1([m["path"] for m in metas], group=group)
        for ds in out.values() if group else [out]:
            ds.attrs["skipped_inputs"] = skipped
        return out
    groups: dict[tuple[float, float, str], list[dict]] = {}
    for m in metas:
        groups.setdefault((m["exptime"], m["em_gain"], m["arrtype"]), []).append(m)
    if group:
        return {k: _dataset(v) for k, v in groups.items()}
    if len(groups) > 1:
        listing = "; ".join(f"EXPTIME={k[0]:g} s, EM gain={k[1]:g}, ARRTYPE={k[2]}: "
                            + ", ".join(m["path"].name for m in v[:5]) + (f" (+{len(v) - 5} more)" if len(v) > 5 else "")
                            for k, v in groups.items())  # fmt: skip
        raise DetflowInputError(files[0].parent, "EXPTIME/EM gain", "one exposure time, EM gain and geometry per "
                                "data set (or group them)", listing)  # fmt: skip
    return _dataset(metas)


# ---- the nonlinearity (relative-gain) table -------------------------------------------------------
def check_nonlin_table(table: np.ndarray, source=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(gains, counts, relgains)`` of a relative-gain table, validated (one error naming the problem)."""
    table = np.asarray(table, dtype=np.float64)
    if table.ndim != 2 or table.shape[0] < 3 or table.shape[1] < 2:
        raise DetflowInputError(source, "table", "rows of [DN, relative gains...] under a header row of EM gains",
                                f"shape {table.shape}")  # fmt: skip
    gains, counts, rel = table[0, 1:], table[1:, 0], table[1:, 1:]
    if not np.all(np.isfinite(gains)) or np.any(np.diff(gains) <= 0):
        raise DetflowInputError(source, "row 0 (EM gains)", "strictly increasing numbers", gains.tolist()[:8])
    if not np.all(np.isfinite(counts)) or np.any(np.diff(counts) <= 0):
        bad = int(np.argmax(~(np.diff(counts) > 0))) + 2
        raise DetflowInputError(source, f"column 0 (DN), row {bad}", "strictly increasing counts",
                                counts[max(bad - 3, 0) : bad + 1].tolist())  # fmt: skip
    if not np.all(np.isfinite(rel)):
        raise DetflowInputError(source, "relative gains", "finite values", "NaN or inf")
    wild = (rel <= 0.1) | (rel >= 10)  # a correction factor, not a placeholder (10000...) or a gain
    if wild.any():
        r, c = (int(i[0]) for i in np.nonzero(wild))
        raise DetflowInputError(source, f"row {r + 1} (DN {counts[r]:g}), EM gain {gains[c]:g}",
                                "a relative gain between 0.1 and 10", f"{rel[r, c]:g}")  # fmt: skip
    straddle = (rel.min(axis=0) <= 1) & (rel.max(axis=0) >= 1)
    if not straddle.all():
        col = int(np.argmin(straddle))
        raise DetflowInputError(source, f"column for EM gain {gains[col]:g}", "relative gains that reach 1.0",
                                f"{rel[:, col].min():g}..{rel[:, col].max():g}")  # fmt: skip
    return gains, counts, rel


def read_nonlin_table(path: str | Path) -> np.ndarray:
    """A relative-gain table from CSV (or whitespace-separated) text, validated."""
    path = Path(path)
    if not path.is_file():
        raise DetflowInputError(path, "non_lin_correction", "an existing nonlinearity table", "no such file")
    text = path.read_text()
    table = np.genfromtxt(path, delimiter="," if "," in text else None)
    check_nonlin_table(table, path)
    return table
