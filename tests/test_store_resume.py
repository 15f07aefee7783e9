"""Region writes and resume: a run that died is finished by the next run of the same job, computing only
the regions not done, with a result identical to an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

from detflow.io.store import StoreWriter, open_store

CALLS: list[tuple] = []


def _product(fail_at: Path | None, log: list):
    def block(x, block_info=None):
        loc = tuple(block_info[0]["chunk-location"])
        log.append(loc)
        if fail_at is not None and fail_at.exists() and loc == (1, 1):
            raise RuntimeError("worker died")
        return x * 2.0 + np.float32(loc[0] * 10 + loc[1])

    base = da.arange(36 * 20, dtype=np.float32).reshape(36, 20).rechunk((12, 10))
    data = base.map_blocks(block, dtype=np.float32)
    dq = (base % 7).astype(np.uint32)
    return xr.Dataset({"data": (("y", "x"), data), "dq": (("y", "x"), dq)}, coords={"y": np.arange(36)})


def test_region_markers_and_resume(tmp_path):
    flag = tmp_path / "fail"
    flag.touch()
    out = tmp_path / "out.zarr"
    log: list = []
    with pytest.raises(RuntimeError, match="worker died"):
        with StoreWriter(out, resume_key="job1") as w:
            dask.compute(w.add_all({"g": _product(flag, log)}), scheduler="sync")
            w.commit()
    partial = tmp_path / "out.zarr.partial-job1"
    assert not out.exists() and partial.exists()  # never at the output path; it says which regions are done
    marks = partial / "_detflow_regions" / "regions" / "g"
    done = sorted(p.name for p in (marks / "data").iterdir()) if (marks / "data").exists() else []
    n_done = len(done) + (len(list((marks / "dq").iterdir())) if (marks / "dq").exists() else 0)
    assert "1.1" not in done and n_done >= 1
    flag.unlink()
    log2: list = []
    with StoreWriter(out, resume_key="job1") as w:
        n = dask.compute(w.add_all({"g": _product(flag, log2)}), scheduler="sync")[0]
        assert w.resumed and w.regions["total"] == 12 and w.regions["done_before"] == n_done
        w.commit()
    assert n == 12 - w.regions["done_before"]
    assert sorted(set(log2)) == sorted(
        {(i, j) for i in range(3) for j in range(2)} - {tuple(map(int, d.split("."))) for d in done}
    )
    fresh = tmp_path / "fresh.zarr"
    with StoreWriter(fresh) as w:
        dask.compute(w.add_all({"g": _product(None, [])}), scheduler="sync")
        w.commit()
    a, b = open_store(out)["g"].to_dataset().compute(), open_store(fresh)["g"].to_dataset().compute()
    xr.testing.assert_identical(a, b)
    assert not (out / "_detflow_regions").exists() and not partial.exists()
    assert set(open_store(out).children) == {"g"}


def test_without_resume_key_a_failure_leaves_nothing(tmp_path):
    flag = tmp_path / "fail"
    flag.touch()
    with pytest.raises(RuntimeError):
        with StoreWriter(tmp_path / "o.zarr") as w:
            dask.compute(w.add_all({"g": _product(flag, [])}), scheduler="sync")
    assert [p.name for p in tmp_path.iterdir()] == ["fail"]


def test_a_template_left_half_written_is_written_again(tmp_path, monkeypatch):
    """A writer killed after the template's arrays were written but before the template was marked done
    (what a killed driver leaves): the next run writes the template again and finishes, identical to a
    clean run (it failed with "unexpected encoding parameters for zarr backend: ['coordinates']": xarray
    took the arrays for ones to append to and re-read their CF 'coordinates' attribute as encoding)."""

    def product():
        ds = _product(None, [])
        return ds.assign_coords(label=("y", np.array([f"row{i}" for i in range(36)])), t=("y", np.arange(36.0)))

    out = tmp_path / "out.zarr"
    real = xr.DataTree.to_zarr

    def killed(self, *args, **kwargs):
        real(self, *args, **kwargs)
        raise KeyboardInterrupt("killed after the template's arrays, before its marker")

    monkeypatch.setattr(xr.DataTree, "to_zarr", killed)
    with pytest.raises(KeyboardInterrupt):
        with StoreWriter(out, resume_key="job1") as w:
            w.add_all({"g": product()})
    monkeypatch.setattr(xr.DataTree, "to_zarr", real)
    assert (tmp_path / "out.zarr.partial-job1" / "g" / "data" / "zarr.json").exists()
    with StoreWriter(out, resume_key="job1") as w:
        assert w.resumed
        dask.compute(w.add_all({"g": product()}), scheduler="sync")
        w.commit()
    fresh = tmp_path / "fresh.zarr"
    with StoreWriter(fresh) as w:
        dask.compute(w.add_all({"g": product()}), scheduler="sync")
        w.commit()
    xr.testing.assert_identical(
        open_store(out)["g"].to_dataset().compute(), open_store(fresh)["g"].to_dataset().compute()
    )
