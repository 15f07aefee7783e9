"""The hxrg_ground pipeline on simulated IO:I reads (real FITS files): each reference mode removes what it
should, the CLI and the Python API write a ``frames`` group plain xarray opens, the selection keys, the other
file layouts (Teledyne names, a JWST-style cube), and bad input is one line with exit status 2."""

from __future__ import annotations

import shutil

import astropy.units as u
import numpy as np
import pytest
import xarray as xr
import yaml
from astropy.io import fits
from distributed import Client, LocalCluster
from scipy.ndimage import gaussian_filter1d
from typer.testing import CliRunner

from detflow.cli import app
from detflow.io.hxrg_fits import open_hxrg
from detflow.runtime.job import load_job
from detflow.runtime.run import build, run
from detflow.sim.ioi import IoiSimConfig, simulate_ioi
from detflow.steps import hxrg_ground as sg
from detflow.steps import hxrg_refpix as sr

QUIET = dict(sky=0.0, n_stars=0, extended=0.0, bad_fraction=0.0, read_noise=0.0, ktc=0.0, poisson=False, beta=0.0)


@pytest.fixture(scope="module")
def client():
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as lc,
        Client(lc) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    d = tmp_path_factory.mktemp("ioi")
    return d, simulate_ioi(d / "raw", IoiSimConfig(size=128, dithers=3, runs=2, read_mode="fowler", pairs=2))


def _cds_residual(raw, mode: str, **kw) -> float:
    """The rms of CDS differences after the reference correction, on reads with no signal and no noise."""
    out = sr.hxrg_refpix(raw, None, sr.RefPixParams(mode=mode, **kw))
    d = out["data"].values
    return float(np.std(d[:, -1] - d[:, 0]))


def _slow_rows(raw, mode: str, **kw) -> float:
    """The rms of the rows' mean CDS residual smoothed over 7 rows (the slow part of 1/f noise)."""
    out = sr.hxrg_refpix(raw, None, sr.RefPixParams(mode=mode, **kw))
    d = out["data"].values
    return float(np.std(gaussian_filter1d((d[:, -1] - d[:, 0]).mean(axis=-1), 7.0, axis=-1)))


def test_each_reference_mode_removes_what_it_should(tmp_path):
    def reads(name, **cfg):
        simulate_ioi(tmp_path / name, IoiSimConfig(size=128, dithers=2, read_mode="cds", **QUIET, **cfg))
        return open_hxrg(tmp_path / name).load()

    quantum = 1.0  # integer reads: rms 0.41 DN for two, plus the rounding in the clipped reference means
    offsets = reads("offsets", slope_sigma=0.0, one_over_f=0.0)
    assert _cds_residual(offsets, "trim") > 10 and _cds_residual(offsets, "constant") > 5
    assert _cds_residual(offsets, "constant_off") < quantum and _cds_residual(offsets, "ramp") < quantum
    slopes = reads("slopes", one_over_f=0.0)
    assert _cds_residual(slopes, "constant_off") > 3
    assert _cds_residual(slopes, "ramp") < quantum
    assert _cds_residual(slopes, "ramp", compat_rows=True) > 3  # 1.5/2055.5 are not this detector's rows
    noise = reads("one_over_f", offset_sigma=0.0, drift_sigma=0.0, slope_sigma=0.0, one_over_f=4.0)
    before = _cds_residual(noise, "ramp")
    assert before > 4  # two reads of rms 4 along the rows
    # the column correction removes the 1/f noise slower than its smoothing (sigma 7 rows): the rows' mean of
    # the residual, smoothed over 7 rows, drops to the rounding's level; the faster noise stays
    slow_before = _slow_rows(noise, "ramp")
    for kw in ({"mode": "column"}, {"mode": "full"}, {"mode": "column", "column_smoothing": "median", "window": 11}):
        assert _cds_residual(noise, **kw) < 0.8 * before
        assert _slow_rows(noise, **kw) < slow_before / 4, kw


def test_cli_runs_a_fowler_job_into_a_frames_group(night, tmp_path):
    d, sim = night
    job = {"pipeline": "hxrg_ground", "input": str(d / "raw"), "output": "out.zarr", "read_mode": "fowler",
           "refpix": "full", "export_fits": "l1", "cluster": {"n_workers": 1, "threads_per_worker": 2}}  # fmt: skip
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    res = CliRunner().invoke(app, ["run", str(tmp_path / "job.yaml"), "--no-progress"])
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in (tmp_path / "l1").iterdir())
    assert names == [f"i_e_20150227_{r}_{d}_0_1.fits" for r in (1, 2) for d in (1, 2, 3)]  # IO:I's level-1 names
    store = tmp_path / "out.zarr"
    assert set(xr.open_datatree(store, engine="zarr").children) == {"frames"}
    g = xr.open_zarr(store, group="frames")
    assert g["data"].dims == ("frame", "y", "x") and g["data"].shape == (6, 120, 120)
    assert u.Unit(g["data"].attrs["units"]) == u.DN and u.Unit(g["rate"].attrs["units"]) == u.DN / u.s
    assert g["dq"].dtype == np.uint32 and "flag_meanings" in g["dq"].attrs
    assert list(g["run"].values) == [1, 1, 1, 2, 2, 2] and list(g["dither"].values) == [1, 2, 3, 1, 2, 3]
    np.testing.assert_allclose(g["exptime"].values, 10.0 + 1.265)  # INTTIME difference + the read time
    np.testing.assert_allclose(g["gain"].values, 2.12)  # ASICGAIN 10
    # the counts are the truth's rate times the signal time (10 s): the sky within the noise of a pixel
    truth = sim["truth"]
    resid = g["data"].values - truth["rate"] * 10.0
    good = ~truth["bad"][None].repeat(6, 0) & (truth["rate"] < 100)
    assert abs(np.median(resid[good])) < 3 and np.std(resid[good]) < 3 * np.median(g["err"].values[good])
    with fits.open(tmp_path / "l1" / "i_e_20150227_2_3_0_1.fits") as h:
        np.testing.assert_array_equal(h[0].data, g["data"].values[5])
        hdr = h[0].header
        assert hdr["EXPTIME"] == pytest.approx(11.265) and hdr["L1FMCOME"] == "FOWLER" and hdr["L1REFSUB"] == 1
        assert "SEQNUM_M" not in hdr and "INTTIME" not in hdr and hdr["EXTNAME"] == "IM_NONSS"
        assert hdr["DATE-OBS"].startswith("2015-02-27T") and [x.name for x in h[1:]] == ["ERR", "DQ"]
    root = xr.open_datatree(store, engine="zarr").attrs
    assert root["pipeline"] == "hxrg_ground" and len(root["inputs"]) == 24  # every read file, with its sha256
    assert all(len(i["sha256"]) == 64 for i in root["inputs"])


def test_python_api_ramp_recovers_the_rate(tmp_path, client):
    sim = simulate_ioi(tmp_path / "raw", IoiSimConfig(size=128, dithers=2, read_mode="ramp", nreads=6, beta=0.0))
    out = tmp_path / "ramp.zarr"
    run({"pipeline": "hxrg_ground", "input": str(tmp_path / "raw"), "output": str(out), "read_mode": "ramp",
         "refpix": "full", "dtype": "float64"}, client, progress=False)  # fmt: skip
    g = xr.open_zarr(out, group="frames")
    assert u.Unit(g["data"].attrs["units"]) == u.DN / u.s
    pull = (g["data"].values - sim["truth"]["rate"]) / g["err"].values
    assert abs(np.median(pull)) < 0.2 and 0.7 < np.std(pull[np.abs(pull) < 10]) < 1.5


def test_selection_keys_pick_runs_dithers_and_reads(night):
    d, _ = night
    base = {"pipeline": "hxrg_ground", "input": str(d / "raw"), "output": str(d / "x.zarr"), "read_mode": "cds"}
    assert build(dict(base, runs=[2, 2], dithers=[2, 3]))["frames"].sizes["frame"] == 2
    ds = open_hxrg(d / "raw", {"runs": [1, 1], "exposures": [2, 3], "date": "20150227"})
    assert ds.sizes["frame"] == 3 and list(ds["read_file"].values[0]) == ["i_e_20150227_1_1_2_0.fits",
                                                                         "i_e_20150227_1_1_3_0.fits"]  # fmt: skip
    with pytest.raises(Exception, match="selection: expected reads matching"):
        open_hxrg(d / "raw", {"date": "20990101"})


def test_teledyne_names_and_a_cube_read_like_the_lt_files(night, tmp_path):
    d, sim = night
    lt = open_hxrg(d / "raw", {"runs": [1, 1], "dithers": [1, 1]}).load()
    (tmp_path / "ted").mkdir()
    for k, f in enumerate(sorted((d / "raw").glob("i_e_20150227_1_1_*_0.fits"))):
        shutil.copy(f, tmp_path / "ted" / f"H2RG_R1_M{1 + k // 2}_N{1 + k % 2}.fits")
    ted = open_hxrg(tmp_path / "ted").load()
    np.testing.assert_array_equal(ted["data"].values, lt["data"].values)
    np.testing.assert_array_equal(ted["inttime"].values, lt["inttime"].values)
    assert ted["naming"].values[0] == "teledyne" and ted["run"].values[0] == 1
    cube = tmp_path / "jw_uncal.fits"
    header = fits.Header({"NGROUPS": 4, "NFRAMES": 1, "GROUPGAP": 0, "TFRAME": 2.5, "NOUTPUTS": 4})
    sci = np.stack([lt["data"].values[0]] * 2).astype(np.uint16)
    fits.HDUList([fits.PrimaryHDU(header=header), fits.ImageHDU(sci, name="SCI")]).writeto(cube)
    ds = open_hxrg(cube).load()
    assert ds["data"].dims == ("frame", "read", "y", "x") and ds.sizes["frame"] == 2
    np.testing.assert_array_equal(ds["data"].values[1], lt["data"].values[0])
    np.testing.assert_allclose(ds["inttime"].values[0], [2.5, 5.0, 7.5, 10.0])  # (g + 1) * TFRAME for NFRAMES 1
    out = sg.hxrg_combine(sr.hxrg_refpix(ds.assign_coords(gain=("frame", [1.0, 1.0])), None,
                                         sr.RefPixParams(mode="trim")), None, sg.CombineParams())  # fmt: skip
    assert out["exptime"].values[0] == 7.5


def _errors(res) -> list[str]:
    return [line for line in res.stderr.splitlines() if line.startswith("error: ")]


def test_bad_input_is_one_line_and_exit_status_2(night, tmp_path):
    d, _ = night

    def cli(**job):
        path = tmp_path / "job.yaml"
        path.write_text(yaml.safe_dump({"pipeline": "hxrg_ground", "output": "o.zarr", **job}))
        res = CliRunner().invoke(app, ["run", str(path)])
        assert res.exit_code == 2 and len(_errors(res)) == 1 and "Traceback" not in res.output, res.output
        return _errors(res)[0]

    line = cli(input=str(d / "raw"), read_mode="fowler", exposures=[1, 3])  # 2 pedestal reads, 1 signal read
    assert "SEQNUM_M/SEQNUM_N: expected a Fowler sequence: equal numbers of pedestal (SEQNUM_M 1) and signal " \
           "(SEQNUM_M 2) reads, got 2 and 1" in line  # fmt: skip
    (tmp_path / "raw").mkdir()
    for f in sorted((d / "raw").glob("i_e_20150227_1_1_*")):
        shutil.copy(f, tmp_path / "raw" / f.name)
    bad = tmp_path / "raw" / "i_e_20150227_1_1_3_0.fits"
    with fits.open(bad, mode="update") as h:
        del h[0].header["NOUTPUTS"]
    line = cli(input=str(tmp_path / "raw"), refpix="ramp")
    assert line == f"error: {bad}: NOUTPUTS: expected the number of outputs (1, 4 or 32), got none"
    with fits.open(bad, mode="update") as h:
        h[0].header["NOUTPUTS"] = 4
    first = tmp_path / "raw" / "i_e_20150227_1_1_1_0.fits"  # an exposure's keywords come from its first read
    with fits.open(first, mode="update") as h:
        h[0].header["ASICGAIN"] = 9
    line = cli(input=str(tmp_path / "raw"))
    assert line == "error: i_e_20150227_1_1_1_0.fits: ASICGAIN: expected 8, 10, 12 or 13 dB (IO:I's gains), or " \
        "gain in the job, got 9.0"  # fmt: skip
    line = cli(input=str(d / "raw"), runs=[3, 1])
    assert "runs: expected an inclusive range [lo, hi] with lo <= hi, got [3, 1]" in line
    assert not (tmp_path / "o.zarr").exists()


IOI_PIPELINE_INI = """; IO:I's pipeline.ini, as the LT pipeline reads it
[reference_subtraction]
do:                             1               ; (0||1)
method:                         CONSTANTOFF     ; (TRIM||CONSTANT||CONSTANTOFF||RAMP||COLUMN||FULL)
[frame_combination]
do:                             1               ; (0||1)
method:                         FOWLER          ; (CDS||FOWLER)
fowler_pairs:                   1               ; only applies if method is FOWLER
fowler_bodge:                   1.265           ; (seconds)
[nonlinearity_corrections]
do:                             1               ; (0||1)
order:                          2               ; use up to (and including) this order of coefficient
[sky_subtraction]
do:                             1               ; (0||1)
"""


def test_ioi_ini_files_are_read_as_job_keys(night, tmp_path):
    d, _ = night
    (tmp_path / "pipeline.ini").write_text(IOI_PIPELINE_INI)
    (tmp_path / "lin").mkdir()
    (tmp_path / "paths.ini").write_text("[nonlinearity_corrections]\npath_nonlinearity_corrections: lin/\n"
                                        "coeff_filename: lin_coeffs.fits\n")  # fmt: skip
    job = {"pipeline": "hxrg_ground", "input": str(d / "raw"), "output": "o.zarr", "pipeline_ini": "pipeline.ini",
           "paths_ini": "paths.ini", "steps": {"hxrg_combine": {"read_time": 0.5}}}  # fmt: skip
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    j = load_job(tmp_path / "job.yaml")
    assert (j.refpix, j.read_mode, j.nonlinearity_order) == ("constant_off", "fowler", 2)
    assert j.nonlinearity == tmp_path / "lin" / "lin_coeffs.fits"
    assert j.step_params()["hxrg_combine"] == {"mode": "fowler", "read_noise": 10.0, "fowler_pairs": 1,
                                               "read_time": 0.5}  # the job's own key over the ini's  # fmt: skip
    res = CliRunner().invoke(app, ["run", str(tmp_path / "job.yaml")])  # the coefficients file is not there
    assert res.exit_code == 2 and "nonlinearity" in _errors(res)[0], res.output
