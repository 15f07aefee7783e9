"""Classical nonlinearity correction with a per-pixel Legendre model.

The linearised signal is ``phi(S) = sum_l c_l P_l(z)`` with ``z = -1 + 2 (S - Smin) / (Smax - Smin)``.
Outside ``|z| <= 1`` each Legendre polynomial is continued linearly from its end point
(``P_l(+-1) = (+-1)^l``, ``P_l'(+-1) = (+-1)^(l+1) l (l+1) / 2``) and the pixel is flagged NO_LIN_CORR,
except on resultants that are already saturated. Pixels whose model is flagged (NO_LIN_CORR) and
reference pixels get ``S - Sref``. A model that cannot be evaluated (a non-finite coefficient, ``Smin``
or ``Smax``, or ``Smax <= Smin``) is treated as flagged and gets NO_LIN_CORR, as stcal does with NaN
coefficients; a non-finite ``Sref`` is taken as 0 (it only offsets the ramp) with NO_LIN_CORR. The
first resultant can be exempted (clipped to the model range and never flagged) when it is the reset read.

The DQ values come in ``flags`` (:func:`dq_flags`, :data:`F_NOLIN` ... indices); nothing here imports the package.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ._config import CACHE

# index of each DQ value in the ``flags`` vector
F_NOLIN, F_REF, F_SAT = range(3)


def dq_flags(no_lin_corr, reference_pixel, saturated) -> np.ndarray:
    """The ``flags`` vector of :func:`linearize_ramps` from the DQ bit values."""
    return np.array([no_lin_corr, reference_pixel, saturated], dtype=np.uint32)


# Bonnet recurrence P_{l+1} = A_l z P_l - B_l P_{l-1}, with the divisions done once here
_MAXORDER = 64
_REC_A = np.array([(2 * k + 1) / (k + 1) for k in range(_MAXORDER)])
_REC_B = np.array([k / (k + 1) for k in range(_MAXORDER)])
# slope of P_l at z = 1, for the linear continuation outside [-1, 1]
_END_SLOPE = np.array([k * (k + 1) / 2.0 for k in range(_MAXORDER + 1)])


@numba.njit(nogil=True, cache=CACHE)
def legendre_linearize(z, coefs):
    """``(phi, extrapolated)`` for one rescaled signal ``z`` and one pixel's coefficients."""
    nc = coefs.shape[0]
    if abs(z) > 1.0:  # each P_l continued along its tangent at the nearer end point
        sgn = 1.0 if z >= 0 else -1.0
        dz = abs(z) - 1.0
        phi = float(coefs[0])
        sign = 1.0
        for order in range(1, nc):
            sign *= sgn
            phi += coefs[order] * sign * (1.0 + _END_SLOPE[order] * dz)
        return phi, True
    phi = float(coefs[0])
    p_prev = 1.0
    p = z
    for order in range(1, nc):
        phi += coefs[order] * p
        p_next = _REC_A[order] * z * p - _REC_B[order] * p_prev
        p_prev = p
        p = p_next
    return phi, False


FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}  # no nnan/ninf: NaN and inf keep their meaning


@numba.njit(nogil=True, cache=CACHE, fastmath=FASTMATH)
def linearize_ramps(raw, coefs, smin, smax, sref, lin_dq, gdq, exempt_first, pit_sticky, flags, out, dq_out):
    """Linearise the resultants of a tile: ``raw`` (ny, nx, n) DN_raw to ``out`` DN_lin above ``Sref``.

    ``coefs`` (ny, nx, c); ``smin``, ``smax``, ``sref``, ``lin_dq`` (ny, nx); ``gdq`` (ny, nx, n) the group
    flags after saturation (saturated resultants are corrected but never flagged). ``dq_out`` (ny, nx)
    is ``lin_dq`` plus NO_LIN_CORR where an unsaturated resultant fell outside the model range
    (checked on reference pixels too, as the PIT does). ``pit_sticky`` reproduces ``gen_cal_image``
    1.0 bit for bit: once a resultant was flagged, every later resultant of the pixel gets
    ``S - Sref`` instead of the model (a kink in the ramp; off by default). ``flags`` from :func:`dq_flags`.
    """
    nolin, ref_bit, sat = flags[F_NOLIN], flags[F_REF], flags[F_SAT]
    ny, nx, n = raw.shape
    nc = coefs.shape[2]
    # per-pixel scratch, allocated once: the resultants of one pixel are evaluated together so the
    # Legendre recurrences of different resultants run side by side (vectorised over resultants)
    z = np.empty(n)
    zc = np.empty(n)
    p = np.empty(n)
    p_prev = np.empty(n)
    phi = np.empty(n)
    for y in range(ny):
        for x in range(nx):
            pflags = lin_dq[y, x]
            lo = float(smin[y, x])
            hi = float(smax[y, x])
            ref = float(sref[y, x])
            c = coefs[y, x]
            usable = hi > lo and math.isfinite(lo) and math.isfinite(hi)
            for k in range(nc):
                usable = usable and math.isfinite(c[k])
            if not math.isfinite(ref):
                ref = 0.0
                pflags |= nolin
            if not usable:
                pflags |= nolin
                lo, hi = 0.0, 1.0  # a harmless model range: the pixel gets S - Sref below
            direct = (pflags & (nolin | ref_bit)) != 0
            scale = 2.0 / (hi - lo)
            c0 = float(c[0])
            for g in range(n):
                zg = -1.0 + (float(raw[y, x, g]) - lo) * scale
                if g == 0 and exempt_first:
                    zg = min(max(zg, -1.0), 1.0)
                z[g] = zg
                zc[g] = min(max(zg, -1.0), 1.0)  # resultants outside the range are redone below
                p_prev[g] = 1.0
                p[g] = zc[g]
                phi[g] = c0
            for order in range(1, nc):
                co = float(c[order])
                a = _REC_A[order]
                b = _REC_B[order]
                for g in range(n):
                    phi[g] += co * p[g]
                    nxt = a * zc[g] * p[g] - b * p_prev[g]
                    p_prev[g] = p[g]
                    p[g] = nxt
            for g in range(n):
                zg = z[g]
                ex = abs(zg) > 1.0
                if ex:
                    phi[g], _ = legendre_linearize(zg, c)
                s = float(raw[y, x, g])
                uncorrected = direct or (pit_sticky and (pflags & nolin) != 0)
                out[y, x, g] = s - ref if uncorrected else phi[g]
                if ex and not (g == 0 and exempt_first) and (gdq[y, x, g] & sat) == 0:
                    pflags |= nolin
            dq_out[y, x] = pflags
