"""The back ends: an embedded ``LocalCluster``, dask-jobqueue's ``SLURMCluster``, the Dask Kubernetes
operator's ``KubeCluster`` and dask-gateway. The optional packages are imported only when a profile of
their kind is used (``pip install 'detflow[slurm]'``, ``[kubernetes]``, ``[gateway]``)."""

from __future__ import annotations

import importlib
import logging
import os
import shlex
import socket
import warnings
from pathlib import Path
from typing import Any

import dask
from distributed import LocalCluster

from .base import PRELOAD, WORKER_ENV, DetflowClusterError
from .models import GatewayOptions, KubernetesOptions, Profile, SlurmOptions
from .profiles import resolve
from .tls import security_for

BACKENDS = {  # kind: (module, package, extra)
    "slurm": ("dask_jobqueue", "dask-jobqueue", "slurm"),
    "kubernetes": ("dask_kubernetes.operator", "dask-kubernetes", "kubernetes"),
    "gateway": ("dask_gateway", "dask-gateway", "gateway"),
}


def _require(prof: Profile):
    module, package, extra = BACKENDS[prof.kind]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DetflowClusterError(prof.source, "kind", f"the {package} package for kind {prof.kind} (pip install "
                                  f"'detflow[{extra}]', or pip install {package})", f"{type(exc).__name__}: {exc}"
                                  ) from exc  # fmt: skip


def _worker_env(prof: Profile) -> dict[str, str]:
    return {**WORKER_ENV, **{k: str(v) for k, v in prof.env.items()}}


def _local(prof: Profile):
    n = 1 if prof.n_workers is None else prof.n_workers
    threads = prof.threads_per_worker or max(1, (os.cpu_count() or 1) // max(n, 1))
    kwargs: dict[str, Any] = {}
    security = security_for(prof)
    if security is not None:
        kwargs.update(security=security, protocol="tls")
    elif prof.protocol:
        kwargs["protocol"] = prof.protocol
    if prof.processes:
        kwargs["env"] = _worker_env(prof)
    if prof.processes or "protocol" in kwargs:
        kwargs["host"] = prof.host  # (threads without a protocol: inproc://, no network at all)
    # the embedded cluster's own log lines ("Compute Failed" at ERROR, with a task's traceback) would stand
    # above the run's one-line error, which carries the task's exception: they show with detflow -v only
    verbose = logging.getLogger("detflow").isEnabledFor(logging.INFO)
    kwargs["silence_logs"] = logging.WARNING if verbose else logging.CRITICAL
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Port 8787 is already in use.*")
        cluster = LocalCluster(n_workers=n, threads_per_worker=threads, processes=prof.processes,
                               dashboard_address=prof.dashboard_address, memory_limit=prof.memory_limit,
                               **kwargs)  # fmt: skip
    return cluster, True


def _slurm(prof: Profile):
    jq = _require(prof)
    o = prof.slurm or SlurmOptions()
    kwargs = {k: v for k, v in o.model_dump(exclude={"jobs", "scheduler_options"}).items() if v is not None}
    prologue = o.job_script_prologue
    if prologue is None:
        prologue = dask.config.get("jobqueue.slurm.job-script-prologue", None) or []
    kwargs["job_script_prologue"] = list(prologue) + [f"export {k}={shlex.quote(v)}" for k, v in
                                                      _worker_env(prof).items()]  # fmt: skip
    extra = o.worker_extra_args
    if extra is None:
        extra = dask.config.get("jobqueue.slurm.worker-extra-args", None) or []
    extra = list(extra)
    if prof.warmup and PRELOAD not in extra:
        extra += ["--preload", PRELOAD]
    if prof.memory_limit not in (None, "auto") and "--memory-limit" not in extra:
        extra += ["--memory-limit", str(prof.memory_limit)]
    sched_opts = {"dashboard_address": prof.dashboard_address, **(o.scheduler_options or {})}
    interface = o.interface or dask.config.get("jobqueue.slurm.interface", None)
    if not interface:  # never every interface (0.0.0.0): the scheduler on this host's name, each worker on its node's
        if "interface" not in sched_opts:
            sched_opts.setdefault("host", socket.gethostname())
        if "--host" not in extra and "--interface" not in extra:
            extra += ["--host", "$(hostname)"]  # (the job script is bash: the node's own name)
    if "--dashboard-address" not in extra:  # a worker's HTTP server (/health, /metrics) too, even without a dashboard
        extra += ["--dashboard-address", "127.0.0.1:0"]
    kwargs["worker_extra_args"] = extra
    kwargs["scheduler_options"] = sched_opts
    if prof.security is not None:
        kwargs["security"] = True if prof.security.temporary else security_for(prof)
        kwargs["protocol"] = "tls://"
        if prof.security.temporary and o.shared_temp_directory:  # the workers' copy of the credentials: yours only
            shared = Path(os.path.expandvars(o.shared_temp_directory)).expanduser()
            shared.mkdir(mode=0o700, parents=True, exist_ok=True)
    cluster = jq.SLURMCluster(**kwargs)
    if o.jobs is not None and prof.adapt is None:
        cluster.scale(jobs=o.jobs)
    return cluster, True


def slurm_job_script(profile: str | os.PathLike | Profile | None = "slurm", **overrides) -> str:
    """The job script a ``slurm`` profile submits for each worker job (nothing is submitted)."""
    prof = resolve(profile, **overrides)
    if prof.kind != "slurm":
        raise DetflowClusterError(prof.source, "kind", "slurm", prof.kind)
    cluster, _ = _slurm(prof)
    try:
        return cluster.job_script()
    finally:
        cluster.close()


def _kubernetes(prof: Profile):
    op = _require(prof)
    o = prof.kubernetes or KubernetesOptions()
    command = ["dask", "worker"] + (["--preload", PRELOAD] if prof.warmup else [])
    if prof.memory_limit not in (None, "auto"):
        command += ["--memory-limit", str(prof.memory_limit)]
    kwargs: dict[str, Any] = {k: getattr(o, k) for k in ("namespace", "create_mode", "shutdown_on_close",
                                                         "scheduler_service_type", "port_forward_cluster_ip",
                                                         "idle_timeout", "resource_timeout")
                              if getattr(o, k) is not None}  # fmt: skip
    if o.create_mode is not None:
        from dask_kubernetes.operator.kubecluster.kubecluster import CreateMode

        kwargs["create_mode"] = CreateMode[o.create_mode]
        if o.create_mode == "CONNECT_ONLY" and o.shutdown_on_close is None:
            kwargs["shutdown_on_close"] = False  # a cluster someone else made outlives this client
    if o.custom_cluster_spec is not None:
        spec: Any = str(Path(o.custom_cluster_spec).expanduser())
    else:
        spec = op.make_cluster_spec(o.name, image=o.image, n_workers=prof.n_workers, resources=o.resources,
                                    env={**_worker_env(prof), **o.env}, worker_command=command)  # fmt: skip
        scheduler = spec["spec"]["scheduler"]["spec"]["containers"][0]
        # the `dask-scheduler` script make_cluster_spec names is gone from distributed 2024+: `dask scheduler`
        scheduler["args"] = ["dask", "scheduler", "--host", "0.0.0.0"] + scheduler["args"][3:]
        scheduler.pop("resources", None)  # make_cluster_spec gives the scheduler the workers' resources
        if o.scheduler_resources:
            scheduler["resources"] = o.scheduler_resources
    cluster = op.KubeCluster(name=o.name, custom_cluster_spec=spec, **kwargs)
    if prof.n_workers is not None and o.custom_cluster_spec is not None and prof.adapt is None:
        cluster.scale(prof.n_workers)
    return cluster, True


def _gateway(prof: Profile):
    gw_mod = _require(prof)
    o = prof.gateway or GatewayOptions()
    gateway = gw_mod.Gateway(address=o.address, proxy_address=o.proxy_address, public_address=o.public_address,
                             auth=o.auth)  # fmt: skip
    if o.cluster_name:  # closing it then only disconnects (unless shutdown_on_close: true)
        shutdown = bool(o.shutdown_on_close) if o.shutdown_on_close is not None else False
        return gateway.connect(o.cluster_name, shutdown_on_close=shutdown), True
    shutdown = True if o.shutdown_on_close is None else o.shutdown_on_close
    options = dict(o.cluster_options)
    cluster = gateway.new_cluster(shutdown_on_close=shutdown, **options)
    return cluster, True


def _scale(cluster, prof: Profile) -> None:
    if prof.adapt is not None:
        cluster.adapt(minimum=prof.adapt.minimum, maximum=prof.adapt.maximum)
    elif prof.n_workers is not None and prof.kind in ("slurm", "gateway") and (
            prof.kind != "slurm" or prof.slurm is None or prof.slurm.jobs is None):  # fmt: skip
        cluster.scale(prof.n_workers)
