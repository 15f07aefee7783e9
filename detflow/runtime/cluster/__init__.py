"""The one cluster factory: profiles, ``connect()``, worker warm-up and the version check; and the runtime's
door to it, :func:`get_client`.

Used by the CLI (``--profile``, ``--scheduler``, ``--scheduler-file``), the Python API and the
notebooks::

    from detflow.runtime.cluster import connect
    with connect() as client:                      # embedded LocalCluster on 127.0.0.1
        ...
    with connect("slurm", n_workers=8) as client:  # deploy/profiles/slurm.yaml (dask-jobqueue)
        ...
    with connect(address="tls://sched:8786", security={"ca_file": ..., "cert": ..., "key": ...}) as c:
        ...

Kinds of cluster (``kind:`` in a profile): ``local`` (an embedded LocalCluster, the default; scheduler,
workers and dashboard bind to 127.0.0.1), ``address`` (a running scheduler, ``tcp://`` or ``tls://``),
``scheduler_file`` (a running scheduler that wrote ``dask scheduler --scheduler-file``), ``slurm``
(dask-jobqueue's ``SLURMCluster``), ``kubernetes`` (the Dask Kubernetes operator's ``KubeCluster``) and
``gateway`` (dask-gateway). The last three are optional packages, imported only when used
(``pip install 'detflow[slurm]'``, ``[kubernetes]``, ``[gateway]``).

A profile is a YAML file validated by :class:`Profile` (unknown keys are errors naming the file and
the key). ``connect("NAME")`` looks for ``NAME.yaml`` in ``$DETFLOW_PROFILE_PATH`` (colon-separated),
then ``~/.config/detflow/profiles`` (``$XDG_CONFIG_HOME/detflow/profiles``), then the profiles shipped
with detflow (the same text as ``deploy/profiles/*.yaml``); a path to a YAML file works too. Layers,
later ones win: the profile file, the job's ``cluster:`` block, the environment
(``DETFLOW_CLUSTER__<KEY>``, ``__`` for nesting, values parsed as JSON when they parse, else strings;
``DETFLOW_SCHEDULER_ADDRESS``, ``DETFLOW_SCHEDULER_FILE``; ``DETFLOW_PROFILE`` names the profile
when none is given), then the arguments of :func:`connect` (the CLI flags).

Workers: ``NUMBA_NUM_THREADS=1`` (and OMP/MKL/OPENBLAS) in their environment, since dask owns
parallelism and the kernels are single-threaded; a memory limit per worker; optionally a warm-up that
compiles the numba kernels when a worker starts (:class:`WarmupPlugin`, or ``dask worker --preload
detflow.cluster``, which runs :func:`dask_setup`). On connecting to a cluster detflow did not start in
this process, the detflow, dask and distributed versions of the client, the scheduler and the workers
must agree (:func:`check_versions`).

Only this layer creates a ``Client``. The default (no profile) is an embedded LocalCluster of one worker
process with a thread per core: every kernel is numba ``nogil`` and the rest is numpy, so threads run
in parallel and no tile is ever copied between processes (measured on the 4096x4096 WFI benchmark:
~30% faster and ~35% less memory than two single-threaded processes).

Modules: :mod:`.models` (the profile models), :mod:`.profiles` (finding and layering them),
:mod:`.tls`, :mod:`.backends` (local, SLURM, Kubernetes, gateway), :mod:`.factory` (``connect``),
:mod:`.versions`, :mod:`.worker` (the worker side: environment, warm-up, preload).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from distributed import Client

from ...instruments.base import ClusterConfig
from .backends import BACKENDS, slurm_job_script
from .base import PRELOAD, WORKER_ENV, DetflowClusterError, SchedulerUnreachable
from .factory import ClusterHandle, connect, start, start_profile
from .models import KINDS, AdaptConfig, GatewayOptions, KubernetesOptions, Profile, SlurmOptions, TLSConfig
from .profiles import (
    ENV_PREFIX,
    env_overrides,
    find_profile,
    list_profiles,
    load_profile,
    packaged_profiles,
    profile_dirs,
    resolve,
)
from .tls import security_for
from .versions import STRICT_PACKAGES, WARN_PACKAGES, check_versions, cluster_versions
from .worker import WARMUP_LEVELS, WarmupPlugin, dask_setup, set_worker_env, warm_worker, warmup, warmup_status

__all__ = ["BACKENDS", "ENV_PREFIX", "KINDS", "PRELOAD", "STRICT_PACKAGES", "WARMUP_LEVELS", "WARN_PACKAGES",
           "WORKER_ENV", "AdaptConfig", "ClusterHandle", "DetflowClusterError", "GatewayOptions", "KubernetesOptions",
           "Profile", "SchedulerUnreachable", "SlurmOptions", "TLSConfig", "WarmupPlugin", "check_versions",
           "cluster_versions", "connect", "dask_setup", "env_overrides", "find_profile", "get_client", "list_profiles",
           "load_profile", "packaged_profiles", "profile_dirs", "resolve", "security_for", "set_worker_env",
           "slurm_job_script", "start", "start_profile", "warm_worker", "warmup", "warmup_status"]  # fmt: skip


@contextlib.contextmanager
def get_client(cfg: ClusterConfig | None = None, client: Client | None = None,
               scheduler: str | None = None) -> Iterator[Client]:  # fmt: skip
    """Yield a client: the one given, one connected to ``scheduler``, or the one the job's cluster block
    (its profile, the environment's overrides) describes; what this opened is closed on exit."""
    if client is not None:
        yield client
        return
    with connect(config=cfg or ClusterConfig(), address=scheduler) as c:
        yield c
