"""The runtime's door to the cluster factory (:mod:`detflow.cluster`): a client from a job's ``cluster:``
block, a ``--scheduler`` address, or the client the caller passed.

Only this layer creates a ``Client``. The default (no profile) is an embedded LocalCluster of one worker
process with a thread per core: every kernel is numba ``nogil`` and the rest is numpy, so threads run
in parallel and no tile is ever copied between processes (measured on the 4096x4096 WFI benchmark:
~30% faster and ~35% less memory than two single-threaded processes). Workers get
``NUMBA_NUM_THREADS=1``: dask owns parallelism, kernels never spawn threads of their own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from distributed import Client

from ..cluster import WORKER_ENV, connect
from ..instruments.base import ClusterConfig

__all__ = ["WORKER_ENV", "get_client"]


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
