"""Readers (one per format), the zarr store writer and exporters."""

from __future__ import annotations

import glob
from pathlib import Path

import xarray as xr

from .. import schema
from ..errors import CorruptInputError, DetflowInputError

SUFFIXES = {".asdf": "roman_asdf", ".fits": "fits_ramp", ".fit": "fits_ramp", ".fits.gz": "fits_ramp"}


def expand_inputs(inputs) -> list[Path]:
    """Files named by a path, a directory, a glob, or a list of these, in sorted order."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if _kind(q))
            if not found:
                raise DetflowInputError(p, "input", "a directory holding .asdf or .fits exposures", "none")
            out.extend(found)
        elif any(c in str(item) for c in "*?["):
            found = sorted(Path(q) for q in glob.glob(str(item)))
            if not found:
                raise DetflowInputError(item, "input", "a glob matching at least one file", "no match")
            out.extend(found)
        else:
            if not p.exists():
                raise DetflowInputError(p, "input", "an existing file", "no such file")
            out.append(p)
    return out


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    for suffix, kind in SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    return None


def skipped_record(exc: CorruptInputError) -> dict:
    """How a left-out damaged file is listed (``skipped_inputs``): file, field, reason, what was expected, frames."""
    return {"file": exc.file, "field": exc.field, "reason": str(exc.got), "expected": exc.expected, "frames": 1}


def open_l1(inputs, chunks: dict | None = None, skip_corrupt: bool = False) -> xr.Dataset:
    """Open L1 exposures lazily: one dataset with dims (frame, read, y, x), frames in file order.

    ``skip_corrupt``: damaged files (unreadable ASDF, a truncated data block) are left out and listed in
    ``attrs["skipped_inputs"]`` instead of failing the set; files with wrong content are always errors."""
    from .fits_ramp import open_fits_ramp
    from .roman_l1 import open_roman_l1

    all_paths = expand_inputs(inputs)
    parts, paths, skipped, damaged = [], [], [], []
    for p in all_paths:
        kind = _kind(p)
        try:
            if kind == "roman_asdf":
                parts.append(open_roman_l1(p, chunks))
            elif kind == "fits_ramp":
                parts.append(open_fits_ramp(p, chunks))
            else:
                raise DetflowInputError(p, "file name", "an .asdf or .fits exposure", p.suffix or "no suffix")
        except CorruptInputError as exc:
            if not skip_corrupt:
                raise
            skipped.append(skipped_record(exc))
            damaged.append(exc)
            continue
        paths.append(p)
    if not parts:  # nothing to go on with: each file's own error
        raise DetflowInputError.combine(damaged)
    if len(parts) == 1:
        out = parts[0]
        if skipped:
            out.attrs["skipped_inputs"] = skipped
        return out
    first = parts[0]
    for p, ds in zip(paths[1:], parts[1:]):
        for dim in (schema.READ, schema.Y, schema.X):
            if ds.sizes[dim] != first.sizes[dim]:
                raise DetflowInputError(p, f"dimension {dim}", f"{first.sizes[dim]} like {paths[0].name}",
                                        ds.sizes[dim])  # fmt: skip
    inputs_attr = [item for ds in parts for item in ds.attrs.get("inputs", [])]
    out = xr.concat(parts, dim=schema.FRAME, combine_attrs="override", data_vars="all", coords="different",
                    compat="equals", join="exact")  # fmt: skip
    out = out.assign_coords({schema.FRAME: range(out.sizes[schema.FRAME])})
    out.attrs["inputs"] = inputs_attr
    if skipped:
        out.attrs["skipped_inputs"] = skipped
    return out


def detector_of(path: Path) -> str:
    """The detector an exposure file comes from (Roman ``meta.instrument.detector``, FITS ``DETECTOR``)."""
    kind = _kind(Path(path))
    if kind == "roman_asdf":
        from .roman_l1 import read_roman_l1_meta

        return read_roman_l1_meta(path)["detector"]
    if kind == "fits_ramp":
        from astropy.io import fits

        try:
            return str(fits.getheader(path).get("DETECTOR", "detector"))
        except Exception:
            return "detector"
    raise DetflowInputError(path, "file name", "an .asdf or .fits exposure", Path(path).suffix or "no suffix")
