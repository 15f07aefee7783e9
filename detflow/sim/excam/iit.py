"""The II&T side of a simulation: the calibration file names of ``config_file.yaml``
(:data:`CALIB_FILES`), the nonlinearity table (given as a file or an array, or a unity table) and the text
of ``config_file.yaml`` itself."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from detflow.io.excam_l1 import check_nonlin_table, read_nonlin_table

from .config import _CFG, ExcamSimConfig

CALIB_FILES = {
    "dark_current_map": "calib/dark_current_map.fits",
    "fixed_pattern_noise": "calib/fixed_pattern_noise.fits",
    "EXCAM_clock_induced_charge": "calib/clock_induced_charge.fits",
    "flatfield_filepath": "calib/flat.fits",
    "badpix_filepath": "calib/badpix.fits",
}


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _config_yaml(cfg: ExcamSimConfig, calib: dict[str, str]) -> str:
    return f"""# detflow.sim.excam: simulated EXCAM data ({cfg.n_frames} frames, {cfg.geometry}, EXPTIME {cfg.exptime:g} s,
# EM gain {cfg.em_gain:g}, seed {cfg.seed}); the II&T L1 -> L2b config format, paths relative to this file

# Calibration paths
###################
flatfield_filepath: '{calib["flatfield_filepath"]}'
dark_current_map: '{calib["dark_current_map"]}'
fixed_pattern_noise: '{calib["fixed_pattern_noise"]}'
EXCAM_clock_induced_charge: '{calib["EXCAM_clock_induced_charge"]}'
badpix_filepath: '{calib["badpix_filepath"]}'
non_linearity_filepath: '{calib["non_linearity_filepath"]}'

# Detector parameters
#####################
fwc_em_e: {_fmt(cfg.fwc_em_e)}
fwc_pp_e: {_fmt(cfg.fwc_pp_e)}
bias_offset: 0
eperdn: {_fmt(cfg.eperdn)}

# png files creation
####################
generate_png_files: False
"""


def _unity_table() -> np.ndarray:
    table = np.ones((4, 6))
    table[0] = [np.nan, 1.0, 10.0, 100.0, 1000.0, 10000.0]
    table[1:, 0] = [0.0, 1000.0, 65535.0]
    return table


def _resolve_table(cfg: ExcamSimConfig):
    """``(table or None, source path or None)``."""
    t = cfg.nonlin_table
    if t is None:
        return None, None
    if isinstance(t, (str, os.PathLike)):
        return read_nonlin_table(t), Path(t)
    table = np.asarray(t, dtype=np.float64)
    check_nonlin_table(table, _CFG + ".nonlin_table")
    return table, None
