"""Damaged FITS inputs give the same one-line error whichever reader meets them (detflow.io.fits_input): the
EXCAM L1 reader, the plain CCD reader and the ramp-cube reader, on real files written by astropy and then
damaged the ways copies get damaged (cut inside a header, cut inside the data, not FITS, missing)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from detflow.errors import CorruptInputError, DetflowInputError
from detflow.io.ccd_fits import read_ccd_header
from detflow.io.excam_l1 import read_excam_header
from detflow.io.fits_input import check_data_complete, data_end, open_fits
from detflow.io.fits_ramp import open_fits_ramp


def _ccd(path, ext=True):
    data = np.arange(64 * 48, dtype=np.uint16).reshape(64, 48)
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(data)] if ext else [fits.PrimaryHDU(data)]
    fits.HDUList(hdus).writeto(path)
    return path


def _excam(path):
    hdr = fits.Header({"DATALVL": "L1", "EXPTIME": 5.0, "EMGAIN_C": 100.0, "ARRTYPE": "SCI"})
    img = fits.ImageHDU(np.zeros((1200, 2200), dtype=np.uint16), header=hdr)
    fits.HDUList([fits.PrimaryHDU(header=hdr), img]).writeto(path)
    return path


def _ramp(path):
    hdu = fits.ImageHDU(np.zeros((2, 4, 16, 16), dtype=np.uint16), name="SCI")
    fits.HDUList([fits.PrimaryHDU(header=fits.Header({"TFRAME": 3.0})), hdu]).writeto(path)
    return path


READERS = {"ccd": (_ccd, read_ccd_header), "excam": (_excam, read_excam_header), "ramp": (_ramp, open_fits_ramp)}


@pytest.mark.parametrize("kind", READERS)
def test_a_good_file_reads(tmp_path, kind):
    write, read = READERS[kind]
    path = write(tmp_path / "good.fits")
    assert read(path) is not None
    with open_fits(path) as hdul:
        assert data_end(hdul, len(hdul) - 1) <= path.stat().st_size


@pytest.mark.parametrize("kind", READERS)
def test_cut_inside_the_data(tmp_path, kind):
    write, read = READERS[kind]
    path = write(tmp_path / "cut.fits")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 2 * 2880])  # the last two blocks of the data lost
    with pytest.raises(CorruptInputError) as err:
        read(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: data: expected ") and "truncated" in msg and "\n" not in msg


@pytest.mark.parametrize("kind", READERS)
def test_cut_inside_a_header(tmp_path, kind):
    write, read = READERS[kind]
    path = write(tmp_path / "cut.fits")
    with fits.open(path) as hdul:
        last = len(hdul) - 1
        start = hdul.fileinfo(last)["hdrLoc"]
    path.write_bytes(path.read_bytes()[: start + 80 * 3])  # three cards of the last header, then nothing
    with pytest.raises(CorruptInputError) as err:
        read(path)
    assert str(err.value).startswith(f"{path}: header of HDU {last}: expected a complete FITS header")


@pytest.mark.parametrize("kind", READERS)
def test_not_fits_and_missing(tmp_path, kind):
    _, read = READERS[kind]
    junk = tmp_path / "junk.fits"
    junk.write_bytes(b"this was never a FITS file\n" * 200)
    with pytest.raises(CorruptInputError) as err:
        read(junk)
    assert str(err.value).startswith(f"{junk}: file: expected a readable FITS file, got ")
    with pytest.raises(DetflowInputError) as err:
        read(tmp_path / "absent.fits")
    assert str(err.value).startswith(f"{tmp_path / 'absent.fits'}: file: expected an existing ")


def test_check_data_complete_names_the_hdu_shape(tmp_path):
    path = _ccd(tmp_path / "a.fits", ext=False)
    with open_fits(path) as hdul:
        check_data_complete(path, hdul, 0)  # complete: no error
    path.write_bytes(path.read_bytes()[: 2880 + 100])
    with open_fits(path) as hdul, pytest.raises(CorruptInputError, match=r"for a 64x48 BITPIX 16 image"):
        check_data_complete(path, hdul, 0)
