"""``detflow validate`` tells the truth: steps that have not run are 'planned', CMOS ingest jobs are checked
by the ingest's own checks (nothing written), and what ``run`` refuses (outputs and exports that exist)
``validate`` refuses too."""

from __future__ import annotations

import yaml
from typer.testing import CliRunner

from detflow.cli import app
from detflow.io.exporters import _excam_names, pit_fits_path
from detflow.runtime.job import load_job
from detflow.sim.cmos import CmosSimConfig, simulate_cmos_tree
from detflow.sim.excam import ExcamSimConfig, simulate_excam


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _errors(res) -> list[str]:
    return [line for line in res.stderr.splitlines() if line.startswith("error: ")]


def test_validate_says_planned_for_steps_that_have_not_run(tiny_wfi):
    res = _cli("validate", tiny_wfi["pit_yaml"])
    assert res.exit_code == 0, res.output
    steps = next(line for line in res.stdout.splitlines() if line.startswith("steps: "))
    assert "ramp_fit (planned)" in steps and "dq_init (planned)" in steps
    assert "COMPLETE" not in res.stdout


def test_validate_checks_a_cmos_ingest_job_without_writing(tmp_path):
    sim = simulate_cmos_tree(tmp_path / "raw", CmosSimConfig(height=16, width=16, temps=(0.0, 20.0),
                                                            faults=("bad_size",)))  # fmt: skip
    bad = sim.faults["bad_size"]["file"]
    job = {"pipeline": "cmos", "stores": str(tmp_path / "stores"),
           "ingest": {s.lower(): str(root) for s, root in sim.roots.items()} | {"data_scale": 16}}  # fmt: skip
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    res = _cli("validate", path)  # on_error: raise (default): the bad frame is the error
    assert res.exit_code == 2 and len(_errors(res)) == 1, res.output
    assert _errors(res)[0].startswith(f"error: {bad}: file size: expected")

    job["ingest"]["on_error"] = "skip"
    path.write_text(yaml.safe_dump(job))
    res = _cli("validate", path)
    assert res.exit_code == 0, res.output
    for section, caltype in (("bias", "BIAS"), ("dark", "DARK"), ("flat", "FLAT")):
        n = len(sim.frames_of(caltype))  # the good frames the simulator wrote
        assert f"ok: ingest {section}: {n} new frame(s)" in res.stdout
    assert f"left out (on_error: skip): {bad}: file size" in res.stdout
    assert not (tmp_path / "stores").exists()  # nothing written


def test_validate_refuses_wfi_exports_that_run_refuses(tiny_wfi):
    cfg = yaml.safe_load(tiny_wfi["pit_yaml"].read_text())
    cfg["FITSOUT"] = True
    tiny_wfi["pit_yaml"].write_text(yaml.safe_dump(cfg))
    fits_path = pit_fits_path(cfg["OUT"])
    fits_path.write_text("an earlier export")
    for command in ("validate", "run"):
        res = _cli(command, tiny_wfi["pit_yaml"], *(["--no-progress"] if command == "run" else []))
        assert res.exit_code == 2 and len(_errors(res)) == 1, res.output
        assert _errors(res)[0].startswith(f"error: {fits_path}: output: expected a path that does not exist yet")
    assert fits_path.read_text() == "an earlier export"

    cfg.pop("FITSOUT")
    cfg["OUT"] = str(tiny_wfi["root"] / "l2.asdf")  # the .asdf L2 beside its store
    tiny_wfi["pit_yaml"].write_text(yaml.safe_dump(cfg))
    (tiny_wfi["root"] / "l2.asdf").write_text("an earlier L2")
    res = _cli("validate", tiny_wfi["pit_yaml"])
    assert res.exit_code == 2 and _errors(res)[0].startswith(f"error: {tiny_wfi['root'] / 'l2.asdf'}: output")


def test_validate_refuses_excam_export_name_clashes(tmp_path):
    sim = simulate_excam(tmp_path / "sim", ExcamSimConfig(n_frames=2, seed=2), write_calibs=False)
    export = tmp_path / "fits"
    job = {"pipeline": "roman_excam", "input": str(sim.l1_files[0].parent), "output": str(tmp_path / "out.zarr"),
           "export_dir": str(export)}  # fmt: skip
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    res = _cli("validate", path)
    assert res.exit_code == 0, res.output
    export.mkdir()
    clash = export / _excam_names(load_job(path))[0]  # a file the export would write
    clash.write_text("an earlier export")
    res = _cli("validate", path)
    assert res.exit_code == 2 and len(_errors(res)) == 1, res.output
    assert _errors(res)[0].startswith(f"error: {clash}: export_dir: expected files that do not exist yet")
    path.write_text(yaml.safe_dump(dict(job, overwrite=True)))
    assert _cli("validate", path).exit_code == 0


def test_verbose_logs_the_stages_and_quiet_without(tiny_wfi):
    res = _cli("--verbose", "validate", tiny_wfi["job_yaml"])
    assert res.exit_code == 0, res.output
    info = [line for line in res.stderr.splitlines() if " INFO " in line]
    assert any("inputs: 1 L1 file(s) of 1 detector(s)" in line for line in info), res.stderr
    assert any("graph built: groups l2" in line for line in info), res.stderr
    res = _cli("validate", tiny_wfi["job_yaml"])
    assert res.exit_code == 0 and " INFO " not in res.stderr and "graph built" not in res.stderr
