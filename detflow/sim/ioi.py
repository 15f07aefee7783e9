"""Simulated IO:I read sequences (one FITS file per read, LT names and headers), with the truth beside them.

Each run is a dither pattern of exposures (``dithers`` positions on a 3x3 grid of ``dither_step`` pixels);
each exposure a read sequence: ``cds`` (pedestal and signal read), ``fowler`` (``pairs`` pedestal reads,
SEQNUM_M 1, then ``pairs`` signal reads, SEQNUM_M 2, paired by SEQNUM_N) or ``ramp`` (``nreads`` reads,
SEQNUM_M 1). A read ``k`` at time ``t`` (INTTIME, s since the reset) is, in DN::

    pedestal(y, x) + A[out, parity] + B[out, parity] * (y - ny/2) / ny + f(y) + NL(S(y, x) t) + read noise

``pedestal``: the bias pattern plus the exposure's reset (kTC) noise; ``A``: per-output and per-column-parity
offsets that drift from read to read; ``B``: the level's change over the readout of a read (a line along
rows, per output and parity); ``f``: 1/f noise along the rows, common to every output; ``S``: the signal
rate in DN/s (sky, a dithered star field, an extended source, hot pixels; dead pixels none) times the flat
(pixel response: ``flat_sigma``, ``flat_gradient``) and ``NL(s) = s - beta s^2`` the nonlinearity (of the
electrons collected, Poisson increments between reads, over the gain). Reference pixels (``ref`` rows and
columns on each side) see all but the signal. Files are BITPIX 16 (BZERO 32768), as the instrument writes
them. ``truth.npz`` beside the files
holds the components (``A``, ``B``, ``f`` per exposure and read, the rate map of each exposure on the
active region before the flat, ``flat``, ``beta``, ``bad``, the dither offsets and the read times).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..instruments.hxrg_ground import ASICGAIN_E_PER_DN
from ..io.store.atomic import atomic_write

GRID = [(0, 0), (1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1)]  # a 9-point dither


@dataclass
class IoiSimConfig:
    size: int = 256  # pixels on a side, reference pixels included
    ref: int = 4
    noutputs: int = 4
    runs: int = 1
    dithers: int = 4
    read_mode: str = "fowler"  # cds | fowler | ramp
    pairs: int = 2  # Fowler pairs
    nreads: int = 5  # ramp reads
    exptime: float = 10.0  # s between the pedestal and signal reads
    read_time: float = 1.4  # s per read
    asicgain: int = 10
    bias_level: float = 8000.0
    bias_sigma: float = 40.0
    ktc: float = 15.0
    read_noise: float = 6.0
    offset_sigma: float = 150.0  # per output and parity
    drift_sigma: float = 15.0  # read-to-read change of the offsets
    slope_sigma: float = 25.0  # DN from bottom to top within a read
    one_over_f: float = 4.0  # rms of the 1/f noise along the rows (DN)
    sky: float = 40.0  # DN/s
    n_stars: int = 25
    star_flux: tuple[float, float] = (2e3, 4e4)  # DN/s, summed over the PSF
    psf_sigma: float = 1.4
    extended: float = 30.0  # DN/s at the centre of the extended source
    beta: float = 4e-6  # 1/DN: NL(s) = s - beta s^2
    bad_fraction: float = 0.002
    dither_step: float = 12.0
    date: str = "20150227"
    inst: str = "i"
    poisson: bool = True  # photon noise (False: the signal is rate * t exactly)
    flat_sigma: float = 0.0  # pixel-to-pixel response rms (the flat: 1 + this * N(0, 1), times the gradient)
    flat_gradient: float = 0.0  # the response's change across the columns (a line, mean 1)
    seed: int = 0


def _reads(cfg: IoiSimConfig) -> list[tuple[int, int, float]]:
    """(SEQNUM_M, SEQNUM_N, INTTIME) of an exposure's reads."""
    tr = cfg.read_time
    if cfg.read_mode == "cds":
        return [(1, 1, tr), (2, 1, tr + cfg.exptime)]
    if cfg.read_mode == "fowler":
        ped = [(1, n + 1, (n + 1) * tr) for n in range(cfg.pairs)]
        return ped + [(2, n + 1, (n + 1) * tr + cfg.exptime) for n in range(cfg.pairs)]
    if cfg.read_mode == "ramp":
        return [(1, n + 1, tr + n * cfg.exptime / max(1, cfg.nreads - 1)) for n in range(cfg.nreads)]
    raise ValueError(f"read_mode cds, fowler or ramp, got {cfg.read_mode!r}")


def one_over_f(rng: np.random.Generator, n: int, rms: float) -> np.ndarray:
    """A series of ``n`` values with a 1/f power spectrum, zero mean, ``rms``."""
    if rms <= 0:
        return np.zeros(n)
    f = np.fft.rfftfreq(2 * n)
    amp = np.zeros_like(f)
    amp[1:] = 1 / np.sqrt(f[1:])
    series = np.fft.irfft(amp * (rng.normal(size=f.size) + 1j * rng.normal(size=f.size)))[:n]
    series -= series.mean()
    return series * rms / series.std()


def scene(cfg: IoiSimConfig, rng: np.random.Generator) -> dict:
    """The sky in detector coordinates of the undithered pointing (active region): stars, extended source."""
    na = cfg.size - 2 * cfg.ref
    margin = 3 * cfg.dither_step + 6
    stars = np.column_stack([rng.uniform(margin, na - margin, (cfg.n_stars, 2)),
                             np.exp(rng.uniform(*np.log(cfg.star_flux), cfg.n_stars))])  # fmt: skip
    return {"stars": stars, "center": (na / 2, na / 2), "ext_sigma": na / 10}


def rate_map(cfg: IoiSimConfig, sc: dict, offset: tuple[float, float], bad: np.ndarray, hot: np.ndarray):
    """The signal rate (DN/s) on the active region for a pointing shifted by ``offset`` (dy, dx) pixels."""
    na = cfg.size - 2 * cfg.ref
    y, x = np.mgrid[:na, :na].astype(np.float64)
    dy, dx = offset
    cy, cx = sc["center"]
    rate = cfg.sky + cfg.extended * np.exp(-((y - cy - dy) ** 2 + (x - cx - dx) ** 2) / (2 * sc["ext_sigma"] ** 2))
    s = cfg.psf_sigma
    for sy, sx, flux in sc["stars"]:
        py, px = sy + dy, sx + dx
        iy0, iy1 = max(0, int(py - 6 * s)), min(na, int(py + 6 * s) + 2)
        ix0, ix1 = max(0, int(px - 6 * s)), min(na, int(px + 6 * s) + 2)
        yy, xx = y[iy0:iy1, ix0:ix1], x[iy0:iy1, ix0:ix1]
        rate[iy0:iy1, ix0:ix1] += flux / (2 * np.pi * s * s) * np.exp(-((yy - py) ** 2 + (xx - px) ** 2) / (2 * s * s))
    rate = np.where(bad, 0.0, rate) + hot
    return rate


def _header(
    cfg: IoiSimConfig, run: int, dither: int, m: int, n: int, t: float, start: dt.datetime, offset
) -> fits.Header:
    when = start + dt.timedelta(seconds=t)
    jd = 2440587.5 + when.timestamp() / 86400.0
    c = cfg.size / 2 + 0.5
    h = fits.Header()
    h.update({"NOUTPUTS": cfg.noutputs, "INTTIME": t, "SEQNUM_R": run, "SEQNUM_M": m, "SEQNUM_N": n,
              "SEQNNAME": f"R{run}_M{m}_N{n}", "ACQTIME": jd, "ACQTIME1": when.strftime("%Y-%m-%d-%H:%M:%S.%f"),
              "ASICGAIN": cfg.asicgain, "EXPTIME": cfg.exptime, "OBJECT": "SIMFIELD", "FILTER1": "H",
              "RA": "10:00:00.00", "DEC": "+20:00:00.0", "DATE-OBS": when.strftime("%Y-%m-%dT%H:%M:%S.%f"),
              "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 150.0, "CRVAL2": 20.0,
              "CRPIX1": c + offset[1], "CRPIX2": c + offset[0], "CD1_1": -0.18 / 3600, "CD1_2": 0.0,
              "CD2_1": 0.0, "CD2_2": 0.18 / 3600})  # fmt: skip
    return h


def _savez(path: Path, arrays: dict) -> None:
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def simulate_ioi(out_dir: str | Path, cfg: IoiSimConfig | None = None) -> dict:
    """Write the reads into ``out_dir`` (and ``truth.npz``); return ``{"files": [...], "truth": {...}}``."""
    cfg = cfg or IoiSimConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    n, r, no = cfg.size, cfg.ref, cfg.noutputs
    na = n - 2 * r
    width = n // no
    cols = np.arange(n)
    out_of, par_of = cols // width, cols % 2
    rows = (np.arange(n)[:, None] - n / 2) / n
    bias = cfg.bias_level + rng.normal(0, cfg.bias_sigma, (n, n))
    bad = rng.random((na, na)) < cfg.bad_fraction
    hot = np.where(rng.random((na, na)) < cfg.bad_fraction / 2, rng.uniform(50, 500, (na, na)), 0.0)
    beta = cfg.beta * (1 + 0.1 * rng.standard_normal((na, na)))
    sc = scene(cfg, rng)
    frng = np.random.default_rng(cfg.seed + 1)  # its own stream: a flat of 1 leaves every other draw as it was
    flat = (1 + cfg.flat_sigma * frng.standard_normal((na, na))) * (1 + cfg.flat_gradient * (np.arange(na) / na - 0.5))
    gain = ASICGAIN_E_PER_DN[cfg.asicgain]
    reads = _reads(cfg)
    offsets = [tuple(cfg.dither_step * np.array(GRID[d % len(GRID)], float)) for d in range(cfg.dithers)]
    nexp = cfg.runs * cfg.dithers
    A = np.zeros((nexp, len(reads), no, 2))
    B = np.zeros_like(A)
    F = np.zeros((nexp, len(reads), n))
    rates = np.zeros((nexp, na, na))
    start = dt.datetime(int(cfg.date[:4]), int(cfg.date[4:6]), int(cfg.date[6:]), 20, 0, 0, tzinfo=dt.UTC)
    files, e = [], 0
    for run in range(1, cfg.runs + 1):
        base = rng.normal(0, cfg.offset_sigma, (no, 2))
        for d in range(1, cfg.dithers + 1):
            rates[e] = rate_map(cfg, sc, offsets[d - 1], bad, hot)
            rate = rates[e] * flat
            pedestal = bias + rng.normal(0, cfg.ktc, (n, n))
            t0 = start + dt.timedelta(seconds=e * (cfg.exptime + 10 * cfg.read_time))
            acc, t_prev = np.zeros((na, na)), 0.0  # collected electrons (Poisson increments between reads)
            for k, (m, seq_n, t) in enumerate(reads):
                acc += rng.poisson(rate * gain * (t - t_prev)) if cfg.poisson else rate * gain * (t - t_prev)
                t_prev = t
                A[e, k] = base + rng.normal(0, cfg.drift_sigma, (no, 2))
                B[e, k] = rng.normal(0, cfg.slope_sigma, (no, 2))
                F[e, k] = one_over_f(rng, n, cfg.one_over_f)
                img = pedestal + A[e, k][out_of, par_of] + B[e, k][out_of, par_of] * rows + F[e, k][:, None]
                ideal = acc / gain
                img[r : n - r, r : n - r] += ideal - beta * ideal**2
                img += rng.normal(0, cfg.read_noise, (n, n))
                hdu = fits.PrimaryHDU(np.clip(np.round(img), 0, 65535).astype(np.uint16),
                                      _header(cfg, run, d, m, seq_n, t, t0, offsets[d - 1]))  # fmt: skip
                path = out / f"{cfg.inst}_e_{cfg.date}_{run}_{d}_{k + 1}_0.fits"
                atomic_write(path, hdu.writeto)
                files.append(path)
            e += 1
    truth = {"A": A, "B": B, "F": F, "rate": rates, "beta": beta, "bad": bad, "hot": hot, "bias": bias,
             "offsets": np.array(offsets), "inttime": np.array([t for _, _, t in reads]),
             "seqnum_m": np.array([m for m, _, _ in reads]), "stars": sc["stars"],
             "gain": ASICGAIN_E_PER_DN[cfg.asicgain], "flat": flat}  # fmt: skip
    atomic_write(out / "truth.npz", lambda p: _savez(p, truth))
    return {"files": files, "truth": truth}
