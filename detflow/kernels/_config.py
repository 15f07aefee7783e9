"""Kernel compilation settings shared by every numba kernel.

``DETFLOW_NUMBA_CACHE=1`` stores compiled kernels on disk (numba's cache, next to the sources or in
``NUMBA_CACHE_DIR``) so a new worker process loads them instead of compiling (~4 s per process for
the WFI kernels). Off by default: a cache shared by machines with different CPUs or numba versions is
a source of trouble, and the compile cost is paid once per worker.
"""

import os

CACHE = os.environ.get("DETFLOW_NUMBA_CACHE", "0").lower() in ("1", "true", "yes", "on")
