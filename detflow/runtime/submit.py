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
the driver checks between polls of its graph (it then cancels its futures; the writer removes the
partial store), and cancels the driver task itself if it has not started.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from distributed import Client, Future, fire_and_forget

from .. import __version__
from .config import load_job

META = "detflow-jobs"
TERMINAL = ("finished", "failed", "cancelled")


class JobCancelled(RuntimeError):
    """The job's record asked the driver to stop."""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def record_path(job) -> Path:
    """Where the job record is kept beside the output store: ``<store>.job.json`` (an ingest-only CMOS job:
    ``<stores>/ingest.job.json``)."""
    out = getattr(job, "store", None) or getattr(job, "output", None)  # a WFI job's store, not its ASDF export
    if out is None:
        return Path(job.stores) / "ingest.job.json"
    return Path(out).with_name(Path(out).name + ".job.json")


def driver_key(job_id: str) -> str:
    return f"detflow-driver-{job_id}"


@dataclass
class JobContext:
    """The running job, seen from its driver: updates the record, answers "was I cancelled?"."""

    client: Client
    job_id: str
    path: Path

    def record(self) -> dict:
        return self.client.get_metadata([META, self.job_id], default={}) or {}

    def update(self, **fields) -> dict:
        rec = self.record()
        rec.update(fields)
        self.client.set_metadata([META, self.job_id], rec)
        write_record(self.path, rec)
        return rec

    def cancel_requested(self) -> bool:
        return bool(self.record().get("cancel_requested"))


_CURRENT: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar("detflow_job", default=None)


def current_job() -> JobContext | None:
    """The submitted job this code runs for (None under ``detflow run``)."""
    return _CURRENT.get()


def write_record(path: Path, rec: dict) -> None:
    """Write the record atomically (a reader never sees half a file)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}")
        tmp.write_text(json.dumps(rec, indent=1, default=str))
        os.replace(tmp, path)
    except OSError:
        pass  # the scheduler's copy is the live one; the file is the durable one when it can be written


def _driver(job_json: dict, job_id: str, path: str) -> dict:
    """Runs on a worker: the whole job, through a worker client, with the record kept up to date."""
    from distributed import get_client, get_worker, secede

    from .run import run

    client = get_client()
    secede()  # do not hold a worker thread while the job's own tasks run
    ctx = JobContext(client, job_id, Path(path))
    rec = ctx.record()
    attempt = int(rec.get("attempt", 0)) + 1
    if rec.get("cancel_requested"):
        return ctx.update(state="cancelled", finished=_now())
    ctx.update(state="running", started=rec.get("started") or _now(), attempt=attempt,
               worker=get_worker().address, host=socket.gethostname())  # fmt: skip
    token = _CURRENT.set(ctx)
    try:
        job = load_job(job_json)
        run(job, client=client, progress=False)
        return ctx.update(state="finished", finished=_now(), phase="done")
    except JobCancelled:
        return ctx.update(state="cancelled", finished=_now())
    except Exception as exc:  # the record says why; the task itself ends normally
        return ctx.update(state="failed", finished=_now(), error=f"{type(exc).__name__}: {exc}")
    finally:
        _CURRENT.reset(token)


def submit(job, client: Client) -> str:
    """Validate ``job`` here, then start it on ``client``'s cluster and return its id at once."""
    cfg = load_job(job)
    from .run import build

    build(cfg)  # every check a run makes before computing (inputs, references, output absent)
    job_id = f"{cfg.pipeline}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    path = record_path(cfg)
    rec = {"id": job_id, "state": "queued", "pipeline": cfg.pipeline, "submitted": _now(),
           "output": str(getattr(cfg, "output", None) or getattr(cfg, "stores", "")), "record": str(path),
           "source": cfg.source, "submitted_from": socket.gethostname(), "detflow_version": __version__,
           "job": cfg.model_dump(mode="json")}  # fmt: skip
    client.set_metadata([META, job_id], rec)
    write_record(path, rec)
    fut = client.submit(_driver, cfg.model_dump(mode="json"), job_id, str(path), key=driver_key(job_id), pure=False)
    fire_and_forget(fut)
    return job_id


def jobs(client: Client) -> list[dict]:
    """Every job the scheduler knows, oldest first, with the driver task's state."""
    recs = client.get_metadata([META], default={}) or {}
    states = _driver_states(client, list(recs))
    out = []
    for job_id, rec in recs.items():
        rec = dict(rec)
        rec["driver"] = states.get(driver_key(job_id), "gone")
        if rec.get("state") in ("queued", "running") and rec["driver"] in ("gone", "erred", "forgotten"):
            rec["state"] = "lost"  # the scheduler no longer runs its driver (e.g. it was restarted)
        out.append(rec)
    return sorted(out, key=lambda r: r.get("submitted", ""))


def _driver_states(client: Client, ids: list[str]) -> dict[str, str]:
    keys = [driver_key(i) for i in ids]

    def states(dask_scheduler, keys):
        return {k: dask_scheduler.tasks[k].state for k in keys if k in dask_scheduler.tasks}

    return client.run_on_scheduler(states, keys=keys) if keys else {}


def status(client: Client, job_id: str) -> dict:
    """One job's record, as the scheduler keeps it (``read_record`` reads the file beside the output)."""
    for rec in jobs(client):
        if rec["id"] == job_id:
            return rec
    raise KeyError(job_id)


def read_record(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def cancel(client: Client, job_id: str) -> dict:
    """Ask a job to stop: its driver cancels its graph at the next poll (and a queued driver never starts)."""
    rec = client.get_metadata([META, job_id], default=None)
    if rec is None:
        raise KeyError(job_id)
    rec = dict(rec, cancel_requested=True, cancel_requested_at=_now())
    client.set_metadata([META, job_id], rec)
    if rec.get("state") == "queued":
        client.cancel([Future(driver_key(job_id), client=client)], force=True)
        rec.update(state="cancelled", finished=_now())
        client.set_metadata([META, job_id], rec)
        write_record(Path(rec["record"]), rec)
    return rec


def cluster_tasks(client: Client) -> dict[str, int]:
    """Tasks on the cluster by state (what ``wait`` shows as progress)."""

    def count(dask_scheduler):
        out: dict[str, int] = {}
        for ts in dask_scheduler.tasks.values():
            out[ts.state] = out.get(ts.state, 0) + 1
        return out

    return client.run_on_scheduler(count)


def wait(client: Client, job_id: str, poll: float = 1.0, timeout: float | None = None, on_poll=None) -> dict:
    """Block until the job ends; ``on_poll(record, tasks)`` after every poll (progress display)."""
    t0 = time.monotonic()
    while True:
        rec = status(client, job_id)
        if on_poll is not None:
            on_poll(rec, cluster_tasks(client))
        if rec.get("state") in TERMINAL + ("lost",):
            return rec
        if timeout is not None and time.monotonic() - t0 > timeout:
            raise TimeoutError(f"job {job_id} still {rec.get('state')} after {timeout} s")
        time.sleep(poll)
