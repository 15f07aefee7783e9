"""Legendre linearity kernel against a NumPy reference (numpy.polynomial.legendre inside the range)."""

from __future__ import annotations

import numpy as np
from numpy.polynomial import legendre

from detflow.kernels.linearity import dq_flags, linearize_ramps
from detflow.schema import DQ

LIN_FLAGS = dq_flags(DQ.NO_LIN_CORR, DQ.REFERENCE_PIXEL, DQ.SATURATED)


def reference(raw, coefs, smin, smax, sref, lin_dq, gdq, exempt_first):
    n, npix = raw.shape
    out = np.zeros_like(raw, dtype=float)
    dq = lin_dq.astype(np.uint32).copy()
    for p in range(npix):
        c = coefs[:, p].astype(float)
        deriv = legendre.legder(c)
        for g in range(n):
            z = -1 + 2 * (float(raw[g, p]) - smin[p]) / (smax[p] - smin[p])
            if g == 0 and exempt_first:
                z = np.clip(z, -1, 1)
            if abs(z) <= 1:
                phi = legendre.legval(z, c)
            else:  # each polynomial continued along its tangent at the end point
                end = np.sign(z)
                phi = legendre.legval(end, c) + legendre.legval(end, deriv) * (z - end)
            direct = lin_dq[p] & (DQ.NO_LIN_CORR | DQ.REFERENCE_PIXEL)
            out[g, p] = raw[g, p] - sref[p] if direct else phi
            if abs(z) > 1 and not (g == 0 and exempt_first) and not gdq[g, p] & DQ.SATURATED:
                dq[p] |= np.uint32(DQ.NO_LIN_CORR)
    return out, dq


def test_linearize_matches_reference():
    rng = np.random.default_rng(2)
    n, npix, nc = 6, 400, 6
    smin = rng.uniform(9000, 10000, npix)
    smax = smin + rng.uniform(50000, 55000, npix)
    sref = smin + 200
    coefs = rng.normal(0, 1, (nc, npix)) * np.array([1e4, 3e4, 300, 30, 3, 0.3])[:, None]
    raw = rng.uniform(smin - 3000, smax + 3000, (n, npix))  # some outside the model range
    lin_dq = np.zeros(npix, np.uint32)
    lin_dq[:10] = np.uint32(DQ.REFERENCE_PIXEL)
    lin_dq[10:20] = np.uint32(DQ.NO_LIN_CORR)
    gdq = np.zeros((n, npix), np.uint32)
    gdq[4:, 30:60] = np.uint32(DQ.SATURATED)
    for exempt in (True, False):
        ref, ref_dq = reference(raw.astype(np.float32), coefs.astype(np.float32), smin.astype(np.float32),
                                smax.astype(np.float32), sref.astype(np.float32), lin_dq, gdq, exempt)  # fmt: skip
        out, dq = np.empty((1, npix, n), np.float32), np.empty((1, npix), np.uint32)
        f32 = [a.astype(np.float32)[None] for a in (smin, smax, sref)]
        linearize_ramps(raw.T.astype(np.float32)[None], coefs.T.astype(np.float32)[None], *f32, lin_dq[None],
                        gdq.T.copy()[None], exempt, False, LIN_FLAGS, out, dq)  # fmt: skip
        np.testing.assert_allclose(out[0].T, ref, rtol=2e-6, atol=0.02)
        np.testing.assert_array_equal(dq[0], ref_dq)
        assert np.count_nonzero(dq & DQ.NO_LIN_CORR) > 100
