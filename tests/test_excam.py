"""Roman Coronagraph EXCAM: geometry presets, L1 reader and header rules, row bias, nonlinearity, ENF,
against plain NumPy and corgidrp 5.1.1 (its detector functions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from xarray.tests import raise_if_dask_computes

from detflow.errors import DetflowInputError
from detflow.instruments import roman_excam
from detflow.io.excam_l1 import check_nonlin_table, open_excam_l1, read_nonlin_table
from detflow.kernels import emccd

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def corgi(corgidrp_home):
    """corgidrp's detector module (imported with HOME at a temp dir: see conftest)."""
    import corgidrp.detector

    return corgidrp.detector


# ---- geometry -------------------------------------------------------------------------------------
def test_geometry_presets_agree_with_corgidrp_except_the_eng_conv_fix(corgi):
    for name, g in roman_excam.GEOMETRIES.items():
        up = corgi.detector_areas[name]
        assert (g.frame_rows, g.frame_cols) == (up["frame_rows"], up["frame_cols"])
        for region, r in g.regions.items():
            assert (r.rows, r.cols, r.row0, r.col0) == (up[region]["rows"], up[region]["cols"], *up[region]["r0c0"])
        rel = up["prescan_reliable"]
        assert g.reliable_cols == (rel["r0c0"][1], rel["r0c0"][1] + rel["cols"])
        start = up["prescan"]["r0c0"][1] + up["prescan"]["col_start"]  # upstream's window, prescan-relative
        if name == "ENG_CONV":
            assert start >= g.frame_cols  # upstream's window lies outside the frame; ours inside the prescan
        else:
            assert (start, up["prescan"]["r0c0"][1] + up["prescan"]["col_end"]) == g.reliable_cols


def test_geometry_selection():
    assert roman_excam.geometry_for(None, (1200, 2200)).name == "SCI"
    assert roman_excam.geometry_for("eng_em", (2200, 2200)).name == "ENG_EM"
    with pytest.raises(ValueError, match="ARRTYPE SCI frames are 1200x2200, got 2200x2200"):
        roman_excam.geometry_for("SCI", (2200, 2200))
    with pytest.raises(KeyError, match="no EXCAM geometry"):
        roman_excam.geometry_for(None, (1024, 1024))


@pytest.mark.parametrize("cards, want", [
    ({"EMGAIN_M": 101.5, "EMGAIN_A": 100.0, "EMGAIN_C": 90.0}, (101.5, "EMGAIN_M")),
    ({"EMGAIN_M": -999.0, "EMGAIN_A": 100.0, "EMGAIN_C": 90.0}, (100.0, "EMGAIN_A")),
    ({"EMGAIN_A": 0.0, "EMGAIN_C": 90.0}, (90.0, "EMGAIN_C")),
    ({"CMDGAIN": 50.0, "EMGAIN_C": 90.0, "EM_GAIN": 40.0}, (50.0, "CMDGAIN")),
    ({"EM_GAIN": 40.0}, (40.0, "EM_GAIN")),
])  # fmt: skip
def test_em_gain_keywords(cards, want):
    assert roman_excam.em_gain(cards) == want


# ---- the L1 reader --------------------------------------------------------------------------------
def _write_l1(path: Path, data: np.ndarray, **cards) -> Path:
    primary = fits.PrimaryHDU()
    primary.header["HIERARCH DATA_LEVEL"] = cards.pop("DATA_LEVEL", "L1")
    image = fits.ImageHDU(data.astype(np.uint16), name="SCI")
    for k, v in {"EXPTIME": 1.0, "EMGAIN_C": 100.0, "ARRTYPE": "SCI", **cards}.items():
        if v is not None:
            image.header[k] = v
    fits.HDUList([primary, image]).writeto(path)
    return path


def test_reader_lazy_coords_and_headers(tmp_path):
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 60000, (3, 1200, 2200)).astype(np.uint16)
    paths = [_write_l1(tmp_path / f"f{i}.fits", frames[i], EXPTIME=5.0, EMGAIN_A=200.0) for i in range(3)]
    before = [p.read_bytes() for p in paths]
    with raise_if_dask_computes():
        ds = open_excam_l1(tmp_path / "*.fits")
    assert ds["data"].dims == ("frame", "read", "y", "x") and ds["data"].shape == (3, 1, 1200, 2200)
    assert ds["data"].dtype == np.uint16 and list(ds["exptime"].values) == [5.0] * 3
    assert list(ds["em_gain"].values) == [200.0] * 3 and ds.attrs["geometry"] == "SCI"
    np.testing.assert_array_equal(ds["data"].values[:, 0], frames)
    assert "EMGAIN_A" in ds.attrs["inputs"][0]["fits_headers"][1]
    assert ds.attrs["inputs"][0]["em_gain_keyword"] == "EMGAIN_A"
    assert [p.read_bytes() for p in paths] == before  # inputs never modified


@pytest.mark.parametrize("cards, field", [
    ({"DATA_LEVEL": "L2a"}, "DATA_LEVEL: expected DATA_LEVEL L1, got L2a"),
    ({"EXPTIME": None}, "EXPTIME: expected the exposure time"),
    ({"EXPTIME": "soon"}, "EXPTIME: expected the exposure time"),
    ({"EMGAIN_C": None}, "EM gain: expected EMGAIN_M, EMGAIN_A, CMDGAIN"),
    ({"ARRTYPE": "FOO"}, "ARRTYPE: expected a known EXCAM geometry"),
    ({"ARRTYPE": "ENG"}, "ARRTYPE: expected a known EXCAM geometry"),
])  # fmt: skip
def test_reader_bad_headers(tmp_path, cards, field):
    path = _write_l1(tmp_path / "bad.fits", np.zeros((1200, 2200)), **cards)
    with pytest.raises(DetflowInputError) as err:
        open_excam_l1(path)
    assert str(err.value).startswith(f"{path}: {field}")


def test_reader_refuses_or_groups_mixed_frames(tmp_path):
    for i, (t, g) in enumerate([(1.0, 100.0), (1.0, 100.0), (2.0, 100.0), (1.0, 500.0)]):
        _write_l1(tmp_path / f"f{i}.fits", np.full((1200, 2200), i), EXPTIME=t, EMGAIN_C=g)
    with pytest.raises(DetflowInputError) as err:
        open_excam_l1(tmp_path)
    msg = str(err.value)
    assert "EXPTIME=1 s, EM gain=100, ARRTYPE=SCI: f0.fits, f1.fits" in msg
    assert "EXPTIME=2 s, EM gain=100, ARRTYPE=SCI: f2.fits" in msg and "EM gain=500" in msg
    groups = open_excam_l1(tmp_path, group=True)
    assert {k: v.sizes["frame"] for k, v in groups.items()} == {(1.0, 100.0, "SCI"): 2, (2.0, 100.0, "SCI"): 1,
                                                                (1.0, 500.0, "SCI"): 1}  # fmt: skip


# ---- numerics -------------------------------------------------------------------------------------
def test_row_bias_is_the_median_of_the_reliable_columns():
    rng = np.random.default_rng(3)
    frame = rng.normal(1000, 5, (2, 1200, 2200))
    frame[:, :, 800:1000] += np.arange(1200)[None, :, None] * 0.01  # a row-dependent bias
    frame[:, 7, 900] = 1e6  # a hot prescan pixel: the median ignores it
    bias, err = emccd.row_bias(frame, roman_excam.GEOMETRIES["SCI"].reliable_cols, bias_offset=3.0)
    ref = np.median(frame[:, :, 800:1000], axis=-1) - 3.0
    np.testing.assert_allclose(bias, ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(err, frame[:, :, 800:1000].std(axis=-1) / np.sqrt(200))
    assert np.allclose(bias[0] + 3.0, 1000 + 0.01 * np.arange(1200), atol=1.5)


def test_nonlinearity_matches_corgidrp(corgi):
    table = read_nonlin_table(DATA / "nonlin_table_TVAC.txt")

    class NonLin:  # corgidrp reads only .data of its calibration object
        data = table

    rng = np.random.default_rng(4)
    dn = rng.uniform(-500, 16000, (50, 60))
    gains = table[0, 1:]
    axes = check_nonlin_table(table)
    for g in (0.5, gains[0], 3.0, gains[3], 100.0, 1234.5, gains[-1], 9000.0):
        counts, curve = axes[1], emccd.relgain_curve(*axes, g)
        ours = emccd.relative_gain(dn, counts, curve)
        theirs = corgi.get_relgains(dn, g, NonLin)
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14, err_msg=f"EM gain {g}")


def test_bad_nonlinearity_tables(tmp_path):
    with pytest.raises(DetflowInputError, match=r"EM gain 50: expected a relative gain between 0.1 and 10, got 10000"):
        read_nonlin_table(DATA / "nonlin_spike_update.csv")
    table = np.genfromtxt(DATA / "nonlin_table_TVAC.txt", delimiter=",")
    t2 = table.copy()
    t2[5, 0] = t2[3, 0]  # DN axis not increasing
    p = tmp_path / "t.csv"
    np.savetxt(p, t2, delimiter=",")
    with pytest.raises(DetflowInputError, match=r"t.csv: column 0 \(DN\), row 5: expected strictly increasing counts"):
        read_nonlin_table(p)
    t3 = table.copy()
    t3[0, 2], t3[0, 3] = t3[0, 3], t3[0, 2]
    np.savetxt(p, t3, delimiter=",")
    with pytest.raises(DetflowInputError, match=r"row 0 \(EM gains\): expected strictly increasing"):
        read_nonlin_table(p)
    t4 = table.copy()
    t4[1:, 4] = 1.5
    np.savetxt(p, t4, delimiter=",")
    with pytest.raises(DetflowInputError, match="relative gains that reach 1.0"):
        read_nonlin_table(p)


def test_enf_and_saturation_match_corgidrp(corgi):
    g = np.array([1.0, 1.5, 10.0, 100.0, 5000.0])
    np.testing.assert_allclose(emccd.enf(g, roman_excam.N_EM_STAGES), corgi.ENF(g, 604), rtol=1e-14)
    assert emccd.enf(1.0) == pytest.approx(1.0) and emccd.enf(1e4) == pytest.approx(np.sqrt(2), rel=1e-2)
    for gain in (1.0, 10.0, 1000.0):
        want = corgi.calc_sat_fwc(np.array([gain]), np.array([90000.0]), np.array([100000.0]), 0.7)[0] / 8.7
        assert emccd.saturation_dn(gain, 100000.0, 90000.0, 8.7, 0.7) == pytest.approx(want, rel=1e-14)


def _cosmic_frames(rng, n=3, rows=60, cols=90, fwc=10000.0):
    cube = rng.normal(100, 20, (n, rows, cols))
    truth = []
    for j in range(n):
        for _ in range(6):
            r, c = rng.integers(0, rows), rng.integers(0, cols - 7)
            length = rng.integers(3, 7)  # at least cosm_filter + 1: shorter ones are filtered out
            cube[j, r, c : c + length] = rng.uniform(0.9, 1.2, length) * fwc  # the saturated plateau
            tail = fwc * 0.5 * np.exp(-np.arange(1, 15) / 4.0)
            stop = min(c + length + tail.size, cols)
            cube[j, r, c + length : stop] += tail[: stop - c - length]
            truth.append((j, r, c))
        cube[j, rng.integers(0, rows), rng.integers(0, cols)] = 2 * fwc  # a lone hot pixel, not a plateau
    return cube, truth


@pytest.mark.parametrize("cosm_filter, cosm_box, cosm_tail", [(1, 3, 10), (2, 1, 5), (1, 0, 30)])
def test_cosmic_plateaus_match_corgidrp(corgi, cosm_filter, cosm_box, cosm_tail):
    rng = np.random.default_rng(cosm_filter * 100 + cosm_tail)
    cube, truth = _cosmic_frames(rng)
    fwc, sat, plat = 10000.0, 0.7, 0.7
    want = corgi.flag_cosmics(cube, fwc, sat, plat, cosm_filter, cosm_box, cosm_tail, mode="image")
    got = np.zeros(cube.shape, np.uint8)
    for j in range(cube.shape[0]):
        emccd.flag_cosmics_frame(cube[j], fwc, sat, plat, cosm_filter, cosm_box, cosm_tail, False, 1, got[j])
    np.testing.assert_array_equal(got, want.astype(np.uint8))
    for j, r, c in truth:  # every injected head is masked
        assert got[j, r, c] == 1


def test_cosmic_tail_wraps_into_the_next_row_in_full_frame_mode(corgi):
    img = np.zeros((4, 20))
    img[1, 14:16] = 10000.0
    mask, longer = np.zeros(img.shape, np.uint8), np.zeros(img.shape, np.uint8)
    emccd.flag_cosmics_frame(img, 10000.0, 0.7, 0.7, 1, 0, 10, True, 1, mask)  # corgidrp's run-on
    emccd.flag_cosmics_frame(img, 10000.0, 0.7, 0.7, 1, 0, 10, True, 0, longer)  # full_frame_tail: full_length
    up = corgi.flag_cosmics(img[None], 10000.0, 0.7, 0.7, 1, 0, 10, mode="full")[0].astype(np.uint8)
    image_mode = corgi.flag_cosmics(img[None], 10000.0, 0.7, 0.7, 1, 0, 10, mode="image")[0]
    heads = [c for c in range(20) if image_mode[1, c] and not image_mode[1, c - 1]]
    assert heads == [14]  # one plateau: masked from its head to the end of the row
    # the 2-pixel running filter (rank 1 of 2: the max) is above threshold at columns 14-16, and walking
    # back from 16 (below the plateau level) starts a second head at 17, as upstream does; that head's
    # 1 + 10 + 1 masked pixels overflow the 20-pixel row by 9
    over = 17 + 12 - 20
    np.testing.assert_array_equal(mask, up)
    # corgidrp restarts the overflow at the last pixel of the hit row: one pixel short in the next row
    assert mask[1, 14:].all() and not mask[1, :14].any() and not mask[[0, 3]].any()
    assert mask[2, : over - 1].all() and not mask[2, over - 1 :].any()
    # full_length: the 9 pixels continue at the start of row 2
    assert longer[2, :over].all() and not longer[2, over:].any()
    np.testing.assert_array_equal(longer[:2], mask[:2])


def _combine(data, err, dq, bad_bits=0xFFFFFFFF):
    shape = data.shape[1:]
    outs = [np.empty(shape) for _ in range(4)] + [np.empty(shape, np.int64), np.empty(shape, np.uint32)]
    emccd.combine_stack(data, err, dq, np.uint32(bad_bits), *outs)
    return outs


def test_combine_matches_numpy_and_corgidrp(corgi):
    from corgidrp.combine import combine_images

    rng = np.random.default_rng(7)
    n, ny, nx = 40, 9, 11
    data = rng.normal(100, 10, (n, ny, nx)).astype(np.float32)
    err = rng.uniform(1, 3, (n, ny, nx)).astype(np.float32)
    dq = np.where(rng.random((n, ny, nx)) < 0.2, rng.choice([1, 2, 32, 128], (n, ny, nx)), 0).astype(np.uint32)
    dq[:, 0, 0] = 2  # every frame flagged: no value, the flags kept
    mean, median, em, emed, ngood, dqc = _combine(data, err, dq)
    good = dq == 0
    masked = np.where(good, data.astype(np.float64), np.nan)
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        np.testing.assert_allclose(mean, np.nanmean(masked, axis=0), rtol=1e-12)
        np.testing.assert_allclose(median, np.nanmedian(masked, axis=0), rtol=1e-12)
    np.testing.assert_array_equal(ngood, good.sum(axis=0))
    assert np.isnan(mean[0, 0]) and dqc[0, 0] == 2 and ngood[0, 0] == 0 and (dqc.ravel()[1:] == 0).all()
    for collapse, ours, ours_err in (("mean", mean, em), ("median", median, emed)):
        d, e, q, _ = combine_images(data.astype(np.float64).copy(), err[:, None].astype(np.float64).copy(), dq.copy(),
                                    collapse, num_frames_scaling=False)  # fmt: skip
        np.testing.assert_allclose(ours, d, rtol=1e-12, err_msg=collapse)
        np.testing.assert_allclose(ours_err, e[0], rtol=1e-6, err_msg=collapse)
        np.testing.assert_array_equal(dqc, q)
    # only chosen bits exclude a frame
    _, _, _, _, ng2, _ = _combine(data, err, dq, bad_bits=128)
    np.testing.assert_array_equal(ng2, (dq & 128 == 0).sum(axis=0))


def test_desmear_equals_the_direct_sum():
    rng = np.random.default_rng(9)
    img = rng.uniform(0, 5000, (300, 17))
    a = 223.5e-6 / 0.05
    direct = np.empty_like(img)
    for r in range(img.shape[0]):  # the O(rows^2) definition (corgidrp's loop)
        s = np.arange(r + 1)
        direct[r] = img[r] - ((a * (1 + a) ** (s - r - 1.0))[:, None] * img[: r + 1]).sum(axis=0)
    out = np.empty_like(img)
    emccd.desmear(img, 223.5e-6, 0.05, out)
    np.testing.assert_allclose(out, direct, rtol=1e-11, atol=1e-9)


def test_electrons_and_synthesized_dark():
    rng = np.random.default_rng(10)
    dn, err = rng.uniform(0, 1000, (5, 6)), rng.uniform(1, 2, (5, 6))
    e, ee = emccd.to_electrons(dn, err, 8.7, 250.0)
    np.testing.assert_allclose(e, dn * 8.7 / 250.0)
    np.testing.assert_allclose(ee, err * 8.7 / 250.0)
    e2, ee2 = emccd.to_electrons(dn - 500, err, 8.7, 250.0, shot_noise=True)
    shot = np.maximum(e2, 0) * emccd.enf(250.0) ** 2
    np.testing.assert_allclose(ee2**2, (err * 8.7 / 250.0) ** 2 + shot)
    np.testing.assert_allclose(ee2[e2 <= 0], (err * 8.7 / 250.0)[e2 <= 0], rtol=1e-14)
    fpn, dc, cic = rng.uniform(0, 5, (3, 4, 4))
    np.testing.assert_allclose(emccd.synthesized_dark(fpn, dc, cic, 100.0, 30.0), fpn / 100.0 + 30.0 * dc + cic)
