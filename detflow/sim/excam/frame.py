"""One simulated L1 frame from the truth and the frame's own random stream (1, k): Poisson charge, cosmic
rays (:func:`_cosmic_rays`), the gain register and its serial overflow, fixed-pattern and read noise, the
nonlinearity, the row bias, the ADC (:func:`_simulate_frame`)."""

from __future__ import annotations

import math

import numpy as np

from .config import _ADC_MAX, ExcamSimConfig
from .emccd_model import _serial_overflow, em_gain_register
from .truth import _Truth


def _cosmic_rays(cfg: ExcamSimConfig, rng: np.random.Generator, n: np.ndarray, mask: np.ndarray):
    """Add this frame's cosmic rays to the pre-gain charge ``n`` (image area) and mark them."""
    ny, nx = n.shape
    count = int(rng.poisson(cfg.cosmic_rate))
    rows, cols, charges = [], [], []
    for _ in range(count):
        r0, c0 = int(rng.integers(0, ny)), int(rng.integers(0, nx))
        length = int(rng.integers(1, 5))
        ang = rng.uniform(0, 2 * np.pi)
        total = cfg.cr_charge_e * float(np.exp(0.5 * rng.standard_normal()))
        w = np.full(length, 0.4 / (length - 1)) if length > 1 else np.ones(1)
        w[0] = 0.6 if length > 1 else 1.0
        for i in range(length):
            r, c = r0 + round(i * math.sin(ang)), c0 + round(i * math.cos(ang))
            if 0 <= r < ny and 0 <= c < nx:
                n[r, c] += round(total * w[i])
                mask[r, c] = True
        rows.append(r0)
        cols.append(c0)
        charges.append(total)
    return rows, cols, charges


def _simulate_frame(cfg: ExcamSimConfig, truth: _Truth, k: int):
    """One L1 frame: ``(uint16 frame, row bias DN, image-area cosmic-ray mask, hits)``."""
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(1, k)))
    geom = cfg.geom
    rs, cs = geom.image.slices
    shape = (geom.frame_rows, geom.frame_cols)
    row_bias = (cfg.bias_dn + truth.row_pattern + cfg.bias_frame_rms_dn * rng.standard_normal()
                + cfg.row_bias_frame_rms_dn * rng.standard_normal(geom.frame_rows))  # fmt: skip
    n = rng.poisson(truth.mean_e).astype(np.float64)
    crmask = np.zeros(cfg.image_shape, dtype=bool)
    hits = _cosmic_rays(cfg, rng, n, crmask)
    np.minimum(n, cfg.fwc_pp_e, out=n)
    electrons = np.zeros(shape)
    electrons[rs, cs] = em_gain_register(n, cfg.em_gain, rng)
    is_cr = np.zeros(shape, dtype=bool)
    is_cr[rs, cs] = crmask
    _serial_overflow(electrons.reshape(-1), float(cfg.fwc_em_e), cfg.tail_efold, cfg.cr_tail_frac * cfg.fwc_em_e,
                     is_cr.reshape(-1), max(cfg.read_noise_e, cfg.eperdn))  # fmt: skip
    electrons[rs, cs] += truth.fpn
    electrons += cfg.read_noise_e * rng.standard_normal(shape)
    dn = electrons / cfg.eperdn
    if truth.nonlin is not None:
        dn = truth.nonlin(dn)
    dn += row_bias[:, None]
    np.rint(dn, out=dn)
    np.clip(dn, 0.0, _ADC_MAX, out=dn)
    return dn.astype(np.uint16), row_bias, is_cr[rs, cs], hits
