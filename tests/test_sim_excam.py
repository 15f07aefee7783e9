"""The EXCAM (EMCCD) L1 simulator: files and headers, truth, the smear and nonlinearity inverses, the
mean signal against the truth, the gain register against emccd_detect, and corgidrp reading our files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits

from detflow.errors import DetflowInputError, OutputExistsError
from detflow.instruments import roman_excam
from detflow.io.excam_l1 import check_nonlin_table, open_excam_l1, read_nonlin_table
from detflow.kernels import emccd
from detflow.sim.excam import (
    ExcamSimConfig,
    apply_smear,
    em_gain_register,
    inverse_nonlinearity,
    simulate_excam,
)
from detflow.sim.excam import simulate as excam_simulate

TVAC = Path(__file__).parent / "data" / "nonlin_table_TVAC.txt"
SCI = roman_excam.GEOMETRIES["SCI"]
RS, CS = SCI.image.slices


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """Three SCI frames at EM gain 100 with the TVAC nonlinearity and every calibration file."""
    out = tmp_path_factory.mktemp("excam") / "run"
    cfg = ExcamSimConfig(n_frames=3, nonlin_table=TVAC, seed=7)
    return simulate_excam(out, cfg), cfg


@pytest.fixture(scope="module")
def corgi(corgidrp_home):
    """corgidrp (imported with HOME at a temp dir: see conftest)."""
    import corgidrp

    return corgidrp


def _read_frames(paths) -> np.ndarray:
    return np.stack([fits.getdata(p, "SCI") for p in paths])


# ---- smear ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("exptime", [0.05, 5.0, 100.0])
def test_desmear_inverts_the_smear_forward_model(exptime):
    rng = np.random.default_rng(3)
    x = rng.gamma(0.5, 200.0, (1024, 64))  # spiky, positive, like a scene
    y = apply_smear(x, exptime)
    a = roman_excam.ROW_READ_TIME / exptime
    np.testing.assert_allclose(y[:, 5], x[:, 5] + a * np.array([x[: r + 1, 5].sum() for r in range(1024)]), rtol=1e-13)
    out = np.empty_like(y)
    emccd.desmear(y, roman_excam.ROW_READ_TIME, exptime, out)
    np.testing.assert_allclose(out, x, rtol=0, atol=1e-9)


# ---- files, headers, truth -----------------------------------------------------------------------------
def test_l1_files_read_back_with_the_right_coords(sim):
    res, _cfg = sim
    assert [p.name for p in res.l1_files] == [f"excam_sim_L1_{k:04d}.fits" for k in range(3)]
    ds = open_excam_l1(res.l1_files)
    assert ds["data"].dims == ("frame", "read", "y", "x") and ds["data"].shape == (3, 1, 1200, 2200)
    assert ds["data"].dtype == np.uint16 and ds.attrs["geometry"] == "SCI"
    assert list(ds["exptime"].values) == [5.0] * 3 and list(ds["em_gain"].values) == [100.0] * 3
    assert list(ds["arrtype"].values) == ["SCI"] * 3
    assert list(ds["source_file"].values) == [p.name for p in res.l1_files]
    assert ds.attrs["inputs"][0]["em_gain_keyword"] == "EMGAIN_A"
    with fits.open(res.l1_files[1]) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "SCI"]
        pri, ext = hdul[0].header, hdul[1].header
        assert pri["DATA_LEVEL"] == "L1" and ext["DATALVL"] == "L1" and pri["FILENAME"] == res.l1_files[1].name
        assert (ext["EXPTIME"], ext["EMGAIN_C"], ext["EMGAIN_A"], ext["KGAINPAR"]) == (5.0, 100.0, 100.0, 8.7)
        assert (ext["ARRTYPE"], ext["LSAMNAME"], ext["ISPC"], ext["ISACQ"]) == ("SCI", "OPEN", 0, 0)
        assert ext["MJDEND"] > ext["MJDSRT"] and pri["SIMFRAME"] == 1
        assert hdul[1].data.dtype == np.uint16  # BZERO 32768 on disk


def test_calibration_files_config_and_truth(sim):
    res, cfg = sim
    out = res.outdir
    conf = yaml.safe_load(res.config.read_text())
    keys = {"eperdn", "fwc_em_e", "fwc_pp_e", "bias_offset", "generate_png_files", "non_linearity_filepath",
            "dark_current_map", "fixed_pattern_noise", "EXCAM_clock_induced_charge", "flatfield_filepath",
            "badpix_filepath"}  # fmt: skip
    assert set(conf) == keys
    assert (conf["eperdn"], conf["fwc_em_e"], conf["fwc_pp_e"], conf["bias_offset"]) == (8.7, 100000, 90000, 0)
    assert conf["generate_png_files"] is False
    for key in keys - {"eperdn", "fwc_em_e", "fwc_pp_e", "bias_offset", "generate_png_files"}:
        assert not Path(conf[key]).is_absolute() and (out / conf[key]).is_file()
        assert res.calib[key] == out / conf[key]
    np.testing.assert_array_equal(read_nonlin_table(out / conf["non_linearity_filepath"]), read_nonlin_table(TVAC))

    truth = np.load(res.truth)
    maps = {"dark_current_map": "dark_current", "fixed_pattern_noise": "fpn", "EXCAM_clock_induced_charge": "cic",
            "flatfield_filepath": "flat", "badpix_filepath": "badpix"}  # fmt: skip
    for key, name in maps.items():
        data = fits.getdata(out / conf[key])
        assert data.shape == (1024, 1024)
        np.testing.assert_array_equal(data, truth[name])
    assert fits.getdata(out / conf["badpix_filepath"]).dtype == np.uint8
    badpix = truth["badpix"].astype(bool)
    assert np.array_equal(badpix, truth["hot"] | truth["low_qe"]) and 50 < badpix.sum() < 400
    assert truth["dark_current"][truth["hot"]].min() >= 50 * cfg.dark_current
    lowqe = truth["low_qe"]
    assert abs(truth["flat"][~lowqe].mean() - 1) < 1e-12 and 0.005 < truth["flat"][~lowqe].std() < 0.1
    assert truth["flat"][lowqe].max() < 0.6
    np.testing.assert_allclose(truth["dark_current"][~truth["hot"]].mean(), cfg.dark_current, rtol=1e-9)
    np.testing.assert_allclose(truth["fpn"].std(), cfg.fpn_e, rtol=1e-9)
    assert truth["cosmic_mask"].shape == (3, 1024, 1024) and truth["cosmic_mask"].dtype == bool
    assert truth["row_bias_dn"].shape == (3, 1200)
    np.testing.assert_allclose(truth["expected_l2b_e"], truth["flux"] * 5.0 * truth["flat"], rtol=1e-14)
    np.testing.assert_array_equal(truth["expected_flat_corrected_e"], truth["flux"] * 5.0)
    np.testing.assert_allclose(truth["expected_dark_e"], emccd.synthesized_dark(
        truth["fpn"], truth["dark_current"], truth["cic"], 100.0, 5.0), rtol=1e-12)  # fmt: skip
    # the L2b truth is what dark subtraction and desmear make of the mean frame
    desm = np.empty((1024, 1024))
    emccd.desmear(truth["expected_frame_e"] - truth["expected_dark_e"], roman_excam.ROW_READ_TIME, 5.0, desm)
    np.testing.assert_allclose(desm, truth["expected_l2b_e"], rtol=0, atol=1e-9)
    # one cosmic-ray hit list entry per hit, heads on the image area and inside the masks
    assert truth["cr_frame"].size > 50
    for k, r, c in zip(truth["cr_frame"], truth["cr_row"], truth["cr_col"]):
        assert truth["cosmic_mask"][k, r - SCI.image.row0, c - SCI.image.col0]


def test_prescan_row_bias_matches_the_true_row_bias(sim):
    res, _ = sim
    frames = _read_frames(res.l1_files)
    truth = np.load(res.truth)
    bias, _err = emccd.row_bias(frames, SCI.reliable_cols)
    diff = bias - truth["row_bias_dn"]
    assert abs(diff.mean()) < 0.2 and diff.std() < 2.0  # median of 200 pixels of 11.5 DN noise
    # a row pattern of a few DN, present in the prescan and the image alike
    assert 2.0 < truth["row_bias_pattern_dn"].std() < 4.0
    pre = frames[:, :, 0:1000].mean(axis=(0, 2)) - truth["row_bias_dn"].mean(axis=0)
    assert np.abs(pre).max() < 2.0


def test_never_overwrites_and_leaves_nothing_on_failure(sim, tmp_path, monkeypatch):
    res, cfg = sim
    before = res.l1_files[0].read_bytes()
    with pytest.raises(OutputExistsError, match="never overwrites"):
        simulate_excam(res.outdir, cfg)
    assert res.l1_files[0].read_bytes() == before
    stray = tmp_path / "stray"
    (stray / "l1").mkdir(parents=True)
    (stray / "l1" / "other.fits").write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="outdir/l1"):
        simulate_excam(stray, ExcamSimConfig(n_frames=1))
    real = excam_simulate._simulate_frame

    def failing(cfg, truth, k):
        if k == 1:
            raise RuntimeError("disk full")
        return real(cfg, truth, k)

    monkeypatch.setattr(excam_simulate, "_simulate_frame", failing)  # where simulate_excam looks it up
    with pytest.raises(RuntimeError, match="disk full"):
        simulate_excam(tmp_path / "fail" / "deep", ExcamSimConfig(n_frames=2))
    assert not (tmp_path / "fail").exists()  # complete or absent


def test_frame_k_does_not_depend_on_n_frames(sim, tmp_path):
    res, _cfg = sim
    one = simulate_excam(tmp_path / "one", ExcamSimConfig(n_frames=1, nonlin_table=TVAC, seed=7), write_calibs=False)
    assert one.config is None and one.calib == {} and not (tmp_path / "one" / "calib").exists()
    np.testing.assert_array_equal(fits.getdata(one.l1_files[0], "SCI"), fits.getdata(res.l1_files[0], "SCI"))


def test_bad_config_is_one_clear_error():
    with pytest.raises(DetflowInputError, match="geometry: expected SCI, ENG or ENG_EM"):
        ExcamSimConfig(geometry="ENG_CONV")
    with pytest.raises(DetflowInputError, match=r"flux: expected an array of the SCI image area shape \(1024, 1024\)"):
        ExcamSimConfig(flux=np.ones((10, 10)))
    with pytest.raises(DetflowInputError, match="em_gain"):
        ExcamSimConfig(em_gain=0.5)


# ---- the mean signal recovers the truth ------------------------------------------------------------
@pytest.mark.parametrize("gain, table", [(1.0, None), (100.0, None), (100.0, TVAC)], ids=["g1", "g100", "g100-TVAC"])
def test_mean_frame_recovers_the_truth(tmp_path, gain, table):
    """mean_k((L1_k - row bias_k) [x relgain] * k / g) = S(flat flux t) + D t + C + F / g within the noise:
    per frame ENF^2 lam + (read noise / g)^2 + quantisation, cosmic-ray pixels (truth mask) left out."""
    nf = 4
    cfg = ExcamSimConfig(n_frames=nf, em_gain=gain, nonlin_table=table, seed=11)
    res = simulate_excam(tmp_path / "run", cfg, write_calibs=False)
    truth = np.load(res.truth)
    frames = _read_frames(res.l1_files)[:, RS, CS].astype(np.float64)
    dn = frames - truth["row_bias_dn"][:, RS, None]
    if table is not None:
        gains, counts, rel = check_nonlin_table(read_nonlin_table(table))
        dn = dn * emccd.relative_gain(dn, counts, emccd.relgain_curve(gains, counts, rel, gain))
        quant = (
            cfg.eperdn / gain * emccd.relative_gain(dn, counts, emccd.relgain_curve(gains, counts, rel, gain)).max()
        ) ** 2 / 12
    else:
        quant = (cfg.eperdn / gain) ** 2 / 12
    e = dn * cfg.eperdn / gain
    good = ~truth["cosmic_mask"].any(axis=0)
    assert good.mean() > 0.99
    mean = e.mean(axis=0)
    var = emccd.enf(gain) ** 2 * truth["mean_charge_e"] + (cfg.read_noise_e / gain) ** 2 + quant
    z = ((mean - truth["expected_frame_e"]) / np.sqrt(var / nf))[good]
    assert abs(z.mean()) < 5 / np.sqrt(z.size)
    assert abs(z.std() - 1) < 0.03
    # the bright pixels carry the scene: their summed mean signal is right within its noise (2% at g = 100)
    bright = good & (truth["mean_charge_e"] > 5)
    assert bright.sum() > 500
    diff = mean[bright].sum() - truth["expected_frame_e"][bright].sum()
    assert abs(diff) < 5 * np.sqrt(var[bright].sum() / nf)
    # cosmic rays are where the truth says: at EM gain 100 their plateaus saturate the gain register
    if gain == 100.0:
        sat = e[:, :, :] * gain >= 0.99 * cfg.fwc_em_e
        assert sat.any() and truth["cosmic_mask"][sat].all()


# ---- nonlinearity --------------------------------------------------------------------------------------
@pytest.mark.parametrize("gain", [1.0, 7.3, 100.0, 5197.0, 9000.0])
def test_inverse_nonlinearity_round_trips_with_the_relgain_correction(gain):
    table = read_nonlin_table(TVAC)
    gains, counts, rel = check_nonlin_table(table)
    curve = emccd.relgain_curve(gains, counts, rel, gain)
    rng = np.random.default_rng(5)
    x = np.concatenate([np.linspace(-500.0, 70000.0, 100001), rng.uniform(-50, 20000, 10000), counts * curve])
    y = inverse_nonlinearity(x, table, gain)
    back = y * emccd.relative_gain(y, counts, curve)
    np.testing.assert_allclose(back, x, rtol=1e-12, atol=1e-9)
    order = np.argsort(x)
    assert np.all(np.diff(y[order]) >= 0)


def test_nonlinearity_table_that_cannot_be_inverted_is_refused():
    table = np.array([[np.nan, 1.0, 10.0], [100.0, 1.0, 1.0], [200.0, 0.4, 1.0], [300.0, 1.2, 1.0]])
    with pytest.raises(DetflowInputError, match="invertible"):
        inverse_nonlinearity(np.array([1.0]), table, 1.0)


# ---- the gain register against emccd_detect ---------------------------------------------------------------
@pytest.mark.parametrize("lam, gain", [(0.5, 100.0), (5.0, 100.0), (1.0, 1000.0)])
def test_gain_register_matches_emccd_detect(lam, gain):
    """Our Gamma(n, g) register and emccd_detect's exact 604-stage branching process (its default,
    accurate mode) give the same output distribution for the same Poisson input."""
    rand_em_gain = pytest.importorskip("emccd_detect.rand_em_gain").rand_em_gain
    nsamp = 40000
    rng = np.random.default_rng(21)
    n = rng.poisson(lam, nsamp).astype(np.float64)
    ours = em_gain_register(n, gain, rng)
    state = np.random.get_state()
    try:
        np.random.seed(22)
        specs = {k: gain ** (1 / 604) - 1 for k in range(1, 605)}
        theirs = np.asarray(rand_em_gain(n.copy(), specs, 604), dtype=np.float64)
    finally:
        np.random.set_state(state)

    def moments(x):
        m, v = x.mean(), x.var()
        return m, v, np.sqrt(v / x.size), np.sqrt(np.mean((x - m) ** 4) - v * v) / np.sqrt(x.size)

    m1, v1, sm1, sv1 = moments(ours)
    m2, v2, sm2, sv2 = moments(theirs)
    assert abs(m1 - m2) < 5 * np.hypot(sm1, sm2)
    assert abs(v1 - v2) < 5 * np.hypot(sv1, sv2)
    # both near the analytic moments: mean lam g, variance lam g^2 ENF^2 (ENF^2 = 2 for the Gamma model)
    assert abs(m1 - lam * gain) < 5 * sm1 and abs(v1 - 2 * lam * gain**2) < 5 * sv1
    assert abs(v2 - emccd.enf(gain) ** 2 * lam * gain**2) < 5 * sv2
    # and the same histogram: quantiles of the multiplied pixels and the two-sample KS distance. (Below
    # the lower quartile the Gamma model is known to differ from the exact one by a few percent for n = 1.)
    hit = n > 0
    q = [0.25, 0.5, 0.75, 0.9, 0.99]
    np.testing.assert_allclose(np.quantile(ours[hit], q), np.quantile(theirs[hit], q), rtol=0.05)
    edges = np.quantile(np.concatenate([ours, theirs]), np.linspace(0, 1, 41))
    c1 = np.searchsorted(np.sort(ours), edges, side="right") / nsamp
    c2 = np.searchsorted(np.sort(theirs), edges, side="right") / nsamp
    assert np.abs(c1 - c2).max() < 0.02


def test_gain_register_at_unity_gain_is_the_identity():
    n = np.arange(10.0)
    np.testing.assert_array_equal(em_gain_register(n, 1.0, np.random.default_rng(0)), n)


# ---- corgidrp reads and processes our L1 --------------------------------------------------------------------
def test_corgidrp_opens_and_processes_our_l1(sim, corgi):
    res, cfg = sim
    truth = np.load(res.truth)
    dataset = corgi.data.Dataset([str(p) for p in res.l1_files[:2]])
    frame = dataset[0]
    assert frame.data.shape == (1200, 2200) and frame.ext_hdr["DATALVL"] == "L1"
    assert frame.ext_hdr["EMGAIN_A"] == 100.0 and frame.ext_hdr["KGAINPAR"] == 8.7 and frame.ext_hdr["ARRTYPE"] == "SCI"
    l2 = corgi.l1_to_l2a.prescan_biassub(dataset)
    assert l2[0].data.shape == (1024, 1024)
    bias = l2[0].hdu_list["BIAS"].data
    diff = bias - truth["row_bias_dn"][0, RS]
    assert abs(diff.mean()) < 0.3 and diff.std() < 2.0
    # its cosmic-ray finder (with our full well) flags the saturated plateaus the truth marks. corgidrp
    # looks for them before the nonlinearity correction, in raw DN: the TVAC relative gain at g = 100 is
    # 1.063 there, so the raw plateau is 0.94 of the linear full well and sat_thresh must be below that
    params = corgi.data.DetectorParams({"FWC_EM_E": cfg.fwc_em_e, "FWC_PP_E": cfg.fwc_pp_e, "KGAINPAR": cfg.eperdn})
    flagged = corgi.l1_to_l2a.detect_cosmic_rays(l2, params, sat_thresh=0.85, plat_thresh=0.75)
    for k in range(2):
        img = fits.getdata(res.l1_files[k], "SCI")[RS, CS].astype(float) - truth["row_bias_dn"][k, RS, None]
        sat = img * cfg.eperdn >= 0.88 * cfg.fwc_em_e
        plateau = sat & np.roll(sat, 1, axis=1) & np.roll(sat, -1, axis=1)  # inside runs of >= 3 pixels
        assert plateau.sum() > 20 and truth["cosmic_mask"][k][plateau].all()
        assert (flagged[k].dq[plateau] > 0).all()
