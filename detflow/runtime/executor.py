"""The one executor: a job's :class:`~detflow.instruments.base.Plan` run on a cluster into one store.

check the outputs -> plan (the instrument builds it: nothing computed) -> per-frame stage (the plan's
groups, written by region, with the side results and the inputs' checksums in the same graph) -> reduce
stages in order (each reads what the earlier ones wrote, through :mod:`detflow.io.readback`) ->
provenance -> atomic commit -> exports from the committed store. A run that dies leaves the partial store
with the regions done; the same job run again resumes it (:class:`~detflow.io.store.StoreWriter`).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Callable

import xarray as xr
from distributed import Client

from ..instruments.base import Job, Plan
from ..io.readback import open_group
from ..io.store import open_store
from .cluster import get_client
from .execute import check_outputs, checksum_futures, compute, finish_store, log_cluster, open_writer

log = logging.getLogger("detflow")


def execute(job: Job, plan_of: Callable[[Job], Plan], client: Client | None = None, *, scheduler: str | None = None,
            progress: bool = True, console=None) -> xr.DataTree:  # fmt: skip
    """Run ``job`` (its plan: ``plan_of(job)``) and return the written store as a DataTree (complete or
    absent). ``client``: an existing dask client (else ``scheduler``, else the job's cluster config, else an
    embedded LocalCluster)."""
    check_outputs(job)
    plan = plan_of(job)
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    with get_client(job.cluster, client, scheduler) as c:
        if console is not None and getattr(c, "dashboard_link", None):
            console.print(f"dask dashboard: {c.dashboard_link}")
        log_cluster(c)
        with open_writer(job, plan.products) as writer:
            sums = checksum_futures(c, plan.products)  # computed on the cluster alongside the run
            writer.watch_checksums(sums)
            side_names = list(plan.side)
            done = compute(c, [writer.add_all(plan.products, plan.encodings), *plan.side.values()], progress, console,
                           plan.description)  # fmt: skip
            side = dict(zip(side_names, done[1:]))
            groups = list(plan.products)

            def read(group: str, chunks: dict | None = None) -> xr.Dataset:
                return open_group(writer.tmp, group, chunks)

            for stage in plan.reduces:
                new = stage.build(read, side)
                if new:
                    compute(c, writer.add_all(new, stage.encodings), progress, console, stage.description)
                    groups += list(new)
            record = plan.products.get(plan.record_group or next(iter(plan.products), ""), xr.Dataset())
            finish_store(writer, c, sums, job, plan.products, groups, record, started, plan.attrs)
    for export in plan.exports:
        for path in export(job.store):
            log.info("export: %s", path)
            if console is not None:
                console.print(f"export: {path}")
    return open_store(job.store)
