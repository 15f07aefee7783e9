"""The MKID photon-counting job (``pipeline: mkid``): ``.bin`` packet streams -> the photon store.

Keys besides those of every job (``output``, ``overwrite``, ``cluster``): ``input`` (a directory of
``<unix seconds>.bin`` files, a glob, or a list), ``instrument`` (a preset: mec, darkness, xkid), ``beammap``
(mkidcore's text format; default: the preset's regular beammap), ``start``/``stop`` (unix seconds: the time
range kept), ``products`` (``[photons]``: stop after decoding; the calibrations are not built yet), and the
photon table's layout (``rows_per_shard``, ``rows_per_chunk``).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import pydantic
from pydantic import Field

from .base import Job
from .mkid import PRESETS


class MkidJob(Job):
    """MKID ``.bin`` files decoded into the photon store (photons grouped by resonator within each second)."""

    PATH_KEYS: ClassVar[tuple[str, ...]] = ("output", "input", "beammap")

    pipeline: Literal["mkid"] = "mkid"
    input: str | list[str] = Field(..., description="a directory of <unix seconds>.bin files, a glob, or a list")
    output: Path = Field(..., description="output zarr store (.zarr)")
    instrument: Literal["mec", "darkness", "xkid"] = Field(..., description="instrument preset: array size, dead "
                                                           "time, wavelength range, default beammap")  # fmt: skip
    beammap: Path | None = Field(None, description="beammap file (mkidcore's text format: resID flag x y per line); "
                                 "default: the instrument's regular beammap")  # fmt: skip
    start: int | None = Field(None, ge=0, description="unix second of the first photon kept (time 0); default: the "
                              "first file's second")  # fmt: skip
    stop: int | None = Field(None, ge=0, description="unix second after the last photon kept; default: the end of the "
                             "last file's second")  # fmt: skip
    products: list[Literal["photons"]] = Field(["photons"], description="what to make: photons (decode and store)")
    rows_per_shard: int = Field(1 << 20, ge=1024, description="photons per zarr shard and per write task")
    rows_per_chunk: int = Field(1 << 14, ge=256, description="photons per zarr chunk inside a shard: the read "
                                "granularity of per-pixel and per-time queries")  # fmt: skip

    @pydantic.field_validator("instrument", mode="before")
    @classmethod
    def _lower(cls, v):
        return v.lower() if isinstance(v, str) and v.lower() in PRESETS else v

    @pydantic.field_validator("output")
    @classmethod
    def _output_suffix(cls, v: Path) -> Path:
        if v.suffix != ".zarr":
            raise ValueError(f"a .zarr store, got {v.name!r}")
        return v

    @pydantic.model_validator(mode="after")
    def _range(self) -> MkidJob:
        if self.start is not None and self.stop is not None and self.stop <= self.start:
            raise ValueError(f"stop after start, got start {self.start}, stop {self.stop}")
        if self.rows_per_shard % self.rows_per_chunk:
            raise ValueError(f"rows_per_shard a multiple of rows_per_chunk, got {self.rows_per_shard} and "
                             f"{self.rows_per_chunk}")  # fmt: skip
        return self
