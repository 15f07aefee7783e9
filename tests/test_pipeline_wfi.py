"""The WFI L1 -> L2 pipeline end to end on simulated exposures with known truth."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import xarray as xr
from scipy import ndimage
from xarray.tests import raise_if_dask_computes

import detflow
from detflow.instruments import roman_wfi
from detflow.instruments.roman_wfi_job import WFIJob
from detflow.runtime.job import load_job
from detflow.schema import DQ
from detflow.sim.wfi import SimConfig, simulate

NB = 4
BAD = np.uint32(DQ.DO_NOT_USE | DQ.SATURATED | DQ.JUMP_DET | DQ.NO_LIN_CORR | DQ.HOT | DQ.DEAD)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """128x128, no 1/f noise (this issue's pipeline has no reference-pixel correction yet)."""
    out = tmp_path_factory.mktemp("sim") / "wfi"
    prod = simulate(out, SimConfig(nside=128, seed=42, pink_noise_dn=0.0, n_exposures=2))
    return prod, dict(np.load(prod.truth_file))


def _job(prod, tmp_path, **update):
    job = load_job(prod.job_yaml).model_dump()
    job.update({"output": tmp_path / "l2.zarr", **update})
    return WFIJob(**job)


def test_build_is_lazy(sim, tmp_path):
    prod, _ = sim
    noise = {"layers": ["Ra", "R", "Pbr", "Pb1", "O", "RS1", "Raz3"], "seed": 1}
    with raise_if_dask_computes():
        products = detflow.build(_job(prod, tmp_path, noise=noise))
    assert set(products) == {"l2", "noise"}
    l2 = products["l2"]
    assert l2["data"].dims == ("frame", "y", "x") and l2.sizes["y"] == 120
    assert products["noise"]["noise"].dims == ("frame", "layer", "y", "x")
    steps = {s["name"]: s["status"] for s in l2.attrs["steps"]}
    # a PIT configuration runs every gen_cal_image step its CALDIR allows
    assert list(steps) == ["dq_init", "saturation", "refpix", "linearity", "ipc", "dark_current", "ramp_fit",
                           "flat", "sky"]  # fmt: skip
    assert set(steps.values()) == {"COMPLETE"}


@pytest.mark.parametrize("refpix", [False, True])
def test_chunked_equals_eager(sim, tmp_path, refpix):
    prod, _ = sim
    recipe = ["dq_init", "saturation"] + (["refpix"] if refpix else []) + ["linearity", "dark_current", "ramp_fit"]
    with dask.config.set(scheduler="sync"):
        eager = detflow.build(_job(prod, tmp_path, recipe=recipe, chunks={"y": 128, "x": 128}))["l2"].compute()
        tiled = detflow.build(_job(prod, tmp_path, recipe=recipe, chunks={"y": 37, "x": 53}))["l2"]
        assert len(tiled["data"].chunks[1]) > 1
        tiled = tiled.compute()
    for v in ("data", "var_rnoise", "var_poisson", "dq"):
        np.testing.assert_array_equal(tiled[v].values, eager[v].values, err_msg=v)


def test_recovers_truth(sim, tmp_path):
    prod, truth = sim
    job = _job(prod, tmp_path, input=[str(p) for p in prod.l1_files], recipe=list(roman_wfi.DEFAULT_RECIPE),
               cluster={"n_workers": 2, "dashboard_address": "127.0.0.1:0"})  # fmt: skip
    tree = detflow.run(job, progress=False)
    l2 = tree["l2"].to_dataset().isel(frame=0)
    act = (slice(NB, -NB), slice(NB, -NB))
    slope, dq = l2["data"].values, l2["dq"].values
    err = np.sqrt(l2["var_rnoise"].values + l2["var_poisson"].values)
    t = truth["slope_dn"][act]

    # saturation: every truly saturated pixel is flagged; flags only where growth can reach
    sat_true = truth["saturated"][act]
    sat_flag = (dq & DQ.SATURATED) != 0
    assert sat_true.sum() > 5
    assert np.all(sat_flag[sat_true])
    assert not np.any(sat_flag & ~ndimage.binary_dilation(sat_true, np.ones((3, 3)), iterations=2))

    # jumps: detection rate of injected hits and false-positive rate on clean pixels
    exp0 = truth["cr_exposure"] == 0
    cy, cx, cres = truth["cr_y"][exp0] - NB, truth["cr_x"][exp0] - NB, truth["cr_resultant"][exp0]
    amp = truth["cr_amp_e"][exp0]
    inside = (cy >= 0) & (cy < 120) & (cx >= 0) & (cx < 120) & (cres >= 2)  # a difference can see it
    inside &= ~sat_flag[np.clip(cy, 0, 119), np.clip(cx, 0, 119)]
    strong = inside & (amp > 200)
    found = (dq[cy[strong], cx[strong]] & DQ.JUMP_DET) != 0
    hit = np.zeros((120, 120), bool)
    hit[cy[(cy >= 0) & (cy < 120) & (cx >= 0) & (cx < 120)], cx[(cy >= 0) & (cy < 120) & (cx >= 0) & (cx < 120)]] = True
    near_hit = ndimage.binary_dilation(hit, np.ones((3, 3)))
    clean = ~near_hit & ~sat_flag & ((dq & DQ.DO_NOT_USE) == 0)
    false_pos = np.mean((dq[clean] & DQ.JUMP_DET) != 0)
    print(f"\njumps: {found.sum()}/{strong.sum()} strong hits found; false-positive rate {false_pos:.4f}")
    assert strong.sum() >= 10 and found.mean() > 0.9
    assert false_pos < 0.01

    # slopes: chi-square per pixel near 1 on good pixels
    good = ((dq & BAD) == 0) & ~truth["hot"][act] & ~truth["dead"][act] & ~near_hit
    chi = (slope[good] - t[good]) / err[good]
    print(f"chi: mean {chi.mean():.3f} std {chi.std():.3f} over {good.sum()} pixels")
    assert good.sum() > 0.8 * good.size
    assert abs(chi.mean()) < 0.05
    assert 0.9 < np.mean(chi**2) < 1.15

    # the second exposure: frames along `frame`, its own (higher or lower) sky
    l2b = tree["l2"].to_dataset().isel(frame=1)
    tb = t + (truth["sky_e_per_s_exposure"][1] - truth["sky_e_per_s_exposure"][0]) * truth["sky_slope_dn"][act]
    goodb = good & ((l2b["dq"].values & BAD) == 0)
    chib = (l2b["data"].values - tb)[goodb] / np.sqrt(l2b["var_rnoise"].values + l2b["var_poisson"].values)[goodb]
    assert abs(chib.mean()) < 0.05 and 0.9 < np.mean(chib**2) < 1.15

    # provenance
    attrs = tree.attrs
    assert [s["status"] for s in attrs["steps"]][:5] == ["COMPLETE"] * 5
    assert len(attrs["inputs"]) == 2 and all(len(i["sha256"]) == 64 for i in attrs["inputs"])
    assert {r["name"] for r in attrs["reference_files"]} >= {"dark", "gain", "mask", "read", "saturation"}
    assert "read_pattern" in str(attrs["inputs"][0]["meta"])


def test_roman_datamodels_file_reads(tmp_path):
    dm = pytest.importorskip("roman_datamodels.datamodels")
    m = dm.ScienceRawModel.create_fake_data(shape=(6, 32, 32))
    m.meta.exposure.read_pattern = [[0], [1], [2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    m.meta.exposure.frame_time = 3.04
    m.data = np.arange(6 * 32 * 32, dtype=np.uint16).reshape(6, 32, 32)
    path = tmp_path / "rdm_l1.asdf"
    m.save(path)
    ds = detflow.open_l1(path)
    assert ds["data"].dims == ("frame", "read", "y", "x") and ds["data"].dtype == np.uint16
    np.testing.assert_array_equal(ds["data"].values[0], m.data)
    assert ds["read_nframes"].values.tolist() == [[1, 1, 2, 4, 4, 4]]
    assert float(ds["frame_time"].values[0]) == pytest.approx(3.04)
    assert "amp33" in ds


def test_directory_of_exposures_opens_along_frame(sim):
    prod, _ = sim
    ds = detflow.open_l1(prod.l1_files[0].parent)
    assert ds.sizes["frame"] == 2 and list(ds["source_file"].values) == [p.name for p in prod.l1_files]
    assert isinstance(ds["data"].data, __import__("dask").array.Array)
    assert ds["data"].chunks[1] == (ds.sizes["read"],)  # the ramp axis is one chunk
    xr.testing.assert_equal(ds.isel(frame=[1])["data"].drop_vars("frame"),
                            detflow.open_l1(prod.l1_files[1])["data"].drop_vars("frame"))  # fmt: skip


def test_fused_chain_equals_separate_steps(sim, tmp_path):
    """linearity -> dark_current -> ramp_fit in one pass gives what the three steps give."""
    prod, _ = sim
    with dask.config.set(scheduler="sync"):
        fused = detflow.build(_job(prod, tmp_path, chunks={"y": 45, "x": 128}))["l2"]
        steps = detflow.build(_job(prod, tmp_path, fuse=False, chunks={"y": 45, "x": 128}))["l2"]
        assert fused.attrs["steps"][:5] == steps.attrs["steps"][:5]
        fused, steps = fused.compute(), steps.compute()
    for v in ("data", "var_rnoise", "var_poisson", "dq"):
        np.testing.assert_array_equal(fused[v].values, steps[v].values, err_msg=v)


def test_full_gen_cal_image_recipe_end_to_end(sim, tmp_path):
    """Every step available so far, in the PIT's order, through `run` into a store."""
    prod, truth = sim
    recipe = ["dq_init", "saturation", "refpix", "linearity", "ipc", "dark_current", "ramp_fit", "flat", "sky"]
    job = _job(prod, tmp_path, recipe=recipe, steps={"sky": {"order": 1}},
               cluster={"n_workers": 1, "threads_per_worker": 2, "dashboard_address": "127.0.0.1:0"})  # fmt: skip
    tree = detflow.run(job, progress=False)
    l2 = tree["l2"].to_dataset()
    status = {s["name"]: s["status"] for s in tree.attrs["steps"]}
    assert all(status[name] == "COMPLETE" for name in recipe), status
    assert {"data_withsky", "sky_mode", "sky_coefs"} <= set(l2.data_vars)
    assert l2["sky_coefs"].shape == (1, 3)
    # the sky-subtracted image sits near zero where the slope is sky; the pre-sky one near the sky level
    good = (l2["dq"].values[0] & BAD) == 0
    assert abs(np.median(l2["data"].values[0][good])) < 0.1 * np.median(l2["data_withsky"].values[0][good])
    assert float(l2["sky_mode"].values[0]) == pytest.approx(np.median(l2["data_withsky"].values[0][good]), rel=0.1)
