"""What every part of the cluster factory shares: the worker environment, the worker preload module and
the errors."""

from __future__ import annotations

from ...errors import DetflowInputError

WORKER_ENV = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1"}  # fmt: skip
"""Set in every worker's environment: dask owns parallelism, kernels never start threads of their own."""

PRELOAD = "detflow.cluster"
"""``dask worker --preload detflow.cluster``: the worker environment and the kernel warm-up (its
``dask_setup``). The short name the deploy manifests, images and job scripts use."""


class DetflowClusterError(DetflowInputError):
    """A cluster that cannot be used as asked: a bad or missing profile, a missing optional package,
    mismatched versions. Reads like every detflow input error: ``<where>: <field>: expected ..., got ...``."""


class SchedulerUnreachable(DetflowClusterError):
    """No scheduler answered at the address (within the timeout): nothing listens there, or the network
    does not get there."""

    @classmethod
    def of(cls, address, exc: BaseException, timeout: float | None = None) -> SchedulerUnreachable:
        within = f" within {timeout:g} s" if timeout else ""
        return cls(address, "scheduler", f"a running scheduler that answers{within}",
                   f"unreachable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")  # fmt: skip
