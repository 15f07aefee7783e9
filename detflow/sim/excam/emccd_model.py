"""The EMCCD physics of the simulator (public: the tests and other simulators use them): the shutterless
readout smear (:func:`apply_smear`), the nonlinearity the L2a correction removes
(:func:`inverse_nonlinearity`), the gain register (:func:`em_gain_register`) and its saturation in serial
readout order with the trap tails (:func:`_serial_overflow`)."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from detflow.errors import DetflowInputError
from detflow.instruments import roman_excam
from detflow.io.excam_l1 import check_nonlin_table
from detflow.kernels._config import CACHE
from detflow.kernels.emccd import relgain_curve


def apply_smear(img: np.ndarray, exptime: float, row_time: float = roman_excam.ROW_READ_TIME) -> np.ndarray:
    """Shutterless-readout smear along columns (axis -2, readout order = increasing row):
    ``out[r] = img[r] + a * sum_{s <= r} img[s]``, ``a = row_time / exptime``.

    This is the exact inverse of :func:`detflow.kernels.emccd.desmear` (``s_r = (s_{r-1} + a y_r) /
    (1 + a)``, ``out = y - s``): with ``y = x + a cumsum(x)`` one has ``s_r = a cumsum(x)_r``.
    """
    img = np.asarray(img, dtype=np.float64)
    return img + (row_time / exptime) * np.cumsum(img, axis=-2)


class _InverseNonlin:
    """Exact inverse of ``f(y) = y * relgain(y)`` for one EM gain, ``relgain`` piecewise linear in DN
    (constant beyond the table, as :func:`detflow.kernels.emccd.relative_gain`). On each segment
    ``f`` is a quadratic ``s y^2 + b y``; its increasing root is ``2 x / (b + sqrt(b^2 + 4 s x))``
    (stable, and ``x / r`` where ``s = 0``)."""

    def __init__(self, table: np.ndarray, em_gain: float, source=None):
        gains, counts, rel = check_nonlin_table(table, source)
        r = relgain_curve(gains, counts, rel, em_gain)
        c = counts
        s = np.diff(r) / np.diff(c)
        fprime_lo = r[:-1] + s * c[:-1]  # f'(y) = r_i + s (2 y - c_i), linear on a segment
        fprime_hi = r[:-1] + s * (2 * c[1:] - c[:-1])
        if r[0] <= 0 or r[-1] <= 0 or (fprime_lo <= 0).any() or (fprime_hi <= 0).any():
            j = int(np.argmax((fprime_lo <= 0) | (fprime_hi <= 0)))
            raise DetflowInputError(source, f"nonlinearity table at EM gain {em_gain:g}, DN {c[j]:g}..{c[j + 1]:g}",
                                    "DN * relative gain increasing with DN (invertible)", "a decreasing segment")  # fmt: skip
        self.nodes = c * r  # f at the table DN values, increasing
        # segment 0: below the table (r0, slope 0); 1..n-1: table segments; n: above the table
        self.R = np.concatenate([[r[0]], r[:-1], [r[-1]]])
        self.S = np.concatenate([[0.0], s, [0.0]])
        self.C = np.concatenate([[c[0]], c[:-1], [c[-1]]])
        self.B = self.R - self.S * self.C

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        j = np.searchsorted(self.nodes, x, side="right")
        b, s = self.B[j], self.S[j]
        disc = np.maximum(b * b + 4.0 * s * x, 0.0)
        return 2.0 * x / (b + np.sqrt(disc))


def inverse_nonlinearity(dn_linear: np.ndarray, table: np.ndarray, em_gain: float) -> np.ndarray:
    """Raw bias-subtracted DN ``y`` with ``y * relative_gain(y) = dn_linear`` for the relative-gain
    ``table`` (row 0 = EM gains, column 0 = DN) at ``em_gain``: the nonlinearity that the L2a
    correction removes."""
    return _InverseNonlin(np.asarray(table, dtype=np.float64), em_gain)(dn_linear)


def em_gain_register(n: np.ndarray, em_gain: float, rng: np.random.Generator) -> np.ndarray:
    """Electrons out of the gain register for ``n`` electrons in: ``Gamma(shape=n, scale=g)`` where
    ``n > 0`` (0 stays 0), ``n`` itself at ``g = 1``. No saturation (see :func:`simulate_excam`)."""
    n = np.asarray(n, dtype=np.float64)
    if em_gain == 1:
        return n.copy()
    out = np.zeros_like(n)
    nz = n > 0
    out[nz] = rng.gamma(n[nz], em_gain)
    return out


@njit(nogil=True, cache=CACHE)
def _serial_overflow(q, fwc, efold, trapped, is_cr, thresh):
    """Gain-register saturation in serial readout order (``q`` flat, electrons, modified in place):
    charge above ``fwc`` moves on to the next pixel (the plateau); after each saturated run a trap
    tail ``trapped (1 - d) d^(k-1)``, ``d = exp(-1/efold)``, is added (capped at ``fwc``). ``is_cr``
    (in: cosmic-ray pixels) is extended to the plateau and to tail pixels receiving >= ``thresh`` of
    runs that a cosmic ray started or joined."""
    n = q.size
    decay = math.exp(-1.0 / efold)
    first = trapped * (1.0 - decay)
    carry = 0.0
    carry_cr = False
    run = False
    run_cr = False
    tail = 0.0
    tail_cr = False
    for i in range(n):
        v = q[i] + carry
        cr = is_cr[i] or (carry > 0.0 and carry_cr)
        carry = 0.0
        if v > fwc:
            carry = v - fwc
            v = fwc
            run_cr = (run_cr or cr) if run else cr
            carry_cr = run_cr
            run = True
            tail = 0.0
        else:
            if run:
                tail = first
                tail_cr = run_cr
                run = False
            if tail > 0.0:
                if tail_cr and tail >= thresh:
                    cr = True
                v = min(v + tail, fwc)
                tail *= decay
                if tail < 1e-3:
                    tail = 0.0
        q[i] = v
        is_cr[i] = cr
