"""Damaged ground HxRG reads: the same one-line errors as the other families' FITS readers, and ``on_error:
skip`` leaving out the exposure a damaged read belongs to (listed in ``skipped_inputs``)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from astropy.io import fits

from detflow.errors import CorruptInputError
from detflow.io.ccd_fits import read_ccd_header
from detflow.io.hxrg_fits import open_hxrg
from detflow.runtime.run import build, skipped_inputs
from detflow.sim.ioi import IoiSimConfig, simulate_ioi


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    d = tmp_path_factory.mktemp("ioi") / "raw"
    simulate_ioi(d, IoiSimConfig(size=128, dithers=3, read_mode="cds"))
    return d


def _cut(raw, tmp_path, name: str, nbytes: int):
    """A copy of the reads with ``name`` cut to ``nbytes`` (the inputs are never modified)."""
    d = tmp_path / "raw"
    shutil.copytree(raw, d)
    p = d / name
    p.write_bytes(p.read_bytes()[:nbytes])
    return d, p


def _cube(path):
    """A JWST-style cube file: a primary header, then a SCI extension of (integration, group, y, x)."""
    sci = fits.ImageHDU(np.zeros((2, 3, 64, 64), np.float32), name="SCI")
    sci.header["TFRAME"] = 10.7
    fits.HDUList([fits.PrimaryHDU(), sci]).writeto(path)
    return path


@pytest.mark.parametrize(
    ("name", "nbytes", "field"),
    [("i_e_20150227_1_2_2_0.fits", 1000, "file"),  # a read cut inside its (only) header: not FITS
     ("i_e_20150227_1_2_2_0.fits", 2880 + 8000, "data"),  # inside its pixels
     ("cube.fits", 2880 + 1000, "header of HDU 1"),  # a cube cut inside its SCI header (astropy drops the HDU)
     ("cube.fits", 2 * 2880 + 8000, "data")],
    ids=["read header", "read data", "cube header", "cube data"],
)  # fmt: skip
def test_a_cut_file_gives_the_message_of_the_other_families(raw, tmp_path, name, nbytes, field):
    if name == "cube.fits":
        src = _cube(tmp_path / "cube.fits")
        p = tmp_path / "cut" / name
        p.parent.mkdir()
        p.write_bytes(src.read_bytes()[:nbytes])
        d = p.parent
    else:
        d, p = _cut(raw, tmp_path, name, nbytes)
    with pytest.raises(CorruptInputError) as ours:
        open_hxrg(d)
    assert str(ours.value).startswith(f"{p}: {field}: expected ") and "\n" not in str(ours.value)
    if field != "data":  # the data's message names the shape the reader wants: the same words, not one string
        with pytest.raises(CorruptInputError) as ccd:  # the plain CCD reader on the same file
            read_ccd_header(p)
        assert str(ours.value) == str(ccd.value)
    else:
        assert "(truncated)" in str(ours.value) and " BITPIX " in str(ours.value)


def test_on_error_skip_leaves_out_the_exposure_of_a_damaged_read(raw, tmp_path):
    d, p = _cut(raw, tmp_path, "i_e_20150227_1_2_2_0.fits", 1000)  # the signal read of dither 2
    job = {"pipeline": "hxrg_ground", "input": str(d), "output": str(tmp_path / "o.zarr"), "read_mode": "cds"}
    with pytest.raises(CorruptInputError, match="i_e_20150227_1_2_2_0.fits: file: expected a readable FITS file"):
        build(job)
    products = build(dict(job, on_error="skip"))
    frames = products["frames"]
    assert list(frames["dither"].values) == [1, 3]  # the pedestal read of dither 2 is left out with it
    assert "i_e_20150227_1_2_1_0.fits" not in frames["source_file"].values
    (rec,) = skipped_inputs(products)
    assert rec["file"] == str(p) and rec["frames"] == 1 and rec["field"] == "file"
