"""One writer per output: a lock file beside it, ``<out>.lock``.

The lock is a small JSON file created with ``O_CREAT | O_EXCL`` (atomic, on a shared file system too),
naming who writes the output: host, pid and the process's start time (a reused pid is not taken for
the holder), since when, and for a submitted job its id and scheduler. A second writer is refused at
once with one line naming the holder. A lock is *stale*, and the next writer takes it over, when

* it was taken by a process on this host that is gone (``detflow run`` killed, a machine crash), or
* it belongs to a submitted job that is over: a *job probe* (:func:`detflow.runtime.submit.job_alive`)
  asks the job's scheduler, which does not know the job (restarted), knows it ended or lost its
  driver, or cannot be reached at all (the cluster is gone).

A lock taken by a process on another host (``detflow run`` there) cannot be checked from here: it is
refused until that run ends, or ``detflow clean OUT --force`` removes it (when you know it is gone).

A submitted job's lock is taken by ``detflow submit`` under the job's id and adopted by the job's
driver (and by a driver restarted after its worker died), which releases it when the job ends.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from ..errors import DetflowInputError

JobProbe = Callable[[dict], "bool | None"]
"""``probe(holder) -> True`` (the job is queued or running), ``False`` (it is over), ``None`` (cannot tell)."""


class OutputLocked(DetflowInputError):
    """Another writer holds the output's lock."""


def lock_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".lock")


@dataclass(frozen=True)
class LockContext:
    """Whom this process writes for: a submitted job's driver sets its job id (its lock is adopted, not
    refused), its scheduler and a probe that asks that scheduler about other jobs' locks."""

    job: str | None = None
    scheduler: str | None = None
    probe: JobProbe | None = None


_CONTEXT: contextvars.ContextVar[LockContext] = contextvars.ContextVar("detflow_lock", default=LockContext())
_DEFAULT_PROBE: list[JobProbe] = []


def set_default_probe(probe: JobProbe) -> None:
    """The probe used when the context names none (``detflow run``): registered by detflow.runtime.submit."""
    _DEFAULT_PROBE[:] = [probe]


@contextlib.contextmanager
def writing_for(job: str | None, scheduler: str | None = None, probe: JobProbe | None = None) -> Iterator[None]:
    token = _CONTEXT.set(LockContext(job, scheduler, probe))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def lock_context() -> LockContext:
    return _CONTEXT.get()


def _start_time(pid) -> float | None:
    try:
        return psutil.Process(int(pid)).create_time()
    except (psutil.Error, TypeError, ValueError):
        return None


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def read_lock(out: str | Path) -> dict | None:
    """The holder recorded in ``<out>.lock`` (None: no lock). A lock being written is waited for (1 s);
    one that never parses is ``{"unreadable": ...}``."""
    path = lock_path(out)
    text = ""
    for _ in range(20):
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text)
            if isinstance(holder, dict):
                return holder
        except ValueError:
            pass
        time.sleep(0.05)
    return {"unreadable": text[:80]}


def holder_alive(holder: dict, probe: JobProbe | None = None) -> bool | None:
    """Whether the lock's holder still writes: True, False (stale), None (cannot tell from here)."""
    if holder.get("job"):
        probe = probe or lock_context().probe or (_DEFAULT_PROBE[0] if _DEFAULT_PROBE else None)
        return probe(holder) if probe is not None else None
    if "pid" not in holder or holder.get("host") != socket.gethostname():
        return None
    started = _start_time(holder["pid"])
    if started is None:
        return False
    return holder.get("pid_started") is None or abs(started - float(holder["pid_started"])) < 1.0


def describe(holder: dict) -> str:
    if "unreadable" in holder:
        return f"a lock file that is not detflow's JSON ({holder['unreadable']!r})"
    who = f"job {holder['job']} (scheduler {holder.get('scheduler')})" if holder.get("job") else "a run"
    return f"{who}, pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"


def _refusal(out: Path, holder: dict, alive: bool | None) -> OutputLocked:
    if alive is None:
        hint = f"it cannot be checked from here; if that writer is gone: detflow clean {out} --force"
    else:
        hint = f"wait for it, or stop it (detflow cancel {holder['job']})" if holder.get("job") else "wait for it"
    return OutputLocked(out, "lock", "no other writer of this output",
                        f"{lock_path(out).name} held by {describe(holder)}: {hint}")  # fmt: skip


def check_unlocked(out: str | Path, probe: JobProbe | None = None) -> None:
    """Refuse at once an output that a live writer other than this job holds (a stale lock passes: the
    writer takes it over)."""
    out = Path(out)
    holder = read_lock(out)
    if holder is None:
        return
    job = lock_context().job
    if job and holder.get("job") == job:
        return
    alive = holder_alive(holder, probe)
    if alive is not False:
        raise _refusal(out, holder, alive)


class OutputLock:
    """``<out>.lock`` held by this process (``job``: for that submitted job; adopted if the job holds it)."""

    def __init__(self, out: str | Path, job: str | None = None, scheduler: str | None = None,
                 probe: JobProbe | None = None):  # fmt: skip
        self.out = Path(out)
        self.path = lock_path(self.out)
        self.job, self.scheduler, self.probe = job, scheduler, probe
        self.token = uuid.uuid4().hex
        self.adopted = False

    def record(self) -> dict:
        pid = os.getpid()
        rec = {"detflow_lock": 1, "output": str(self.out), "host": socket.gethostname(), "pid": pid,
               "pid_started": _start_time(pid), "since": _now(), "token": self.token}  # fmt: skip
        if self.job:
            rec.update(job=self.job, scheduler=self.scheduler)
        return rec

    def acquire(self) -> "OutputLock":
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_lock(self.out)
                if holder is None:
                    continue  # released meanwhile
                if self.job and holder.get("job") == self.job:  # our job's (submit, an earlier driver)
                    self._write(holder)
                    self.adopted = True
                    return self
                alive = holder_alive(holder, self.probe)
                if alive is False:
                    self._break(holder)
                    continue
                raise _refusal(self.out, holder, alive) from None
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self.record()))
            return self
        raise OutputLocked(self.out, "lock", "a lock file that can be taken", f"{self.path} keeps changing")

    def _write(self, holder: dict) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{self.token[:8]}")
        tmp.write_text(json.dumps(dict(self.record(), since=holder.get("since", _now()))))
        os.replace(tmp, self.path)

    def _break(self, holder: dict) -> None:
        """Remove a stale lock, unless another writer replaced it meanwhile (one breaker at a time)."""
        guard = self.path.with_name(self.path.name + ".break")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            with contextlib.suppress(OSError):
                if time.time() - guard.stat().st_mtime > 30:  # a breaker that died
                    guard.unlink()
            time.sleep(0.1)
            return
        try:
            if read_lock(self.out) == holder:
                self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)
            guard.unlink(missing_ok=True)

    def release(self) -> None:
        holder = read_lock(self.out)
        if holder is not None and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)


def release_job_lock(out: str | Path, job: str) -> bool:
    """Remove ``<out>.lock`` if submitted job ``job`` holds it (the job ended)."""
    holder = read_lock(out)
    if holder is not None and holder.get("job") == job:
        lock_path(out).unlink(missing_ok=True)
        return True
    return False
