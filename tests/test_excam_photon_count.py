"""EXCAM photon counting (detflow.kernels.photon_count) against a plain NumPy reference, corgidrp 5.1.1's
``get_pc_mean`` and simulated frames with a known photon rate."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from scipy.special import gammaincc

from detflow.kernels import photon_count as pc

G, RN, T_FACTOR = 5000.0, 100.0, 5.0
THRESH = T_FACTOR * RN


@pytest.fixture(scope="module")
def corgi(corgidrp_home):
    """corgidrp's photon-counting, data and mocks modules (imported with HOME at a temp dir: see conftest)."""
    from corgidrp import data, mocks, photon_counting

    return photon_counting, data, mocks


def _frames(rng, lam, n, shape, g=G, rn=RN):
    """Electrons at the output of the gain register: Poisson electrons, each pixel's k electrons
    amplified by a gamma(k, g) register, Gaussian read noise."""
    k = rng.poisson(lam, (n, *shape))
    amplified = np.zeros(k.shape)
    hit = k > 0
    amplified[hit] = rng.gamma(k[hit], g)
    return amplified + rng.normal(0.0, rn, k.shape)


# ---- the NumPy reference (written from the physics: survival of k amplified electrons) -------------------
def _ref_eps(lam, t, g, deriv=False):
    """eps(lam) from the Poisson-weighted gamma survival functions of 1..3 electrons (renormalised to
    the 0..3 electron series), and its derivative."""
    x = t / g
    ck = [gammaincc(k, x) for k in (1, 2, 3)]  # P(gamma(k, g) > t) = Q(k, t/g)
    fact = [1.0, 1.0, 2.0, 6.0]
    num = sum(ck[k - 1] * lam**k / fact[k] for k in (1, 2, 3))
    den = sum(lam**k / fact[k] for k in range(4))
    if not deriv:
        return num / den
    dnum = sum(ck[k - 1] * lam ** (k - 1) / fact[k - 1] for k in (1, 2, 3))
    dden = sum(lam ** (k - 1) / fact[k - 1] for k in (1, 2, 3))
    return (dnum * den - num * dden) / den**2


def _ref_correct(nobs, nfr, t, g, niter=2):
    nobs, nfr = np.broadcast_arrays(np.asarray(nobs, float), np.asarray(nfr, float))
    out = np.zeros(nobs.shape)
    ok = (nobs > 0) & (nfr > 0)
    p = nobs[ok] / nfr[ok]
    arg = 1 - p * np.exp(t / g)
    lam = np.where(arg > 0, -np.log(np.where(arg > 0, arg, 1.0)), p)
    alive = np.ones(lam.shape, bool)
    for _ in range(niter):
        with np.errstate(all="ignore"):
            step = (nfr[ok] * _ref_eps(lam, t, g) - nobs[ok]) / (nfr[ok] * _ref_eps(lam, t, g, deriv=True))
        alive &= np.isfinite(step)
        lam = np.where(alive, lam - np.where(alive, step, 0.0), 0.0)
    out[ok] = lam
    return out


def _ref_var(lam, nfr, t, g):
    x = t / g
    eps = _ref_eps(lam, t, g)
    with np.errstate(all="ignore"):
        slope = np.exp(x) + np.exp(2 * x) * (1 - x) * eps + np.exp(3 * x) * (4 - 8 * x + 5 * x * x) / 4 * eps**2
        var = eps * (1 - eps) / nfr * slope**2
    return np.where((nfr > 0) & (eps * (1 - eps) >= 0), var, np.nan)


def _reference(data, err, dq, t, g, bad_bits=0xFFFFFFFF, niter=2):
    good = ((dq & bad_bits) == 0) & np.isfinite(data)
    n = good.sum(axis=0).astype(float)
    counts = [(((data + s * err) > t) & good).sum(axis=0) for s in (0, 1, -1)]
    lam, up, low = (_ref_correct(c, n, t, g, niter) for c in counts)
    sd = np.sqrt(_ref_var(lam, n, t, g))
    err_out = np.fmax(up + sd - lam, lam - low + sd)
    err_out[np.isnan(sd)] = np.nan
    flags = np.bitwise_or.reduce(dq, axis=0)
    dq_out = np.where(n == 0, flags, np.where(lam < 0, 256, 0)).astype(np.uint32)
    return lam, err_out, n, dq_out


def _stack(rng, n=80, shape=(12, 14), lam=0.08):
    data = _frames(rng, lam, n, shape)
    err = rng.uniform(0, 40, data.shape)
    dq = np.where(rng.random(data.shape) < 0.1, rng.choice([1, 4, 32], data.shape), 0).astype(np.uint32)
    dq[:, 0, 0] = 4  # every frame flagged: no rate, the flags kept
    dq[n // 2 :, 1, 1] = 1  # half the frames flagged: a larger error
    if n >= 62:  # bright: 56 of 62 good frames counted, near where the one-electron inverse has no value:
        data[:, 2, 2] = -1.0  # the start is far off and the Newton steps end negative
        dq[:, 2, 2] = 0
        dq[: n - 62, 2, 2] = 1
        data[n - 62 : n - 6, 2, 2] = 3 * G
    return data, err, dq


# ---- kernel vs the NumPy reference ----------------------------------------------------------------------
def test_kernel_matches_numpy_reference():
    rng = np.random.default_rng(11)
    data, err, dq = _stack(rng)
    data[5, 3, 4] = np.nan  # a non-finite value leaves its frame out
    for bad_bits in (0xFFFFFFFF, 1):
        mean, e, ngood, dq_out = pc.photon_count_mean(data, err, dq, THRESH, G, bad_bits=bad_bits)
        lam, e_ref, n_ref, dq_ref = _reference(data, err, dq, THRESH, G, bad_bits)
        np.testing.assert_array_equal(ngood, n_ref)
        np.testing.assert_allclose(mean, lam, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(e, e_ref, rtol=1e-9, atol=1e-14)
        np.testing.assert_array_equal(dq_out, dq_ref)
    mean, e, ngood, dq_out = pc.photon_count_mean(data, err, dq, THRESH, G)
    assert ngood[3, 4] == (dq[:, 3, 4] == 0).sum() - (dq[5, 3, 4] == 0)
    assert mean[0, 0] == 0 and np.isnan(e[0, 0]) and ngood[0, 0] == 0 and dq_out[0, 0] == 4
    assert mean[2, 2] < 0 and dq_out[2, 2] == 256
    assert e[1, 1] > np.nanpercentile(e, 90)
    assert ((dq_out == 0) | (ngood == 0) | (mean < 0)).all()


def test_kernel_from_threads_matches_one_call():
    rng = np.random.default_rng(12)
    data, err, dq = _stack(rng, n=40, shape=(32, 24))
    whole = pc.photon_count_mean(data, err, dq, THRESH, G)
    tiles = [(slice(0, 16), slice(0, 24)), (slice(16, 32), slice(0, 10)), (slice(16, 32), slice(10, 24))]
    with ThreadPoolExecutor(3) as pool:
        parts = list(pool.map(lambda s: pc.photon_count_mean(data[:, s[0], s[1]], err[:, s[0], s[1]],
                                                             dq[:, s[0], s[1]], THRESH, G), tiles))  # fmt: skip
    for s, part in zip(tiles, parts):
        for got, want in zip(part, whole):
            np.testing.assert_array_equal(got, want[s])


def test_scalar_corrections():
    # the correction inverts the detection probability (two Newton steps from the one-electron start)
    lam = np.array([1e-4, 0.01, 0.05, 0.1, 0.2])
    nfr = 1e6
    nobs = nfr * np.array([pc.detection_probability(v, THRESH, G) for v in lam])
    np.testing.assert_allclose(pc.coincidence_correct(nobs, nfr, THRESH, G), lam, rtol=1e-7)
    np.testing.assert_allclose(pc.coincidence_correct(nobs, nfr, THRESH, G, niter=4), lam, rtol=1e-12)
    np.testing.assert_allclose(_ref_eps(lam, THRESH, G), [pc.detection_probability(v, THRESH, G) for v in lam],
                               rtol=1e-14)  # fmt: skip
    # a threshold at zero and a single electron: eps = lam / (1 + lam + ...) -> 1 - e^-lam to first order
    assert pc.detection_probability(1e-6, 0.0, G) == pytest.approx(1e-6, rel=1e-5)
    assert pc.coincidence_correct(0, 50, THRESH, G) == 0 and pc.coincidence_correct(3, 0, THRESH, G) == 0
    assert np.isnan(pc.pc_variance(0.1, 0, THRESH, G)) and pc.pc_variance(0.0, 10, THRESH, G) == 0
    # the variance of the rate from N frames tends to the binomial one e^x p (1 - p) / N ... as lam -> 0
    v = pc.pc_variance(1e-5, 1000, THRESH, G)
    assert v == pytest.approx(1e-5 * np.exp(THRESH / G) / 1000, rel=1e-3)
    assert pc.pc_threshold(100.0) == 500.0 and pc.pc_threshold(100.0, 4.5, 5000.0) == 450.0
    for args, msg in (((0.0,), "read noise"), ((100.0, -1.0), "must be >= 0"), ((100.0, 50.0, 5000.0), "below the EM")):
        with pytest.raises(ValueError, match=msg):
            pc.pc_threshold(*args)
    with pytest.raises(ValueError, match="niter"):
        pc.coincidence_correct(1, 10, THRESH, G, niter=0)
    mean, err, dq = pc.subtract_pc_dark([0.2, 0.05, -0.1], [0.03, 0.04, 0.0], [0, 1, 256], dark=[0.1, 0.1, 0.0],
                                        dark_err=[0.04, 0.03, 0.0], dark_dq=[2, 0, 0])  # fmt: skip
    np.testing.assert_allclose(mean, [0.1, 0.0, 0.0])
    np.testing.assert_allclose(err, [0.05, 0.05, 0.0])
    np.testing.assert_array_equal(dq, [2, 1, 256])


def test_scalar_corrections_match_corgidrp(corgi):
    photon_counting, _, _ = corgi
    nfr = np.arange(1, 300)[:, None] * np.ones((1, 200))
    nobs = np.floor(nfr * np.linspace(0, 0.6, 200)[None, :])
    for t, g in ((THRESH, G), (200.0, 5000.0), (0.0, 100.0)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = photon_counting.corr_photon_count(nobs, nfr, t, g, np.ones(nobs.shape, bool), 2)
            want_var = photon_counting.varL23(g, want, t, nfr)
        got = pc.coincidence_correct(nobs, nfr, t, g)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=0)
        np.testing.assert_allclose(pc.pc_variance(got, nfr, t, g), want_var, rtol=1e-9, atol=0)


# ---- against corgidrp's get_pc_mean -----------------------------------------------------------------------
def _corgi_dataset(corgi, data, err, dq, vistype="CGIVST_TDD_OBS"):
    _, cdata, mocks = corgi
    prihdr, exthdr = mocks.create_default_L1_headers(vistype=vistype)
    frames = []
    for i in range(data.shape[0]):
        im = cdata.Image(data[i].copy(), pri_hdr=prihdr.copy(), ext_hdr=exthdr.copy(), err=err[i][None].copy(),
                         dq=dq[i].astype(int))  # fmt: skip
        im.ext_hdr.update(EMGAIN_C=G, EXPTIME=0.05, RN=RN, KGAINPAR=7.0, ISPC=1)
        im.filename = f"cgi_0000000000000000000_20250101t0000{i:04d}_l2a.fits"
        frames.append(im)
    frames[0].ext_hdr["HISTORY"] = ""  # get_pc_mean reads it
    return cdata.Dataset(frames)


def test_matches_corgidrp_get_pc_mean(corgi):
    photon_counting, _, _ = corgi
    rng = np.random.default_rng(21)
    data, err, dq = _stack(rng, n=80, shape=(16, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = photon_counting.get_pc_mean(_corgi_dataset(corgi, data, err, dq), T_factor=T_FACTOR)[0]
    mean, e, _, dq_out = pc.photon_count_mean(data, err, dq, THRESH, G)
    got = pc.subtract_pc_dark(mean, e, dq_out)
    np.testing.assert_allclose(got[0], want.data, rtol=1e-10, atol=0)
    np.testing.assert_allclose(got[1], want.err[0], rtol=1e-10, atol=0)  # NaN where no frame is good, both
    np.testing.assert_array_equal(got[2], want.dq)
    assert want.dq[2, 2] == 256 and want.data[2, 2] == 0 and want.dq[0, 0] == 4


def test_dark_subtraction_matches_corgidrp(corgi):
    photon_counting, _, _ = corgi
    rng = np.random.default_rng(22)
    dark, dark_err, dark_dq = _stack(rng, n=60, shape=(10, 10), lam=0.02)
    ill, ill_err, ill_dq = _stack(rng, n=60, shape=(10, 10), lam=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pc_dark = photon_counting.get_pc_mean(_corgi_dataset(corgi, dark, dark_err, dark_dq, "CGIVST_CAL_DRK"),
                                              T_factor=T_FACTOR, inputmode="darks")  # fmt: skip
        want = photon_counting.get_pc_mean(_corgi_dataset(corgi, ill, ill_err, ill_dq), pc_master_dark=pc_dark,
                                           T_factor=T_FACTOR)[0]  # fmt: skip
    d = pc.subtract_pc_dark(*np.delete(pc.photon_count_mean(dark, dark_err, dark_dq, THRESH, G), 2, axis=0))
    np.testing.assert_allclose(d[0], pc_dark.data, rtol=1e-10, atol=0)
    m, e, _, q = pc.photon_count_mean(ill, ill_err, ill_dq, THRESH, G)
    got = pc.subtract_pc_dark(m, e, q, *d)
    np.testing.assert_allclose(got[0], want.data, rtol=1e-10, atol=0)
    np.testing.assert_allclose(got[1], want.err[0], rtol=1e-10, atol=0)
    np.testing.assert_array_equal(got[2], want.dq)


# ---- recovery of a known rate ------------------------------------------------------------------------------
@pytest.mark.parametrize("lam", [0.03, 0.1])
def test_recovers_a_known_rate_within_its_error(lam):
    rng = np.random.default_rng(int(lam * 1000))
    n, shape = 500, (48, 48)
    data = _frames(rng, lam, n, shape)
    mean, err, ngood, dq = pc.photon_count_mean(data, None, None, THRESH, G)
    assert (ngood == n).all() and (dq == 0).all()
    sigma = np.sqrt(pc.pc_variance(lam, n, THRESH, G))  # the expected error of one pixel's rate
    # the reported errors are that error, and so is the scatter of the estimates (2304 pixels: ~3 %)
    assert np.median(err) == pytest.approx(sigma, rel=0.05)
    assert np.std(mean) == pytest.approx(sigma, rel=0.06)
    # each pixel's rate is within the expected error about as often as a Gaussian's (counts are discrete)
    assert 0.62 < np.mean(np.abs(mean - lam) < sigma) < 0.74 and np.mean(np.abs(mean - lam) < 3 * sigma) > 0.99
    # the mean over pixels is unbiased to its (48 times smaller) error: the threshold (about 10 % of
    # single electrons fall below it) and coincidence losses are corrected; the raw fraction is not
    assert abs(mean.mean() - lam) < 4 * sigma / np.sqrt(mean.size)
    assert lam - (data > THRESH).mean() > 10 * sigma / np.sqrt(mean.size)
