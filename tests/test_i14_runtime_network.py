"""Network exposure (issue 14): what detflow's deploy scripts and the tests' clusters start listens where it
should, never on every interface, and the SLURM allocation's cluster speaks TLS by default.

``deploy/slurm/detflow-cluster.sbatch`` is run for real with bash, ``srun`` replaced by a shim that runs its
command on this machine (no SLURM needed): a real ``dask scheduler`` and ``dask worker`` come up, a client
connects through the profile the script writes, and every listening socket of the allocation is checked."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from distributed import Client

from detflow.runtime.cluster import DetflowClusterError, connect

ROOT = Path(__file__).resolve().parents[1]
SBATCH = ROOT / "deploy" / "slurm" / "detflow-cluster.sbatch"
SRUN = """#!/bin/bash
# srun for a test: srun's options dropped, the command run here
while [[ $# -gt 0 && "$1" == --* ]]; do shift; done
exec "$@"
"""


def listening(pids) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket of these processes."""
    out = set()
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections("inet")
        except psutil.Error:
            continue
        out |= {(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN}
    return out


def session_pids(sid: int) -> list[int]:
    pids = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                pids.append(p.pid)
        except (OSError, psutil.Error):
            continue
    return pids


def _allocation(tmp_path: Path, **env) -> tuple[subprocess.Popen, Path]:
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "srun").write_text(SRUN)
    (shim / "srun").chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    environ = dict(os.environ, PATH=f"{shim}:{os.environ['PATH']}", HOME=str(home), SLURM_JOB_ID="4242",
                   SLURM_NTASKS="1", SLURM_CPUS_PER_TASK="1", SLURM_MEM_PER_NODE="2048",
                   DETFLOW_VENV=str(Path(sys.executable).parents[1]), DETFLOW_WARMUP="off", **env)  # fmt: skip
    log = open(tmp_path / "allocation.log", "w")
    proc = subprocess.Popen(["bash", str(SBATCH)], env=environ, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    return proc, home / ".detflow" / "cluster-4242.yaml"


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_slurm_allocation_cluster_is_tls_and_listens_on_the_nodes_name_only(tmp_path):
    proc, profile = _allocation(tmp_path)
    try:
        deadline = time.monotonic() + 180
        while not profile.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert profile.exists(), (tmp_path / "allocation.log").read_text()
        with connect(profile, check_versions=False) as c:  # the client profile the script wrote
            c.wait_for_workers(1, timeout=120)
            assert c.submit(sum, [1, 2]).result() == 3
            address, dashboard = c.scheduler.address, c.dashboard_link
            (worker,) = c.scheduler_info()["workers"]
        node = socket.gethostbyname(socket.gethostname())
        assert address.startswith(f"tls://{node}:") and worker.startswith(f"tls://{node}:")
        sockets = listening(session_pids(proc.pid))
        assert {ip for ip, _ in sockets} <= {node, "127.0.0.1"}, sockets  # never 0.0.0.0 or ::
        assert dashboard.startswith("http://127.0.0.1:")  # the dashboard, on localhost
        assert (tmp_path / "home" / ".detflow" / "tls-4242").stat().st_mode & 0o777 == 0o700
        with pytest.raises(DetflowClusterError):  # no credentials, no connection
            connect(address=address.replace("tls://", "tcp://"), timeout=5, check_versions=False).__enter__()
    finally:
        _stop(proc)
    assert not profile.exists() and not (tmp_path / "home" / ".detflow" / "tls-4242").exists()  # removed with it


def test_slurm_allocation_cluster_on_a_named_interface(tmp_path):
    proc, profile = _allocation(tmp_path, DETFLOW_INTERFACE="lo", DETFLOW_TLS="off")
    try:
        deadline = time.monotonic() + 180
        while not profile.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert profile.exists(), (tmp_path / "allocation.log").read_text()
        with connect(profile, check_versions=False) as c:
            c.wait_for_workers(1, timeout=120)
            assert c.scheduler.address.startswith("tcp://127.0.0.1:")
        assert {ip for ip, _ in listening(session_pids(proc.pid))} == {"127.0.0.1"}
    finally:
        _stop(proc)


def test_the_tests_schedulers_and_workers_listen_on_the_loopback_only(tmp_path):
    """The scheduler and worker commands the test suites start (tests/test_submit.py's cluster): every
    socket, the HTTP servers too, on 127.0.0.1 (``--no-dashboard`` alone opens them on 0.0.0.0)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_submit import Cluster

    cluster = Cluster(tmp_path, n=1)
    try:
        with Client(cluster.address, timeout=30) as c:
            assert len(c.scheduler_info()["workers"]) == 1
        sockets = listening([cluster.sched.pid] + [w.pid for w in cluster.workers])
        assert len(sockets) >= 4 and {ip for ip, _ in sockets} == {"127.0.0.1"}, sockets
    finally:
        cluster.kill()
