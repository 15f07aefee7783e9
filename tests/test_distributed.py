"""``detflow run --scheduler``: a real ``dask scheduler`` and ``dask worker`` started as processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

BIN = Path(sys.executable).parent


@pytest.fixture
def cluster(tmp_path):
    sfile = tmp_path / "scheduler.json"
    env = dict(os.environ, NUMBA_NUM_THREADS="1")
    sched = subprocess.Popen([BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                              "--dashboard-address", "127.0.0.1:0", "--scheduler-file", sfile],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)  # fmt: skip
    procs = [sched]
    try:
        for _ in range(200):
            if sfile.exists() and sfile.stat().st_size:
                break
            time.sleep(0.1)
        address = json.loads(sfile.read_text())["address"]
        for _ in range(2):
            procs.append(subprocess.Popen([BIN / "dask", "worker", address, "--nthreads", "1", "--nworkers", "1",
                                           "--dashboard-address", "127.0.0.1:0", "--host", "127.0.0.1"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))  # fmt: skip
        from distributed import Client

        with Client(address, timeout=30) as c:
            c.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


def test_run_on_external_scheduler(tiny_wfi, cluster):
    from distributed import Client

    r = subprocess.run([BIN / "detflow", "run", tiny_wfi["job_yaml"], "--scheduler", cluster, "--no-progress"],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    l2 = xr.open_zarr(tiny_wfi["root"] / "native.zarr", group="l2")
    assert l2["data"].shape == (1, 24, 24)
    # the tasks ran on the external workers: the scheduler saw both of them process work
    with Client(cluster) as c:
        counts = c.run(lambda dask_worker: dask_worker.state.executed_count if hasattr(
            dask_worker.state, "executed_count") else len(dask_worker.state.log))  # fmt: skip
    assert len(counts) == 2 and all(v > 0 for v in counts.values())
    assert np.isfinite(l2["data"].values).mean() > 0.99
