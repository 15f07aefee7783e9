"""The EXCAM chain fused into one task per chunk of frames (detflow.steps.fusion.fuse_frames) equals the
step-by-step graph bit for bit, with frame-dependent headers (IWA, frame selection) in uneven chunks."""

from __future__ import annotations

import sys
from pathlib import Path

import dask
import numpy as np
import pytest
from astropy.io import fits
from xarray.tests import raise_if_dask_computes

from detflow.instruments import roman_excam
from detflow.instruments.roman_excam_job import ExcamJob
from detflow.instruments.roman_excam_plan import build_excam
from detflow.steps import excam as sx

sys.path.insert(0, str(Path(__file__).parent))
from test_excam_run import _job, write_frames  # noqa: E402

GEOM = roman_excam.GEOMETRIES["SCI"]
CY, CX = 300, 400  # a plateau here in every frame; the frames behind a Lyot stop centre their IWA on it


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> list[Path]:
    files = write_frames(tmp_path_factory.mktemp("fused"), n=7, seed=21)
    r0, c0 = GEOM.image.row0, GEOM.image.col0
    for k, f in enumerate(files):
        with fits.open(f, mode="update") as hdul:
            h = hdul[1].header
            hdul[1].data[r0 + CY, c0 + CX - 2 : c0 + CX + 2] = 14000
            if k in (2, 5):  # behind the Lyot stop: the IWA is left out of these frames' search only
                h.update(LSAMNAME="NFOV", CFAMNAME="1F", DPAMNAME="IMAGING", EACQ_ROW=CY, EACQ_COL=CX)
            h["Z2VAR"] = 5.0 if k in (1, 4) else 0.1  # tip-tilt rms: frames 1 and 4 rejected
            h["OVEREXP"] = k == 6
            h["HIERARCH DET_TEMP_C"] = -90.0 if k != 3 else -70.0  # outside header_range: frame 3 rejected
    return files


@pytest.fixture(scope="module")
def maps(tmp_path_factory) -> dict[str, str]:
    """Calibration maps on the image area: noise maps, a master dark and a flat with ERR extensions
    (the flat 0 on a few pixels), a bad-pixel map."""
    root = tmp_path_factory.mktemp("fused_maps")
    rng = np.random.default_rng(5)
    shape = (GEOM.image.rows, GEOM.image.cols)
    flat = rng.normal(1.0, 0.05, shape)
    flat[100, 200:210] = 0
    images = {"fixed_pattern_noise": (rng.normal(0, 20, shape), None), "dark_current_map": (rng.random(shape) * 0.01, None),
              "EXCAM_clock_induced_charge": (rng.random(shape) * 0.02, None),
              "master_dark_filepath": (rng.normal(3, 1, shape), rng.random(shape) * 0.1),
              "flatfield_filepath": (flat, rng.random(shape) * 0.01),
              "badpix_filepath": ((rng.random(shape) < 0.001).astype(np.float64), None)}  # fmt: skip
    out = {}
    for key, (data, err) in images.items():
        hdus = [fits.PrimaryHDU(), fits.ImageHDU(data, name="SCI")] + (
            [fits.ImageHDU(err, name="ERR")] if err is not None else []
        )
        fits.HDUList(hdus).writeto(root / f"{key}.fits")
        out[key] = str(root / f"{key}.fits")
    return out


def _computed(job: ExcamJob, fused: bool) -> dict:
    products = build_excam(job, fused=fused)[0]
    names = [(g, v) for g, ds in products.items() for v in ds.data_vars]
    values = dask.compute(*[products[g][v].data for g, v in names], scheduler="sync")
    return dict(zip(names, values)), products


@pytest.mark.parametrize("per_task,cal", [(3, "none"), (7, "none"), (3, "noise_maps"), (4, "master")])
def test_fused_chain_equals_the_step_graph(frames, maps, tmp_path, per_task, cal):
    keys = {"none": [], "noise_maps": ["fixed_pattern_noise", "dark_current_map", "EXCAM_clock_induced_charge",
                                       "flatfield_filepath", "badpix_filepath"],
            "master": ["master_dark_filepath", "flatfield_filepath", "badpix_filepath"]}[cal]  # fmt: skip
    job = ExcamJob(**_job(tmp_path, frames[0].parent, frames_per_task=per_task, **{k: maps[k] for k in keys},
                          steps={"excam_frame_select": {"tt_rms_thres": 1.0, "overexp": True,
                                                        "header_range": {"DET_TEMP_C": [None, -80.0]}}}))  # fmt: skip
    fused, fprod = _computed(job, True)
    steps, sprod = _computed(job, False)
    assert fused.keys() == steps.keys()
    for key in steps:
        assert fused[key].dtype == steps[key].dtype, key
        np.testing.assert_array_equal(fused[key], steps[key], err_msg=str(key))
    # the records, coordinates and chunks are the step graph's
    statuses = {s["name"]: s["status"] for s in sprod["l2b"].attrs["steps"]}
    for step in ("excam_dark", "excam_flat"):
        assert statuses[step] == ("SKIPPED" if cal == "none" else "COMPLETE"), step
    for name in sprod:
        assert fprod[name].attrs["steps"] == sprod[name].attrs["steps"]
        assert fprod[name]["data"].chunks == sprod[name]["data"].chunks
        np.testing.assert_array_equal(fprod[name]["source_file"].values, sprod[name]["source_file"].values)
    # the frame-dependent headers took effect in the right frames
    rejected = fused[("l2b", "rejected")]
    assert [k for k in range(7) if rejected[k] & sx.REJECT["tip_tilt_rms"]] == [1, 4]
    assert [k for k in range(7) if rejected[k] & sx.REJECT["OVEREXP"]] == [6]
    assert [k for k in range(7) if rejected[k] & sx.REJECT["header_range"]] == [3]
    dq = fused[("l2a", "dq")]
    hit = [bool((dq[k, CY, CX - 2 : CX + 2] & int(roman_excam.CORGI_TO_DQ[128])).all()) for k in range(7)]
    assert hit == [True, True, False, True, True, False, True]


def test_header_cards_keep_what_the_steps_read(frames):
    from detflow.io.excam_l1 import open_excam_l1

    ds = open_excam_l1(frames)
    keys = sx.header_keys({"excam_frame_select": {"header_range": {"DET_TEMP_C": [None, 0]}}})
    small = ds.copy()
    small.attrs = dict(ds.attrs, inputs=sx.header_cards(ds.attrs["inputs"], keys))
    for key in sorted(keys):
        assert sx.header_values(small, key) == sx.header_values(ds, key), key
    full = sum(len(t) for i in ds.attrs["inputs"] for t in i["fits_headers"])
    assert sum(len(t) for i in small.attrs["inputs"] for t in i["fits_headers"]) < full / 5


def test_fused_graph_has_one_chain_task_per_chunk(frames, tmp_path):
    job = ExcamJob(**_job(tmp_path, frames[0].parent, frames_per_task=3))
    products = build_excam(job, fused=True)[0]
    graph = dict(products["l2b"]["data"].data.__dask_graph__())
    names = [k[0] if isinstance(k, tuple) else k for k in graph]
    assert sum("run_block" in n for n in names) == 3  # 7 frames in 3 + 3 + 1
    assert not any("_bias_block" in n or "_desmear_block" in n for n in names)  # no step-by-step task left


@pytest.mark.parametrize("fused", [True, False])
def test_building_a_job_computes_nothing(frames, tmp_path, fused):
    """The steps never compute while the graph is built (a driver computing there, on a worker, would not see
    a cancel): the frame coordinates and the nonlinearity table stay in memory, only the frames are lazy."""
    job = ExcamJob(**_job(tmp_path, frames[0].parent, frames_per_task=3))
    assert job.non_linearity_filepath is not None
    with raise_if_dask_computes():
        products = build_excam(job, fused=fused)[0]
    assert "excam_nonlin" in {s["name"] for s in products["l2b"].attrs["steps"] if s["status"] == "COMPLETE"}
