"""Why a noise block costs one extra pipeline run (found by ``bench_wfi.py --noise``): each store group
written by its own ``to_zarr(compute=False)`` is optimized on its own, so the tasks the ``noise`` group
shares with the ``l2`` group (the calibrated exposure the layers start from) get other keys and run twice.

Two datasets share one chain of 8 blocks; the shared function is called 8 times if both are computed as
one graph, 16 if each is written by its own ``to_zarr(compute=False)``, as
``detflow.io.store.StoreWriter.add`` does per group; 8 again with one ``DataTree.to_zarr``.

Usage: ``python bench/repro_store_shared_chain.py``
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr

calls: list[int] = []


def shared(block):
    calls.append(1)
    return block * 2


def main():
    y = da.ones((8, 100), chunks=(1, 100)).map_blocks(shared, dtype=float).astype(np.float32) + 1
    l2 = xr.Dataset({"data": (("y", "x"), y)})
    noise = xr.Dataset({"noise": (("y", "x"), (y * 3).astype(np.float64))})
    tmp = Path(tempfile.mkdtemp(prefix="repro-store-"))
    kw = {"zarr_format": 3, "consolidated": False, "compute": False}

    calls.clear()
    dask.compute([l2.to_zarr(tmp / "a.zarr", **kw), noise.to_zarr(tmp / "b.zarr", **kw)], scheduler="sync")
    print(f"one to_zarr(compute=False) per group, one compute: shared() ran {len(calls)} times for 8 blocks")

    calls.clear()
    dask.compute(xr.DataTree.from_dict({"l2": l2, "noise": noise}).to_zarr(tmp / "c.zarr", **kw), scheduler="sync")
    print(f"one DataTree.to_zarr(compute=False) for both groups:  shared() ran {len(calls)} times")


if __name__ == "__main__":
    main()
