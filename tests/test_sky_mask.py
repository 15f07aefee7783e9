"""Good-pixel mask growth and the sky (mode and Legendre fit) against the PIT's own functions."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import xarray as xr

from detflow.kernels.sky import sky_block_medians, sky_fit, smooth_mode
from detflow.schema import DQ, PIXEL_MASK_1, mask_sizes
from detflow.steps.wfi import SkyParams, grown_mask, sky

mh = pytest.importorskip("romanimpreprocess.utils.maskhandling")
pitsky = pytest.importorskip("romanimpreprocess.utils.sky")


def test_grown_mask_matches_pixelmask1_over_uneven_tiles():
    rng = np.random.default_rng(3)
    dq = np.zeros((1, 61, 47), np.uint32)
    for flag in (DQ.JUMP_DET, DQ.DEAD, DQ.DROPOUT, DQ.DO_NOT_USE, DQ.SATURATED, DQ.NO_FLAT_FIELD, DQ.AD_FLOOR):
        idx = rng.integers(0, dq.size, 25)
        dq.reshape(-1)[idx] |= np.uint32(flag)
    want = mh.PixelMask1.build(dq[0])
    for chunks in ({"y": 61, "x": 47}, {"y": 7, "x": 11}, {"y": 30, "x": 5}):
        arr = xr.DataArray(dq, dims=("frame", "y", "x")).chunk(chunks)
        with dask.config.set(scheduler="sync"):
            got = grown_mask(arr).values[0]
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(mask_sizes(PIXEL_MASK_1), mh.PixelMask1.array)  # same footprint per bit


def test_sky_mode_and_fit_match_pit():
    rng = np.random.default_rng(9)
    n = 256
    yy, xx = np.mgrid[0:n, 0:n]
    sky_true = 1.5 + 0.3 * (2 * xx / n - 1) - 0.2 * (2 * yy / n - 1) ** 2
    img = (sky_true + rng.normal(0, 0.05, (n, n))).astype(np.float32)
    img[rng.integers(0, n, 300), rng.integers(0, n, 300)] += 50  # sources
    img[10:14, 20:30] = np.nan
    binned = pitsky.binkxk(img, 4)
    assert smooth_mode(binned) == pytest.approx(pitsky.smooth_mode(binned)[0], rel=1e-9)
    coefs, model = pitsky.medfit(img, order=2)
    ours = sky_fit(sky_block_medians(img), n, n, 2)
    np.testing.assert_allclose(ours, coefs, rtol=1e-9, atol=1e-12)


def test_sky_step_recovers_polynomial_sky():
    rng = np.random.default_rng(1)
    n = 136  # 128 active
    a = n - 8
    yy, xx = np.mgrid[0:a, 0:a]
    u, v = 2 * xx / a - 1, 2 * yy / a - 1
    true = 2.0 + 0.4 * u - 0.3 * v + 0.2 * u * v
    slope = np.zeros((1, n, n), np.float32)
    slope[0, 4:-4, 4:-4] = true + rng.normal(0, 0.02, (a, a))
    ds = xr.Dataset({"data": (("frame", "y", "x"), slope), "dq": (("frame", "y", "x"), np.zeros((1, n, n), np.uint32))})
    ds = ds.chunk({"y": 36, "x": -1})
    out = sky(ds, None, SkyParams(order=2))
    with dask.config.set(scheduler="sync"):
        out = out.compute()
    resid = out["data"].values[0, 4:-4, 4:-4]
    assert np.abs(resid).max() < 0.1 and abs(resid.mean()) < 0.005  # the sky is gone, the noise stays
    np.testing.assert_array_equal(out["data_withsky"].values, slope)
    assert out["sky_mode"].values[0] == pytest.approx(np.median(true), abs=0.2)
