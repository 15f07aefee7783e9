"""Issue 14, WFI numerics: NaN resultants, unusable gain/read-noise/linearity values, CDS (2-resultant) ramps
and 1-resultant inputs; compared with stcal 1.20 where it defines the answer."""

from __future__ import annotations

import asdf
import dask
import numpy as np
import pytest
from conftest import write_tiny_wfi

import detflow
from detflow.errors import DetflowInputError
from detflow.instruments.roman_wfi_job import WFIJob
from detflow.kernels import linearity as klin
from detflow.kernels import ramp as kramp
from detflow.schema import DQ

stcal_fit = pytest.importorskip("stcal.ramp_fitting.ols_cas22_fit")

FT = 3.04
RP = [[1], [2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [16, 17]]
DNU = int(DQ.DO_NOT_USE)
PIT_FLAGS = kramp.dq_flags(DQ.SATURATED, DQ.DO_NOT_USE, DQ.JUMP_DET, DQ.REFERENCE_PIXEL, DQ.NO_GAIN_VALUE,
                           DQ.UNRELIABLE_ERROR)  # fmt: skip
LIN_FLAGS = klin.dq_flags(DQ.NO_LIN_CORR, DQ.REFERENCE_PIXEL, DQ.SATURATED)


def run_kernel(R, gdq, gain, rn, rp, u=0.01, start=0, detect=True):
    """``R``, ``gdq``: (n, npix); returns (slope, var_rnoise, var_poisson), dq."""
    t = kramp.ramp_tables(rp, FT, u, start)
    npix = R.shape[1]
    outs = [np.empty((1, npix), dt) for dt in (np.float32, np.float32, np.float32, np.uint32)]
    kramp.fit_ramps(
        R.T.astype(np.float32)[None], gdq.T.astype(np.uint32)[None], np.zeros((1, npix), np.uint32),
        np.asarray(gain, np.float32)[None], np.asarray(rn, np.float32)[None], t.weights, t.coef_poisson, t.coef_read,
        t.pair_start, t.pair_i, t.pair_j, t.pair_inv_dt, t.pair_poisson, t.pair_read,
        kramp.ramp_params(start, detect=detect), PIT_FLAGS, *outs)  # fmt: skip
    return np.stack([o[0] for o in outs[:3]]), outs[3][0]


def assert_nan_flagged(values: dict[str, np.ndarray], dq: np.ndarray):
    for name, v in values.items():
        bad = ~np.isfinite(v) & ((dq & DNU) == 0)
        assert not bad.any(), f"{name}: {bad.sum()} non-finite values without DO_NOT_USE"


def test_nan_resultant_is_missing_like_stcal_do_not_use():
    """A NaN resultant is a missing one: the pixel is fitted as stcal fits it with that resultant
    DO_NOT_USE (noiseless ramps, so both algorithms give the true slope) and never NaN with DQ 0."""
    n, npix = len(RP), 4 * len(RP)
    tbar, _, _ = kramp.resultant_times(RP, FT)
    rate = np.linspace(2.0, 90.0, npix)
    R = 500.0 + rate[None] * tbar[:, None]
    where = np.arange(npix) % n  # pixel p has a NaN in resultant p % n
    R[where, np.arange(npix)] = np.nan
    gdq = np.zeros((n, npix), np.uint32)
    ours, dq = run_kernel(R, gdq, np.full(npix, 1.0), np.full(npix, 8.0), RP)
    assert_nan_flagged({"slope": ours[0], "var_rnoise": ours[1], "var_poisson": ours[2]}, dq)

    st_dq = np.zeros((n, npix), np.int32)
    st_dq[where, np.arange(npix)] = DNU
    st = stcal_fit.fit_ramps_casertano(np.nan_to_num(R).astype(np.float32), st_dq, np.full(npix, 8.0), FT, RP)
    # this algorithm ends the ramp at the missing resultant (issue 19 will skip it): where two usable
    # resultants remain before it, the slope is stcal's; where not, no slope, DO_NOT_USE
    fitted = where >= 2
    np.testing.assert_allclose(ours[0][fitted], st.parameters[fitted, 1], rtol=1e-4)
    np.testing.assert_allclose(ours[0][fitted], rate[fitted], rtol=1e-4)
    assert not np.any(dq[fitted] & DNU)
    assert np.all(np.isnan(ours[0][~fitted])) and np.all(dq[~fitted] & DNU)


@pytest.mark.parametrize("bad", [0.0, -1.0, -np.inf, np.inf, np.nan])
def test_unusable_gain_gives_no_poisson_variance(bad):
    """stcal's OLS fit flags gain <= 0 or NaN DO_NOT_USE | NO_GAIN_VALUE; the Poisson variance needs a
    gain, so it is NaN (with those flags), never a number computed from a clipped gain."""
    tbar, _, _ = kramp.resultant_times(RP, FT)
    R = (500.0 + 20.0 * tbar)[:, None].repeat(2, 1)
    gain = np.array([1.8, bad])
    ours, dq = run_kernel(R, np.zeros(R.shape, np.uint32), gain, np.full(2, 6.0), RP)
    t = kramp.ramp_tables(RP, FT, 0.01, 0)
    assert ours[2][0] == pytest.approx(t.coef_poisson[len(RP)] * 20.0 / 1.8, rel=1e-4)
    assert np.isnan(ours[2][1]) and dq[1] == DQ.NO_GAIN_VALUE | DQ.DO_NOT_USE
    assert ours[0][1] == pytest.approx(20.0, rel=1e-4)  # the slope itself needs no gain
    assert ours[1][1] == pytest.approx(ours[1][0])


@pytest.mark.parametrize("bad", [-1.0, np.nan, np.inf])
def test_unusable_read_noise_is_flagged(bad):
    tbar, _, _ = kramp.resultant_times(RP, FT)
    R = (500.0 + 20.0 * tbar)[:, None].repeat(2, 1)
    ours, dq = run_kernel(R, np.zeros(R.shape, np.uint32), np.full(2, 1.8), np.array([6.0, bad]), RP)
    assert np.isfinite(ours[1][0]) and dq[0] == 0
    assert np.isnan(ours[1][1]) and dq[1] == DQ.UNRELIABLE_ERROR | DQ.DO_NOT_USE
    assert_nan_flagged({"var_rnoise": ours[1]}, dq)


def test_linearity_model_with_nan_is_no_lin_corr():
    """stcal's linearity step gives a pixel with NaN coefficients a benign model and NO_LIN_CORR; here
    such a pixel (or NaN Smin/Smax, or a NaN Sref) gets ``S - Sref`` (Sref 0 when it is NaN)."""
    n, npix = 4, 5
    raw = np.tile(np.array([1100.0, 2000.0, 3000.0, 4000.0], np.float32)[None, :], (npix, 1))[None]
    coefs = np.zeros((1, npix, 3), np.float32)
    coefs[..., 1] = 20000.0  # a valid model on pixel 0
    coefs[0, 1, 2] = np.nan
    smin = np.full((1, npix), 1000.0, np.float32)
    smax = np.full((1, npix), 41000.0, np.float32)
    smin[0, 2] = np.nan
    smax[0, 3] = 500.0  # Smax <= Smin
    sref = np.full((1, npix), 1000.0, np.float32)
    sref[0, 4] = np.nan
    coefs[0, 4, 2] = np.nan  # with a NaN Sref, the direct correction uses 0
    out = np.empty((1, npix, n), np.float32)
    dq = np.empty((1, npix), np.uint32)
    klin.linearize_ramps(raw, coefs, smin, smax, sref, np.zeros((1, npix), np.uint32),
                         np.zeros((1, npix, n), np.uint32), False, False, LIN_FLAGS, out, dq)  # fmt: skip
    assert dq[0, 0] == 0 and np.all(np.isfinite(out[0, 0]))
    for p in (1, 2, 3):
        assert dq[0, p] == DQ.NO_LIN_CORR
        np.testing.assert_array_equal(out[0, p], raw[0, p] - 1000.0)
    assert dq[0, 4] == DQ.NO_LIN_CORR
    np.testing.assert_array_equal(out[0, 4], raw[0, 4])


# ---- 2-resultant (CDS) and 1-resultant exposures through the steps -----------------------------------
def _short_exposure(tmp_path, rp):
    t = write_tiny_wfi(tmp_path / "tiny", n=32)
    with asdf.open(t["files"][0]) as af:
        data = np.array(af["roman"]["data"])
        gw = dict(af["roman"]["meta"]["guide_star"])
    tb = np.array([(g[0] + (len(g) - 1) / 2) * FT for g in rp])
    slope = t["slope"]
    data = (1000.0 + slope[None] * tb[:, None, None]).astype(np.float32)
    path = tmp_path / "short.asdf"
    asdf.AsdfFile({"roman": {"data": data.round().astype(np.uint16),
                             "meta": {"exposure": {"read_pattern": rp, "frame_time": FT}, "guide_star": gw}}}
                  ).write_to(path)  # fmt: skip
    return t, path, data


@pytest.mark.parametrize("fuse", [True, False])
def test_two_resultants_give_the_cds_slope_of_stcal(tmp_path, fuse):
    rp = [[1], [2, 3]]
    t, path, data = _short_exposure(tmp_path, rp)
    job = WFIJob(pipeline="roman_wfi", input=str(path), output=str(tmp_path / "o.zarr"), caldir=t["caldir"],
                 exclude_first=False, fuse=fuse)  # fmt: skip
    with dask.config.set(scheduler="sync"):
        l2 = detflow.build(job)["l2"].compute().isel(frame=0)
    act = (slice(4, -4), slice(4, -4))
    raw = np.round(data).astype(np.uint16).astype(np.float32)[(slice(None), *act)].reshape(2, -1)
    st = stcal_fit.fit_ramps_casertano(raw, np.zeros(raw.shape, np.int32), np.full(raw.shape[1], 3.0), FT, rp)
    np.testing.assert_allclose(l2["data"].values.ravel(), st.parameters[:, 1], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(l2["var_rnoise"].values.ravel(), st.variances[:, 0], rtol=1e-5)
    assert not np.any(l2["dq"].values & DNU)
    assert "CDS" in l2.attrs["history"][-1]


def test_two_resultants_with_exclude_first_pit_says_no_slope(tmp_path, caplog):
    t, path, _ = _short_exposure(tmp_path, [[1], [2, 3]])
    job = WFIJob(pipeline="roman_wfi", input=str(path), output=str(tmp_path / "o.zarr"), caldir=t["caldir"],
                 steps={"ramp_fit": {"pit_compat": True}})  # fmt: skip
    with caplog.at_level("WARNING", logger="detflow"), dask.config.set(scheduler="sync"):
        l2 = detflow.build(job)["l2"].compute()
    assert np.all(np.isnan(l2["data"].values)) and np.all(l2["dq"].values & DNU)
    assert "no slope can be formed" in l2.attrs["history"][-1]
    assert "exclude_first" in caplog.text


@pytest.mark.parametrize("fuse", [True, False])
def test_two_resultants_with_exclude_first_give_one_resultant_slopes(tmp_path, caplog, fuse):
    """Issue 19: the excluded first resultant is the zero point of a one-resultant slope, flagged
    UNRELIABLE_SLOPE (not DO_NOT_USE), with the variance of that two-point difference."""
    t, path, data = _short_exposure(tmp_path, [[1], [2, 3]])
    job = WFIJob(pipeline="roman_wfi", input=str(path), output=str(tmp_path / "o.zarr"), caldir=t["caldir"],
                 fuse=fuse)  # fmt: skip
    with caplog.at_level("WARNING", logger="detflow"), dask.config.set(scheduler="sync"):
        l2 = detflow.build(job)["l2"].compute().isel(frame=0)
    act = (slice(4, -4), slice(4, -4))
    raw = np.round(data).astype(np.uint16).astype(np.float64)[(slice(None), *act)]
    dt = 2.5 * FT - 1 * FT  # tbar of [2, 3] minus tbar of [1]
    np.testing.assert_allclose(l2["data"].values, (raw[1] - raw[0]) / dt, rtol=1e-4, atol=1e-3)
    assert np.all(l2["dq"].values & DQ.UNRELIABLE_SLOPE) and not np.any(l2["dq"].values & DNU)
    rn = 3.0  # the tiny caldir's read noise (DN)
    np.testing.assert_allclose(l2["var_rnoise"].values, rn**2 * (1 + 1 / 2) / dt**2, rtol=1e-4)
    assert "one-resultant slopes" in l2.attrs["history"][-1] and "UNRELIABLE_SLOPE" in caplog.text


def test_one_resultant_is_a_clear_error(tmp_path):
    t, path, _ = _short_exposure(tmp_path, [[1]])
    job = WFIJob(pipeline="roman_wfi", input=str(path), output=str(tmp_path / "o.zarr"), caldir=t["caldir"],
                 exclude_first=False)  # fmt: skip
    with pytest.raises(DetflowInputError, match=r"short.asdf: read_pattern: expected at least 2 resultants"):
        detflow.build(job)
