"""The worker side: ``NUMBA_NUM_THREADS=1`` and friends, and a warm-up that compiles the numba kernels when a
worker starts (:class:`WarmupPlugin`, or ``dask worker --preload detflow.cluster``, which runs
:func:`dask_setup`)."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from distributed import Client, WorkerPlugin

from .base import WORKER_ENV

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
    import sys

    numba = sys.modules.get("numba")
    if numba is not None and numba.config.NUMBA_NUM_THREADS != 1 and os.environ.get("NUMBA_NUM_THREADS") == "1":
        logger.warning("numba was imported with NUMBA_NUM_THREADS=%s before detflow set it to 1: set it in the "
                       "worker's environment (see deploy/README.md)", numba.config.NUMBA_NUM_THREADS)  # fmt: skip
    return done


def _tiny_wfi(root: Path, n: int = 32) -> dict:
    """A tiny Roman WFI exposure and reference files (uint16 L1, float32 references: the dtypes of real
    data), enough for the default recipe to compile its kernels."""
    import asdf
    import numpy as np

    from ...schema import DQ

    rp = [[0], [1], [2, 3], [4, 5, 6, 7]]
    rng = np.random.default_rng(0)
    bias = 1000.0
    tb = np.array([(g[0] + (len(g) - 1) / 2) * 3.04 for g in rp])
    slope = rng.uniform(0, 50, (n, n))
    data = (bias + slope[None] * tb[:, None, None] + rng.normal(0, 3, (len(rp), n, n))).astype(np.uint16)
    meta = {"exposure": {"read_pattern": rp, "frame_time": 3.04},
            "guide_star": {"window_xstart": -1, "window_xstop": -1, "window_ystart": -1, "window_ystop": -1}}  # fmt: skip
    l1 = root / "l1.asdf"
    amp33 = (bias + rng.normal(0, 3, (len(rp), n, 1))).astype(np.uint16)
    asdf.AsdfFile({"roman": {"data": data, "amp33": amp33, "meta": meta}}).write_to(l1)
    dq = np.zeros((n, n), np.uint32)
    for s in (np.s_[:4], np.s_[-4:], np.s_[:, :4], np.s_[:, -4:]):
        dq[s] |= np.uint32(DQ.REFERENCE_PIXEL)
    smin = np.full((n, n), bias - 100, np.float32)
    smax = np.full((n, n), 60000, np.float32)
    c = np.zeros((3, n, n), np.float32)
    c[1] = (smax - smin) / 2
    c[0] = smin + (smax - smin) / 2 - bias
    refs = {
        "mask": {"dq": dq},
        "saturation": {"data": np.full((n, n), 50000, np.float32), "dq": np.zeros((n, n), np.uint32)},
        "linearitylegendre": {
            "data": c,
            "Smin": smin,
            "Smax": smax,
            "Sref": np.full((n, n), bias, np.float32),
            "dq": dq.copy(),
        },
        "dark": {"dark_slope": np.zeros((n, n), np.float32), "data": np.full((len(rp), n, n), bias, np.float32)},
        "gain": {"data": np.full((n, n), 1.8, np.float32)},
        "read": {"data": np.full((n, n), 3.0, np.float32)},
    }
    caldir = {}
    for name, tree in refs.items():
        p = root / f"{name}.asdf"
        asdf.AsdfFile({"roman": tree}).write_to(p)
        caldir[name] = str(p)
    return {"pipeline": "roman_wfi", "input": str(l1), "output": str(root / "warmup.zarr"), "caldir": caldir}


def _kernel_modules() -> list:
    import pkgutil

    from ... import kernels

    mods = []
    for info in pkgutil.iter_modules(kernels.__path__):
        if not info.name.startswith("_"):
            mods.append(importlib.import_module(f"{kernels.__name__}.{info.name}"))
    return mods


def warmup(level: str = "wfi") -> dict:
    """Import detflow's kernel modules and (``level="wfi"``) compile the WFI kernels by running the
    default recipe on a tiny exposure, synchronously in this process. Errors are recorded, not raised:
    a failed warm-up only means the first tasks compile. Returns what was done."""
    import dask
    import numba
    from numba.core.dispatcher import Dispatcher

    import detflow

    t0 = time.perf_counter()
    info: dict[str, Any] = {"level": level, "errors": [], "pid": os.getpid(),
                            "numba_num_threads": numba.config.NUMBA_NUM_THREADS,
                            "detflow": detflow.__version__}  # fmt: skip
    mods = []
    if level != "off":
        try:
            mods = _kernel_modules()
        except Exception as exc:  # noqa: BLE001
            info["errors"].append(f"import: {type(exc).__name__}: {exc}")
    if level == "wfi":
        try:
            with tempfile.TemporaryDirectory(prefix="detflow-warmup-") as tmp:
                job = _tiny_wfi(Path(tmp))
                products = detflow.build(job)
                dask.compute(*products.values(), scheduler="sync")
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
