"""The ground-based HxRG imaging job (``pipeline: hxrg_ground``): reads -> reference pixels -> CDS/Fowler/ramp.

The keys are those of every frames job (:class:`~detflow.instruments.base.FramesJob`) and this
instrument's own: ``instrument`` (a preset of :data:`detflow.instruments.hxrg_ground.PRESETS`: ``ioi``
takes the outputs from NOUTPUTS and the gain from ASICGAIN; ``generic`` everything from the job),
``read_mode``, ``refpix``, the selection (``date``, ``runs``, ``dithers``, ``exposures``, ``groups``:
``[lo, hi]`` inclusive, as IO:I's ``--rlo/--rhi``, ``--dlo/--dhi``, ``--elo/--ehi``, ``--glo/--ghi``),
the geometry the preset leaves open (``noutputs``, ``gain``, ``ref_pixels``, ``read_noise``), the
nonlinearity coefficients and ``products`` (``[frames]``: the per-frame products).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar, Literal

import pydantic
from pydantic import Field

from ..io.hxrg_fits import product_names
from ..steps.hxrg_refpix import MODES
from .base import FramesJob
from .hxrg_ground import PRESETS, Geometry, ioi_job_keys

log = logging.getLogger("detflow")

Range = tuple[int, int]
RefPix = Literal["none", "trim", "constant", "constant_off", "ramp", "column", "full"]
DEFAULT_REFPIX = {"ioi": "ramp", "generic": "none"}  # IO:I's pipeline.ini: RAMP


class HxrgGroundJob(FramesJob):
    """Ground-based HxRG reads (IO:I and its kind): reference pixels, CDS/Fowler/ramp, per-frame products."""

    PATH_KEYS: ClassVar[tuple[str, ...]] = (
        "output",
        "input",
        "nonlinearity",
        "pipeline_ini",
        "paths_ini",
        "export_fits",
        "flat",
    )
    STEP_FAMILY: ClassVar[str] = "hxrg_ground"

    pipeline: Literal["hxrg_ground"] = "hxrg_ground"
    instrument: Literal["ioi", "generic"] = Field("ioi", description="preset: ioi (4 reference rows/columns each "
                                                  "side, NOUTPUTS, ASICGAIN) or generic (all from the job)")  # fmt: skip
    input: str | list[str] = Field(..., description="FITS reads (LT or Teledyne names) or cubes: a file, directory, "
                                   "glob, or a list of these")  # fmt: skip
    output: Path = Field(..., description="output zarr store (.zarr)")
    read_mode: Literal["cds", "fowler", "ramp"] = Field("cds", description="cds: last - first read; fowler: "
                                                        "pedestal/signal pairs; ramp: up-the-ramp slope")  # fmt: skip
    refpix: RefPix | None = Field(None, description=f"reference pixels: {', '.join(MODES)} (default: ioi ramp, "
                                  "generic none)")  # fmt: skip
    date: str | None = Field(None, description="LT date YYYYMMDD of the reads")
    runs: Range | None = Field(None, description="run (multrun) numbers [lo, hi], inclusive")
    dithers: Range | None = Field(None, description="dither positions [lo, hi], inclusive (LT names)")
    exposures: Range | None = Field(None, description="exposure numbers [lo, hi], inclusive (LT: the 6th name "
                                    "field; Teledyne: N; cubes: integrations, 1-based)")  # fmt: skip
    groups: Range | None = Field(None, description="groups [lo, hi], inclusive (Teledyne: M; cubes: groups, 1-based)")
    noutputs: int | None = Field(None, ge=1, description="outputs across the columns (ioi: NOUTPUTS; generic: 1)")
    gain: float | None = Field(None, gt=0, description="gain e/DN (ioi: from ASICGAIN; generic: 1)")
    ref_pixels: int | tuple[int, int, int, int] | None = Field(None, ge=0, description="reference rows/columns on "
                                                               "each side, or [bottom, top, left, right]")  # fmt: skip
    read_noise: float | None = Field(None, gt=0, description="read noise per read (DN), for errors and ramp weights")
    nonlinearity: Path | None = Field(None, description="nonlinearity coefficients FITS (IO:I layout: one HDU per "
                                      "order, observed -> ideal, on the active region)")  # fmt: skip
    nonlinearity_order: int | None = Field(None, ge=1, description="use the coefficients up to this order (IO:I's "
                                           "order: 3); null: all")  # fmt: skip
    pipeline_ini: Path | None = Field(None, description="IO:I's pipeline.ini: its reference_subtraction, "
                                      "frame_combination and nonlinearity_corrections settings (the job's own "
                                      "keys take precedence)")  # fmt: skip
    paths_ini: Path | None = Field(None, description="IO:I's paths.ini: the nonlinearity coefficients file")
    export_fits: Path | None = Field(None, description="a directory for FITS exports of the frames with LT names "
                                     "(<inst>_<type>_<date>_<run>_<dither>_0_1.fits) and IO:I's keywords")  # fmt: skip
    products: list[Literal["frames", "flat", "sky"]] = Field(["frames"], description="products to make: frames "
                                                             "(per exposure); flat (built from the frames, dithered "
                                                             "sky, unless the job's flat; then group reduced: frames "
                                                             "/ flat); sky (from the dithers: groups sky, skysub)")  # fmt: skip
    flat: Path | None = Field(None, description="a flat FITS file (one 2-D image on the active region) to divide "
                              "by instead of one built from the frames")  # fmt: skip
    combine_task_mb: float = Field(128, ge=1, description="target memory of one combine task (MB): sets the tile")
    dtype: Literal["float32", "float64"] = Field("float32", description="stored data type")
    frames_per_task: int = Field(1, ge=1, description="exposures per task (an IO:I exposure of 4 reads is 128 MB)")
    steps: dict[str, dict[str, Any]] = Field(default_factory=dict, description="more step parameters: hxrg_refpix "
                                             "{compat_rows, skip_border, column_smoothing, sigma, window, "
                                             "clip_sigma}, hxrg_combine {read_time, fowler_pairs, "
                                             "jump_detection}, hxrg_flat_build {low, high, sigma, maxiters, "
                                             "bad_bits}, hxrg_flat {low, high}, hxrg_sky {peers, method, "
                                             "sigma, fill_box, mask_objects, detect_sigma, npixels, dilate}")  # fmt: skip

    @pydantic.model_validator(mode="before")
    @classmethod
    def _ioi_ini(cls, data: Any) -> Any:
        """IO:I's pipeline.ini/paths.ini read as job keys, under the job's own."""
        if not isinstance(data, dict) or not data.get("pipeline_ini"):
            return data
        try:
            keys, ignored = ioi_job_keys(data["pipeline_ini"], data.get("paths_ini"))
        except ValueError as exc:
            raise ValueError(f"pipeline_ini: {exc}") from None
        for stage in ignored:
            log.warning("%s: pipeline_ini: %s is not run by this pipeline yet", data.get("source") or "<job>", stage)
        ini_steps, job_steps = keys.pop("steps", {}), data.get("steps") or {}
        out = {**keys, **data}
        if isinstance(job_steps, dict) and all(isinstance(v, dict) for v in job_steps.values()):
            out["steps"] = {n: {**ini_steps.get(n, {}), **job_steps.get(n, {})} for n in {*ini_steps, *job_steps}}
        return out

    @pydantic.field_validator("output")
    @classmethod
    def _output_suffix(cls, v: Path) -> Path:
        if v.suffix != ".zarr":
            raise ValueError(f"a .zarr store, got {v.name!r}")
        return v

    @pydantic.field_validator("runs", "dithers", "exposures", "groups")
    @classmethod
    def _range(cls, v):
        if v is not None and v[0] > v[1]:
            raise ValueError(f"an inclusive range [lo, hi] with lo <= hi, got [{v[0]}, {v[1]}]")
        return v

    @pydantic.field_validator("date", mode="before")
    @classmethod
    def _date(cls, v):
        return str(v) if isinstance(v, int) else v

    @pydantic.model_validator(mode="after")
    def _once(self) -> HxrgGroundJob:
        for step, key in (("hxrg_refpix", "mode"), ("hxrg_refpix", "ref"), ("hxrg_refpix", "noutputs"),
                          ("hxrg_combine", "mode"), ("hxrg_combine", "read_noise")):  # fmt: skip
            if key in self.steps.get(step, {}):
                top = {"mode": "refpix" if step == "hxrg_refpix" else "read_mode", "ref": "ref_pixels"}.get(key, key)
                raise ValueError(f"{top} once, as the job's {top} (not steps.{step}.{key})")
        return self

    def export_paths(self) -> list[Path]:
        if self.export_fits is None:
            return []
        return [Path(self.export_fits) / n for n in product_names(self.input, self.selection())]

    @property
    def preset(self) -> Geometry:
        return PRESETS[self.instrument]

    def ref(self) -> tuple[int, int, int, int]:
        if self.ref_pixels is None:
            return self.preset.ref
        return (self.ref_pixels,) * 4 if isinstance(self.ref_pixels, int) else tuple(self.ref_pixels)

    def refpix_mode(self) -> str:
        return self.refpix or DEFAULT_REFPIX[self.instrument]

    def selection(self) -> dict:
        return {k: getattr(self, k) for k in ("date", "runs", "dithers", "exposures", "groups")}

    def step_params(self) -> dict[str, dict]:
        """Every step's parameters: the job's keys where they belong, then ``steps``."""
        out = {k: dict(v) for k, v in self.steps.items()}
        g = self.preset
        refpix = {"mode": self.refpix_mode(), "ref": self.ref(), "noutputs": self.noutputs or g.noutputs,
                  "skip_border": g.skip_border}  # fmt: skip
        out["hxrg_refpix"] = {**refpix, **out.get("hxrg_refpix", {})}
        out["hxrg_combine"] = {"mode": self.read_mode, "read_noise": self.read_noise or g.read_noise,
                               **out.get("hxrg_combine", {})}  # fmt: skip
        return out
