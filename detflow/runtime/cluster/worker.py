"""The worker side: ``NUMBA_NUM_THREADS=1`` and friends, and a warm-up that compiles the numba kernels when a
worker starts (:class:`WarmupPlugin`, or ``dask worker --preload detflow.cluster``, which runs
:func:`dask_setup`)."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import pkgutil
import sys
import time
from typing import Any

import numpy as np
from distributed import Client, WorkerPlugin

from ... import kernels
from .base import WORKER_ENV
from .versions import detflow_version

logger = logging.getLogger(__name__)
worker_logger = logging.getLogger("distributed.detflow")  # in a worker: shown with distributed's own log lines
WARMUP_LEVELS = ("off", "import", "wfi")


def set_worker_env() -> dict[str, str]:
    """Put :data:`WORKER_ENV` into this process's environment where it is not set; warn if numba was
    imported before with more threads (the variable is read at import: set it where the worker starts)."""
    done = {}
    for k, v in WORKER_ENV.items():
        if k not in os.environ:
            os.environ[k] = v
            done[k] = v
    numba = sys.modules.get("numba")
    if numba is not None and numba.config.NUMBA_NUM_THREADS != 1 and os.environ.get("NUMBA_NUM_THREADS") == "1":
        logger.warning("numba was imported with NUMBA_NUM_THREADS=%s before detflow set it to 1: set it in the "
                       "worker's environment (see deploy/README.md)", numba.config.NUMBA_NUM_THREADS)  # fmt: skip
    return done


def _wfi_signatures() -> dict[tuple[str, str], list[tuple]]:
    """The argument types the WFI default recipe passes its kernels (steps/wfi/: tiles are read-only
    views, outputs and per-frame tables writable; float32 data, uint32 DQ and DQ-value vectors):
    ``{(module, kernel): [types]}``.
    Compiling these is what running the recipe compiles (tests/test_cluster_warmup.py checks it)."""
    import numba

    def a(dtype, ndim, layout="C", ro=False):
        return numba.types.Array(numba.from_dtype(np.dtype(dtype)), ndim, layout, readonly=ro)

    f4, f8, u4, i8, i2, b1 = "float32", "float64", "uint32", "int64", "int16", "bool"
    boolean, int64, float64 = numba.types.boolean, numba.types.int64, numba.types.float64
    tables = (a(f8, 2),) + (a(f8, 1),) * 2 + (a(i8, 1),) * 3 + (a(f8, 1),) * 4  # ramp tables and parameters
    fit_out = (a(f4, 2),) * 3 + (a(u4, 2),)
    return {
        ("ramp", "linearize_dark_fit"): [(a(f4, 3, ro=True), a(f4, 3, ro=True), *(a(f4, 2, ro=True),) * 3,
                                          a(u4, 2, ro=True), a(u4, 3, ro=True), boolean, boolean, a(u4, 1),
                                          a(f4, 2, ro=True), a(f8, 1), a(u4, 2, ro=True), a(f4, 2, ro=True),
                                          a(f4, 2, ro=True), *tables, a(u4, 1), *fit_out)],
        # the default ramp fit (kernels/ramp_gls.py): tables tbar, tau, nframes, params, flags
        ("ramp_gls", "linearize_dark_fit"): [(a(f4, 3, ro=True), a(f4, 3, ro=True), *(a(f4, 2, ro=True),) * 3,
                                              a(u4, 2, ro=True), a(u4, 3, ro=True), boolean, boolean, a(u4, 1),
                                              a(f4, 2, ro=True), a(u4, 2, ro=True), a(f4, 2, ro=True), a(f4, 2, ro=True),
                                              *(a(f8, 1),) * 4, a(u4, 1), *fit_out)],
        ("saturation", "first_crossing"): [(a(f4, 3), a(f4, 2), a(i2, 2))],
        ("saturation", "min_filter"): [(a(i2, 2), int64, a(i2, 2))],
        ("saturation", "dilution_candidates"): [(a(f4, 3), a(u4, 3), a(f4, 2), a(b1, 2), a(i2, 2, "A"), a(f8, 1),
                                                 a(u4, 1), a(i2, 2))],
        ("saturation", "apply_saturation"): [(a(f4, 3), a(u4, 3), a(f4, 2), a(i2, 2, "A"), a(i2, 2), int64, float64,
                                              float64, int64, a(b1, 1), int64, a(u4, 1), a(u4, 3))],
    }  # fmt: skip


def _kernel_modules() -> list:
    mods = []
    for info in pkgutil.iter_modules(kernels.__path__):
        if not info.name.startswith("_"):
            mods.append(importlib.import_module(f"{kernels.__name__}.{info.name}"))
    return mods


def warmup(level: str = "wfi") -> dict:
    """Import detflow's kernel modules and (``level="wfi"``) compile the kernels of the WFI default recipe
    for the argument types it passes them (:func:`_wfi_signatures`), in this process: no pipeline is
    built, nothing runs. Errors are recorded, not raised: a failed warm-up only means the first tasks
    compile. Returns what was done."""
    import numba
    from numba.core.dispatcher import Dispatcher

    t0 = time.perf_counter()
    info: dict[str, Any] = {"level": level, "errors": [], "pid": os.getpid(),
                            "numba_num_threads": numba.config.NUMBA_NUM_THREADS,
                            "detflow": detflow_version()}  # fmt: skip
    mods = []
    if level != "off":
        try:
            mods = _kernel_modules()
        except Exception as exc:  # noqa: BLE001
            info["errors"].append(f"import: {type(exc).__name__}: {exc}")
    if level == "wfi":
        by_name = {m.__name__.rsplit(".", 1)[-1]: m for m in mods}
        try:
            for (module, kernel), signatures in _wfi_signatures().items():
                for sig in signatures:
                    getattr(by_name[module], kernel).compile(sig)
        except Exception as exc:  # noqa: BLE001
            info["errors"].append(f"wfi: {type(exc).__name__}: {exc}")
    compiled = {}
    for mod in mods:
        for name, obj in vars(mod).items():
            if isinstance(obj, Dispatcher) and obj.signatures and getattr(obj, "__module__", "") == mod.__name__:
                compiled[f"{mod.__name__.rsplit('.', 1)[-1]}.{name}"] = len(obj.signatures)
    info.update(modules=[m.__name__ for m in mods], compiled=compiled, seconds=round(time.perf_counter() - t0, 3),
                status="done" if not info["errors"] else "failed")  # fmt: skip
    return info


async def warm_worker(worker, level: str | None = None) -> dict:
    """Warm one worker up (in a thread: the worker's event loop keeps serving); the result is kept as
    ``worker.detflow_warmup`` (see :func:`warmup_status`) and logged. Runs once per worker process."""
    done = getattr(worker, "detflow_warmup", None)
    level = level or os.environ.get("DETFLOW_WARMUP") or "wfi"
    if level not in WARMUP_LEVELS:
        worker_logger.warning("DETFLOW_WARMUP=%s: expected one of %s; using wfi", level, ", ".join(WARMUP_LEVELS))
        level = "wfi"
    if done and done.get("status") in ("done", "running") and (
            WARMUP_LEVELS.index(done.get("level", "off")) >= WARMUP_LEVELS.index(level)):  # fmt: skip
        return done
    set_worker_env()
    worker.detflow_warmup = {"status": "running", "level": level}
    info = await asyncio.to_thread(warmup, level)
    worker.detflow_warmup = info
    log = worker_logger.info if info["status"] == "done" else worker_logger.warning
    log("detflow warm-up (%s) on %s: %d kernels compiled in %.1f s%s", level, worker.address, len(info["compiled"]),
        info["seconds"], f"; errors: {info['errors']}" if info["errors"] else "")  # fmt: skip
    return info


class WarmupPlugin(WorkerPlugin):
    """Compile detflow's numba kernels on every worker when it starts (and on workers that join later):
    ``client.register_plugin(WarmupPlugin())``, or ``connect(..., warmup=True)``. Idempotent: a worker
    already warmed up by ``--preload detflow.cluster`` is not warmed again."""

    name = "detflow-warmup"

    def __init__(self, level: str | None = None):
        self.level = level

    async def setup(self, worker) -> None:
        await warm_worker(worker, self.level)


def warmup_status(client: Client) -> dict[str, dict | None]:
    """``{worker address: what the warm-up did (or None: not warmed up)}``."""
    return client.run(lambda dask_worker: getattr(dask_worker, "detflow_warmup", None))


def dask_setup(server) -> Any:
    """``dask worker --preload detflow.cluster``: the worker environment and the warm-up (level from
    ``$DETFLOW_WARMUP``: off, import or wfi, the default). A scheduler or nanny preload does nothing."""
    from distributed import Worker

    if not isinstance(server, Worker):
        worker_logger.info("detflow.cluster preloaded in a %s: nothing to do", type(server).__name__)
        return None
    return warm_worker(server)
