"""Issue 14: the FITS exports carry the job's full-frame WCS moved onto the exported pixels, for any
detector region the product holds (read from the store's y/x coordinates), SIP distortion included."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr
from astropy.io import fits
from astropy.wcs import WCS, Sip

from detflow.io.exporters import export_noise_fits, export_wfi_fits


def full_frame_wcs() -> WCS:
    """A 4096^2 detector's WCS (TAN + 2nd-order SIP), FITS CRPIX at the detector centre."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    w.wcs.crval = [10.0, -30.0]
    w.wcs.crpix = [2048.5, 2048.5]
    th = np.radians(40.0)
    w.wcs.cd = 0.11 / 3600 * np.array([[-np.cos(th), np.sin(th)], [np.sin(th), np.cos(th)]])
    a, b = np.zeros((3, 3)), np.zeros((3, 3))
    a[2, 0], a[1, 1], b[0, 2] = 3e-7, -1e-7, 2e-7  # up to ~2 pixels at the corners
    w.sip = Sip(a, b, None, None, w.wcs.crpix)
    return w


def write_store(path, y, x, header_text: str) -> None:
    """A detflow-layout store (l2 and noise groups) over detector rows ``y`` and columns ``x``."""
    rng = np.random.default_rng(0)
    shape = (1, len(y), len(x))
    l2 = xr.Dataset({"data": (("frame", "y", "x"), rng.normal(size=shape).astype(np.float32), {"units": "DN / s"}),
                     "dq": (("frame", "y", "x"), np.zeros(shape, np.uint32))},
                    coords={"frame": [0], "y": y, "x": x}, attrs={"fits_wcs": header_text})  # fmt: skip
    noise = xr.Dataset({"noise": (("frame", "layer", "y", "x"), np.zeros((1, 2) + shape[1:], np.float32))},
                       coords={"frame": [0], "y": y, "x": x}, attrs={"layers": ["R", "O"], "seed": 1})  # fmt: skip
    xr.DataTree.from_dict({"/l2": l2, "/noise": noise}).to_zarr(str(path), consolidated=False)


def exported_wcs(path) -> tuple[WCS, fits.Header]:
    with fits.open(path) as hdul, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return WCS(hdul[0].header, naxis=2), hdul[0].header  # the noise cube's third axis is the layer


@pytest.mark.parametrize("y0, x0, ny, nx", [(4, 4, 40, 40), (1500, 3000, 50, 70)])
def test_exported_wcs_maps_each_pixel_to_its_detector_pixel(tmp_path, y0, x0, ny, nx):
    """The active region of a full frame (the 4-pixel border trimmed) and a subarray far from the
    detector centre: every exported pixel (i, j) has the sky position of detector pixel (x0 + i, y0 + j)."""
    full = full_frame_wcs()
    header = full.to_header(relax=True)
    header["OBSERVER"] = "kept"  # a card of the FITSWCS file that is not WCS travels along
    store = tmp_path / "s.zarr"
    write_store(store, np.arange(y0, y0 + ny), np.arange(x0, x0 + nx), header.tostring())
    jj, ii = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    expected = full.all_pix2world(np.column_stack([ii.ravel() + x0, jj.ravel() + y0]), 0)
    for path in (export_wfi_fits(store, tmp_path / "l2.fits"), export_noise_fits(store, tmp_path / "noise.fits")):
        w, hdr = exported_wcs(path)
        assert w.sip is not None and hdr["OBSERVER"] == "kept"
        got = w.all_pix2world(np.column_stack([ii.ravel(), jj.ravel()]), 0)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)  # degrees: 4 micro-arcsec
        # FITS pixels are 1-based: CRPIX moves by the 0-based offset of the first exported pixel
        assert list(w.wcs.crpix) == [2048.5 - x0, 2048.5 - y0]
    assert hdr["NAXIS"] == 3 and hdr["WCSAXES"] == 3 and hdr["CTYPE3"] == "LAYER"  # the noise cube


def test_non_contiguous_pixels_get_no_wcs(tmp_path):
    full = full_frame_wcs()
    store = tmp_path / "s.zarr"
    write_store(store, np.arange(10, 50, 2), np.arange(10, 30), full.to_header(relax=True).tostring())
    _, hdr = exported_wcs(export_wfi_fits(store, tmp_path / "l2.fits"))
    assert "CRPIX1" not in hdr and "CTYPE1" not in hdr and "A_2_0" not in hdr
    assert "not a contiguous detector region" in str(hdr["HISTORY"])
