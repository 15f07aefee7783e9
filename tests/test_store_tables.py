"""Event tables (detflow.io.store.tables) written by the store's one writer: chunked writes over uneven source
chunks equal the table in memory, a killed write resumes to the same bytes, and the columns come back as stored."""

from __future__ import annotations

from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr

import detflow.io.store.writer as writer_module
from detflow.io.store import StoreWriter, event_table, is_table, open_table, read_table

UNEVEN = (7, 300, 1, 1000, 92, 600)  # a reader's blocks: rows per file, say
N = sum(UNEVEN)


def _photons(seed: int = 0) -> dict[str, np.ndarray]:
    """An MKID-like photon list: pixel id, arrival time in microseconds (uint64, past 2**53), phase."""
    rng = np.random.default_rng(seed)
    t0 = np.uint64(2**60)
    phase = rng.normal(-40.0, 5.0, N).astype(np.float32)
    phase[[3, 500]] = [np.nan, -0.0]
    return {"pixel": rng.integers(0, 20_000, N).astype(np.uint32),
            "time": t0 + np.cumsum(rng.integers(0, 5000, N)).astype(np.uint64),
            "phase": phase}  # fmt: skip


def _lazy(cols: dict[str, np.ndarray]) -> dict[str, da.Array]:
    return {k: da.from_array(v, chunks=(UNEVEN,)) for k, v in cols.items()}


UNITS = {"pixel": "1", "time": "us", "phase": "deg"}


def _write(out: Path, table: xr.Dataset, **kw) -> StoreWriter:
    with StoreWriter(out, **kw) as w:
        w.add_table("mkid/photons", table).compute(scheduler="sync")
        w.set_root_attrs({"detflow_version": "test", "pipeline": "test"})
        w.commit()
    return w


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_uneven_chunks_are_written_in_regular_chunks_equal_to_the_table(tmp_path):
    cols = _photons()
    table = event_table(_lazy(cols), dim="photon", units=UNITS, chunk_rows=256,
                        column_attrs={"phase": {"long_name": "pulse phase"}}, attrs={"source": "sim"})  # fmt: skip
    assert is_table(table) and table["time"].data.chunks == ((256,) * 7 + (N - 7 * 256,),)
    w = _write(tmp_path / "t.zarr", table)
    assert w.regions["total"] == 3 * 8  # a region per chunk of rows and column
    got = read_table(tmp_path / "t.zarr", "mkid/photons")
    assert list(got) == ["pixel", "time", "phase"]
    for k, v in cols.items():
        assert _same_bits(got[k], v), k  # NaN and -0.0 included, uint64 above 2**53 exact
    g = zarr.open_group(str(tmp_path / "t.zarr"), path="mkid/photons", mode="r")
    assert g["time"].chunks == (256,) and g["time"].attrs["units"] == "us"
    assert g["phase"].attrs["long_name"] == "pulse phase" and g.attrs["source"] == "sim"
    assert g.attrs["detflow_table"] == {"dim": "photon", "columns": ["pixel", "time", "phase"]}
    part = read_table(tmp_path / "t.zarr", "mkid/photons", columns=["time"], rows=slice(250, 1300))
    assert list(part) == ["time"] and _same_bits(part["time"], cols["time"][250:1300])


def test_eager_columns_and_the_lazy_table_give_the_same_store(tmp_path):
    cols = _photons()
    _write(tmp_path / "eager.zarr", event_table(cols, dim="photon", units=UNITS, chunk_rows=256))
    _write(tmp_path / "lazy.zarr", event_table(_lazy(cols), dim="photon", units=UNITS, chunk_rows=256))
    assert _chunk_files(tmp_path / "eager.zarr") == _chunk_files(tmp_path / "lazy.zarr")


def test_open_table_is_lazy_and_undecoded(tmp_path):
    cols = _photons()
    _write(tmp_path / "t.zarr", event_table(_lazy(cols), dim="photon", units=UNITS, chunk_rows=512))
    ds = open_table(tmp_path / "t.zarr", "mkid/photons")
    assert isinstance(ds["time"].data, da.Array) and ds["time"].data.chunks[0][0] == 512
    assert ds["time"].dtype == np.uint64 and _same_bits(ds["time"].values, cols["time"])
    assert _same_bits(ds["phase"].values, cols["phase"])


def _chunk_files(store: Path) -> dict[str, bytes]:
    root = store / "mkid" / "photons"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("c/*")) if p.is_file()}


def test_a_killed_write_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    cols = _photons()
    make = lambda: event_table(_lazy(cols), dim="photon", units=UNITS, chunk_rows=256)  # noqa: E731
    _write(tmp_path / "clean.zarr", make())

    real, count = writer_module.write_region, {"n": 0}

    def dies_after_10(*args, **kwargs):
        count["n"] += 1
        if count["n"] > 10:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(writer_module, "write_region", dies_after_10)
    out = tmp_path / "t.zarr"
    with pytest.raises(RuntimeError, match="killed"), StoreWriter(out, resume_key="k1") as w:
        w.add_table("mkid/photons", make()).compute(scheduler="sync")
    assert not out.exists() and w.tmp.exists()
    monkeypatch.undo()
    w2 = _write(out, make(), resume_key="k1")
    assert w2.resumed and w2.regions == {"total": 24, "done_before": 10}
    assert _chunk_files(out) == _chunk_files(tmp_path / "clean.zarr")
    assert set(_chunk_files(out)) == {f"{c}/c/{i}" for c in cols for i in range(8)}


def test_an_empty_table_is_written_whole(tmp_path):
    cols = {"pixel": np.zeros(0, np.uint32), "time": np.zeros(0, np.uint64)}
    _write(tmp_path / "t.zarr", event_table(cols, dim="photon"))
    got = read_table(tmp_path / "t.zarr", "mkid/photons")
    assert got["pixel"].dtype == np.uint32 and got["time"].shape == (0,)


@pytest.mark.parametrize("cols, match", [
    ({"a": np.zeros(3), "b": np.zeros(4)}, "expected one length"),
    ({"a": np.zeros((3, 2))}, "expected a 1-D array"),
    ({}, "at least one column"),
])  # fmt: skip
def test_bad_columns_are_refused(cols, match):
    with pytest.raises(ValueError, match=match):
        event_table(cols)


def test_unknown_row_counts_are_refused():
    """A dask column filtered by a mask has unknown chunk sizes: the table says what to do, computing nothing."""
    a = da.arange(10, chunks=4)
    with dask.config.set(scheduler=lambda *a, **k: pytest.fail("computed")):
        with pytest.raises(ValueError, match="compute_chunk_sizes"):
            event_table({"a": a[a % 3 == 0]})


def test_add_table_refuses_a_dataset_that_is_not_a_table(tmp_path):
    ds = xr.Dataset({"img": (("y", "x"), np.zeros((2, 2)))})
    with StoreWriter(tmp_path / "t.zarr") as w, pytest.raises(ValueError, match="expected an event table"):
        w.add_table("img", ds)
