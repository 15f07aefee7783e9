"""The generic FITS ramp-cube reader, on real FITS files written by astropy."""

from __future__ import annotations

import dask
import numpy as np
import pytest
from astropy.io import fits

import detflow
from detflow.errors import DetflowInputError


def test_fits_cube_reads_lazily_with_timing(tmp_path):
    rng = np.random.default_rng(0)
    cube = rng.integers(0, 60000, (5, 16, 16), dtype=np.uint16)
    hdr = fits.Header({"TFRAME": 2.5, "NFRAMES": 2, "GROUPGAP": 1, "FRAME0": 1, "OBSERVER": "me"})
    path = tmp_path / "ramp.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(cube, header=hdr)]).writeto(path)
    ds = detflow.open_l1(path)
    assert ds["data"].dims == ("frame", "read", "y", "x") and isinstance(ds["data"].data, dask.array.Array)
    np.testing.assert_array_equal(ds["data"].values[0], cube)
    assert ds["data"].dtype == np.uint16
    # frames per read = NFRAMES, GROUPGAP dropped between reads, starting at FRAME0
    assert ds["read_first"].values[0].tolist() == [1, 4, 7, 10, 13]
    assert ds["read_nframes"].values[0].tolist() == [2] * 5
    assert float(ds["frame_time"].values[0]) == 2.5
    assert "OBSERVER" in ds.attrs["inputs"][0]["fits_headers"][1]  # the header kept losslessly


def test_fits_glob_concatenates_frames(tmp_path):
    for i in range(3):
        fits.PrimaryHDU(np.full((4, 8, 8), i, np.uint16), header=fits.Header({"TFRAME": 1.0})).writeto(
            tmp_path / f"exp{i}.fits")  # fmt: skip
    ds = detflow.open_l1(str(tmp_path / "exp*.fits"))
    assert ds.sizes["frame"] == 3
    assert ds["data"].values[:, 0, 0, 0].tolist() == [0, 1, 2]


def test_fits_without_frame_time_is_an_error(tmp_path):
    path = tmp_path / "bad.fits"
    fits.PrimaryHDU(np.zeros((3, 8, 8), np.uint16)).writeto(path)
    with pytest.raises(DetflowInputError, match="TFRAME"):
        detflow.open_l1(path)
