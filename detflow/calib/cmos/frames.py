"""Inputs of the CMOS model builders: the frames of a section checked, grouped by temperature and exposure,
and the chunking helpers every builder uses; the flag tables of the model stores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import dask.array as da
import numpy as np
import xarray as xr

from ...errors import DetflowInputError
from ...kernels import cmos as kc
from ...schema import FRAME, X, Y

Method = Literal["median", "mean", "sigma_clip"]
REJECT = {"zero_pixels": 1, "no_dark_within_tolerance": 2}
FIT_FLAGS = {"flag_values": [kc.FEW_POINTS, kc.NONPOSITIVE, kc.SINGULAR, kc.NOT_CONVERGED],
             "flag_meanings": "too_few_points non_positive singular not_converged",
             "long_name": "fit status (0: fitted)", "units": "1"}  # fmt: skip
REJECT_ATTRS = {"flag_masks": list(REJECT.values()), "flag_meanings": " ".join(REJECT), "units": "1"}
F8 = np.float64


# ---- input ----------------------------------------------------------------------------------------------
def _source(ds: xr.Dataset) -> str | None:
    return ds.encoding.get("source") or ds.attrs.get("source")


def _path(ds: xr.Dataset, i: int) -> str | None:
    return str(ds["path"].values[i]) if "path" in ds.variables else _source(ds)


def _frames(ds: xr.Dataset, caltype: str | None, need: Sequence[str] = ("temp",)) -> xr.Dataset:
    """The frames of ``caltype`` (all with None), checked, with the frame axis in one chunk."""
    if "data" not in ds:
        raise DetflowInputError(_source(ds), "data", "a 'data' variable (frame, y, x) in DN", list(ds.data_vars))
    if set(ds["data"].dims) != {FRAME, Y, X}:
        raise DetflowInputError(_source(ds), "data", "dims (frame, y, x)", ds["data"].dims)
    for name in tuple(need) + (("caltype",) if caltype else ()):
        if name not in ds.coords:
            raise DetflowInputError(_source(ds), name, f"a frame coordinate {name!r}", list(ds.coords))
    if caltype:
        kinds = np.char.upper(np.char.strip(ds["caltype"].values.astype(str)))
        keep = np.nonzero(kinds == caltype)[0]
        if keep.size == 0:
            raise DetflowInputError(_source(ds), "caltype", f"frames with caltype {caltype}", sorted(set(kinds)))
        ds = ds.isel({FRAME: keep})
    for name in need:
        if name != "filter":
            v = np.asarray(ds[name].values, F8)
            bad = np.nonzero(~np.isfinite(v))[0]
            if bad.size:
                src = _source(ds)
                field = f"{name} as ingested into {src}" if src else name  # the store keeps what the log said then
                raise DetflowInputError(_path(ds, bad[0]), field, "a finite value (after fixing the log, ingest "
                                        "again with overwrite)" if src else "a finite value", v[bad[0]])  # fmt: skip
    if ds["data"].chunks is not None and len(ds["data"].chunksizes[FRAME]) > 1:
        ds = _chunk(ds, {FRAME: -1})
    return ds


def _round(v, step: float) -> np.ndarray:
    return np.round(np.round(np.asarray(v, F8) / step) * step, 6)


def _temp_keys(ds: xr.Dataset, temps: np.ndarray, step: float) -> np.ndarray:
    """Each frame's temperature grouping key: its set point (``filetemp``, the ``T<temp>`` of its folder or
    file name) rounded to ``step`` where every frame has one, else the logged temperature rounded: the
    logged temperature jitters about the set point, and rounding it would split a set point's frames
    into several groups. (The fits use each group's mean logged temperature either way.)"""
    if "filetemp" in ds.coords:
        ft = np.asarray(ds["filetemp"].values, F8)
        if ft.size and np.all(np.isfinite(ft)):
            return _round(ft, step)
    return _round(temps, step)


def _group(*keys: np.ndarray) -> tuple[list[tuple], np.ndarray]:
    """Unique key tuples (sorted) and each frame's group index."""
    rows = list(zip(*(k.tolist() for k in keys)))
    labels = sorted(set(rows))
    where = {k: i for i, k in enumerate(labels)}
    return labels, np.array([where[r] for r in rows], dtype=np.int64)


def _chunk(obj, chunks: dict):
    """``obj.chunk(chunks)`` with the non-index coordinates left in memory (xarray would chunk them too, and a
    later merge would compute them to compare)."""
    coords = {k: v for k, v in obj.coords.items() if k not in obj.indexes}
    return obj.drop_vars(list(coords)).chunk(chunks).assign_coords(coords)


def _whole(arr: xr.DataArray, dim: str) -> xr.DataArray:
    """``arr`` with ``dim`` in one chunk (a core dimension of a per-pixel function)."""
    return _chunk(arr, {dim: -1}) if arr.chunks is not None and len(arr.chunksizes[dim]) > 1 else arr


def _independent(arr: xr.DataArray) -> xr.DataArray:
    """``arr`` computed by its own copy of the graph: the same tasks under new keys.

    A whole-frame statistic (a frame's share of zero pixels, its normalisation) that a per-pixel step then
    needs is taken from this copy. The frames are read twice, but the per-pixel chain stays one fused task
    per tile that waits for the statistic before it reads anything; with a shared read, dask must hold
    every tile of the stack in memory until the statistic is known (16 GiB for 1000 2048x2048 darks)."""
    if arr.chunks is None:
        return arr
    # dask.graph_manipulation.clone would be the public way, but it keeps some of xarray's indexing keys
    # shared and dask 2026.x then fails to fuse the result ("Cannot fuse tasks with multiple outputs"), so
    # every key is renamed here. dask._task_spec is private: without it, fall back to clone
    from dask.base import tokenize

    try:
        from dask._task_spec import convert_legacy_graph
    except ImportError:  # pragma: no cover - other dask versions
        from dask.graph_manipulation import clone

        return arr.copy(data=clone(arr.data, assume_layers=False))

    x = arr.data
    tag = "-twin-" + tokenize(x.name, "twin")[:10]
    graph = convert_legacy_graph(dict(x.__dask_graph__()))
    subs = {k: (k[0] + tag, *k[1:]) if isinstance(k, tuple) else f"{k}{tag}" for k in graph}
    twin = {subs[k]: node.substitute(subs, key=subs[k]) for k, node in graph.items()}
    return arr.copy(data=da.Array(twin, x.name + tag, chunks=x.chunks, dtype=x.dtype, meta=x._meta))


def _tile_chunks(like: xr.DataArray) -> dict:
    return {d: c for d, c in like.chunksizes.items() if d in (Y, X)} if like.chunks is not None else {}
