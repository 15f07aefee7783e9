"""Issue 14, outputs other tools open: a simulated star at a known RA/Dec, run through ``detflow run``
into the FITS and ASDF exports; the FITS WCS puts it on its pixel, and roman_datamodels opens the L2,
the simulated L1 and each simulated reference file (real files on disk)."""

from __future__ import annotations

import warnings

import asdf
import numpy as np
import pytest
import roman_datamodels.datamodels as rdm
import xarray as xr
from astropy.io import fits
from astropy.wcs import WCS
from photutils import centroids

import detflow
from detflow.instruments.roman_wfi_job import WFIJob
from detflow.runtime.job import load_job
from detflow.sim.wfi import SimConfig, simulate

RA0, DEC0 = 150.1, 2.2
# 13 pixels east-ish and 9 south-ish of the detector centre (0.11 arcsec pixels): off any pixel centre
STAR = (RA0 + 13.37 * 0.11 / 3600 / np.cos(np.radians(DEC0)), DEC0 - 9.71 * 0.11 / 3600)
CFG = SimConfig(nside=64, seed=11, n_sources=0, ra_deg=RA0, dec_deg=DEC0, pa_deg=25.0, star_radec=STAR, star_e_per_s=3000.0,
                flat_rms=0.0, cr_rate=0.0, hot_pixel_fraction=0.0, dead_pixel_fraction=0.0)  # fmt: skip


@pytest.fixture(scope="module")
def star(tmp_path_factory):
    root = tmp_path_factory.mktemp("star")
    prod = simulate(root / "sim", CFG)
    job = load_job(prod.job_yaml).model_dump()  # the simulator's PIT job, with its FITSWCS
    job.update(output=root / "l2.asdf", fits_out=True,
               cluster={"n_workers": 1, "threads_per_worker": 2, "dashboard_address": "127.0.0.1:0"})  # fmt: skip
    detflow.run(WFIJob(**job), progress=False)
    return {"prod": prod, "truth": dict(np.load(prod.truth_file)), "asdf": root / "l2.asdf",
            "fits": root / "l2_asdf_to.fits", "store": root / "l2.zarr"}  # fmt: skip


def measured_centroid(img: np.ndarray, half: int = 5) -> tuple[float, float]:
    """(x, y) array pixel of the brightest source: photutils' centre of mass of the sky-subtracted
    (2 half + 1)^2 box around the peak."""
    j, i = np.unravel_index(np.nanargmax(img), img.shape)
    box = img[j - half : j + half + 1, i - half : i + half + 1] - np.nanmedian(img)
    cx, cy = centroids.centroid_com(box)
    return i - half + float(cx), j - half + float(cy)


def test_fits_wcs_puts_the_star_on_its_pixel(star):
    t = star["truth"]
    assert float(t["star_ra"]) == STAR[0] and float(t["star_dec"]) == STAR[1]
    with fits.open(star["fits"]) as hdul, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = hdul[0].data.astype(np.float64)
        wcs = WCS(hdul[0].header)
    # the exported WCS (0-based array pixels) maps the star's RA/Dec onto the pixel the simulator put it
    # on: full-frame detector pixel minus the 4-pixel border
    x, y = wcs.all_world2pix([STAR], 0)[0]
    assert abs(x - (float(t["star_x"]) - 4)) < 1e-6 and abs(y - (float(t["star_y"]) - 4)) < 1e-6
    # and the star measured in the exported image sits there
    mx, my = measured_centroid(img)
    assert abs(mx - x) < 0.01 and abs(my - y) < 0.01, (mx, my, x, y)
    # FITS convention: CRPIX is 1-based, the detector centre (full-frame 0-based 31.5) is array pixel 27.5
    assert wcs.wcs.crpix.tolist() == [28.5, 28.5]


def test_l2_asdf_is_a_roman_image_model(star):
    l2 = xr.open_zarr(star["store"], group="l2").isel(frame=0)
    with rdm.open(star["asdf"]) as m:
        assert isinstance(m, rdm.ImageModel)
        np.testing.assert_array_equal(m.data, l2["data"].values)
        np.testing.assert_array_equal(m.dq, l2["dq"].values)
        for name in ("err", "var_poisson", "var_rnoise"):  # float16, as the wfi_image schema has them
            assert m[name].dtype == np.float16
            np.testing.assert_array_equal(m[name], l2[name].values.astype(np.float16))
        np.testing.assert_array_equal(m.border_ref_pix_left, l2["border_ref_pix_left"].values)
        np.testing.assert_array_equal(m.amp33, l2["amp33"].values)
        assert m.meta.filename == "l2.asdf" and m.meta.calibration_software_name == "detflow"
        # metadata carried from the simulated L1
        assert [list(g) for g in m.meta.exposure.read_pattern] == CFG.read_pattern
        assert m.meta.exposure.frame_time == pytest.approx(CFG.frame_time)
        assert str(m.meta.exposure.start_time).startswith("2027-01-01")
        assert m.meta.instrument.optical_element == "F158"
        assert m.meta.cal_step.ramp_fit == "COMPLETE" and m.meta.cal_step.dark == "COMPLETE"
        # meta.wcs (gwcs) on the L2 pixels: the star lands where it is measured in roman.data
        x, y = m.meta.wcs.invert(*STAR)
        mx, my = measured_centroid(np.asarray(m.data, dtype=np.float64))
        assert abs(mx - x) < 0.01 and abs(my - y) < 0.01, (mx, my, x, y)
    with asdf.open(star["asdf"]) as af:  # detflow's own content beside the model, as the PIT writes it
        assert len(af["processinfo"]["weights"]) == len(CFG.read_pattern)
        assert af["processinfo"]["cal_step"]["ramp_fit"] == "COMPLETE"


def test_simulated_l1_and_references_are_roman_files(star):
    prod, t = star["prod"], star["truth"]
    act = (slice(4, -4), slice(4, -4))
    l1 = detflow.open_l1(prod.l1_files[0])
    with rdm.open(prod.l1_files[0]) as m:
        assert isinstance(m, rdm.ScienceRawModel)
        np.testing.assert_array_equal(m.data, l1["data"].values[0])
        assert [list(g) for g in m.meta.exposure.read_pattern] == CFG.read_pattern
        assert m.meta.exposure.nresultants == len(CFG.read_pattern)
    expected = {
        "mask": (rdm.MaskRefModel, "dq", None),
        "saturation": (rdm.SaturationRefModel, "data", None),
        "dark": (rdm.DarkRefModel, "dark_slope", t["dark_dn_per_s"]),
        "gain": (rdm.GainRefModel, "data", t["gain"]),
        "read": (rdm.ReadnoiseRefModel, "data", t["read_noise"]),
        "flat": (rdm.FlatRefModel, "data", t["flat"][act]),
    }
    for name, (cls, field, truth) in expected.items():
        with rdm.open(prod.caldir[name]) as m:
            assert isinstance(m, cls), name
            assert m.meta.reftype == name.upper().replace("READ", "READNOISE")
            if truth is not None:
                np.testing.assert_array_equal(m[field], truth, err_msg=name)
    with rdm.open(prod.caldir["mask"]) as m:
        assert (m.dq[0] & np.uint32(1 << 31)).all()  # REFERENCE_PIXEL on the border
    with rdm.open(prod.caldir["read"]) as m:  # the PIT's 1/f model, kept beside the schema's fields
        assert m["anc"]["C_PINK"] == CFG.pink_noise_dn and m["amp33"]["med"].shape == (64, 2)


def test_simulator_sky_truth_with_sip(tmp_path):
    """The simulator's WCS file (with SIP), its job and its truth agree on where the sources are."""
    import yaml

    sip = {"A_2_0": 4e-5, "B_1_1": -3e-5}  # ~0.03 pixel at the corners of this 32^2 frame
    cfg = CFG.model_copy(update={"nside": 32, "wcs_sip": sip, "star_radec": (RA0, DEC0 + 3 * 0.11 / 3600)})
    prod = simulate(tmp_path / "s", cfg)
    t = dict(np.load(prod.truth_file))
    w = WCS(fits.Header.fromstring(prod.wcs_file.read_text()))
    assert w.sip is not None and str(t["wcs_header"]) == prod.wcs_file.read_text()
    assert yaml.safe_load(prod.job_yaml.read_text())["FITSWCS"] == str(prod.wcs_file)
    x, y = w.all_world2pix([[float(t["star_ra"]), float(t["star_dec"])]], 0)[0]
    assert abs(x - float(t["star_x"])) < 1e-6 and abs(y - float(t["star_y"])) < 1e-6
    # the detector centre (15.5, 15.5) is the pointing; the star 3 pixels north of it at PA 25 deg
    assert np.hypot(x - 15.5, y - 15.5) == pytest.approx(3.0, abs=0.05)
    np.testing.assert_allclose(w.all_pix2world(np.column_stack([t["src_x"], t["src_y"]]), 0),
                               np.column_stack([t["src_ra"], t["src_dec"]]), rtol=0, atol=1e-12)  # fmt: skip
    with pytest.raises(ValueError, match="not inside the active area"):
        simulate(tmp_path / "far", cfg.model_copy(update={"star_radec": (RA0 + 1.0, DEC0)}))
    assert not (tmp_path / "far").exists()
