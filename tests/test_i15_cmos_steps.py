"""The CMOS model builders are registered steps of family ``cmos`` (issue 15, "Steps by operation"): each
reduces ``frame``; a job's ``steps:`` sets their parameters, validated like every family's; the job's
``bias``/``dark``/``flat`` blocks are the same parameters (declared once, by the step)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import yaml
from distributed import Client, LocalCluster
from typer.testing import CliRunner

import detflow
from detflow.calib.cmos import build_bias_model, build_dark_model
from detflow.cli import app
from detflow.errors import DetflowInputError
from detflow.instruments.cmos_job import CmosJob
from detflow.io.cmos_raw import open_cmos_section
from detflow.runtime.job import load_job
from detflow.sim.cmos import CmosSimConfig, simulate_cmos_tree
from detflow.steps.catalog import family_steps

CFG = CmosSimConfig(n_bias=2, n_dark=3, n_flat=2, temps=(0.0, 10.0, 20.0), seed=5)
HOT_K = 1.0  # far below the default 5: normal pixels pass the hot test too (the simulated hot ones stand out)


@pytest.fixture(scope="module")
def client():
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as lc,
        Client(lc) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def runs(client, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmos_steps")
    sim = simulate_cmos_tree(out / "raw", CFG)
    stores = out / "stores"
    job = {"pipeline": "cmos", "stores": str(stores), "mode": "fit", "models": ["dark"]}
    plain = detflow.run({**job, "output": str(out / "plain.zarr"),
                         "ingest": {k.lower(): str(v) for k, v in sim.roots.items() if k != "FLAT"}},
                        client, progress=False)  # fmt: skip
    steps = {"dark_model": {"hot_k": HOT_K}}
    tuned = detflow.run({**job, "output": str(out / "tuned.zarr"), "steps": steps}, client, progress=False)
    return out, plain, tuned


def test_the_model_builders_are_cmos_steps_that_reduce_frames():
    steps = family_steps("cmos")
    assert {"bias_model", "dark_model", "flat_model", "bias_eval", "dark_eval", "flat_eval"} <= set(steps)
    assert all(s.kind == "reduce" and s.reduces == "frame" for s in steps.values())
    # the job's blocks are the steps' parameters: one declaration
    for block, step in (("bias", "bias_model"), ("dark", "dark_model"), ("flat", "flat_model")):
        assert CmosJob.model_fields[block].annotation is steps[step].params


def test_a_dark_model_override_changes_the_product(runs):
    out, plain, tuned = runs
    a, b = plain["dark_model"].to_dataset(), tuned["dark_model"].to_dataset()
    assert int(b["hot"].sum()) > 2 * int(a["hot"].sum()) > 0
    assert (b["hot_threshold"].values < a["hot_threshold"].values).all()
    for name in ("rate", "rate_err"):
        np.testing.assert_array_equal(a[name].values, b[name].values)  # the rates do not depend on hot_k
    xr.testing.assert_equal(plain["bias_model"].to_dataset(), tuned["bias_model"].to_dataset())  # untouched
    # the product is the builder's with that parameter, from the same section stores
    bias = build_bias_model(open_cmos_section(out / "stores" / "bias.zarr"))
    want = build_dark_model(open_cmos_section(out / "stores" / "dark.zarr"), bias, hot_k=HOT_K).compute()
    for name in ("hot", "hot_threshold", "A", "B", "gamma"):
        np.testing.assert_array_equal(b[name].values, want[name].values, err_msg=name)
    assert not np.array_equal(a["A"].values, b["A"].values)  # more pixels fitted one by one
    # the step is recorded with its parameters, in its group and at the root
    rec = tuned["dark_model"].attrs["steps"]
    assert [s["name"] for s in rec] == ["dark_model"] and rec[0]["params"]["hot_k"] == HOT_K
    assert [s["name"] for s in tuned.attrs["steps"]] == ["bias_model", "dark_model"]
    assert plain["dark_model"].attrs["steps"][0]["params"]["hot_k"] == 5.0


def test_the_dark_block_and_steps_dark_model_are_one_parameter_set(tmp_path):
    base = {"pipeline": "cmos", "stores": str(tmp_path), "output": str(tmp_path / "m.zarr")}
    block = load_job(dict(base, dark={"hot_k": HOT_K}))
    step = load_job(dict(base, steps={"dark_model": {"hot_k": HOT_K}}))
    assert block.step_params()["dark_model"] == step.step_params()["dark_model"]
    assert step.step_params()["dark_model"]["hot_k"] == HOT_K
    with pytest.raises(DetflowInputError, match="dark.hot_k once, in the dark block or as steps.dark_model.hot_k"):
        load_job(dict(base, dark={"hot_k": 3.0}, steps={"dark_model": {"hot_k": 4.0}}))
    with pytest.raises(DetflowInputError, match=r"steps.ramp_fit: expected a step name \(bias_eval, bias_model"):
        load_job(dict(base, steps={"ramp_fit": {}}))
    with pytest.raises(DetflowInputError, match=r"steps.dark_model.hot_k: .*greater than 0"):
        load_job(dict(base, steps={"dark_model": {"hot_k": -1}}))


@pytest.mark.parametrize("command", ["validate", "run"])
def test_an_unknown_step_parameter_is_one_line_exit_2(tmp_path, command):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"pipeline": "cmos", "stores": str(tmp_path / "stores"),
                                   "output": str(tmp_path / "m.zarr"), "steps": {"dark_model": {"hot_kk": 3}}}))  # fmt: skip
    res = CliRunner().invoke(app, [command, str(job)])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {job}: steps.dark_model.hot_kk: expected a known key, got unknown key"], lines
    assert not (tmp_path / "m.zarr").exists()
