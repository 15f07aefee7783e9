"""Ramp fit, jump flags and linearity against the Roman PIT itself (romanimpreprocess 1.0, gen_cal_image).

romanimpreprocess is installed without its heavy dependencies (romancal, romanisim, galsim): its
``utils.fitting`` and ``utils.ipc_linearity`` modules need only numpy, asdf and roman_datamodels.
"""

from __future__ import annotations

import asdf
import numpy as np
import pytest

from detflow.kernels import linearity as klin
from detflow.kernels import ramp as kramp
from detflow.schema import DQ

fitting = pytest.importorskip("romanimpreprocess.utils.fitting")
ipc_linearity = pytest.importorskip("romanimpreprocess.utils.ipc_linearity")

RP = [[0], [1], [2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [16, 17, 18, 19, 20, 21, 22, 23],
      [24, 25, 26, 27, 28, 29, 30, 31]]  # fmt: skip
FT = 3.04
N = 48
NB = 4


class _Log:
    def append(self, _):
        pass


def _meta(rp, start):
    n = len(rp)
    nf = np.array([len(g) for g in rp], np.int16)
    t0 = np.array([g[0] for g in rp], float)
    meta = {"ngrp": n, "N": nf, "nborder": NB,
            "tbar": ((t0 + (nf - 1) / 2.0) * FT).astype(np.float32),
            "tau": ((t0 + (nf - 1) * (2 * nf - 1) / (6.0 * nf)) * FT).astype(np.float32)}  # fmt: skip
    return meta


def test_weights_match_pit():
    meta = _meta(RP, 1)
    for u in (1e-4, 0.4 / 1.8 / 6.5**2, 0.5):
        theirs = fitting.construct_weights(u, meta, exclude_first=True)
        ours = kramp.optimal_weights(meta["tbar"], meta["tau"], meta["N"], u, start=1)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-9)


def test_ramp_fit_and_jumps_match_pit(tmp_path):
    rng = np.random.default_rng(21)
    n = len(RP)
    meta = _meta(RP, 1)
    tbar = meta["tbar"].astype(float)
    gain = rng.uniform(1.6, 2.0, (N, N)).astype(np.float32)
    rn = rng.uniform(5, 8, (N, N)).astype(np.float32)
    rate = rng.uniform(0, 300, (N, N))
    data = rate[None] * tbar[:, None, None] + rng.normal(0, 1, (n, N, N)) * rn[None] / np.sqrt(meta["N"])[:, None, None]
    hits = rng.random((N, N)) < 0.05
    jump_at = rng.integers(2, n, (N, N))
    data += np.where(hits[None] & (np.arange(n)[:, None, None] >= jump_at[None]), 300.0, 0.0)
    data = data.astype(np.float32)
    rdq = np.zeros((n, N, N), np.uint32)
    rdq[0] |= np.uint32(DQ.DO_NOT_USE)
    sat_at = np.where(rng.random((N, N)) < 0.2, rng.integers(2, n, (N, N)), n)
    rdq |= np.where(np.arange(n)[:, None, None] >= sat_at[None], np.uint32(DQ.SATURATED), np.uint32(0)).astype(
        np.uint32
    )
    pdq = np.zeros((N, N), np.uint32)
    pdq[:NB] = pdq[-NB:] = pdq[:, :NB] = pdq[:, -NB:] = np.uint32(DQ.REFERENCE_PIXEL)
    caldir = {"gain": tmp_path / "gain.asdf", "read": tmp_path / "read.asdf"}
    asdf.AsdfFile({"roman": {"data": gain}}).write_to(caldir["gain"])
    asdf.AsdfFile({"roman": {"data": rn}}).write_to(caldir["read"])
    u = 0.4 / 1.8 / 6.5**2
    meta["K"] = fitting.construct_weights(u, meta, exclude_first=True)
    pit_pdq = pdq.copy()
    slope, err_r, err_p = fitting.ramp_fit(data.copy(), rdq.copy(), pit_pdq, meta, caldir, _Log(), exclude_first=True)

    t = kramp.ramp_tables(RP, FT, u, 1)
    s, vr, vp = (np.empty((N, N), np.float32) for _ in range(3))
    dq = np.empty((N, N), np.uint32)
    kramp.fit_ramps(np.moveaxis(data, 0, -1), np.moveaxis(rdq, 0, -1), pdq, gain, rn, t.weights, t.coef_poisson,
                    t.coef_read, t.pair_start, t.pair_i, t.pair_j, t.pair_inv_dt, t.pair_poisson, t.pair_read, kramp.ramp_params(1),
                    kramp.dq_flags(DQ.SATURATED, DQ.DO_NOT_USE, DQ.JUMP_DET, DQ.REFERENCE_PIXEL, DQ.NO_GAIN_VALUE,
                                   DQ.UNRELIABLE_ERROR), s, vr, vp, dq)  # fmt: skip
    ours_pdq = pdq | dq
    # Intended difference: the PIT refits a saturated ramp only when >= 3 resultants remain before
    # saturation (at index 3 or later with the first excluded); compare the pixels it refits or leaves whole.
    same = sat_at >= 4
    np.testing.assert_allclose(s[same], slope[same], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(vr[same], err_r[same] ** 2, rtol=1e-4)
    np.testing.assert_allclose(vp[same], err_p[same] ** 2, rtol=1e-4, atol=1e-6)
    jump_ours = (ours_pdq & DQ.JUMP_DET) != 0
    jump_pit = (pit_pdq & DQ.JUMP_DET) != 0
    assert jump_pit[same].sum() > 20
    assert np.mean(jump_ours[same] != jump_pit[same]) < 0.002  # float32 weights at the threshold edge
    for flag in (DQ.SATURATED, DQ.DO_NOT_USE):
        np.testing.assert_array_equal((ours_pdq & flag) != 0, (pit_pdq & flag) != 0, err_msg=flag.name)


def test_linearity_matches_pit(tmp_path):
    rng = np.random.default_rng(4)
    n, nc = 5, 6
    smin = rng.uniform(9000, 10000, (N, N)).astype(np.float32)
    smax = (smin + rng.uniform(50000, 55000, (N, N))).astype(np.float32)
    sref = (smin + 300).astype(np.float32)
    coefs = (rng.normal(0, 1, (nc, N, N)) * np.array([1e4, 3e4, 300, 30, 3, 0.3])[:, None, None]).astype(np.float32)
    lin_dq = np.zeros((N, N), np.uint32)
    lin_dq[:NB] = np.uint32(DQ.REFERENCE_PIXEL)
    lin_dq[10, 10] = np.uint32(DQ.NO_LIN_CORR)
    path = tmp_path / "lin.asdf"
    asdf.AsdfFile({"roman": {"data": coefs, "Smin": smin, "Smax": smax, "Sref": sref, "dq": lin_dq}}).write_to(path)
    raw = rng.uniform(smin - 2000, smax + 2000, (n, N, N)).astype(np.float32)
    gdq = np.zeros((n, N, N), np.uint32)
    gdq[3:, 20:30] = np.uint32(DQ.SATURATED)
    phi, pit_dq = ipc_linearity.multilin(raw.copy(), str(path), do_not_flag_first=True,
                                         attempt_corr=~gdq & np.uint32(DQ.SATURATED))  # fmt: skip
    args = (np.moveaxis(raw, 0, -1), np.moveaxis(coefs, 0, -1), smin, smax, sref, lin_dq, np.moveaxis(gdq, 0, -1),
            True)  # fmt: skip

    def lin(sticky):
        out, dq = np.empty((N, N, n), np.float32), np.empty((N, N), np.uint32)
        klin.linearize_ramps(*args, sticky, klin.dq_flags(DQ.NO_LIN_CORR, DQ.REFERENCE_PIXEL, DQ.SATURATED), out, dq)
        return out, dq

    # bit-compatibility option: the PIT stops correcting a pixel after its first extrapolated resultant
    out, dq = lin(True)
    np.testing.assert_allclose(np.moveaxis(out, -1, 0), phi, rtol=1e-5, atol=0.05)
    np.testing.assert_array_equal(dq, pit_dq)
    # default (the fix): every resultant keeps the model; identical where nothing was extrapolated before
    fixed, dq2 = lin(False)
    np.testing.assert_array_equal(dq2, pit_dq)
    fixed = np.moveaxis(fixed, -1, 0)
    flagged_before = np.zeros_like(raw, bool)  # an earlier resultant (not the exempt first) was extrapolated
    for g in range(2, n):
        z = -1 + 2 * (raw[g - 1] - smin) / (smax - smin)
        flagged_before[g] = flagged_before[g - 1] | ((np.abs(z) > 1) & (gdq[g - 1] & DQ.SATURATED == 0))
    flagged_before &= (lin_dq == 0)[None]
    np.testing.assert_allclose(fixed[~flagged_before], phi[~flagged_before], rtol=1e-5, atol=0.05)
    assert np.any(np.abs(fixed[flagged_before] - phi[flagged_before]) > 1.0)
