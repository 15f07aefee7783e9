"""What an instrument provides to the engine, and the job model every instrument's job extends.

An instrument is a module pair: ``instruments/<name>.py`` holds its knowledge as data (geometry, header
keywords, recipes; imported by readers and steps), ``instruments/<name>_job.py`` its job model (a
:class:`Job` subclass: the keys only this instrument has) and its :class:`Instrument` record (the foreign
spellings of its jobs, e.g. the PIT ``gen_cal_image`` YAML or the II&T ``config_file.yaml``).
:mod:`detflow.instruments.registry` lists the instruments; the runtime reads jobs through it.

Why the job model and the plans live here and not in ``runtime/`` (as DESIGN.md first drew it): an
instrument's job keys and its plan are instrument knowledge, and a new detector must be addable without
touching the engine. The runtime imports instruments (to read jobs and execute plans); instruments never
import the runtime, so an instrument module cannot reach the cluster: a plan builds lazy graphs only.

The job model is pydantic with ``extra="forbid"``: an unknown key is an error naming the key and file.
The keys every job has are declared once here (:class:`Job`, and :class:`FramesJob` for the pipelines
that calibrate frames); an instrument declares only its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import pydantic
import xarray as xr
from pydantic import Field

from ..steps.catalog import all_steps, family_steps

log = logging.getLogger("detflow")

OnError = Literal["raise", "skip"]
ON_ERROR_HELP = ("a damaged input file (unreadable, truncated): 'raise' fails the job naming the file and why; "
                 "'skip' leaves it out and lists it (console, exit summary, the store's skipped_inputs)")  # fmt: skip


class Model(pydantic.BaseModel):
    """A block of a job: unknown keys are errors."""

    model_config = pydantic.ConfigDict(extra="forbid")


class ClusterConfig(Model):
    """A job's ``cluster:`` block. Without ``profile`` (and ``$DETFLOW_PROFILE``): an embedded LocalCluster.
    With one (``cluster: {profile: slurm}``), the profile's settings, the keys set here on top (only those
    written in the job: defaults do not override the profile). See :mod:`detflow.cluster`."""

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


class Job(Model):
    """The keys of every job. ``pipeline`` names the instrument (each subclass narrows it to its name);
    ``steps`` sets the parameters of the steps of its family (:attr:`STEP_FAMILY`)."""

    # keys holding paths written relative to the job file: ``key``, ``key.sub`` (in a block), ``key.*`` (every
    # value of a mapping); a list value has each item resolved
    PATH_KEYS: ClassVar[tuple[str, ...]] = ("output",)
    # keys accepted besides the fields (another spelling of a field or step parameter, moved by a validator)
    ALIAS_KEYS: ClassVar[tuple[str, ...]] = ()
    # the step family whose steps ``steps:`` may name (None: the job has no steps)
    STEP_FAMILY: ClassVar[str | None] = None

    pipeline: str
    output: Path | None = Field(None, description="output zarr store (.zarr)")
    overwrite: bool = Field(False, description="replace an existing detflow output (never any other file)")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    steps: dict[str, dict[str, Any]] = Field(default_factory=dict, description="parameters per step")
    source: str | None = Field(None, description="the file this job was read from")

    @property
    def store(self) -> Path | None:
        """The zarr store the run writes."""
        return self.output

    def export_paths(self) -> list[Path]:
        """The files the run writes besides its store (checked absent before any work)."""
        return []

    def step_params(self) -> dict[str, dict]:
        """Every step's parameters (an instrument adds the ones its own keys set)."""
        return {k: dict(v) for k, v in self.steps.items()}

    @pydantic.field_validator("steps")
    @classmethod
    def _steps_known(cls, steps: dict) -> dict:
        """Every unknown step name and wrong parameter, each at its place (``steps.<name>.<key>``); a job
        without a step family has no steps."""
        known = list(family_steps(cls.STEP_FAMILY)) if cls.STEP_FAMILY is not None else []
        check_steps(steps, [(("steps", n), n) for n in steps], known)
        return steps


class FramesJob(Job):
    """A job that calibrates input frames: ``input`` and the damaged-input policy."""

    input: str | list[str] = Field(..., description="input file, directory, glob, or a list of these")
    on_error: OnError = Field("raise", description=ON_ERROR_HELP)

    PATH_KEYS: ClassVar[tuple[str, ...]] = ("output", "input")

    @pydantic.model_validator(mode="before")
    @classmethod
    def _all_or_nothing(cls, data: Any) -> Any:
        """``all_or_nothing`` (released before ``on_error``) is read as ``on_error``: true = raise, false = skip."""
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


class StepErrors(ValueError):
    """Step names and parameters a job got wrong, each at its place (``steps.<name>.<key>``), in the
    form of pydantic's ``errors()`` (so that each becomes one line)."""

    def __init__(self, items: list[dict]):
        self.items = items
        super().__init__("; ".join(f"{'.'.join(map(str, i['loc']))}: {i['msg']}" for i in items))


def check_steps(params: dict[str, dict], names: list[tuple[tuple, str]], known: list[str]) -> None:
    """Raise :class:`StepErrors` for every unknown step name (``names``: ``(location, name)`` of ``steps``
    and the recipe) and every wrong parameter of a known one."""
    reg = all_steps()
    items = []
    for loc, name in names:
        if name not in known:
            want = f"a step name ({', '.join(sorted(known))})" if known else "no step (this pipeline has none)"
            items.append({"type": "value_error", "loc": loc, "input": name, "msg": want})
    for name, kw in params.items():
        if name not in known:
            continue
        try:
            reg[name].params(**kw)
        except pydantic.ValidationError as exc:
            items += [dict(e, loc=("steps", name, *e["loc"])) for e in exc.errors()]
    if items:
        raise StepErrors(items)


def resolve_path(base: Path, value) -> Path:
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else (base / p)


def resolve_str(base: Path, value):
    """A path written in a job file, relative to its folder; other values (wrong types) as they are."""
    return str(resolve_path(base, value)) if isinstance(value, (str, Path)) and str(value) else value


def resolve_paths(raw: dict, base: Path, keys: tuple[str, ...]) -> dict:
    """``raw`` with the values at ``keys`` (see :attr:`Job.PATH_KEYS`) resolved against ``base``."""
    raw = dict(raw)
    for key in keys:
        head, _, rest = key.partition(".")
        if head not in raw or raw[head] is None:
            continue
        if rest:
            if not isinstance(raw[head], dict):
                continue  # the model reports the wrong type
            if rest == "*":
                raw[head] = {k: _resolved(base, v) for k, v in raw[head].items()}
            else:
                raw[head] = resolve_paths(raw[head], base, (rest,))
        else:
            raw[head] = _resolved(base, raw[head])
    return raw


def _resolved(base: Path, value):
    return [resolve_str(base, v) for v in value] if isinstance(value, list) else resolve_str(base, value)


@dataclass(frozen=True)
class Spelling:
    """A foreign spelling of an instrument's jobs: the keys that give it away and the translation into
    the instrument's own keys (``translate(raw, source) -> dict``, paths resolved against the job file)."""

    name: str
    keys: frozenset[str]
    translate: Callable[[dict, str | None], dict]
    needs: str = ""  # the keys a job of this spelling needs, as a user reads them


# read(group, chunks) -> the lazy dataset of a group an earlier stage wrote into the store being written
ReadGroup = Callable[[str, dict | None], xr.Dataset]


@dataclass(frozen=True)
class Reduce:
    """A stage that reduces across frames (combines, per-pixel fits, noise maps...), run after the groups it
    reads are written: ``build(read, side)`` returns its lazy groups (no computation), reading its inputs
    from the store tile by tile with ``read``; ``side`` holds the results of :attr:`Plan.side`. An empty
    result writes nothing. ``encodings`` (group -> variable -> zarr encoding) as :attr:`Plan.encodings`: a
    sharded group's dask chunks must hold whole shards (each task writes its own shard files); a stage may
    set them while building (the shards of an event table whose size is known only then)."""

    description: str
    build: Callable[[ReadGroup, dict], dict[str, xr.Dataset]]
    encodings: dict[str, dict] | None = None


@dataclass
class Plan:
    """What a job computes, built without computing anything (``Instrument.plan(job)``), for the executor
    (:mod:`detflow.runtime.executor`): the per-frame stage's lazy groups, written in one graph; small lazy
    side results computed with them; the reduce stages in order; the exports made from the committed store."""

    products: dict[str, xr.Dataset]
    description: str
    encodings: dict[str, dict] | None = None  # group -> variable -> zarr encoding (chunks, shards, codecs)
    side: dict[str, Any] = field(default_factory=dict)
    reduces: list[Reduce] = field(default_factory=list)
    exports: list[Callable[[Path], list[Path]]] = field(default_factory=list)  # (store) -> files written
    record_group: str | None = None  # the group whose steps and history the root records (default: the first)
    attrs: dict[str, Any] = field(default_factory=dict)  # more root attributes: the instrument's record of the run


@dataclass(frozen=True)
class Instrument:
    """One detector family as the engine sees it: ``name`` is the job's ``pipeline`` value; ``plan`` builds
    a job's :class:`Plan`."""

    name: str
    job: type[Job]
    summary: str
    needs: str  # the keys a job needs, as a user reads them (for a job that names no pipeline)
    spellings: tuple[Spelling, ...] = field(default_factory=tuple)
    plan: Callable[[Job], Plan] | None = None
