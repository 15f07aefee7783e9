"""Issue 19: the default ramp fit (every good resultant, split at jumps), on stcal 1.20's own Cas22 test
cases (tests/test_ramp_fitting_cas22.py and tests/test_jump_cas22.py of spacetelescope/stcal: simulated
ramps, random DO_NOT_USE resultants, one injected 1000 e jump per pixel) with stcal run beside ours,
and on ramps with jumps, skipped resultants and saturation at read-noise and Poisson-dominated signals."""

from __future__ import annotations

import numpy as np
import pytest

from detflow.instruments.roman_wfi_pit import from_pit
from detflow.kernels import linearity as klin
from detflow.kernels import ramp as kramp
from detflow.kernels import ramp_gls as kgls
from detflow.schema import DQ

ols_cas22 = pytest.importorskip("stcal.ramp_fitting.ols_cas22")

RT = 3.04
STCAL_RP = [[1, 2, 3, 4], [5], [6, 7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18], [19, 20, 21],
            [22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36]]  # fmt: skip
FLUX, RN, NPIX = 100.0, 5.0, 100_000
FLAGS = kgls.dq_flags(DQ.SATURATED, DQ.DO_NOT_USE, DQ.JUMP_DET, DQ.REFERENCE_PIXEL, DQ.NO_GAIN_VALUE,
                      DQ.UNRELIABLE_ERROR, DQ.UNRELIABLE_SLOPE)  # fmt: skip
DNU, JUMP, ONE = int(DQ.DO_NOT_USE), int(DQ.JUMP_DET), int(DQ.UNRELIABLE_SLOPE)


def fit(R, gdq, rp, gain=1.0, rn=RN, mark=False, pdq=None, **kw):
    """``R``, ``gdq`` (n, npix) -> (slope, var_rnoise, var_poisson), dq[, jump-marked gdq (n, npix)]."""
    n, npix = R.shape
    tbar, tau, nf = kramp.resultant_times(rp, RT)
    kw.setdefault("start", 0)
    p = kgls.gls_params(**kw)
    outs = [np.empty((1, npix), t) for t in (np.float32, np.float32, np.float32, np.uint32)]
    jg = np.zeros((1, npix, n) if mark else (0, 0, 0), np.uint32)
    pdq = np.zeros(npix, np.uint32) if pdq is None else pdq
    kgls.fit_ramps(np.ascontiguousarray(R.T, np.float32)[None], np.ascontiguousarray(gdq.T, np.uint32)[None],
                   pdq[None], np.broadcast_to(np.float32(gain), (1, npix)), np.broadcast_to(np.float32(rn), (1, npix)),
                   tbar, tau, nf.astype(np.float64), p, FLAGS, *outs, jg)  # fmt: skip
    res = np.stack([o[0] for o in outs[:3]]).astype(np.float64), outs[3][0]
    return (*res, jg[0].T) if mark else res


def stcal_ramps(rng, rp=STCAL_RP, npix=NPIX, flux=FLUX):
    """stcal's ``_generate_resultants``: Poisson frames from zero, read noise per resultant, electrons."""
    out = np.zeros((len(rp), npix), np.float32)
    ramp = np.zeros(npix, np.float32)
    for i, reads in enumerate(rp):
        tot = np.zeros(npix, np.float32)
        for _ in reads:
            ramp += rng.poisson(flux * RT, npix).astype(np.float32)
            tot += ramp
        tot += rng.standard_normal(npix, dtype=np.float32) * np.float32(RN / np.sqrt(len(reads)))
        out[i] = tot / len(reads)
    return out


def run_stcal(R, dq, use_jump):
    return ols_cas22.fit_ramps(R, dq.astype(np.int32).copy(), np.full(R.shape[1], RN, np.float32), RT, STCAL_RP,
                               use_jump)  # fmt: skip


def chi2(s, v, truth=FLUX):
    return float(np.mean((s - truth) ** 2 / v))


@pytest.fixture(scope="module")
def clean():
    return stcal_ramps(np.random.default_rng(619))


@pytest.mark.parametrize("use_jump", [False, True])
def test_random_do_not_use_fit_fraction_and_chi2(clean, use_jump):
    """stcal's test_fit_ramps with use_dq: 30 % of resultants DO_NOT_USE. stcal fits a pixel only with two
    adjacent good resultants (its 'okay'); we skip the bad ones and fit the rest."""
    dq = (np.random.default_rng(1).uniform(size=clean.shape) > 0.7).astype(np.uint32) * DNU
    (s, vr, vp), d = fit(clean, dq, STCAL_RP, detect=use_jump, one=kgls.ONE_OFF, u=FLUX / RN**2)
    st = run_stcal(clean, (dq != 0), use_jump)
    okay = np.sum((dq[1:] == 0) & (dq[:-1] == 0), axis=0) != 0  # stcal's criterion
    ours = np.isfinite(s)
    assert ours.mean() >= okay.mean() + 0.05  # 98.9 % against 91.3 %
    assert ours.sum() == np.sum(np.sum(dq == 0, axis=0) >= 2)  # every pixel with two good resultants
    assert abs(chi2(s[ours], vr[ours] + vp[ours]) - 1) < 0.03
    # stcal's own chi-square on what it fits, for reference (its DO_NOT_USE split fits fewer pixels)
    sv = st.variances[okay, 2]
    assert abs(chi2(st.parameters[okay, 1][sv > 0], sv[sv > 0]) - 1) < 0.05
    assert np.all(d[~ours] & DNU) and not np.any(d[ours] & DNU)
    assert np.mean(d[ours] & JUMP) < 1e-4  # no jumps in these ramps
    # both fitted: our errors are smaller (more resultants used)
    both = ours & okay
    assert np.mean(np.sqrt(vr + vp)[both]) < np.mean(np.sqrt(st.variances[both, 2]))


def test_clean_ramps_like_stcal(clean):
    """No DQ, jump detection on: chi-square 1, no more false jumps than stcal, smaller errors."""
    (s, vr, vp), d = fit(clean, np.zeros(clean.shape, np.uint32), STCAL_RP, u=1.0)
    st = run_stcal(clean, np.zeros(clean.shape), True)
    assert abs(chi2(s, vr + vp) - 1) < 0.03
    assert np.mean(d & JUMP) <= np.mean((st.dq != 0).any(axis=0))
    assert np.mean(np.sqrt(vr + vp)) <= np.mean(np.sqrt(st.variances[:, 2]))


def test_injected_jumps_against_stcal(clean):
    """stcal's jump_data/test_find_jumps: one 1000 e jump per pixel at a random read; we split the ramp
    there and refit. Slope errors after jumps no larger than stcal's, chi-square 1 on the flagged pixels."""
    rng = np.random.default_rng(620)
    nread = STCAL_RP[-1][-1]
    jump_read = rng.integers(nread - 1, size=NPIX)  # read index (frame - 1); 0: the whole ramp, no jump
    R = clean.copy()
    for i, reads in enumerate(STCAL_RP):
        R[i] += np.mean(1000.0 * ((np.array(reads) - 1)[:, None] >= jump_read[None]), axis=0).astype(np.float32)
    (s, vr, vp), d, jg = fit(R, np.zeros(R.shape, np.uint32), STCAL_RP, mark=True, u=1.0)
    st = run_stcal(R, np.zeros(R.shape), True)
    hit = jump_read > 0
    ours = (d & JUMP) != 0
    theirs = (st.dq != 0).any(axis=0)
    assert ours[hit].mean() > 0.92  # missed: a jump in the last few of the 15 frames of the last resultant
    missed_late = hit & ~ours & (jump_read < nread - 6)
    assert missed_late.sum() <= 5  # elsewhere practically all are found
    err = np.abs(s - FLUX)
    st_err = np.abs(st.parameters[:, 1] - FLUX)
    both = ours & theirs & hit
    assert np.median(err[both]) <= np.median(st_err[both])
    assert np.sqrt(np.mean(err[both] ** 2)) <= np.sqrt(np.mean(st_err[both] ** 2))
    assert np.median(err[ours & hit]) <= np.median(st_err[theirs & hit])
    assert abs(chi2(s[ours], (vr + vp)[ours]) - 1) < 0.03
    # the resultant marked is the one after the jump (or the one holding it)
    first_after = np.array([next(i for i, r in enumerate(STCAL_RP) if r[-1] - 1 >= j) for j in jump_read])
    marked = jg[first_after, np.arange(NPIX)] | jg[np.minimum(first_after + 1, len(STCAL_RP) - 1), np.arange(NPIX)]
    assert np.mean((marked & JUMP)[ours & hit] != 0) > 0.97  # the one holding the jump or the next


def roman_sim(rng, npix, rate_lo, rate_hi, rn, gain=1.8, jump_frac=0.3, dnu_frac=0.1, sat_frac=0.2):
    """Roman-like ramps in DN: Poisson frames from a reset read [0] plus read noise, jumps of 200-2000 DN at
    any frame, random DO_NOT_USE resultants, saturation ending the ramp from a random resultant on."""
    rp = [[0], [1], [2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [16, 17, 18, 19, 20, 21, 22, 23],
          [24, 25, 26, 27, 28, 29, 30, 31]]  # fmt: skip
    n, nfr = len(rp), rp[-1][-1] + 1
    rate = rng.uniform(rate_lo, rate_hi, npix)
    frames = np.cumsum(rng.poisson(rate * gain * RT, (nfr, npix)), axis=0) / gain
    frames[0] = 0.0  # the reset read
    jump = rng.random(npix) < jump_frac
    at = rng.integers(1, nfr, npix)
    frames += np.where(jump & (np.arange(nfr)[:, None] >= at), rng.uniform(200, 2000, npix), 0.0)
    frames += rng.normal(0, rn, frames.shape)
    R = np.stack([frames[r].mean(axis=0) for r in rp]) + 1000.0  # an unknown bias
    gdq = np.where(rng.random((n, npix)) < dnu_frac, DNU, 0).astype(np.uint32)
    sat_at = np.where(rng.random(npix) < sat_frac, rng.integers(2, n, npix), n)
    gdq |= np.where(np.arange(n)[:, None] >= sat_at, np.uint32(DQ.SATURATED), np.uint32(0)).astype(np.uint32)
    gdq[0] |= DNU  # exclude_first
    visible = jump & (at >= 2) & (at <= np.array([r[-1] for r in rp])[sat_at - 1])  # a step in the fitted ramp
    return rp, R, gdq, rate, visible


@pytest.mark.parametrize("regime", ["read_noise", "poisson"])
def test_chi2_with_jumps_dropped_resultants_and_saturation(regime):
    rng = np.random.default_rng(5 if regime == "poisson" else 6)
    lo, hi = (0.0, 2.0) if regime == "read_noise" else (100.0, 400.0)
    rn = 6.5 if regime == "read_noise" else 2.0
    rp, R, gdq, rate, jump = roman_sim(rng, 200_000, lo, hi, rn)
    (s, vr, vp), d = fit(R, gdq, rp, gain=1.8, rn=rn, start=1, one=kgls.ONE_OFF)
    ok = np.isfinite(s)
    assert ok.mean() > 0.95
    found = (d & JUMP) != 0
    assert found[jump & ok].mean() > 0.8  # the 200 DN ones on bright pixels are not all above the noise
    assert found[~jump & ok].mean() < 2e-3
    # chi-square of pixels without a jump in their fitted ramp and of those whose jump was found (an
    # unfound jump is mostly one in the last frames of a long resultant, below the threshold)
    use = ok & (~jump | found)
    z2 = (s - rate) ** 2 / (vr + vp)
    assert abs(np.mean(z2[use]) - 1) < 0.03, np.mean(z2[use])
    assert abs(np.mean(z2[use & jump]) - 1) < 0.05, np.mean(z2[use & jump])


def test_noiseless_ramps_exact_with_holes_jumps_and_saturation():
    rp = [[0], [1], [2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [16, 17, 18, 19]]
    tbar, _, _ = kramp.resultant_times(rp, RT)
    npix, n = 6, len(rp)
    rate = np.array([3.0, 50.0, 120.0, 7.0, 300.0, 20.0])
    R = 500.0 + rate * tbar[:, None]
    gdq = np.zeros((n, npix), np.uint32)
    gdq[0] = DNU
    gdq[3, 0] |= DNU  # a hole
    gdq[[2, 4], 1] |= DNU  # two holes
    R[4:, 2] += 5000.0  # a jump before resultant 4 (single-frame boundary: found and split)
    gdq[5:, 3] |= np.uint32(DQ.SATURATED)
    R[np.isin(np.arange(n), [5, 6]), 3] = 60000.0
    R[3:, 4] += 800.0  # a jump on input, flagged
    gdq[3, 4] |= JUMP
    R[2, 5] = np.nan  # a missing resultant
    (s, vr, vp), d = fit(R, gdq, rp, gain=2.0, rn=5.0, start=1)
    np.testing.assert_allclose(s, rate, rtol=1e-5)
    assert d[2] & JUMP and d[4] & JUMP and not np.any(d[[0, 1, 3, 5]] & JUMP)
    assert d[3] & DQ.SATURATED and not np.any(d & DNU)
    assert np.all(np.isfinite(vr)) and np.all(np.isfinite(vp))


def test_weights_are_the_fit():
    """fit_ramps_weights: per pixel the linear weights of the final fit (segments, skipped resultants, signal
    level): they give the slope, both variances and the unit response, and nothing from unused resultants."""
    rng = np.random.default_rng(11)
    for lo, hi, rn in ((0.0, 2.0, 6.5), (100.0, 400.0, 2.0)):
        rp, R, gdq, rate, _ = roman_sim(rng, 20_000, lo, hi, rn)
        n, npix = R.shape
        tbar, tau, nf = kramp.resultant_times(rp, RT)
        outs = [np.empty((1, npix), t) for t in (np.float32, np.float32, np.float32, np.uint32)]
        marks = np.zeros((1, npix, n), np.uint32)
        w = np.full((1, npix, n), np.nan)
        args = (np.ascontiguousarray(R.T, np.float32)[None], np.ascontiguousarray(gdq.T)[None],
                np.zeros((1, npix), np.uint32), np.full((1, npix), 1.8, np.float32), np.full((1, npix), rn, np.float32),
                tbar, tau, nf.astype(float), kgls.gls_params(start=1), FLAGS)  # fmt: skip
        kgls.fit_ramps_weights(*args, *outs, marks, w)
        s, vr, vp, d = (o[0].astype(np.float64) for o in outs)
        w = w[0]
        plain = [np.empty((1, npix), t) for t in (np.float32, np.float32, np.float32, np.uint32)]
        kgls.fit_ramps(*args, *plain, np.zeros((0, 0, 0), np.uint32))
        for a, b in zip(outs, plain):
            np.testing.assert_array_equal(a, b)
        ok = np.isfinite(s)
        split = (d.astype(np.uint32) & JUMP) != 0
        assert ok.mean() > 0.9 and split[ok].mean() > 0.1
        np.testing.assert_allclose(w @ tbar.astype(np.float64), np.where(ok, 1.0, 0.0), atol=1e-9)  # unbiased
        np.testing.assert_allclose(w.sum(axis=1), 0.0, atol=1e-9)  # every segment's intercept cancels
        Rf = np.where(np.isfinite(R.T), R.T.astype(np.float32).astype(np.float64), 0.0)
        err = np.sqrt(vr + vp)
        assert np.all(np.abs(np.sum(w * Rf, axis=1) - s)[ok] < 1e-3 * err[ok])
        np.testing.assert_allclose((w**2 / nf) @ np.ones(n) * rn**2, np.where(ok, vr, 0.0), rtol=1e-5)
        sp = np.minimum.outer(tbar, tbar)
        sp[np.diag_indices(n)] = tau
        cp = np.einsum("pi,ij,pj->p", w, sp, w)
        np.testing.assert_allclose((cp * np.maximum(s, 0) / 1.8)[ok], vp[ok], rtol=1e-5, atol=1e-12)
        unused = ((gdq.T & (DNU | int(DQ.SATURATED))) != 0) | ~ok[:, None]
        one = (d.astype(np.uint32) & ONE) != 0  # a one-resultant slope from the excluded first resultant
        unused[one, 0] = False
        assert one.sum() > 0 and np.all(w[unused] == 0)
        # a split removes the jump: the weights of the resultants on either side of it have opposite signs'
        # segments, so the weights never span the step (no weight pair across a marked resultant)
        jumped = marks[0].T != 0  # (n, npix): first resultant after a jump found here
        for g in range(1, n):
            pix = jumped[g] & ok
            # the step sits between g-1 and g: the weights after it form segments of their own (sum zero)
            np.testing.assert_allclose(w[pix, g:].sum(axis=1), 0.0, atol=1e-9)


def test_one_resultant_slopes():
    """A pixel saturating in its second resultant: slope from the excluded first resultant (the reset read),
    or from zero signal at t = 0, flagged UNRELIABLE_SLOPE; off, or no usable zero point: NaN, DO_NOT_USE."""
    rp = [[0], [1, 2], [3, 4], [5, 6]]
    tbar, tau, _ = kramp.resultant_times(rp, RT)
    R = (10.0 + 40.0 * tbar)[:, None].repeat(3, 1)
    gdq = np.zeros(R.shape, np.uint32)
    gdq[0] = DNU
    sat = np.uint32(DQ.SATURATED)
    gdq[2:] = sat
    gdq[0, 2] |= sat  # pixel 2: the first resultant is no zero point
    gdq[1:, 2] |= sat
    (s, vr, vp), d = fit(R, gdq, rp, gain=2.0, rn=5.0, start=1, one=kgls.ONE_FIRST)
    assert s[0] == pytest.approx(40.0, rel=1e-6) and s[1] == pytest.approx(40.0, rel=1e-6)
    dt = tbar[1] - tbar[0]
    assert vr[0] == pytest.approx(25.0 * (1 + 1 / 2) / dt**2, rel=1e-5)
    assert vp[0] == pytest.approx(40.0 / 2.0 * (tau[1] - tbar[0]) / dt**2, rel=1e-5)
    assert d[0] & ONE and not d[0] & DNU
    assert np.isnan(s[2]) and d[2] & DNU
    (s, vr, vp), d = fit(R, gdq, rp, gain=2.0, rn=5.0, start=1, one=kgls.ONE_ZERO)
    assert s[0] == pytest.approx((10.0 + 40.0 * tbar[1]) / tbar[1], rel=1e-6) and d[0] & ONE
    (s, vr, vp), d = fit(R, gdq, rp, gain=2.0, rn=5.0, start=1, one=kgls.ONE_OFF)
    assert np.all(np.isnan(s)) and np.all(d & DNU) and not np.any(d & ONE)


def test_unusable_gain_read_noise_and_reference_pixels():
    rp = STCAL_RP
    R = stcal_ramps(np.random.default_rng(2), npix=4)
    pdq = np.array([0, 0, 0, DQ.REFERENCE_PIXEL], np.uint32)
    tbar, _, _ = kramp.resultant_times(rp, RT)
    outs = [np.empty((1, 4), t) for t in (np.float32, np.float32, np.float32, np.uint32)]
    tau, nf = kramp.resultant_times(rp, RT)[1:]
    kgls.fit_ramps(np.ascontiguousarray(R.T)[None], np.zeros((1, 4, len(rp)), np.uint32), pdq[None],
                   np.array([[1.0, np.nan, 1.0, 1.0]], np.float32), np.array([[RN, RN, -1.0, RN]], np.float32),
                   tbar, tau, nf.astype(float), kgls.gls_params(start=0), FLAGS, *outs, np.zeros((0, 0, 0), np.uint32))  # fmt: skip
    s, vr, vp, d = (o[0] for o in outs)
    assert np.all(np.isfinite(s))
    assert np.isnan(vp[1]) and d[1] == DQ.NO_GAIN_VALUE | DQ.DO_NOT_USE and np.isfinite(vr[1])
    assert np.isnan(vr[2]) and d[2] == DQ.UNRELIABLE_ERROR | DQ.DO_NOT_USE and np.isfinite(vp[2])
    assert d[0] == 0 and d[3] == 0


def test_fused_kernel_is_the_chain():
    """linearize_dark_fit = linearity, then dark subtraction in float32, then fit_ramps."""
    rng = np.random.default_rng(3)
    rp, R, gdq, _, _ = roman_sim(rng, 400, 0.0, 300.0, 6.5)
    ny, nx, n = 20, 20, len(rp)
    raw = np.ascontiguousarray(R.T.reshape(ny, nx, n), np.float32) + 9000
    coefs = np.zeros((ny, nx, 3), np.float32)
    coefs[..., 0], coefs[..., 1], coefs[..., 2] = 1000.0, 30000.0, 50.0
    smin, smax = np.full((ny, nx), 8000, np.float32), np.full((ny, nx), 68000, np.float32)
    sref, lin_dq = np.full((ny, nx), 9000, np.float32), np.zeros((ny, nx), np.uint32)
    g = np.ascontiguousarray(gdq.T.reshape(ny, nx, n))
    dark = rng.uniform(0, 1, (ny, nx)).astype(np.float32)
    gain, rn, pdq = (
        np.full((ny, nx), 1.8, np.float32),
        np.full((ny, nx), 6.5, np.float32),
        np.zeros((ny, nx), np.uint32),
    )
    tbar, tau, nf = kramp.resultant_times(rp, RT)
    p = kgls.gls_params(start=1)
    fused = [np.empty((ny, nx), t) for t in (np.float32, np.float32, np.float32, np.uint32)]
    lflag_values = klin.dq_flags(DQ.NO_LIN_CORR, DQ.REFERENCE_PIXEL, DQ.SATURATED)
    kgls.linearize_dark_fit(raw, coefs, smin, smax, sref, lin_dq, g, True, False, lflag_values, dark, pdq, gain, rn,
                            tbar, tau, nf.astype(float), p, FLAGS, *fused)  # fmt: skip
    lin, lflags = np.empty((ny, nx, n), np.float32), np.empty((ny, nx), np.uint32)
    klin.linearize_ramps(raw, coefs, smin, smax, sref, lin_dq, g, True, False, lflag_values, lin, lflags)
    lin = lin - tbar.astype(np.float32)[None, None] * dark[..., None]
    chain = [np.empty((ny, nx), t) for t in (np.float32, np.float32, np.float32, np.uint32)]
    kgls.fit_ramps(lin, g, pdq | lflags, gain, rn, tbar, tau, nf.astype(float), p, FLAGS, *chain,
                   np.zeros((0, 0, 0), np.uint32))  # fmt: skip
    for a, b in zip(fused[:3], chain[:3]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fused[3], chain[3] | lflags)


def test_pit_configuration_asks_for_pit_numerics(tmp_path):
    job = from_pit({"IN": "a.asdf", "OUT": "b.asdf", "CALDIR": {}}, str(tmp_path / "c.yaml"))
    assert job["steps"]["ramp_fit"] == {"pit_compat": True}
    job = from_pit({"IN": "a.asdf", "OUT": "b.asdf", "CALDIR": {}, "RAMP_OPT_PARS": {"slope": 1.0}},
                   str(tmp_path / "c.yaml"))  # fmt: skip
    assert job["steps"]["ramp_fit"] == {"slope": 1.0, "pit_compat": True}
