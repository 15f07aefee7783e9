"""The Roman Coronagraph EXCAM job (``pipeline: roman_excam``): a data set L1 -> L2a -> L2b and its combines.

The II&T ``config_file.yaml`` is read as it is. Its detector parameters (``fwc_em_e``, ``fwc_pp_e``,
``eperdn``, ``bias_offset``) and calibration paths are keys of the job; its cosmic-ray parameters (and
corgidrp's newer ``cosm_thresh``, ``median_filter_mode``...) are step parameters written at the top level:
:data:`STEP_ALIASES` moves them into ``steps`` (``sat_thresh: 0.6`` is ``steps.excam_cosmics.sat_thresh``),
so each is declared once, by its step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import pydantic
from pydantic import Field

from ..io.exporters import _excam_names, check_excam_exports
from .base import FramesJob, Model

EXCAM_CAL_KEYS = ("non_linearity_filepath", "dark_current_map", "fixed_pattern_noise", "EXCAM_clock_induced_charge",
                  "flatfield_filepath", "badpix_filepath", "master_dark_filepath")  # fmt: skip
EXCAM_COSMIC_KEYS = ("sat_thresh", "plat_thresh", "cosm_filter", "cosm_box", "cosm_tail", "cosm_tail_auto_factor",
                     "cosm_thresh", "median_filter_mode", "median_filter_size", "median_filter_histogram_nbins",
                     "skip_coronagraph_iwa", "coronagraph_iwa_radius", "pct_oversat_lim")  # fmt: skip
# top-level key -> (step, parameter): the II&T spellings of step parameters
STEP_ALIASES: dict[str, tuple[str, str]] = {
    **{k: ("excam_cosmics", k) for k in EXCAM_COSMIC_KEYS},
    "desmear": ("excam_desmear", "apply"),
}


class PhotonCountConfig(Model):
    read_noise: float = Field(..., gt=0, description="read noise (e-) at the gain register output")
    t_factor: float = Field(5.0, gt=0, description="threshold in units of the read noise")
    niter: int = Field(2, ge=1, description="Newton iterations of the coincidence-loss correction")


class ExcamJob(FramesJob):
    """A Roman Coronagraph EXCAM data set, L1 -> L2a -> L2b and its combines (the II&T keys as they are; the
    cosmic-ray keys and ``desmear`` at the top level are step parameters: :data:`STEP_ALIASES`)."""

    PATH_KEYS: ClassVar[tuple[str, ...]] = ("output", "input", "export_dir", *EXCAM_CAL_KEYS)
    STEP_FAMILY: ClassVar[str] = "roman_excam"
    ALIAS_KEYS: ClassVar[tuple[str, ...]] = tuple(STEP_ALIASES)

    pipeline: Literal["roman_excam"] = "roman_excam"
    input: str | list[str] = Field(..., description="L1 FITS file, directory, glob, or a list of these")
    output: Path = Field(..., description="output zarr store (.zarr)")
    # II&T detector parameters
    fwc_em_e: float = Field(100000.0, gt=0, description="gain-register full well (e-)")
    fwc_pp_e: float = Field(66850.0, gt=0, description="image-pixel full well (e-)")
    eperdn: float = Field(9.55, gt=0, description="k gain (e-/DN)")
    bias_offset: float = Field(0.0, description="subtracted from the prescan bias (DN)")
    generate_png_files: bool = Field(False, description="write PNG quicklooks beside the FITS exports")
    # II&T calibration paths (and a traditional master dark)
    non_linearity_filepath: Path | None = None
    dark_current_map: Path | None = None
    fixed_pattern_noise: Path | None = None
    EXCAM_clock_induced_charge: Path | None = None
    flatfield_filepath: Path | None = None
    badpix_filepath: Path | None = None
    master_dark_filepath: Path | None = Field(None, description="a master dark in electrons (used before the maps)")
    # detflow
    group: bool = Field(False, description="split mixed EXPTIME/EM gain data sets into one product set per "
                        "group (l2a/<key>, ...) instead of refusing them")  # fmt: skip
    combine: list[Literal["l2a", "l2b"]] = Field(["l2b"], description="levels whose mean and median combines are "
                                                 "written (l2b: mean_comb, median_comb; l2a: l2a_mean_comb, ...)")  # fmt: skip
    frames_per_task: int = Field(
        8,
        ge=1,
        description="frames per L1 -> L2b task (each whole chain in memory: about 50-100 MB per frame at its peak)",
    )
    frames_per_shard: int | None = Field(None, ge=1, description="frames per zarr shard of l2a/l2b (default: "
                                         "the multiple of frames_per_task nearest 32): the combines read one "
                                         "piece of every shard per tile")  # fmt: skip
    combine_task_mb: float = Field(256, ge=1, description="target memory of one combine task (MB): sets the tile")
    photon_count: PhotonCountConfig | None = Field(None, description="photon-counted mean of each (gain, time) group")
    noise_maps: bool = Field(False, description="fit FPN, CIC and dark-current maps from a dark data set of >= 4 "
                             "(EM gain, exposure time) groups (implies group: true)")  # fmt: skip
    export_dir: Path | None = Field(None, description="also write the II&T FITS file set here")
    export_prefix: str | None = Field(None, description="name of the data-set (combined) FITS files; null: after "
                                      "the L1 file names, as II&T names them (detflow.io.exporters."
                                      "excam_dataset_name)")  # fmt: skip
    steps: dict[str, dict[str, Any]] = Field(default_factory=dict, description="parameters per step (excam_*); the "
                                             "cosmic-ray keys and desmear may also be written at the top level")  # fmt: skip

    @pydantic.model_validator(mode="before")
    @classmethod
    def _step_aliases(cls, data: Any) -> Any:
        """Top-level II&T step keys into ``steps`` (the same key in both places is refused)."""
        if not isinstance(data, dict) or not set(data) & set(STEP_ALIASES):
            return data
        data = dict(data)
        steps = {k: dict(v) if isinstance(v, dict) else v for k, v in (data.get("steps") or {}).items()}
        for key in [k for k in data if k in STEP_ALIASES]:
            step, param = STEP_ALIASES[key]
            block = steps.setdefault(step, {})
            if not isinstance(block, dict):
                continue  # the model reports the wrong type
            if param in block:
                raise ValueError(f"{key} once, at the top level or as steps.{step}.{param}, got both")
            block[param] = data.pop(key)
        data["steps"] = steps
        return data

    @pydantic.field_validator("output")
    @classmethod
    def _output_suffix(cls, v: Path) -> Path:
        if v.suffix != ".zarr":
            raise ValueError(f"a .zarr store, got {v.name!r}")
        return v

    def calibration_paths(self) -> dict[str, Path | None]:
        return {k: getattr(self, k) for k in EXCAM_CAL_KEYS}

    def step_params(self) -> dict[str, dict]:
        """Every step's parameters: the II&T detector keys where they belong, then ``steps`` on top."""
        base = {
            "excam_bias": {"bias_offset": self.bias_offset},
            "excam_cosmics": {"fwc_em_e": self.fwc_em_e, "fwc_pp_e": self.fwc_pp_e, "eperdn": self.eperdn},
            "excam_electrons": {"eperdn": self.eperdn},
        }
        for name, extra in self.steps.items():
            base[name] = {**base.get(name, {}), **extra}
        return base

    def export_paths(self) -> list[Path]:
        if self.export_dir is None:
            return []
        check_excam_exports(self)
        return [Path(self.export_dir) / name for name in _excam_names(self)]
