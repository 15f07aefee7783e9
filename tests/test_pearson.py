"""Pearson-family draws of the pseudo-Poisson bias ("O") noise layer, against romanimpreprocess 1.0."""

from __future__ import annotations

import importlib
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ks_2samp

from detflow.kernels import pearson as kp
from detflow.kernels import ramp as kramp
from detflow.kernels.rng import stream_key

RP = [[0], [1], [2, 3], [4, 5, 6, 7], list(range(8, 16)), list(range(16, 24)), list(range(24, 32)), list(range(32, 40))]
FT = 3.04
KEY = stream_key(2024, 7, 1)  # a uint64 stream key, as the noise layers use

# rhs of the type V curve at beta1 = 1, the way the reference computes it: with t21 = t31 = I = 1 and
# t41 = curve - 3 the element lands exactly on the curve (3 + (curve - 3) == curve by Sterbenz' lemma)
_CURVE5_AT_1 = float((48 + 39 * np.float64(1.0) + 6 * (4 + np.float64(1.0)) ** 1.5) / (32 - np.float64(1.0)))

# (t21, t31, t41, I) landing in each type, with eighth moments finite (so the moment errors are estimable)
CASES = {
    "I": (1.0, 1.0, 1.0, 1.0),
    "I_small_shape": (1.0, 1.0, -1.5, 2.0),  # beta shapes 0.48 and 1.02
    "I_neg_skew": (1.0, -1.0, 1.0, 1.0),
    "III": (1.0, 2.0, 6.0, 1.0),  # beta2 == 1.5 beta1 + 3 exactly (powers of two)
    "III_small_shape": (1.0, 2.0, 6.0, 0.25),  # gamma shape 1/4
    "III_neg_skew": (1.0, -2.0, 6.0, 1.0),
    "IV": (1.0, 1.0, 2.0, 1.0),  # m = 10, nu = -72
    "IV_neg_skew": (1.0, -1.0, 2.0, 2.0),
    "V": (1.0, 1.0, _CURVE5_AT_1 - 3.0, 1.0),
    "VI": (1.0, 1.0, 1.7, 1.0),
    "VI_neg_skew": (1.0, -1.0, 1.7, 3.0),
}
EXPECTED_TYPE = {"I": 1, "III": 3, "IV": 4, "V": 5, "VI": 6}


def _ref_module(name: str):
    pytest.importorskip("romanimpreprocess")
    try:
        return importlib.import_module(f"romanimpreprocess.L1_to_L2.GalPoisson.{name}")
    except ImportError:  # package imports that need missing dependencies: load the file itself
        origin = importlib.util.find_spec("romanimpreprocess").origin
        path = Path(origin).parent / "L1_to_L2" / "GalPoisson" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"_rip_ref_{name}", path)
        mod = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(mod)
        except ImportError as exc:
            pytest.skip(f"reference {name} not importable: {exc}")
        return mod


@pytest.fixture(scope="module")
def ref_tilnus():
    return _ref_module("find_tilnus")


@pytest.fixture(scope="module")
def ref_draw():
    return _ref_module("draw_with_tilnus")


def _pattern(rp):
    return np.array([len(g) for g in rp]), np.array([g[0] for g in rp])


def _roman_weights(u: float) -> np.ndarray:
    tbar, tau, nf = kramp.resultant_times(RP, FT)
    return kramp.optimal_weights(tbar, tau, nf, u=u, start=1)


def _moment_z(x: np.ndarray, mu2: float, mu3: float, mu4: float) -> np.ndarray:
    """z-scores of the sample moments about 0 (the target mean) E[x^k], k = 1..4, against (0, mu2, mu3, mu4),
    each with its standard error sqrt((E[x^2k] - E[x^k]^2) / n) estimated from the sample."""
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    p = [np.mean(x**k) for k in range(1, 9)]
    target = [0.0, mu2, mu3, mu4]
    z = []
    for k in range(1, 5):
        se = math.sqrt(max(p[2 * k - 1] - p[k - 1] ** 2, 0.0) / n)
        z.append((p[k - 1] - target[k - 1]) / se)
    return np.array(z)


def _moments(t21, t31, t41, inten):
    return [float(np.ravel(v)[0]) for v in kp.target_moments(t21, t31, t41, np.atleast_1d(inten))]


# ---------------------------------------------------------------------------------------------
# tilde nus
# ---------------------------------------------------------------------------------------------


def test_tilde_nus_match_reference(ref_tilnus):
    nf, a0 = _pattern(RP)
    tbar = kramp.resultant_times(RP, FT)[0]
    two_point = np.zeros(len(RP))
    two_point[[1, 5]] = np.array([-1.0, 1.0]) / (tbar[5] - tbar[1])
    patterns = [
        (np.array([4, 4]), np.array([5, 12]), np.array([-0.5, 0.5])),
        (np.array([1, 2, 4, 4, 4, 1]), np.array([2, 3, 5, 23, 44, 49]), np.array([-0.1, -0.4, -0.2, 0.2, 0.4, 0.1])),
        (nf, a0, _roman_weights(0.0)),
        (nf, a0, _roman_weights(1.0)),
        (nf, a0, two_point),
    ]
    for n, a, w in patterns:
        ours = kp.tilde_nus(n, a, w)
        ref = ref_tilnus.get_tilde_nus(n, a, w)[:3]
        np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=0)


def test_tilde_nus_per_second(ref_tilnus):
    nf, a0 = _pattern(RP)
    w = _roman_weights(0.3)
    r21, r31, r41 = ref_tilnus.get_tilde_nus(nf, a0, w)[:3]
    ours = kp.tilde_nus_per_second(nf, a0, w, FT)
    np.testing.assert_allclose(ours, (r21 * FT, r31 * FT**2, r41 * FT**3), rtol=1e-12, atol=0)
    with pytest.raises(ValueError):
        kp.tilde_nus(nf, a0, w[:-1])


def test_tilde_nus_of_each_pixel_weights():
    """Per-pixel weights (the default ramp fit's: any resultants, segments, signal level) give each pixel
    the tilde nus of its own weights; read patterns with gaps between resultants included."""
    g = np.random.default_rng(8)
    for rp in (RP, [[1], [2, 3], [6, 7, 8], [12], [20, 21, 22, 23]]):
        nf, a0 = _pattern(rp)
        w = g.normal(size=(7, 9, len(rp)))
        w[0, 0] = 0.0
        w[1, 1, :2] = 0.0  # resultants left out
        t = [np.empty((7, 9)) for _ in range(3)]
        kp.tilde_nus_pixels(w, a0, nf, FT, *t)
        want = np.array([[kp.tilde_nus_per_second(nf, a0, w[i, j], FT) for j in range(9)] for i in range(7)])
        np.testing.assert_allclose(np.stack(t, axis=-1), want, rtol=1e-10, atol=1e-12)


def test_per_element_t_equal_to_scalar_draws():
    """``t`` arrays: every element draws what a scalar call with its own ``t`` draws."""
    nf, a0 = _pattern(RP)
    tsets = [kp.tilde_nus_per_second(nf, a0, _roman_weights(u), FT) for u in (0.01, 1.0)] + [CASES["IV"][:3]]
    n = 3000
    inten = np.geomspace(0.01, 1e4, n)
    idx = np.arange(n, dtype=np.int64) * 7
    which = np.arange(n) % len(tsets)
    t = [np.array([tsets[k][c] for k in which]) for c in range(3)]
    x = kp.pearson_draws(*t, inten, KEY, idx)
    for k, ts in enumerate(tsets):
        sel = which == k
        assert np.array_equal(x[sel], kp.pearson_draws(*ts, inten[sel], KEY, idx[sel]))
    assert np.any(x != 0)


# ---------------------------------------------------------------------------------------------
# type selection
# ---------------------------------------------------------------------------------------------


def _reference_types(ref_draw, monkeypatch, t21, t31, t41, inten):
    """The type the reference's draw_from_Pearson(atol=0) picks for each element: each sampler replaced
    by one returning its type number."""

    def marker(code):
        def sampler(*args, **kwargs):
            return np.full(np.shape(args[-1]), float(code))

        return sampler

    for code in (1, 3, 4, 5, 6):
        monkeypatch.setattr(ref_draw, f"random_from_type{code}", marker(code))
    with np.errstate(divide="ignore", invalid="ignore"):
        return ref_draw.draw_from_Pearson(t21, t31, t41, inten, atol=0.0).astype(np.int8)


def test_types_match_reference(ref_draw, monkeypatch):
    inten = np.concatenate([np.geomspace(1e-3, 1e5, 4001), 2.0 ** np.arange(-8, 12), [0.0, -5.0, np.nan]])
    nf, a0 = _pattern(RP)
    tsets = [
        kp.tilde_nus_per_second(nf, a0, _roman_weights(0.1), FT),
        (1.0, 1.0, 1.0),
        (1.0, -1.0, 2.0),
        (1.0, 2.0, 6.0),
        (1.0, 1.0, 1.7),
        (1.0, 1.0, _CURVE5_AT_1 - 3.0),
        (0.5, 0.1, 3.0),
        (1.0, 3.0, -2.0),
    ]
    seen = set()
    for t21, t31, t41 in tsets:
        ours = kp.pearson_type(t21, t31, t41, inten)
        ref = _reference_types(ref_draw, monkeypatch, t21, t31, t41, inten)
        np.testing.assert_array_equal(ours, ref)
        seen |= set(np.unique(ours).tolist())
    assert seen == {0, 1, 3, 4, 5, 6}
    for name, (t21, t31, t41, inten1) in CASES.items():
        assert kp.pearson_type(t21, t31, t41, [inten1])[0] == EXPECTED_TYPE[name.split("_")[0]], name


# ---------------------------------------------------------------------------------------------
# moments
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_moments_each_type(name):
    t21, t31, t41, inten1 = CASES[name]
    n = 400_000
    x = kp.pearson_draws(t21, t31, t41, np.full(n, inten1), KEY, np.arange(n, dtype=np.int64))
    assert x.dtype == np.float64 and np.all(np.isfinite(x))
    z = _moment_z(x, *_moments(t21, t31, t41, inten1))
    assert np.all(np.abs(z) < 5.0), (name, z)


def test_moment_check_can_fail():
    """The tolerance is not vacuous: for the targets of CASES["I"] (mu2 = mu3 = 1, mu4 = 4), a Gaussian with
    the right variance, and the Pearson IV draws of CASES["IV"] (same mu2 and mu3, mu4 = 5), are rejected."""
    n = 400_000
    idx = np.arange(n, dtype=np.int64)
    t21, t31, t41, inten1 = CASES["I"]
    mu2, mu3, mu4 = _moments(t21, t31, t41, inten1)
    g = np.random.default_rng(1).normal(0.0, math.sqrt(mu2), n)
    assert np.max(np.abs(_moment_z(g, mu2, mu3, mu4))) > 5.0
    x_iv = kp.pearson_draws(*CASES["IV"][:3], np.full(n, inten1), KEY, idx)
    z = _moment_z(x_iv, mu2, mu3, mu4)
    assert np.all(np.abs(z[:3]) < 5.0) and z[3] > 5.0


@pytest.mark.parametrize("t", [(1.0, 1.0, 1.0), (1.0, 2.0, 6.0), (1.0, 1.0, 2.0), (1.0, -1.0, 1.7)])
def test_bright_pixels_are_robust(t):
    """Very large intensities (beta1, beta2 - 3 ~ 1e-7: huge gamma shapes, Pearson IV m ~ 1e8) stay exact."""
    n = 200_000
    for inten1 in (2.0**17, 2.0**24):
        x = kp.pearson_draws(*t, np.full(n, inten1), KEY, np.arange(n, dtype=np.int64))
        assert np.all(np.isfinite(x))
        z = _moment_z(x, *_moments(*t, inten1))
        assert np.all(np.abs(z) < 5.0), (t, inten1, z)


# ---------------------------------------------------------------------------------------------
# same distribution as the reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, lo, hi, nref",
    [("I", 0.5, 5.0, 20_000), ("I_small_shape", 2.0, 4.0, 20_000), ("III", -2, 4, 20_000),
     ("V", 1.0, 1.0, 20_000), ("VI", 1.0, 5.0, 20_000), ("VI_neg_skew", 1.0, 5.0, 20_000),
     ("IV", 1.0, 5.0, 2_000), ("IV_neg_skew", 2.0, 5.0, 2_000)],
)  # fmt: skip
def test_ks_against_reference(ref_draw, name, lo, hi, nref):
    t21, t31, t41, _ = CASES[name]
    g = np.random.default_rng(11)
    if name == "III":  # the type III line is hit exactly only for powers of two here
        inten = 2.0 ** g.integers(lo, hi, nref)
    else:
        inten = g.uniform(lo, hi, nref)
    code = kp.pearson_type(t21, t31, t41, inten)
    assert np.all(code == EXPECTED_TYPE[name.split("_")[0]])
    ref = ref_draw.draw_from_Pearson(t21, t31, t41, inten, atol=0.0, rng=np.random.default_rng(5))
    reps = max(1, 20_000 // nref)
    ours_i = np.tile(inten, reps)
    ours = kp.pearson_draws(t21, t31, t41, ours_i, KEY, np.arange(ours_i.size, dtype=np.int64))
    assert ks_2samp(ours, ref).pvalue > 1e-3


# ---------------------------------------------------------------------------------------------
# chunking independence
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t, types", [((1.0, 1.0, 2.0), {0, 4, 6}), ((1.0, 1.0, -1.5), {0, 1})])
def test_chunking_and_order_independence(t, types):
    g = np.random.default_rng(3)
    n = 300_000  # more than one internal block
    idx = g.choice(4096 * 4096, n, replace=False).astype(np.int64)
    inten = np.geomspace(1e-3, 1e4, n)[g.permutation(n)]
    assert set(np.unique(kp.pearson_type(*t, inten)).tolist()) == types
    full = kp.pearson_draws(*t, inten, KEY, idx)
    for k in (1, 77_777, 262_145):
        parts = np.concatenate([kp.pearson_draws(*t, inten[:k], KEY, idx[:k]),
                                kp.pearson_draws(*t, inten[k:], KEY, idx[k:])])  # fmt: skip
        assert np.array_equal(parts, full)
    perm = g.permutation(n)
    assert np.array_equal(kp.pearson_draws(*t, inten[perm], KEY, idx[perm]), full[perm])
    # 2-D input gives the same values
    tile = kp.pearson_draws(*t, inten[:1000].reshape(20, 50), KEY, idx[:1000].reshape(20, 50))
    assert tile.shape == (20, 50) and np.array_equal(tile.ravel(), full[:1000])
    # another key: other draws
    other = kp.pearson_draws(*t, inten[:1000], stream_key(2024, 7, 2), idx[:1000])
    assert not np.any((other == full[:1000]) & (full[:1000] != 0))
    with pytest.raises(ValueError):
        kp.pearson_draws(*t, inten[:10], KEY, idx[:9])


# ---------------------------------------------------------------------------------------------
# realistic read pattern
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("u", [0.01, 1.0])
def test_realistic_roman_parameters(u):
    nf, a0 = _pattern(RP)
    t21, t31, t41 = kp.tilde_nus_per_second(nf, a0, _roman_weights(u), FT)
    t21f, t31f, t41f = kp.tilde_nus(nf, a0, _roman_weights(u))
    assert (t21, t31, t41) == (t21f * FT, t31f * FT**2, t41f * FT**3)
    assert t21 > 0
    n = 100_000
    inten = np.geomspace(0.01, 1e4, n).astype(np.float32)  # e/s, as the gain-scaled data_withsky
    idx = np.arange(n, dtype=np.int64) + 123_456
    x = kp.pearson_draws(t21, t31, t41, inten, KEY, idx)
    assert x.shape == inten.shape and x.dtype == np.float64
    assert np.all(np.isfinite(x))
    code = kp.pearson_type(t21, t31, t41, inten)
    assert np.all((x == 0) == (code == 0))
    assert np.mean(code != 0) > 0.5
    for inten1 in (1.0, 100.0, 1e4):
        m = 200_000
        xs = kp.pearson_draws(t21, t31, t41, np.full(m, inten1), KEY, np.arange(m, dtype=np.int64))
        assert kp.pearson_type(t21, t31, t41, [inten1])[0] != 0
        z = _moment_z(xs, *_moments(t21, t31, t41, inten1))
        assert np.all(np.abs(z) < 5.0), (u, inten1, z)


def test_nan_and_clipped_intensities():
    t = CASES["I"][:3]
    inten = np.array([np.nan, -3.0, 0.0, 0.01])
    idx = np.array([5, 6, 7, 8], dtype=np.int64)
    x = kp.pearson_draws(*t, inten, KEY, idx)
    assert x[0] == 0.0 and np.all(np.isfinite(x))
    # clipped to 0.01: an intensity below the floor draws exactly as 0.01 for the same index
    for i in (1, 2):
        assert x[i] == kp.pearson_draws(*t, np.array([0.01]), KEY, idx[i : i + 1])[0]


def test_log_normalisation_of_pearson_iv():
    """The Stirling-difference form of 2^(2m-2) |Gamma(m + i nu/2)|^2 / (pi Gamma(2m-1)) agrees with
    scipy's complex log-gamma where the latter is accurate."""
    from scipy.special import loggamma

    for m in (1.2, 2.5, 3.7, 10.0, 11.5, 30.0, 1000.0):
        for nu in (0.0, 0.3, -5.0, 40.0, 1000.0, -1e5):
            ref = (2 * m - 2) * math.log(2) + 2 * loggamma(m + 0.5j * nu).real - math.log(math.pi)
            ref -= loggamma(2 * m - 1).real
            assert kp._log_norm_theta(m, nu) == pytest.approx(ref, abs=1e-11, rel=1e-13)
