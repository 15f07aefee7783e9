"""``detflow sim wfi|excam|cmos`` then ``detflow run`` on the job it wrote, as a new user would from the shell
(subprocesses, real LocalCluster), at tiny sizes; ``--verbose`` logs each stage, without it the run is quiet."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import xarray as xr

from detflow.io.store import open_store
from detflow.sim.wfi import load_truth

DETFLOW = [sys.executable, "-m", "detflow.cli"]
STAGES = ("inputs: ", "graph built: ", "cluster: ", "computing ", "tasks", "done", "store committed: ")


def sh(*args):
    return subprocess.run([*DETFLOW, *map(str, args)], capture_output=True, text=True, timeout=600)


def _sim(family, outdir, *opts):
    res = sh("sim", family, outdir, *opts)
    assert res.returncode == 0, res.stderr
    job = outdir / f"{family}_job.yaml"
    assert f"run it: detflow run {job}" in res.stdout and job.is_file()
    assert " INFO " not in res.stderr  # quiet without --verbose
    return job


def test_sim_wfi_then_verbose_run(tmp_path):
    job = _sim("wfi", tmp_path / "wfi", "--nside", "128", "--seed", "3")
    res = sh("--verbose", "run", job, "--no-progress", "--workers", "1")
    assert res.returncode == 0, res.stderr
    info = [line for line in res.stderr.splitlines() if " INFO " in line]
    for stage in STAGES:
        assert any(stage in line for line in info), (stage, info)
    assert any("inputs: 1 L1 file(s)" in line for line in info)
    l2 = xr.open_zarr(tmp_path / "wfi" / "l2.zarr", group="l2")
    truth = load_truth(tmp_path / "wfi" / "truth.npz")
    good = l2["dq"].values[0] == 0
    assert good.mean() > 0.7
    with np.errstate(invalid="ignore"):  # dead pixels: flat 0 (flagged)
        expected = (truth["slope_dn"] / truth["flat"])[4:-4, 4:-4]  # the flat-fielded slope of the simulated scene
    resid = l2["data"].values[0] - expected
    chi = resid / np.sqrt(l2["var_rnoise"].values[0] + l2["var_poisson"].values[0])
    assert abs(np.median(resid[good])) < 0.02 * np.median(expected[good])
    assert 0.5 < np.median(np.abs(chi[good])) < 0.9  # 0.67 for Gaussian errors as large as the stated ones


def test_sim_excam_then_quiet_run(tmp_path):
    job = _sim("excam", tmp_path / "excam", "--frames", "2", "--em-gain", "50", "--seed", "4")
    res = sh("run", job, "--no-progress")
    assert res.returncode == 0, res.stderr
    assert " INFO " not in res.stderr  # quiet without --verbose
    tree = open_store(tmp_path / "excam" / "l2.zarr")
    assert tree["l2b"].sizes["frame"] == 2 and "mean_comb" in tree.children
    truth = np.load(tmp_path / "excam" / "truth.npz")
    l2b = tree["l2b"].to_dataset()
    good = l2b["dq"].values == 0
    resid = (l2b["data"].values - truth["expected_l2b_e"][None])[good]
    # the simulated scene back in electrons: unbiased over the 2 x 1024 x 1024 good pixels (EMCCD noise: no chi test)
    assert good.mean() > 0.9 and abs(resid.mean()) < 0.02 * max(1.0, float(truth["expected_l2b_e"].mean()))


def test_sim_cmos_then_run(tmp_path):
    job = _sim("cmos", tmp_path / "cmos", "--size", "16", "--frames", "5", "--temp", "-10", "--temp", "10",
               "--temp", "25")  # fmt: skip
    res = sh("run", job, "--no-progress")
    assert res.returncode == 0, res.stderr
    tree = open_store(tmp_path / "cmos" / "models.zarr")
    assert {"bias_model", "dark_model", "flat_model"} <= set(tree.children)
    truth = np.load(tmp_path / "cmos" / "truth.npz")
    bias = tree["bias_model"].to_dataset()
    # the pixels' bias offsets found again, far better than they scatter (5 DN rms; read noise 2 DN)
    err = np.abs(bias["a"].values - truth["bias_a"])
    assert np.median(err) < 0.2 * np.std(truth["bias_a"])
    assert (tmp_path / "cmos" / "stores" / "bias.zarr").is_dir()


def test_sim_never_overwrites(tmp_path):
    _sim("cmos", tmp_path / "c", "--size", "8", "--frames", "2", "--temp", "0", "--temp", "20")
    res = sh("sim", "cmos", tmp_path / "c", "--size", "8")
    assert res.returncode == 2
    assert "cmos_job.yaml: outdir: expected a directory without an earlier simulation" in res.stderr
