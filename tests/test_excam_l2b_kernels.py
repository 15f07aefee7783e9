"""The one-pass L2b kernels (detflow.kernels.emccd) against the NumPy expressions they replace, to the bit:
NaN and negative pixels, zero flats, error maps, frames with their own gains and exposure times."""

from __future__ import annotations

import numpy as np
import pytest

from detflow.kernels import emccd
from detflow.schema import DQ

NF, NY, NX = 3, 17, 23


@pytest.fixture
def stack():
    rng = np.random.default_rng(7)
    data = rng.normal(50, 80, (NF, NY, NX))
    data[0, 2, 3] = np.nan
    data[1, 4, :5] = -0.0
    err = np.abs(rng.normal(5, 2, (NF, NY, NX)))
    dq = np.where(rng.random((NF, NY, NX)) < 0.05, np.uint32(DQ.JUMP_DET), np.uint32(0)).astype(np.uint32)
    maps = {k: rng.normal(1, 0.3, (NY, NX)) for k in ("fpn", "dc", "cic", "flat", "flat_err", "dark", "dark_err")}
    maps["flat"][5, 5:9] = 0
    badpix = (rng.random((NY, NX)) < 0.03).astype(np.uint8)
    return data, err, dq, maps, badpix


@pytest.mark.parametrize("shot", [True, False])
def test_electrons(stack, shot):
    data, err, *_ = stack
    g = np.array([1.0, 100.0, 5000.0])
    scale = 8.7 / g
    rn = np.array([12.0, 9.5, 30.0])
    rn2 = (rn * scale) ** 2
    f2 = emccd.enf(g) ** 2
    d, e = np.empty(data.shape), np.empty(data.shape)
    emccd.electrons_frames(data, err, scale, rn2, f2, shot, d, e)
    want_d = data * scale[:, None, None]
    want_e = err * scale[:, None, None]
    if shot:
        want_e = np.sqrt(want_e**2 + rn2[:, None, None] + f2[:, None, None] * want_d.clip(min=0))
    np.testing.assert_array_equal(d, want_d)
    np.testing.assert_array_equal(e, want_e)


def test_synthesized_and_master_dark(stack):
    data, err, _, m, _ = stack
    g, t = np.array([10.0, 100.0, 1000.0]), np.array([1.0, 5.0, 60.0])
    out = np.empty(data.shape)
    emccd.subtract_synthesized_dark(data, m["fpn"], m["dc"], m["cic"], g, t, out)
    want = data - (m["fpn"] / g[:, None, None] + t[:, None, None] * m["dc"] + m["cic"])
    np.testing.assert_array_equal(out, want)
    for with_err in (True, False):
        d, e = np.empty(data.shape), np.empty(data.shape)
        emccd.subtract_master_dark(data, err, m["dark"], m["dark_err"], with_err, d, e)
        np.testing.assert_array_equal(d, data - m["dark"])
        np.testing.assert_array_equal(e, np.sqrt(err**2 + m["dark_err"] ** 2) if with_err else err)


@pytest.mark.parametrize("with_err", [True, False])
def test_flat(stack, with_err):
    data, err, dq, m, _ = stack
    out = np.empty(data.shape), np.empty(data.shape), np.empty(data.shape, np.uint32)
    bit = np.uint32(DQ.NO_FLAT_FIELD)
    emccd.divide_flat(data, err, dq, m["flat"], m["flat_err"], with_err, bit, *out)
    safe = np.where(m["flat"] == 0, np.nan, m["flat"])
    want_e = err / np.abs(safe)
    if with_err:
        want_e = np.sqrt(want_e**2 + (data * m["flat_err"] / safe**2) ** 2)
    np.testing.assert_array_equal(out[0], data / safe)
    np.testing.assert_array_equal(out[1], want_e)
    np.testing.assert_array_equal(out[2], dq | np.where(m["flat"] == 0, bit, np.uint32(0)))
    assert np.isnan(out[0][:, 5, 5:9]).all() and (out[2][:, 5, 5:9] & bit).all()


@pytest.mark.parametrize("with_map", [True, False])
@pytest.mark.parametrize("nan_flagged", [True, False])
def test_bad_pixels(stack, with_map, nan_flagged):
    data, _, dq, _, badpix = stack
    d, q = np.empty(data.shape), np.empty(data.shape, np.uint32)
    bit = np.uint32(DQ.DO_NOT_USE)
    emccd.flag_bad_pixels(data, dq, badpix, with_map, bit, nan_flagged, d, q)
    want_q = dq | np.where(badpix != 0, bit, np.uint32(0)) if with_map else dq
    np.testing.assert_array_equal(q, want_q)
    np.testing.assert_array_equal(d, np.where(want_q != 0, np.nan, data) if nan_flagged else data)
