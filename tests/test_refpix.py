"""Reference-pixel correction against the PIT's own functions (romanimpreprocess 1.0) at flight size,
and on simulated 1/f noise."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import xarray as xr

from detflow.steps.wfi import RefPixParams, pink_model_slope, refpix

refsub = pytest.importorskip("romanimpreprocess.utils.reference_subtraction")

N, W, NREAD = 4096, 128, 2


def _case(rng):
    rows = np.cumsum(rng.normal(0, 0.3, (NREAD, N)), axis=1).astype(np.float32)  # 1/f-like row drifts
    chan = rng.normal(0, 5, (NREAD, 32)).astype(np.float32)
    data = rng.normal(1000, 6, (NREAD, N, N)).astype(np.float32)
    data += rows[:, :, None] + np.repeat(chan, N // 32, axis=1)[:, None, :]
    dark = rng.normal(900, 2, (NREAD, N, N)).astype(np.float32)
    med = rng.normal(500, 1, (N, W)).astype(np.float32)
    amp33 = (med[None] + 0.9 * rows[:, :, None] + rng.normal(0, 6, (NREAD, N, W))).astype(np.float32)
    return data, dark, med, amp33


def _pit(data, dark, med, amp33, slope):
    out = np.empty_like(data)
    for j in range(NREAD):
        image = np.zeros((N, N + W), dtype=np.float32)
        image[:, :N] = data[j] - dark[j]
        image[:, -W:] = amp33[j] - med
        image[:, -W:] -= np.median(image[:, -W:])
        image = refsub.ref_subtraction_row(image, use_ref_channel=True, slope=slope)
        image = refsub.ref_subtraction_channel(image, use_ref_channel=True)
        out[j] = image[:, :N] + dark[j]
    return out


@pytest.mark.parametrize("mode", ["fit", "pink_model"])
def test_refpix_matches_pit(mode):
    rng = np.random.default_rng(5)
    data, dark, med, amp33 = _case(rng)
    pink = {"M_PINK": 1.0, "RU_PINK": 0.5, "C_PINK": 2.0, "std_median": 6.0}
    tile = {"y": 516, "x": -1}
    ds = xr.Dataset({"data": (("frame", "read", "y", "x"), data[None]),
                     "amp33": (("frame", "read", "y", "x_amp33"), amp33[None])}).chunk(tile)  # fmt: skip
    refs = xr.Dataset({"dark_data": (("dark_k", "y", "x"), dark), "read_amp33_med": (("y", "x_amp33"), med),
                       "read_pink_model": ((), 0.0, pink)}).chunk(tile)  # fmt: skip
    out = refpix(ds, refs, RefPixParams(row_slope=mode, fit_rows="all"))
    with dask.config.set(scheduler="threads"):
        got = out["data"].values[0]
    want = _pit(data, dark, med, amp33, pink_model_slope(pink) if mode == "pink_model" else None)
    err = np.abs(got - want)
    assert err.max() < 2e-3, err.max()  # float32 medians and sums in another order
    assert out.attrs["steps"][-1]["name"] == "refpix"


def test_refpix_row_fit_ignores_the_dark_border_rows():
    """With a bright scene the PIT's all-row fit sees the step from the unlit border rows to the lit rows
    and corrupts m; fitting the active rows recovers the injected reference gain."""
    rng = np.random.default_rng(8)
    n, w, m_true = 512, 16, 0.8
    common = np.cumsum(rng.normal(0, 0.5, n)).astype(np.float32)
    data = rng.normal(0, 3, (1, n, n)).astype(np.float32) + m_true * common[None, :, None]
    data[:, 4:-4, 4:-4] += 300.0  # sky on the active area only
    amp33 = (common[None, :, None] + rng.normal(0, 3, (1, n, w))).astype(np.float32)
    ds = xr.Dataset({"data": (("frame", "read", "y", "x"), data[None]),
                     "amp33": (("frame", "read", "y", "x_amp33"), amp33[None])}).chunk({"y": 128})  # fmt: skip
    refs = xr.Dataset({"dark_data": (("dark_k", "y", "x"), np.zeros((1, n, n), np.float32)),
                       "read_amp33_med": (("y", "x_amp33"), np.zeros((n, w), np.float32))}).chunk({"y": 128})  # fmt: skip
    rows = {}
    for fit_rows in ("active", "all"):
        with dask.config.set(scheduler="sync"):
            got = refpix(ds, refs, RefPixParams(row_slope="fit", channel=False, fit_rows=fit_rows))["data"].values
        rows[fit_rows] = np.median(got[0, 0, 4:-4, 4:-4], axis=1)  # row medians after the correction
    # the correlated rows are removed down to the noise of the 16-column reference median
    assert np.std(rows["active"]) < 0.35 * np.std(np.median(data[0, 4:-4, 4:-4], axis=1))
    assert np.std(rows["all"]) > 2 * np.std(rows["active"])


def test_refpix_removes_simulated_1f_noise(tmp_path):
    """On a simulated exposure with 1/f read noise, the row-correlated slope residual drops and the
    normalised residuals approach a unit Gaussian (the noise the variances do not model is removed)."""
    import detflow
    from detflow.instruments.roman_wfi_job import WFIJob
    from detflow.runtime.job import load_job
    from detflow.schema import DQ
    from detflow.sim.wfi import SimConfig, simulate

    prod = simulate(tmp_path / "sim", SimConfig(nside=512, seed=1))
    truth = np.load(prod.truth_file)["slope_dn"][4:-4, 4:-4]
    base = ["dq_init", "saturation", "linearity", "dark_current", "ramp_fit"]
    stats = {}
    for name, recipe in (("without", base), ("with", base[:2] + ["refpix"] + base[2:])):
        job = load_job(prod.job_yaml).model_dump()
        job.update(output=tmp_path / "x.zarr", recipe=recipe)
        with dask.config.set(scheduler="threads"):
            l2 = detflow.build(WFIJob(**job))["l2"].isel(frame=0)[["data", "dq", "var_rnoise", "var_poisson"]]
            l2 = l2.compute()
        bad = np.uint32(DQ.DO_NOT_USE | DQ.SATURATED | DQ.JUMP_DET | DQ.HOT | DQ.DEAD | DQ.NO_LIN_CORR)
        good = (l2["dq"].values & bad) == 0
        resid = np.where(good, l2["data"].values - truth, np.nan)
        chi = resid[good] / np.sqrt(l2["var_rnoise"].values + l2["var_poisson"].values)[good]
        stats[name] = (np.nanstd(np.nanmean(resid, axis=1)), chi.std())
        print(f"\n{name} refpix: row-mean residual rms {stats[name][0]:.4f} DN/s, chi std {stats[name][1]:.3f}")
    assert stats["with"][0] < 0.6 * stats["without"][0]
    assert abs(stats["with"][1] - 1) < abs(stats["without"][1] - 1)
    assert 0.97 < stats["with"][1] < 1.03
