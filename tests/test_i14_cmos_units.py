"""Issue 14: a CMOS section store's ``units: DN`` tells the truth. The stored integers (ADC counts x
data_scale) carry CF ``scale_factor`` = 1 / data_scale, so plain xarray (CF decoding) reads DN; an
append keeps the packing; the detflow readers and exports still give DN (and the FITS files the raw
integers with DATASCL)."""

from __future__ import annotations

import shutil

import dask
import numpy as np
import pytest
import xarray as xr
import zarr
from astropy.io import fits

from detflow.calib import cmos_analysis as ca
from detflow.io.cmos_raw import export_fits, ingest_section, open_cmos_section
from detflow.sim.cmos import CmosSimConfig, simulate_cmos_tree


@pytest.fixture(autouse=True)
def _threads():
    with dask.config.set(scheduler="threads", num_workers=2):
        yield


def _raw(path, dtype="<u2") -> np.ndarray:
    return np.fromfile(path, dtype=dtype).reshape(64, 64)


def _check_dn(store, scale: float) -> None:
    """Plain xarray gives the raw file / scale with units DN; undecoded, the raw integers."""
    for opened in (xr.open_zarr(store, group="l1"), xr.open_dataset(store, group="l1", engine="zarr", chunks={})):
        da = opened["data"]
        assert da.attrs["units"] == "DN" and {"temp", "exptime", "path"} <= set(opened.coords)
        values = da.values
        for i, p in enumerate(opened["path"].values):
            np.testing.assert_array_equal(values[i, 0], _raw(str(p)) / scale, err_msg=str(p))
    packed = xr.open_zarr(store, group="l1", mask_and_scale=False)
    assert packed["data"].dtype == np.uint16
    for i, p in enumerate(packed["path"].values):
        assert np.array_equal(packed["data"].values[i, 0], _raw(str(p)))


def test_plain_xarray_reads_dn_also_after_an_append(tmp_path):
    sim = simulate_cmos_tree(tmp_path / "full", CmosSimConfig(temps=(-10.0, 10.0), seed=8))
    tree = tmp_path / "tree" / "TestSection1"
    shutil.copytree(sim.roots["BIAS"], tree)
    shutil.rmtree(tree / "T10")
    store = tmp_path / "out" / "bias.zarr"
    ingest_section(tree, store, data_scale=16, frame_chunk=4, tile=(32, 32))
    attrs = zarr.open_group(str(store), path="l1", mode="r")["data"].attrs
    assert attrs["units"] == "DN" and attrs["scale_factor"] == 1 / 16
    _check_dn(store, 16)
    shutil.copytree(sim.roots["BIAS"] / "T10", tree / "T10")
    rep = ingest_section(tree, store)  # an append: the new frames packed like the old, not re-packed
    assert len(rep.ingested) == 6 and rep.n_frames == 12
    _check_dn(store, 16)
    # the detflow reader and the analyses' DN: unchanged, stored / data_scale in float32
    ds = open_cmos_section(store)
    raw = open_cmos_section(store, scaled=False)["data"].values[:, 0]
    np.testing.assert_array_equal(ds["data"].values, (raw / np.float32(16)).astype(np.float32))
    assert ds["data"].attrs["units"] == "DN" and ds.attrs["data_scale"] == 16
    dn, scale = ca.frames._dn(xr.open_zarr(store, group="l1"), "flat")  # a plain-xarray dataset: already DN
    np.testing.assert_array_equal(dn.values, ds["data"].values)
    dn, scale = ca.frames._dn(open_cmos_section(store, scaled=False), "flat")  # the integers, unpacked
    np.testing.assert_array_equal(dn.values, ds["data"].values)
    assert scale == 16 and "scale_factor" not in dn.attrs  # DN: no packing attribute left on it
    # the coordinates decoded as before (no _FillValue left in their attributes: products built on them are
    # written by StoreWriter, which would refuse it)
    assert not [c for c in ds.variables if "_FillValue" in ds[c].attrs]
    ds.to_zarr(tmp_path / "copy.zarr", zarr_format=3, consolidated=False)
    copy = xr.open_zarr(tmp_path / "copy.zarr", consolidated=False)
    np.testing.assert_array_equal(copy["data"].values, ds["data"].values)
    # FITS export: the raw integers and DATASCL, as before
    files = export_fits(store, tmp_path / "fits")
    with fits.open(files[-1]) as hdul:
        assert hdul[0].data.dtype == np.uint16 and hdul[0].header["DATASCL"] == 16
        np.testing.assert_array_equal(hdul[0].data, raw[-1])


def test_data_scale_one_has_no_packing(tmp_path):
    sim = simulate_cmos_tree(tmp_path / "raw", CmosSimConfig(temps=(0.0,), bias_attempts=1, n_bias=2, seed=9))
    store = tmp_path / "out" / "bias.zarr"
    ingest_section(sim.roots["BIAS"], store)  # data_scale 1: the stored integers are DN
    assert "scale_factor" not in zarr.open_group(str(store), path="l1", mode="r")["data"].attrs
    plain = xr.open_zarr(store, group="l1")
    assert plain["data"].dtype == np.uint16 and plain["data"].attrs["units"] == "DN"
    _check_dn(store, 1)
