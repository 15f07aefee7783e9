"""The plain CCD/CMOS imager job (``pipeline: ccd``): FITS frames -> overscan, trim -> masters -> calibrated
science frames -> their sigma-clipped combine.

The keys are those of every frames job (:class:`~detflow.instruments.base.FramesJob`: input, output,
on_error, steps...) and this instrument's own: ``overscan`` and ``trim`` (the parameters of the steps
``ccd_overscan`` and ``ccd_trim``, declared once, by the steps), the master files, the image HDU, the
stored data type and the frames per task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import pydantic
from pydantic import Field

from ..steps.ccd import OverscanParams, TrimParams
from .base import FramesJob

MASTER_KEYS = ("master_bias", "master_dark", "master_flat")


class CcdJob(FramesJob):
    """Plain CCD/CMOS frames (bias, dark, flat and science by IMAGETYP), ccdproc's reduction on the engine."""

    PATH_KEYS: ClassVar[tuple[str, ...]] = ("output", "input", *MASTER_KEYS)
    STEP_FAMILY: ClassVar[str] = "ccd"

    pipeline: Literal["ccd"] = "ccd"
    input: str | list[str] = Field(..., description="FITS frames: a file, directory, glob, or a list of these")
    output: Path = Field(..., description="output zarr store (.zarr)")
    hdu: int | str | None = Field(None, description="the image HDU (index or EXTNAME) when a file has several")
    overscan: OverscanParams | None = Field(None, description="subtract the overscan: {section (default BIASSEC), "
                                            "method: median|mean, model: per_row|constant}; null: none")  # fmt: skip
    trim: TrimParams | str | bool = Field(True, description="a FITS section [x0:x1,y0:y1] to keep; true: TRIMSEC, "
                                          "else DATASEC, if the frames have one; false: no trim")  # fmt: skip
    master_bias: Path | None = Field(None, description="a master bias FITS file (else built from the bias frames)")
    master_dark: Path | None = Field(None, description="a master dark FITS file, bias subtracted, with its EXPTIME "
                                     "(else built from the dark frames)")  # fmt: skip
    master_flat: Path | None = Field(None, description="a master flat FITS file (else built from the flat frames)")
    dtype: Literal["float32", "float64"] = Field("float32", description="stored data type of the frames and combines")
    frames_per_task: int = Field(8, ge=1, description="frames per task and per zarr shard of the per-frame groups")
    combine_task_mb: float = Field(128, ge=1, description="target memory of one combine task (MB): sets the tile")
    steps: dict[str, dict[str, Any]] = Field(default_factory=dict, description="parameters per step (ccd_*): "
                                             "ccd_combine {method, low_thresh...}, ccd_dark {scale}, ccd_flat "
                                             "{min_value, norm_value}")  # fmt: skip

    @pydantic.field_validator("output")
    @classmethod
    def _output_suffix(cls, v: Path) -> Path:
        if v.suffix != ".zarr":
            raise ValueError(f"a .zarr store, got {v.name!r}")
        return v

    @pydantic.field_validator("trim")
    @classmethod
    def _trim_section(cls, v):
        return TrimParams(section=v) if isinstance(v, str) else v

    @pydantic.model_validator(mode="after")
    def _once(self) -> CcdJob:
        for key, step in (("overscan", "ccd_overscan"), ("trim", "ccd_trim")):
            if step in self.steps:
                raise ValueError(f"the {key} parameters once, as {key} (not steps.{step})")
        return self

    def trim_params(self) -> TrimParams:
        if isinstance(self.trim, TrimParams):
            return self.trim
        if isinstance(self.trim, bool):
            return TrimParams(apply=self.trim)
        return TrimParams(section=self.trim)

    def step_params(self) -> dict[str, dict]:
        """Every step's parameters: ``overscan`` and ``trim`` where they belong, then ``steps``."""
        out = {k: dict(v) for k, v in self.steps.items()}
        out["ccd_trim"] = self.trim_params().model_dump()
        if self.overscan is not None:
            out["ccd_overscan"] = self.overscan.model_dump()
        return out

    def masters(self) -> dict[str, Path]:
        """The master files given, by kind (bias, dark, flat)."""
        return {k.removeprefix("master_"): getattr(self, k) for k in MASTER_KEYS if getattr(self, k) is not None}
