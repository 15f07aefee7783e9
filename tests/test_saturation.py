"""Saturation flagging: the chunked step against stcal 1.20 ``flag_saturated_pixels`` + romancal backup."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import xarray as xr

from detflow.schema import DQ
from detflow.steps.wfi import SaturationParams, saturation

stcal_sat = pytest.importorskip("stcal.saturation.saturation")

DQFLAGS = {"DO_NOT_USE": int(DQ.DO_NOT_USE), "SATURATED": int(DQ.SATURATED), "AD_FLOOR": int(DQ.AD_FLOOR),
           "NO_SAT_CHECK": int(DQ.NO_SAT_CHECK)}  # fmt: skip


def make_case(rng, rp, ny=41, nx=53):
    n = len(rp)
    thresh = rng.uniform(30000, 40000, (ny, nx)).astype(np.float32)
    thresh[3, 4] = np.nan
    sat_dq = np.zeros((ny, nx), np.uint32)
    sat_dq[5, 6] = np.uint32(DQ.NO_SAT_CHECK)
    tb = np.array([np.mean(g) for g in rp])
    rate = rng.uniform(0, 3000, (ny, nx)) * (rng.random((ny, nx)) < 0.3)
    data = (1000 + rate[None] * tb[:, None, None] + rng.normal(0, 20, (n, ny, nx))).astype(np.float32)
    data = np.minimum(data, 36000)
    data[:, 10, 10] = 0.0  # A/D floor
    data[:, 3, 4] = 60000.0  # NaN threshold: never saturated
    data[:, 5, 6] = 60000.0  # NO_SAT_CHECK
    return data, thresh, sat_dq


def reference(data, thresh, sat_dq, rp, ngrow, backup, skip_first):
    k0 = 1 if skip_first else 0
    n, ny, nx = data.shape
    gdq = np.zeros((1, n, ny, nx), np.uint32)
    pdq = np.zeros((1, 1, ny, nx), np.uint32)
    sub = gdq[:, k0:].copy()
    sub, pdq_out, _ = stcal_sat.flag_saturated_pixels(
        data[None, k0:].copy(), sub, pdq, thresh.copy(), sat_dq.copy(), 65535.0, DQFLAGS,
        n_pix_grow_sat=ngrow, read_pattern=rp[k0:])  # fmt: skip
    gdq[:, k0:] = sub
    g = gdq[0]
    r = rp[k0:]
    for _ in range(backup):  # romancal.saturation.flag_saturation's backup loop
        for i in range(len(r) - 1):
            if len(r[i]) > 1:
                g[k0 + i] |= g[k0 + i + 1] & np.uint32(DQ.SATURATED)
    return g, np.asarray(pdq_out).reshape(ny, nx)


def run_step(data, thresh, sat_dq, rp, params, chunks):
    n, ny, nx = data.shape
    ds = xr.Dataset(
        {"data": (("frame", "read", "y", "x"), data[None]),
         "groupdq": (("frame", "read", "y", "x"), np.zeros((1, n, ny, nx), np.uint32)),
         "pixeldq": (("frame", "y", "x"), np.zeros((1, ny, nx), np.uint32))},
        coords={"read_first": (("frame", "read"), [[g[0] for g in rp]]),
                "read_nframes": (("frame", "read"), [[len(g) for g in rp]])},
    ).chunk({"frame": 1, "read": -1, "y": chunks[0], "x": chunks[1]})  # fmt: skip
    refs = xr.Dataset({"saturation_data": (("y", "x"), thresh), "saturation_dq": (("y", "x"), sat_dq)})
    refs = refs.chunk({"y": chunks[0], "x": chunks[1]})
    out = saturation(ds, refs, params)
    with dask.config.set(scheduler="threads"):
        return out["groupdq"].values[0], out["pixeldq"].values[0]


@pytest.mark.parametrize(
    "rp",
    [
        [[0], [1], [2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]],
        [[1], [2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12, 13, 14], [15, 16]],
    ],
)
@pytest.mark.parametrize("ngrow,backup", [(1, 1), (0, 0), (2, 2)])
@pytest.mark.parametrize("chunks", [(41, 53), (7, 11), (16, 9)])
def test_step_matches_stcal(rp, ngrow, backup, chunks):
    rng = np.random.default_rng(ngrow * 10 + backup + len(rp))
    data, thresh, sat_dq = make_case(rng, rp)
    params = SaturationParams(n_pix_grow_sat=ngrow, backup=backup)
    got_g, got_p = run_step(data, thresh, sat_dq, rp, params, chunks)
    ref_g, ref_p = reference(data, thresh, sat_dq, rp, ngrow, backup, skip_first=rp[0] == [0])
    assert np.count_nonzero(ref_g & DQ.SATURATED) > 50  # the case exercises saturation
    np.testing.assert_array_equal(got_g, ref_g)
    np.testing.assert_array_equal(got_p, ref_p)
    assert got_p[3, 4] & DQ.NO_SAT_CHECK and got_p[5, 6] & DQ.NO_SAT_CHECK
    if ngrow == 0:  # (neighbours' growth may flag them otherwise)
        assert not np.any(got_g[:, 3, 4] & DQ.SATURATED) and not np.any(got_g[:, 5, 6] & DQ.SATURATED)
    assert np.all(got_g[1:, 10, 10] & DQ.AD_FLOOR)
