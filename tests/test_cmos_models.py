"""CMOS per-pixel calibration models (detflow.calib.cmos): truth recovery, agreement with numpy/scipy/ccdproc
references, chunking invariance, laziness and the dark-rate regressions of the tool they replace."""

from __future__ import annotations

import io

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from xarray.tests import raise_if_dask_computes

from detflow.calib import cmos
from detflow.errors import DetflowInputError
from detflow.reports import cmos as rc

NY, NX = 48, 40
CHUNKS = {"y": (20, 17, 11), "x": (15, 25)}  # uneven pixel tiles
BTEMPS = np.arange(-10, 24, 3.0)  # 12 bias temperatures
DTEMPS = np.arange(-10, 12, 3.0)  # 8 dark temperatures (a subset of the bias ones)
DEXP = np.array([5.0, 20.0, 60.0])
A0, B0, G0 = 0.5, 0.1, -0.05  # normal-pixel dark current: DN/s at Tmin and t = 1 s, 1/deg C, exponent of t
TMIN = -10.0
FTEMPS = np.array([-10.0, -4.0, 2.0, 8.0])
FEXP = DEXP
VC, VCOEF = (17.3, 26.1), (-0.25, 0.05)  # vignetting centre (x, y) and c1, c2
ZERO_FRAMES = [3, 50]  # dark frames with 30 % zero pixels (rejected)


# ---- simulation (numpy truth -> xarray Datasets as the ingest gives them) --------------------------------------
def make_ds(frames, temp, exptime, caltype, filt="NONE", chunks=CHUNKS, tag="f") -> xr.Dataset:
    data = np.asarray(frames, np.float32)
    n = data.shape[0]
    tiles = tuple(chunks[d] if chunks else (s,) for d, s in zip("yx", data.shape[1:]))
    return xr.Dataset(
        {"data": (("frame", "y", "x"), da.from_array(data, chunks=((n,),) + tiles))},
        coords={"temp": ("frame", np.asarray(temp, float)), "exptime": ("frame", np.asarray(exptime, float)),
                "caltype": ("frame", np.array([caltype] * n)), "filter": ("frame", np.array([filt] * n)),
                "timestamp": ("frame", np.arange(n).astype("datetime64[s]")),
                "path": ("frame", np.array([f"{tag}_{i:03d}.raw" for i in range(n)])),
                "y": np.arange(data.shape[1]), "x": np.arange(data.shape[2])},
    )  # fmt: skip


def jitter(rng, temps, nrep, nper):
    """Frame temperatures: each of ``temps`` for ``nrep`` exposures, ``nper`` frames, +-0.03 deg C jitter."""
    t = np.repeat(np.tile(temps, nrep), nper)
    return t + rng.uniform(-0.03, 0.03, t.size)


def vign_truth():
    yy, xx = np.mgrid[0:NY, 0:NX]
    rho = ((xx - VC[0]) ** 2 + (yy - VC[1]) ** 2) / (0.25 * (NY**2 + NX**2))
    return 1 + VCOEF[0] * rho + VCOEF[1] * rho**2


def dark_signal(tr, T, t):
    T3, t3 = np.asarray(T)[:, None, None], np.asarray(t)[:, None, None]
    return tr["A"] * t3 ** tr["G"] * np.exp(tr["B"] * (T3 - TMIN)) * t3


def simulate(seed: int = 7) -> dict:
    rng = np.random.default_rng(seed)
    tr = {"a": rng.normal(100, 5, (NY, NX)), "b": rng.normal(0.5, 0.05, (NY, NX))}
    hot = np.zeros((NY, NX), bool)
    hot.flat[rng.choice(NY * NX, 200, replace=False)] = True
    tr["hot"] = hot
    tr["A"] = A0 * (1 + 0.1 * rng.normal(size=(NY, NX)))  # normal pixels spread 10 % about A0
    tr["B"], tr["G"] = np.full((NY, NX), B0), np.full((NY, NX), G0)
    tr["A"][hot], tr["B"][hot], tr["G"][hot] = (
        rng.uniform(20, 60, 200),
        rng.uniform(0.06, 0.12, 200),
        rng.uniform(-0.1, 0.1, 200),
    )
    V = vign_truth()
    a, b, c = 1 + 0.02 * rng.normal(size=(NY, NX)), 0.002 * rng.normal(size=(NY, NX)), 0.001 * rng.normal(size=(NY, NX))
    tr["V"], tr["FA"] = V, a / (V * a).mean()  # normalised by the mean, so the mean flat is V * FA
    tr["FB"], tr["FC"] = b - (V * b).mean() / V.mean(), c - (V * c).mean() / V.mean()

    def bias_frames(temps, nper, tag):
        T = jitter(rng, temps, 1, nper)
        fr = tr["a"] + tr["b"] * T[:, None, None] + rng.normal(0, 3, (T.size, NY, NX))
        return fr, T, np.zeros_like(T), tag

    def dark_frames(temps, exps, nper, tag):
        T, t = jitter(rng, temps, len(exps), nper), np.repeat(np.repeat(exps, len(temps)), nper)
        sig = dark_signal(tr, T, t)
        fr = tr["a"] + tr["b"] * T[:, None, None] + sig + rng.normal(size=sig.shape) * np.sqrt(9 + sig)
        return fr, T, t, tag

    def flat_frames(temps, exps, nper, tag):
        T, t = jitter(rng, temps, len(exps), nper), np.repeat(np.repeat(exps, len(temps)), nper)
        T3, t3 = T[:, None, None], t[:, None, None]
        resp = tr["FA"] + tr["FB"] * (T3 - FTEMPS.mean()) + tr["FC"] * (t3 - FEXP.mean())
        sig = 20000 * rng.uniform(0.8, 1.2, T.size)[:, None, None] * V * resp + dark_signal(tr, T, t)
        fr = tr["a"] + tr["b"] * T3 + sig + rng.normal(size=sig.shape) * np.sqrt(9 + sig)
        return fr, T, t, tag

    raw = {
        "bias": bias_frames(BTEMPS, 4, "bias"),
        "bias_for_dark": bias_frames(DTEMPS, 20, "bias20"),
        "dark": dark_frames(DTEMPS, DEXP, 6, "dark"),
        "flat": flat_frames(FTEMPS, FEXP, 3, "flat"),
        "flat_far": flat_frames(np.array([30.0]), np.array([5.0]), 1, "far"),  # no dark within 5 deg C
        "bias_test": bias_frames(np.array([0.5, 13.5]), 4, "bias_test"),
        "dark_test": dark_frames(np.array([0.5]), np.array([20.0]), 3, "dark_test"),
        "flat_test": flat_frames(np.array([2.0]), np.array([20.0]), 3, "flat_test"),
    }
    fr = raw["dark"][0]
    zero_mask = rng.uniform(size=(len(ZERO_FRAMES), NY, NX)) < 0.3
    fr[ZERO_FRAMES] = np.where(zero_mask, 0.0, fr[ZERO_FRAMES])
    tr["zero_fraction"] = zero_mask.mean(axis=(1, 2))
    return {"truth": tr, "raw": raw}


def datasets(sim: dict, chunks=CHUNKS) -> dict:
    kinds = {"bias": "BIAS", "dark": "DARK", "flat": "FLAT"}
    out = {}
    for name, (fr, T, t, tag) in sim["raw"].items():
        kind = kinds[name.split("_")[0]]
        out[name] = make_ds(fr, T, t, kind, "V" if kind == "FLAT" else "NONE", chunks, tag)
    out["flat"] = xr.concat([out["flat"], out.pop("flat_far")], "frame")
    return out


def build_all(ds: dict) -> dict:
    bias = cmos.build_bias_model(ds["bias"], hot_k=8.0)
    bias_d = cmos.build_bias_model(ds["bias_for_dark"], method="mean")
    dark = cmos.build_dark_model(ds["dark"], bias_d)
    flat = cmos.build_flat_model(ds["flat"], dark, bias_d, vignetting=None, method="mean")
    return {"bias": bias, "bias_d": bias_d, "dark": dark, "flat": flat}


@pytest.fixture(scope="module")
def sim():
    return simulate()


@pytest.fixture(scope="module")
def ds(sim):
    return datasets(sim)


@pytest.fixture(scope="module")
def models(ds):
    return {k: v.compute() for k, v in build_all(ds).items()}


def pulls_ok(p, dof, mean_tol, std_lo=0.85, std_hi=1.3, within3=0.95):
    """Pulls (fit - truth) / err of a fit whose errors are scaled by the residual variance: Student t with
    ``dof`` degrees of freedom (std sqrt(dof / (dof - 2)); 97.6 % within 3 for 6 dof, 99.3 % for 10)."""
    p = np.asarray(p).ravel()
    expect = np.sqrt(dof / (dof - 2))
    assert np.isfinite(p).all()
    assert abs(p.mean()) < mean_tol, p.mean()
    assert std_lo * expect < p.std() < std_hi * expect, (p.std(), expect)
    assert np.mean(np.abs(p) < 3) > within3


# ---- combines -----------------------------------------------------------------------------------------------
def test_combine_frames_matches_ccdproc():
    import ccdproc
    from astropy.nddata import CCDData

    rng = np.random.default_rng(0)
    n = 15
    stack = rng.normal(100, 5, (n, 20, 16))
    stack[2, 3, 4] = 400  # outliers for the clip
    stack[5, 10, 10] = -300
    stack[:, 7, 7] = np.arange(n) * 1.0
    dsx = make_ds(stack, np.zeros(n), np.zeros(n), "BIAS", chunks={"y": (13, 7), "x": (9, 7)})

    def combiner():
        return ccdproc.Combiner([CCDData(f, unit="adu") for f in stack.astype(np.float32)])

    med = cmos.combine_frames(dsx, "median").compute()
    np.testing.assert_allclose(med["data"], combiner().median_combine().data, rtol=1e-12)
    mean = cmos.combine_frames(dsx, "mean").compute()
    ref = combiner().average_combine()
    np.testing.assert_allclose(mean["data"], ref.data, rtol=1e-12)
    # ccdproc: std (ddof=0) / sqrt(n); ours: the sample std (ddof=1) / sqrt(n)
    np.testing.assert_allclose(mean["err"], ref.uncertainty.array * np.sqrt(n / (n - 1)), rtol=1e-10)
    for func in ("median", "mean"):
        c = combiner()
        c.sigma_clipping(low_thresh=3, high_thresh=3, func=func, dev_func="std")
        ref = c.average_combine()
        ours = cmos.combine_frames(dsx, "sigma_clip", sigma=3, maxiters=1, cenfunc=func).compute()
        np.testing.assert_allclose(ours["data"], ref.data, rtol=1e-12)
        np.testing.assert_array_equal(ours["nused"], n - c.data_arr.mask.sum(axis=0))
        assert int(ours["nused"][3, 4]) == n - 1 and int(ours["nused"][10, 10]) == n - 1


# ---- bias -----------------------------------------------------------------------------------------------------
def test_bias_recovers_truth_within_errors(sim, models):
    tr, m = sim["truth"], models["bias"]
    assert not m["fit_failed"].any()
    dof = len(BTEMPS) - 2
    pulls_ok((m["a"] - tr["a"]) / m["a_err"], dof, 0.1)
    pulls_ok((m["b"] - tr["b"]) / m["b_err"], dof, 0.1)
    assert m.attrs["formula"] == "bias(T) = a + b * T" and m["b"].attrs["units"] == "DN / deg_C"
    np.testing.assert_allclose(m["temp_group"], BTEMPS)
    assert m["master"].dims == ("temp_group", "y", "x") and (m["group_nframes"] == 4).all()
    s = cmos.synthesize_bias(m, 5.0, with_err=True)
    pulls_ok((s["bias"] - (tr["a"] + 5 * tr["b"])) / s["err"], dof, 0.1)
    assert cmos.synthesize_bias(m, [0.0, 5.0]).dims == ("temp", "y", "x")
    assert not m["hot"].any()  # no hot bias pixel simulated, none found at 8 sigma


@pytest.mark.parametrize("weights", ["none", "nframes"])
def test_bias_fit_matches_lstsq(ds, weights):
    sub = ds["bias"].isel(frame=np.r_[0:40, 41, 44:48])  # unequal group sizes: 4 ... 1 frames
    m = cmos.build_bias_model(sub, weights=weights, method="mean").compute()
    T = m["group_temp"].values
    X = np.stack([np.ones_like(T), T], 1)
    w = m["group_nframes"].values / m["group_nframes"].values.mean() if weights == "nframes" else np.ones(T.size)
    sw = np.sqrt(w)[:, None]
    for iy, ix in [(0, 0), (19, 14), (20, 15), (47, 39), (30, 22)]:
        y = m["master"].values[:, iy, ix]
        beta, res, *_ = np.linalg.lstsq(X * sw, y * sw[:, 0], rcond=None)
        s2 = res[0] / (T.size - 2)
        cov = s2 * np.linalg.inv((X * w[:, None]).T @ X)
        np.testing.assert_allclose([m["a"][iy, ix], m["b"][iy, ix]], beta, rtol=1e-10)
        np.testing.assert_allclose([m["a_err"][iy, ix] ** 2, m["b_err"][iy, ix] ** 2, m["cov_ab"][iy, ix]],
                                   [cov[0, 0], cov[1, 1], cov[0, 1]], rtol=1e-8)  # fmt: skip
        np.testing.assert_allclose(m["rms"][iy, ix], np.sqrt(s2), rtol=1e-8)


def test_bias_hot_pixels_and_failed_fits(ds):
    frames = ds["bias"]["data"].values.copy()
    frames[:, 5, 6] += 300  # hot in every master
    frames[:8, 30, 31] = np.nan  # no data at the first two temperatures: still fitted
    frames[:, 40, 2] = np.nan  # never any data
    frames[8:, 12, 13] = np.nan  # data at two temperatures only: no residual dof
    bad = ds["bias"].copy()
    bad["data"] = (bad["data"].dims, da.from_array(frames, chunks=ds["bias"]["data"].chunks))
    m = cmos.build_bias_model(bad, hot_k=8.0).compute()
    assert np.argwhere(m["hot"].values).tolist() == [[5, 6]]
    failed = m["fit_failed"].values
    assert failed[40, 2] == 1 and failed[12, 13] == 1 and failed[30, 31] == 0
    assert np.isnan(m["a"][40, 2]) and np.isfinite(m["a"][30, 31])
    assert (failed != 0).sum() == 2


# ---- dark -----------------------------------------------------------------------------------------------------
def _rate_truth(tr, m):
    """Truth of each group rate at the group's temperature and exposure (the model's Tmin is the lowest group
    temperature, a few mK off TMIN)."""
    T, t = m["group_temp"].values, m["group_exptime"].values
    return dark_signal(tr, T, t) / t[:, None, None]


def test_dark_rates_signed_and_never_clipped(sim, models):
    """The tool this replaces subtracted the wrong way round (bias - dark) and raised every pixel below the
    median to the median: the rates must be dark - bias, and the low half of the pixels must keep its values."""
    tr, m = sim["truth"], models["dark"]
    truth = _rate_truth(tr, m)
    normal = ~tr["hot"]
    pull = ((m["rate"] - truth) / m["rate_err"]).values
    assert abs(pull[:, normal].mean()) < 0.05
    low = normal & (tr["A"] < np.median(tr["A"][normal]))
    assert abs(pull[:, low].mean()) < 0.1  # clipped up to the median: strongly positive
    for g in range(m.sizes["dark_group"]):
        r = m["rate"].values[g][normal]
        assert 0.45 < np.mean(r < np.median(r)) < 0.55  # clipped: no pixel below the median
        assert np.sum(r == np.median(r)) <= 1
    g = int(np.argmax(m["group_temp"].values * 100 + m["group_exptime"].values))  # warmest, longest
    r, t = m["rate"].values[g][normal], truth[g][normal]
    assert np.corrcoef(r, t)[0, 1] > 0.8  # sign flipped: anti-correlated
    np.testing.assert_allclose(np.median(r), np.median(t), rtol=0.02)
    assert (m["rate"].values[:, tr["hot"]] > 10).all()


def test_dark_rejects_frames_with_zero_pixels(sim, models):
    m = models["dark"]
    assert np.nonzero(m["rejected"].values)[0].tolist() == ZERO_FRAMES
    assert (m["rejected"].values[ZERO_FRAMES] == cmos.REJECT["zero_pixels"]).all()
    np.testing.assert_allclose(m["zero_fraction"].values[ZERO_FRAMES], sim["truth"]["zero_fraction"])
    assert m["path"].values[m["rejected"].values != 0].tolist() == ["dark_003.raw", "dark_050.raw"]
    groups = m["group"].values[ZERO_FRAMES]
    assert (m["nframes"].values[groups] == 5).all() and m["nframes"].values.sum() == 144 - 2


def test_dark_hot_pixels_and_models_recover_truth(sim, models):
    tr, m = sim["truth"], models["dark"]
    hot = tr["hot"]
    np.testing.assert_array_equal(m["hot"].values.astype(bool), hot)
    assert not m["fit_failed"].any() and not m["fit_failed_1d"].any()
    shift = np.exp(tr["B"] * (m.attrs["Tmin"] - TMIN))  # A is the rate at the model's Tmin
    dof2 = m.sizes["dark_group"] - 3
    for name, truth in (("A", tr["A"] * shift), ("B", tr["B"]), ("gamma", tr["G"])):
        pulls_ok(((m[name] - truth) / m[f"{name}_err"]).values[hot], dof2, 0.25)
    for e in DEXP:
        me = m.sel(exposure=e)
        for name, truth in (("A_1d", tr["A"] * e ** tr["G"] * shift), ("B_1d", tr["B"])):
            pulls_ok(((me[name] - truth) / me[f"{name}_err"]).values[hot], len(DTEMPS) - 2, 0.3, 0.8, 1.35, 0.92)
    # the normal pixels carry the global fit of the median rate: the median A of the normal pixels, B0, gamma0
    a_med = np.median(tr["A"][~hot]) * np.exp(B0 * (m.attrs["Tmin"] - TMIN))
    for name, truth in (("A", a_med), ("B", B0), ("gamma", G0)):
        g, ge = float(m[f"global_{name}"]), float(m[f"global_{name}_err"])
        assert abs(g - truth) < 3 * ge, (name, g, truth, ge)
        assert (m[name].values[~hot] == g).all() and (m[f"{name}_err"].values[~hot] == ge).all()
    assert 0.3 < float(m["global_chi2_red"]) < 3
    assert 0.5 < np.median(m["chi2_red"].values[hot]) < 1.5


def test_dark_fit_matches_scipy(models):
    """The numba Gauss-Newton fit is the weighted least-squares minimum scipy finds (weights and error
    scaling as curve_fit with absolute_sigma=False)."""
    from scipy.optimize import curve_fit

    m = models["dark"]
    T, t = m["group_temp"].values, m["group_exptime"].values
    X = np.stack([np.ones_like(T), T - m.attrs["Tmin"], np.log(t)], 1)
    rate = np.moveaxis(m["rate"].values, 0, -1)
    sigma = cmos.noise_model_sigma(rate, np.moveaxis(m["rate_err"].values, 0, -1),
                                   np.full(rate.shape, 6) - np.isin(np.arange(T.size), m["group"].values[ZERO_FRAMES]),
                                   t)  # fmt: skip
    for iy, ix in np.argwhere(m["hot"].values)[:6]:
        popt, pcov = curve_fit(lambda _, *q: np.exp(X @ np.array(q)), np.zeros(T.size), rate[iy, ix],
                               p0=[np.log(30), 0.1, 0.0], sigma=sigma[iy, ix], absolute_sigma=False, xtol=1e-14,
                               ftol=1e-14, gtol=1e-14)  # fmt: skip
        np.testing.assert_allclose(
            [np.log(m["A"][iy, ix]), m["B"][iy, ix], m["gamma"][iy, ix]], popt, rtol=1e-7, atol=3e-8
        )  # fmt: skip  (the kernel stops at steps below 1e-9 (1 + |theta|))
        errs = np.sqrt(np.diag(pcov))
        np.testing.assert_allclose([m["A_err"][iy, ix] / m["A"][iy, ix], m["B_err"][iy, ix], m["gamma_err"][iy, ix]],
                                   errs, rtol=1e-4)  # fmt: skip


def test_exp_kernel_statuses():
    """Rows the kernel cannot fit get their reason and NaN; a noise-free row is recovered exactly."""
    from detflow.kernels import cmos as kc

    X = np.stack([np.ones(5), np.arange(5.0)], 1)
    y = np.array([2 * np.exp(0.3 * np.arange(5.0)),  # exact
                  [1.0, 2.0, np.nan, np.nan, np.nan],  # 2 points for 2 parameters: no dof
                  [-1.0, 2.0, -3.0, -1.0, -2.0],  # one positive point: no log-space start
                  [1.0, 2.0, 3.0, 4.0, 5.0],  # not fitted (fit = False)
                  [1.0, 1.1, 1.2, 1.3, 1.4]])  # fmt: skip
    w = np.ones_like(y)
    w[4, 1:] = 0  # weight only at x = 0: one point
    fit = np.array([True, True, True, False, True])
    par, cov, c2 = np.empty((5, 2)), np.empty((5, 2, 2)), np.empty(5)
    nu, st = np.empty(5, np.int64), np.empty(5, np.uint8)
    kc.fit_exp_model(y, w, X, fit, 50, 1e-12, par, cov, c2, nu, st)
    assert st.tolist() == [kc.OK, kc.FEW_POINTS, kc.NONPOSITIVE, kc.SKIPPED, kc.FEW_POINTS]
    np.testing.assert_allclose(par[0], [np.log(2), 0.3], rtol=1e-12)
    assert np.isnan(par[1:]).all() and np.isnan(c2[1:]).all() and nu.tolist() == [5, 2, 5, 0, 1]
    out = np.empty((2, 2))
    assert not kc.inv_spd(np.array([[1.0, 1.0], [1.0, 1.0]]), out)
    m = np.array([[4.0, 1.0], [1.0, 3.0]])
    assert kc.inv_spd(m, out)
    np.testing.assert_allclose(out, np.linalg.inv(m), rtol=1e-14)


def test_synthesize_dark(sim, models):
    tr, m, b = sim["truth"], models["dark"], models["bias_d"]
    rate = cmos.synthesize_dark(m, 0.0, 30.0)
    truth = dark_signal(tr, [0.0], [30.0])[0] / 30.0
    hot = tr["hot"]
    np.testing.assert_allclose(rate.values[hot], truth[hot], rtol=0.02)
    assert abs(np.median(rate.values[~hot]) / np.median(truth[~hot]) - 1) < 0.02
    r1 = cmos.synthesize_dark(m, 0.0, 20.0, kind="1d")
    np.testing.assert_allclose(r1.values[hot], (dark_signal(tr, [0.0], [20.0])[0] / 20.0)[hot], rtol=0.02)
    frame = cmos.synthesize_dark(m, 0.0, 30.0, frame=True, bias=b)
    np.testing.assert_allclose(frame, rate * 30 + cmos.synthesize_bias(b, 0.0))
    assert frame.attrs["units"] == "DN" and rate.attrs["units"] == "DN / s"
    with pytest.raises(DetflowInputError, match="exptime"):
        cmos.synthesize_dark(m, 0.0, 30.0, kind="1d")


# ---- flat -----------------------------------------------------------------------------------------------------
def test_flat_recovers_truth_and_matches_lstsq(sim, models):
    tr, m = sim["truth"], models["flat"].sel(band="V")
    V = tr["V"]
    assert not m["fit_failed"].any()
    dof = m.sizes["flat_group"] - 3
    for name in ("A", "B", "C"):  # without a vignetting correction the model is V * (A + B dT + C dt)
        pulls_ok(((m[name] - V * tr[f"F{name}"]) / m[f"{name}_err"]).values, dof, 0.1)
    Tref, tref = models["flat"].attrs["Tref"], models["flat"].attrs["tref"]
    X = np.stack([np.ones(12), m["group_temp"].values - Tref, m["group_exptime"].values - tref], 1)
    for iy, ix in [(0, 0), (19, 14), (33, 27), (47, 39)]:
        beta, res, *_ = np.linalg.lstsq(X, m["master"].values[:, iy, ix], rcond=None)
        np.testing.assert_allclose([m["A"][iy, ix], m["B"][iy, ix], m["C"][iy, ix]], beta, rtol=1e-10)
        cov = res[0] / (12 - 3) * np.linalg.inv(X.T @ X)
        np.testing.assert_allclose(m["C_err"][iy, ix], np.sqrt(cov[2, 2]), rtol=1e-8)
    # the flat at 30 deg C has no dark within 5 deg C: rejected and listed
    f = models["flat"]
    assert f["rejected"].values.tolist() == [0] * 36 + [cmos.REJECT["no_dark_within_tolerance"]]
    (pair,) = f.attrs["rejected_pairs"]
    assert pair["path"] == "far_000.raw" and pair["dark_temp"] == pytest.approx(11.0, abs=0.05)
    assert (f["group_nframes"] == 3).all() and f["dark_group"].values[-1] == -1


def test_radial_vignetting_fit_is_calibrated():
    """Over realisations of a 2 % pixel response, the fitted centre and coefficients scatter about the truth
    as their errors say."""
    rng = np.random.default_rng(5)
    truth = np.array([VC[0], VC[1], 1.0, *VCOEF])
    pulls = []
    for _ in range(100):
        vmap, p, e = cmos.radial_vignetting(vign_truth() * (1 + 0.02 * rng.normal(size=(NY, NX))), 2, 4)
        pulls.append((p - truth) / e)
    pulls = np.array(pulls)[:, [0, 1, 3, 4]]  # c0 (the level, not part of V) sits ~0.5 sigma low: a block median
    # of a curved surface lies below its value at the block centre, a constant that c0 absorbs
    assert (np.abs(pulls.mean(axis=0)) < 0.35).all() and ((pulls.std(axis=0) > 0.8) & (pulls.std(axis=0) < 1.25)).all()
    assert vmap[round(VC[1]), round(VC[0])] == pytest.approx(1, abs=1e-3)


def test_flat_vignetting(sim, ds, models):
    tr = sim["truth"]
    bias_d, dark = models["bias_d"], models["dark"]
    rad = cmos.build_flat_model(ds["flat"], dark, bias_d, method="mean", vignetting="radial", bin_size=4).compute()
    p, e = rad["vignetting_params"].sel(band="V"), rad["vignetting_params_err"].sel(band="V")
    truth = {"xc": VC[0], "yc": VC[1], "c1": VCOEF[0], "c2": VCOEF[1]}
    for k, v in truth.items():  # one realisation (the calibration of the errors is tested above)
        assert abs(float(p.sel(vparam=k)) - v) < 5 * float(e.sel(vparam=k)), (k, float(p.sel(vparam=k)), v)
    assert np.abs(rad["vignetting"].sel(band="V").values - tr["V"]).max() < 0.02
    # dividing the masters by V divides the linear model by V, pixel by pixel
    none = models["flat"]
    np.testing.assert_allclose(rad["A"] * rad["vignetting"], none["A"], rtol=1e-10)
    np.testing.assert_allclose(rad["C"] * rad["vignetting"], none["C"], rtol=1e-9, atol=1e-14)
    given = cmos.build_flat_model(ds["flat"], dark, bias_d, vignetting="radial", bin_size=4, centre=VC).compute()
    assert float(given["vignetting_params"].sel(band="V", vparam="xc")) == VC[0]
    assert float(given["vignetting_params_err"].sel(band="V", vparam="xc")) == 0
    emp = cmos.build_flat_model(ds["flat"], dark, bias_d, vignetting="empirical", smooth_sigma=3).compute()
    v = emp["vignetting"].sel(band="V").values
    assert v.max() == 1 and np.abs(v - tr["V"] / tr["V"].max())[8:-8, 8:-8].max() < 0.02
    flat = cmos.synthesize_flat(rad, "V", 2.0, 20.0)
    resp = tr["FA"] + tr["FB"] * (2 - FTEMPS.mean()) + tr["FC"] * (20 - FEXP.mean())
    np.testing.assert_allclose(flat, tr["V"] * resp, rtol=0.01)


# ---- chunking, laziness, evaluation, errors ---------------------------------------------------------------------
def test_chunked_equals_eager(sim, models):
    eager = {k: v.compute() for k, v in build_all(datasets(sim, chunks=None)).items()}
    for k, chunked in models.items():
        if k == "flat":  # the per-frame normalising mean sums the pixels in another order: rounding
            xr.testing.assert_allclose(chunked, eager[k], rtol=1e-9, atol=1e-13)
        else:
            xr.testing.assert_identical(chunked, eager[k])


def test_models_are_lazy(ds):
    with raise_if_dask_computes():
        built = build_all(ds)
        rad = cmos.build_flat_model(ds["flat"], built["dark"], built["bias_d"], vignetting="radial")
        evs = [cmos.evaluate_model(built["bias"], ds["bias_test"]),
               cmos.evaluate_model(built["dark"], ds["dark_test"], bias=built["bias_d"]),
               cmos.evaluate_model(rad, ds["flat_test"], bias=built["bias_d"], dark=built["dark"])]  # fmt: skip
        comb = cmos.combine_frames(ds["bias"], "sigma_clip")
        dm = cmos.build_dark_model(ds["dark"], built["bias_d"], bias_mode="model", method="median")
    for obj in [*built.values(), rad, *evs, comb, dm]:
        assert any(isinstance(v.data, da.Array) for v in obj.data_vars.values())


def test_evaluation(ds, models):
    import matplotlib

    matplotlib.use("Agg")
    ev = cmos.evaluate_model(models["bias"], ds["bias_test"]).compute()
    assert ev["mae"].dims == ("y", "x") and ev["frame_mae"].dims == ("frame",)
    table = cmos.summary_table(ev)
    assert table["temp"].round(1).tolist() == [0.5, 13.5] and (table["nframes"] == 4).all()
    # Gaussian noise of 3 DN: E|e| = 3 sqrt(2 / pi) = 2.39, plus a little model error
    assert ((table["mae"] > 2.3) & (table["mae"] < 2.65)).all()
    assert ((table["mape"] > 1.9) & (table["mape"] < 2.7)).all()
    assert abs(table["mean_error"]).max() < 0.2
    # the held-out darks at 0.5 deg C are 1.5 deg C from the nearest bias master: use the bias model
    dark_ev = cmos.evaluate_model(models["dark"], ds["dark_test"], bias=models["bias_d"], bias_mode="model").compute()
    assert abs(dark_ev["group_mean_error"].item()) < 1.0 and dark_ev["group_mae"].item() < 10  # sd ~0.15 DN
    ev1 = cmos.evaluate_model(models["dark"], ds["dark_test"], bias=models["bias_d"], bias_mode="model",
                              dark_kind="1d").compute()  # fmt: skip
    assert abs(ev1["group_mean_error"].item()) < 1.0 and ev1["group_mae"].item() < 10
    flat_ev = cmos.evaluate_model(models["flat"], ds["flat_test"], bias=models["bias_d"], dark=models["dark"])
    flat_ev = flat_ev.compute()
    assert flat_ev["group_mae"].item() < 0.01 and flat_ev["group_mape"].item() < 1.0
    fig = rc.plot_evaluation(dark_ev)
    assert len(fig.axes) >= 3
    fig.savefig(io.BytesIO(), format="png")


def test_input_errors(ds):
    two_temps = ds["bias"].isel(frame=slice(0, 8))
    with pytest.raises(DetflowInputError, match="temp: expected bias frames at 3 or more") as err:
        cmos.build_bias_model(two_temps)
    assert err.value.field == "temp"
    with pytest.raises(DetflowInputError, match="caltype: expected frames with caltype DARK"):
        cmos.build_dark_model(ds["bias"], None)
    no_temp = ds["dark"].drop_vars("temp")
    with pytest.raises(DetflowInputError, match="a frame coordinate 'temp'"):
        cmos.build_dark_model(no_temp, None)
    bad = ds["dark"].assign_coords(exptime=ds["dark"]["exptime"].where(np.arange(144) != 7, 0.0))
    with pytest.raises(DetflowInputError, match="dark_007.raw: exptime: expected > 0 s"):
        cmos.build_dark_model(bad, None)
    with pytest.raises(DetflowInputError, match="method"):
        cmos.combine_frames(ds["bias"], "mode")


@pytest.mark.parametrize("use_median", [True, False])
def test_group_stats_kernel_against_numpy(use_median):
    """The numba group combine against numpy's nanmedian / nanmean / nanstd(ddof=1) per group, with NaNs,
    rejected frames, groups of 1, 2 and odd/even sizes, and a non-contiguous block."""
    from detflow.kernels.cmos import group_stats

    rng = np.random.default_rng(4)
    block = rng.normal(100, 5, (24, 6, 14))[:, :, ::2]  # strided in x
    block[rng.random(block.shape) < 0.1] = np.nan
    block[:, 0, 0] = np.nan  # a pixel with no value at all
    good = rng.random(24) > 0.2
    groups = [np.array([0]), np.array([1, 2]), np.arange(3, 10), np.arange(10, 24)[::-1]]
    members = np.concatenate(groups).astype(np.int64)
    starts = np.array([0, 1, 3, 10, 24], np.int64)
    shape = (len(groups),) + block.shape[1:]
    value, std, count = np.empty(shape), np.empty(shape), np.empty(shape, np.int64)
    group_stats(block, good, members, starts, use_median, value, std, count)
    with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore")
        for g, idx in enumerate(groups):
            s = block[idx[good[idx]]]
            np.testing.assert_array_equal(count[g], np.isfinite(s).sum(0))
            ref = np.nanmedian(s, 0) if use_median else np.nanmean(s, 0)
            np.testing.assert_allclose(value[g], ref, rtol=1e-13, equal_nan=True)
            ref_std = np.nanstd(s, 0, ddof=1) if s.shape[0] > 1 else np.full(s.shape[1:], np.nan)
            ref_std = np.where(np.isfinite(s).sum(0) > 1, ref_std, np.nan)
            np.testing.assert_allclose(std[g], ref_std, rtol=1e-12, equal_nan=True)


def test_grouped_combine_numba_path_equals_the_numpy_path():
    """median and mean through the kernel equal the former NumPy path (_combine_np) on the same groups,
    lazily over uneven tiles and eagerly."""
    rng = np.random.default_rng(5)
    arr = rng.normal(50, 3, (30, 20, 18))
    arr[rng.random(arr.shape) < 0.05] = np.nan
    da_ = xr.DataArray(arr, dims=("frame", "y", "x"))
    good = xr.DataArray(rng.random(30) > 0.1, dims="frame")
    groups = [np.arange(0, 11), np.arange(11, 30)]
    for method in ("median", "mean"):
        lazy = cmos.combine._grouped_combine(da_.chunk({"y": 7, "x": 5}), groups, "g", good.chunk(), method)
        eager = cmos.combine._grouped_combine(da_, groups, "g", good, method)
        with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
            __import__("warnings").simplefilter("ignore")
            for gi, idx in enumerate(groups):
                s = np.where(good.values[idx][:, None, None], arr[idx], np.nan)
                v, e, n = cmos.combine._combine_np(np.moveaxis(s, 0, -1), method, 3.0, 5, "median", "std")
                for k, ref in (("value", v), ("err", e), ("nused", n)):
                    np.testing.assert_allclose(lazy[k].values[gi], ref, rtol=1e-12, equal_nan=True)
                    np.testing.assert_allclose(eager[k].values[gi], ref, rtol=1e-12, equal_nan=True)


def test_independent_copy_shares_no_task_and_gives_the_same_values():
    """The twin a whole-frame statistic is taken from: same values, no key in common with the original
    (so the per-pixel chain does not wait on shared reads)."""
    arr = xr.DataArray(da.random.default_rng(0).random((6, 8, 8), chunks=(6, 4, 4)), dims=("frame", "y", "x"))
    chain = arr.isel(frame=slice(None)) * 2 + 1
    twin = cmos.frames._independent(chain)
    assert not set(dict(twin.data.__dask_graph__())) & set(dict(chain.data.__dask_graph__()))
    np.testing.assert_array_equal(twin.values, chain.values)
    both = (chain.sum("frame") + twin.mean(("y", "x")).sum()).compute()  # fuses and computes together
    assert np.isfinite(both.values).all()
