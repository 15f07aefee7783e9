"""Reading a detflow store back: the whole tree, and what ``detflow info`` shows of it."""

from __future__ import annotations

from pathlib import Path

import xarray as xr
import zarr


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
            "variables": {
                k: {"dims": list(v.dims), "dtype": str(v.dtype), "units": v.attrs.get("units")}
                for k, v in ds.data_vars.items()
            },  # fmt: skip
            "steps": ds.attrs.get("steps", []),
        }
    return out
