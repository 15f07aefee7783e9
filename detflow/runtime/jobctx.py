"""The submitted job a driver runs for, seen from the code it runs: its record (kept on the scheduler and
beside the output) and its cancel flag. :mod:`detflow.runtime.submit` sets it; the executor reads it
(:func:`current_job`), so the executor never imports the submit module."""

from __future__ import annotations

import contextvars
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

from distributed import Client

from ..io.store.atomic import atomic_write

META = "detflow-jobs"


class JobCancelled(RuntimeError):
    """The job's record asked the driver to stop."""


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


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
        rec.update(fields, updated=now())
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
        atomic_write(path, json.dumps(rec, indent=1, default=str))
    except OSError:
        pass  # the scheduler's copy is the live one; the file is the durable one when it can be written
