"""``connect()`` / ``start()``: a client (and the cluster, when detflow starts one) for a profile."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Self

from distributed import Client

from . import backends
from .base import DetflowClusterError, SchedulerUnreachable
from .models import Profile
from .profiles import resolve
from .tls import security_for
from .versions import check_versions as _check_versions
from .worker import WarmupPlugin


class ClusterHandle:
    """A client and, when detflow started one, its cluster. ``close()`` (or ``with``) releases both."""

    def __init__(self, client: Client, cluster=None, profile: Profile | None = None, owns_cluster: bool = True):
        self.client = client
        self.cluster = cluster
        self.profile = profile
        self._owns = owns_cluster

    @property
    def dashboard_link(self) -> str | None:
        return getattr(self.client, "dashboard_link", None)

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            if self.cluster is not None and self._owns:
                self.cluster.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self.client.scheduler.address if self.client.scheduler else "?"
        return f"<ClusterHandle {self.profile.summary() if self.profile else ''} scheduler={where}>"


def start(profile: str | os.PathLike | Profile | None = None, *, address: str | None = None,
          scheduler_file: str | os.PathLike | None = None, n_workers: int | None = None,
          threads_per_worker: int | None = None, memory_limit: str | float | None = None,
          config=None, warmup: bool | None = None, check_versions: bool | None = None,
          **overrides) -> ClusterHandle:  # fmt: skip
    """Start or reach the cluster a profile describes and return a :class:`ClusterHandle` (not a context
    manager by itself: call ``close()``, or use :func:`connect`). Arguments as :func:`connect`."""
    prof = resolve(profile, config=config, address=address, scheduler_file=scheduler_file, n_workers=n_workers,
                   threads_per_worker=threads_per_worker, memory_limit=memory_limit, warmup=warmup,
                   check_versions=check_versions, **overrides)  # fmt: skip
    return start_profile(prof)


def start_profile(prof: Profile) -> ClusterHandle:
    """:func:`start` for a resolved :class:`Profile`."""
    cluster, owns = None, True
    if prof.kind == "address":
        security = security_for(prof)
        try:
            client = Client(prof.address, security=security, timeout=prof.timeout, set_as_default=False)
        except OSError as exc:  # (TimeoutError and distributed's CommClosedError are OSErrors)
            raise SchedulerUnreachable.of(prof.address, exc, prof.timeout) from None
    elif prof.kind == "scheduler_file":
        path = Path(os.path.expandvars(str(prof.scheduler_file))).expanduser()
        if not path.is_file():
            raise DetflowClusterError(path, "scheduler_file", "the file written by `dask scheduler "
                                      "--scheduler-file` (is the scheduler running?)", "no such file")  # fmt: skip
        try:
            address = json.loads(path.read_text())["address"]
        except (ValueError, KeyError, TypeError) as exc:
            raise DetflowClusterError(path, "scheduler_file", "a scheduler file (JSON with an address)",
                                      f"{type(exc).__name__}: {exc}") from None  # fmt: skip
        security = security_for(prof, address)
        try:
            client = Client(scheduler_file=str(path), security=security, timeout=prof.timeout, set_as_default=False)
        except OSError as exc:
            raise SchedulerUnreachable.of(address, exc, prof.timeout) from None
    else:
        make = {"local": backends._local, "slurm": backends._slurm, "kubernetes": backends._kubernetes,
                "gateway": backends._gateway}[prof.kind]  # fmt: skip
        cluster, owns = make(prof)
        try:
            backends._scale(cluster, prof)
            if prof.kind == "gateway":
                client = cluster.get_client(set_as_default=False)
            else:
                client = Client(cluster, set_as_default=False, timeout=prof.timeout)
        except BaseException:
            if owns:
                cluster.close()
            raise
    handle = ClusterHandle(client, cluster, prof, owns)
    try:
        if prof.warmup:
            client.register_plugin(WarmupPlugin(prof.warmup_level), name=WarmupPlugin.name)
        if prof.wait_for_workers:
            client.wait_for_workers(prof.wait_for_workers, timeout=prof.wait_timeout)
        if prof.check_versions if prof.check_versions is not None else prof.kind != "local":
            _check_versions(client)
    except BaseException:
        handle.close()
        raise
    return handle


@contextlib.contextmanager
def connect(profile: str | os.PathLike | Profile | None = None, *, address: str | None = None,
            scheduler_file: str | os.PathLike | None = None, n_workers: int | None = None,
            threads_per_worker: int | None = None, memory_limit: str | float | None = None,
            config=None, warmup: bool | None = None, check_versions: bool | None = None,
            **overrides) -> Iterator[Client]:  # fmt: skip
    """Yield a ``distributed.Client`` for a profile; close the client (and the cluster detflow started)
    on exit.

    ``profile``: a name on the profile path, a YAML path, a :class:`Profile`, or None (``$DETFLOW_PROFILE``
    or the defaults: an embedded LocalCluster, one worker process with a thread per core, bound to
    127.0.0.1, dashboard 127.0.0.1:8787). ``address`` / ``scheduler_file``: connect to a running
    scheduler instead. ``config``: a job's ``ClusterConfig``. ``warmup``: register :class:`WarmupPlugin`.
    ``check_versions``: run :func:`check_versions` (default: for every kind but local). ``overrides``:
    any other profile key (``security={...}``, ``adapt={"maximum": 20}``, ``slurm={"queue": "debug"}``).
    """
    handle = start(profile, address=address, scheduler_file=scheduler_file, n_workers=n_workers,
                   threads_per_worker=threads_per_worker, memory_limit=memory_limit, config=config,
                   warmup=warmup, check_versions=check_versions, **overrides)  # fmt: skip
    with handle:
        yield handle.client
