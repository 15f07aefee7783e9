"""``make demo`` / ``detflow demo``: simulate a Roman WFI exposure and calibrate it end to end."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .io.quicklook import wfi_quicklook
from .runtime.job import load_job
from .runtime.run import run
from .sim.wfi import SimConfig, simulate


def run_demo(outdir: Path, nside: int = 1024, workers: int | None = None, console=None) -> tuple[Path, Path]:
    outdir = Path(outdir)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    work = outdir / f"wfi_{nside}_{stamp}"
    t0 = time.perf_counter()
    products = simulate(work / "sim", SimConfig(nside=nside, seed=2026))
    if console is not None:
        console.print(f"simulated {nside}x{nside} L1 exposure + calibration files in "
                      f"{time.perf_counter() - t0:.1f} s: {products.l1_files[0]}")  # fmt: skip
    job = load_job(products.job_yaml)
    # the default recipe plus the reference-pixel correction, which removes the simulated 1/f noise
    recipe = ["dq_init", "saturation", "refpix", "linearity", "dark_current", "ramp_fit"]
    job = job.model_copy(update={"output": work / "l2.zarr", "recipe": recipe})
    if workers:
        job = job.model_copy(update={"cluster": job.cluster.model_copy(update={"n_workers": workers})})
    t0 = time.perf_counter()
    run(job, console=console)
    if console is not None:
        console.print(f"L1 -> L2 on the LocalCluster in {time.perf_counter() - t0:.1f} s")
    truth = np.load(products.truth_file)["slope_dn"]
    nb = 4
    png = wfi_quicklook(work / "l2.zarr", work / "l2_quicklook.png", truth_slope=truth[nb:-nb, nb:-nb])
    return work / "l2.zarr", png
