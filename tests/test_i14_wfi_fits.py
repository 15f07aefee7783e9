"""Issue 14, the generic FITS ramp reader: 4-D (integration, group, y, x) cubes, timing keywords in the
primary header (as JWST keeps them), no reference pixels unless the header says so; end to end through
``detflow run``."""

from __future__ import annotations

import subprocess
import sys

import asdf
import numpy as np
import pytest
import xarray as xr
import yaml
from astropy.io import fits

import detflow
from detflow.errors import DetflowInputError
from detflow.schema import DQ

N, NINT, NGROUP = 64, 2, 6
TFRAME, NFRAMES, GROUPGAP = 10.737, 2, 1
BIAS = 1000.0


def _group_times():
    """Mean time of each group: frame k read at k * TFRAME, the first group starting at frame 1."""
    return np.array([(1 + i * (NFRAMES + GROUPGAP) + (NFRAMES - 1) / 2) * TFRAME for i in range(NGROUP)])


def _jwst_file(path, slope, dtype=np.float32):
    cube = BIAS + slope[None, None] * _group_times()[None, :, None, None] * np.array([1.0, 1.1])[:, None, None, None]
    cube = cube.astype(dtype)
    primary = fits.PrimaryHDU(header=fits.Header({"TELESCOP": "JWST", "TFRAME": TFRAME, "NFRAMES": NFRAMES,
                                                  "GROUPGAP": GROUPGAP, "TGROUP": TFRAME * (NFRAMES + GROUPGAP),
                                                  "SUBARRAY": "SUB64"}))  # fmt: skip
    fits.HDUList([primary, fits.ImageHDU(cube, name="SCI")]).writeto(path)
    return cube


def _caldir(root):
    """References for a 64x64 detector with no reference pixels (identity linearity above BIAS)."""
    root.mkdir(parents=True, exist_ok=True)
    smin, smax = np.full((N, N), BIAS - 100, np.float32), np.full((N, N), 60000, np.float32)
    c = np.zeros((3, N, N), np.float32)
    c[1] = (smax - smin) / 2
    c[0] = smin + (smax - smin) / 2 - BIAS
    refs = {
        "mask": {"dq": np.zeros((N, N), np.uint32)},
        "saturation": {"data": np.full((N, N), 50000, np.float32)},
        "linearitylegendre": {"data": c, "Smin": smin, "Smax": smax, "Sref": np.full((N, N), BIAS, np.float32)},
        "dark": {"dark_slope": np.zeros((N, N), np.float32)},
        "gain": {"data": np.full((N, N), 2.0, np.float32)},
        "read": {"data": np.full((N, N), 5.0, np.float32)},
    }
    out = {}
    for name, tree in refs.items():
        out[name] = str(root / f"{name}.asdf")
        asdf.AsdfFile({"roman": tree}).write_to(out[name])
    return out


def test_jwst_style_cube_runs_end_to_end(tmp_path):
    slope = np.random.default_rng(3).uniform(0.5, 20.0, (N, N)).astype(np.float32)
    path = tmp_path / "jw_uncal.fits"
    cube = _jwst_file(path, slope)
    cube[0, 4, 10, 20] = np.nan  # a missing group late in the ramp: the ramp before it is fitted
    cube[0, 1, 30, 40] = np.nan  # the first used group missing: skipped, the rest fitted (issue 19)
    fits.update(path, cube, "SCI")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "pipeline": "roman_wfi", "input": str(path), "output": str(tmp_path / "l2.zarr"),
        "caldir": _caldir(tmp_path / "cal"), "chunks": {"y": 24, "x": -1},
        "recipe": ["dq_init", "saturation", "refpix", "linearity", "dark_current", "ramp_fit"]}))  # fmt: skip
    r = subprocess.run([sys.executable, "-m", "detflow.cli", "run", str(job), "--workers", "1", "--no-progress"],
                       capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr
    l2 = xr.open_zarr(tmp_path / "l2.zarr", group="l2")
    assert l2["data"].shape == (NINT, N, N)  # no border trimmed
    assert not any(v.startswith("border_ref_pix") for v in l2.data_vars)
    slope_fit, dq = l2["data"].values, l2["dq"].values
    expect = slope[None] * np.array([1.0, 1.1])[:, None, None]
    np.testing.assert_allclose(slope_fit, expect, rtol=1e-4, atol=1e-4)
    assert not np.any(dq & (DQ.DO_NOT_USE | DQ.REFERENCE_PIXEL))
    steps = {s["name"]: s["status"] for s in xr.open_zarr(tmp_path / "l2.zarr").attrs["steps"]}
    assert steps["refpix"] == "SKIPPED" and steps["ramp_fit"] == "COMPLETE"


def test_timing_from_the_primary_header_and_chunked_4d(tmp_path):
    slope = np.random.default_rng(4).uniform(0.5, 20.0, (N, N)).astype(np.float32)
    path = tmp_path / "jw.fits"
    cube = _jwst_file(path, slope, np.uint16)
    ds = detflow.open_l1(path, chunks={"y": 20, "x": 48})
    assert ds.sizes == {"frame": NINT, "read": NGROUP, "y": N, "x": N}
    assert ds["data"].chunks[2] == (20, 20, 20, 4) and ds["data"].chunks[3] == (48, 16)
    np.testing.assert_array_equal(ds["data"].values, cube)
    assert float(ds["frame_time"][0]) == TFRAME
    assert ds["read_first"].values[0].tolist() == [1 + 3 * i for i in range(NGROUP)]
    assert ds["read_nframes"].values[0].tolist() == [NFRAMES] * NGROUP
    assert ds.attrs["nborder"] == 0


def test_frame_time_from_tgroup_and_a_declared_border(tmp_path):
    path = tmp_path / "tg.fits"
    hdr = fits.Header({"TGROUP": 6.0, "NFRAMES": 2, "GROUPGAP": 1, "NBORDER": 4})
    fits.HDUList([fits.PrimaryHDU(header=hdr), fits.ImageHDU(np.zeros((1, 3, 32, 32), np.uint16))]).writeto(path)
    ds = detflow.open_l1(path)
    assert float(ds["frame_time"][0]) == 2.0 and ds.attrs["nborder"] == 4
    assert ds["data"].chunks[2] == (32,)


def test_no_frame_time_anywhere_is_an_error(tmp_path):
    path = tmp_path / "bad.fits"
    fits.HDUList([fits.PrimaryHDU(header=fits.Header({"NFRAMES": 1})),
                  fits.ImageHDU(np.zeros((1, 3, 8, 8), np.uint16))]).writeto(path)  # fmt: skip
    with pytest.raises(DetflowInputError, match="TFRAME"):
        detflow.open_l1(path)
