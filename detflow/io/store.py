"""The run's output: one zarr v3 store, a group per product, complete or absent.

The store is written under a temporary sibling name (``<out>.partial-<id>``) and renamed into place
only when every group is written, so a failed or interrupted run never leaves a product at the output
path that looks finished. Dask chunks are made regular (equal to the zarr chunks) before writing, so
each task writes whole zarr chunks and no two tasks touch the same chunk.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr
from xarray.backends.zarr import encode_zarr_variable

from ..errors import OutputExistsError
from ..schema import sanitize_attrs
from .shards import write_region


def _is_regular(chunks: tuple[int, ...]) -> bool:
    return len(chunks) <= 1 or (len(set(chunks[:-1])) == 1 and chunks[-1] <= chunks[0])


def regular_chunks(ds: xr.Dataset) -> xr.Dataset:
    """Rechunk every dask variable so that its chunks are zarr chunks (equal, the last no larger)."""
    out = ds.copy()
    for name in list(ds.data_vars) + [c for c in ds.coords if isinstance(ds[c].data, da.Array)]:
        var = ds[name].variable
        if not isinstance(var.data, da.Array):
            continue
        target = {dim: max(chunks) for dim, chunks in zip(var.dims, var.data.chunks) if not _is_regular(chunks)}
        if target:
            out[name] = ds[name].chunk(target)
    return out


def _encoding(ds: xr.Dataset) -> dict:
    return {name: {"chunks": tuple(c[0] for c in var.data.chunks)}
            for name, var in ds.variables.items() if isinstance(var.data, da.Array)}  # fmt: skip


def _clean(ds: xr.Dataset) -> xr.Dataset:
    ds = ds.copy()
    ds.attrs = sanitize_attrs(ds.attrs)
    for name in ds.variables:
        ds[name].attrs = sanitize_attrs(ds[name].attrs)
        ds[name].encoding = {}
        if ds[name].dtype.kind == "U":  # variable-length strings (fixed UTF-32 has no zarr v3 spec)
            # a lazy string coordinate is computed here (it is small): xarray would otherwise compute the
            # object array eagerly anyway to choose a zarr dtype, with a warning
            var = ds[name].variable
            ds[name] = var.copy(data=var.compute().data.astype(object)) if isinstance(var.data, da.Array) else var.astype(object)
    return ds


def _safe(name: str) -> str:
    return name.strip("/").replace("/", "__") or "root"


def _write_block(block, root: str, path: str, done_dir: str, block_info=None) -> np.ndarray:
    """Write one dask block into its region of a zarr array, then mark the region done."""
    info = block_info[0]
    region = tuple(slice(lo, hi) for lo, hi in info["array-location"])
    write_region(root, path, region, np.asarray(block))
    marker = Path(done_dir) / (".".join(map(str, info["chunk-location"])) or "0")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return np.ones((1,) * np.ndim(block), dtype=np.int8)


def check_output(path: str | Path, overwrite: bool = False) -> Path:
    """Refuse an output path that exists unless ``overwrite`` (checked before any work starts)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(path, "output", "a path that does not exist yet (or overwrite: true)",
                                "it exists")  # fmt: skip
    return path


class StoreWriter:
    """Write product groups into a fresh store; ``commit()`` renames it into place.

    Groups are written as a template first (metadata and the small in-memory variables), then every
    dask block of every variable by its own region-write task, which marks the region done in the
    store (``_detflow_regions/regions/<group>/<variable>/<block>``). With a ``resume_key`` (a hash of the job)
    the partial store is ``<out>.partial-<key>``: a run that died (client, worker or scheduler killed)
    and is started again with the same job finds it and computes only the regions not marked done. A
    resumable partial store is kept when the run fails (it says which regions are done; it is never
    at the output path), else removed."""

    def __init__(self, path: str | Path, overwrite: bool = False, resume_key: str | None = None):
        self.path = check_output(path, overwrite)
        self.overwrite = overwrite
        self.resume_key = resume_key
        self.tmp = self.path.with_name(f"{self.path.name}.partial-{resume_key or uuid.uuid4().hex[:8]}")
        self.groups: list[str] = []
        self.resumed = False
        self.regions = {"total": 0, "done_before": 0}

    @property
    def _meta(self) -> Path:
        # a zarr group of its own (zarr warns about directories in a hierarchy that are not), holding
        # one empty file per region done; removed when the store is committed
        return self.tmp / "_detflow_regions"

    def __enter__(self) -> "StoreWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.resume_key and (self._meta / "resume.json").exists():
            self.resumed = True
            return self
        if self.tmp.exists():  # a partial store of another job version under the same key: start afresh
            shutil.rmtree(self.tmp)
        root = zarr.open_group(str(self.tmp), mode="w-", zarr_format=3)
        root.create_group(self._meta.name)
        (self._meta / "resume.json").write_text(json.dumps({"resume_key": self.resume_key}))
        return self

    def add(self, name: str, ds: xr.Dataset) -> da.Array:
        """Write ``ds``'s metadata now and return the delayed write of its chunks."""
        return self.add_all({name: ds})

    def add_all(self, products: dict[str, xr.Dataset], encoding: dict[str, dict] | None = None) -> da.Array:
        """Write the template of every group now and return one lazy write of all their regions not yet
        done (a dask scalar: the number of regions written).

        One graph for all groups, optimised together: the tasks groups share (the calibrated exposure
        behind both ``l2`` and ``noise``) keep one key and run once (``bench/repro_store_shared_chain.py``).

        ``encoding`` (``{group: {variable: {...}}}``) overrides a variable's zarr chunks, e.g. smaller
        chunks inside shards that equal the dask chunks (each task still writes whole shards)."""
        cleaned = {name: _clean(regular_chunks(ds)) for name, ds in products.items()}
        self.groups.extend(cleaned)
        fresh = {n: ds for n, ds in cleaned.items() if not (self._meta / "templates" / _safe(n)).exists()}
        for name, ds in fresh.items():  # a template a killed writer left half written starts again
            self._discard(name, ds)
        if fresh:
            tree = xr.DataTree.from_dict({f"/{name}": ds for name, ds in fresh.items()})
            enc = {f"/{name}": _encoding(ds) for name, ds in fresh.items()}
            for name, variables in (encoding or {}).items():
                for var, e in variables.items():
                    if name in fresh and var in fresh[name].variables:
                        enc[f"/{name}"][var] = e
            tree.to_zarr(str(self.tmp), mode="a", compute=False, zarr_format=3, consolidated=False,
                         encoding=enc)  # fmt: skip  (the template: the returned delayed write is not used)
            (self._meta / "templates").mkdir(parents=True, exist_ok=True)
            for name in fresh:
                (self._meta / "templates" / _safe(name)).touch()
        names, arrays = [], []
        for name, ds in cleaned.items():
            for var, v in ds.variables.items():
                if isinstance(v.data, da.Array):
                    names.append((name, var))
                    arrays.append(encode_zarr_variable(v, name=var, zarr_format=3).data)
        parts = []
        for (name, var), arr in zip(names, arrays):
            done_dir = self._meta / "regions" / _safe(name) / var
            done = set(os.listdir(done_dir)) if done_dir.exists() else set()
            # the write of each block is a blockwise task on the array itself (as dask's own store), so it
            # fuses with the task that makes the block and no block waits in memory for a separate writer
            marks = arr.map_blocks(_write_block, root=str(self.tmp), path=f"{name}/{var}", done_dir=str(done_dir),
                                   dtype=np.int8, chunks=tuple((1,) * len(c) for c in arr.chunks),
                                   meta=np.empty((0,) * arr.ndim, np.int8))  # fmt: skip
            todo = [idx for idx in np.ndindex(*arr.numblocks) if (".".join(map(str, idx)) or "0") not in done]
            self.regions["total"] += int(np.prod(arr.numblocks))
            self.regions["done_before"] += int(np.prod(arr.numblocks)) - len(todo)
            if len(todo) == int(np.prod(arr.numblocks)):
                parts.append(marks.ravel())
            else:  # only the blocks not done: culling drops the work behind the others
                parts += [marks.blocks[idx].ravel() for idx in todo]
        if not parts:
            return da.zeros((), dtype=np.int64)
        return da.concatenate(parts).sum()  # the number of regions written

    def _discard(self, name: str, ds: xr.Dataset) -> None:
        """Remove the arrays of group ``name`` that a writer killed while writing its template left (the
        template is not marked done, so no region of it was written). Left there, ``to_zarr(mode="a")``
        would take them for arrays to append to, re-read their encoding (``coordinates`` included, from the
        CF attribute) and refuse it: "unexpected encoding parameters for zarr backend: ['coordinates']"."""
        for var in ds.variables:
            shutil.rmtree(self.tmp / name / str(var), ignore_errors=True)
        shutil.rmtree(self._meta / "regions" / _safe(name), ignore_errors=True)

    def set_group_attrs(self, name: str, attrs: dict) -> None:
        g = zarr.open_group(str(self.tmp), path=name, mode="r+", zarr_format=3)
        g.attrs.update(sanitize_attrs(attrs))

    def set_root_attrs(self, attrs: dict) -> None:
        g = zarr.open_group(str(self.tmp), mode="r+", zarr_format=3)
        g.attrs.update(sanitize_attrs(attrs))

    def commit(self) -> Path:
        shutil.rmtree(self._meta, ignore_errors=True)  # every region is done: the markers have served
        for stray in self.tmp.rglob(".*.partial"):  # a shard file a killed worker left half written
            stray.unlink(missing_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # consolidated metadata is a zarr-python convention in v3
            zarr.consolidate_metadata(str(self.tmp))
        if self.path.exists() and self.overwrite:
            shutil.rmtree(self.path) if self.path.is_dir() else self.path.unlink()
        self.tmp.rename(self.path)
        return self.path

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self.tmp.exists() and not self.resume_key:
            shutil.rmtree(self.tmp, ignore_errors=True)


def open_store(path: str | Path) -> xr.DataTree:
    """Open a detflow store as a DataTree (plain ``xarray.open_datatree`` works too)."""
    return xr.open_datatree(str(path), engine="zarr", chunks={})


def store_summary(path: str | Path) -> dict:
    """Groups, variables, shapes and provenance of a store, for ``detflow info``."""
    path = Path(path)
    root = zarr.open_group(str(path), mode="r")
    out = {"path": str(path), "attrs": dict(root.attrs), "groups": {}}
    tree = open_store(path)
    for node in tree.subtree:
        if node.path == "/" or not node.has_data:
            continue
        ds = node.to_dataset()
        out["groups"][node.path.strip("/")] = {
            "dims": dict(ds.sizes),
            "variables": {k: {"dims": list(v.dims), "dtype": str(v.dtype), "units": v.attrs.get("units")}
                          for k, v in ds.data_vars.items()},  # fmt: skip
            "steps": ds.attrs.get("steps", []),
        }
    return out
