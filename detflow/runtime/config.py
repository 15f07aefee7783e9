"""Job configuration: YAML validated by pydantic (unknown keys are errors that name key and file).

Two spellings are accepted for a Roman WFI job:

* detflow's own (``pipeline: roman_wfi``, ``input``, ``output``, ``caldir``, ``steps``...), and
* the PIT ``gen_cal_image`` YAML as users already write it (``IN``, ``OUT``, ``CALDIR``,
  ``RAMP_OPT_PARS``, ``JUMP_DETECT_PARS``, ``EXCLUDE_FIRST``, ``SATURATION_BACKUP``, ...), translated
  key by key by :func:`from_pit`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import Field

from ..errors import DetflowInputError


class _Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")


class ClusterConfig(_Model):
    scheduler: str | None = Field(None, description="address of a running dask scheduler")
    n_workers: int = Field(1, ge=1, description="LocalCluster worker processes")
    threads_per_worker: int | None = Field(None, ge=1, description="threads per worker (default: cores / workers)")
    memory_limit: str = Field("auto", description="per-worker memory limit of the LocalCluster")
    dashboard_address: str = Field("127.0.0.1:8787", description="LocalCluster dashboard (localhost only)")


class NoiseConfig(_Model):
    """Noise realizations (the PIT ``NOISE`` block): one layer per code, seeded, reproducible."""

    layers: list[str] = Field(..., min_length=1, description="layer codes: R[a][z<k>], P[b<order>][r], O, S<order>, C...")
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
        from ..steps.wfi_noise import parse_layers

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


class WFIJob(_Model):
    pipeline: Literal["roman_wfi"] = "roman_wfi"
    input: str | list[str] = Field(..., description="L1 file, directory, glob, or a list of these")
    output: Path = Field(..., description="output zarr store (.zarr)")
    caldir: dict[str, Path] = Field(..., description="reference files: dark, gain, linearitylegendre, mask, read, saturation")
    overwrite: bool = False
    exclude_first: bool = Field(True, description="leave the first resultant out (PIT EXCLUDE_FIRST)")
    recipe: list[str] | Literal["full"] | None = Field(
        None, description="step names in order; 'full': every gen_cal_image step the CALDIR allows (the default "
                          "for PIT configurations); default: dq_init, saturation, linearity, dark_current, ramp_fit")  # fmt: skip
    steps: dict[str, dict[str, Any]] = Field(default_factory=dict, description="parameters per step")
    chunks: dict[str, int] | None = Field(None, description="pixel tile, e.g. {y: 512, x: 4096}")
    fits_out: bool = Field(False, description="also export the L2 slope, dq and good-pixel image to FITS (PIT FITSOUT)")
    wcs: Path | None = Field(None, description="FITS header text file with the celestial WCS (PIT FITSWCS)")
    fuse: bool = Field(True, description="run step sequences that have a one-pass kernel in one pass (same numerics)")
    noise: NoiseConfig | None = Field(None, description="noise realizations of the L2 slope (PIT NOISE)")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    not_applied: list[str] = Field(default_factory=list, description="PIT options this version records as SKIPPED")
    source: str | None = Field(None, description="the file this job was read from")

    @pydantic.field_validator("output")
    @classmethod
    def _output_suffix(cls, v: Path) -> Path:
        if v.suffix not in (".zarr", ".asdf"):
            raise ValueError(f"a .zarr store (or an .asdf L2 file, written beside its .zarr store), got {v.name!r}")
        return v

    def resolved_recipe(self) -> list[str]:
        from ..instruments import roman_wfi

        if self.recipe == "full":
            return roman_wfi.full_recipe(self.caldir)
        return list(self.recipe or roman_wfi.DEFAULT_RECIPE)

    @property
    def store(self) -> Path:
        """The zarr store of the run (for an .asdf output: the same name with .zarr)."""
        return self.output.with_suffix(".zarr")

    @pydantic.model_validator(mode="after")
    def _steps_known(self) -> "WFIJob":
        from ..steps.registry import all_steps

        reg = all_steps()
        names = self.recipe if isinstance(self.recipe, list) else []
        for name in list(self.steps) + names:
            if name not in reg:
                raise ValueError(f"unknown step {name!r}; known: {', '.join(sorted(reg))}")
        for name, params in self.steps.items():
            reg[name].params(**params)  # raises with the offending key
        return self


PIT_KEYS_TRANSLATED = {"IN", "OUT", "CALDIR", "RAMP_OPT_PARS", "JUMP_DETECT_PARS", "EXCLUDE_FIRST",
                       "SATURATION_BACKUP", "SKYORDER", "FITSWCS", "FITSOUT", "NOISE", "NOISE_PRECISION"}  # fmt: skip
PIT_NOISE_KEYS = {"LAYER", "SEED", "OUT", "TEMP"}  # TEMP: the PIT's scratch file, not needed by detflow
PIT_KEYS_LATER: dict[str, str] = {}  # recorded SKIPPED unless the recipe runs it
PIT_KEYS_OFF_ONLY = {"romancal_ramp_fit", "correct_wfi18_transient", "SLICEOUT"}
PIT_CALDIR_LATER = {"dark_decay": "dark decay"}


def is_pit(raw: dict) -> bool:
    return isinstance(raw, dict) and "IN" in raw and "CALDIR" in raw


def from_pit(raw: dict, source: str | None = None) -> dict:
    """Translate a PIT ``gen_cal_image`` configuration into a detflow job dict."""
    for key in raw:
        if key not in PIT_KEYS_TRANSLATED | set(PIT_KEYS_LATER) | PIT_KEYS_OFF_ONLY:
            raise DetflowInputError(source, key, "a gen_cal_image key (" + ", ".join(
                sorted(PIT_KEYS_TRANSLATED | set(PIT_KEYS_LATER))) + ")", "unknown key")  # fmt: skip
    for key in PIT_KEYS_OFF_ONLY:
        if raw.get(key):
            raise DetflowInputError(source, key, "false (this option is not supported by detflow)", raw[key])
    if "OUT" not in raw:
        raise DetflowInputError(source, "OUT", "the output path", "missing")
    base = Path(source).resolve().parent if source else Path(".").resolve()
    caldir = {k: _resolve(base, v) for k, v in dict(raw["CALDIR"] or {}).items()}
    not_applied = [f"{k} ({what})" for k, what in PIT_KEYS_LATER.items() if raw.get(k) not in (None, False)]
    not_applied += [f"CALDIR.{k} ({what})" for k, what in PIT_CALDIR_LATER.items() if k in caldir]
    steps: dict[str, dict] = {}
    ramp: dict[str, Any] = {}
    if "RAMP_OPT_PARS" in raw:
        rop = dict(raw["RAMP_OPT_PARS"])
        unknown = set(rop) - {"slope", "gain", "sigma_read"}
        if unknown:
            raise DetflowInputError(source, f"RAMP_OPT_PARS.{sorted(unknown)[0]}", "slope, gain or sigma_read",
                                    "unknown key")  # fmt: skip
        ramp.update({k: float(v) for k, v in rop.items()})
    if "JUMP_DETECT_PARS" in raw:
        jdp = dict(raw["JUMP_DETECT_PARS"])
        unknown = set(jdp) - {"SthreshA", "SthreshB", "IthreshA", "IthreshB"}
        if unknown:
            raise DetflowInputError(source, f"JUMP_DETECT_PARS.{sorted(unknown)[0]}",
                                    "SthreshA, SthreshB, IthreshA or IthreshB", "unknown key")  # fmt: skip
        ramp.update({k: float(v) for k, v in jdp.items()})
    exclude_first = bool(raw.get("EXCLUDE_FIRST", True))
    if ramp:
        steps["ramp_fit"] = ramp
    if raw.get("SKYORDER") is not None:
        steps["sky"] = {"order": int(raw["SKYORDER"])}
    if "SATURATION_BACKUP" in raw:
        steps["saturation"] = {"backup": int(raw["SATURATION_BACKUP"])}
    out = {"wcs": str(_resolve(base, raw["FITSWCS"]))} if raw.get("FITSWCS") else {}
    if raw.get("NOISE") is not None:
        noise = raw["NOISE"]
        if not isinstance(noise, dict):
            raise DetflowInputError(source, "NOISE", "a mapping with LAYER, SEED and OUT", type(noise).__name__)
        for key in noise:
            if key not in PIT_NOISE_KEYS:
                raise DetflowInputError(source, f"NOISE.{key}", "LAYER, SEED, OUT or TEMP", "unknown key")
        for key in ("LAYER", "SEED"):
            if key not in noise:
                raise DetflowInputError(source, f"NOISE.{key}", "a value", "missing")
        layers = noise["LAYER"] if isinstance(noise["LAYER"], list) else [noise["LAYER"]]
        from ..steps.wfi_noise import parse_layers

        parse_layers(layers, source)
        out["noise"] = {"layers": layers, "seed": noise["SEED"],
                        "precision": raw.get("NOISE_PRECISION", 32)}  # fmt: skip
        if noise.get("OUT"):
            out["noise"]["out"] = str(_resolve(base, noise["OUT"]))
    elif "NOISE_PRECISION" in raw:
        raise DetflowInputError(source, "NOISE_PRECISION", "a NOISE block to go with it", "no NOISE block")
    out["fits_out"] = bool(raw.get("FITSOUT", False))
    return out | {
        "pipeline": "roman_wfi",
        "input": str(_resolve(base, raw["IN"])),
        "output": str(_resolve(base, raw["OUT"])),
        "caldir": {k: str(v) for k, v in caldir.items()},
        "exclude_first": exclude_first,
        "recipe": "full",
        "steps": steps,
        "not_applied": not_applied,
    }


def _resolve(base: Path, value) -> Path:
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else (base / p)


def _format_validation(exc: pydantic.ValidationError, source) -> DetflowInputError:
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "<root>"
    kind = err["type"]
    if kind == "extra_forbidden":
        return DetflowInputError(source, loc, "a known key", "unknown key")
    if kind == "missing":
        return DetflowInputError(source, loc, "a value", "missing")
    return DetflowInputError(source, loc, err["msg"].removeprefix("Value error, "),
                             repr(err.get("input"))[:80])  # fmt: skip


def load_job(job: str | Path | dict | WFIJob) -> WFIJob:
    """Validate a job given as a YAML path, a dict (either spelling) or a :class:`WFIJob`."""
    if isinstance(job, WFIJob):
        return job
    source = None
    if isinstance(job, (str, Path)):
        source = str(job)
        path = Path(job)
        if not path.is_file():
            raise DetflowInputError(path, "job", "an existing YAML job file", "no such file")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise DetflowInputError(path, "YAML", "valid YAML", str(exc).splitlines()[0])
    else:
        raw = dict(job)
    if not isinstance(raw, dict):
        raise DetflowInputError(source, "<root>", "a mapping of job keys", type(raw).__name__)
    if is_pit(raw):
        raw = from_pit(raw, source)
    elif source is not None:
        base = Path(source).resolve().parent
        for key in ("output",):
            if key in raw and not Path(str(raw[key])).is_absolute():
                raw[key] = str(base / str(raw[key]))
        if isinstance(raw.get("noise"), dict) and raw["noise"].get("out"):
            raw["noise"] = dict(raw["noise"], out=str(_resolve(base, raw["noise"]["out"])))
        if raw.get("wcs") and not Path(str(raw["wcs"])).is_absolute():
            raw["wcs"] = str(base / str(raw["wcs"]))
        if isinstance(raw.get("caldir"), dict):
            raw["caldir"] = {k: str(_resolve(base, v)) for k, v in raw["caldir"].items()}
        if isinstance(raw.get("input"), str) and not Path(raw["input"]).is_absolute():
            raw["input"] = str(base / raw["input"])
        elif isinstance(raw.get("input"), list):
            raw["input"] = [str(_resolve(base, v)) for v in raw["input"]]
    raw.setdefault("source", source)
    try:
        return WFIJob(**raw)
    except pydantic.ValidationError as exc:
        raise _format_validation(exc, source) from None
