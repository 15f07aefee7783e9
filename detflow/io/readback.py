"""Reading back a group of a store being written (a reduce stage's input): lazily, with the chunks the stage
asks for (the whole frame axis per pixel tile for a combine)."""

from __future__ import annotations

import warnings
from pathlib import Path

import xarray as xr


def open_group(path: str | Path, group: str, chunks: dict | None = None) -> xr.Dataset:
    """The group ``group`` of the zarr store at ``path``, lazy. Chunks that cut through the stored ones
    are what shards are for (a tile of every frame reads part of each shard): xarray's warning about
    them is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The specified chunks separate the stored chunks")
        return xr.open_zarr(str(path), group=group, consolidated=False, chunks=chunks)
