"""The SLURM path for real: the ``slurm`` profile (dask-jobqueue's SLURMCluster) submits worker jobs with
``sbatch`` to a one-node SLURM (``deploy/slurm/one-node-slurm.sh``, Debian's slurm-wlm), and a detflow job
runs on those workers, written store equal to a LocalCluster run's. The profile's defaults hold there:
TLS (throwaway credentials), and no worker or nanny listening on every interface.

Marked ``slurm``: ``make test`` leaves it out (``-m "not slurm"``, as it needs root to set SLURM up);
``.ci/run`` sets SLURM up when it can and then runs ``pytest -m slurm``, which fails here (not skips)
when there is no SLURM to submit to."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

import detflow
from detflow.cluster import connect
from detflow.io.store import open_store

pytestmark = pytest.mark.slurm


def _squeue() -> str:
    return subprocess.run(["squeue", "-h", "-o", "%i %j %T"], capture_output=True, text=True, check=True).stdout


def test_job_runs_on_workers_submitted_with_sbatch(tiny_wfi, tmp_path):
    if shutil.which("sbatch") is None or shutil.which("squeue") is None:
        pytest.fail("no SLURM here: run `sudo deploy/slurm/one-node-slurm.sh` first (this test is opt-in: -m slurm)")
    slurm = {"queue": "debug", "cores": 1, "processes": 1, "memory": "3GB", "walltime": "00:20:00",
             "python": sys.executable, "job_script_prologue": [], "local_directory": str(tmp_path / "spill"),
             "log_directory": str(tmp_path / "logs"), "death_timeout": 60,
             "shared_temp_directory": str(tmp_path / "tls")}  # fmt: skip
    job = detflow.load_job(tiny_wfi["job_yaml"])
    with connect("slurm", n_workers=1, slurm=slurm, dashboard_address="127.0.0.1:0", warmup=False) as client:
        client.wait_for_workers(1, timeout=180)
        queued = _squeue()
        assert "RUNNING" in queued, queued
        ids = client.run(lambda: os.environ.get("SLURM_JOB_ID"))
        assert all(ids.values()) and all(i in queued for i in ids.values())  # every worker is a SLURM job
        env = client.run(lambda: os.environ.get("NUMBA_NUM_THREADS"))
        assert set(env.values()) == {"1"}  # the profile's worker environment reached the job script
        assert client.scheduler.address.startswith("tls://")  # the profile's default
        assert all(a.startswith("tls://") for a in client.scheduler_info()["workers"])

        def listening():  # (defined here: sent to the workers by value) the worker's and its nanny's sockets
            import psutil

            me, up = psutil.Process(), psutil.Process().parent()
            procs = [me] + ([up] if up is not None and "dask_worker" in " ".join(up.cmdline()) else [])
            return sorted({c.laddr.ip for p in procs for c in p.net_connections("inet") if c.status == "LISTEN"})

        listening = client.run(listening)
        assert all(v and not {"0.0.0.0", "::"} & set(v) for v in listening.values()), listening
        slurm_store = tmp_path / "slurm.zarr"
        detflow.run(job.model_copy(update={"output": slurm_store}), client=client, progress=False)
    local_store = tmp_path / "local.zarr"
    detflow.run(job.model_copy(update={"output": local_store}), progress=False)
    a, b = open_store(slurm_store), open_store(local_store)
    for path in ("l2/data", "l2/err", "l2/dq"):
        group, var = path.split("/")
        xr.testing.assert_equal(a[group][var], b[group][var])
    assert np.isfinite(a["l2"]["data"].values).any()
    for _ in range(30):  # the worker jobs end with the cluster
        if not any(i in _squeue() for i in ids.values()):
            break
        import time

        time.sleep(1)
    else:
        pytest.fail(f"worker jobs still queued after the cluster closed: {_squeue()}")
