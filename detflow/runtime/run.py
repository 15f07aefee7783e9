"""A job, any instrument: :func:`build` its lazy products (no computation; tests prove it with
``raise_if_dask_computes``) or :func:`run` it (validate, build, compute with progress, write a complete
store, export): through :func:`detflow.runtime.executor.execute` and the instrument's plan (after, for a
family in :data:`PREPARE`, the work its plan needs done first)."""

from __future__ import annotations

from pathlib import Path

import xarray as xr
from distributed import Client

from ..instruments.base import Job
from ..instruments.registry import INSTRUMENTS
from .cluster import get_client
from .cmos import prepare_cmos
from .execute import check_outputs, skipped_inputs, skipped_line  # noqa: F401  (the CLI's)
from .executor import execute
from .job import load_job

# work a family computes on the job's cluster before its plan can be built, by pipeline: prepare(job, client,
# console) -> the plan function (with what it computed), or None when nothing is left to run. CMOS: the ingest
# of the raw trees into the section stores the plan reads, and the analyses (computed in passes).
PREPARE = {"cmos": prepare_cmos}


def build(job: Job | dict | str | Path) -> dict[str, xr.Dataset]:
    """The lazy products of a job's first stage, by store group (WFI: ``{"l2": ...}``, or ``{"l2/WFI01": ...}``
    per detector; EXCAM: ``{"l2a": ..., "l2b": ...}``, the combines are built from the written store at run
    time; CMOS: the model groups, from the section stores, which must exist)."""
    job = load_job(job)
    return INSTRUMENTS[job.pipeline].plan(job).products


def run(job: Job | dict | str | Path, client: Client | None = None, *, scheduler: str | None = None,
        progress: bool = True, console=None) -> xr.DataTree | None:  # fmt: skip
    """Run a job end to end and return the written store as a DataTree.

    ``client``: an existing dask client (else ``scheduler`` address, else the job's cluster config,
    else an embedded LocalCluster). The output store appears only when every product is written. None: a
    job that writes no store (a CMOS ingest only).
    """
    job = load_job(job)
    plan_of, prepare = INSTRUMENTS[job.pipeline].plan, PREPARE.get(job.pipeline)
    if prepare is None:
        return execute(job, plan_of, client, scheduler=scheduler, progress=progress, console=console)
    check_outputs(job)  # before any work, as the executor does
    with get_client(job.cluster, client, scheduler) as c:
        plan_of = prepare(job, c, console)
        return None if plan_of is None else execute(job, plan_of, c, progress=progress, console=console)
