"""Simulated data sets with a ready-to-run job beside them (``detflow sim wfi|excam|cmos``).

Each function simulates one family's data into ``outdir`` (the family's own simulator, its truth
included) and writes ``<family>_job.yaml`` there, paths relative to it, so that ``detflow run
OUTDIR/<family>_job.yaml`` runs the pipeline on it. Nothing is overwritten: an existing job file or
simulator output is refused before any work.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..errors import OutputExistsError

# the PIT's example ramp and jump parameters (the simulator's gain and read noise)
RAMP_PARS = {"slope": 0.4, "gain": 1.8, "sigma_read": 6.5, "SthreshA": 5.5, "SthreshB": 4.5, "IthreshA": 1.0,
             "IthreshB": 1000.0}  # fmt: skip


def _job_path(outdir: Path, family: str) -> Path:
    path = Path(outdir).absolute() / f"{family}_job.yaml"
    if path.exists():
        raise OutputExistsError(path, "outdir", "a directory without an earlier simulation (sim never overwrites)",
                                "the job file exists")  # fmt: skip
    return path


def _write(path: Path, comment: str, job: dict) -> Path:
    path.write_text(f"# {comment}\n# paths are relative to this file; run it with: detflow run {path}\n"
                    + yaml.safe_dump(job, sort_keys=False))  # fmt: skip
    return path


def _rel(path: Path, outdir: Path) -> str:
    return Path(path).absolute().relative_to(outdir).as_posix()


def wfi_job(outdir, nside: int = 1024, exposures: int = 1, seed: int = 0) -> tuple[Path, dict]:
    """Roman WFI L1 exposures and their reference files (:func:`detflow.sim.wfi.simulate`), and a job
    running every gen_cal_image step the references allow. Returns the job path and what was written."""
    from .wfi import SimConfig, simulate

    outdir = Path(outdir).absolute()
    path = _job_path(outdir, "wfi")
    sim = simulate(outdir, SimConfig(nside=nside, n_exposures=exposures, seed=seed, write_job_yaml=False))
    job = {
        "pipeline": "roman_wfi",
        "input": "l1",
        "output": "l2.zarr",
        "caldir": {name: _rel(p, outdir) for name, p in sim.caldir.items()},
        "recipe": "full",
        "steps": {"ramp_fit": RAMP_PARS},
    }
    _write(path, f"detflow sim wfi: {exposures} simulated Roman WFI exposure(s) of {nside} x {nside} (seed {seed})",
           job)  # fmt: skip
    return path, {"L1 exposures": len(sim.l1_files), "reference files": len(sim.caldir), "truth": sim.truth_file}


def excam_job(outdir, frames: int = 10, em_gain: float = 100.0, exptime: float = 5.0,
              seed: int = 0) -> tuple[Path, dict]:  # fmt: skip
    """Roman Coronagraph EXCAM L1 frames with their calibration files (:func:`detflow.sim.excam.simulate_excam`),
    and a job with the II&T configuration's keys taking them L1 -> L2a -> L2b and combining them."""
    from .excam import ExcamSimConfig, simulate_excam

    outdir = Path(outdir).absolute()
    path = _job_path(outdir, "excam")
    sim = simulate_excam(outdir, ExcamSimConfig(n_frames=frames, em_gain=em_gain, exptime=exptime, seed=seed))
    config = yaml.safe_load(sim.config.read_text())  # the II&T config_file.yaml, paths relative to outdir
    job = {"pipeline": "roman_excam", "input": "l1", "output": "l2.zarr", **config}
    _write(path, f"detflow sim excam: {frames} simulated EXCAM frame(s), EM gain {em_gain:g}, EXPTIME {exptime:g} s "
           f"(seed {seed})", job)  # fmt: skip
    return path, {"L1 frames": len(sim.l1_files), "calibration files": len(sim.calib), "truth": sim.truth}


def cmos_job(outdir, size: int = 128, frames: int = 5, temps: tuple[float, ...] = (-10.0, 0.0, 10.0, 25.0),
             seed: int = 0) -> tuple[Path, dict]:  # fmt: skip
    """A CMOS characterisation campaign's raw test-section trees (:func:`detflow.sim.cmos.simulate_cmos_tree`),
    and a job ingesting them and building the bias, dark and flat models."""
    from .cmos import CmosSimConfig, simulate_cmos_tree

    outdir = Path(outdir).absolute()
    path = _job_path(outdir, "cmos")
    cfg = CmosSimConfig(height=size, width=size, n_bias=frames, n_dark=frames, n_flat=frames, temps=tuple(temps),
                        seed=seed)  # fmt: skip
    sim = simulate_cmos_tree(outdir, cfg)
    job = {
        "pipeline": "cmos",
        "stores": "stores",
        "ingest": {s.lower(): _rel(root, outdir) for s, root in sim.roots.items()} | {"data_scale": sim.data_scale},
        "output": "models.zarr",
        "models": ["bias", "dark", "flat"],
    }
    _write(path, f"detflow sim cmos: a simulated CMOS campaign of {size} x {size} frames at {len(temps)} temperatures "
           f"(seed {seed})", job)  # fmt: skip
    return path, {"raw frames": len(sim.frames), "sections": len(sim.roots), "truth": outdir / "truth.npz"}
