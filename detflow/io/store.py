"""The run's output: one zarr v3 store, a group per product, complete or absent.

The store is written under a temporary sibling name (``<out>.partial-<id>``) and renamed into place
only when every group is written, so a failed or interrupted run never leaves a product at the output
path that looks finished. Dask chunks are made regular (equal to the zarr chunks) before writing, so
each task writes whole zarr chunks and no two tasks touch the same chunk.
"""

from __future__ import annotations

import shutil
import uuid
import warnings
from pathlib import Path

import dask
import dask.array as da
import xarray as xr
import zarr

from ..errors import OutputExistsError
from ..schema import sanitize_attrs


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


def check_output(path: str | Path, overwrite: bool = False) -> Path:
    """Refuse an output path that exists unless ``overwrite`` (checked before any work starts)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(path, "output", "a path that does not exist yet (or overwrite: true)",
                                "it exists")  # fmt: skip
    return path


class StoreWriter:
    """Write product groups into a fresh store; ``commit()`` renames it into place."""

    def __init__(self, path: str | Path, overwrite: bool = False):
        self.path = check_output(path, overwrite)
        self.overwrite = overwrite
        self.tmp = self.path.with_name(f"{self.path.name}.partial-{uuid.uuid4().hex[:8]}")
        self.groups: list[str] = []

    def __enter__(self) -> "StoreWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        zarr.open_group(str(self.tmp), mode="w-", zarr_format=3)
        return self

    def add(self, name: str, ds: xr.Dataset) -> "dask.delayed.Delayed":
        """Write ``ds``'s metadata now and return the delayed write of its chunks."""
        ds = _clean(regular_chunks(ds))
        self.groups.append(name)
        return ds.to_zarr(str(self.tmp), group=name, mode="w-", compute=False, zarr_format=3,
                          consolidated=False, encoding=_encoding(ds))  # fmt: skip

    def add_all(self, products: dict[str, xr.Dataset], encoding: dict[str, dict] | None = None) -> "dask.delayed.Delayed":
        """Write the metadata of every group now and return one delayed write of all their chunks.

        One ``to_zarr`` for all groups, so dask optimises them as one graph: the tasks groups share
        (the calibrated exposure behind both ``l2`` and ``noise``) keep one key and run once. Separate
        ``to_zarr(compute=False)`` calls fuse each group's graph on its own and run shared tasks twice
        (``bench/repro_store_shared_chain.py``).

        ``encoding`` (``{group: {variable: {...}}}``) overrides a variable's zarr chunks, e.g. smaller
        chunks inside shards that equal the dask chunks (each task still writes whole shards)."""
        cleaned = {name: _clean(regular_chunks(ds)) for name, ds in products.items()}
        self.groups.extend(cleaned)
        tree = xr.DataTree.from_dict({f"/{name}": ds for name, ds in cleaned.items()})
        enc = {f"/{name}": _encoding(ds) for name, ds in cleaned.items()}
        for name, variables in (encoding or {}).items():
            for var, e in variables.items():
                if name in cleaned and var in cleaned[name].variables:
                    enc[f"/{name}"][var] = e
        return tree.to_zarr(str(self.tmp), mode="a", compute=False, zarr_format=3, consolidated=False,
                            encoding=enc)  # fmt: skip

    def set_group_attrs(self, name: str, attrs: dict) -> None:
        g = zarr.open_group(str(self.tmp), path=name, mode="r+", zarr_format=3)
        g.attrs.update(sanitize_attrs(attrs))

    def set_root_attrs(self, attrs: dict) -> None:
        g = zarr.open_group(str(self.tmp), mode="r+", zarr_format=3)
        g.attrs.update(sanitize_attrs(attrs))

    def commit(self) -> Path:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # consolidated metadata is a zarr-python convention in v3
            zarr.consolidate_metadata(str(self.tmp))
        if self.path.exists() and self.overwrite:
            shutil.rmtree(self.path) if self.path.is_dir() else self.path.unlink()
        self.tmp.rename(self.path)
        return self.path

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self.tmp.exists():
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
