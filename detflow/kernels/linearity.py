"""Classical nonlinearity correction with a per-pixel Legendre model.

The linearised signal is ``phi(S) = sum_l c_l P_l(z)`` with ``z = -1 + 2 (S - Smin) / (Smax - Smin)``.
Outside ``|z| <= 1`` each Legendre polynomial is continued linearly from its end point
(``P_l(+-1) = (+-1)^l``, ``P_l'(+-1) = (+-1)^(l+1) l (l+1) / 2``) and the pixel is flagged NO_LIN_CORR,
except on resultants that are already saturated. Pixels whose model is flagged (NO_LIN_CORR) and
reference pixels get ``S - Sref``. The first resultant can be exempted (clipped to the model range and
never flagged) when it is the reset read.
"""

from __future__ import annotations

import numba
import numpy as np

from ..schema import DQ

_NOLIN = np.uint32(DQ.NO_LIN_CORR)
_REF = np.uint32(DQ.REFERENCE_PIXEL)
_SAT = np.uint32(DQ.SATURATED)


@numba.njit(nogil=True, cache=False)
def legendre_linearize(z, coefs):
    """``(phi, extrapolated)`` for one rescaled signal ``z`` and one pixel's coefficients."""
    ex = abs(z) > 1.0
    phi = float(coefs[0])
    p_prev = 1.0
    p = z
    sgn = 1.0 if z >= 0 else -1.0
    for order in range(1, coefs.shape[0]):
        if ex:
            term = sgn**order * (1.0 + order * (order + 1) / 2.0 * (abs(z) - 1.0))
        else:
            term = p
        phi += coefs[order] * term
        p_next = ((2 * order + 1) * z * p - order * p_prev) / (order + 1)
        p_prev = p
        p = p_next
    return phi, ex


@numba.njit(nogil=True, cache=False)
def linearize_ramps(raw, coefs, smin, smax, sref, lin_dq, gdq, exempt_first, pit_sticky, out, dq_out):
    """Linearise the resultants of a tile: ``raw`` (ny, nx, n) DN_raw to ``out`` DN_lin above ``Sref``.

    ``coefs`` (ny, nx, c); ``smin``, ``smax``, ``sref``, ``lin_dq`` (ny, nx); ``gdq`` (ny, nx, n) the group
    flags after saturation (saturated resultants are corrected but never flagged). ``dq_out`` (ny, nx)
    is ``lin_dq`` plus NO_LIN_CORR where an unsaturated resultant fell outside the model range
    (checked on reference pixels too, as the PIT does). ``pit_sticky`` reproduces ``gen_cal_image``
    1.0 bit for bit: once a resultant was flagged, every later resultant of the pixel gets
    ``S - Sref`` instead of the model (a kink in the ramp; off by default).
    """
    ny, nx, n = raw.shape
    for y in range(ny):
        for x in range(nx):
            flags = lin_dq[y, x]
            direct = (flags & (_NOLIN | _REF)) != 0
            lo = float(smin[y, x])
            scale = 2.0 / (float(smax[y, x]) - lo)
            ref = float(sref[y, x])
            c = coefs[y, x]
            for g in range(n):
                s = float(raw[y, x, g])
                z = -1.0 + (s - lo) * scale
                first = g == 0 and exempt_first
                if first:
                    z = min(max(z, -1.0), 1.0)
                phi, ex = legendre_linearize(z, c)
                uncorrected = direct or (pit_sticky and (flags & _NOLIN) != 0)
                out[y, x, g] = s - ref if uncorrected else phi
                if ex and not first and (gdq[y, x, g] & _SAT) == 0:
                    flags |= _NOLIN
            dq_out[y, x] = flags
