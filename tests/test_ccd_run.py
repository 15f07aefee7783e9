"""The ``ccd`` pipeline on the engine: each step chunked equals its eager result over uneven chunkings; the
CLI runs a ``pipeline: ccd`` job into a store that plain xarray opens; masters from files; bad input is one
line and exit status 2; the combine recovers the simulated sky."""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pytest
import xarray as xr
import yaml
from astropy.io import fits
from distributed import Client, LocalCluster
from typer.testing import CliRunner

from detflow.cli import app
from detflow.errors import DetflowInputError
from detflow.io.ccd_fits import open_ccd_frames
from detflow.runtime.job import load_job
from detflow.runtime.run import build, run
from detflow.sim.ccd import CcdSimConfig, simulate_ccd
from detflow.steps import ccd as sc

CFG = CcdSimConfig(ny=40, nx=52, overscan=8, n_bias=4, n_dark=3, n_flat=3, n_science=10)


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    d = tmp_path_factory.mktemp("night")
    return d, simulate_ccd(d / "raw", CFG)


@pytest.fixture(scope="module")
def client():
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as lc,
        Client(lc) as c,
    ):
        yield c


def _refs(ds: xr.Dataset) -> xr.Dataset:
    rng = np.random.default_rng(3)
    shape = (ds.sizes["y"], ds.sizes["x"])
    return xr.Dataset({"bias": (("y", "x"), rng.normal(5, 1, shape)),
                       "dark": (("y", "x"), rng.normal(20, 2, shape), {"exptime": 100.0}),
                       "flat": (("y", "x"), rng.normal(1000, 30, shape))})  # fmt: skip


@pytest.mark.parametrize("frames,tiles", [((3, 5, 2, 10), ((7, 25, 8), (30, 22))), ((1,) * 20, ((40,), (3, 49)))])
def test_each_step_chunked_equals_its_eager_result(night, frames, tiles):
    raw = open_ccd_frames(night[0] / "raw").load()
    refs = _refs(raw.isel(x=slice(0, CFG.nx)))
    cases = [(sc.ccd_overscan, sc.OverscanParams(method="mean", model="per_row"), None, False),
             (sc.ccd_overscan, sc.OverscanParams(model="constant"), None, False),
             (sc.ccd_trim, sc.TrimParams(section=f"[3:{CFG.nx},2:{CFG.ny - 1}]"), None, False),
             (sc.ccd_bias, sc.BiasParams(), refs, True), (sc.ccd_dark, sc.DarkParams(), refs, True),
             (sc.ccd_flat, sc.FlatParams(min_value=990.0), refs, True),
             (sc.ccd_combine, sc.CombineParams(), None, True),
             (sc.ccd_combine, sc.CombineParams(method="average", stdfunc="mad_std", maxiters=None), None, True)]  # fmt: skip
    for step, p, r, trimmed in cases:
        eager_in = sc.ccd_trim(raw, None, sc.TrimParams()) if trimmed else raw
        eager = step(eager_in, r, p)
        lazy_in = eager_in.chunk({"frame": frames, "y": tiles[0] if trimmed else -1, "x": tiles[1] if trimmed else -1})
        lazy_refs = r.chunk({"y": tiles[0], "x": tiles[1]}) if r is not None else None
        lazy = step(lazy_in, lazy_refs, p)
        assert lazy["data"].chunks is not None, step.__name__  # lazy: nothing computed yet
        for v in eager.data_vars:
            np.testing.assert_allclose(lazy[v].values, eager[v].values, rtol=1e-13, atol=0, err_msg=f"{step} {v}")
        assert eager.attrs["steps"][-1]["status"] == "COMPLETE"


def test_cli_runs_a_ccd_job_into_a_store_plain_xarray_opens(night, tmp_path):
    d, sim = night
    job = {"pipeline": "ccd", "input": str(d / "raw"), "output": "out.zarr", "overscan": {},
           "cluster": {"n_workers": 1, "threads_per_worker": 2}}  # fmt: skip
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    res = CliRunner().invoke(app, ["run", str(tmp_path / "job.yaml"), "--no-progress"])
    assert res.exit_code == 0, res.output
    store = tmp_path / "out.zarr"  # relative to the job file
    tree = xr.open_datatree(store, engine="zarr")
    assert set(tree.children) == {"ccd", "master_bias", "master_dark", "master_flat", "science", "combined"}
    ccd = xr.open_zarr(store, group="ccd")
    n = CFG.n_bias + CFG.n_dark + CFG.n_flat + CFG.n_science
    assert ccd["data"].dims == ("frame", "y", "x") and ccd["data"].shape == (n, CFG.ny, CFG.nx)
    assert ccd["data"].dtype == np.float32 and ccd["dq"].dtype == np.uint32
    assert u.Unit(ccd["data"].attrs["units"]) == u.adu and "flag_meanings" in ccd["dq"].attrs
    assert sorted(set(ccd["frame_type"].values)) == ["bias", "dark", "flat", "science"]
    assert set(ccd["exptime"].values) == {0.0, CFG.dark_time, CFG.flat_time, CFG.science_time}
    assert ccd.attrs["inputs"][0]["fits_headers"][0].startswith("SIMPLE  =")
    # ADU after overscan and trim: a bias frame is the fixed pattern plus read noise around 0
    bias_frames = ccd["data"].values[ccd["frame_type"].values == "bias"]
    assert abs(float(np.mean(bias_frames))) < 1.0 and 2 < float(np.std(bias_frames - sim["truth"]["bias"])) < 6
    root = tree.attrs
    assert (
        root["pipeline"] == "ccd" and len(root["inputs"]) == n and all(len(i["sha256"]) == 64 for i in root["inputs"])
    )
    # the combine recovers the sky (flat-fielded, dark and bias gone): sky * t, noise ~ sqrt(600)/sqrt(9)
    comb = xr.open_zarr(store, group="combined")
    sky = CFG.sky * CFG.science_time
    assert abs(float(comb["data"].mean()) - sky) < 3 and float(np.abs(comb["data"] - sky).max()) < 50
    assert comb["ngood"].values[CFG.cosmic_pixel] == CFG.n_science - 1  # the cosmic ray clipped


def test_masters_from_files_equal_those_built_from_frames(night, tmp_path, client):
    d, sim = night
    built = tmp_path / "built.zarr"
    run({"pipeline": "ccd", "input": str(d / "raw"), "output": str(built), "overscan": {}, "dtype": "float64"},
        client, progress=False)  # fmt: skip
    paths = {}
    for kind in ("bias", "dark", "flat"):
        g = xr.open_zarr(built, group=f"master_{kind}")
        paths[kind] = tmp_path / f"master_{kind}.fits"
        header = fits.Header({"EXPTIME": float(g.attrs["exptime"])})
        fits.PrimaryHDU(g["data"].values, header).writeto(paths[kind])
    science = [str(f) for f in sim["files"] if "LIGHT" in f.name]
    out = tmp_path / "files.zarr"
    run({"pipeline": "ccd", "input": science, "output": str(out), "overscan": {}, "dtype": "float64",
         **{f"master_{k}": str(p) for k, p in paths.items()}}, client, progress=False)  # fmt: skip
    a, b = xr.open_zarr(built, group="science"), xr.open_zarr(out, group="science")
    np.testing.assert_array_equal(a["data"].values, b["data"].values)
    np.testing.assert_array_equal(
        xr.open_zarr(built, group="combined")["data"], xr.open_zarr(out, group="combined")["data"]
    )
    root = xr.open_datatree(out, engine="zarr").attrs
    assert {r["name"] for r in root["reference_files"]} == {"master_bias", "master_dark", "master_flat"}


def test_science_frames_are_sharded_and_tiles_do_not_race(tmp_path, client):
    """The calibrated science frames (a reduce stage computed tile by tile) are written as the ``ccd`` group
    is: shards of ``frames_per_task`` frames with pixel tiles inside, one task per shard, so small uneven
    tiles (32 px on an 80x72 frame) and uneven frame blocks give the same numbers as one tile per frame."""
    import zarr

    cfg = CcdSimConfig(ny=80, nx=72, overscan=8, n_bias=3, n_dark=2, n_flat=2, n_science=7)
    sim = simulate_ccd(tmp_path / "raw", cfg)
    base = {"pipeline": "ccd", "input": str(tmp_path / "raw"), "overscan": {}, "frames_per_task": 3}
    run(dict(base, output=str(tmp_path / "one.zarr")), client, progress=False)
    run(dict(base, output=str(tmp_path / "tiles.zarr"), combine_task_mb=1), client, progress=False)
    assert len(sim["files"]) == 14
    for group in ("ccd", "science"):
        arr = zarr.open_array(tmp_path / "tiles.zarr" / group / "data", mode="r")
        assert arr.shards is not None and arr.shards[0] == 3, (group, arr.shards)
        assert arr.chunks[1:] == (32, 32) and arr.shards[1:] == (96, 96), (group, arr.chunks, arr.shards)
    for group in ("science", "combined"):
        a, b = xr.open_zarr(tmp_path / "one.zarr", group=group), xr.open_zarr(tmp_path / "tiles.zarr", group=group)
        np.testing.assert_array_equal(a["data"].values, b["data"].values, err_msg=group)
        np.testing.assert_array_equal(a["dq"].values, b["dq"].values, err_msg=group)


def _errors(res) -> list[str]:
    return [line for line in res.stderr.splitlines() if line.startswith("error: ")]


def test_a_truncated_fits_file_is_one_line_and_exit_status_2(night, tmp_path):
    d, sim = night
    bad = tmp_path / "bad.fits"
    raw = sim["files"][0].read_bytes()
    bad.write_bytes(raw[: len(raw) - 3000])
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"pipeline": "ccd", "input": [str(sim["files"][1]), str(bad)], "output": "o.zarr"}))
    for command in ("validate", "run"):
        res = CliRunner().invoke(app, [command, str(job)])
        assert res.exit_code == 2 and len(_errors(res)) == 1, res.output
        assert _errors(res)[0].startswith(f"error: {bad}: data: expected ") and "truncated" in _errors(res)[0]
        assert "Traceback" not in res.output
    assert not (tmp_path / "o.zarr").exists()


def test_wrong_inputs_are_named(night, tmp_path):
    d, sim = night
    mef = tmp_path / "mef.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((4, 4))), fits.ImageHDU(np.zeros((4, 4)))]).writeto(mef)
    with pytest.raises(DetflowInputError, match=rf"^{mef}: HDU: expected one image HDU \(or name it: hdu\), got 2"):
        build({"pipeline": "ccd", "input": str(mef), "output": str(tmp_path / "o.zarr")})
    assert build({"pipeline": "ccd", "input": str(mef), "output": str(tmp_path / "o.zarr"), "hdu": 2})["ccd"].sizes[
        "frame"] == 1  # fmt: skip
    dark2 = tmp_path / "dark2.fits"
    with fits.open(sim["files"][CFG.n_bias]) as h:
        h[0].header["EXPTIME"] = 7.0
        h.writeto(dark2)
    with pytest.raises(DetflowInputError, match="dark frames: expected one EXPTIME .*, got 7 s, 100 s"):
        build({"pipeline": "ccd", "input": [str(d / "raw"), str(dark2)], "output": str(tmp_path / "o.zarr")})
    with pytest.raises(DetflowInputError, match=r"overscan.method: expected one of median, mean, got 'mode'"):
        load_job({"pipeline": "ccd", "input": str(d / "raw"), "output": "o.zarr", "overscan": {"method": "mode"}})
    with pytest.raises(
        DetflowInputError,
        match=r"trim.section: expected a FITS section of 1-based increasing ranges, got x 9:2 in '\[9:2,1:4\]'$",
    ):
        load_job({"pipeline": "ccd", "input": str(d / "raw"), "output": "o.zarr", "trim": "[9:2,1:4]"})
    with pytest.raises(
        DetflowInputError,
        match=r"overscan/trim: expected a section inside the frame \(60 pixels along x\), got '\[1:500,1:4\]'$",
    ):
        build({"pipeline": "ccd", "input": str(d / "raw"), "output": "o.zarr", "trim": "[1:500,1:4]"})
