"""The CMOS section store (``<out>/<caltype>.zarr``, layout: :mod:`detflow.io.cmos_raw`): its layout constants,
the state of an existing store, the attributes of ``l1/data``, and reading it back (:func:`open_cmos_section`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from ... import schema
from ...errors import DetflowInputError

GROUP = "l1"
FRAME_CHUNK = 128  # frames per zarr chunk (the per-pixel models read every frame of a tile)
TILE = (128, 128)  # (y, x) pixels per zarr chunk: 128 frames x 128 x 128 uint16 = 4 MiB
COORD_CHUNK = 65536
TARGET_TASK_BYTES = 64 * 2**20  # one ingest task (raw integers) / one float32 tile of open_cmos_section
INDEX_NAME = "fits_index.csv"


def _store_state(store: str | Path, caltype: str) -> tuple[dict, list[str]]:
    """Attrs and ingested paths of an existing CMOS store (an error if it is something else)."""
    try:
        g = zarr.open_group(str(store), path=GROUP, mode="r")
        attrs = dict(g.attrs)
        paths = [str(p) for p in g["path"][:]] if "path" in g else []
    except Exception as exc:  # noqa: BLE001  (any failure to read it: not a section store)
        raise DetflowInputError(store, "store", "a CMOS section store written by ingest_section (or overwrite=True)",
                                f"{type(exc).__name__}: {exc}") from None  # fmt: skip
    if attrs.get("instrument") != "cmos" or attrs.get("caltype") != caltype:
        raise DetflowInputError(store, "store", f"a CMOS {caltype} store (or overwrite=True)",
                                f"instrument {attrs.get('instrument')!r}, caltype {attrs.get('caltype')!r}")  # fmt: skip
    return attrs, paths


def data_attrs(data_scale: float) -> dict[str, Any]:
    """``l1/data``'s attributes: the stored integers are CF-packed ADC counts. ``scale_factor`` = 1 / data_scale
    (absent when data_scale is 1) unpacks them, so CF readers (``xr.open_zarr``) give DN with ``units`` DN."""
    attrs: dict[str, Any] = {"units": "DN", "long_name": "ADC counts",
                             "comment": "stored as the camera wrote them: ADC counts x data_scale (the group "
                                        "attribute); DN = stored x scale_factor"}  # fmt: skip
    if float(data_scale) != 1:
        attrs["scale_factor"] = 1 / float(data_scale)
    return attrs


# ---- reading back -------------------------------------------------------------------------------------------
def _dask_tile(n: int, h: int, w: int, ty: int, tx: int, target: int) -> tuple[int, int]:
    """Multiples of the zarr tile (x first, then y) while a float32 tile of every frame stays under ``target``."""
    per_px = 4 * max(1, n)
    while tx < w and per_px * ty * min(w, 2 * tx) <= target:
        tx = min(w, 2 * tx)
    while ty < h and per_px * min(h, 2 * ty) * tx <= target:
        ty = min(h, 2 * ty)
    return ty, tx


def _plain(coord: xr.DataArray) -> xr.DataArray:
    """zarr v3 reads text as numpy's variable-width StringDType, which ``astype(str)`` cannot cast:
    fixed-width unicode instead."""
    if coord.dtype.kind == "T":
        return coord.copy(data=np.array(coord.values.tolist(), dtype=str))
    return coord


def open_cmos_section(store: str | Path, *, scaled: bool = True, chunks: dict | None = None,
                      target_bytes: int = TARGET_TASK_BYTES) -> xr.Dataset:  # fmt: skip
    """A section store as a lazy dataset: ``data`` (frame, y, x) float32 divided by the recorded
    ``data_scale`` (``scaled=False``: the stored integers, (frame, read, y, x)), with every frame of a
    pixel tile in one dask chunk. Tiles are multiples of the zarr tiles (or ``chunks={"y":, "x":}``,
    which should be too); coordinates are loaded."""
    store = Path(store)
    if not store.exists():
        raise DetflowInputError(store, "store", "an existing CMOS section store", "no such path")
    z = zarr.open_group(str(store), path=GROUP, mode="r")["data"]
    n, _, h, w = z.shape
    _, _, ty, tx = z.chunks
    if chunks:
        ty, tx = int(chunks.get("y", ty)), int(chunks.get("x", tx))
    else:
        ty, tx = _dask_tile(n, h, w, ty, tx, target_bytes)
    ds = xr.open_zarr(str(store), group=GROUP, chunks={schema.FRAME: -1, schema.READ: -1, schema.Y: ty, schema.X: tx},
                      mask_and_scale={"data": False})  # the stored integers (/ data_scale below)  # fmt: skip
    ds = ds.assign_coords({c: _plain(ds[c].load()) for c in ds.coords})
    ds.encoding["source"] = str(store)
    if not scaled:
        return ds
    scale = float(ds.attrs.get("data_scale", 1))
    data = ds["data"].isel({schema.READ: 0}, drop=True).astype(np.float32)
    if scale != 1:
        data = data / np.float32(scale)
    data.attrs = {"units": "DN", "long_name": "raw counts / data_scale", "data_scale": ds.attrs.get("data_scale", 1)}
    return ds.assign(data=data).drop_dims(schema.READ, errors="ignore")
