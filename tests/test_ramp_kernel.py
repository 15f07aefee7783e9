"""The ramp-fit/jump kernel against a plain NumPy reference, and against stcal's Casertano fit."""

from __future__ import annotations

import numpy as np
import pytest

from detflow.kernels import ramp as kramp
from detflow.schema import DQ

RP = [[0], [1], [2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [16, 17, 18, 19, 20, 21, 22, 23]]
FT = 3.04
PIT_FLAGS = kramp.dq_flags(DQ.SATURATED, DQ.DO_NOT_USE, DQ.JUMP_DET, DQ.REFERENCE_PIXEL, DQ.NO_GAIN_VALUE,
                           DQ.UNRELIABLE_ERROR)  # fmt: skip


def reference_fit(R, gdq, pdq, gain, rn, rp, ft, u, start, sa=5.5, sb=4.5, ia=1.0, ib=1000.0):
    """Plain NumPy, pixel by pixel, written from the equations (no precomputed tables)."""
    n = len(rp)
    N = np.array([len(g) for g in rp], float)
    t0 = np.array([g[0] for g in rp], float)
    tbar = (t0 + (N - 1) / 2) * ft
    tau = (t0 + (N - 1) * (2 * N - 1) / (6 * N)) * ft

    def cov_p(tb, ta):  # Poisson covariance of resultants per unit rate
        c = np.minimum.outer(tb, tb)
        np.fill_diagonal(c, ta)
        return c

    def gls_weights(idx):
        tb, ta, nn = tbar[idx], tau[idx], N[idx]
        C = np.diag(1 / nn) + u * cov_p(tb, ta)
        A = np.stack([np.ones_like(tb), tb], 1)
        Ci = np.linalg.inv(C)
        return (np.linalg.inv(A.T @ Ci @ A) @ A.T @ Ci)[1]

    npix = R.shape[1]
    out = np.full((3, npix), np.nan)
    dqo = np.zeros(npix, np.uint32)
    for p in range(npix):
        g = gdq[:, p]
        last = n
        for k in range(start, n):
            if g[k] & (DQ.SATURATED | DQ.DO_NOT_USE):
                last = k
                break
        flags = np.bitwise_or.reduce(g[:last]) if last else np.uint32(0)
        flags = (int(flags) & ~int(DQ.DO_NOT_USE)) | int(np.bitwise_or.reduce(g) & DQ.SATURATED)
        if last - start < 2:
            if last < n:  # the flags of the resultant that ended the ramp
                flags |= int(g[last]) & ~int(DQ.DO_NOT_USE)
            dqo[p] = 0 if pdq[p] & DQ.REFERENCE_PIXEL else flags | DQ.DO_NOT_USE
            continue
        K = np.zeros(n)
        if last == n:
            K[start:] = gls_weights(np.arange(start, n))
        else:
            K[last - 1] = 1 / (tbar[last - 1] - tbar[start])
            K[start] = -K[last - 1]
        s = K @ R[:, p]
        rate = max(s / gain[p], 0)
        CP = cov_p(tbar, tau)
        out[0, p] = s
        out[1, p] = rn[p] ** 2 * np.sum(K**2 / N)
        out[2, p] = rate * K @ CP @ K
        if not pdq[p] & DQ.REFERENCE_PIXEL:
            x = np.clip(s, ia, ib)
            th = sa + (sb - sa) * np.log(x / ia) / np.log(ib / ia)
            for i in range(start, last - 1):
                for di in (1, 2):
                    if i + di > last - 1 or (di == 2 and last - start == 3):
                        continue
                    w = -K.copy()
                    dt = tbar[i + di] - tbar[i]
                    w[i + di] += 1 / dt
                    w[i] -= 1 / dt
                    var = rate * w @ CP @ w + rn[p] ** 2 * np.sum(w**2 / N)
                    if var <= 1e-12:  # the difference is the fitted slope itself
                        continue
                    if ((R[i + di, p] - R[i, p]) / dt - s) / np.sqrt(var) > th:
                        flags |= int(DQ.JUMP_DET)
            dqo[p] = flags
    return out, dqo


def run_kernel(R, gdq, pdq, gain, rn, rp, ft, u, start, detect=True):
    t = kramp.ramp_tables(rp, ft, u, start)
    params = kramp.ramp_params(start, detect=detect)
    npix = R.shape[1]
    outs = [np.empty((1, npix), dt) for dt in (np.float32, np.float32, np.float32, np.uint32)]
    kramp.fit_ramps(
        R.T.astype(np.float32)[None], gdq.T.astype(np.uint32)[None], pdq.astype(np.uint32)[None],
        gain.astype(np.float32)[None], rn.astype(np.float32)[None], t.weights, t.coef_poisson, t.coef_read,
        t.pair_start, t.pair_i, t.pair_j, t.pair_inv_dt, t.pair_poisson, t.pair_read, params, PIT_FLAGS, *outs)  # fmt: skip
    return np.stack([o[0] for o in outs[:3]]), outs[3][0]


def make_ramps(rng, npix, rp, ft, rate_max=500.0, rn=6.0, jump_frac=0.1, sat_frac=0.1):
    n = len(rp)
    K = rp[-1][-1] + 1
    rate = rng.uniform(0.0, rate_max, npix)
    gain = rng.uniform(1.6, 2.0, npix)
    frames = np.cumsum(rng.poisson(rate[None] * gain[None] * ft, (K, npix)), axis=0) / gain[None]
    jumps = rng.random(npix) < jump_frac
    jf = rng.integers(1, K, npix)
    frames += np.where(jumps[None] & (np.arange(K)[:, None] >= jf[None]), 400.0, 0.0)
    frames += rng.normal(0, rn, (K, npix))
    R = np.stack([frames[g].mean(axis=0) for g in rp])
    gdq = np.zeros((n, npix), np.uint32)
    sat_at = np.where(rng.random(npix) < sat_frac, rng.integers(1, n, npix), n)
    for k in range(n):
        gdq[k] |= np.where(k >= sat_at, np.uint32(DQ.SATURATED), np.uint32(0)).astype(np.uint32)
    gdq[0] |= np.uint32(DQ.DO_NOT_USE)
    pdq = np.zeros(npix, np.uint32)
    pdq[:5] = np.uint32(DQ.REFERENCE_PIXEL)
    return R, gdq, pdq, gain, np.full(npix, rn), jumps


@pytest.mark.parametrize("start", [0, 1])
def test_kernel_matches_numpy_reference(start):
    rng = np.random.default_rng(11)
    R, gdq, pdq, gain, rn, _ = make_ramps(rng, 600, RP, FT)
    if start == 0:
        gdq[0] &= ~np.uint32(DQ.DO_NOT_USE)
    gdq[3, 7] |= np.uint32(DQ.DO_NOT_USE)  # a do-not-use resultant ends the usable ramp
    gdq[2, 8] |= np.uint32(DQ.AD_FLOOR)  # other group flags propagate to the pixel
    gdq[start + 1, 9] |= np.uint32(DQ.AD_FLOOR | DQ.DO_NOT_USE)  # no slope: the pixel says why
    u = 0.4 / 1.8 / 6.5**2
    ref, ref_dq = reference_fit(R.astype(np.float32).astype(float), gdq, pdq, gain, rn, RP, FT, u, start)
    got, got_dq = run_kernel(R, gdq, pdq, gain, rn, RP, FT, u, start)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_allclose(got[0], ref[0], rtol=2e-5, atol=2e-4, equal_nan=True)
    np.testing.assert_allclose(got[1:], ref[1:], rtol=2e-5, equal_nan=True)
    np.testing.assert_array_equal(got_dq, ref_dq)
    assert np.count_nonzero(got_dq & DQ.JUMP_DET) > 10  # the test exercises jump flags
    assert got_dq[8] & DQ.AD_FLOOR
    assert got_dq[9] & DQ.AD_FLOOR and got_dq[9] & DQ.DO_NOT_USE and np.isnan(got[0, 9])


def test_optimal_weights_properties():
    tbar, tau, nf = kramp.resultant_times(RP, FT)
    for u in (0.0, 1e-3, 0.1, 10.0):
        k = kramp.optimal_weights(tbar, tau, nf, u, start=1)
        assert k[0] == 0
        assert abs(k.sum()) < 1e-10  # insensitive to the reset level
        assert abs(k @ tbar - 1) < 1e-10  # unbiased for a linear ramp


def test_read_pattern_times_are_casertano():
    tbar, tau, nf = kramp.resultant_times([[3, 4, 5]], 2.0)
    frames = np.array([3, 4, 5]) * 2.0
    assert tbar[0] == pytest.approx(frames.mean())
    # tau: variance-weighted time, Cov(mean of frames) per unit rate = mean over pairs of min(t_i, t_j)
    assert tau[0] == pytest.approx(np.minimum.outer(frames, frames).mean())


def test_noiseless_ramps_recover_slope_exactly():
    rng = np.random.default_rng(3)
    npix = 200
    rate = rng.uniform(0, 300, npix)
    tbar, _, _ = kramp.resultant_times(RP, FT)
    R = 1000.0 + rate[None] * tbar[:, None]
    gdq = np.zeros((len(RP), npix), np.uint32)
    gdq[0] = np.uint32(DQ.DO_NOT_USE)
    gdq[5:, :50] = np.uint32(DQ.SATURATED)
    got, dq = run_kernel(R, gdq, np.zeros(npix, np.uint32), np.full(npix, 2.0), np.full(npix, 5.0), RP, FT,
                         0.01, 1)  # fmt: skip
    np.testing.assert_allclose(got[0], rate, rtol=1e-4, atol=1e-3)
    assert np.all(dq[:50] & DQ.SATURATED) and not np.any(dq[50:] & DQ.SATURATED)
    assert not np.any(dq & DQ.JUMP_DET)


def test_kernel_from_thread_pool_is_deterministic():
    """Kernels run inside dask threads: concurrent calls give the serial answer."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(5)
    R, gdq, pdq, gain, rn, _ = make_ramps(rng, 2000, RP, FT)
    serial = run_kernel(R, gdq, pdq, gain, rn, RP, FT, 0.01, 1)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: run_kernel(R, gdq, pdq, gain, rn, RP, FT, 0.01, 1), range(8)))
    for got in results:
        np.testing.assert_array_equal(got[0], serial[0])
        np.testing.assert_array_equal(got[1], serial[1])


stcal_fit = pytest.importorskip("stcal.ramp_fitting.ols_cas22_fit")


def test_against_stcal_casertano():
    """Same ramps through stcal 1.20 ``fit_ramps_casertano`` (slope at parameter index 1).

    Intended differences: stcal adapts the weights to each pixel's own signal, we use the PIT's fixed
    weights for one ``u``; stcal fits every clean segment, we fit the pre-saturation ramp. Noiseless
    ramps therefore agree exactly; noisy ramps agree to a small fraction of the error.
    """
    rng = np.random.default_rng(7)
    npix = 4000
    rp = [[1], [2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [16, 17, 18, 19, 20, 21, 22, 23]]
    tbar, _, _ = kramp.resultant_times(rp, FT)
    gain = np.full(npix, 1.0)  # stcal works in electrons
    rn = np.full(npix, 8.0)
    rate = rng.uniform(1, 200, npix)
    # noiseless
    R0 = 100.0 + rate[None] * tbar[:, None]
    zeros = np.zeros((len(rp), npix), np.uint32)
    ours, _ = run_kernel(R0, zeros, np.zeros(npix, np.uint32), gain, rn, rp, FT, 1.0 / 64, 0)
    st = stcal_fit.fit_ramps_casertano(R0.astype(np.float32), zeros.astype(np.int32), rn, FT, rp)
    np.testing.assert_allclose(ours[0], st.parameters[:, 1], rtol=1e-4)
    # noisy: Poisson + read noise
    K = rp[-1][-1] + 1
    frames = np.cumsum(rng.poisson(rate[None] * FT, (K, npix)), axis=0) + rng.normal(0, 8.0, (K, npix))
    R = np.stack([frames[g].mean(axis=0) for g in rp])
    ours, _ = run_kernel(R, zeros, np.zeros(npix, np.uint32), gain, rn, rp, FT, 50.0 / 64, 0, detect=False)
    st = stcal_fit.fit_ramps_casertano(R.astype(np.float32), zeros.astype(np.int32), rn, FT, rp)
    err = np.sqrt(ours[1] + ours[2])
    diff = (ours[0] - st.parameters[:, 1]) / err
    assert abs(np.mean(diff)) < 0.02
    assert np.std(diff) < 0.25
    # both are unbiased with the stated errors: chi^2 per pixel near 1 for ours
    chi2 = np.mean(((ours[0] - rate) / err) ** 2)
    assert 0.9 < chi2 < 1.1
    # read-noise variances agree to the weighting difference
    ratio = ours[1] / st.variances[:, 0]
    assert 0.8 < np.median(ratio) < 1.25
