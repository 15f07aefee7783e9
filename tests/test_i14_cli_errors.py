"""Bad jobs through the command line: exit status 2, one line per error (every error, not only the first),
no traceback; a job without ``pipeline:`` goes to the pipeline its keys belong to, or is refused."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from detflow.cli import app
from detflow.errors import DetflowInputError
from detflow.instruments.roman_excam_job import ExcamJob
from detflow.runtime.job import load_job

PIT = {"IN": "l1.asdf", "OUT": "out.zarr", "CALDIR": {"dark": "dark.asdf"}}


def _validate(path):
    res = CliRunner().invoke(app, ["validate", str(path)])
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    return res, lines


def _check(res, lines, path, expected: list[str]):
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert isinstance(res.exception, SystemExit)  # typer.Exit(2), no other exception escaped
    assert "Traceback" not in res.output
    assert len(lines) == len(expected), lines  # one line per error, nothing else
    assert all(line.startswith("error: ") and str(path) in line for line in lines), lines
    for want in expected:
        assert sum(want in line for line in lines) == 1, (want, lines)


CASES = {
    "ramp_opt_pars_text": (dict(PIT, RAMP_OPT_PARS={"gain": "fast"}),
                           ["RAMP_OPT_PARS.gain: expected a number, got 'fast'"]),
    "ramp_opt_pars_scalar": (dict(PIT, RAMP_OPT_PARS=3.0), ["RAMP_OPT_PARS: expected a mapping"]),
    "skyorder_text": (dict(PIT, SKYORDER="two"), ["SKYORDER: expected an integer"]),
    "caldir_list": (dict(PIT, CALDIR=["dark.asdf"]), ["CALDIR: expected a mapping of reference names to file paths"]),
    "pipeline_unknown": ({"pipeline": "ccd2", "input": "l1", "output": "o.zarr"},
                         ["pipeline: expected one of roman_wfi, roman_excam, cmos, ccd, hxrg_ground, mkid, got 'ccd2'"]),
    "pit_several": (dict(PIT, CALDIR=["dark.asdf"], SKYORDER="x", RAMP_OPT_PARS={"gain": "fast", "speed": 1}),
                    ["CALDIR: expected a mapping", "SKYORDER: expected an integer",
                     "RAMP_OPT_PARS.gain: expected a number",
                     "RAMP_OPT_PARS.speed: expected slope, gain or sigma_read, got unknown key"]),
    "native_several": ({"pipeline": "roman_wfi", "input": "l1", "output": "o.txt", "caldir": {}, "bogus": 1,
                        "on_error": "maybe", "steps": {"ramp_fit": {"slpoe": 1.0}, "nope": {}}},
                       ["output: expected a .zarr store", "on_error: expected one of raise, skip, got 'maybe'",
                        "bogus: expected a known key", "steps.ramp_fit.slpoe: expected a known key",
                        "steps.nope: expected a step name"]),
    "excam_several": ({"pipeline": "roman_excam", "input": "l1", "output": "o.zarr", "median_filter_mode": 5,
                       "sat_thresh": 2, "cosm_box": "big"},
                      ["median_filter_mode: expected one of 0, 1, 2, got 5",
                       "sat_thresh: expected less than or equal to 1", "cosm_box: expected a valid integer"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_bad_job_gives_one_line_per_error_and_status_2(tmp_path, case):
    job, expected = CASES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(yaml.safe_dump(job))
    _check(*_validate(path), path, expected)


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("pipeline: roman_wfi\ninput: l1\n  output: o.zarr\ncaldir: {}\n")
    res, lines = _validate(path)
    _check(res, lines, path, ["YAML line 3, column 9: expected valid YAML, got mapping values are not allowed here"])
    path.write_text("pipeline: roman_wfi\ninput: [a, b\n")
    res, lines = _validate(path)
    _check(res, lines, path, ["YAML line 3"])


def test_run_gives_the_same_lines(tmp_path):
    job, expected = CASES["pit_several"]
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    res = CliRunner().invoke(app, ["run", str(path), "--no-progress"])
    _check(res, [line for line in res.stderr.splitlines() if line.strip()], path, expected)


def test_excam_job_without_pipeline_or_detector_keys_is_an_excam_job(tmp_path):
    """Before: routed to the WFI pipeline ('caldir: expected a value')."""
    path = tmp_path / "excam.yaml"
    path.write_text(yaml.safe_dump({"input": "l1", "output": "o.zarr", "flatfield_filepath": "flat.fits",
                                    "cosm_tail": 12}))  # fmt: skip
    job = load_job(path)
    assert (
        isinstance(job, ExcamJob)
        and job.step_params()["excam_cosmics"]["cosm_tail"] == 12
        and job.flatfield_filepath == tmp_path / "flat.fits"
    )
    assert load_job({"input": "l1", "output": "o.zarr", "desmear": False}).pipeline == "roman_excam"
    assert load_job({"stores": "s", "ingest": {"bias": "b"}}).pipeline == "cmos"


def test_a_job_that_names_no_pipeline_is_refused_with_what_each_needs(tmp_path):
    path = tmp_path / "which.yaml"
    path.write_text(yaml.safe_dump({"input": "l1", "output": "o.zarr"}))
    res, lines = _validate(path)
    _check(res, lines, path, ["pipeline: expected a pipeline key or the keys of one pipeline"])
    for needs in ("roman_wfi (input, output, caldir)", "roman_excam (", "cmos (stores", "PIT gen_cal_image"):
        assert needs in lines[0]
    with pytest.raises(DetflowInputError, match="keys of several: roman_wfi: caldir; roman_excam: eperdn"):
        load_job({"input": "l1", "output": "o.zarr", "caldir": {}, "eperdn": 8.0})


def test_all_or_nothing_is_read_as_on_error(tmp_path):
    base = {"pipeline": "roman_excam", "input": "l1", "output": "o.zarr"}
    assert load_job(dict(base, all_or_nothing=True)).on_error == "raise"
    assert load_job(dict(base, all_or_nothing=False)).on_error == "skip"
    assert load_job(base).on_error == "raise"  # the default: a damaged input fails the job
    with pytest.raises(DetflowInputError, match="on_error only"):
        load_job(dict(base, all_or_nothing=False, on_error="raise"))
