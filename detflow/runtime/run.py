"""A job, any instrument: :func:`build` its lazy products (no computation; tests prove it with
``raise_if_dask_computes``) or :func:`run` it (validate, build, compute with progress, write a complete
store, export): through :func:`detflow.runtime.executor.execute` and the instrument's plan, or (CMOS, until
its models move onto the executor) the family's own driver."""

from __future__ import annotations

from pathlib import Path

import xarray as xr
from distributed import Client

from ..instruments.base import Job
from ..instruments.registry import INSTRUMENTS
from .cmos import run_cmos, validate_cmos
from .execute import check_outputs, skipped_inputs, skipped_line  # noqa: F401  (the CLI's)
from .executor import execute
from .job import load_job

# the families not on the executor yet: pipeline -> (build, run)
DRIVERS = {"cmos": (validate_cmos, run_cmos)}


def build(job: Job | dict | str | Path) -> dict[str, xr.Dataset]:
    """The lazy products of a job's first stage, by store group (WFI: ``{"l2": ...}``, or ``{"l2/WFI01": ...}``
    per detector; EXCAM: ``{"l2a": ..., "l2b": ...}``, the combines are built from the written store at run
    time; CMOS: the section stores it reads)."""
    job = load_job(job)
    if job.pipeline in DRIVERS:
        return DRIVERS[job.pipeline][0](job)
    return INSTRUMENTS[job.pipeline].plan(job).products


def run(job: Job | dict | str | Path, client: Client | None = None, *, scheduler: str | None = None,
        progress: bool = True, console=None) -> xr.DataTree:  # fmt: skip
    """Run a job end to end and return the written store as a DataTree.

    ``client``: an existing dask client (else ``scheduler`` address, else the job's cluster config,
    else an embedded LocalCluster). The output store appears only when every product is written.
    """
    job = load_job(job)
    if job.pipeline in DRIVERS:
        return DRIVERS[job.pipeline][1](job, client, scheduler=scheduler, progress=progress, console=console)
    return execute(job, INSTRUMENTS[job.pipeline].plan, client, scheduler=scheduler, progress=progress,
                   console=console)  # fmt: skip
