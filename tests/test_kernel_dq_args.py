"""The WFI kernels take their DQ values as arguments (kernels import nothing from the package): given a
foreign bit assignment (each flag moved to another bit, as a ``dqflags`` mapping of another pipeline would
be), every kernel returns the same flags in the foreign bits, and the bits it was not told about pass
through unchanged."""

from __future__ import annotations

import numpy as np

from detflow.kernels import linearity as klin
from detflow.kernels import ramp as kramp
from detflow.kernels import ramp_gls as kgls
from detflow.kernels import saturation as ksat
from detflow.schema import DQ
from detflow.steps.wfi import saturation_frame_params

RP = [[0], [1], [2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
FT = 3.04
NAMES = ("SATURATED", "DO_NOT_USE", "JUMP_DET", "REFERENCE_PIXEL", "NO_GAIN_VALUE", "UNRELIABLE_ERROR",
         "UNRELIABLE_SLOPE", "NO_LIN_CORR", "AD_FLOOR")  # fmt: skip
OURS = {k: int(DQ[k]) for k in NAMES}
# another pipeline's bits for the same meanings (none of them one of ours above, none HOT)
FOREIGN = dict(zip(NAMES, (1 << 26, 1 << 27, 1 << 29, 1 << 3, 1 << 5, 1 << 7, 1 << 9, 1 << 13, 1 << 30)))
PASS = int(DQ.HOT)  # a bit no kernel knows: kept as it is


def to_foreign(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.uint32)
    out = a & np.uint32(~sum(OURS.values()) & 0xFFFFFFFF)
    for k in NAMES:
        out |= np.where((a & np.uint32(OURS[k])) != 0, np.uint32(FOREIGN[k]), np.uint32(0))
    return out


def lin_flags(m):
    return klin.dq_flags(m["NO_LIN_CORR"], m["REFERENCE_PIXEL"], m["SATURATED"])


def pit_flags(m):
    return kramp.dq_flags(*(m[k] for k in NAMES[:6]))


def gls_flags(m):
    return kgls.dq_flags(*(m[k] for k in NAMES[:7]))


def ramps(seed=0, ny=12, nx=10):
    """Linearity inputs and group flags with every case the kernels flag: extrapolated resultants,
    reference pixels, saturated and do-not-use resultants, unusable gain and read noise, a jump."""
    rng = np.random.default_rng(seed)
    n = len(RP)
    tbar = kramp.resultant_times(RP, FT)[0]
    rate = rng.uniform(0, 800, (ny, nx))
    raw = (9000 + rate[..., None] * tbar + rng.normal(0, 6, (ny, nx, n))).astype(np.float32)
    raw[3, 3, 3:] += 2000  # a jump
    coefs = np.zeros((ny, nx, 3), np.float32)
    coefs[..., 0], coefs[..., 1], coefs[..., 2] = 30000.0, 30000.0, 40.0
    smin = np.full((ny, nx), 8000, np.float32)
    smax = np.full((ny, nx), 34000, np.float32)  # the brightest ramps run past the model
    sref = np.full((ny, nx), 9000, np.float32)
    lin_dq = np.zeros((ny, nx), np.uint32)
    lin_dq[0] = OURS["REFERENCE_PIXEL"]
    lin_dq[1, :3] = OURS["NO_LIN_CORR"] | PASS
    gdq = np.zeros((ny, nx, n), np.uint32)
    gdq[raw > 40000] = OURS["SATURATED"]
    gdq[..., 0] = OURS["DO_NOT_USE"]
    gdq[2, 5, 2] |= OURS["DO_NOT_USE"] | PASS
    gain = np.full((ny, nx), 1.8, np.float32)
    gain[4, 4] = np.nan
    rn = np.full((ny, nx), 6.5, np.float32)
    rn[5, 5] = -1.0
    return raw, coefs, smin, smax, sref, lin_dq, gdq, gain, rn, rng.uniform(0, 0.1, (ny, nx)).astype(np.float32)


def test_linearity_uses_the_flag_values_given():
    raw, coefs, smin, smax, sref, lin_dq, gdq, *_ = ramps()
    outs = {}
    for name, m, conv in (("ours", OURS, np.asarray), ("foreign", FOREIGN, to_foreign)):
        out, dq = np.empty(raw.shape, np.float32), np.empty(lin_dq.shape, np.uint32)
        klin.linearize_ramps(raw, coefs, smin, smax, sref, conv(lin_dq), conv(gdq), True, False, lin_flags(m), out,
                             dq)  # fmt: skip
        outs[name] = out, dq
    assert np.count_nonzero(outs["ours"][1] & OURS["NO_LIN_CORR"]) > 10
    np.testing.assert_array_equal(outs["foreign"][0], outs["ours"][0])
    np.testing.assert_array_equal(outs["foreign"][1], to_foreign(outs["ours"][1]))


def saturate(data, gdq, flags, k=1):
    """The saturation kernels chained as the step chains them, on one exposure (n, ny, nx)."""
    k0, dil, m0, l2, n1, multi = saturation_frame_params(RP, skip_reset=True)
    data, gdq = data[k0:], gdq[k0:]
    thresh = np.full(data.shape[1:], 30000, np.float32)
    check = np.ones(data.shape[1:], np.bool_)
    first = np.empty(data.shape[1:], np.int16)
    ksat.first_crossing(data, thresh, first)
    grown = np.empty_like(first)
    ksat.min_filter(first, k, grown)
    cand = np.empty_like(grown)
    ksat.dilution_candidates(data, gdq, thresh, check, grown, dil, flags, cand)
    out = np.empty(gdq.shape, np.uint32)
    ksat.apply_saturation(data, gdq, thresh, grown, np.pad(cand, k, constant_values=-1), k, m0, l2, n1, multi, 1,
                          flags, out)  # fmt: skip
    return out


def test_saturation_uses_the_flag_values_given():
    raw, *_ = ramps()
    data = np.ascontiguousarray(np.moveaxis(raw, -1, 0)) - 9000
    data[:, 6, 6] = -5  # A/D floor
    gdq = np.zeros(data.shape, np.uint32)
    gdq[2, 7, 7] = PASS
    ours = saturate(data, gdq, ksat.dq_flags(OURS["SATURATED"], OURS["DO_NOT_USE"], OURS["AD_FLOOR"]))
    foreign = saturate(data, gdq, ksat.dq_flags(FOREIGN["SATURATED"], FOREIGN["DO_NOT_USE"], FOREIGN["AD_FLOOR"]))
    for k in ("SATURATED", "AD_FLOOR"):
        assert np.count_nonzero(ours & OURS[k]) > 0, k
    np.testing.assert_array_equal(foreign, to_foreign(ours))


def test_ramp_fits_use_the_flag_values_given():
    """The PIT fit, the default fit and both fused linearity + dark + fit kernels."""
    raw, coefs, smin, smax, sref, lin_dq, gdq, gain, rn, dark = ramps()
    ny, nx, n = raw.shape
    pdq = np.zeros((ny, nx), np.uint32)
    pdq[0] = OURS["REFERENCE_PIXEL"]
    pdq[8, 8] = PASS
    tbar, tau, nf = kramp.resultant_times(RP, FT)
    u = 0.4 / 1.8 / 6.5**2
    t = kramp.ramp_tables(RP, FT, u, 1)
    tables = (t.weights, t.coef_poisson, t.coef_read, t.pair_start, t.pair_i, t.pair_j, t.pair_inv_dt, t.pair_poisson,
              t.pair_read)  # fmt: skip
    lin_in = (raw, coefs, smin, smax, sref)

    def run(m, conv):
        res = {}
        outs = [np.empty((ny, nx), d) for d in (np.float32, np.float32, np.float32, np.uint32)]
        resid = (raw - 9000).astype(np.float32)
        kramp.fit_ramps(resid, conv(gdq), conv(pdq), gain, rn, *tables, kramp.ramp_params(1), pit_flags(m), *outs)
        res["pit"] = outs
        outs = [np.empty((ny, nx), d) for d in (np.float32, np.float32, np.float32, np.uint32)]
        kgls.fit_ramps(resid, conv(gdq), conv(pdq), gain, rn, tbar, tau, nf.astype(float), kgls.gls_params(1),
                       gls_flags(m), *outs, np.zeros((0, 0, 0), np.uint32))  # fmt: skip
        res["gls"] = outs
        outs = [np.empty((ny, nx), d) for d in (np.float32, np.float32, np.float32, np.uint32)]
        kramp.linearize_dark_fit(*lin_in, conv(lin_dq), conv(gdq), True, False, lin_flags(m), dark, tbar, conv(pdq),
                                 gain, rn, *tables, kramp.ramp_params(1), pit_flags(m), *outs)  # fmt: skip
        res["pit_fused"] = outs
        outs = [np.empty((ny, nx), d) for d in (np.float32, np.float32, np.float32, np.uint32)]
        kgls.linearize_dark_fit(*lin_in, conv(lin_dq), conv(gdq), True, False, lin_flags(m), dark, conv(pdq), gain, rn,
                                tbar, tau, nf.astype(float), kgls.gls_params(1), gls_flags(m), *outs)  # fmt: skip
        res["gls_fused"] = outs
        return res

    ours, foreign = run(OURS, np.asarray), run(FOREIGN, to_foreign)
    for kind in ours:
        for a, b in zip(ours[kind][:3], foreign[kind][:3]):
            np.testing.assert_array_equal(b, a, err_msg=kind)
        dq = ours[kind][3]
        for k in ("SATURATED", "DO_NOT_USE", "JUMP_DET", "NO_GAIN_VALUE", "UNRELIABLE_ERROR"):
            assert np.count_nonzero(dq & OURS[k]) > 0, (kind, k)
        if "fused" in kind:
            assert np.count_nonzero(dq & OURS["NO_LIN_CORR"]) > 0, kind
        np.testing.assert_array_equal(foreign[kind][3], to_foreign(dq), err_msg=kind)
