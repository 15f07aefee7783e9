"""Event tables: one row per event (a photon, a cosmic-ray hit, a source), next to the arrays of a store.

A table is a group of the store holding one 1-D zarr array per column, all along one row dimension (``row``,
``photon``, ...), in chunks of ``chunk_rows`` rows; a column carries its ``units`` and other attributes, the
group the attribute ``detflow_table`` (``{"dim": ..., "columns": [...]}``). In memory it is an
``xarray.Dataset`` (:func:`event_table`) whose columns are dask arrays, so it is written by the store's one
writer like any product group (:meth:`StoreWriter.add_table <detflow.io.store.StoreWriter.add_table>`):
template first, then one region write per chunk of rows, each marked done (a killed write resumes where it
stopped), and committed with the store. Columns of any numeric type (e.g. an MKID photon list: ``pixel``
uint32, ``time`` uint64 in microseconds, ``phase`` or ``wavelength`` float32) are stored as they are:
no CF encoding is applied when reading back (:func:`read_table`, :func:`open_table`).

The number of rows must be known when the table is written (a reader knows it from its files' metadata);
a dask column whose chunk sizes are unknown (NaN, e.g. after boolean indexing) is refused: the runtime
computes the sizes first (``compute_chunk_sizes()``), as this layer never computes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
import zarr

TABLE_ATTR = "detflow_table"
DEFAULT_CHUNK_ROWS = 1 << 20  # 1 Mi rows: 4-8 MiB per column chunk


def event_table(columns: Mapping[str, object], *, dim: str = "row", units: Mapping[str, str] | None = None,
                column_attrs: Mapping[str, Mapping] | None = None, attrs: Mapping | None = None,
                chunk_rows: int = DEFAULT_CHUNK_ROWS) -> xr.Dataset:  # fmt: skip
    """A table of ``columns`` (``{name: 1-D numpy or dask array}``, all of one length) along ``dim``, in chunks
    of ``chunk_rows`` rows whatever the columns' own chunks (uneven chunks of a reader are made regular: each
    written chunk is one zarr chunk). ``units``/``column_attrs``: per column; ``attrs``: the group's."""
    if not columns:
        raise ValueError("an event table needs at least one column")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows: expected a positive number of rows, got {chunk_rows}")
    cols = {}
    for name, col in columns.items():
        arr = col if isinstance(col, da.Array) else np.asarray(col)
        if arr.ndim != 1:
            raise ValueError(f"column {name}: expected a 1-D array, got shape {arr.shape}")
        if isinstance(arr, da.Array) and any(math.isnan(c) for c in arr.chunks[0]):
            raise ValueError(f"column {name}: expected known chunk sizes (the number of rows of every chunk), got "
                             "unknown ones (NaN): call compute_chunk_sizes() on it first")  # fmt: skip
        cols[name] = arr
    lengths = {name: int(arr.shape[0]) for name, arr in cols.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"columns: expected one length, got {lengths}")
    n = next(iter(lengths.values()))
    ds = xr.Dataset(attrs=dict(attrs or {}))
    for name, arr in cols.items():
        if n:  # an empty table is written whole with its template (zarr has no chunk of 0 rows)
            arr = arr.rechunk(chunk_rows) if isinstance(arr, da.Array) else da.from_array(arr, chunks=chunk_rows)
        var = xr.Variable((dim,), arr, attrs=dict((column_attrs or {}).get(name, {})))
        if units and name in units:
            var.attrs["units"] = units[name]
        ds[name] = var
    ds.attrs[TABLE_ATTR] = {"dim": dim, "columns": list(cols)}
    return ds


def is_table(ds: xr.Dataset) -> bool:
    """A dataset made by :func:`event_table` (or a table group read back)."""
    spec = ds.attrs.get(TABLE_ATTR)
    return isinstance(spec, dict) and all(ds[c].dims == (spec["dim"],) for c in spec.get("columns", []) if c in ds)


def check_table(name: str, ds: xr.Dataset) -> None:
    """Refuse a dataset that is not an event table (every column 1-D along the table's dimension)."""
    spec = ds.attrs.get(TABLE_ATTR)
    if not isinstance(spec, dict) or not is_table(ds) or set(spec.get("columns", [])) != set(ds.data_vars):
        raise ValueError(f"{name}: expected an event table (detflow.io.store.tables.event_table), got a dataset "
                         f"with dims {dict(ds.sizes)}")  # fmt: skip


def table_spec(store: str | Path, group: str) -> dict:
    """The ``detflow_table`` attribute of a table group (``{"dim", "columns"}``)."""
    g = zarr.open_group(str(store), path=group, mode="r")
    spec = g.attrs.get(TABLE_ATTR)
    if not isinstance(spec, dict):
        raise ValueError(f"{store}: {group}: expected an event table group (attribute {TABLE_ATTR}), got none")
    return spec


def read_table(store: str | Path, group: str, columns: Sequence[str] | None = None,
               rows: slice = slice(None)) -> dict[str, np.ndarray]:  # fmt: skip
    """The columns (all, or ``columns``) of the table ``group``, rows ``rows``, as stored (no decoding)."""
    spec = table_spec(store, group)
    g = zarr.open_group(str(store), path=group, mode="r")
    return {c: np.asarray(g[c][rows]) for c in (columns or spec["columns"])}


def open_table(store: str | Path, group: str) -> xr.Dataset:
    """The table ``group`` as a lazy dataset (dask columns in the stored chunks), values as stored: no mask,
    scale, time or timedelta decoding (a ``time`` column in ``us`` stays uint64)."""
    table_spec(store, group)
    return xr.open_zarr(str(store), group=group, mask_and_scale=False, decode_times=False, decode_timedelta=False,
                        consolidated=None, zarr_format=3)  # fmt: skip
