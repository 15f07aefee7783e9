"""The ``detflow`` command line, run as a user runs it (subprocesses, real LocalCluster, real store)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

DETFLOW = [sys.executable, "-m", "detflow.cli"]


def sh(*args, cwd=None):
    return subprocess.run([*DETFLOW, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_steps_lists_registry_with_params():
    r = sh("steps")
    assert r.returncode == 0
    for name in ("dq_init", "saturation", "linearity", "dark_current", "ramp_fit"):
        assert name in r.stdout
    assert "SthreshA" in r.stdout and "n_pix_grow_sat" in r.stdout


def test_validate_run_info_pit_yaml(small_wfi):
    r = sh("validate", small_wfi["pit_yaml"])
    assert r.returncode == 0, r.stderr
    assert "ramp_fit (planned)" in r.stdout
    assert not (small_wfi["root"] / "out.zarr").exists()  # validate writes nothing

    r = sh("run", small_wfi["pit_yaml"], "--workers", "1", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "dask dashboard: http://127.0.0.1:" in r.stderr
    store = small_wfi["root"] / "out.zarr"
    l2 = xr.open_zarr(store, group="l2")  # plain xarray reads the product
    assert l2["data"].shape == (1, 120, 120) and l2["data"].attrs["units"] == "DN / s"
    assert l2["border_ref_pix_left"].shape == (1, 6, 128, 4)
    truth = small_wfi["slope"][4:-4, 4:-4]
    chi = (l2["data"].values[0] - truth) / np.sqrt(l2["var_rnoise"].values[0] + l2["var_poisson"].values[0])
    assert np.abs(np.mean(chi)) < 0.2

    r = sh("info", store)
    assert r.returncode == 0 and "ramp_fit=COMPLETE" in r.stdout and "l1_00.asdf" in r.stdout

    r = sh("run", small_wfi["pit_yaml"], "--workers", "1", "--no-progress")  # output exists now
    assert r.returncode == 2
    assert "out.zarr: output: expected a path that does not exist yet" in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_job_is_one_line_error(tmp_path):
    job = tmp_path / "bad.yaml"
    job.write_text("pipeline: roman_wfi\ninput: nothing.asdf\noutput: o.zarr\ncaldir: {}\nbogus: 1\n")
    r = sh("validate", job)
    assert r.returncode == 2
    assert "bogus: expected a known key" in r.stderr and str(job) in r.stderr
    assert "Traceback" not in r.stderr


def test_demo_writes_store_and_png(tmp_path):
    r = sh("demo", "--nside", "128", "--out", tmp_path / "demo")
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(": ", 1) for line in r.stdout.strip().splitlines() if ": " in line)
    store, png = lines["store"], lines["quicklook"]
    assert store.endswith("l2.zarr") and png.endswith(".png")
    l2 = xr.open_zarr(store, group="l2")
    assert l2["data"].shape == (1, 120, 120) and np.isfinite(l2["data"].values).mean() > 0.95
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_fitsout_writes_pit_layout(small_wfi):
    import asdf
    import yaml
    from astropy.io import fits

    with asdf.open(small_wfi["caldir"]["mask"]) as af:
        mask = np.array(af["roman"]["dq"])
    mask[14, 14] |= np.uint32(1 << 10)  # DEAD: masked with its 3x3 box in the good-pixel image
    asdf.AsdfFile({"roman": {"dq": mask}}).write_to(small_wfi["caldir"]["mask"])
    cfg = yaml.safe_load(small_wfi["pit_yaml"].read_text())
    cfg["FITSOUT"] = True
    small_wfi["pit_yaml"].write_text(yaml.safe_dump(cfg))
    r = sh("run", small_wfi["pit_yaml"], "--workers", "1", "--no-progress")
    assert r.returncode == 0, r.stderr
    path = small_wfi["root"] / "out_asdf_to.fits"  # OUT without ".zarr", as the PIT names it
    l2 = xr.open_zarr(small_wfi["root"] / "out.zarr", group="l2")
    with fits.open(path) as hdul:
        assert len(hdul) == 3 and "ramp_fit=COMPLETE" in [
            v for k, v in hdul[0].header.items() if k.startswith("DFSTEP")
        ]
        np.testing.assert_array_equal(hdul[0].data, l2["data"].values[0])
        np.testing.assert_array_equal(hdul[1].data, l2["dq"].values[0])
        bad = hdul[2].data == -1000
        assert not bad.all()
        np.testing.assert_array_equal(hdul[2].data[~bad], l2["data"].values[0][~bad])
        # the good-pixel image is the PIT's: its PixelMask1 on our dq masks exactly these pixels
        mh = pytest.importorskip("romanimpreprocess.utils.maskhandling")
        dq = l2["dq"].values[0].copy()
        np.testing.assert_array_equal(bad, mh.PixelMask1.build(dq))
        assert bad[9:12, 9:12].all() and bad.sum() >= 9  # the dead pixel (active coordinates 10, 10)


def test_asdf_output_like_the_pit(tiny_wfi):
    import asdf
    import yaml

    cfg = yaml.safe_load(tiny_wfi["pit_yaml"].read_text())
    cfg["OUT"] = str(tiny_wfi["root"] / "l2.asdf")
    tiny_wfi["pit_yaml"].write_text(yaml.safe_dump(cfg))
    r = sh("run", tiny_wfi["pit_yaml"], "--workers", "1", "--no-progress")
    assert r.returncode == 0, r.stderr
    l2 = xr.open_zarr(tiny_wfi["root"] / "l2.zarr", group="l2")  # the store beside it
    with asdf.open(tiny_wfi["root"] / "l2.asdf") as af:
        roman = af["roman"]
        np.testing.assert_array_equal(roman["data"], l2["data"].values[0])
        np.testing.assert_array_equal(roman["dq"], l2["dq"].values[0])
        # float16, as the Roman wfi_image schema has the variances
        np.testing.assert_array_equal(roman["var_poisson"], l2["var_poisson"].values[0].astype(np.float16))
        assert roman["border_ref_pix_left"].shape == (6, 32, 4) and roman["amp33"].shape[0] == 6
        assert roman["meta"]["cal_step"]["ramp_fit"] == "COMPLETE"
        assert len(af["processinfo"]["weights"]) == 6 and af["processinfo"]["ramp_opt_pars"]["slope"] == 0.4
    import roman_datamodels.datamodels as rdm

    with rdm.open(tiny_wfi["root"] / "l2.asdf") as m:  # a Roman L2 also from a plain-dict L1 file
        assert isinstance(m, rdm.ImageModel) and m.data.shape == (24, 24)
        assert [list(g) for g in m.meta.exposure.read_pattern] == [[0], [1], [2, 3], [4, 5, 6, 7], [8, 9, 10, 11],
                                                                   [12, 13, 14, 15]]  # fmt: skip
    r = sh("run", tiny_wfi["pit_yaml"], "--workers", "1", "--no-progress")
    assert r.returncode == 2 and "expected a path that does not exist yet" in r.stderr
