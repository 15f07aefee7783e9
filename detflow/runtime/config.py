"""Job configuration: YAML validated by pydantic (unknown keys are errors that name key and file).

Two spellings are accepted for a Roman WFI job:

* detflow's own (``pipeline: roman_wfi``, ``input``, ``output``, ``caldir``, ``steps``...), and
* the PIT ``gen_cal_image`` YAML as users already write it (``IN``, ``OUT``, ``CALDIR``,
  ``RAMP_OPT_PARS``, ``JUMP_DETECT_PARS``, ``EXCLUDE_FIRST``, ``SATURATION_BACKUP``, ...), translated
  key by key by :func:`detflow.runtime.pit.from_pit`.

A job without ``pipeline:`` is recognised by the keys only one pipeline has (:func:`pipeline_of`). Every
validation error is reported, one line each. (Over 500 lines: the job models of the three families and
their field documentation belong together.)
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import Field

from ..errors import DetflowInputError
from ..io.chunking import chunks_problem
from .pit import PIT_KEYS, from_pit, resolve_str

log = logging.getLogger("detflow")

PIPELINES = ("roman_wfi", "roman_excam", "cmos")
OnError = Literal["raise", "skip"]
ON_ERROR_HELP = ("a damaged input file (unreadable, truncated): 'raise' fails the job naming the file and why; "
                 "'skip' leaves it out and lists it (console, exit summary, the store's skipped_inputs)")  # fmt: skip


class _Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")


class _DamagedInputs(_Model):
    """``all_or_nothing`` (released before ``on_error``) is read as ``on_error``: true = raise, false = skip."""

    @pydantic.model_validator(mode="before")
    @classmethod
    def _all_or_nothing(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "all_or_nothing" not in data:
            return data
        data = dict(data)
        aon = data.pop("all_or_nothing")
        if not isinstance(aon, bool):
            raise ValueError(f"true or false (all_or_nothing, deprecated: on_error), got {aon!r}")  # noqa: TRY004
        want = "raise" if aon else "skip"
        if data.setdefault("on_error", want) != want:
            raise ValueError(f"on_error only (all_or_nothing is deprecated), got all_or_nothing: {str(aon).lower()} "
                             f"and on_error: {data['on_error']}")  # fmt: skip
        log.warning("%s: all_or_nothing is deprecated: write on_error: %s", data.get("source") or "<job>", want)
        return data


class ClusterConfig(_Model):
    """A job's ``cluster:`` block. Without ``profile`` (and ``$DETFLOW_PROFILE``): an embedded LocalCluster.
    With one (``cluster: {profile: slurm}``), the profile's settings, the keys set here on top (only those
    written in the job: defaults do not override the profile). See :mod:`detflow.runtime.cluster`."""

    profile: str | None = Field(None, description="cluster profile: a name (local, slurm, kubernetes, gateway, "
                                "address, or NAME.yaml on $DETFLOW_PROFILE_PATH / ~/.config/detflow/profiles) "
                                "or a path to a profile YAML")  # fmt: skip
    scheduler: str | None = Field(None, description="address of a running dask scheduler (tcp:// or tls://)")
    scheduler_file: Path | None = Field(None, description="scheduler file of a running scheduler (dask scheduler "
                                        "--scheduler-file)")  # fmt: skip
    n_workers: int = Field(1, ge=1, description="LocalCluster worker processes (with a profile: workers to scale to)")
    threads_per_worker: int | None = Field(None, ge=1, description="threads per worker (default: cores / workers)")
    memory_limit: str = Field("auto", description="per-worker memory limit of the LocalCluster")
    dashboard_address: str = Field("127.0.0.1:8787", description="LocalCluster dashboard (localhost only)")
    options: dict[str, Any] = Field(default_factory=dict, description="more profile keys for this job, e.g. "
                                    "{slurm: {walltime: '04:00:00'}, adapt: {maximum: 20}, warmup: true}")  # fmt: skip


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


class WFIJob(_DamagedInputs):
    pipeline: Literal["roman_wfi"] = "roman_wfi"
    input: str | list[str] = Field(..., description="L1 file, directory, glob, or a list of these")
    output: Path = Field(..., description="output zarr store (.zarr)")
    caldir: dict[str, Path] = Field(..., description="reference files: dark, gain, linearitylegendre, mask, read, saturation")
    overwrite: bool = False
    on_error: OnError = Field("raise", description=ON_ERROR_HELP)
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

    @pydantic.field_validator("chunks", mode="before")
    @classmethod
    def _chunks(cls, v):
        problem = chunks_problem(v)
        if problem:
            raise ValueError(problem)
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

    @pydantic.field_validator("steps")
    @classmethod
    def _steps_known(cls, steps: dict, info: pydantic.ValidationInfo) -> dict:
        from ..steps.registry import all_steps

        reg = all_steps()
        recipe = info.data.get("recipe")
        names = [(("steps", n), n) for n in steps]
        names += [(("recipe", i), n) for i, n in enumerate(recipe if isinstance(recipe, list) else [])]
        _check_steps(reg, steps, names, list(reg))  # every wrong name and parameter, each at its place
        return steps


EXCAM_CAL_KEYS = ("non_linearity_filepath", "dark_current_map", "fixed_pattern_noise", "EXCAM_clock_induced_charge",
                  "flatfield_filepath", "badpix_filepath", "master_dark_filepath")  # fmt: skip
EXCAM_COSMIC_KEYS = ("sat_thresh", "plat_thresh", "cosm_filter", "cosm_box", "cosm_tail", "cosm_tail_auto_factor",
                     "cosm_thresh", "median_filter_mode", "median_filter_size", "median_filter_histogram_nbins",
                     "skip_coronagraph_iwa", "coronagraph_iwa_radius", "pct_oversat_lim")  # fmt: skip


class PhotonCountConfig(_Model):
    read_noise: float = Field(..., gt=0, description="read noise (e-) at the gain register output")
    t_factor: float = Field(5.0, gt=0, description="threshold in units of the read noise")
    niter: int = Field(2, ge=1, description="Newton iterations of the coincidence-loss correction")


class ExcamJob(_DamagedInputs):
    """A Roman Coronagraph EXCAM data set, L1 -> L2a -> L2b and its combines.

    The II&T ``config_file.yaml`` keys are accepted as they are (``fwc_em_e``, ``fwc_pp_e``, ``eperdn``,
    ``bias_offset``, ``generate_png_files`` and the calibration paths), and so are the cosmic-ray
    parameters as top-level keys (II&T's and corgidrp's newer ``cosm_thresh``, ``median_filter_mode``).
    """

    pipeline: Literal["roman_excam"] = "roman_excam"
    input: str | list[str] = Field(..., description="L1 FITS file, directory, glob, or a list of these")
    output: Path = Field(..., description="output zarr store (.zarr)")
    overwrite: bool = False
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
    # cosmic rays (II&T names and defaults; corgidrp's cosm_thresh and median_filter_mode)
    sat_thresh: float = Field(0.7, gt=0, le=1)
    plat_thresh: float = Field(0.7, gt=0, le=1)
    cosm_filter: int = Field(1, ge=1)
    cosm_box: int = Field(3, ge=0)
    cosm_tail: int | Literal["auto"] = 10
    cosm_tail_auto_factor: float = Field(0.04, gt=0)
    cosm_thresh: float | None = Field(None, gt=0, le=1)
    median_filter_mode: Literal[0, 1, 2] = Field(0, description="0: plateau search; 1: median-filter histogram "
                                                 "threshold; 2: both (corgidrp; see the excam_cosmics step)")  # fmt: skip
    median_filter_size: tuple[int, int] = (10, 10)
    median_filter_histogram_nbins: int = Field(21, ge=3)
    skip_coronagraph_iwa: bool = Field(True, description="no cosmic-ray search inside the coronagraph IWA (corgidrp)")
    coronagraph_iwa_radius: float | None = Field(None, ge=0, description="IWA radius (lambda/D); null: by Lyot stop")
    pct_oversat_lim: float = Field(20.0, ge=0, le=100)
    # detflow
    desmear: bool = Field(True, description="remove the readout smear at L2b")
    group: bool = Field(False, description="split mixed EXPTIME/EM gain data sets into one product set per "
                        "group (l2a/<key>, ...) instead of refusing them")  # fmt: skip
    combine: list[Literal["l2a", "l2b"]] = Field(["l2b"], description="levels whose mean and median combines are "
                                                 "written (l2b: mean_comb, median_comb; l2a: l2a_mean_comb, ...)")  # fmt: skip
    frames_per_task: int = Field(8, ge=1, description="frames per L1 -> L2b task (each whole chain in memory: "
                                 "about 50-100 MB per frame at its peak)")
    frames_per_shard: int | None = Field(None, ge=1, description="frames per zarr shard of l2a/l2b (default: "
                                         "the multiple of frames_per_task nearest 32): the combines read one "
                                         "piece of every shard per tile")  # fmt: skip
    combine_task_mb: float = Field(256, ge=1, description="target memory of one combine task (MB): sets the tile")
    photon_count: PhotonCountConfig | None = Field(None, description="photon-counted mean of each (gain, time) group")
    noise_maps: bool = Field(False, description="fit FPN, CIC and dark-current maps from a dark data set of >= 4 "
                             "(EM gain, exposure time) groups (implies group: true)")  # fmt: skip
    on_error: OnError = Field("raise", description=ON_ERROR_HELP)
    export_dir: Path | None = Field(None, description="also write the II&T FITS file set here")
    export_prefix: str | None = Field(None, description="name of the data-set (combined) FITS files; null: after "
                                      "the L1 file names, as II&T names them (detflow.io.exporters."
                                      "excam_dataset_name)")  # fmt: skip
    steps: dict[str, dict[str, Any]] = Field(default_factory=dict, description="parameters per step (excam_*)")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    source: str | None = Field(None, description="the file this job was read from")

    @pydantic.field_validator("output")
    @classmethod
    def _output_suffix(cls, v: Path) -> Path:
        if v.suffix != ".zarr":
            raise ValueError(f"a .zarr store, got {v.name!r}")
        return v

    @property
    def store(self) -> Path:
        return self.output

    def calibration_paths(self) -> dict[str, Path | None]:
        return {k: getattr(self, k) for k in EXCAM_CAL_KEYS}

    def step_params(self) -> dict[str, dict]:
        """Every step's parameters: the II&T keys where they belong, then ``steps`` on top."""
        cosmics = {k: getattr(self, k) for k in EXCAM_COSMIC_KEYS}
        cosmics.update(fwc_em_e=self.fwc_em_e, fwc_pp_e=self.fwc_pp_e, eperdn=self.eperdn)
        base = {
            "excam_bias": {"bias_offset": self.bias_offset},
            "excam_cosmics": cosmics,
            "excam_electrons": {"eperdn": self.eperdn},
            "excam_desmear": {"apply": self.desmear},
        }
        for name, extra in self.steps.items():
            base[name] = {**base.get(name, {}), **extra}
        return base

    @pydantic.model_validator(mode="after")
    def _steps_known(self) -> "ExcamJob":
        from ..steps.registry import all_steps

        reg = all_steps()
        known = [k for k, v in reg.items() if v.family == "roman_excam"]
        _check_steps(reg, self.step_params(), [(("steps", n), n) for n in self.steps], known)
        return self


class CmosIngestConfig(_Model):
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


class CmosBiasConfig(_Model):
    method: Literal["median", "mean", "sigma_clip"] = "median"
    sigma: float = Field(3.0, gt=0)
    temp_step: float = Field(0.1, gt=0, description="temperature grouping of the masters (deg C)")
    weights: Literal["none", "nframes"] = "none"
    hot_k: float | None = Field(None, gt=0, description="hot-pixel mask: master > median + k sigma")


class CmosDarkConfig(_Model):
    bias_mode: Literal["master", "model"] = Field("master", description="subtract the nearest-temperature bias "
                                                  "master, or the bias model at the frame's temperature")  # fmt: skip
    method: Literal["median", "mean", "sigma_clip"] = "mean"
    zero_frac_max: float = Field(0.1, ge=0, le=1, description="frames with more exact-zero pixels are rejected")
    hot_k: float = Field(5.0, gt=0, description="hot pixels: rate > mean + k sigma")
    weights: Literal["noise_model", "scatter", "none"] = "noise_model"


class CmosFlatConfig(_Model):
    bias_mode: Literal["master", "model"] = "master"
    method: Literal["median", "mean", "sigma_clip"] = "median"
    normalize: Literal["mean", "max"] = "mean"
    vignetting: Literal["radial", "empirical", "none"] = "radial"
    radial_order: int = Field(2, ge=1)
    max_dtemp: float = Field(5.0, gt=0, description="pair a flat with a dark at most this far in temperature (C)")
    max_dexptime: float = Field(10.0, gt=0, description="... and in exposure time (s)")


class CmosSynthConfig(_Model):
    temps: list[float] = Field(..., min_length=1, description="temperatures (deg C)")
    exptimes: list[float] = Field(default_factory=list, description="exposure times (s) of the synthetic darks/flats")
    filter: str | None = Field(None, description="filter of the synthetic flats (default: every filter)")


class CmosJob(_Model):
    """CMOS calibration reference products: raw ingest, bias/dark/flat models, synthesis, evaluation,
    analyses (``pipeline: cmos``)."""

    pipeline: Literal["cmos"] = "cmos"
    stores: Path = Field(..., description="folder of the section stores (bias.zarr, dark.zarr, flat.zarr)")
    ingest: CmosIngestConfig | None = Field(None, description="ingest raw trees into `stores` first")
    output: Path | None = Field(None, description="model store (.zarr); none: ingest only (models not built)")
    overwrite: bool = False
    models: list[Literal["bias", "dark", "flat"]] = Field(["bias", "dark", "flat"], description="models to build "
                                                          "(dark needs bias, flat needs both: built as needed)")  # fmt: skip
    mode: Literal["full", "fit", "synthesize", "evaluate"] = Field(
        "full", description="full: fit on the training frames, evaluate on the held-out ones, synthesize; fit: "
                            "fit on every frame; synthesize / evaluate: from the models in `model_store`")  # fmt: skip
    model_store: Path | None = Field(None, description="models of an earlier run (mode synthesize/evaluate)")
    holdout_every: int = Field(5, ge=0, description="every n-th frame of each (T, t) group is held out for the "
                                                    "evaluation (mode full; 0: none)")  # fmt: skip
    bias: CmosBiasConfig = Field(default_factory=CmosBiasConfig)
    dark: CmosDarkConfig = Field(default_factory=CmosDarkConfig)
    flat: CmosFlatConfig = Field(default_factory=CmosFlatConfig)
    synthesize: CmosSynthConfig | None = None
    analyses: list[Literal["structure", "degradation"]] = Field(default_factory=list)
    report_dir: Path | None = Field(None, description="tables and plots (default: <output>_report)")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    source: str | None = Field(None, description="the file this job was read from")

    @pydantic.field_validator("output", "model_store")
    @classmethod
    def _zarr_suffix(cls, v: Path | None) -> Path | None:
        if v is not None and v.suffix != ".zarr":
            raise ValueError(f"a .zarr store, got {v.name!r}")
        return v

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> "CmosJob":
        if self.mode in ("synthesize", "evaluate") and self.model_store is None:
            raise ValueError(f"mode {self.mode} reads the models of an earlier run: give model_store")
        if self.mode == "synthesize" and self.synthesize is None:
            raise ValueError("mode synthesize needs a synthesize block (temps, exptimes)")
        if self.output is None and (self.ingest is None or self.analyses):
            raise ValueError("output (a .zarr store) is required unless the job only ingests (an ingest block, "
                             "no analyses)")  # fmt: skip
        return self

    @property
    def store(self) -> Path | None:
        return self.output

    @property
    def reports(self) -> Path | None:
        if self.report_dir is not None:
            return self.report_dir
        return None if self.output is None else self.output.with_name(self.output.stem + "_report")



# what each pipeline needs, for a job that does not say which it is
PIPELINE_NEEDS = ("roman_wfi (input, output, caldir), roman_excam (input, output and the II&T keys: eperdn, fwc_em_e, "
                  "the calibration paths...), cmos (stores, and ingest or output), or a PIT gen_cal_image YAML "
                  "(IN, OUT, CALDIR)")  # fmt: skip


def _only_keys() -> dict[str, set[str]]:
    """The keys only one pipeline has (PIT keys: the WFI pipeline in the PIT's spelling)."""
    fields = {"roman_wfi": set(WFIJob.model_fields), "roman_excam": set(ExcamJob.model_fields),
              "cmos": set(CmosJob.model_fields)}  # fmt: skip
    out = {name: keys - set().union(*(v for k, v in fields.items() if k != name)) for name, keys in fields.items()}
    out["pit"] = set(PIT_KEYS)
    return out


def pipeline_of(raw: dict, source=None) -> str:
    """``roman_wfi``, ``roman_excam``, ``cmos`` or ``pit`` (the PIT gen_cal_image spelling of a WFI job):
    the ``pipeline`` key, else the keys only one pipeline has; refused when neither tells."""
    name = raw.get("pipeline")
    if name is not None:
        if name not in PIPELINES:
            raise DetflowInputError(source, "pipeline", f"one of {', '.join(PIPELINES)}", repr(name))
        return name
    found = {name: sorted(set(raw) & keys) for name, keys in _only_keys().items()}
    found = {name: keys for name, keys in found.items() if keys}
    if len(found) == 1:
        return next(iter(found))
    if not found:
        keys = ", ".join(map(str, raw)) or "no keys"
        raise DetflowInputError(source, "pipeline", f"a pipeline key or the keys of one pipeline: {PIPELINE_NEEDS}",
                                f"no pipeline key and none of those keys ({keys})")  # fmt: skip
    raise DetflowInputError(source, "pipeline", "a pipeline key (roman_wfi, roman_excam or cmos), or the keys of one "
                            "pipeline only", "keys of several: " + "; ".join(
                                f"{'PIT' if n == 'pit' else n}: {', '.join(k)}" for n, k in found.items()))  # fmt: skip


class _StepErrors(ValueError):
    """Step names and parameters a job got wrong, each at its place (``steps.<name>.<key>``), in the
    form of pydantic's ``errors()`` (so that each becomes one line)."""

    def __init__(self, items: list[dict]):
        self.items = items
        super().__init__("; ".join(f"{'.'.join(map(str, i['loc']))}: {i['msg']}" for i in items))


def _check_steps(reg: dict, params: dict[str, dict], names: list[str], known: list[str]) -> None:
    """Raise :class:`_StepErrors` for every unknown step name (``names``: of ``steps`` and the recipe) and
    every wrong parameter."""
    items = []
    for loc, name in names:
        if name not in known:
            items.append({"type": "value_error", "loc": loc, "input": name,
                          "msg": f"a step name ({', '.join(sorted(known))})"})  # fmt: skip
    for name, kw in params.items():
        if name not in known:
            continue
        try:
            reg[name].params(**kw)
        except pydantic.ValidationError as exc:
            items += [dict(e, loc=("steps", name, *e["loc"])) for e in exc.errors()]
    if items:
        raise _StepErrors(items)


def _error_lines(err: dict, source) -> list[DetflowInputError]:
    """One :class:`DetflowInputError` per pydantic error (a step error expands into its own)."""
    ctx = err.get("ctx") or {}
    if isinstance(ctx.get("error"), _StepErrors):
        return [e for item in ctx["error"].items for e in _error_lines(item, source)]
    loc = ".".join(str(x) for x in err["loc"]) or "job"
    kind = err["type"]
    if kind == "extra_forbidden":
        return [DetflowInputError(source, loc, "a known key", "unknown key")]
    if kind == "missing":
        return [DetflowInputError(source, loc, "a value", "missing")]
    if kind == "literal_error":
        options = ctx["expected"].replace(" or ", ", ").replace("'", "")
        return [DetflowInputError(source, loc, f"one of {options}" if "," in options else options,
                                  repr(err.get("input"))[:80])]  # fmt: skip
    msg = re.sub(r"^(Value error, |Assertion failed, |Input should be )", "", err["msg"])
    if ", got " in msg or not err["loc"]:  # the message says what it got, or the whole job is the input
        return [DetflowInputError(source, loc, msg)]
    return [DetflowInputError(source, loc, msg, repr(err.get("input"))[:80])]


def _format_validation(exc: pydantic.ValidationError, source) -> DetflowInputError:
    """Every error pydantic found, one line each."""
    return DetflowInputError.combine([e for err in exc.errors() for e in _error_lines(err, source)])


def _read_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"YAML line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "YAML"
        problem, context = getattr(exc, "problem", None), getattr(exc, "context", None)
        what = f"{problem} ({context})" if problem and context else problem or context
        raise DetflowInputError(path, where, "valid YAML", what or str(exc).splitlines()[0]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DetflowInputError(path, "job", "a readable YAML text file", f"{type(exc).__name__}: {exc}") from None


def load_job(job: str | Path | dict | WFIJob | ExcamJob | CmosJob) -> WFIJob | ExcamJob | CmosJob:
    """Validate a job given as a YAML path, a dict (any spelling) or a job model."""
    if isinstance(job, (WFIJob, ExcamJob, CmosJob)):
        return job
    source = None
    if isinstance(job, (str, Path)):
        source = str(job)
        path = Path(job)
        if not path.is_file():
            raise DetflowInputError(path, "job", "an existing YAML job file", "no such file")
        raw = _read_yaml(path)
    else:
        raw = dict(job)
    if not isinstance(raw, dict):
        raise DetflowInputError(source, "job", "a mapping of job keys", type(raw).__name__)
    kind = pipeline_of(raw, source)
    if kind == "roman_excam":
        return _load_excam(raw, source)
    if kind == "cmos":
        return _load_cmos(raw, source)
    if kind == "pit":
        raw = from_pit(raw, source)
    elif source is not None:
        base = Path(source).resolve().parent
        for key in ("output", "wcs", "input"):
            if key in raw:
                raw[key] = resolve_str(base, raw[key])
        if isinstance(raw.get("noise"), dict) and raw["noise"].get("out"):
            raw["noise"] = dict(raw["noise"], out=resolve_str(base, raw["noise"]["out"]))
        if isinstance(raw.get("caldir"), dict):
            raw["caldir"] = {k: resolve_str(base, v) for k, v in raw["caldir"].items()}
        if isinstance(raw.get("input"), list):
            raw["input"] = [resolve_str(base, v) for v in raw["input"]]
    raw.setdefault("source", source)
    try:
        return WFIJob(**raw)
    except pydantic.ValidationError as exc:
        raise _format_validation(exc, source) from None


def _load_excam(raw: dict, source: str | None) -> ExcamJob:
    """An EXCAM job: paths relative to the job file, as the II&T configuration writes them."""
    raw = dict(raw)
    if source is not None:
        base = Path(source).resolve().parent
        for key in ("output", "export_dir", "input") + EXCAM_CAL_KEYS:
            if raw.get(key):
                raw[key] = resolve_str(base, raw[key])
        if isinstance(raw.get("input"), list):
            raw["input"] = [resolve_str(base, v) for v in raw["input"]]
    raw.setdefault("source", source)
    raw["pipeline"] = "roman_excam"
    try:
        return ExcamJob(**raw)
    except pydantic.ValidationError as exc:
        raise _format_validation(exc, source) from None


def _load_cmos(raw: dict, source: str | None) -> CmosJob:
    """A CMOS job: paths relative to the job file."""
    raw = dict(raw)
    if source is not None:
        base = Path(source).resolve().parent
        for key in ("stores", "output", "model_store", "report_dir"):
            if raw.get(key):
                raw[key] = resolve_str(base, raw[key])
        if isinstance(raw.get("ingest"), dict):
            raw["ingest"] = {k: (resolve_str(base, v) if k in ("bias", "dark", "flat", "fits_export") else v)
                             for k, v in raw["ingest"].items()}  # fmt: skip
    raw.setdefault("source", source)
    try:
        return CmosJob(**raw)
    except pydantic.ValidationError as exc:
        raise _format_validation(exc, source) from None
