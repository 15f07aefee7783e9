"""Bad input: one clear error naming the file, the field and what was expected; nothing written."""

from __future__ import annotations

import hashlib

import asdf
import dask.array as da
import numpy as np
import pytest
import xarray as xr
import yaml

from detflow import build, open_l1
from detflow.errors import DetflowInputError, OutputExistsError
from detflow.io.store import StoreWriter
from detflow.runtime.job import load_job


def _sha(p):
    return hashlib.sha256(open(p, "rb").read()).hexdigest()


def test_truncated_asdf(tiny_wfi):
    f = tiny_wfi["files"][0]
    raw = f.read_bytes()
    f.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(DetflowInputError) as e:
        open_l1(f)
    assert str(f) in str(e.value) and "roman.data" in str(e.value)
    with pytest.raises(DetflowInputError):
        build(tiny_wfi["pit_yaml"])
    assert not (tiny_wfi["root"] / "out.zarr").exists()


def test_not_asdf(tiny_wfi):
    f = tiny_wfi["files"][0]
    f.write_bytes(b"this is not an asdf file\n")
    with pytest.raises(DetflowInputError, match="readable ASDF"):
        open_l1(f)


def _rewrite_l1(f, **changes):
    with asdf.open(f) as af:
        tree = {"roman": {"data": np.array(af["roman"]["data"]), "meta": dict(af["roman"]["meta"])}}
    tree["roman"].update(changes)
    asdf.AsdfFile(tree).write_to(f)


def test_wrong_shape(tiny_wfi):
    f = tiny_wfi["files"][0]
    _rewrite_l1(f, data=np.zeros((6, 32, 16), np.uint16))
    with pytest.raises(DetflowInputError, match=r"roman\.data: expected a \(ngroups, n, n\) cube"):
        open_l1(f)


def test_read_pattern_inconsistent_with_cube(tiny_wfi):
    f = tiny_wfi["files"][0]
    with asdf.open(f) as af:
        meta = dict(af["roman"]["meta"])
    meta["exposure"] = dict(meta["exposure"], read_pattern=[[0], [1], [2, 3]])
    _rewrite_l1(f, meta=meta)
    with pytest.raises(DetflowInputError) as e:
        open_l1(f)
    msg = str(e.value)
    assert "read_pattern" in msg and "6 resultants" in msg and "3 resultants" in msg


def test_read_pattern_not_consecutive(tiny_wfi):
    f = tiny_wfi["files"][0]
    with asdf.open(f) as af:
        meta = dict(af["roman"]["meta"])
    meta["exposure"] = dict(meta["exposure"], read_pattern=[[0], [1], [2, 4], [5], [6], [7]])
    _rewrite_l1(f, meta=meta)
    with pytest.raises(DetflowInputError, match="consecutive frame indices"):
        open_l1(f)


def test_missing_caldir_entry(tiny_wfi):
    cfg = yaml.safe_load(tiny_wfi["pit_yaml"].read_text())
    del cfg["CALDIR"]["gain"]
    tiny_wfi["pit_yaml"].write_text(yaml.safe_dump(cfg))
    with pytest.raises(DetflowInputError) as e:
        build(tiny_wfi["pit_yaml"])
    assert "CALDIR.gain" in str(e.value) and str(tiny_wfi["pit_yaml"]) in str(e.value)


def test_reference_wrong_shape(tiny_wfi):
    p = tiny_wfi["caldir"]["gain"]
    asdf.AsdfFile({"roman": {"data": np.ones((16, 16), np.float32)}}).write_to(p)
    with pytest.raises(DetflowInputError) as e:
        build(tiny_wfi["pit_yaml"])
    assert p in str(e.value) and "roman.data" in str(e.value) and "(32, 32)" in str(e.value)


def test_unknown_key_native_and_pit(tiny_wfi):
    cfg = yaml.safe_load(tiny_wfi["job_yaml"].read_text())
    cfg["steps"] = {"ramp_fit": {"slpoe": 1.0}}
    tiny_wfi["job_yaml"].write_text(yaml.safe_dump(cfg))
    with pytest.raises(DetflowInputError) as e:
        load_job(tiny_wfi["job_yaml"])
    assert "slpoe" in str(e.value) and str(tiny_wfi["job_yaml"]) in str(e.value)

    cfg = yaml.safe_load(tiny_wfi["job_yaml"].read_text())
    cfg.pop("steps")
    cfg["outptu"] = "x.zarr"
    tiny_wfi["job_yaml"].write_text(yaml.safe_dump(cfg))
    with pytest.raises(DetflowInputError, match="outptu: expected a known key"):
        load_job(tiny_wfi["job_yaml"])

    pit = yaml.safe_load(tiny_wfi["pit_yaml"].read_text())
    pit["SKYORDR"] = 2
    tiny_wfi["pit_yaml"].write_text(yaml.safe_dump(pit))
    with pytest.raises(DetflowInputError, match="SKYORDR"):
        load_job(tiny_wfi["pit_yaml"])


def test_output_exists(tiny_wfi):
    out = tiny_wfi["root"] / "out.zarr"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(OutputExistsError, match="out.zarr: output"):
        StoreWriter(out)
    assert (out / "keep.txt").read_text() == "precious"


def test_failed_write_leaves_nothing(tmp_path):
    def boom(block):
        if block.sum() > 0:
            raise RuntimeError("disk on fire")
        return block

    arr = da.ones((8, 8), chunks=4).map_blocks(boom, dtype=float)
    ds = xr.Dataset({"a": (("y", "x"), arr)})
    out = tmp_path / "fail.zarr"
    with pytest.raises(RuntimeError, match="disk on fire"):
        with StoreWriter(out) as w:
            w.add("g", ds).compute(scheduler="sync")
            w.commit()
    assert list(tmp_path.iterdir()) == []  # neither the store nor its partial sibling


def test_inputs_never_modified(tiny_wfi):
    before = {str(p): _sha(p) for p in [*tiny_wfi["files"], *tiny_wfi["caldir"].values()]}
    products = build(tiny_wfi["pit_yaml"])
    products["l2"].compute(scheduler="sync")
    after = {p: _sha(p) for p in before}
    assert before == after


def test_damaged_exposure_fails_the_job_unless_on_error_skip(tmp_path):
    """A poison input in a multi-exposure WFI job: by default the job fails with that file's error and
    writes nothing; with ``on_error: skip`` it finishes without it and the store lists the file."""
    from conftest import write_tiny_wfi

    import detflow

    d = write_tiny_wfi(tmp_path / "three", nexp=3)
    bad = d["files"][1]
    raw = bad.read_bytes()
    bad.write_bytes(raw[: len(raw) // 2])
    strict = load_job(d["job_yaml"])
    assert strict.on_error == "raise"
    with pytest.raises(DetflowInputError, match="roman.data") as e:
        detflow.run(strict, progress=False)
    assert str(bad) in str(e.value) and not strict.output.exists()
    job = strict.model_copy(update={"on_error": "skip"})
    tree = detflow.run(job, progress=False)
    l2 = tree["l2"]
    assert l2.sizes["frame"] == 2
    skipped = tree.attrs["skipped_inputs"]
    assert [s["file"] for s in skipped] == [str(bad)] and skipped[0]["field"] == "roman.data"
    assert [i["path"] for i in l2.attrs["inputs"]] == [str(d["files"][0]), str(d["files"][2])]
    # the good exposures are calibrated as in a run without the damaged one
    alone = detflow.run(job.model_copy(update={"input": [str(d["files"][0]), str(d["files"][2])],
                                               "output": tmp_path / "alone.zarr"}), progress=False)  # fmt: skip
    xr.testing.assert_equal(l2["data"], alone["l2"]["data"])
