"""Damaged inputs (truncated, junk, cut inside a header): by default the job fails naming the file and why;
with ``on_error: skip`` they are left out and listed on the console and in the exit summary (and the
store's ``skipped_inputs``). Through the command line, with real files."""

from __future__ import annotations

import shutil

import pytest
import yaml
from astropy.io import fits
from conftest import write_tiny_wfi
from typer.testing import CliRunner

from detflow.cli import app
from detflow.io.store import open_store
from detflow.sim.excam import ExcamSimConfig, simulate_excam


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _errors(res) -> list[str]:
    return [line for line in res.stderr.splitlines() if line.startswith("error: ")]


def _job(path, **job):
    path.write_text(yaml.safe_dump(job))
    return path


# ---- Roman WFI: a multi-exposure job -----------------------------------------------------------------------
@pytest.fixture
def wfi(tmp_path):
    d = write_tiny_wfi(tmp_path / "three", nexp=3)
    truncated, junk = d["files"][1], d["files"][2]
    raw = truncated.read_bytes()
    truncated.write_bytes(raw[: len(raw) // 2])  # the data block cut short
    junk.write_bytes(b"#ASDF 1.0.0\nthis is no longer an exposure\n")
    job = dict(yaml.safe_load(d["job_yaml"].read_text()), output=str(tmp_path / "out.zarr"))
    return d, job, truncated, junk


def test_wfi_damaged_exposure_fails_the_job_by_default(wfi, tmp_path):
    d, job, truncated, junk = wfi
    path = _job(tmp_path / "job.yaml", **job)
    for command in ("validate", "run"):
        res = _cli(command, path, *(["--no-progress"] if command == "run" else []))
        assert res.exit_code == 2 and len(_errors(res)) == 1, res.output
        # the file whose damage is found first (its header is read before any data block is checked)
        assert _errors(res)[0].startswith(f"error: {junk}: file: expected a readable ASDF file, got ValueError")
        assert "Traceback" not in res.output
    assert not (tmp_path / "out.zarr").exists()
    path = _job(tmp_path / "job.yaml", **dict(job, input=job["input"][:2]))
    res = _cli("validate", path)
    assert res.exit_code == 2 and len(_errors(res)) == 1, res.output
    assert _errors(res)[0].startswith(f"error: {truncated}: roman.data: expected a complete")


def test_wfi_on_error_skip_lists_each_damaged_exposure_with_its_reason(wfi, tmp_path):
    d, job, truncated, junk = wfi
    path = _job(tmp_path / "job.yaml", **job, on_error="skip")
    res = _cli("run", path, "--no-progress", "--workers", "1")
    assert res.exit_code == 0, res.output
    summary = [line.strip() for line in res.stdout[res.stdout.index("left out 2 damaged input(s)") :].splitlines()[1:]]
    assert f"{truncated}: roman.data: expected a complete (6, 32, 32) uint16 data block, got unreadable" in "".join(
        summary)  # fmt: skip
    assert any(line.startswith(f"{junk}: file: expected a readable ASDF file, got ValueError") for line in summary)
    warnings = [line for line in res.stderr.splitlines() if "left out (on_error: skip)" in line]
    assert len(warnings) == 2 and str(truncated) in res.stderr and str(junk) in res.stderr
    tree = open_store(tmp_path / "out.zarr")
    assert tree["l2"].sizes["frame"] == 1
    assert sorted(s["file"] for s in tree.attrs["skipped_inputs"]) == sorted([str(truncated), str(junk)])


# ---- Roman Coronagraph EXCAM -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def excam_frames(tmp_path_factory):
    sim = simulate_excam(tmp_path_factory.mktemp("excam") / "sim", ExcamSimConfig(n_frames=3, seed=5),
                         write_calibs=False)  # fmt: skip
    return sim.l1_files


@pytest.fixture
def excam(excam_frames, tmp_path):
    l1 = tmp_path / "l1"
    shutil.copytree(excam_frames[0].parent, l1)
    files = sorted(l1.glob("*.fits"))
    data_cut, header_cut = files[1], files[2]
    with fits.open(files[0]) as hdul:
        header_at, data_at = hdul.fileinfo(1)["hdrLoc"], hdul.fileinfo(1)["datLoc"]
    data_cut.write_bytes(data_cut.read_bytes()[: data_at + 1000])  # headers whole, the frame cut short
    header_cut.write_bytes(header_cut.read_bytes()[: header_at + 500])  # cut inside the image HDU's header
    job = {"pipeline": "roman_excam", "input": str(l1), "output": str(tmp_path / "out.zarr")}
    return job, files, data_cut, header_cut


def test_excam_damaged_frame_fails_by_default_naming_it(excam, tmp_path):
    job, _, data_cut, _ = excam
    res = _cli("validate", _job(tmp_path / "job.yaml", **job))
    assert res.exit_code == 2 and len(_errors(res)) == 1, res.output
    assert f"{data_cut}: data: expected" in _errors(res)[0] and "(truncated)" in _errors(res)[0]


def test_excam_on_error_skip_lists_both_damaged_frames(excam, tmp_path):
    """A file cut inside an extension header is left out like any damaged file (it failed the job before)."""
    job, files, data_cut, header_cut = excam
    res = _cli("validate", _job(tmp_path / "job.yaml", **job, on_error="skip"))
    assert res.exit_code == 0, res.output
    assert "ok: group 'l2b'" in res.stdout
    summary = res.stdout[res.stdout.index("left out 2 damaged input(s)") :]
    assert f"{data_cut}: data: expected 5" in summary
    assert f"got a file of {data_cut.stat().st_size} bytes (truncated)" in summary
    assert (f"{header_cut}: header of HDU 1: expected a complete FITS header (2880-byte blocks), got a file of "
            f"{header_cut.stat().st_size} bytes that ends inside it (truncated)") in summary  # fmt: skip
    assert res.stderr.count("left out (on_error: skip)") == 2


def test_excam_every_file_damaged_names_each(excam, tmp_path):
    """Before: 'files: expected at least one readable EXCAM L1 file, got 2 damaged files'."""
    job, _, data_cut, header_cut = excam
    res = _cli("validate", _job(tmp_path / "job.yaml", **dict(job, input=[str(data_cut), str(header_cut)]),
                                on_error="skip"))  # fmt: skip
    assert res.exit_code == 2, res.output
    lines = _errors(res)
    assert len(lines) == 2 and lines[0].startswith(f"error: {data_cut}: data:")
    assert lines[1].startswith(f"error: {header_cut}: header of HDU 1:") and "truncated" in lines[1]
