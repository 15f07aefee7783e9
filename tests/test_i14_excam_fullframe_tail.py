"""Full-frame cosmic-ray mode (``excam_bias: {region: full}``): a plateau near the end of a full-frame row
whose tail runs on into the next row is flagged as corgidrp 5.1.1 flags it (``detect_cosmic_rays(...,
mode='full')`` after ``prescan_biassub(return_full_frame=True)``), bit for bit on the same L1 files;
``full_frame_tail: full_length`` keeps the run-on as long as a tail inside one row (one pixel more)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from astropy.io import fits
from test_excam_vs_corgidrp import CR, FWC_EM, FWC_PP, KGAIN, _frames

from detflow.instruments import roman_excam
from detflow.io.excam_l1 import open_excam_l1
from detflow.steps import excam as sx
from detflow.steps.registry import get_step

GEOM = roman_excam.GEOMETRIES["SCI"]
ROW = 600  # full-frame rows holding a plateau at their right end (image rows, so corgidrp searches them)
ROW2 = 900


@pytest.fixture(scope="module")
def wrapped(corgidrp_home, tmp_path_factory):
    from corgidrp import mocks

    files = _frames(tmp_path_factory.mktemp("cr_full"), mocks, n=2, seed=21)
    for k, f in enumerate(files):
        with fits.open(f, mode="update") as hdul:
            img = hdul[1].data.astype(np.float64)
            img[ROW, 2193:2197] = 1000 + 12000  # head at 2193: 1 + 10 + 1 pixels run 8 past the row's end
            img[ROW2, 2196 - k : 2200] = 1000 + 12000  # plateaus ending on the row's last column
            hdul[1].data = np.clip(img, 0, 65535).astype(np.uint16)
    return files


def _theirs(home, files) -> np.ndarray:
    import corgidrp.data as cd
    import corgidrp.l1_to_l2a as l1a

    old = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        ds = cd.Dataset([str(f) for f in files])
        ds = l1a.prescan_biassub(ds, return_full_frame=True, num_stds=5)
        params = cd.DetectorParams({"KGAINPAR": KGAIN, "FWC_PP_E": FWC_PP, "FWC_EM_E": FWC_EM})
        ds = l1a.detect_cosmic_rays(ds, params, cosm_thresh=CR["sat_thresh"], mode="full", **CR)
        return ds.all_dq.copy()
    finally:
        if old is not None:
            os.environ["HOME"] = old


def _ours(files, **kw) -> np.ndarray:
    d = open_excam_l1(files)
    d = get_step("excam_bias")(d, None, {"outlier_nsigma": 5.0, "region": "full"})
    d = get_step("excam_cosmics")(d, None, dict(CR, fwc_em_e=FWC_EM, fwc_pp_e=FWC_PP, eperdn=KGAIN, **kw))
    return roman_excam.corgi_bits(d.compute(scheduler="sync")["dq"].values)


def test_full_frame_tail_that_runs_on_matches_corgidrp_bit_for_bit(corgidrp_home, wrapped):
    theirs = _theirs(corgidrp_home, wrapped).astype(np.uint8)
    ours = _ours(wrapped)
    assert ours.shape == theirs.shape == (2, GEOM.frame_rows, GEOM.frame_cols)
    # the 2-pixel filter (its max) is saturated one pixel past the plateau, and the walk back from there
    # starts a head at 2198 (upstream's choice): its 1 + 10 + 1 pixels run 10 past the row's end; corgidrp
    # restarts them at the row's last pixel (already flagged), so the next row holds 9 of them
    assert (theirs[:, ROW + 1, :9] & 128).all() and not (theirs[:, ROW + 1, 9:20] & 128).any()
    np.testing.assert_array_equal(ours, theirs)


def test_full_length_option_adds_the_one_pixel_corgidrp_leaves_off(corgidrp_home, wrapped):
    theirs = _theirs(corgidrp_home, wrapped).astype(np.uint8)
    longer = _ours(wrapped, full_frame_tail="full_length")
    diff = np.argwhere(longer != theirs)
    # one more pixel at the end of each run-on, nothing else: after row 600 (10 pixels instead of 9) and
    # after row 900 (the plateau from 2196 - k: 8 - k pixels instead of 7 - k)
    assert {(int(f), int(r)) for f, r, _ in diff} == {(0, ROW + 1), (1, ROW + 1), (0, ROW2 + 1), (1, ROW2 + 1)}
    assert len(diff) == 4 and (longer[diff[:, 0], diff[:, 1], diff[:, 2]] == 128).all()
    assert (longer[:, ROW + 1, :10] & 128).all() and not (longer[:, ROW + 1, 10:20] & 128).any()
    with pytest.raises(ValueError):
        sx.CosmicsParams(full_frame_tail="longer")
