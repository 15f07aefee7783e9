"""The CMOS characterisation job (``pipeline: cmos``): raw test-section trees -> section stores -> bias, dark
and flat models -> synthesis, evaluation, analyses and reports.

The model parameters are declared once, by the steps (:mod:`detflow.steps.cmos`): the ``bias``, ``dark`` and
``flat`` blocks are the parameters of the steps ``bias_model``, ``dark_model`` and ``flat_model``, which
``steps:`` may set too (with the evaluations' ``bias_eval``, ``dark_eval``, ``flat_eval``); a parameter given
in both places is refused."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import pydantic
from pydantic import Field

from ..steps.cmos import BiasModelParams, DarkModelParams, FlatModelParams
from .base import Job, Model, OnError

# the job's blocks of step parameters: block -> step
MODEL_STEPS = {"bias": "bias_model", "dark": "dark_model", "flat": "flat_model"}


class CmosIngestConfig(Model):
    """Raw test-section trees to ingest into the section stores (``detflow cmos ingest``)."""

    bias: Path | None = Field(None, description="TestSection1 (bias frames)")
    dark: Path | None = Field(None, description="TestSection2 (dark frames)")
    flat: Path | None = Field(None, description="TestSection3 (flat frames)")
    search_depth: int = Field(6, ge=1, description="folder levels searched below each section for attempts")
    data_scale: float | None = Field(None, gt=0, description="divide the stored counts by this when reading "
                                     "(16: 12-bit data stored in 16 bits); recorded in the store")  # fmt: skip
    on_error: OnError = Field("raise", description="a bad frame stops the ingest, or is skipped and listed in the "
                              "report")  # fmt: skip
    fits_export: Path | None = Field(None, description="also write one FITS file per ingested frame here")
    overwrite: bool = Field(False, description="ingest every frame again into new section stores, which replace "
                            "the existing ones when complete (else only the frames not in them yet)")  # fmt: skip


class CmosSynthConfig(Model):
    temps: list[float] = Field(..., min_length=1, description="temperatures (deg C)")
    exptimes: list[float] = Field(default_factory=list, description="exposure times (s) of the synthetic darks/flats")
    filter: str | None = Field(None, description="filter of the synthetic flats (default: every filter)")


class CmosJob(Job):
    """CMOS calibration reference products: raw ingest, bias/dark/flat models, synthesis, evaluation,
    analyses (``pipeline: cmos``)."""

    PATH_KEYS: ClassVar[tuple[str, ...]] = ("stores", "output", "model_store", "report_dir", "ingest.bias",
                                           "ingest.dark", "ingest.flat", "ingest.fits_export")  # fmt: skip
    STEP_FAMILY: ClassVar[str] = "cmos"

    pipeline: Literal["cmos"] = "cmos"
    stores: Path = Field(..., description="folder of the section stores (bias.zarr, dark.zarr, flat.zarr)")
    ingest: CmosIngestConfig | None = Field(None, description="ingest raw trees into `stores` first")
    output: Path | None = Field(None, description="model store (.zarr); none: ingest only (models not built)")
    models: list[Literal["bias", "dark", "flat"]] = Field(["bias", "dark", "flat"], description="models to build "
                                                          "(dark needs bias, flat needs both: built as needed)")  # fmt: skip
    mode: Literal["full", "fit", "synthesize", "evaluate"] = Field(
        "full", description="full: fit on the training frames, evaluate on the held-out ones, synthesize; fit: "
                            "fit on every frame; synthesize / evaluate: from the models in `model_store`")  # fmt: skip
    model_store: Path | None = Field(None, description="models of an earlier run (mode synthesize/evaluate)")
    holdout_every: int = Field(5, ge=0, description="every n-th frame of each (T, t) group is held out for the "
                                                    "evaluation (mode full; 0: none)")  # fmt: skip
    bias: BiasModelParams = Field(default_factory=BiasModelParams, description="parameters of the bias_model step")
    dark: DarkModelParams = Field(default_factory=DarkModelParams, description="parameters of the dark_model step")
    flat: FlatModelParams = Field(default_factory=FlatModelParams, description="parameters of the flat_model step")
    synthesize: CmosSynthConfig | None = None
    analyses: list[Literal["structure", "degradation"]] = Field(default_factory=list)
    report_dir: Path | None = Field(None, description="tables and plots (default: <output>_report)")

    @pydantic.field_validator("output", "model_store")
    @classmethod
    def _zarr_suffix(cls, v: Path | None) -> Path | None:
        if v is not None and v.suffix != ".zarr":
            raise ValueError(f"a .zarr store, got {v.name!r}")
        return v

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> CmosJob:
        if self.mode in ("synthesize", "evaluate") and self.model_store is None:
            raise ValueError(f"mode {self.mode} reads the models of an earlier run: give model_store")
        if self.mode == "synthesize" and self.synthesize is None:
            raise ValueError("mode synthesize needs a synthesize block (temps, exptimes)")
        if self.output is None and (self.ingest is None or self.analyses):
            raise ValueError("output (a .zarr store) is required unless the job only ingests (an ingest block, "
                             "no analyses)")  # fmt: skip
        for block, step in MODEL_STEPS.items():
            for key in sorted(getattr(self, block).model_fields_set & set(self.steps.get(step, {}))):
                raise ValueError(f"{block}.{key} once, in the {block} block or as steps.{step}.{key}, got both")
        return self

    def step_params(self) -> dict[str, dict]:
        """Every step's parameters: the ``bias``, ``dark`` and ``flat`` blocks, then ``steps`` on top."""
        out = {step: getattr(self, block).model_dump() for block, step in MODEL_STEPS.items()}
        for name, extra in self.steps.items():
            out[name] = {**out.get(name, {}), **extra}
        return out

    @property
    def reports(self) -> Path | None:
        if self.report_dir is not None:
            return self.report_dir
        return None if self.output is None else self.output.with_name(self.output.stem + "_report")
