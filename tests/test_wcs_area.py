"""WCS input (PIT FITSWCS) and the pixel-area factor of the flat."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.wcs import WCS

from detflow.errors import DetflowInputError
from detflow.instruments.roman_wfi_plan import read_wcs_header
from detflow.kernels.pixel_area import pixel_area

SCALE = 0.11 / 3600  # deg per pixel


def tan_header(n=64, dec0=30.0, rot=20.0):
    c, s = np.cos(np.radians(rot)), np.sin(np.radians(rot))
    h = fits.Header()
    h.update(WCSAXES=2, CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=150.0, CRVAL2=dec0, CRPIX1=n / 2 + 1,
             CRPIX2=n / 2 + 1, CD1_1=-SCALE * c, CD1_2=SCALE * s, CD2_1=SCALE * s, CD2_2=SCALE * c)  # fmt: skip
    return h


@pytest.mark.parametrize("dec0", [30.0, -60.0])
def test_pixel_area_tan_projection(dec0):
    """A gnomonic (TAN) pixel of plane area a subtends a * cos^3(theta), theta from the tangent point."""
    n = 64
    w = WCS(tan_header(n, dec0))
    area = pixel_area(w, 0, n, n, north=dec0 > 0)
    a0 = np.radians(SCALE) ** 2
    assert area[n // 2, n // 2] == pytest.approx(a0, rel=1e-6)
    # far from the tangent point on a wide pixel grid the cos^3 law shows
    wide = tan_header(n, dec0)
    wide["CD1_1"], wide["CD1_2"], wide["CD2_1"], wide["CD2_2"] = -0.5, 0.0, 0.0, 0.5  # half-degree pixels
    big = pixel_area(WCS(wide), 0, n, n, north=dec0 > 0)
    yy, xx = np.mgrid[0:n, 0:n]
    r = np.hypot(yy - n / 2, xx - n / 2) * np.radians(0.5)
    expected = np.radians(0.5) ** 2 * np.cos(np.arctan(r)) ** 3
    np.testing.assert_allclose(big[5:-5, 5:-5], expected[5:-5, 5:-5], rtol=2e-3)
    # bands of rows give the same areas as the whole grid
    np.testing.assert_array_equal(pixel_area(w, 10, 30, n, dec0 > 0), area[10:30])


def test_read_wcs_header(tmp_path):
    good = tmp_path / "wcs.txt"
    good.write_text(tan_header().tostring())
    assert "RA---TAN" in read_wcs_header(good)
    newline = tmp_path / "wcs_lines.txt"
    newline.write_text(tan_header().tostring(sep="\n"))
    assert "DEC--TAN" in read_wcs_header(newline)
    bad = tmp_path / "bad.txt"
    bad.write_text("this is not a FITS header\n")
    with pytest.raises(DetflowInputError, match="bad.txt: wcs: expected a FITS header"):
        read_wcs_header(bad)


def test_pit_fitswcs_reaches_the_flat(tiny_wfi, tmp_path):
    import asdf
    import dask

    import detflow
    from detflow.runtime.job import load_job

    n = 32
    (tmp_path / "wcs.txt").write_text(tan_header(n).tostring())
    flat = tmp_path / "flat.asdf"
    asdf.AsdfFile({"roman": {"data": np.ones((n - 8, n - 8), np.float32)}}).write_to(flat)
    cfg = yaml.safe_load(tiny_wfi["pit_yaml"].read_text())
    cfg["FITSWCS"] = str(tmp_path / "wcs.txt")
    cfg["CALDIR"]["flat"] = str(flat)
    tiny_wfi["pit_yaml"].write_text(yaml.safe_dump(cfg))
    job = load_job(tiny_wfi["pit_yaml"])
    job = job.model_copy(update={"recipe": ["dq_init", "saturation", "linearity", "dark_current", "ramp_fit", "flat"]})
    with dask.config.set(scheduler="sync"):
        with_wcs = detflow.build(job)["l2"].compute()
        without = detflow.build(job.model_copy(update={"wcs": None}))["l2"].compute()
    assert "RA---TAN" in with_wcs.attrs["fits_wcs"]
    ratio = with_wcs["data"].values / without["data"].values
    # flat 1 everywhere: the slope is multiplied by the pixel area over (0.11 arcsec)^2, ~1 here
    area = pixel_area(WCS(tan_header(n)), 0, n, n, True)[4:-4, 4:-4] / 2.8440360952308436e-13
    np.testing.assert_allclose(ratio[0], area, rtol=1e-5)
