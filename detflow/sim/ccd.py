"""Simulated raw CCD frames with known truth, for the ``ccd`` pipeline's tests, notebook and benchmark.

A frame (``ny`` rows, ``nx + overscan`` columns, uint16 as FITS stores it: BITPIX 16, BZERO 32768) is
``bias_level + row_slope * row + bias_pattern + dark_rate * t + flat * sky * t`` plus read noise (and Poisson
noise of the signal), with the serial overscan at the right (bias level and row slope only). Headers carry
IMAGETYP, EXPTIME, FILTER, DATE-OBS, BIASSEC and TRIMSEC. The first science frame has a cosmic-ray hit (a
pixel at +``cosmic`` ADU) at ``cosmic_pixel`` (trimmed coordinates): a 3-sigma clip with the std finds one
outlier among ``n`` frames only for ``n >= 10`` (its distance is ``n / sqrt(n - 1)`` stds).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..io.store.atomic import atomic_write


@dataclass
class CcdSimConfig:
    ny: int = 64
    nx: int = 80
    overscan: int = 12
    n_bias: int = 5
    n_dark: int = 4
    n_flat: int = 3
    n_science: int = 6
    bias_level: float = 1000.0
    row_slope: float = 0.5  # ADU per row: the level the per-row overscan follows
    read_noise: float = 4.0  # ADU
    dark_rate: float = 0.2  # ADU/s
    dark_time: float = 100.0
    flat_time: float = 5.0
    flat_level: float = 800.0  # ADU/s
    science_time: float = 30.0
    sky: float = 20.0  # ADU/s
    cosmic: float = 20000.0
    cosmic_pixel: tuple[int, int] = (10, 12)
    seed: int = 1
    filter: str = "R"
    truth: dict = field(default_factory=dict)


def _flat(ny: int, nx: int) -> np.ndarray:
    y, x = np.mgrid[:ny, :nx]
    return 1.0 + 0.08 * np.sin(x / 7.0) * np.cos(y / 9.0) - 0.05 * ((x - nx / 2) ** 2 + (y - ny / 2) ** 2) / (nx * ny)


def simulate_ccd(out_dir: str | Path, cfg: CcdSimConfig | None = None) -> dict:
    """Write the frames into ``out_dir``; return ``{"files": [...], "truth": {...}}`` (truth on the trimmed
    grid: ``bias`` pattern with the row slope, ``dark_rate``, ``flat`` (mean 1), ``sky``)."""
    cfg = cfg or CcdSimConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    ny, nx, no = cfg.ny, cfg.nx, cfg.overscan
    rows = np.arange(ny, dtype=np.float64)[:, None]
    pattern = rng.normal(0, 3.0, (ny, nx))  # fixed bias structure (not in the overscan)
    flat = _flat(ny, nx)
    flat /= flat.mean()
    files = []

    def write(kind: str, i: int, t: float, signal: np.ndarray) -> None:
        img = np.empty((ny, nx + no))
        level = cfg.bias_level + cfg.row_slope * rows
        img[:, :nx] = level + pattern + rng.poisson(np.clip(signal, 0, None)) + rng.normal(0, cfg.read_noise, (ny, nx))
        img[:, nx:] = level + rng.normal(0, cfg.read_noise, (ny, no))
        header = fits.Header({"IMAGETYP": kind, "EXPTIME": t, "FILTER": cfg.filter,
                              "DATE-OBS": f"2024-03-01T0{i % 10}:00:00", "BIASSEC": f"[{nx + 1}:{nx + no},1:{ny}]",
                              "TRIMSEC": f"[1:{nx},1:{ny}]"})  # fmt: skip
        path = out / f"{kind.replace(' ', '_')}_{i:03d}.fits"
        hdu = fits.PrimaryHDU(np.clip(np.round(img), 0, 65535).astype(np.uint16), header)
        atomic_write(path, hdu.writeto)  # a file replaced whole (the simulator overwrites its own files)
        files.append(path)

    for i in range(cfg.n_bias):
        write("BIAS", i, 0.0, np.zeros((ny, nx)))
    for i in range(cfg.n_dark):
        write("DARK", i, cfg.dark_time, np.full((ny, nx), cfg.dark_rate * cfg.dark_time))
    for i in range(cfg.n_flat):
        t = cfg.flat_time
        write("FLAT", i, t, cfg.dark_rate * t + flat * cfg.flat_level * t)
    for i in range(cfg.n_science):
        t = cfg.science_time
        sig = cfg.dark_rate * t + flat * cfg.sky * t
        if i == 0:
            sig = sig.copy()
            sig[cfg.cosmic_pixel] += cfg.cosmic
        write("LIGHT", i, t, sig)
    truth = {"bias": pattern, "dark_rate": cfg.dark_rate, "flat": flat, "sky": cfg.sky}
    return {"files": files, "truth": truth}
