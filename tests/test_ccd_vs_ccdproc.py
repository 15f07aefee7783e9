"""The ``ccd`` pipeline against ccdproc 2.5.1 on the same frames: a real raw CCD frame shipped with ccdproc
(``a8280271.fits``: uint16, BIASSEC and TRIMSEC in its header) step by step, and a simulated night (bias,
dark, flat and science frames) end to end through the executor, group by group (masters, calibrated
frames, the sigma-clipped combines and their uncertainties)."""

from __future__ import annotations

from pathlib import Path

import astropy.units as u
import ccdproc
import numpy as np
import pytest
import xarray as xr
from astropy.io import fits
from astropy.modeling.models import Polynomial1D
from astropy.nddata import CCDData
from ccdproc.utils.slices import slice_from_string
from distributed import Client, LocalCluster

from detflow.instruments.ccd import parse_section
from detflow.io.ccd_fits import open_ccd_frames
from detflow.runtime.run import run
from detflow.sim.ccd import CcdSimConfig, simulate_ccd
from detflow.steps import ccd as sc

REAL = Path(ccdproc.__file__).parent / "tests" / "data" / "a8280271.fits"
ATOL = 1e-9  # ADU: float64 rounding (frames of ~1000 ADU)


@pytest.fixture(scope="module")
def client():
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as lc,
        Client(lc) as c,
    ):
        yield c


@pytest.mark.parametrize("text", ["[   4:  13,   1: 520]", "[  17: 528,   1: 520]", "[91:100, :]", "[*,1:5]",
                                  "[1:1,2:3]"])  # fmt: skip
def test_sections_read_as_ccdproc_reads_them(text):
    rows, cols = parse_section(text)
    want_rows, want_cols = slice_from_string(text, fits_convention=True)
    a = np.arange(600 * 600).reshape(600, 600)
    np.testing.assert_array_equal(a[rows, cols], a[want_rows, want_cols])


@pytest.mark.parametrize("text", ["4:13,1:520", "[13:4,1:520]", "[0:4,1:5]", "[1:4]", "[a:b,1:2]"])
def test_bad_sections_are_refused(text):
    with pytest.raises(ValueError):
        parse_section(text)


def _ccdproc_overscan(ccd: CCDData, section: str, method: str, model: str) -> CCDData:
    return ccdproc.subtract_overscan(ccd, fits_section=section, median=method == "median", overscan_axis=1,
                                     model=Polynomial1D(0) if model == "constant" else None)  # fmt: skip


@pytest.mark.parametrize("method", ["median", "mean"])
@pytest.mark.parametrize("model", ["per_row", "constant"])
def test_real_frame_overscan_and_trim_equal_ccdproc(method, model):
    header = fits.getheader(REAL)
    ccd = CCDData.read(REAL, unit="adu")
    want = ccdproc.trim_image(_ccdproc_overscan(ccd, header["BIASSEC"], method, model), fits_section=header["TRIMSEC"])
    ds = open_ccd_frames(REAL).load()
    assert ds["biassec"].item() == header["BIASSEC"] and ds["exptime"].item() == pytest.approx(150.04)
    np.testing.assert_array_equal(ds["data"].values[0], ccd.data)  # BZERO applied: uint16 counts
    out = sc.ccd_overscan(ds, None, sc.OverscanParams(method=method, model=model))  # section: BIASSEC
    out = sc.ccd_trim(out, None, sc.TrimParams())  # TRIMSEC
    assert out["data"].shape == (1, *want.data.shape) == (1, 520, 512)
    np.testing.assert_allclose(out["data"].values[0], want.data, rtol=0, atol=ATOL)
    assert [s["status"] for s in out.attrs["steps"]] == ["COMPLETE", "COMPLETE"]


def _read(files, kind):
    return [CCDData.read(f, unit="adu") for f in files if fits.getheader(f)["IMAGETYP"] == kind]


def _combine(ccds, method="median", dev="std") -> CCDData:
    c = ccdproc.Combiner(ccds)
    c.sigma_clipping(low_thresh=3, high_thresh=3, func="median", dev_func=dev)
    return c.median_combine() if method == "median" else c.average_combine()


def _ccdproc_night(files, cfg: CcdSimConfig, method: str, model: str, combine: str, dev: str) -> dict[str, CCDData]:
    """ccdproc's reduction of the simulated night (as its documentation's CCD reduction guide does it)."""
    biassec, trimsec = f"[{cfg.nx + 1}:{cfg.nx + cfg.overscan},1:{cfg.ny}]", f"[1:{cfg.nx},1:{cfg.ny}]"

    def basic(ccd):
        return ccdproc.trim_image(_ccdproc_overscan(ccd, biassec, method, model), fits_section=trimsec)

    out = {"bias": _combine([basic(c) for c in _read(files, "BIAS")], combine, dev)}
    out["dark"] = _combine([ccdproc.subtract_bias(basic(c), out["bias"]) for c in _read(files, "DARK")], combine, dev)

    def dark(ccd):
        return ccdproc.subtract_dark(ccd, out["dark"], data_exposure=ccd.header["EXPTIME"] * u.s,
                                     dark_exposure=cfg.dark_time * u.s, scale=True)  # fmt: skip

    out["flat"] = _combine(
        [dark(ccdproc.subtract_bias(basic(c), out["bias"])) for c in _read(files, "FLAT")], combine, dev
    )
    out["science"] = [ccdproc.flat_correct(dark(ccdproc.subtract_bias(basic(c), out["bias"])), out["flat"])
                      for c in _read(files, "LIGHT")]  # fmt: skip
    out["combined"] = _combine(out["science"], combine, dev)
    return out


@pytest.mark.parametrize("method,model,combine,dev,n", [("median", "per_row", "median", "std", 10),
                                                       ("mean", "constant", "average", "mad_std", 7)])  # fmt: skip
def test_simulated_night_equals_ccdproc_group_by_group(tmp_path, client, method, model, combine, dev, n):
    cfg = CcdSimConfig(ny=48, nx=56, n_science=n)
    files = simulate_ccd(tmp_path / "raw", cfg)["files"]
    job = {"pipeline": "ccd", "input": str(tmp_path / "raw"), "output": str(tmp_path / "out.zarr"), "dtype": "float64",
           "overscan": {"method": method, "model": model}, "frames_per_task": 3,
           "steps": {"ccd_combine": {"method": combine, "stdfunc": dev}}}  # fmt: skip
    run(job, client, progress=False)
    want = _ccdproc_night(files, cfg, method, model, combine, dev)
    got = {g: xr.open_zarr(tmp_path / "out.zarr", group=g) for g in
           ("master_bias", "master_dark", "master_flat", "science", "combined")}  # fmt: skip
    for kind in ("bias", "dark", "flat"):
        g = got[f"master_{kind}"]
        np.testing.assert_allclose(g["data"].values, want[kind].data, rtol=0, atol=ATOL, err_msg=kind)
        np.testing.assert_allclose(g["err"].values, want[kind].uncertainty.array, rtol=1e-10, err_msg=kind)
    sci = got["science"]["data"].values
    assert sci.shape == (n, 48, 56)
    for i, c in enumerate(want["science"]):
        np.testing.assert_allclose(sci[i], c.data, rtol=1e-12, atol=ATOL)
    comb = got["combined"]
    np.testing.assert_allclose(comb["data"].values, want["combined"].data, rtol=1e-12, atol=ATOL)
    np.testing.assert_allclose(comb["err"].values, want["combined"].uncertainty.array, rtol=1e-10)
    # the cosmic ray (frame 0, one pixel) is clipped; ccdproc's mask count and ours agree everywhere
    assert comb["ngood"].values[cfg.cosmic_pixel] == n - 1
    assert abs(comb["data"].values[cfg.cosmic_pixel] - cfg.sky * cfg.science_time) < 100
    c = ccdproc.Combiner(want["science"])
    c.sigma_clipping(low_thresh=3, high_thresh=3, func="median", dev_func=dev)
    np.testing.assert_array_equal(comb["ngood"].values, n - c.data_arr.mask.sum(axis=0))
