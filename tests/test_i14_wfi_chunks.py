"""Issue 14, ``chunks``: -1 is the whole axis (as in dask and xarray); nonsense is refused, naming the field."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from conftest import write_tiny_wfi

import detflow
from detflow.errors import DetflowInputError
from detflow.io.chunking import pixel_chunks
from detflow.runtime.job import load_job


def test_minus_one_is_the_whole_axis():
    assert pixel_chunks(6, 256, 256, {"y": -1}) == (256, 256)
    assert pixel_chunks(6, 256, 256, {"y": -1, "x": 64}) == (256, 64)
    assert pixel_chunks(6, 256, 256, {"x": -1, "y": 32}) == (32, 256)
    assert pixel_chunks(6, 256, 128, {"y": 1000}) == (256, 128)


def test_minus_one_makes_one_tile_in_the_graph(tmp_path):
    t = write_tiny_wfi(tmp_path / "t", n=64)
    job = load_job(t["job_yaml"]).model_dump()
    job.update(chunks={"y": -1}, output=str(tmp_path / "o.zarr"))
    l2 = detflow.build(job)["l2"]
    assert l2["data"].chunks[1:] == ((56,), (56,))
    whole = detflow.build(dict(job, chunks={"y": 64, "x": 64}))["l2"]  # the same graph as the explicit size
    assert len(l2["data"].data.__dask_graph__()) == len(whole["data"].data.__dask_graph__())


@pytest.mark.parametrize("chunks", [{"y": 0}, {"y": -2}, {"x": -5}, {"z": 16}, {"frame": 1}, {"y": 1.5},
                                    {"y": "512"}, {"y": True}, {"y": None}, [512]])  # fmt: skip
def test_nonsense_chunks_are_refused(tmp_path, chunks):
    job = {"pipeline": "roman_wfi", "input": "a.asdf", "output": str(tmp_path / "o.zarr"), "caldir": {},
           "chunks": chunks}  # fmt: skip
    with pytest.raises(DetflowInputError, match=r"^\S*: chunks: expected .*(-1|y: rows)"):
        load_job(job)
    with pytest.raises(DetflowInputError, match="chunks"):
        pixel_chunks(6, 64, 64, chunks)


def test_validate_refuses_chunks_in_one_line(tmp_path):
    t = write_tiny_wfi(tmp_path / "t", n=32)
    job = yaml.safe_load(t["job_yaml"].read_text())
    job["chunks"] = {"y": 0}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    r = subprocess.run([sys.executable, "-m", "detflow.cli", "validate", str(path)], capture_output=True, text=True,
                       timeout=300, check=False)  # fmt: skip
    assert r.returncode == 2
    assert f"{path}: chunks: expected y: an int >= 1, or -1 for the whole axis, got {{'y': 0}}" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
