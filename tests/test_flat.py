"""Flat field: the flat map against the PIT's get_flat (with IPC deconvolution), and truth recovery."""

from __future__ import annotations

import asdf
import dask
import numpy as np
import pytest
import xarray as xr

from detflow.schema import DQ
from detflow.steps.wfi import FlatParams, flat_map

flatutils = pytest.importorskip("romanimpreprocess.utils.flatutils")

N, NB = 64, 4


def test_flat_map_matches_pit(tmp_path):
    rng = np.random.default_rng(12)
    a = N - 2 * NB
    fl = rng.normal(1, 0.05, (N, N)).astype(np.float32)
    fl[10, 10], fl[20, 30], fl[40, 41] = 0.01, 50.0, 0.5
    gain = rng.uniform(1.6, 2.0, (N, N)).astype(np.float32)
    gain[15, 15] = 0.05
    k = np.zeros((3, 3, a, a), np.float32)
    k[0, 1] = k[2, 1] = k[1, 0] = k[1, 2] = rng.uniform(0.01, 0.02, (a, a))
    k[1, 1] = 1 - k.sum(axis=(0, 1)) + k[1, 1]
    caldir = {}
    for name, tree in {"flat": {"data": fl}, "gain": {"data": gain}, "ipc4d": {"data": k}}.items():
        caldir[name] = str(tmp_path / f"{name}.asdf")
        asdf.AsdfFile({"roman": tree}).write_to(caldir[name])
    pdq = np.zeros((N, N), np.uint32)
    pit = flatutils.get_flat(caldir, {"nborder": NB}, pdq)

    chunks = {"y": 23, "x": 64}
    ds = xr.Dataset({"data": (("frame", "y", "x"), np.zeros((1, N, N), np.float32))}).chunk(chunks)
    ds.attrs["ipc_order"] = 2
    refs = xr.Dataset({"flat_data": (("y", "x"), fl), "gain_data": (("y", "x"), gain),
                       "ipc4d_data": (("ipc_dy", "ipc_dx", "y_active", "x_active"), k)}).chunk(
        {"y": 23, "x": 64, "y_active": 19, "x_active": 56})  # fmt: skip
    f, flags = flat_map(ds, refs, FlatParams())
    with dask.config.set(scheduler="sync"):
        f, flags = f.values, flags.values
    np.testing.assert_allclose(f, pit, rtol=2e-6, atol=1e-6)
    np.testing.assert_array_equal(flags, pdq)
    assert flags[10, 10] & DQ.NO_FLAT_FIELD and flags[20, 30] & DQ.NO_FLAT_FIELD
    assert flags[15, 15] & DQ.NO_GAIN_VALUE and not flags[40, 41]


def test_flat_recovers_incident_flux(tmp_path):
    import detflow
    from detflow.instruments.roman_wfi_job import WFIJob
    from detflow.runtime.job import load_job
    from detflow.sim.wfi import SimConfig, simulate

    prod = simulate(tmp_path / "sim", SimConfig(nside=128, seed=6, pink_noise_dn=0.0, ipc_alpha=0.0,
                                                ipc_alpha_diag=0.0, flat_rms=0.1))  # fmt: skip
    t = np.load(prod.truth_file)
    job = load_job(prod.job_yaml).model_dump()
    job.update(output=tmp_path / "x.zarr", recipe=["dq_init", "saturation", "linearity", "dark_current",
                                                   "ramp_fit", "flat"])  # fmt: skip
    with dask.config.set(scheduler="sync"):
        l2 = detflow.build(WFIJob(**job))["l2"].isel(frame=0).compute()
    assert {s["name"]: s["status"] for s in l2.attrs["steps"]}["flat"] == "COMPLETE"
    act = (slice(4, -4), slice(4, -4))
    incident = (t["flux_e"] / t["gain"])[act]  # the flat removed
    bad = np.uint32(DQ.DO_NOT_USE | DQ.SATURATED | DQ.JUMP_DET | DQ.HOT | DQ.DEAD | DQ.NO_LIN_CORR)
    good = ((l2["dq"].values & bad) == 0) & ~t["dead"][act]
    chi = ((l2["data"].values - incident) / l2["err"].values)[good]
    assert abs(chi.mean()) < 0.05 and 0.9 < np.mean(chi**2) < 1.15
    # without the flat the same slopes are off by the 10% pixel-to-pixel QE
    raw = (l2["data"].values * t["flat"][act] - incident)[good] / l2["err"].values[good] / t["flat"][act][good]
    assert np.mean(raw**2) > 1.5 * np.mean(chi**2)


def test_bias_correction_subtracts_last_resultants(tiny_wfi, tmp_path):
    import detflow
    from detflow.runtime.job import load_job

    a = 24  # active size of the 32x32 fixture; it has 6 resultants
    corr = np.arange(8 * a * a, dtype=np.float32).reshape(8, a, a) % 7  # 8 resultants: the last 6 are used
    path = tmp_path / "biascorr.asdf"
    asdf.AsdfFile({"roman": {"data": corr}}).write_to(path)
    job = load_job(tiny_wfi["pit_yaml"])
    base = ["dq_init", "saturation"]
    with dask.config.set(scheduler="sync"):
        ref = detflow.build(job.model_copy(update={"recipe": base + ["ramp_fit"]}))
        job2 = job.model_copy(update={"recipe": base + ["bias_correction", "ramp_fit"],
                                      "caldir": {**job.caldir, "biascorr": path}})  # fmt: skip
        got = detflow.build(job2)
        assert got["l2"].attrs["steps"][2]["status"] == "COMPLETE"
        # the slope changes by the slope of the subtracted correction ramp (same weights, linear)
        w = ref["l2"]["ramp_weights"].values[0]
        expected = ref["l2"]["data"].values[0] - np.einsum("r,ryx->yx", w, corr[2:])
        np.testing.assert_allclose(got["l2"]["data"].values[0], expected, rtol=1e-5, atol=1e-3)
