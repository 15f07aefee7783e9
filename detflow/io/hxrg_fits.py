"""Reader for ground-based HxRG reads: one FITS file per read (LT and Teledyne names), or a 4-D SCI cube.

Per-read files (:mod:`detflow.instruments.hxrg_ground` has the names and keywords): the name gives run,
dither and exposure (LT) or run, group and read (Teledyne); the job's selection (``date``, ``runs``,
``dithers``, ``exposures``, ``groups``: inclusive ranges) picks files by name before any header is read.
The reads of one exposure (LT: one run and dither; Teledyne: one run) are ordered by ``INTTIME``. Every
exposure must have the same reads (count and Fowler layout) and shape: they make one array.

A cube file (a ``SCI`` HDU, or the only image, of 3 or 4 axes: ``(integration, group, y, x)``, JWST-style):
each integration is an exposure and each group a read, at ``tbar = (g (NFRAMES + GROUPGAP) + (NFRAMES + 1)
/ 2) TFRAME`` (``TGROUP`` when given for the group spacing), keywords from any header of the file.

Headers are read and checked first; pixels by one task per read (per integration for a cube), as float64
DN. The result: ``data`` (frame, read, y, x), lazy, per-frame metadata as ``frame`` coordinates (run,
dither, date, noutputs, asicgain, ra, dec...) and per-read ones as ``(frame, read)`` coordinates
(``inttime`` s, ``seqnum_m``, ``seqnum_n``, ``read_nframes``, ``read_file``).
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
from ..instruments import hxrg_ground as hg
from . import expand_inputs, skipped_record
from .fits_input import check_data_complete, hdu_shape, image_hdus, open_fits

NAMES = "an LT name <inst>_<type>_<date>_<run>_<dither>_<exp>_<level>.fits or a Teledyne <inst>_R<run>_M<group>_N<read>"


def _in(value: int, rng) -> bool:
    return rng is None or rng[0] <= value <= rng[1]


def selected(fields: dict, select: dict) -> bool:
    """Whether a per-read file's name fields pass the job's selection (inclusive ranges; ``date`` exact)."""
    if select.get("date") is not None and fields["naming"] == "lt" and fields["date"] != str(select["date"]):
        return False
    if not _in(fields["run"], select.get("runs")) or not _in(fields["exp"], select.get("exposures")):
        return False
    if fields["naming"] == "lt":
        return _in(fields["dither"], select.get("dithers"))
    return _in(fields["group"], select.get("groups"))


def _image_hdu(path: Path, hdul) -> int:
    names = [str(h.name).upper() for h in hdul]
    if "SCI" in names:
        return names.index("SCI")
    images = image_hdus(hdul, (2, 3, 4))
    if len(images) != 1:
        raise DetflowInputError(path, "HDU", "one image HDU (or a SCI extension)", f"{len(images)}")
    return images[0]


def _card(headers, key):
    return next((h[key] for h in headers if key in h), None)


def _number(path, key, value, what: str, need: bool) -> float:
    if value is None:
        if need:
            raise DetflowInputError(path, key, what, "none")
        return np.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DetflowInputError(path, key, what, repr(value)) from None


def read_header(path: Path, fields: dict | None, need_noutputs: bool) -> dict:
    """Validated metadata of one per-read file or cube (no pixel is read)."""
    with open_fits(path) as hdul:
        idx = _image_hdu(path, hdul)
        h = hdul[idx].header
        headers = [h] + [x.header for i, x in enumerate(hdul) if i != idx]
        shape = hdu_shape(hdul, idx)
        check_data_complete(path, hdul, idx)
        text = [x.header.tostring() for x in hdul]
    meta = {"path": path, "hdu": idx, "headers": text, "fields": fields}
    meta["noutputs"] = _number(path, "NOUTPUTS", _card(headers, "NOUTPUTS"), "the number of outputs (1, 4 or 32)",
                               need_noutputs)  # fmt: skip
    for coord, key in hg.FRAME_KEYS.items():
        v = _card(headers, key)
        if coord not in meta:
            meta[coord] = v if isinstance(v, str) else (np.nan if v is None else float(v))
    if fields is None:  # a cube
        if len(shape) not in (3, 4):
            raise DetflowInputError(path, f"NAXIS of HDU {idx}", f"{NAMES}, or a 3-D/4-D (integration, group, y, x) "
                                    "cube", f"NAXIS {len(shape)} and the name {path.name}")  # fmt: skip
        meta["shape"] = shape if len(shape) == 4 else (1, *shape)
        for key in hg.CUBE_KEYS:
            meta[key] = _card(headers, key)
        ng = meta["shape"][1]
        if meta["NGROUPS"] is not None and int(meta["NGROUPS"]) != ng:
            raise DetflowInputError(path, "NGROUPS", f"the cube's {ng} groups", meta["NGROUPS"])
        meta["TFRAME"] = _number(path, "TFRAME", meta["TFRAME"], "the frame time in s", True)
        return meta
    if len(shape) != 2:
        raise DetflowInputError(path, f"NAXIS of HDU {idx}", "a 2-D read", f"NAXIS {len(shape)}")
    meta["shape"] = shape
    meta["inttime"] = _number(path, "INTTIME", _card(headers, "INTTIME"), "the read's integration time in s", True)
    for coord, key in hg.READ_KEYS.items():
        if coord != "inttime":
            meta[coord] = _number(path, key, _card(headers, key), "a number", False)
    return meta


def _read_2d(path: str, hdu: int) -> np.ndarray:
    with fits.open(path, memmap=False) as hdul:
        return np.asarray(hdul[hdu].data, dtype=np.float64)[None, None]


def _read_integration(path: str, hdu: int, i: int, ndim: int) -> np.ndarray:
    with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
        section = hdul[hdu].section  # reads only this integration (BZERO/BSCALE applied)
        return np.array(section[i] if ndim == 4 else section[:], dtype=np.float64)[None]


def _exposures(metas: list[dict]) -> list[list[dict]]:
    """Per-read files grouped into exposures (LT: run and dither; Teledyne: run), reads by INTTIME."""
    groups: dict[tuple, list[dict]] = {}
    for m in metas:
        f = m["fields"]
        key = (f["naming"], f["inst"], f["type"], f["date"], f["run"], f["dither"])
        groups.setdefault(key, []).append(m)
    return [sorted(v, key=lambda m: (m["inttime"], m["path"].name)) for _, v in sorted(groups.items())]


def _check_alike(exposures: list[list[dict]]) -> None:
    first = exposures[0]
    for exp in exposures[1:]:
        if len(exp) != len(first):
            raise DetflowInputError(exp[0]["path"], "reads", f"{len(first)} reads per exposure like "
                                    f"{first[0]['path'].name}", len(exp))  # fmt: skip
        layout = [(m["seqnum_m"], m["seqnum_n"]) for m in exp]
        want = [(m["seqnum_m"], m["seqnum_n"]) for m in first]
        if not np.array_equal(np.array(layout, float), np.array(want, float), equal_nan=True):
            raise DetflowInputError(exp[0]["path"], "SEQNUM_M/SEQNUM_N", f"the read layout of {first[0]['path'].name}"
                                    f" {want}", layout)  # fmt: skip
    for exp in exposures:
        for m in exp:
            if m["shape"] != first[0]["shape"]:
                raise DetflowInputError(m["path"], "NAXIS1/NAXIS2", f"{first[0]['shape'][1]}x{first[0]['shape'][0]} "
                                        f"like {first[0]['path'].name}", f"{m['shape'][1]}x{m['shape'][0]}")  # fmt: skip


FRAME_COORDS = ("run", "dither", "date", "inst", "exptype", "naming", "integration", "noutputs", "asicgain",
                "exptime_header", "ra", "dec", "acqtime1", "object", "filter")  # fmt: skip


def _frame_row(first: dict, integration: int) -> dict:
    f = first["fields"] or {"run": 0, "dither": 0, "date": "", "inst": "", "type": "", "naming": "cube"}
    row = {k: first.get(k) for k in FRAME_COORDS}
    row.update(run=f["run"], dither=f["dither"], date=f["date"], inst=f["inst"], exptype=f["type"],
               naming=f["naming"], integration=integration, source_file=first["path"].name)  # fmt: skip
    return row


def _dataset(frames: list[dict], reads: list[dict], arrays: list, shape: tuple[int, int], metas: list[dict]):
    ny, nx = shape
    data = da.concatenate(arrays, axis=0) if len(arrays) > 1 else arrays[0]
    ds = xr.Dataset({"data": (schema.DIMS_L1, data, {"units": "DN"})})
    coords: dict = {"source_file": (schema.FRAME, [r["source_file"] for r in frames])}
    for k in FRAME_COORDS:
        values = [r[k] for r in frames]
        if k in ("run", "dither", "integration"):
            coords[k] = (schema.FRAME, np.array(values, np.int64))
        elif any(isinstance(v, str) for v in values):
            coords[k] = (schema.FRAME, ["" if v is None else str(v) for v in values])
        else:
            coords[k] = (schema.FRAME, np.array([np.nan if v is None else v for v in values], np.float64))
    for k in ("inttime", "seqnum_m", "seqnum_n", "read_nframes", "acqtime"):
        coords[k] = ((schema.FRAME, schema.READ), np.array([r[k] for r in reads], np.float64))
    coords["read_file"] = ((schema.FRAME, schema.READ), np.array([r["read_file"] for r in reads], dtype=str))
    coords["inttime"] += ({"units": "s", "long_name": "read time since the reset (INTTIME)"},)
    ds = ds.assign_coords(coords).assign_coords({schema.Y: np.arange(ny), schema.X: np.arange(nx)})
    ds.attrs["instrument"] = "hxrg_ground"
    ds.attrs["inputs"] = [{"path": str(m["path"]), "hdu": m["hdu"], "fits_headers": m["headers"]} for m in metas]
    return ds


def _per_read(metas: list[dict]) -> xr.Dataset:
    exposures = _exposures(metas)
    _check_alike(exposures)
    ny, nx = exposures[0][0]["shape"]
    frames, reads, arrays = [], [], []
    for exp in exposures:
        frames.append(_frame_row(exp[0], -1))
        reads.append({"inttime": [m["inttime"] for m in exp], "seqnum_m": [m["seqnum_m"] for m in exp],
                      "seqnum_n": [m["seqnum_n"] for m in exp], "read_nframes": [1.0] * len(exp),
                      "acqtime": [m["acqtime"] for m in exp], "read_file": [m["path"].name for m in exp]})  # fmt: skip
        parts = [da.from_delayed(dask.delayed(_read_2d, pure=True)(str(m["path"]), m["hdu"]), (1, 1, ny, nx),
                                 dtype=np.float64) for m in exp]  # fmt: skip
        arrays.append(da.concatenate(parts, axis=1))
    return _dataset(frames, reads, arrays, (ny, nx), metas)


def _cube(metas: list[dict], select: dict) -> xr.Dataset:
    ng0, ny, nx = metas[0]["shape"][1:]
    frames, reads, arrays = [], [], []
    for m in metas:
        nint, ng = m["shape"][:2]
        if m["shape"][1:] != (ng0, ny, nx):
            raise DetflowInputError(m["path"], "NAXIS", f"groups x rows x columns {ng0}x{ny}x{nx} like "
                                    f"{metas[0]['path'].name}", "x".join(map(str, m["shape"][1:])))  # fmt: skip
        nf = int(m["NFRAMES"] or 1)
        gap = int(m["GROUPGAP"] or 0)
        tgroup = float(m["TGROUP"]) if m["TGROUP"] is not None else (nf + gap) * m["TFRAME"]
        tbar = np.arange(ng) * tgroup + (nf + 1) / 2 * m["TFRAME"]
        ints = [i for i in range(nint) if _in(i + 1, select.get("exposures"))]
        for i in ints:
            frames.append(_frame_row(m, i + 1))
            reads.append({"inttime": tbar.tolist(), "seqnum_m": [np.nan] * ng, "seqnum_n": [np.nan] * ng,
                          "read_nframes": [float(nf)] * ng, "acqtime": [np.nan] * ng,
                          "read_file": [m["path"].name] * ng})  # fmt: skip
            arrays.append(da.from_delayed(dask.delayed(_read_integration, pure=True)(str(m["path"]), m["hdu"], i,
                                                                                     4 if nint > 1 else 3),
                                          (1, ng, ny, nx), dtype=np.float64))  # fmt: skip
    if not frames:
        raise DetflowInputError(metas[0]["path"], "exposures", "a range holding at least one integration",
                                select.get("exposures"))  # fmt: skip
    ds = _dataset(frames, reads, arrays, (ny, nx), metas)
    groups = select.get("groups")
    return ds.isel({schema.READ: [g for g in range(ng0) if _in(g + 1, groups)]}) if groups else ds


def _exposure_key(fields: dict) -> tuple:
    return (fields["naming"], fields["inst"], fields["type"], fields["date"], fields["run"], fields["dither"])


def open_hxrg(paths, select: dict | None = None, need_noutputs: bool = False, skip_corrupt: bool = False) -> xr.Dataset:
    """Open reads (per-read files or cubes, not both) as one lazy (frame, read, y, x) dataset.

    ``select``: ``date``, ``runs``, ``dithers``, ``exposures``, ``groups`` (``[lo, hi]`` inclusive) of the
    job; ``need_noutputs``: every file must say NOUTPUTS (the preset takes the outputs from it).
    ``skip_corrupt``: a damaged file (unreadable, cut inside a header or its data) leaves out the exposure it
    belongs to (every read of it; a cube: all its integrations), listed in the ``skipped_inputs`` attribute;
    files with wrong content are always errors."""
    select = select or {}
    reads, cubes, skipped, damaged, lost = [], [], [], [], set()
    for p in expand_inputs(paths):
        fields = hg.parse_name(p.name.removesuffix(".gz").removesuffix(".fits").removesuffix(".fit"))
        if fields is not None and not selected(fields, select):
            continue
        try:
            meta = read_header(p, fields, need_noutputs)
        except CorruptInputError as exc:
            if not skip_corrupt:
                raise
            key = _exposure_key(fields) if fields is not None else (str(p),)
            skipped.append(dict(skipped_record(exc), frames=0 if key in lost else 1))
            damaged.append(exc)
            lost.add(key)
            continue
        (cubes if fields is None else reads).append(meta)
    reads = [m for m in reads if _exposure_key(m["fields"]) not in lost]
    if reads and cubes:
        raise DetflowInputError(cubes[0]["path"], "file name", f"{NAMES} like the other inputs", cubes[0]["path"].name)
    if not reads and not cubes:
        if damaged:  # nothing to go on with: each file's own error
            raise DetflowInputError.combine(damaged)
        raise DetflowInputError(paths if isinstance(paths, str) else None, "selection",
                                "reads matching date, runs, dithers, exposures and groups", "none")  # fmt: skip
    ds = _per_read(reads) if reads else _cube(cubes, select)
    if skipped:
        ds.attrs["skipped_inputs"] = skipped
    return ds


def product_names(paths, select: dict | None = None) -> list[str]:
    """The product file names a job's inputs make (:func:`detflow.instruments.hxrg_ground.product_name`),
    from the file names (and a cube's integration count), before any pixel is read."""
    select = select or {}
    names = set()
    for p in expand_inputs(paths):
        f = hg.parse_name(p.name.removesuffix(".gz").removesuffix(".fits").removesuffix(".fit"))
        if f is None:
            m = read_header(p, None, False)
            names |= {hg.product_name("cube", "", "", "", 0, 0, p.name, i + 1) for i in range(m["shape"][0])
                      if _in(i + 1, select.get("exposures"))}  # fmt: skip
        elif selected(f, select):
            names.add(hg.product_name(f["naming"], f["inst"], f["type"], f["date"], f["run"], f["dither"]))
    return sorted(names)
