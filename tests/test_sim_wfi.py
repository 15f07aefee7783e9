"""The Roman WFI simulator: files, formats, determinism and the physics truth it promises.

Everything is checked with plain numpy/asdf/yaml code here, independent of any detflow pipeline step.
"""

from __future__ import annotations

from pathlib import Path

import asdf
import numpy as np
import pydantic
import pytest
import yaml
from numpy.polynomial import legendre as L

from detflow.errors import OutputExistsError
from detflow.schema import DQ
from detflow.sim import wfi
from detflow.sim.wfi import CAL_NAMES, SimConfig, SimProducts, simulate

NB = 4
ACTIVE = (slice(NB, -NB), slice(NB, -NB))

BASE = dict(
    nside=64,
    n_sources=12,
    dead_pixel_fraction=2e-3,  # enough dead/hot pixels to exist on a 56x56 active area
    hot_pixel_fraction=2e-3,
)


def read_roman(path: Path) -> dict:
    """The ``roman`` tree of an ASDF file with every array loaded into memory."""

    def load(node):  # plain dicts and roman_datamodels nodes (tagged files) alike
        if isinstance(node, dict) or hasattr(node, "keys"):
            return {k: load(v) for k, v in node.items()}
        if isinstance(node, list) or type(node).__name__ == "LNode":
            return [load(v) for v in node]
        if hasattr(node, "shape") and hasattr(node, "dtype"):
            return np.array(node)
        return node

    with asdf.open(path, lazy_load=False, memmap=False) as af:
        return load(af.tree["roman"])


def border_mask(n: int) -> np.ndarray:
    m = np.ones((n, n), dtype=bool)
    m[ACTIVE] = False
    return m


def linearise(data: np.ndarray, lin: dict) -> np.ndarray:
    """phi(S) with numpy's legval (coefficients along axis 0)."""
    smin = lin["Smin"].astype(np.float64)
    smax = lin["Smax"].astype(np.float64)
    z = -1.0 + 2.0 * (np.asarray(data, dtype=np.float64) - smin) / (smax - smin)
    return L.legval(z, lin["data"].astype(np.float64), tensor=False)


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> SimProducts:
    cfg = SimConfig(**BASE, n_exposures=2, seed=1)
    return simulate(tmp_path_factory.mktemp("sim") / "out", cfg)


@pytest.fixture(scope="module")
def truth(sim):
    return wfi.load_truth(sim.truth_file)


@pytest.fixture(scope="module")
def noiseless(tmp_path_factory):
    cfg = SimConfig(
        **BASE,
        seed=3,
        poisson=False,
        read_noise_dn=0.0,
        pink_noise_dn=0.0,
        cr_rate=0.0,
        sky_e_per_s=40.0,  # a bright sky keeps uint16 rounding far below 1e-3 of the ramp
        write_job_yaml=False,
    )
    return cfg, simulate(tmp_path_factory.mktemp("noiseless") / "out", cfg)


# ---- files, shapes, dtypes ------------------------------------------------------------------------
def test_products_and_layout(sim):
    out = sim.truth_file.parent
    assert sim.l1_files == [out / "l1" / "exposure_000.asdf", out / "l1" / "exposure_001.asdf"]
    assert set(sim.caldir) == set(CAL_NAMES)
    for name, path in sim.caldir.items():
        assert path == out / "caldir" / f"{name}.asdf" and path.is_file()
    assert sim.truth_file == out / "truth.npz" and sim.truth_file.is_file()
    assert sim.job_yaml == out / "gen_cal_image.yaml" and sim.job_yaml.is_file()
    assert not list(out.rglob("*.partial"))


def test_l1_format(sim):
    n, ng = 64, 8
    for i, path in enumerate(sim.l1_files):
        r = read_roman(path)
        assert r["data"].shape == (ng, n, n) and r["data"].dtype == np.uint16
        assert r["amp33"].shape == (ng, n, n // 32) and r["amp33"].dtype == np.uint16
        meta = r["meta"]
        exp = meta["exposure"]
        assert exp["read_pattern"] == wfi.DEFAULT_READ_PATTERN
        assert exp["frame_time"] == pytest.approx(3.04)
        assert exp["ngroups"] == exp["nresultants"] == ng
        assert exp["type"] == "WFI_IMAGE"
        assert str(exp["start_time"]).startswith("2027-")  # an astropy Time, as the Roman schema has it
        gs = meta["guide_star"]
        assert 0 <= gs["window_xstart"] < gs["window_xstop"] <= n
        assert 0 <= gs["window_ystart"] < gs["window_ystop"] <= n
        assert meta["instrument"] == {"name": "WFI", "detector": "WFI01", "optical_element": "F158"}
        assert meta["filename"] == path.name
    t0 = read_roman(sim.l1_files[0])["meta"]["exposure"]["start_time"]
    t1 = read_roman(sim.l1_files[1])["meta"]["exposure"]["start_time"]
    assert t1 > t0


def test_no_guide_window_is_minus_one(tmp_path):
    p = simulate(tmp_path / "o", SimConfig(nside=32, guide_window=None, write_job_yaml=False))
    gs = read_roman(p.l1_files[0])["meta"]["guide_star"]
    assert {gs[k] for k in ("window_xstart", "window_xstop", "window_ystart", "window_ystop")} == {-1}
    assert p.job_yaml is None


def test_caldir_formats(sim, truth):
    n, a, ng = 64, 56, 8
    border = border_mask(n)
    ref = np.uint32(DQ.REFERENCE_PIXEL)

    mask = read_roman(sim.caldir["mask"])["dq"]
    assert mask.shape == (n, n) and mask.dtype == np.uint32
    assert np.all(mask[border] & ref) and not np.any(mask[~border] & ref)
    dead = (mask & np.uint32(DQ.DEAD)) > 0
    hot = (mask & np.uint32(DQ.HOT)) > 0
    assert dead.any() and hot.any()
    np.testing.assert_array_equal(dead, truth["dead"])
    np.testing.assert_array_equal(hot, truth["hot"])
    assert np.all(mask[dead] & np.uint32(DQ.DO_NOT_USE))

    sat = read_roman(sim.caldir["saturation"])
    assert sat["data"].shape == (n, n) and sat["data"].dtype == np.float32
    assert sat["dq"].shape == (n, n) and sat["dq"].dtype == np.uint32
    nan = np.isnan(sat["data"])
    assert nan.sum() == SimConfig().n_no_sat_check and not nan[border].any()
    assert np.all(sat["data"][~nan] > truth["bias_dn"][~nan] + 40000)

    lin = read_roman(sim.caldir["linearitylegendre"])
    ncoef = SimConfig().nonlin_ncoef
    assert lin["data"].shape == (ncoef, n, n) and lin["data"].dtype == np.float32
    for key in ("Smin", "Smax", "Sref"):
        assert lin[key].shape == (n, n) and lin[key].dtype == np.float32
    assert np.all(lin["Smin"] < lin["Sref"]) and np.all(lin["Sref"] < lin["Smax"])
    np.testing.assert_array_equal(lin["Sref"], truth["bias_dn"])
    assert lin["dq"].dtype == np.uint32
    assert np.all(lin["dq"][border] & ref) and not np.any(lin["dq"][~border] & ref)
    assert ((lin["dq"] & np.uint32(DQ.NO_LIN_CORR)) > 0).sum() == SimConfig().n_no_lin_corr

    dark = read_roman(sim.caldir["dark"])
    assert dark["data"].shape == (ng, n, n) and dark["data"].dtype == np.float32
    assert dark["dark_slope"].shape == (n, n) and dark["dark_slope"].dtype == np.float32
    assert dark["dq"].shape == (n, n) and dark["dq"].dtype == np.uint32
    np.testing.assert_array_equal(dark["dark_slope"], truth["dark_dn_per_s"])
    # the expected dark resultants climb from the bias at the dark slope (linearised)
    lin_dark = linearise(dark["data"], lin)
    t = truth["resultant_times"].astype(np.float64)
    live = ~border & ~truth["dead"]
    np.testing.assert_allclose(lin_dark[:, live], (dark["dark_slope"][live][None] * t[:, None]), atol=0.01)
    assert dark["dark_slope"][hot].min() > 10 * np.median(dark["dark_slope"][live])

    gain = read_roman(sim.caldir["gain"])["data"]
    assert gain.shape == (n, n) and gain.dtype == np.float32
    assert abs(gain.mean() - 1.8) < 0.05 and 0.01 < gain.std() / gain.mean() < 0.05

    rd = read_roman(sim.caldir["read"])
    assert rd["data"].shape == (n, n) and rd["data"].dtype == np.float32
    assert abs(np.median(rd["data"]) - 6.5) < 0.3
    assert rd["amp33"]["med"].shape == (n, n // 32) and rd["amp33"]["med"].dtype == np.float32
    assert rd["amp33"]["std"].shape == (n, n // 32) and rd["amp33"]["std"].dtype == np.float32
    assert rd["amp33"]["M_PINK"] == 1.0 and "RU_PINK" in rd["amp33"]
    assert rd["anc"]["C_PINK"] == pytest.approx(2.0)

    flat = read_roman(sim.caldir["flat"])["data"]
    assert flat.shape == (a, a) and flat.dtype == np.float32
    assert flat.mean() == pytest.approx(1.0, abs=1e-4) and 0.01 < flat.std() < 0.06

    ipc = read_roman(sim.caldir["ipc4d"])["data"]
    assert ipc.shape == (3, 3, a, a) and ipc.dtype == np.float32
    np.testing.assert_allclose(ipc.sum(axis=(0, 1)), 1.0, atol=1e-5)
    assert 0.90 < ipc[1, 1].mean() < 0.96
    assert 0.010 < ipc[1, 0].mean() < 0.020 and 0.001 < ipc[0, 0].mean() < 0.003
    assert ipc[1, 0].std() > 0  # per-pixel variation


def test_truth_contents(sim, truth):
    n = 64
    maps = (
        "slope_dn",
        "sky_slope_dn",
        "flux_e",
        "flat",
        "gain",
        "read_noise",
        "dark_dn_per_s",
        "bias_dn",
        "nonlin_beta",
    )
    for key in maps:
        assert truth[key].shape == (n, n) and truth[key].dtype == np.float32, key
    for key in ("saturated", "dead", "hot"):
        assert truth[key].shape == (n, n) and truth[key].dtype == bool, key
    border = border_mask(n)
    assert not truth["slope_dn"][border].any() and not truth["flux_e"][border].any()
    assert not truth["slope_dn"][truth["dead"]].any()
    live = ~border & ~truth["dead"]
    # sky 1.5 e/s through a ~1.8 e/DN gain: the faint-pixel floor of slope_dn is ~0.8 DN/s
    assert 0.7 < np.median(truth["slope_dn"][live]) < 0.95
    assert truth["sky_e_per_s_exposure"].shape == (2,)
    assert truth["sky_e_per_s_exposure"][0] == pytest.approx(1.5)
    assert truth["sky_e_per_s_exposure"][1] != truth["sky_e_per_s_exposure"][0]
    assert truth["resultant_times"].shape == (8,)
    assert float(truth["nonlin_fit_maxerr_dn"]) < 0.01
    assert int(truth["nside"]) == n and float(truth["frame_time"]) == pytest.approx(3.04)
    assert truth["config"]["nside"] == n
    # saturation truth agrees with the data and the thresholds, and some pixels do saturate
    data = read_roman(sim.l1_files[0])["data"]
    thresh = read_roman(sim.caldir["saturation"])["data"]
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(truth["saturated"], (data >= thresh).any(axis=0))
    assert truth["saturated"].any()
    # at least one source saturates early (by the third resultant)
    with np.errstate(invalid="ignore"):
        assert (data[2] >= thresh).any()


def test_job_yaml(sim):
    job = yaml.safe_load(sim.job_yaml.read_text())
    out = sim.truth_file.parent
    assert job["IN"] == str(sim.l1_files[0])
    assert job["OUT"] == str(out / "l2.zarr")
    assert job["CALDIR"] == {k: str(v) for k, v in sim.caldir.items()}
    assert job["RAMP_OPT_PARS"] == {"slope": 0.4, "gain": 1.8, "sigma_read": 6.5}
    assert job["JUMP_DETECT_PARS"] == {"SthreshA": 5.5, "SthreshB": 4.5, "IthreshA": 1.0, "IthreshB": 1000.0}


# ---- determinism --------------------------------------------------------------------------------
def _all_arrays(p: SimProducts) -> dict[str, bytes]:
    out = {}
    for i, f in enumerate(p.l1_files):
        r = read_roman(f)
        out[f"l1{i}.data"] = r["data"].tobytes()
        out[f"l1{i}.amp33"] = r["amp33"].tobytes()
    for name, f in p.caldir.items():
        for key, val in read_roman(f).items():
            if isinstance(val, np.ndarray):
                out[f"{name}.{key}"] = val.tobytes()
    with np.load(p.truth_file) as z:
        for key in z.files:
            out[f"truth.{key}"] = z[key].tobytes()
    return out


def test_same_seed_same_bytes_different_seed_differs(tmp_path):
    cfg = SimConfig(nside=64, n_sources=6, seed=7, write_job_yaml=False)
    a = _all_arrays(simulate(tmp_path / "a", cfg))
    b = _all_arrays(simulate(tmp_path / "b", cfg))
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == b[key], key
    c = _all_arrays(simulate(tmp_path / "c", cfg.model_copy(update={"seed": 8})))
    assert c["l10.data"] != a["l10.data"]
    assert c["gain.data"] != a["gain.data"]


def test_exposures_differ(sim):
    d0 = read_roman(sim.l1_files[0])["data"]
    d1 = read_roman(sim.l1_files[1])["data"]
    assert not np.array_equal(d0, d1)


# ---- physics ------------------------------------------------------------------------------------
def test_legendre_model_inverts_the_nonlinearity(sim, truth):
    lin = read_roman(sim.caldir["linearitylegendre"])
    beta = truth["nonlin_beta"].astype(np.float64).ravel()
    sref = truth["bias_dn"].astype(np.float64).ravel()
    smin = lin["Smin"].astype(np.float64).ravel()
    smax = lin["Smax"].astype(np.float64).ravel()
    coef = lin["data"].astype(np.float64).reshape(lin["data"].shape[0], -1)
    u = np.linspace(0.0, 1.0, 301)[:, None]
    S = smin + u * (smax - smin)  # (301, npix) raw DN over [Smin, Smax]
    phi = L.legval(-1.0 + 2.0 * u * np.ones_like(S), coef, tensor=False)
    # the simulator's forward model: S = Sref + D - beta D^2; check phi both ways
    s = S - sref
    d_true = np.where(beta > 0, (1.0 - np.sqrt(1.0 - 4.0 * beta * s)) / (2.0 * np.where(beta > 0, beta, 1.0)), s)
    assert np.abs(phi - d_true).max() < 0.01
    assert np.abs(phi - beta * phi**2 - s).max() < 0.01
    # phi(Sref) = 0 up to float32 rounding of the coefficients
    z_ref = -1.0 + 2.0 * (sref - smin) / (smax - smin)
    assert np.abs(L.legval(z_ref, coef, tensor=False)).max() < 2e-3
    # the nonlinearity is real: ~10% at the top of the range
    top = beta > 0
    assert np.median((phi[-1] - s[-1])[top] / phi[-1][top]) > 0.05


def test_reference_pixels_carry_no_photo_signal(sim, truth, noiseless):
    border = border_mask(64)
    # noiseless: border pixels read exactly their bias in every resultant
    _, p = noiseless
    data = read_roman(p.l1_files[0])["data"]
    tr = wfi.load_truth(p.truth_file)
    np.testing.assert_array_equal(data[:, border], np.broadcast_to(np.rint(tr["bias_dn"][border]), (8, border.sum())))
    # noisy: no ramp on the border, while the active pixels ramp up with the sky
    data = read_roman(sim.l1_files[0])["data"].astype(np.float64)
    ramp = data[-1] - data[0]
    assert abs(np.median(ramp[border])) < 2.0
    assert np.median(ramp[~border]) > 60.0
    assert abs(np.mean(data[:, border] - truth["bias_dn"][border])) < 3.0
    # amp33 sits at its median level
    amp33 = read_roman(sim.l1_files[0])["amp33"].astype(np.float64)
    med = read_roman(sim.caldir["read"])["amp33"]["med"]
    assert abs(np.mean(amp33 - med)) < 2.0


def test_noiseless_ramps_recover_slope(noiseless):
    cfg, p = noiseless
    tr = wfi.load_truth(p.truth_file)
    data = read_roman(p.l1_files[0])["data"]
    lin = read_roman(p.caldir["linearitylegendre"])
    dark = read_roman(p.caldir["dark"])
    thresh = read_roman(p.caldir["saturation"])["data"].astype(np.float64)
    t = tr["resultant_times"].astype(np.float64)

    lin_data = linearise(data, lin) - dark["dark_slope"].astype(np.float64) * t[:, None, None]
    tc = t - t.mean()
    slope = np.tensordot(tc, lin_data - lin_data.mean(axis=0), axes=(0, 0)) / (tc**2).sum()

    truth_slope = tr["slope_dn"].astype(np.float64)
    # pixels whose ramp stays below the saturation threshold up to the last frame (a frame that hits
    # the full well in the middle of a resultant corrupts that resultant without flagging it)
    t_last = (cfg.nframes - 1) * cfg.frame_time
    d_last = (truth_slope + tr["dark_dn_per_s"]) * t_last
    s_thresh = thresh - tr["bias_dn"]
    d_thresh = 2.0 * s_thresh / (1.0 + np.sqrt(1.0 - 4.0 * tr["nonlin_beta"] * s_thresh))  # f^-1
    use = np.zeros((64, 64), dtype=bool)
    use[ACTIVE] = True
    with np.errstate(invalid="ignore"):  # NaN thresholds (no saturation check) are left out too
        use &= ~tr["dead"] & (d_last < d_thresh)
    assert use.sum() > 3000
    rel = np.abs(slope[use] - truth_slope[use]) / truth_slope[use]
    assert rel.max() < 1e-3, rel.max()
    assert truth_slope[use].max() > 100  # sources are in the comparison, not just sky
    # dead pixels: no signal at all
    assert np.abs(slope[tr["dead"]]).max() < 0.01


def test_cosmic_ray_truth(sim, truth):
    cfg = SimConfig(**BASE, n_exposures=2, seed=1)
    k, ng, n = cfg.nframes, cfg.ngroups, cfg.nside
    y, x = truth["cr_y"], truth["cr_x"]
    frame, res, amp, expo = truth["cr_frame"], truth["cr_resultant"], truth["cr_amp_e"], truth["cr_exposure"]
    nhit = len(y)
    assert all(len(a) == nhit for a in (x, frame, res, amp, expo))
    # ~0.7% of the pixels get a hit in each exposure
    frac = nhit / (2 * cfg.geometry.nactive**2)
    assert 0.003 < frac < 0.012
    assert np.all((y >= NB) & (y < n - NB) & (x >= NB) & (x < n - NB))
    assert np.all((frame >= 1) & (frame < k))
    assert np.all((res >= -1) & (res < ng)) and set(np.unique(expo)) <= {0, 1}
    assert np.all(amp > 0) and 300 < np.median(amp) < 1500
    assert not truth["dead"][y, x].any()
    # the resultant index is the first resultant that holds a frame >= the hit frame
    for f, r in zip(frame, res):
        want = next((i for i, fr in enumerate(cfg.read_pattern) if fr[-1] >= f), -1)
        assert r == want
    # the jumps are in the data: compare the excess rise after the hit with the deposited charge
    data = read_roman(sim.l1_files[0])["data"].astype(np.float64)
    t = truth["resultant_times"].astype(np.float64)
    sel = np.flatnonzero((expo == 0) & (res >= 1))
    unsat = ~truth["saturated"][y[sel], x[sel]]
    sel = sel[unsat]
    assert len(sel) >= 5
    ratios = []
    for i in sel:
        yy, xx, r = y[i], x[i], res[i]
        rise = data[-1, yy, xx] - data[r - 1, yy, xx]
        expected_ramp = truth["slope_dn"][yy, xx] * (t[-1] - t[r - 1])
        ratios.append((rise - expected_ramp) / (amp[i] / truth["gain"][yy, xx]))
    assert 0.6 < np.median(ratios) < 1.2


# ---- safety -------------------------------------------------------------------------------------
def test_refuses_to_overwrite(sim, tmp_path):
    out = sim.truth_file.parent
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with pytest.raises(OutputExistsError, match="never overwrites"):
        simulate(out, SimConfig(**BASE, n_exposures=2, seed=1))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    # one stray output file is enough to refuse
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "truth.npz").write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="truth.npz"):
        simulate(tmp_path / "o", SimConfig(nside=32))
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["truth.npz"]


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(wfi, "_simulate_exposure", boom)
    with pytest.raises(RuntimeError, match="simulated failure"):
        simulate(tmp_path / "o", SimConfig(nside=32))
    assert not (tmp_path / "o").exists()


def test_config_validation():
    with pytest.raises(pydantic.ValidationError, match="strictly increasing"):
        SimConfig(read_pattern=[[1, 2], [2, 3]])
    with pytest.raises(pydantic.ValidationError, match="multiple of 32"):
        SimConfig(nside=100)
    with pytest.raises(pydantic.ValidationError, match="nonlin_beta"):
        SimConfig(nonlin_beta=5e-6)  # f(D) would turn over below the default full well
    with pytest.raises(pydantic.ValidationError):
        SimConfig(unknown_field=1)
    cfg = SimConfig(nside=64, read_pattern=[[1], [2, 3], [5, 6]])
    assert cfg.nframes == 7 and cfg.ngroups == 3
    np.testing.assert_allclose(cfg.resultant_times, [3.04, 7.6, 16.72])
    with pytest.raises(pydantic.ValidationError):
        cfg.seed = 3  # frozen


def test_custom_read_pattern_with_gaps(tmp_path):
    cfg = SimConfig(nside=32, read_pattern=[[1], [3, 4], [7]], n_sources=2, write_job_yaml=False)
    p = simulate(tmp_path / "o", cfg)
    r = read_roman(p.l1_files[0])
    assert r["data"].shape == (3, 32, 32)
    assert r["meta"]["exposure"]["read_pattern"] == [[1], [3, 4], [7]]
    assert read_roman(p.caldir["dark"])["data"].shape == (3, 32, 32)
