"""detflow as a cluster service, on a real ``dask scheduler`` and real ``dask worker`` processes on
127.0.0.1 (no mocks): submit and exit, status from a new process, a worker killed mid-run, the whole
cluster killed mid-run and the job re-submitted (only the missing regions computed), cancel.

The tests share one cluster per module (per xdist worker): a test that kills workers replaces them, and
the ``cluster`` fixture hands each test two live, running workers; the tests that kill the whole cluster
start their own (``own_cluster``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from distributed import Client
from typer.testing import CliRunner

import detflow
from detflow.cli import app
from detflow.io.store import open_store
from detflow.runtime.submit import jobs, submit

sys.path.insert(0, str(Path(__file__).parent))
from test_excam_run import DATA, write_frames  # noqa: E402

pytestmark = pytest.mark.slow
ENV = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


class Cluster:
    """A scheduler and ``n`` single-threaded worker processes (no nanny: a killed worker stays dead)."""

    def __init__(self, tmp: Path, n: int = 2):
        self.file = tmp / f"scheduler-{time.monotonic_ns()}.json"
        # every socket on the loopback, the HTTP server (/health, /metrics) too: --no-dashboard alone still
        # opens it on 0.0.0.0 (the scheduler's on 8787)
        self.sched = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                       "--port", "0", "--dashboard-address", "127.0.0.1:0", "--scheduler-file",
                                       str(self.file)],
                                      env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        for _ in range(300):
            if self.file.exists() and self.file.stat().st_size:
                break
            time.sleep(0.1)
        self.address = json.loads(self.file.read_text())["address"]
        self.workers = [self.add_worker() for _ in range(n)]
        with Client(self.address, timeout=30) as c:
            c.wait_for_workers(n, timeout=60)

    def add_worker(self) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", self.address, "--nthreads", "1",
                                 "--no-nanny", "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0",
                                 "--memory-limit", "4GB"],
                                env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def replace(self, pid: int) -> None:
        """A new worker instead of the (killed) one with ``pid``: the cluster keeps ``n`` workers."""
        dead = next(p for p in self.workers if p.pid == pid)
        dead.wait()
        self.workers.remove(dead)
        self.workers.append(self.add_worker())
        with Client(self.address, timeout=30) as c:
            c.wait_for_workers(len(self.workers), timeout=60)

    def kill(self) -> None:
        for p in [*self.workers, self.sched]:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()

    def freeze(self, *procs: subprocess.Popen) -> None:
        """SIGSTOP: the workers stay connected and hold their tasks, but run nothing."""
        for p in procs or self.workers:
            p.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        for p in self.workers:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)

    def healthy(self) -> bool:
        """The scheduler and ``n`` workers alive and running (a worker a test killed is replaced)."""
        if self.sched.poll() is not None:
            return False
        self.thaw()
        for p in [p for p in self.workers if p.poll() is not None]:
            self.replace(p.pid)
        with Client(self.address, timeout=30) as c:
            c.wait_for_workers(len(self.workers), timeout=60)
        return True


@pytest.fixture(scope="module")
def _shared_cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    yield c
    c.kill()


@pytest.fixture
def cluster(_shared_cluster):
    """The module's cluster: two live, running workers (jobs of earlier tests are on its record)."""
    assert _shared_cluster.healthy(), "a test killed the shared cluster's scheduler"
    yield _shared_cluster
    _shared_cluster.thaw()


@pytest.fixture
def own_cluster(tmp_path):
    """A cluster of this test only (it kills the whole cluster)."""
    c = Cluster(tmp_path)
    yield c
    c.kill()


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    return write_frames(tmp_path_factory.mktemp("submit") / "l1", n=8, seed=5)


def _job(frames, out: Path) -> dict:
    return {"input": str(frames[0].parent), "output": str(out), "eperdn": 8.7, "fwc_em_e": 90000,
            "fwc_pp_e": 50000, "non_linearity_filepath": str(DATA / "nonlin_table_TVAC.txt"), "frames_per_task": 1,
            "frames_per_shard": 1, "combine": ["l2b"]}  # fmt: skip


@pytest.fixture(scope="module")
def reference(frames, tmp_path_factory):
    """The same job run in the foreground on an embedded LocalCluster."""
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    return detflow.run(_job(frames, out), progress=False)


def _cli(*args: str, timeout: float = 300, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "detflow.cli", *args], env=dict(ENV, **env), capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def _same(a, b) -> None:
    for group in ("l2a", "l2b", "mean_comb", "median_comb"):
        x, y = a[group].to_dataset(), b[group].to_dataset()
        assert set(x.data_vars) == set(y.data_vars)
        for v in x.data_vars:
            np.testing.assert_array_equal(x[v].values, y[v].values, err_msg=f"{group}/{v}")


def _error_line(stderr: str) -> str:
    """The one error line the CLI prints (``error: ...``); no Python traceback."""
    assert "Traceback (most recent call last)" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def _regions_done(out: Path) -> int:
    return sum(1 for p in out.parent.glob(f"{out.name}.partial-*/_detflow_regions/regions/**/*") if p.is_file())


def _partial(out: Path) -> Path | None:
    found = list(out.parent.glob(f"{out.name}.partial-*"))
    return found[0] if found else None


def _poll(ready, timeout: float = 240, every: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


def _template_half_written(out: Path) -> bool:
    """A data variable of the l2a/l2b template is written (not only coordinates), the template is not
    marked done yet."""
    p = _partial(out)
    return p is not None and (p / "l2a" / "data" / "zarr.json").exists() and not (
        p / "_detflow_regions" / "templates" / "l2b").exists()  # fmt: skip


def _driver_pid(c: Client, job_id: str) -> int:
    from detflow.runtime.submit import META

    assert _poll(lambda: (c.get_metadata([META, job_id], default={}) or {}).get("state") == "running", every=0.05)
    return c.run(os.getpid)[c.get_metadata([META, job_id])["worker"]]


NO_PROBE = {"DETFLOW_CLUSTER__CHECK_VERSIONS": "false"}  # frozen workers would not answer the versions probe


def _wait(job_id: str, address: str, *args: str, env: dict | None = None):
    """``detflow wait`` (in this process: the kill tests are about the job, not the command's process)."""
    res = CliRunner().invoke(app, ["wait", job_id, "--scheduler", address, *args], env=env)
    return res.exit_code, res.output


# the moments the driver's worker is killed: while the store template is being written (its arrays half
# there), while the regions are written, while the combines are written
DRIVER_KILLS = {
    "template": _template_half_written,
    "regions": lambda out: _regions_done(out) >= 4,
    "combines": lambda out: (p := _partial(out)) is not None and (p / "mean_comb").exists(),
}


def test_killing_the_drivers_worker_never_fails_the_job(frames, reference, cluster, tmp_path):
    """The driver's worker killed at three moments of a job, a run each: the driver restarts on the other
    worker and resumes, every time (a half-written template once failed the job: 'unexpected encoding
    parameters for zarr backend: ['coordinates']')."""
    for n, (moment, ready) in enumerate(DRIVER_KILLS.items()):
        out = tmp_path / f"driver{n}.zarr"
        with Client(cluster.address) as c:
            job_id = submit(_job(frames, out), c)
            pid = _driver_pid(c, job_id)
            assert _poll(lambda: ready(out)), f"{moment}: the job never got there"
            os.kill(pid, signal.SIGKILL)
        cluster.replace(pid)
        code, output = _wait(job_id, cluster.address)
        assert code == 0, f"{moment}: {output}"
        rec = json.loads(Path(str(out) + ".job.json").read_text())
        assert rec["state"] == "finished" and rec["attempt"] >= 2, (moment, rec)  # the driver did restart
        _same(open_store(out), reference)


def test_killing_a_worker_mid_write_never_fails_the_job(frames, reference, cluster, tmp_path):
    """The other worker (not the driver's) killed while regions are written, at three points: its tasks
    move to the remaining worker, the result is the clean run's. After 6 regions the job finishes on the
    driver's worker alone (the killed one is replaced only when the job ended); the other two times a new
    worker joins at once."""
    for n, regions in enumerate((1, 6, 9)):
        out = tmp_path / f"worker{n}.zarr"
        alone = regions == 6
        with Client(cluster.address) as c:
            job_id = submit(_job(frames, out), c)
            driver = _driver_pid(c, job_id)
            assert _poll(lambda: _regions_done(out) >= regions, every=0.02), "the job never got going"
            pid = next(p.pid for p in cluster.workers if p.pid != driver)
            os.kill(pid, signal.SIGKILL)
        if not alone:
            cluster.replace(pid)
        code, output = _wait(job_id, cluster.address)
        assert code == 0, f"after {regions} regions: {output}"
        if alone:
            cluster.replace(pid)
        _same(open_store(out), reference)


def test_submit_returns_at_once_and_status_from_another_process(frames, reference, cluster, tmp_path):
    out = tmp_path / "job.zarr"
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps(_job(frames, out)))  # JSON is YAML
    t0 = time.monotonic()
    res = _cli("submit", str(job), "--scheduler", cluster.address)
    assert res.returncode == 0, res.stderr
    job_id = res.stdout.strip().splitlines()[-1]
    assert job_id.startswith("roman_excam-")
    assert time.monotonic() - t0 < 60  # it returned; the submitting process has exited
    res = _cli("wait", job_id, "--scheduler", cluster.address)  # a new process
    assert res.returncode == 0, res.stdout + res.stderr
    res = _cli("jobs", "--scheduler", cluster.address, "--json")
    rec = {r["id"]: r for r in json.loads(res.stdout)}[job_id]
    assert rec["state"] == "finished" and rec["output"] == str(out) and rec["started"] and rec["finished"]
    assert json.loads(Path(str(out) + ".job.json").read_text())["state"] == "finished"
    tree = open_store(out)
    assert tree.attrs["job_record"]["id"] == job_id
    _same(tree, reference)


def test_cluster_killed_then_resubmitted_computes_only_the_missing_regions(frames, reference, own_cluster, tmp_path):
    out = tmp_path / "r.zarr"
    with Client(own_cluster.address) as c:
        submit(_job(frames, out), c)
        assert _poll(lambda: _regions_done(out) >= 10, every=0.05), "the job never got going"
    own_cluster.freeze()  # nothing more is written
    own_cluster.kill()  # scheduler and workers, mid-run
    done = _regions_done(out)
    assert 10 <= done and not out.exists()
    again = Cluster(tmp_path, n=2)
    try:
        with Client(again.address) as c:
            job_id = submit(_job(frames, out), c)
        res = _cli("wait", job_id, "--scheduler", again.address)
        assert res.returncode == 0, res.stdout + res.stderr
    finally:
        again.kill()
    tree = open_store(out)
    regions = tree.attrs["regions"]
    assert regions["resumed"] and regions["done_before"] >= done  # what was done is not done again
    assert regions["done_before"] < regions["total"]
    _same(tree, reference)


def test_cancel_stops_the_job_and_leaves_no_output(frames, cluster, tmp_path):
    out = tmp_path / "c.zarr"
    with Client(cluster.address) as c:
        job_id = submit(_job(frames, out), c)
        driver = _driver_pid(c, job_id)
        assert _poll(lambda: _regions_done(out) >= 1, every=0.02), "the job never got going"
    # the other worker frozen while the regions are written (the driver polls its cancel flag meanwhile): its
    # tasks wait, the job cannot finish before the cancel arrives (a frozen worker would not answer the
    # versions probe of connecting; frozen earlier, the graph's build would wait for it)
    cluster.freeze(*(p for p in cluster.workers if p.pid != driver))
    try:
        res = CliRunner().invoke(app, ["cancel", job_id, "--scheduler", cluster.address], env=NO_PROBE)
        assert res.exit_code == 0, res.output
        code, output = _wait(job_id, cluster.address, "--timeout", "120", env=NO_PROBE)
        assert code == 1 and "cancelled" in output, output
    finally:
        cluster.thaw()
    assert not out.exists()


def test_a_corrupt_file_fails_only_its_frame(frames, cluster, tmp_path):
    import shutil

    data = tmp_path / "l1"
    shutil.copytree(frames[0].parent, data)
    bad = sorted(data.glob("*.fits"))[4]
    bad.write_bytes(bad.read_bytes()[: 2880 * 3 + 1000])  # headers kept, the frame cut short
    out = tmp_path / "p.zarr"
    job = dict(_job(frames, out), input=str(data), combine=[], on_error="skip")
    with Client(cluster.address) as c:
        job_id = submit(job, c)
    code, output = _wait(job_id, cluster.address)
    assert code == 0, output
    res = CliRunner().invoke(app, ["status", job_id, "--scheduler", cluster.address, "--json"])
    rec = json.loads(res.stdout)[0]
    assert [s["file"] for s in rec["skipped_inputs"]] == [str(bad)] and "truncated" in rec["skipped_inputs"][0][
        "reason"
    ]
    tree = open_store(out)
    assert tree["l2b"].sizes["frame"] == len(frames) - 1 and str(bad.name) not in tree["l2b"]["source_file"].values
    assert tree.attrs["skipped_inputs"][0]["file"] == str(bad)
    with pytest.raises(detflow.DetflowInputError, match="truncated"):
        detflow.run(dict(job, output=str(tmp_path / "strict.zarr"), on_error="raise"), progress=False)
    assert not (tmp_path / "strict.zarr").exists()


def test_submit_checks_what_run_checks_and_a_job_locks_its_output(frames, reference, cluster, tmp_path):
    """While a submitted job runs, its output is its own: a second submission and a `detflow run` of it are
    refused at once (the lock names the job; the run asks the job's scheduler), and so is `detflow clean`.
    When it ended, the lock is gone, and submitting it again is refused at submit (the output exists)."""
    out = tmp_path / "l.zarr"
    job = tmp_path / "l.yaml"
    job.write_text(json.dumps(_job(frames, out)))
    res = _cli("submit", str(job), "--scheduler", cluster.address)
    assert res.returncode == 0, res.stderr
    job_id = res.stdout.strip().splitlines()[-1]
    with Client(cluster.address) as c:
        _driver_pid(c, job_id)
    cluster.freeze()  # the job holds its output while these run (frozen workers: the versions of client and
    try:  # workers are not compared on connecting); each in its own process, all at once
        cmds = (("submit", str(job), "--scheduler", cluster.address), ("run", str(job), "--no-progress"),
                ("clean", str(out)))  # fmt: skip
        procs = [subprocess.Popen([sys.executable, "-m", "detflow.cli", *cmd], env=dict(
            ENV, DETFLOW_CLUSTER__CHECK_VERSIONS="false"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True) for cmd in cmds]  # fmt: skip
        for cmd, p in zip(cmds, procs):
            stdout, stderr = p.communicate(timeout=300)
            assert p.returncode == 2, (cmd, stdout, stderr)
            assert f"{out}: lock: expected no other writer of this output, got l.zarr.lock held by job {job_id} " \
                   f"(scheduler {cluster.address})" in _error_line(stderr), cmd  # fmt: skip
    finally:
        cluster.thaw()
    code, output = _wait(job_id, cluster.address)
    assert code == 0, output
    assert not Path(str(out) + ".lock").exists()
    _same(open_store(out), reference)
    res = _cli("submit", str(job), "--scheduler", cluster.address)
    assert res.returncode == 2 and f"{out}: output: expected a path that does not exist yet" in _error_line(res.stderr)
    with Client(cluster.address) as c:  # nothing was queued (the cluster's other jobs wrote other outputs)
        assert [r["id"] for r in jobs(c) if r["output"] == str(out)] == [job_id]
    assert json.loads(Path(str(out) + ".job.json").read_text())["state"] == "finished"


def test_status_and_wait_tell_the_truth_when_the_cluster_dies(frames, own_cluster, tmp_path):
    """The cluster killed under a running job: the record beside the output is no longer taken at its word
    (state unknown, the scheduler unreachable since ...), and status, wait, jobs and submit against the dead
    scheduler give one line and exit 2 within their --timeout (a wait already waiting too)."""
    cluster = own_cluster
    out = tmp_path / "d.zarr"
    job = tmp_path / "d.yaml"
    job.write_text(json.dumps(_job(frames, out)))
    with Client(cluster.address) as c:
        job_id = submit(_job(frames, out), c)
        _driver_pid(c, job_id)
        cluster.freeze()  # the job runs on (its record says so) but does not finish before the cluster dies
        clients = c.run_on_scheduler(lambda dask_scheduler: set(dask_scheduler.clients))
        # (frozen workers would not answer the versions probe of connecting: the wait is waiting once connected)
        waiting = subprocess.Popen([sys.executable, "-m", "detflow.cli", "wait", job_id, "--scheduler",
                                    cluster.address, "--timeout", "120"], env=dict(
            ENV, DETFLOW_CLUSTER__CHECK_VERSIONS="false"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        assert _poll(lambda: c.run_on_scheduler(lambda dask_scheduler: set(dask_scheduler.clients)) - clients
                     or waiting.poll() is not None, every=0.1), "the wait never connected"  # fmt: skip
        assert waiting.poll() is None, waiting.communicate()
    cluster.kill()
    t0 = time.monotonic()
    _, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 2 and time.monotonic() - t0 < 60, err
    assert f"{cluster.address}: scheduler: expected a running scheduler that answers" in _error_line(err)
    record = Path(str(out) + ".job.json")
    assert json.loads(record.read_text())["state"] == "running"  # what the file alone says
    # every command against the dead scheduler (in this process: the commands' own timeouts are tested here; the
    # test above runs submit and status in processes of their own)
    res = CliRunner().invoke(app, ["status", "--record", str(record), "--json", "--timeout", "3"])
    assert res.exit_code == 0, res.stderr
    rec = json.loads(res.stdout)[0]
    assert rec["state"] == "unknown" and rec["note"].startswith(f"scheduler {cluster.address} unreachable at ")
    assert f"last update {json.loads(record.read_text())['updated']}" in rec["note"]
    for cmd in (("status", job_id), ("wait", job_id), ("jobs",), ("cancel", job_id), ("submit", str(job))):
        t0 = time.monotonic()
        res = CliRunner().invoke(app, [*cmd, "--scheduler", cluster.address, "--timeout", "3"])
        assert res.exit_code == 2 and time.monotonic() - t0 < 45, (cmd, res.stdout, res.stderr)
        assert f"{cluster.address}: scheduler: expected a running scheduler that answers within 3 s, got " \
               "unreachable" in _error_line(res.stderr), cmd  # fmt: skip
