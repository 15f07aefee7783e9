"""One job model: common keys declared once (instruments.base), each instrument's own keys and foreign
spellings in its instrument module, jobs read through the instrument registry."""

from __future__ import annotations

import pytest
import yaml

from detflow.errors import DetflowInputError
from detflow.instruments.base import FramesJob, Job
from detflow.instruments.registry import INSTRUMENTS
from detflow.runtime.job import load_job

EXCAM = {"pipeline": "roman_excam", "input": "l1", "output": "o.zarr"}


def test_every_instrument_job_extends_the_one_model():
    assert set(INSTRUMENTS) == {"roman_wfi", "roman_excam", "cmos", "ccd", "hxrg_ground", "mkid"}
    for name, inst in INSTRUMENTS.items():
        assert issubclass(inst.job, Job) and inst.job.model_fields["pipeline"].default == name
        assert inst.job.model_config["extra"] == "forbid"
    for common in ("output", "overwrite", "cluster", "source"):  # declared once, in the base
        assert all(common in inst.job.model_fields for inst in INSTRUMENTS.values())
    frames = [n for n, inst in INSTRUMENTS.items() if issubclass(inst.job, FramesJob)]
    assert frames == ["roman_wfi", "roman_excam", "ccd", "hxrg_ground"]


def test_excam_step_keys_are_declared_once_by_their_step():
    """The II&T cosmic-ray keys and desmear at the top level are the step's parameters, not job fields."""
    job = load_job(dict(EXCAM, sat_thresh=0.6, cosm_tail="auto", desmear=False,
                        steps={"excam_cosmics": {"plat_thresh": 0.5}}))  # fmt: skip
    assert "sat_thresh" not in type(job).model_fields and "desmear" not in type(job).model_fields
    params = job.step_params()
    assert params["excam_cosmics"] == {"fwc_em_e": 100000.0, "fwc_pp_e": 66850.0, "eperdn": 9.55,
                                       "plat_thresh": 0.5, "sat_thresh": 0.6, "cosm_tail": "auto"}  # fmt: skip
    assert params["excam_desmear"] == {"apply": False}
    with pytest.raises(DetflowInputError, match="sat_thresh once, at the top level or as steps.excam_cosmics"):
        load_job(dict(EXCAM, sat_thresh=0.6, steps={"excam_cosmics": {"sat_thresh": 0.5}}))
    with pytest.raises(DetflowInputError, match=r"steps.excam_cosmics.sat_thresh: .*less than or equal to 1"):
        load_job(dict(EXCAM, sat_thresh=1.5))


def test_a_top_level_step_key_tells_the_pipeline(tmp_path):
    path = tmp_path / "j.yaml"
    path.write_text(yaml.safe_dump({"input": "l1", "output": "o.zarr", "cosm_box": 2}))
    job = load_job(path)
    assert job.pipeline == "roman_excam" and job.step_params()["excam_cosmics"]["cosm_box"] == 2
    assert str(job.output) == str(tmp_path / "o.zarr")  # paths relative to the job file


def test_steps_of_another_family_are_refused():
    with pytest.raises(DetflowInputError, match=r"steps.ramp_fit: expected a step name \(excam_"):
        load_job(dict(EXCAM, steps={"ramp_fit": {}}))
    wfi = {"pipeline": "roman_wfi", "input": "l1", "output": "o.zarr", "caldir": {}}
    with pytest.raises(DetflowInputError, match=r"recipe.1: expected a step name \(.*dq_init"):
        load_job(dict(wfi, recipe=["dq_init", "excam_bias"]))


def test_an_unknown_pipeline_lists_the_instruments():
    with pytest.raises(
        DetflowInputError,
        match="pipeline: expected one of roman_wfi, roman_excam, cmos, ccd, hxrg_ground, mkid, got 'ccd2'",
    ):
        load_job({"pipeline": "ccd2"})
