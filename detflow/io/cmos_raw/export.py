"""CMOS section stores out: the FITS index of every frame (``fits_index.csv``) and one FITS file per frame."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from ... import schema
from ...errors import OutputExistsError
from ...instruments import cmos
from ..store.atomic import atomic_path, atomic_write
from .section import GROUP, INDEX_NAME, TARGET_TASK_BYTES, open_cmos_section

if TYPE_CHECKING:
    from astropy.io import fits


def _cell(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return "" if not math.isfinite(float(v)) else repr(float(v))
    if isinstance(v, (np.integer, int)):
        return str(int(v))
    return str(v)


def _section_stores(out_dir: Path) -> list[Path]:
    found = []
    for p in sorted(out_dir.glob("*.zarr")):
        try:
            attrs = zarr.open_group(str(p), path=GROUP, mode="r").attrs
        except Exception:  # noqa: BLE001, S112  (not a readable zarr group: not a section store)
            continue
        if attrs.get("instrument") == "cmos":
            rank = cmos.CALTYPES.index(attrs["caltype"]) if attrs.get("caltype") in cmos.CALTYPES else 9
            found.append((rank, p.name, p))
    return [p for *_, p in sorted(found)]


def write_fits_index(out_dir: str | Path) -> Path:
    """``out_dir/fits_index.csv`` from every CMOS section store in ``out_dir``: one row per frame, columns
    :data:`~detflow.instruments.cmos.INDEX_COLUMNS` (missing values empty). Written via a temporary file."""
    out_dir = Path(out_dir)
    path = out_dir / INDEX_NAME
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(cmos.INDEX_COLUMNS)
        for store in _section_stores(out_dir):
            g = zarr.open_group(str(store), path=GROUP, mode="r")
            cols = {c: g[c.lower()][:] for c in cmos.INDEX_COLUMNS}
            for i in range(len(cols["PATH"])):
                writer.writerow([_cell(cols[c][i]) for c in cmos.INDEX_COLUMNS])
    return path


def read_fits_index(path: str | Path) -> list[dict[str, str]]:
    """Rows of a ``fits_index.csv`` as dicts of strings."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def fits_header(meta: dict[str, Any], data_scale: float = 1) -> fits.Header:
    """FITS header cards of one frame's metadata (lower-case keyword names); missing values left out."""
    from astropy.io import fits

    hdr = fits.Header()
    for kw in (*cmos.INDEX_COLUMNS[1:], "PATH"):
        v = meta.get(kw.lower())
        if v is None or (isinstance(v, (float, np.floating)) and not math.isfinite(float(v))):
            continue
        if isinstance(v, (np.integer, int)):
            v = int(v)
        elif isinstance(v, (np.floating, float)):
            v = float(v)
        else:
            v = str(v)
        if len(kw) > 8:  # TIMESTAMP: a HIERARCH card (astropy reads it as header["TIMESTAMP"])
            hdr[f"HIERARCH {kw}"] = v
        elif kw == "PATH" or isinstance(v, str):
            hdr[kw] = v  # long strings continue (CONTINUE cards)
        else:
            hdr[kw] = (v, cmos.DESCRIPTIONS.get(kw, "")[:46])
    hdr["DATASCL"] = (data_scale, "ADC counts = data / DATASCL")
    hdr["ORIGIN"] = "detflow"
    return hdr


def export_fits(store: str | Path, outdir: str | Path, *, overwrite: bool = False,
                prefix: str | None = None) -> list[Path]:  # fmt: skip
    """One FITS file per frame (``<caltype>_<frame:06d>.fits``): a primary HDU with the frame in its native
    integer type and the index keywords. Existing files are refused before anything is written."""
    from astropy.io import fits

    ds = open_cmos_section(store, scaled=False)
    attrs = ds.attrs
    prefix = prefix or str(attrs.get("caltype", "cmos")).lower()
    outdir = Path(outdir)
    names = [outdir / f"{prefix}_{i:06d}.fits" for i in range(ds.sizes[schema.FRAME])]
    clash = [p for p in names if p.exists()]
    if clash and not overwrite:
        raise OutputExistsError(clash[0], "outdir", "FITS files that do not exist yet (or overwrite=True)",
                                f"{len(clash)} exist")  # fmt: skip
    outdir.mkdir(parents=True, exist_ok=True)
    fc = int(zarr.open_group(str(store), path=GROUP, mode="r")["data"].chunks[0])
    coords = {c: ds[c].values for c in ds.coords if ds[c].dims == (schema.FRAME,)}
    z = zarr.open_group(str(store), path=GROUP, mode="r")["data"]
    frame_bytes = z.shape[2] * z.shape[3] * z.dtype.itemsize
    step = max(1, min(fc, TARGET_TASK_BYTES // frame_bytes))  # frames per read: a frame-chunk, memory bounded
    for a in range(0, ds.sizes[schema.FRAME], step):
        block = z[a : a + step, 0]
        for k in range(block.shape[0]):
            i = a + k
            hdr = fits_header({c: v[i] for c, v in coords.items()}, attrs.get("data_scale", 1))
            atomic_write(names[i], lambda tmp, d=block[k], h=hdr: fits.PrimaryHDU(d, header=h).writeto(tmp))
    return names
