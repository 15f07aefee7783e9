"""EXCAM jobs end to end: II&T keys, the store and its groups, chunking invariance, rejected frames,
full-frame cosmic-ray mode, the II&T FITS file set, the CLI, and bad input (nothing written)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
import zarr
from astropy.io import fits
from typer.testing import CliRunner

import detflow
from detflow.cli import app
from detflow.errors import DetflowInputError
from detflow.instruments import roman_excam
from detflow.instruments.roman_excam_job import ExcamJob
from detflow.instruments.roman_excam_plan import combine_tile, rejected_frames
from detflow.io.store import open_store
from detflow.runtime.job import load_job
from detflow.schema import DQ
from detflow.steps import excam as sx

DATA = Path(__file__).parent / "data"
GEOM = roman_excam.GEOMETRIES["SCI"]


def write_frames(
    root: Path, n=4, gain=50.0, exptime=2.0, seed=0, saturate=(), wrap_row=None, names="frame"
) -> list[Path]:
    """L1 frames: bias with a row pattern, a smooth scene, cosmic plateaus; ``saturate``: frames mostly
    saturated; ``wrap_row``: a plateau at the right end of that full-frame row whose tail runs on."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:1024, 0:1024]
    scene = 150 * np.exp(-((yy - 400) ** 2 + (xx - 600) ** 2) / (2 * 60.0**2)) + 10
    out = []
    for i in range(n):
        img = 900.0 + 2 * np.cos(np.arange(1200) / 50.0)[:, None] + rng.normal(0, 6, (1200, 2200))
        r, c = GEOM.image.slices
        img[r, c] += rng.poisson(scene)
        for _ in range(3):
            y0, x0 = 13 + rng.integers(0, 1024), 1088 + rng.integers(0, 1000)
            img[y0, x0 : x0 + 3] = 900 + 14000
        if i in saturate:
            img[r, c] = 40000
        if wrap_row is not None:
            img[wrap_row, 2190:2200] = 900 + 14000
        pri = fits.PrimaryHDU()
        hdu = fits.ImageHDU(np.clip(img, 0, 65535).astype(np.uint16), name="SCI")
        hdu.header.update({"DATALVL": "L1", "EXPTIME": exptime, "EMGAIN_C": gain, "ARRTYPE": "SCI", "OVEREXP": False})
        p = root / f"{names}_{i:03d}.fits"
        fits.HDUList([pri, hdu]).writeto(p)
        out.append(p)
    return out


def _job(tmp: Path, inp, **kw) -> dict:
    return {"input": str(inp), "output": str(tmp / "out.zarr"), "eperdn": 8.7, "fwc_em_e": 90000, "fwc_pp_e": 50000,
            "non_linearity_filepath": str(DATA / "nonlin_table_TVAC.txt"), **kw}  # fmt: skip


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    return write_frames(tmp_path_factory.mktemp("excam_l1") / "l1", n=4, saturate=(2,))


@pytest.fixture(scope="module")
def reference_run(frames, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("excam_run")
    job = _job(tmp, frames[0].parent, combine=["l2a", "l2b"], export_dir=str(tmp / "fits"), generate_png_files=True)
    return detflow.run(job, progress=False), tmp


def test_store_groups_dims_units_and_shards(reference_run):
    tree, tmp = reference_run
    assert {n.name for n in tree.subtree if n.has_data} == {"l2a", "l2b", "mean_comb", "median_comb",
                                                            "l2a_mean_comb", "l2a_median_comb"}  # fmt: skip
    l2a, l2b = tree["l2a"].to_dataset(), tree["l2b"].to_dataset()
    assert l2a["data"].dims == ("frame", "y", "x") and l2a.sizes == {"frame": 4, "y": 1024, "x": 1024}
    assert l2a["bias"].dims == ("frame", "y")
    assert l2a["data"].attrs["units"] == "DN" and l2b["data"].attrs["units"] == "electron"
    assert l2b["data"].dtype == np.float32 and l2b["dq"].dtype == np.uint32
    assert tree["mean_comb"]["ngood"].dims == ("y", "x")
    z = zarr.open_array(str(tmp / "out.zarr" / "l2b" / "data"))
    assert z.shards == (4, 1024, 1024) and z.chunks[1:] == (256, 256)
    root = zarr.open_group(str(tmp / "out.zarr"))
    assert root.attrs["pipeline"] == "roman_excam"
    assert [s["name"] for s in root.attrs["steps"]] == sx.L2A_RECIPE + sx.L2B_RECIPE
    assert all(len(i["sha256"]) == 64 for i in root.attrs["inputs"])


def test_l2b_is_l2a_in_electrons_and_row_bias_recorded(reference_run):
    tree, _ = reference_run
    l2a, l2b = tree["l2a"].to_dataset().compute(), tree["l2b"].to_dataset().compute()
    # no dark, flat or bad-pixel map: L2b = desmeared L2a * k / g where nothing is flagged
    from detflow.kernels import emccd

    for f in (0, 3):
        dq = l2a["dq"].values[f]
        e = l2a["data"].values[f].astype(np.float64) * 8.7 / 50.0
        want = emccd.desmear_masked(e, (dq & int(DQ.JUMP_DET)) != 0, roman_excam.ROW_READ_TIME, 2.0)
        good = l2b["dq"].values[f] == 0
        np.testing.assert_allclose(l2b["data"].values[f][good], want[good], rtol=1e-5, atol=1e-4)
        assert np.isnan(l2b["data"].values[f][~good]).all()
    bias = l2a["bias"].values
    expect = 900.0 + 2 * np.cos(np.arange(13, 1037) / 50.0)
    assert np.abs(np.median(bias, axis=0) - expect).max() < 3.0  # per-row bias, 6 DN noise over 200 columns


def test_oversaturated_frame_rejected_and_left_out_of_combines(reference_run):
    tree, tmp = reference_run
    rej = tree["l2b"]["rejected"].values
    assert rej.tolist() == [0, 0, sx.REJECT["oversaturated"], 0]
    assert rejected_frames(tmp / "out.zarr") == [{"group": "/l2b", "file": "frame_002.fits",
                                                  "reasons": ["oversaturated"]}]  # fmt: skip
    ngood = tree["mean_comb"]["ngood"].values
    assert ngood.max() == 3
    assert tree["mean_comb"].attrs["frames_rejected"] == 1


def test_combines_equal_numpy_over_the_kept_frames(reference_run):
    tree, _ = reference_run
    l2b = tree["l2b"].to_dataset().compute()
    keep = l2b["rejected"].values == 0
    d = np.where(l2b["dq"].values[keep] == 0, l2b["data"].values[keep], np.nan)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, median = np.nanmean(d, axis=0), np.nanmedian(d, axis=0)
    np.testing.assert_allclose(tree["mean_comb"]["data"].values, mean, rtol=1e-6, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(tree["median_comb"]["data"].values, median, rtol=1e-6, atol=1e-6, equal_nan=True)
    allbad = np.all(np.isnan(d), axis=0)
    assert ((tree["mean_comb"]["dq"].values != 0) == allbad).all()


def test_chunking_does_not_change_a_bit(frames, reference_run, tmp_path):
    tree, _ = reference_run
    other = detflow.run(_job(tmp_path, frames[0].parent, combine=["l2a", "l2b"], frames_per_task=3,
                             frames_per_shard=2, combine_task_mb=1), progress=False)  # fmt: skip
    # frames computed in tasks of 3+1, stored in shards of 2+2, combined in tiles of 64
    assert combine_tile(4, 1024, 1024, 1) == 64
    z = zarr.open_array(str(tmp_path / "out.zarr"), path="l2b/data", mode="r")
    assert z.shards == (2, 1024, 1024) and z.chunks == (2, 64, 64)
    for group in ("l2a", "l2b", "mean_comb", "median_comb", "l2a_median_comb"):
        a, b = tree[group].to_dataset().compute(), other[group].to_dataset().compute()
        for v in a.data_vars:
            np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=f"{group}/{v}")


def test_iit_fits_file_set(reference_run):
    _, tmp = reference_run
    out = tmp / "fits"
    names = sorted(p.name for p in out.iterdir())
    for i in range(4):
        for kind in ("L2a_image", "L2a_bpmap", "L2b_image", "L2b_bpmap"):
            assert f"frame_{i:03d}_{kind}.fits" in names
    for kind in ("mean_comb_image", "mean_comb_bpmap", "median_comb_image", "median_comb_bpmap"):
        assert f"frame_00_{kind}.fits" in names  # frame_000 ... frame_003: II&T's XXXXXXi -> XXXXXX
    assert "frame_00_mean_comb_image.png" in names
    with fits.open(out / "frame_001_L2b_image.fits") as h:
        assert len(h) == 2 and h[0].header["DATA_LEVEL"] == "L2b" and h[0].header["EPERDN"] == 8.7
        assert h[0].header["FWC_EM_E"] == 90000 and h[1].data.shape == (1024, 1024)
        assert any("non_linearity_filepath" in str(c) for c in h[0].header["COMMENT"])
        img = h[1].data
    l2b = open_store(tmp / "out.zarr")["l2b"]["data"].isel(frame=1).values
    np.testing.assert_array_equal(img, l2b)
    with fits.open(out / "frame_000_L2a_bpmap.fits") as h:
        bp = h[1].data
    dq = open_store(tmp / "out.zarr")["l2a"]["dq"].isel(frame=0).values
    assert set(np.unique(bp)) <= {0, 32, 128, 160} and ((bp & 128) != 0).sum() == ((dq & DQ.JUMP_DET) != 0).sum()


def test_full_frame_mode_follows_tails_into_the_next_row_without_touching_its_bias(tmp_path):
    files = write_frames(tmp_path / "l1", n=1, wrap_row=500, seed=4)
    res = {}
    for region in ("image", "full"):
        job = _job(tmp_path / region, files[0].parent, steps={"excam_bias": {"region": region, "outlier_nsigma": None}})
        tree = detflow.run(job, progress=False)
        res[region] = tree["l2a"].to_dataset().compute()
    # the plateau sits in the serial overscan (columns 2190-2199), outside the image: in full mode its tail
    # runs on to the first columns of row 501 (the prescan), never into the reliable columns 800-1000
    np.testing.assert_array_equal(res["image"]["bias"].values, res["full"]["bias"].values)
    np.testing.assert_array_equal(res["image"]["data"].values, res["full"]["data"].values)


def test_full_frame_mode_remeasures_a_row_bias_whose_reliable_prescan_a_tail_reached(tmp_path):
    """A very long serial tail from the end of row 500 runs on over the next row's prescan up to column
    ~940: in full-frame mode the masked pixels leave row 501's bias; in image mode they set it."""
    from detflow.io.excam_l1 import open_excam_l1
    from detflow.steps.registry import get_step

    files = write_frames(tmp_path / "l1", n=1, wrap_row=500, seed=5)
    with fits.open(files[0], mode="update") as h:
        raw = h[1].data.astype(np.float64)
        raw[501, :950] += 5000.0  # the tail's charge in row 501's prescan (below saturation: no plateau)
        h[1].data = raw.astype(np.uint16)
    cosmics = {"fwc_em_e": 90000, "fwc_pp_e": 50000, "eperdn": 8.7, "cosm_tail": 940}
    bias = {}
    for region in ("image", "full"):
        ds = get_step("excam_bias")(open_excam_l1(files), None, {"region": region, "outlier_nsigma": None})
        ds = get_step("excam_cosmics")(ds, None, cosmics).compute(scheduler="sync")
        bias[region] = ds["bias"].sel(y=501).item()
        if region == "full":
            assert (ds["dq"].sel(y=501).values[0, :900] & int(DQ.JUMP_DET)).all()  # the tail, followed
    truth = 900.0 + 2 * np.cos(501 / 50.0)
    assert bias["image"] > truth + 2500  # 142 of the 200 reliable columns carry the tail
    assert abs(bias["full"] - truth) < 5.0  # from the 58 unmasked reliable columns


def test_reliable_prescan_masked_by_a_tail_is_left_out_of_the_bias():
    from detflow.kernels import emccd

    rng = np.random.default_rng(2)
    raw = rng.normal(1000, 5, (3, 2200))
    raw[1, 790:1000] += 8000  # a long tail across the reliable columns of row 1
    mask = np.zeros(raw.shape, bool)
    mask[1, 790:990] = True
    b_plain, _ = emccd.row_bias(raw, (800, 1000))
    b_masked, _ = emccd.row_bias(raw, (800, 1000), mask=mask)
    assert b_plain[1] > 5000
    assert abs(b_masked[1] - np.median(raw[1, 990:1000])) < 1e-9
    np.testing.assert_array_equal(b_plain[[0, 2]], b_masked[[0, 2]])


def test_iit_config_keys_carry_over(tmp_path):
    cfg = yaml.safe_load((DATA / "iit_config_file.yaml").read_text())  # the real II&T configuration
    assert {"eperdn", "fwc_em_e", "fwc_pp_e", "bias_offset", "non_linearity_filepath"} <= set(cfg)
    cfg.update(input="l1/*.fits", output="out.zarr", cosm_tail=12, cosm_thresh=0.9, sat_thresh=0.8)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    job = load_job(path)
    assert isinstance(job, ExcamJob) and job.eperdn == 9.55 and job.fwc_pp_e == 66850
    p = job.step_params()
    assert p["excam_cosmics"]["cosm_tail"] == 12 and p["excam_cosmics"]["cosm_thresh"] == 0.9
    assert p["excam_electrons"]["eperdn"] == 9.55
    assert job.input == str(tmp_path / "l1/*.fits") and job.output == tmp_path / "out.zarr"
    # calibration paths are relative to the job file, as the II&T code resolves them
    assert job.non_linearity_filepath == tmp_path / "calibration_files" / "nonlin_array_20231104.txt"
    assert job.flatfield_filepath == tmp_path / "calibration_files" / "flat.fits"


@pytest.mark.parametrize("bad, field", [
    ({"eperdn": -1}, "eperdn"),
    ({"cosm_tial": 3}, "cosm_tial"),
    ({"median_filter_mode": 3}, "median_filter_mode"),
    ({"steps": {"excam_flat": {"x": 1}}}, "x"),
])  # fmt: skip
def test_bad_job_keys(tmp_path, bad, field):
    with pytest.raises(DetflowInputError, match=field):
        load_job(dict(_job(tmp_path, tmp_path), **bad))


def test_bad_inputs_write_nothing(frames, tmp_path):
    bad_map = tmp_path / "flat.fits"
    fits.PrimaryHDU(np.ones((512, 512))).writeto(bad_map)
    with pytest.raises(DetflowInputError, match=r"flat.fits.*flatfield_filepath.*1024x1024.*512x512"):
        detflow.run(_job(tmp_path, frames[0].parent, flatfield_filepath=str(bad_map)), progress=False)
    assert not (tmp_path / "out.zarr").exists() and not list(tmp_path.glob("out.zarr*"))
    table = tmp_path / "nonlin.txt"
    rows = np.genfromtxt(DATA / "nonlin_table_TVAC.txt", delimiter=",")
    rows[5, 0] = rows[3, 0]
    np.savetxt(table, rows, delimiter=",")
    with pytest.raises(DetflowInputError, match=r"nonlin.txt.*column 0.*increasing"):
        detflow.run(_job(tmp_path, frames[0].parent, non_linearity_filepath=str(table)), progress=False)
    mixed = write_frames(tmp_path / "mixed", n=2, gain=50.0) + write_frames(tmp_path / "mixed", n=1, gain=200.0,
                                                                             names="other")  # fmt: skip
    with pytest.raises(DetflowInputError, match=r"EM gain=200.*other_000.fits"):
        detflow.run(_job(tmp_path, mixed[0].parent), progress=False)
    assert not list(tmp_path.glob("out.zarr*"))


def test_mixed_gains_grouped_on_request(tmp_path):
    write_frames(tmp_path / "mixed", n=2, gain=50.0)
    write_frames(tmp_path / "mixed", n=1, gain=200.0, names="other")
    tree = detflow.run(_job(tmp_path, tmp_path / "mixed", group=True), progress=False)
    groups = {n.path for n in tree.subtree if n.has_data}
    assert {"/l2b/t2s_g50_SCI", "/l2b/t2s_g200_SCI", "/mean_comb/t2s_g200_SCI"} <= groups
    assert tree["l2b/t2s_g50_SCI"].sizes["frame"] == 2


def test_cli_validate_and_run(frames, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(_job(tmp_path, frames[0].parent, desmear=False)))
    r = CliRunner().invoke(app, ["validate", str(job)])
    assert r.exit_code == 0, r.output
    assert "group 'l2b'" in r.output and "excam_desmear (SKIPPED)" in r.output
    r = CliRunner().invoke(app, ["run", str(job), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "group /mean_comb" in r.output
    r = CliRunner().invoke(app, ["run", str(job), "--no-progress"])
    assert r.exit_code == 2 and "out.zarr" in r.output and "exists" in r.output
    xr.open_zarr(tmp_path / "out.zarr", group="l2a")  # plain xarray reads it
