"""EXCAM cosmic rays beyond the plateau search: corgidrp's median-filter modes 1 and 2 and its exclusion of
the coronagraph inner working angle, each against corgidrp 5.1.1 (pinned in the test extras) bit for bit
on the same frames; the one intended difference (``median_filter_compare``) shown on a bright source."""

from __future__ import annotations

import os

import numpy as np
import pytest
from astropy.io import fits
from scipy import ndimage
from test_excam_vs_corgidrp import CR, FWC_EM, FWC_PP, KGAIN, _frames

from detflow.instruments import roman_excam
from detflow.io.excam_l1 import open_excam_l1
from detflow.kernels import emccd
from detflow.steps import excam as sx
from detflow.steps.registry import get_step

GEOM = roman_excam.GEOMETRIES["SCI"]


@pytest.fixture(scope="module")
def corgi(corgidrp_home):
    import corgidrp.data as cdata
    import corgidrp.l1_to_l2a as l1a
    from corgidrp import mocks

    return {"data": cdata, "l1a": l1a, "mocks": mocks, "home": corgidrp_home}


def _retag(paths, **headers):
    for p in paths:
        with fits.open(p, mode="update") as hdul:
            for k, v in headers.items():
                hdul[1].header[k] = v


def _theirs(corgi, files, **kw) -> np.ndarray:
    """corgidrp's DQ after prescan_biassub (image area) and detect_cosmic_rays(**kw)."""
    cd = corgi["data"]
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(corgi["home"])
    try:
        ds = cd.Dataset([str(f) for f in files])
        ds = corgi["l1a"].prescan_biassub(ds, return_full_frame=False, num_stds=5)
        params = cd.DetectorParams({"KGAINPAR": KGAIN, "FWC_PP_E": FWC_PP, "FWC_EM_E": FWC_EM})
        ds = corgi["l1a"].detect_cosmic_rays(ds, params, cosm_thresh=CR["sat_thresh"], **CR, **kw)
        return ds.all_dq.copy()
    finally:
        if old is not None:
            os.environ["HOME"] = old


def _ours(files, **kw) -> tuple[np.ndarray, np.ndarray]:
    d = open_excam_l1(files)
    d = get_step("excam_bias")(d, None, {"outlier_nsigma": 5.0})
    d = get_step("excam_cosmics")(d, None, dict(CR, fwc_em_e=FWC_EM, fwc_pp_e=FWC_PP, eperdn=KGAIN, **kw))
    d = d.compute(scheduler="sync")
    return roman_excam.corgi_bits(d["dq"].values), d["data"].values


@pytest.fixture(scope="module")
def open_frames(corgi, tmp_path_factory):
    return _frames(tmp_path_factory.mktemp("cr_modes"), corgi["mocks"], n=2, seed=11)


@pytest.mark.parametrize("mode", [1, 2])
def test_median_filter_modes_match_corgidrp_bit_for_bit(corgi, open_frames, mode):
    theirs = _theirs(corgi, open_frames, median_filter_mode=mode)
    ours, _ = _ours(open_frames, median_filter_mode=mode, median_filter_compare="frame")
    assert (theirs & 128).sum() > 2 * 6 * 4  # the plateaus were found
    np.testing.assert_array_equal(ours, theirs.astype(np.uint8))


def test_mode_two_adds_the_plateau_search_to_mode_one(open_frames):
    one, _ = _ours(open_frames, median_filter_mode=1, median_filter_compare="frame")
    two, _ = _ours(open_frames, median_filter_mode=2, median_filter_compare="frame")
    assert np.all((two & one) == one)  # everything mode 1 flags, mode 2 flags too


def test_iwa_is_left_out_of_the_search_as_corgidrp_does(corgi, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cr_iwa")
    files = _frames(tmp, corgi["mocks"], n=1, seed=12)
    # NFOV at 1F: 3 lambda/D = 7 pixels; a plateau right at the EACQ centre, another well outside
    cy, cx = 300, 400
    with fits.open(files[0], mode="update") as hdul:
        h = hdul[1].header
        h.update(LSAMNAME="NFOV", CFAMNAME="1F", DPAMNAME="IMAGING", EACQ_ROW=cy, EACQ_COL=cx)
        img = hdul[1].data
        r0, c0 = GEOM.image.row0, GEOM.image.col0
        img[r0 + cy, c0 + cx - 2 : c0 + cx + 2] = 13000
        img[r0 + 600, c0 + 800 : c0 + 804] = 13000
    assert roman_excam.iwa_radius_pix("1F", 3.0) == 7
    theirs = _theirs(corgi, files)
    ours, _ = _ours(files)
    np.testing.assert_array_equal(ours, theirs.astype(np.uint8))
    assert not (ours[0, cy, cx - 2 : cx + 2] & 128).any()  # inside the IWA: not a cosmic ray
    assert (ours[0, 600, 800:804] & 128).all()
    off, _ = _ours(files, skip_coronagraph_iwa=False)
    assert (off[0, cy, cx - 2 : cx + 2] & 128).all()


def test_iwa_follows_each_frames_headers_across_blocks(corgi, tmp_path_factory):
    """Three frames, one per dask block, only the middle one behind a Lyot stop: the IWA is left out of
    that frame's search alone (each block must know which frames of the data set it holds)."""
    tmp = tmp_path_factory.mktemp("cr_iwa_frames")
    files = _frames(tmp, corgi["mocks"], n=3, seed=15)
    cy, cx = 300, 400
    r0, c0 = GEOM.image.row0, GEOM.image.col0
    for k, f in enumerate(files):
        with fits.open(f, mode="update") as hdul:
            if k == 1:
                hdul[1].header.update(LSAMNAME="NFOV", CFAMNAME="1F", DPAMNAME="IMAGING", EACQ_ROW=cy, EACQ_COL=cx)
            hdul[1].data[r0 + cy, c0 + cx - 2 : c0 + cx + 2] = 13000
    theirs = _theirs(corgi, files)
    ours, _ = _ours(files)
    np.testing.assert_array_equal(ours, theirs.astype(np.uint8))
    hit = [(ours[k, cy, cx - 2 : cx + 2] & 128).all() for k in range(3)]
    assert hit == [True, False, True]


def test_polarimetry_gives_two_iwa_beams(corgi, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cr_pol")
    files = _frames(tmp, corgi["mocks"], n=1, seed=13)
    _retag(files, LSAMNAME="WFOV", CFAMNAME="3C", DPAMNAME="POL45", EACQ_ROW=512, EACQ_COL=512)
    np.testing.assert_array_equal(_ours(files)[0], _theirs(corgi, files).astype(np.uint8))
    circles = sx.iwa_circles(open_excam_l1(files), sx.CosmicsParams())[0]
    d = int(round(7.5 * np.cos(np.deg2rad(45)) / (2 * roman_excam.PLATESCALE_ARCSEC)))
    assert circles == ((512 + d, 512 - d, 17), (512 - d, 512 + d, 17))


def test_unknown_filter_is_a_clear_error(corgi, tmp_path_factory):
    from detflow.errors import DetflowInputError

    tmp = tmp_path_factory.mktemp("cr_badfilter")
    files = _frames(tmp, corgi["mocks"], n=1, seed=14)
    _retag(files, LSAMNAME="NFOV", CFAMNAME="9Z")
    with pytest.raises(DetflowInputError, match=r"CFAMNAME.*9Z") as err:
        get_step("excam_cosmics")(open_excam_l1(files), None, {})
    assert files[0].name in str(err.value)


def test_difference_compare_keeps_a_bright_source_that_frame_compare_flags():
    """The intended difference: corgidrp compares the frame itself with a threshold taken from
    frame - median filter, so any source brighter than that threshold is flagged as a cosmic ray."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256]
    img = rng.normal(0, 5, (256, 256)) + 5000 * np.exp(-((yy - 128) ** 2 + (xx - 128) ** 2) / (2 * 12.0**2))
    img[40, 30:34] += 4000  # two cosmic rays
    img[200, 180:183] += 3500
    img[10, 10] = img[250, 250] = -1500  # cold pixels: the background peak is an interior bin, as in real frames
    area = (slice(None), slice(None))
    diff_mask, t = sx.median_filter_cosmics(img, area, (10, 10), 21, 5, False, "difference")
    frame_mask, t2 = sx.median_filter_cosmics(img, area, (10, 10), 21, 5, False, "frame")
    assert t == t2 and 0 < t < 3500
    for m in (diff_mask, frame_mask):
        assert m[40, 30:34].all() and m[200, 180:183].all()
        assert m[40, 34:39].all() and not m[40, 39]  # the tail: 5 pixels after the streak's last pixel
    assert not diff_mask[118:139, 118:139].any()  # the source is kept
    assert frame_mask[128, 128]  # corgidrp's comparison flags its core


def test_histogram_threshold_against_a_direct_reading():
    """First local minimum above the background peak, on a histogram built by hand."""
    rng = np.random.default_rng(1)
    diff = np.concatenate([rng.normal(0, 1, 100000), rng.uniform(20, 30, 500)])
    t = sx.histogram_threshold(diff, 21)
    counts, edges = np.histogram(diff, 21)
    centers = 0.5 * (edges[1:] + edges[:-1])
    peak = int(np.argmax(counts))
    first_min = next(i for i in range(peak + 1, 20) if counts[i] <= counts[i - 1] and counts[i] < counts[i + 1])
    assert t == pytest.approx(centers[first_min])
    assert 1 < t < 25


def test_nan_row_filter_is_numpys_nanmedian_over_the_window():
    rng = np.random.default_rng(2)
    for size in (2, 3, 4):
        row = rng.normal(size=300)
        row[rng.random(300) < 0.3] = np.nan
        row[100:104] = np.nan
        out = np.empty(300)
        emccd._row_nanmedian_filter(row, size, out)
        with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
            ref = ndimage.vectorized_filter(row, np.nanmedian, size=size, mode="nearest")
        np.testing.assert_array_equal(out, ref)
