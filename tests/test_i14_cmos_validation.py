"""Issue 14: a CMOS ingest validates every frame's metadata (finite temperatures, exposure times > 0, finite
logged numbers) before anything is written, naming the file and the field; the corrected tree then ingests,
also through ``detflow run`` (a job that once wrote the section stores and failed for ever after)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import dask
import numpy as np
import pytest
import yaml
import zarr
from typer.testing import CliRunner

from detflow.cli import app
from detflow.errors import DetflowInputError
from detflow.io.cmos_raw import ingest_tree, open_cmos_section
from detflow.sim.cmos import CmosSimConfig, simulate_cmos_tree

TEMP_COLUMNS = ("Temperature", "CCDTemp", "CCD_Temp", "CCDTemperature", "ChipTemp")


@pytest.fixture(autouse=True)
def _threads():
    with dask.config.set(scheduler="threads", num_workers=2):
        yield


def _edit_log(log: Path, framenum: int, column: str | tuple[str, ...], value: str) -> tuple[str, int]:
    """Set ``column`` of the row of ``framenum`` to ``value`` (the text as the log writes it); return the
    column's name and the row's line number."""
    text = log.read_text()
    delim = csv.Sniffer().sniff(text.splitlines()[0], delimiters=",;\t").delimiter
    rows = list(csv.reader(io.StringIO(text), delimiter=delim))
    names = (column,) if isinstance(column, str) else column
    j = next(i for i, c in enumerate(rows[0]) if c in names)
    i = next(i for i, r in enumerate(rows) if r and r[0] == str(framenum))
    rows[i][j] = value
    log.write_text("\n".join(delim.join(r) for r in rows) + "\n")
    return rows[0][j], i + 1


def _nothing_written(out: Path) -> bool:
    return not out.exists() or not any(out.iterdir())


@pytest.fixture
def tree(tmp_path):
    return simulate_cmos_tree(
        tmp_path / "raw",
        CmosSimConfig(
            temps=(0.0, 10.0, 20.0), seed=7, n_bias=2, n_dark=2, n_flat=2, dark_exptimes=(0.5,), flat_exptimes=(0.1,)
        ),
    )


def _log_of(frame) -> Path:
    return frame.path.parent.parent / "temperatureLog.csv"


def test_nan_temperature_refused_before_writing_then_the_fixed_tree_ingests(tree, tmp_path):
    victim = tree.frames_of("BIAS")[3]
    log = _log_of(victim)
    original = log.read_text()
    col, line = _edit_log(log, victim.meta["framenum"], TEMP_COLUMNS, "nan")
    out = tmp_path / "stores"
    with pytest.raises(DetflowInputError) as e:
        ingest_tree(tree.roots["BIAS"], tree.roots["DARK"], tree.roots["FLAT"], out, data_scale=16)
    err = e.value
    assert err.file == str(log) and err.field == f"{col} (line {line})", str(err)
    assert "finite" in str(err) and "'nan'" in str(err) and "\n" not in str(err)
    assert _nothing_written(out)  # no section store, no index, no partial
    log.write_text(original)  # the log fixed: the same call ingests
    rep = ingest_tree(tree.roots["BIAS"], tree.roots["DARK"], tree.roots["FLAT"], out, data_scale=16)
    assert rep.ingested == {"BIAS": 12, "DARK": 6, "FLAT": 6} and not rep.skipped
    temps = open_cmos_section(rep.stores["BIAS"])["temp"].values
    assert np.isfinite(temps).all() and victim.meta["temp"] in temps


CASES = {  # name: (section, frame index, column(s), value, field starts with, expected in the message)
    "empty_temperature": ("DARK", 1, TEMP_COLUMNS, "", None, "finite detector temperature"),
    "inf_temperature": ("FLAT", 0, TEMP_COLUMNS, "inf", None, "finite"),
    "zero_dark_exposure": ("DARK", 0, "ExpTime", "0", "ExpTime", "> 0"),
    "negative_bias_exposure": ("BIAS", 0, "ExpTime", "-5", "ExpTime", ">= 0"),
    "inf_external_temperature": ("BIAS", 2, "ExtTemperature", "inf", "ExtTemperature", "finite number"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_metadata_named_before_writing_and_skip_lists_it(tree, tmp_path, case):
    section, k, column, value, field, words = CASES[case]
    with_exptime = [f for f in tree.frames_of(section) if not math.isnan(f.meta["rexptime"])]  # logs with ExpTime
    victim = (with_exptime if column == "ExpTime" else tree.frames_of(section))[k]
    log = _log_of(victim)
    col, line = _edit_log(log, victim.meta["framenum"], column, value)
    out = tmp_path / "stores"
    roots = (tree.roots["BIAS"], tree.roots["DARK"], tree.roots["FLAT"])
    with pytest.raises(DetflowInputError) as e:
        ingest_tree(*roots, out)
    err = e.value
    assert err.file == str(log) and err.field == f"{field or col} (line {line})", str(err)
    assert words in str(err) and repr(value) in str(err)
    assert _nothing_written(out)
    rep = ingest_tree(*roots, out, on_error="skip")
    assert [s["path"] for s in rep.skipped] == [str(victim.path)] and rep.skipped[0]["file"] == str(log)
    assert str(victim.path) not in set(map(str, open_cmos_section(rep.stores[section])["path"].values))


def test_missing_exposure_taken_from_the_folder_else_refused(tree, tmp_path):
    victim = next(f for f in tree.frames_of("FLAT") if not math.isnan(f.meta["rexptime"]))
    _edit_log(_log_of(victim), victim.meta["framenum"], "ExpTime", "nan")  # missing: the <t>s folder says 0.1 s
    rep = ingest_tree(None, None, tree.roots["FLAT"], tmp_path / "out")
    ds = open_cmos_section(rep.stores["FLAT"])
    assert ds["exptime"].values[list(map(str, ds["path"].values)).index(str(victim.path))] == 0.1


def test_no_exposure_anywhere_and_no_temperature_column(tmp_path):
    cfg = CmosSimConfig(temps=(0.0,), bias_attempts=1, n_bias=2, dark_exptimes=(0.5,), n_dark=2,
                        flat_exptimes=(0.1,), n_flat=2)  # fmt: skip
    sim = simulate_cmos_tree(tmp_path / "raw", cfg)
    dark = sim.frames_of("DARK")[0]
    log = _log_of(dark)
    rows = log.read_text().splitlines()
    delim = next(d for d in (",", ";", "\t") if d in rows[0])
    header = rows[0].split(delim)
    keep = [i for i, c in enumerate(header) if c not in ("ExpTime", "RealExpTime")]
    log.write_text("\n".join(delim.join(r.split(delim)[i] for i in keep) for r in rows) + "\n")
    for f in sim.frames_of("DARK"):  # f<N>_exp0.5s_T0.0.raw -> frame<N>.raw
        f.path.rename(f.path.with_name(f"frame{f.meta['framenum']}.raw"))
    folder = dark.path.parent.parent.parent  # the <t>s folder: renamed, so nothing says the exposure
    folder.rename(folder.with_name("long"))
    with pytest.raises(DetflowInputError) as e:
        ingest_tree(None, sim.roots["DARK"], None, tmp_path / "out")
    assert e.value.field == "ExpTime (line 2)" and e.value.got == "none" and "long" in e.value.file
    bias_log = _log_of(sim.frames_of("BIAS")[0])
    text = bias_log.read_text()
    for c in TEMP_COLUMNS:
        text = text.replace(c + ",", "Other,", 1).replace(c + ";", "Other;", 1).replace(c + "\t", "Other\t", 1)
    bias_log.write_text(text)
    with pytest.raises(DetflowInputError) as e:
        ingest_tree(sim.roots["BIAS"], None, None, tmp_path / "out")
    assert e.value.file == str(bias_log) and e.value.field == "Temperature" and "Other" in str(e.value)
    assert _nothing_written(tmp_path / "out")


def test_cli_run_refuses_nan_temperature_writes_nothing_and_runs_once_fixed(tree, tmp_path):
    """The issue's case: a job that ingests and fits. Before: the stores were written, the fit failed, and
    every later run failed the same way after the log was fixed."""
    victim = tree.frames_of("BIAS")[0]
    log = _log_of(victim)
    original = log.read_text()
    col, line = _edit_log(log, victim.meta["framenum"], TEMP_COLUMNS, "nan")
    job = {"pipeline": "cmos", "stores": "stores", "output": "bias.zarr", "models": ["bias"], "mode": "fit",
           "ingest": {"bias": str(tree.roots["BIAS"]), "data_scale": 16},
           "cluster": {"n_workers": 1, "threads_per_worker": 2, "dashboard_address": "127.0.0.1:0"}}  # fmt: skip
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    runner = CliRunner()
    res = runner.invoke(app, ["run", str(path), "--no-progress"])
    assert res.exit_code == 2, res.output
    assert f"{log}: {col} (line {line}): expected a finite detector temperature" in " ".join(res.output.split())
    assert not (tmp_path / "stores" / "bias.zarr").exists() and not (tmp_path / "bias.zarr").exists()
    log.write_text(original)
    res = runner.invoke(app, ["run", str(path), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "stores" / "bias.zarr").exists() and (tmp_path / "bias.zarr").exists()


def test_a_store_ingested_before_validation_is_named_and_reingested_with_overwrite(tree, tmp_path):
    """A section store that holds a NaN temperature (written before the ingest validated): the fit names the
    store and the remedy; ``ingest: {overwrite: true}`` ingests every frame again from the (fixed) logs."""
    stores = tmp_path / "stores"
    ingest_tree(tree.roots["BIAS"], None, None, stores, data_scale=16)
    victim = tree.frames_of("BIAS")[2]
    g = zarr.open_group(str(stores / "bias.zarr"), path="l1", mode="r+")
    k = [str(p) for p in g["path"][:]].index(str(victim.path))
    g["temp"][k] = np.nan  # what the old ingest stored from "Temperature = nan"
    job = {"pipeline": "cmos", "stores": str(stores), "output": str(tmp_path / "bias.zarr"), "models": ["bias"],
           "mode": "fit", "ingest": {"bias": str(tree.roots["BIAS"]), "data_scale": 16},
           "cluster": {"n_workers": 1, "threads_per_worker": 2, "dashboard_address": "127.0.0.1:0"}}  # fmt: skip
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    runner = CliRunner()
    res = runner.invoke(app, ["run", str(path), "--no-progress"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and f"{victim.path}: temp as ingested into {stores / 'bias.zarr'}" in text, res.output
    assert "ingest again with overwrite" in text and not (tmp_path / "bias.zarr").exists()
    job["ingest"]["overwrite"] = True
    path.write_text(yaml.safe_dump(job))
    res = runner.invoke(app, ["run", str(path), "--no-progress"])
    assert res.exit_code == 0, res.output
    temps = open_cmos_section(stores / "bias.zarr")["temp"].values
    assert np.isfinite(temps).all() and len(temps) == len(tree.frames_of("BIAS"))
