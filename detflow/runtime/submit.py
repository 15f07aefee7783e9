"""Jobs as a cluster service: submit, status, wait, cancel, list.

``submit`` validates a job where the user is (bad input fails before anything reaches the cluster),
then hands the whole job to the cluster as one *driver* task (``fire_and_forget``): the driver runs on
a worker, secedes from the worker's thread pool and drives the job's graphs through a worker client,
exactly as ``detflow run`` does from a laptop. The submitting client can exit at once.

The job record (id, state, times, output, error, phase) lives where a user would look, with no new
database:

* on the scheduler, in its metadata under ``("detflow-jobs", <id>)`` (any client can read it:
  ``detflow status``/``jobs``/``wait`` from another shell or a notebook), and
* beside the output, in ``<output>.job.json`` (it outlives a scheduler restart), and, when the job
  finishes, in the output store's root attributes (``job_record``).

States: ``queued`` -> ``running`` -> ``finished`` | ``failed`` | ``cancelled``. ``cancel`` sets a flag
the driver checks between polls of its graph (it then cancels its futures; the partial store is kept
for a re-run to resume, ``detflow clean`` removes it), and cancels the driver task itself if it has not
started. Two more states are *seen*, never written by the driver: ``lost`` (the scheduler answers but no
longer runs the job's driver, or does not know the job: it was restarted) and ``unknown`` (the record
beside the output says queued or running and its scheduler cannot be reached; ``note`` says since when
the record was last updated).

The output is locked for the job from ``submit`` to the job's end (:mod:`detflow.io.lock`): ``submit``
takes ``<out>.lock`` under the job's id, the driver adopts it (a driver restarted after its worker died
too) and releases it when the job ends. Another run or submission to that output is refused at once
while :func:`job_alive` says the job is queued or running.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import socket
import time
import uuid
from pathlib import Path

from distributed import Client, Future, fire_and_forget

from .._version import __version__
from ..io.lock import OutputLock, release_job_lock, set_default_probe, writing_for
from ..io.store import store_attrs
from .cluster import DetflowClusterError, SchedulerUnreachable, connect
from .job import load_job
from .jobctx import _CURRENT, META, JobCancelled, JobContext, write_record
from .jobctx import now as _now
from .run import build, check_outputs, run

TERMINAL = ("finished", "failed", "cancelled")
LOST_DRIVER = ("gone", "erred", "forgotten")  # the scheduler's state of a driver task that no longer runs
YOUNG = 60.0  # seconds: a job just submitted may not be on the scheduler (or its driver not yet) this long


def record_path(job) -> Path:
    """Where the job record is kept beside the output store: ``<store>.job.json`` (an ingest-only CMOS job:
    ``<stores>/ingest.job.json``)."""
    out = getattr(job, "store", None) or getattr(job, "output", None)  # a WFI job's store, not its ASDF export
    if out is None:
        return Path(job.stores) / "ingest.job.json"
    return Path(out).with_name(Path(out).name + ".job.json")


def driver_key(job_id: str) -> str:
    return f"detflow-driver-{job_id}"


def _driver(job_json: dict, job_id: str, path: str) -> dict:
    """Runs on a worker: the whole job, through a worker client, with the record kept up to date and the
    output's lock (taken by ``submit`` under the job's id) adopted, and released when the job ends."""
    from distributed import get_client, get_worker, secede

    client = get_client()
    secede()  # do not hold a worker thread while the job's own tasks run
    ctx = JobContext(client, job_id, Path(path))
    rec = ctx.record()
    attempt = int(rec.get("attempt", 0)) + 1
    try:
        job = load_job(job_json)
    except Exception as exc:  # (checked at submit: a detflow of another version on the workers?)
        return ctx.update(state="failed", finished=_now(), error=f"{type(exc).__name__}: {exc}")
    store = getattr(job, "store", None)
    try:
        if rec.get("cancel_requested"):
            return ctx.update(state="cancelled", finished=_now())
        done = store_attrs(store) if store is not None else None
        if done is not None and (done.get("job_record") or {}).get("id") == job_id:  # committed, then killed
            return ctx.update(state="finished", finished=done.get("finished") or _now(), phase="done")
        ctx.update(state="running", started=rec.get("started") or _now(), attempt=attempt,
                   worker=get_worker().address, host=socket.gethostname())  # fmt: skip
        token = _CURRENT.set(ctx)
        try:
            with writing_for(job_id, client.scheduler.address, functools.partial(job_alive, client=client)):
                run(job, client=client, progress=False)
            return ctx.update(state="finished", finished=_now(), phase="done")
        except JobCancelled:
            return ctx.update(state="cancelled", finished=_now())
        except Exception as exc:  # the record says why (and where the partial store is); the task ends normally
            notes = " ".join(getattr(exc, "__notes__", []))
            return ctx.update(state="failed", finished=_now(), error=f"{type(exc).__name__}: {exc}" + (
                f" ({notes})" if notes else ""))  # fmt: skip
        finally:
            _CURRENT.reset(token)
    finally:  # (not reached when the worker dies: the restarted driver adopts the lock)
        if store is not None:
            release_job_lock(store, job_id)


def submit(job, client: Client) -> str:
    """Validate ``job`` here, then start it on ``client``'s cluster and return its id at once. Checked
    first, as ``detflow run`` checks them: the output absent (or a detflow store and ``overwrite``), not
    locked by another run or job, writable; the inputs and references (``build``). The output's lock is
    then taken for the job."""
    cfg = load_job(job)
    probe = functools.partial(job_alive, client=client)
    check_outputs(cfg, probe=probe)
    build(cfg)  # every check a run makes before computing (inputs, references, shapes)
    job_id = f"{cfg.pipeline}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    path = record_path(cfg)
    address = client.scheduler.address
    store = getattr(cfg, "store", None)
    rec = {"id": job_id, "state": "queued", "pipeline": cfg.pipeline, "submitted": _now(), "updated": _now(),
           "output": str(getattr(cfg, "output", None) or getattr(cfg, "stores", "")), "record": str(path),
           "store": str(store) if store is not None else None, "scheduler": address,
           "source": cfg.source, "submitted_from": socket.gethostname(), "detflow_version": __version__,
           "job": cfg.model_dump(mode="json")}  # fmt: skip
    lock = OutputLock(store, job=job_id, scheduler=address, probe=probe).acquire() if store is not None else None
    try:
        client.set_metadata([META, job_id], rec)
        write_record(path, rec)
        fut = client.submit(_driver, cfg.model_dump(mode="json"), job_id, str(path), key=driver_key(job_id),
                            pure=False)  # fmt: skip
        fire_and_forget(fut)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return job_id


def _address(client: Client) -> str | None:
    return client.scheduler.address if client.scheduler is not None else None


def _ask(client: Client, fn, *args, **kwargs):
    """A call to the scheduler; a scheduler that does not answer is one error (not a traceback)."""
    address = _address(client)  # (a client that gave up reconnecting has forgotten it)
    try:
        return fn(*args, **kwargs)
    except OSError as exc:  # (CommClosedError, TimeoutError: OSErrors)
        raise SchedulerUnreachable.of(address or "scheduler", exc) from None


def _age(stamp: str | None) -> float:
    try:
        return (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(stamp)).total_seconds()
    except (TypeError, ValueError):
        return float("inf")


def _is_lost(rec: dict, driver: str) -> bool:
    if rec.get("state") not in ("queued", "running") or driver not in LOST_DRIVER:
        return False
    return not (rec.get("state") == "queued" and _age(rec.get("submitted")) < YOUNG)  # (not yet submitted)


def job_alive(holder: dict, client: Client | None = None, timeout: float = 5.0) -> bool | None:
    """Is the submitted job that holds an output's lock (``holder``: its ``job`` id and ``scheduler``)
    still queued or running? False when its record beside the output says it ended, or its scheduler
    does not know it, knows it ended or lost its driver, or does not answer (the cluster is gone); None
    when the scheduler cannot be asked from here (e.g. TLS without credentials). ``client``: used when
    it is that scheduler's, else a connection is made for the question (``timeout`` seconds at most)."""
    job_id, address = holder.get("job"), holder.get("scheduler")
    out = holder.get("output")
    rec = _read(Path(out).with_name(Path(out).name + ".job.json")) if out else None
    if rec and rec.get("id") == job_id and rec.get("state") in TERMINAL:
        return False
    if client is not None and address == _address(client):
        try:
            return _alive_on(client, job_id, holder)
        except OSError:
            return False
    if not address:
        return None
    try:
        with connect(address=address, timeout=timeout, check_versions=False, warmup=False) as c:
            return _alive_on(c, job_id, holder)
    except SchedulerUnreachable:
        return False
    except (DetflowClusterError, OSError):
        return None


def _alive_on(client: Client, job_id: str, holder: dict) -> bool:
    rec = client.get_metadata([META, job_id], default=None)
    if rec is None:  # unknown here: a restarted scheduler (or a lock taken a moment before the record)
        return _age(holder.get("since")) < YOUNG / 2
    if rec.get("state") in TERMINAL:
        return False
    return not _is_lost(rec, _driver_states(client, [job_id]).get(driver_key(job_id), "gone"))


def _read(path: Path) -> dict | None:
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


set_default_probe(job_alive)  # `detflow run` asks a job's scheduler about a lock that job holds


def jobs(client: Client) -> list[dict]:
    """Every job the scheduler knows, oldest first, with the driver task's state (a queued or running job
    whose driver the scheduler no longer runs is ``lost``)."""
    recs = _ask(client, client.get_metadata, [META], default={}) or {}
    states = _driver_states(client, list(recs))
    out = []
    for job_id, rec in recs.items():
        rec = dict(rec)
        rec["driver"] = states.get(driver_key(job_id), "gone")
        if _is_lost(rec, rec["driver"]):
            rec["state"] = "lost"  # the scheduler no longer runs its driver (its worker left for good, ...)
        out.append(rec)
    return sorted(out, key=lambda r: r.get("submitted", ""))


def _driver_states(client: Client, ids: list[str]) -> dict[str, str]:
    keys = [driver_key(i) for i in ids]

    def states(dask_scheduler, keys):
        return {k: dask_scheduler.tasks[k].state for k in keys if k in dask_scheduler.tasks}

    return _ask(client, client.run_on_scheduler, states, keys=keys) if keys else {}


def status(client: Client, job_id: str) -> dict:
    """One job's record, as the scheduler keeps it (``record_status`` reads the file beside the output)."""
    for rec in jobs(client):
        if rec["id"] == job_id:
            return rec
    raise KeyError(job_id)


def read_record(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def record_status(path: str | Path, timeout: float = 10.0, profile=None) -> dict:
    """The record beside an output (``<out>.job.json``), checked against its scheduler when it says the job
    is queued or running: the scheduler's view if it answers (``lost`` when it no longer runs the driver
    or does not know the job: it was restarted), else state ``unknown`` with a ``note`` saying that the
    scheduler did not answer and when the record was last updated."""
    rec = read_record(path)
    if rec.get("state") not in ("queued", "running"):
        return rec
    address, last = rec.get("scheduler"), rec.get("updated") or rec.get("started") or rec.get("submitted")
    if not address:
        return dict(rec, state="unknown", note=f"the record names no scheduler; last update {last}")
    try:
        with connect(profile, address=address, timeout=timeout, check_versions=False, warmup=False) as c:
            return {**rec, **status(c, rec["id"])}
    except KeyError:
        return dict(rec, state="lost", note=f"scheduler {address} does not know the job (it was restarted); "
                    f"last update {last}")  # fmt: skip
    except SchedulerUnreachable:
        return dict(rec, state="unknown", note=f"scheduler {address} unreachable at {_now()}; last update {last}")
    except DetflowClusterError as exc:
        return dict(rec, state="unknown", note=f"{exc}; last update {last}")


def cancel(client: Client, job_id: str) -> dict:
    """Ask a job to stop: its driver cancels its graph at the next poll (and a queued driver never starts;
    its output's lock is released here)."""
    rec = _ask(client, client.get_metadata, [META, job_id], default=None)
    if rec is None:
        raise KeyError(job_id)
    rec = dict(rec, cancel_requested=True, cancel_requested_at=_now(), updated=_now())
    _ask(client, client.set_metadata, [META, job_id], rec)
    if rec.get("state") == "queued":
        _ask(client, client.cancel, [Future(driver_key(job_id), client=client)], force=True)
        rec.update(state="cancelled", finished=_now())
        _ask(client, client.set_metadata, [META, job_id], rec)
        write_record(Path(rec["record"]), rec)
        if rec.get("store"):
            release_job_lock(rec["store"], job_id)
    return rec


def cluster_tasks(client: Client) -> dict[str, int]:
    """Tasks on the cluster by state (what ``wait`` shows as progress)."""

    def count(dask_scheduler):
        out: dict[str, int] = {}
        for ts in dask_scheduler.tasks.values():
            out[ts.state] = out.get(ts.state, 0) + 1
        return out

    return _ask(client, client.run_on_scheduler, count)


def wait(client: Client, job_id: str, poll: float = 1.0, timeout: float | None = None, on_poll=None) -> dict:
    """Block until the job ends (or is lost); ``on_poll(record, tasks)`` after every poll (progress
    display). ``TimeoutError`` after ``timeout`` seconds; :class:`SchedulerUnreachable` when the scheduler
    stops answering."""
    t0 = time.monotonic()
    while True:
        rec = status(client, job_id)
        if on_poll is not None:
            on_poll(rec, cluster_tasks(client))
        if rec.get("state") in TERMINAL + ("lost",):
            return rec
        if timeout is not None and time.monotonic() - t0 > timeout:
            raise TimeoutError(f"job {job_id} still {rec.get('state')} after {timeout:g} s")
        time.sleep(poll if timeout is None else max(0.0, min(poll, timeout - (time.monotonic() - t0))))
