"""CMOS campaigns end to end on a real LocalCluster: raw tree -> section stores -> model store ->
reports, through ``detflow.run``, job YAML and the ``detflow cmos`` commands."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
import zarr
from distributed import Client, LocalCluster
from typer.testing import CliRunner

import detflow
from detflow.calib.cmos import holdout_mask
from detflow.cli import app
from detflow.errors import DetflowInputError
from detflow.io.store import open_store
from detflow.sim.cmos import CmosSimConfig, simulate_cmos_tree

CFG = CmosSimConfig(n_bias=5, n_dark=5, n_flat=5, temps=(-10.0, 0.0, 10.0, 25.0), seed=3)


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1",
                      dashboard_address=":0") as lc, Client(lc) as c:  # fmt: skip
        yield c


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulate_cmos_tree(tmp_path_factory.mktemp("cmos") / "raw", CFG)


def _job(sim, out: Path, **kw) -> dict:
    return {"pipeline": "cmos", "stores": str(out / "stores"), "output": str(out / "models.zarr"),
            "ingest": {"bias": str(sim.roots["BIAS"]), "dark": str(sim.roots["DARK"]), "flat": str(sim.roots["FLAT"]),
                       "data_scale": 16},
            "synthesize": {"temps": [5.0, 15.0], "exptimes": [1.0]}, **kw}  # fmt: skip


@pytest.fixture(scope="module")
def full_run(sim, cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmos_run")
    tree = detflow.run(_job(sim, out), cluster, progress=False)
    return tree, out


def test_full_run_writes_models_evaluations_synthetic_and_reports(full_run):
    tree, out = full_run
    groups = set(tree.children)
    assert {"bias_model", "dark_model", "flat_model", "bias_eval", "dark_eval", "flat_eval", "synthetic"} <= groups
    assert tree.attrs["pipeline"] == "cmos" and tree.attrs["mode"] == "full"
    report = out / "models_report"
    for m in ("bias", "dark", "flat"):
        table = pd.read_csv(report / f"{m}_evaluation.csv")
        assert {"temp", "exptime", "nframes", "mae", "mape"} <= set(table.columns) and len(table) > 0
        assert (report / f"{m}_evaluation.png").stat().st_size > 1000
    assert (report / "ingest_report.json").exists()
    assert not list(out.glob("*.partial-*"))


def test_held_out_frames_are_not_in_the_fits(full_run, sim):
    tree, out = full_run
    from detflow.io.cmos_raw import open_cmos_section

    bias = open_cmos_section(out / "stores" / "bias.zarr")
    held = holdout_mask(bias, 5)
    # 4 set points x 2 attempts x 5 frames: one frame in 5 of each (set point) group
    assert held.sum() == bias.sizes["frame"] // 5
    eval_paths = set(map(str, tree["bias_eval"]["path"].values))
    assert eval_paths == set(map(str, bias["path"].values[held]))
    assert tree["bias_model"].attrs["nframes"] == len(bias["path"]) - held.sum()  # the fit saw only the others


def test_bias_model_recovers_the_truth_and_synthesizes(full_run, sim):
    tree, _ = full_run
    truth = sim.truth
    m = tree["bias_model"].to_dataset().compute()
    from scipy import stats

    dof = m.sizes["temp_group"] - 2  # one master per set point (the logged temperatures jitter about it)
    assert m.sizes["temp_group"] == len(CFG.temps)
    for name in ("a", "b"):
        pull = (m[name].values - truth[f"bias_{name}"]) / m[f"{name}_err"].values
        assert np.isfinite(pull).all(), name
        # Student-t pulls with `dof` degrees of freedom (the errors come from the residuals)
        assert abs(np.median(pull)) < 0.1, name
        assert 0.85 < np.median(np.abs(pull)) / stats.t(dof).ppf(0.75) < 1.15, name
    syn = tree["synthetic"]["bias"].sel(temp=15.0).values
    expect = truth["bias_a"] + truth["bias_b"] * 15.0
    assert np.abs(syn - expect).mean() < 0.5  # DN; read noise 2 DN / sqrt(~30 frames) per pixel
    assert np.corrcoef(syn.ravel(), expect.ravel())[0, 1] > 0.99


def test_dark_model_finds_the_hot_pixels(full_run, sim):
    tree, _ = full_run
    hot = tree["dark_model"]["hot"].values.astype(bool)
    truth = np.asarray(sim.truth["hot"], bool)
    assert (hot & truth).sum() >= 0.9 * truth.sum() and (hot & ~truth).sum() <= 2
    rate = tree["synthetic"]["dark_rate"].sel(temp=15.0, exptime=1.0).values
    A, B = np.asarray(sim.truth["dark_A"]), np.asarray(sim.truth["dark_B"])
    want = A * np.exp(B * (15.0 - min(CFG.temps)))
    assert np.median(np.abs(rate[truth] / want[truth] - 1)) < 0.1


def test_cli_ingest_then_fit_synthesize_evaluate(sim, cluster, tmp_path):
    runner = CliRunner()
    addr = ["--scheduler", cluster.scheduler.address, "--no-progress"]
    stores = tmp_path / "stores"
    res = runner.invoke(app, ["cmos", "ingest", str(sim.roots["BIAS"]), str(sim.roots["DARK"]), str(sim.roots["FLAT"]),
                              "--out", str(stores), "--data-scale", "16", "--skip-flat", *addr])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (stores / "bias.zarr").exists() and (stores / "dark.zarr").exists() and not (stores / "flat.zarr").exists()
    assert (stores / "fits_index.csv").exists()
    # a store records its data_scale: another one is refused, unless --overwrite ingests everything again
    again = ["cmos", "ingest", str(sim.roots["BIAS"]), "--skip-dark", "--skip-flat", "--out", str(stores),
             "--data-scale", "8", *addr]  # fmt: skip
    res = runner.invoke(app, again)
    assert res.exit_code == 2 and "data_scale" in res.output
    res = runner.invoke(app, [*again, "--overwrite"])
    assert res.exit_code == 0, res.output
    assert zarr.open_group(str(stores / "bias.zarr"), path="l1", mode="r").attrs["data_scale"] == 8
    res = runner.invoke(app, [*again[: -len(addr) - 2], "--data-scale", "16", "--overwrite", *addr])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["cmos", "bias", "--stores", str(stores), "--out", str(tmp_path / "bias.zarr"),
                              "--mode", "fit", *addr])  # fmt: skip
    assert res.exit_code == 0, res.output
    fitted = open_store(tmp_path / "bias.zarr")
    assert "bias_model" in fitted.children and "bias_eval" not in fitted.children
    res = runner.invoke(app, ["cmos", "bias", "--stores", str(stores), "--out", str(tmp_path / "syn.zarr"),
                              "--mode", "synthesize", "--model-store", str(tmp_path / "bias.zarr"), "--temp", "3.5",
                              *addr])  # fmt: skip
    assert res.exit_code == 0, res.output
    syn = open_store(tmp_path / "syn.zarr")["synthetic"]["bias"].sel(temp=3.5).values
    m = fitted["bias_model"]
    np.testing.assert_allclose(syn, m["a"].values + 3.5 * m["b"].values, rtol=1e-12)
    res = runner.invoke(app, ["cmos", "bias", "--stores", str(stores), "--out", str(tmp_path / "ev.zarr"),
                              "--mode", "evaluate", "--model-store", str(tmp_path / "bias.zarr"), *addr])  # fmt: skip
    assert res.exit_code == 0, res.output
    ev = open_store(tmp_path / "ev.zarr")["bias_eval"]
    assert ev.sizes["frame"] == open_store(stores / "bias.zarr")["l1"].sizes["frame"]  # every frame evaluated
    assert (tmp_path / "ev_report" / "bias_evaluation.csv").exists()


def test_yaml_job_with_relative_paths(sim, cluster, tmp_path):
    raw = tmp_path / "campaign"
    shutil.copytree(sim.roots["BIAS"], raw / "TestSection1")
    job = {"pipeline": "cmos", "stores": "stores", "output": "bias_model.zarr", "models": ["bias"], "mode": "fit",
           "ingest": {"bias": "campaign/TestSection1", "data_scale": 16}}  # fmt: skip
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    res = CliRunner().invoke(app, ["validate", str(path)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["run", str(path), "--scheduler", cluster.scheduler.address, "--no-progress"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "stores" / "bias.zarr").exists() and (tmp_path / "bias_model.zarr").exists()


def test_bad_inputs_write_nothing(sim, cluster, tmp_path):
    with pytest.raises(DetflowInputError, match="bias.zarr: stores: expected the bias section store"):
        detflow.run({"pipeline": "cmos", "stores": str(tmp_path / "none"), "output": str(tmp_path / "m.zarr"),
                     "models": ["dark"]}, cluster, progress=False)  # fmt: skip
    assert not (tmp_path / "m.zarr").exists()
    with pytest.raises(DetflowInputError, match="model_store"):
        detflow.run({"pipeline": "cmos", "stores": str(tmp_path), "output": str(tmp_path / "m.zarr"),
                     "mode": "synthesize", "synthesize": {"temps": [1.0]}}, cluster, progress=False)  # fmt: skip
    with pytest.raises(DetflowInputError, match="unknown key"):
        detflow.run({"pipeline": "cmos", "stores": str(tmp_path), "output": str(tmp_path / "m.zarr"), "colour": 1})
    # a raw frame of the wrong size: named, nothing ingested, no model store
    bad = tmp_path / "raw"
    shutil.copytree(sim.roots["BIAS"], bad / "TestSection1")
    victim = sorted((bad / "TestSection1").rglob("*.raw"))[3]
    victim.write_bytes(victim.read_bytes()[:-2])
    job = {"pipeline": "cmos", "stores": str(tmp_path / "stores"), "output": str(tmp_path / "m.zarr"),
           "models": ["bias"], "mode": "fit", "ingest": {"bias": str(bad / "TestSection1")}}  # fmt: skip
    with pytest.raises(DetflowInputError, match=victim.name):
        detflow.run(job, cluster, progress=False)
    assert not (tmp_path / "stores" / "bias.zarr").exists() and not (tmp_path / "m.zarr").exists()


def test_cli_analyses_write_maps_and_reports(cluster, tmp_path):
    from detflow.sim.cmos import FlatDefect

    cfg = CmosSimConfig(temps=(0.0, 20.0), n_bias=2, n_dark=2, n_flat=2, flat_exptimes=(0.1,), flat_epochs=5,
                        flat_defects=(FlatDefect(y=40, x=22, radius=4, depth=0.2, first_epoch=2, depth_growth=0.1),),
                        seed=5)  # fmt: skip
    sim = simulate_cmos_tree(tmp_path / "raw", cfg)
    stores = tmp_path / "stores"
    job = {"pipeline": "cmos", "stores": str(stores), "ingest": {k.lower(): str(v) for k, v in sim.roots.items()}}
    assert detflow.run(job, cluster, progress=False) is None  # ingest only
    runner = CliRunner()
    for kind in ("degradation", "structure"):
        res = runner.invoke(app, ["cmos", "analyse", kind, "--stores", str(stores), "--out", str(tmp_path / f"{kind}.zarr"),
                                  "--scheduler", cluster.scheduler.address, "--no-progress"])  # fmt: skip
        assert res.exit_code == 0, res.output
    deg = open_store(tmp_path / "degradation.zarr")["degradation"].to_dataset()
    pixels = pd.read_csv(tmp_path / "degradation_report" / "degradation_pixels.csv")
    yy, xx = np.mgrid[:64, :64]
    inside = np.hypot(yy - 40, xx - 22) <= 4
    flagged = np.zeros((64, 64), bool)
    flagged[pixels["y"], pixels["x"]] = True
    assert flagged[inside].mean() > 0.8 and flagged[~inside].sum() <= 3  # the patch, not the rest
    assert "class_max" in deg
    structs = pd.read_csv(tmp_path / "structure_report" / "structures.csv")
    assert len(structs) >= 1 and np.hypot(structs["centroid_y"] - 40, structs["centroid_x"] - 22).min() < 2
