"""The Roman WFI job (``pipeline: roman_wfi``): the keys only a WFI job has, and its foreign spelling, the
PIT ``gen_cal_image`` YAML (``IN``, ``OUT``, ``CALDIR``, ``RAMP_OPT_PARS``...), translated key by key by
:func:`detflow.instruments.roman_wfi_pit.from_pit`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import pydantic
from pydantic import Field

from ..errors import DetflowInputError
from ..io.chunking import chunks_problem
from ..io.exporters import pit_fits_path
from ..steps.catalog import family_steps
from ..steps.wfi_noise import parse_layers
from . import roman_wfi
from .base import FramesJob, Model, check_steps


class NoiseConfig(Model):
    """Noise realizations (the PIT ``NOISE`` block): one layer per code, seeded, reproducible."""

    layers: list[str] = Field(
        ..., min_length=1, description="layer codes: R[a][z<k>], P[b<order>][r], O, S<order>, C..."
    )
    seed: int = Field(..., ge=0, description="random seed; the same seed gives the same layers bit for bit")
    out: Path | None = Field(None, description="also export the noise cube to this .asdf file (PIT NOISE.OUT)")
    precision: Literal[16, 32] = Field(32, description="float bits of the stored cube (PIT NOISE_PRECISION)")
    reference: Literal["add", "replace"] = Field(
        "add", description="R layers: add the noise to the reference border and amp33 of the base exposure "
                           "('add'), or rebuild them from the dark and amp33 median ('replace', the PIT's; the "
                           "base exposure's own 1/f noise then leaks into the layer)")  # fmt: skip

    @pydantic.field_validator("layers")
    @classmethod
    def _codes(cls, v: list[str]) -> list[str]:
        try:
            parse_layers(v)
        except DetflowInputError as exc:
            raise ValueError(f"{exc.got}; expected {exc.expected}") from None
        return v

    @pydantic.field_validator("out")
    @classmethod
    def _out_suffix(cls, v: Path | None) -> Path | None:
        if v is not None and v.suffix != ".asdf":
            raise ValueError(f"an .asdf file, got {v.name!r}")
        return v


class WFIJob(FramesJob):
    """Roman WFI L1 ramps -> L2 slopes (the PIT ``gen_cal_image`` numerics), and noise realizations."""

    PATH_KEYS: ClassVar[tuple[str, ...]] = ("output", "input", "wcs", "noise.out", "caldir.*")
    STEP_FAMILY: ClassVar[str] = "roman_wfi"

    pipeline: Literal["roman_wfi"] = "roman_wfi"
    input: str | list[str] = Field(..., description="L1 file, directory, glob, or a list of these")
    output: Path = Field(..., description="output zarr store (.zarr)")
    caldir: dict[str, Path] = Field(
        ..., description="reference files: dark, gain, linearitylegendre, mask, read, saturation"
    )
    exclude_first: bool = Field(True, description="leave the first resultant out (PIT EXCLUDE_FIRST)")
    recipe: list[str] | Literal["full"] | None = Field(
        None, description="step names in order; 'full': every gen_cal_image step the CALDIR allows (the default "
                          "for PIT configurations); default: dq_init, saturation, linearity, dark_current, ramp_fit")  # fmt: skip
    chunks: dict[str, int] | None = Field(None, description="pixel tile, e.g. {y: 512, x: 4096}")
    fits_out: bool = Field(False, description="also export the L2 slope, dq and good-pixel image to FITS (PIT FITSOUT)")
    wcs: Path | None = Field(None, description="FITS header text file with the celestial WCS (PIT FITSWCS)")
    fuse: bool = Field(True, description="run step sequences that have a one-pass kernel in one pass (same numerics)")
    noise: NoiseConfig | None = Field(None, description="noise realizations of the L2 slope (PIT NOISE)")
    not_applied: list[str] = Field(default_factory=list, description="PIT options this version records as SKIPPED")

    @pydantic.field_validator("output")
    @classmethod
    def _output_suffix(cls, v: Path) -> Path:
        if v.suffix not in (".zarr", ".asdf"):
            raise ValueError(f"a .zarr store (or an .asdf L2 file, written beside its .zarr store), got {v.name!r}")
        return v

    @pydantic.field_validator("chunks", mode="before")
    @classmethod
    def _chunks(cls, v):
        problem = chunks_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @pydantic.field_validator("recipe")
    @classmethod
    def _recipe_known(cls, recipe):
        if isinstance(recipe, list):
            check_steps({}, [(("recipe", i), n) for i, n in enumerate(recipe)], list(family_steps(cls.STEP_FAMILY)))
        return recipe

    def resolved_recipe(self) -> list[str]:
        if self.recipe == "full":
            return roman_wfi.full_recipe(self.caldir)
        return list(self.recipe or roman_wfi.DEFAULT_RECIPE)

    def step_params(self) -> dict[str, dict[str, Any]]:
        """Every step's parameters: ``exclude_first`` where it belongs, then ``steps`` on top."""
        out = super().step_params()
        for name in ("dq_init", "ramp_fit"):
            out[name] = {"exclude_first": self.exclude_first, **out.get(name, {})}
        return out

    @property
    def store(self) -> Path:
        """The zarr store of the run (for an .asdf output: the same name with .zarr)."""
        return self.output.with_suffix(".zarr")

    def export_paths(self) -> list[Path]:
        noise = [self.noise.out] if self.noise is not None and self.noise.out is not None else []
        files = ([self.output] if self.output != self.store else []) + noise
        return files + ([pit_fits_path(self.output)] + [pit_fits_path(n) for n in noise] if self.fits_out else [])
