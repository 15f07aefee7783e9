"""Ramp-fit kernel throughput on one core (numba, no dask), in pixel-resultants per second: the PIT kernel
(``ramp_fit: {pit_compat: true}``, :mod:`detflow.kernels.ramp`) against the default fit
(:mod:`detflow.kernels.ramp_gls`), with and without jump detection, on 4096 x 512 pixels of 8 resultants
(the first excluded), signals 0-50 DN/s, read noise 6 DN, 1 % of pixels with a 500 DN jump.

    PYTHONPATH=. python bench/bench_ramp_kernel.py
"""

from __future__ import annotations

import time

import numpy as np

from detflow.kernels import ramp as kramp
from detflow.kernels import ramp_gls as kgls
from detflow.schema import DQ

RP = [[1], [2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [16, 17, 18, 19, 20, 21, 22, 23],
      [24, 25, 26, 27, 28, 29, 30, 31], [32, 33, 34, 35, 36, 37, 38, 39]]  # fmt: skip


def _best(fn, args, repeat=4) -> float:
    best = 1e9
    for _ in range(repeat):  # the first call compiles
        t0 = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best


def throughput(npix=4096 * 512) -> dict[str, float]:
    n = len(RP)
    rng = np.random.default_rng(0)
    tb, tau, nf = kramp.resultant_times(RP, 3.04)
    ny, nx = npix // 4096, 4096
    R = 100 + rng.uniform(0, 50, (ny, nx))[..., None] * tb + rng.normal(0, 6, (ny, nx, n))
    R += np.where(rng.random((ny, nx))[..., None] < 0.01, 500.0 * (np.arange(n) >= 4), 0.0)
    R = R.astype(np.float32)
    gdq = np.zeros((ny, nx, n), np.uint32)
    gdq[..., 0] = DQ.DO_NOT_USE
    maps = [np.zeros((ny, nx), np.uint32), np.full((ny, nx), 1.8, np.float32), np.full((ny, nx), 6.5, np.float32)]
    outs = [np.empty((ny, nx), d) for d in (np.float32, np.float32, np.float32, np.uint32)]
    t = kramp.ramp_tables(RP, 3.04, 0.4 / 1.8 / 6.5**2, 1)
    tables = (t.weights, t.coef_poisson, t.coef_read, t.pair_start, t.pair_i, t.pair_j, t.pair_inv_dt, t.pair_poisson,
              t.pair_read)  # fmt: skip
    flags = kgls.dq_flags(DQ.SATURATED, DQ.DO_NOT_USE, DQ.JUMP_DET, DQ.REFERENCE_PIXEL, DQ.NO_GAIN_VALUE,
                          DQ.UNRELIABLE_ERROR, DQ.UNRELIABLE_SLOPE)  # fmt: skip
    pit_flags = kramp.dq_flags(DQ.SATURATED, DQ.DO_NOT_USE, DQ.JUMP_DET, DQ.REFERENCE_PIXEL, DQ.NO_GAIN_VALUE,
                               DQ.UNRELIABLE_ERROR)  # fmt: skip
    res = {}
    for detect in (True, False):
        pit = (R, gdq, *maps, *tables, kramp.ramp_params(1, detect=detect), pit_flags, *outs)
        gls = (R, gdq, *maps, tb, tau, nf.astype(float), kgls.gls_params(1, detect), flags, *outs,
               np.zeros((0, 0, 0), np.uint32))  # fmt: skip
        tag = "jumps" if detect else "no_jumps"
        res[f"pit_{tag}"] = npix * n / _best(kramp.fit_ramps, pit)
        res[f"gls_{tag}"] = npix * n / _best(kgls.fit_ramps, gls)
    return res


if __name__ == "__main__":
    for k, v in throughput().items():
        print(f"{k:16s} {v:.3g} pixel-resultants/s")
