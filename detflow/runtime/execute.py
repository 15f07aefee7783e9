"""What every family's run does around its graphs: check the outputs, open the store writer, compute with
progress (or a submitted job's record and cancel flag), record provenance, commit. The executor (:mod:`.executor`) calls these for every instrument's plan;
:mod:`.run` hands a job to it (after a CMOS job's ingest and analyses, :mod:`.cmos`)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging

import xarray as xr
from dask.base import collections_to_expr
from distributed import Client, wait

from .._version import __version__
from ..io.caldir import sha256
from ..io.provenance import log_skipped, skipped_inputs, skipped_line, versions  # noqa: F401  (the drivers')
from ..io.store import StoreWriter, check_output, product_inputs
from .jobctx import JobCancelled, current_job
from .progress import RichProgressBar

log = logging.getLogger("detflow")


def checksum_futures(c: Client, products: dict[str, xr.Dataset]) -> dict:
    """Futures of the sha256 of every input and reference file of ``products``, by path."""
    files = sorted({i["path"] for ds in products.values() for i in ds.attrs.get("inputs", [])} |
                   {r["path"] for ds in products.values() for r in ds.attrs.get("reference_files", [])})  # fmt: skip
    return dict(zip(files, c.map(sha256, files, pure=False)))


def compute(c: Client, delayed, progress: bool, console, description: str) -> list:
    """Compute one store write (or a list of collections computed together) on the cluster, with a
    progress bar (a submitted job: its record's phase and cancel flag instead), and return the results;
    re-raises the first task error (the partial store is kept with the regions done, for a re-run to
    resume, or removed when the writer has no resume key)."""
    collections = delayed if isinstance(delayed, list) else [delayed]
    if log.isEnabledFor(logging.INFO):  # counting materialises the graph: only when it is shown
        tasks = len(collections_to_expr(collections, optimize_graph=False).__dask_graph__())
        log.info("%s: computing %d tasks", description, tasks)
    futures = c.compute(collections)
    try:
        return _follow(c, futures, progress, console, description)
    except BaseException:
        # the keys go from the scheduler now: a failed task kept there (its futures live on in the traceback)
        # would be handed, failed, to the next run of the same graph on this client (a resume)
        c.cancel(futures, force=True)
        raise


def _follow(c: Client, futures: list, progress: bool, console, description: str) -> list:
    job = current_job()
    if job is not None:  # a submitted job: keep its record's phase, stop when it is cancelled
        job.update(phase=description)
        while True:
            try:
                wait(futures, timeout=2.0)
                break
            except TimeoutError:
                if job.cancel_requested():
                    raise JobCancelled(f"job {job.job_id} cancelled during {description}") from None
        return c.gather(futures)
    if progress:
        RichProgressBar([f.key for f in futures], scheduler=c.scheduler.address, console=console,
                        description=description)  # fmt: skip
    result = c.gather(futures)
    log.info("%s: done", description)
    return result


def log_cluster(c: Client) -> None:
    """An INFO record of the cluster a job runs on."""
    if log.isEnabledFor(logging.INFO):
        threads = c.nthreads()
        log.info("cluster: %s, %d worker(s), %d thread(s)", c.scheduler.address, len(threads), sum(threads.values()))


def check_outputs(job, probe=None) -> None:
    """What every run checks before any work (``detflow run``, ``submit``): the output store absent (or
    a detflow store and ``overwrite``), not locked by another writer, its directory writable; each file
    the job exports absent (or a file and ``overwrite``)."""
    if job.store is not None:
        check_output(job.store, job.overwrite, probe=probe)
    for f in job.export_paths():
        check_output(f, job.overwrite, kind="file")


def resume_key(job) -> str:
    """A hash of what a job computes (not where it runs): the partial store of a run that died is found
    again by a run of the same job, which then computes only the regions not done (if its inputs are
    the same files: the writer keys the resume on their identity too, ``StoreWriter(inputs=...)``)."""
    spec = {k: v for k, v in job.model_dump(mode="json").items() if k not in ("source", "cluster", "overwrite")}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


def job_record_attrs() -> dict:
    """``{"job_record": ...}`` for a submitted job (its id, submission and attempt), else nothing."""
    job = current_job()
    if job is None:
        return {}
    rec = {k: v for k, v in job.record().items() if k != "job"}
    return {"job_record": dict(rec, state="finished")}


def regions_record(writer: StoreWriter) -> dict:
    """The store's ``regions`` attribute: how many there were, how many an earlier run had done, whether
    this run resumed one (and why not, when it started afresh)."""
    return dict(writer.regions, resumed=writer.resumed, **({"restarted": writer.restarted} if writer.restarted else {}))


def open_writer(job, products: dict[str, xr.Dataset], extra_inputs=()) -> StoreWriter:
    """The store writer of a job: resumable (its key: the job), keyed on the products' inputs' identity."""
    return StoreWriter(job.store, overwrite=job.overwrite, resume_key=resume_key(job),
                       inputs=product_inputs(products) + [str(p) for p in extra_inputs])  # fmt: skip


def finish_store(writer: StoreWriter, c: Client, sums: dict, job, products: dict[str, xr.Dataset],
                 groups: list[str], record: xr.Dataset, started: str, attrs: dict | None = None) -> None:  # fmt: skip
    """Provenance and commit: each group of ``products`` gets its inputs and reference files with
    checksums, the root all of them, the job, versions, times, and ``record``'s steps and history (and
    ``attrs``, the instrument's own record of the run)."""
    sums = dict(zip(sums, c.gather(list(sums.values()))))
    writer.check_checksums(sums)  # a resumed store: the inputs' content is the content it was started from
    skipped = skipped_inputs(products)  # damaged inputs left out (the poison frames of a data set)
    inputs, references = [], []
    for name, ds in products.items():
        ins = [dict(i, sha256=sums[i["path"]]) for i in ds.attrs.get("inputs", [])]
        refs = [dict(r, sha256=sums[r["path"]]) for r in ds.attrs.get("reference_files", [])]
        writer.set_group_attrs(name, {"inputs": ins, "reference_files": refs})
        inputs += [i for i in ins if i not in inputs]  # groups of one exposure share their inputs
        references += [r for r in refs if r not in references]
    writer.set_root_attrs({
        "detflow_version": __version__,
        "pipeline": job.pipeline,
        "products": groups,
        "job": job.model_dump(mode="json"),
        "inputs": inputs,
        "reference_files": references,
        "versions": versions(),
        "started": started,
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "steps": record.attrs.get("steps", []),
        "history": record.attrs.get("history", []),
        "regions": regions_record(writer),
        "skipped_inputs": skipped,
        **(attrs or {}),
        **job_record_attrs(),
    })  # fmt: skip
    if current_job() is not None:
        current_job().update(regions=regions_record(writer), skipped_inputs=skipped)
    writer.commit()
    log.info("store committed: %s", writer.path)
