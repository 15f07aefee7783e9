"""The cluster factory (``detflow.runtime.cluster``): profiles, overrides, validation, the kinds of cluster it
connects to (a LocalCluster, a real ``dask scheduler`` / ``dask worker --preload detflow.cluster`` pair
started as processes, TLS), the worker warm-up and the version check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import detflow
from detflow.instruments.base import ClusterConfig
from detflow.runtime import cluster as dc
from detflow.runtime.cluster import DetflowClusterError, backends, connect, get_client, load_profile, resolve

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    """No profile settings leak in from the machine: an empty user config directory, no overrides."""
    for var in list(os.environ):
        if var.startswith(dc.ENV_PREFIX) or var in (
            "DETFLOW_PROFILE",
            "DETFLOW_PROFILE_PATH",
            "DETFLOW_SCHEDULER_ADDRESS",
            "DETFLOW_SCHEDULER_FILE",
        ):
            monkeypatch.delenv(var)
    (tmp_path / "xdg").mkdir()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


# ---- profiles ----------------------------------------------------------------------------------------------
def test_packaged_profiles_are_the_deploy_files_and_valid():
    files = {p.stem: p.read_text() for p in (DEPLOY / "profiles").glob("*.yaml")}
    assert set(files) == {"local", "address", "slurm", "kubernetes", "gateway"}
    assert dc.packaged_profiles() == files, (
        "regenerate: python -m detflow.runtime.cluster._profiles deploy/profiles > detflow/runtime/cluster/_profiles.py"
    )
    kinds = {name: load_profile(name).kind for name in files}
    assert kinds == {n: n for n in files}
    slurm = load_profile("slurm")
    assert slurm.slurm.walltime == "02:00:00" and slurm.warmup and slurm.source == "packaged:slurm"
    assert load_profile("address").security.ca_file == Path("~/.config/detflow/tls/ca.pem")
    # the local profile spells out the defaults (what get_client has always done; None: 1 worker, no check)
    local, default = load_profile("local"), resolve()
    assert local.model_dump() == {**default.model_dump(), "n_workers": 1, "check_versions": False}
    assert (default.kind, default.n_workers, default.host, default.dashboard_address) == (
        "local",
        None,
        "127.0.0.1",
        "127.0.0.1:8787",
    )


def test_profiles_found_by_name_path_env_and_user_dir(tmp_path, monkeypatch):
    search = tmp_path / "site"
    search.mkdir()
    (search / "mine.yaml").write_text("kind: local\nn_workers: 3\n")
    (search / "local.yaml").write_text("kind: local\nn_workers: 5\n")  # shadows the packaged one
    user = tmp_path / "xdg" / "detflow" / "profiles"
    user.mkdir(parents=True, exist_ok=True)
    (user / "mine.yaml").write_text("kind: local\nn_workers: 7\n")
    (user / "user_only.yml").write_text("kind: address\naddress: tcp://127.0.0.1:1\n")
    assert load_profile("mine").n_workers == 7 and load_profile("user_only").kind == "address"
    monkeypatch.setenv("DETFLOW_PROFILE_PATH", f"{tmp_path / 'missing'}:{search}")
    assert load_profile("mine").n_workers == 3  # $DETFLOW_PROFILE_PATH first
    assert load_profile("mine").source == str(search / "mine.yaml")
    assert load_profile("local").n_workers == 5
    assert load_profile("slurm").source == "packaged:slurm"  # then the packaged ones
    other = tmp_path / "elsewhere.yaml"
    other.write_text("kind: local\nthreads_per_worker: 2\n")
    assert load_profile(other).threads_per_worker == 2 and load_profile(str(other)).source == str(other)
    monkeypatch.setenv("DETFLOW_PROFILE", "mine")  # the profile when none is named
    assert resolve().n_workers == 3 and resolve("local").n_workers == 5
    listed = dc.list_profiles()
    assert listed["mine"] == str(search / "mine.yaml") and listed["user_only"] == str(user / "user_only.yml")
    assert listed["gateway"] == "packaged:gateway"


def test_overrides_profile_job_env_arguments(monkeypatch, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "pipeline": "roman_wfi",
                "input": "x.asdf",
                "output": "o.zarr",
                "caldir": {},
                "cluster": {"profile": "slurm", "options": {"slurm": {"queue": "short"}}},
            }
        )
    )
    cfg = detflow.load_job(job).cluster
    assert cfg.profile == "slurm"
    p = resolve(config=cfg)  # defaults of the job's cluster block do not override the profile
    assert (p.kind, p.n_workers, p.slurm.queue, p.slurm.cores) == ("slurm", 4, "short", 8)
    p = resolve(config=cfg.model_copy(update={"n_workers": 2}))  # what `detflow run --workers 2` does
    assert p.n_workers == 2
    monkeypatch.setenv("DETFLOW_CLUSTER__N_WORKERS", "6")
    monkeypatch.setenv("DETFLOW_CLUSTER__SLURM__QUEUE", "debug")
    monkeypatch.setenv("DETFLOW_CLUSTER__SLURM__WALLTIME", "04:00:00")
    monkeypatch.setenv("DETFLOW_CLUSTER__ADAPT", '{"maximum": 20}')
    p = resolve(config=cfg.model_copy(update={"n_workers": 2}))
    assert (p.n_workers, p.slurm.queue, p.slurm.walltime, p.adapt.maximum, p.slurm.cores) == (
        6,
        "debug",
        "04:00:00",
        20,
        8,
    )
    assert resolve("slurm", n_workers=9).n_workers == 9  # arguments (CLI flags) last
    monkeypatch.setenv("DETFLOW_SCHEDULER_ADDRESS", "tls://10.0.0.1:8786")
    p = resolve("address")
    assert (p.kind, p.address, p.security.cert) == (
        "address",
        "tls://10.0.0.1:8786",
        Path("~/.config/detflow/tls/client.pem"),
    )
    p = resolve(address="tcp://127.0.0.1:9999")
    assert (p.kind, p.address) == ("address", "tcp://127.0.0.1:9999")
    p = resolve(config=ClusterConfig(scheduler_file=tmp_path / "s.json"), environ={})
    assert (p.kind, p.scheduler_file) == ("scheduler_file", tmp_path / "s.json")


def test_validation_errors_name_the_file_and_the_key(tmp_path, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: slurm\nslurm:\n  queu: debug\n")
    with pytest.raises(DetflowClusterError, match=rf"^{bad}: slurm\.queu: expected a profile key \(queue, "):
        load_profile(bad)
    bad.write_text("kind: local\nn_wrkers: 2\n")
    with pytest.raises(DetflowClusterError, match=rf"^{bad}: n_wrkers: expected a profile key \(kind, "):
        load_profile(bad)
    bad.write_text("kind: local\nn_workers: -1\n")
    with pytest.raises(DetflowClusterError, match=rf"^{bad}: n_workers: expected .*greater than or equal to 0"):
        load_profile(bad)
    bad.write_text("kind: cloud\n")
    with pytest.raises(DetflowClusterError, match=rf"^{bad}: kind: expected .*'local'.*got 'cloud'"):
        load_profile(bad)
    bad.write_text("kind: address\n")
    with pytest.raises(DetflowClusterError, match=rf"^{bad}: <root>: expected kind address needs an address"):
        load_profile(bad)
    bad.write_text("kind: [local\n")
    with pytest.raises(DetflowClusterError, match=rf"^{bad}: YAML: expected valid YAML"):
        load_profile(bad)
    with pytest.raises(DetflowClusterError, match=r"^nosuch: profile: expected a profile name .*got not found"):
        load_profile("nosuch")
    with pytest.raises(DetflowClusterError, match=r"no_such\.yaml: profile: expected an existing profile YAML"):
        load_profile(tmp_path / "no_such.yaml")
    # the key came from the environment: the error names the variable
    monkeypatch.setenv("DETFLOW_CLUSTER__GATEWAY__CLUSTERNAME", "x")
    with pytest.raises(DetflowClusterError, match=r"^environment: DETFLOW_CLUSTER__GATEWAY__CLUSTERNAME: expected"):
        resolve("gateway")
    monkeypatch.delenv("DETFLOW_CLUSTER__GATEWAY__CLUSTERNAME")
    # ... or from the arguments
    with pytest.raises(DetflowClusterError, match=r"^arguments: security: expected ca_file and cert"):
        resolve(address="tls://127.0.0.1:1", security={"key": "k.pem"})
    # a detflow input error: the CLI prints it as one line
    assert issubclass(DetflowClusterError, detflow.DetflowInputError)


@pytest.mark.parametrize("kind, module, package", [("slurm", "dask_jobqueue", "dask-jobqueue"),
                                                   ("kubernetes", "dask_kubernetes", "dask-kubernetes"),
                                                   ("gateway", "dask_gateway", "dask-gateway")])  # fmt: skip
def test_missing_optional_backend_names_the_package(kind, module, package, monkeypatch):
    # as if not installed: the package and any of its modules an earlier test in this process imported
    # (import_module finds a cached submodule without looking at its package)
    for name in [module, *(n for n in sys.modules if n.startswith(module + "."))]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(DetflowClusterError, match=rf"packaged:{kind}: kind: expected the {package} package for "
                       rf"kind {kind} \(pip install 'detflow\[{kind}\]', or pip install {package}\), got "
                       r"(ModuleNotFoundError|ImportError)"):  # fmt: skip
        with connect(kind):
            pass


# ---- LocalCluster --------------------------------------------------------------------------------------------
def test_default_local_cluster_binds_localhost():
    with get_client(ClusterConfig()) as c:  # the runtime's path: the defaults, as before
        assert c.scheduler.address.startswith("tcp://127.0.0.1:")
        assert c.dashboard_link.startswith("http://127.0.0.1:")
        info = c.scheduler_info()
        assert len(info["workers"]) == 1
        (w,) = info["workers"].values()
        assert w["host"] == "127.0.0.1" and w["nthreads"] == (os.cpu_count() or 1)
        env = c.run(lambda: {k: os.environ.get(k) for k in dc.WORKER_ENV})
        assert list(env.values()) == [dc.WORKER_ENV]
        dash = c.run_on_scheduler(lambda dask_scheduler: dask_scheduler.http_server.port)
        assert c.dashboard_link.startswith(f"http://127.0.0.1:{dash}/")
        assert not c.run(lambda dask_worker: hasattr(dask_worker, "detflow_warmup")).popitem()[1]  # off by default


def test_tls_local_cluster_temporary_and_files(tmp_path):
    from distributed.security import Security

    with connect(protocol="tls", security={"temporary": True}, processes=False, n_workers=1, threads_per_worker=1,
                 dashboard_address="127.0.0.1:0") as c:  # fmt: skip
        assert c.scheduler.address.startswith("tls://127.0.0.1:")
        assert all(a.startswith("tls://127.0.0.1:") for a in c.scheduler_info()["workers"])
        assert c.submit(sum, [1, 2]).result() == 3
    # credentials from PEM files, as a profile names them (one pair for every role)
    tmp = Security.temporary()
    for name, text in (("ca.pem", tmp.tls_ca_file), ("node.pem", tmp.tls_scheduler_cert),
                       ("node-key.pem", tmp.tls_scheduler_key)):  # fmt: skip
        (tmp_path / name).write_text(text)
    prof = tmp_path / "tls.yaml"
    prof.write_text(yaml.safe_dump({"kind": "local", "protocol": "tls", "processes": False, "n_workers": 1,
                                    "threads_per_worker": 1, "dashboard_address": "127.0.0.1:0",
                                    "security": {"ca_file": str(tmp_path / "ca.pem"),
                                                 "cert": str(tmp_path / "node.pem"),
                                                 "key": str(tmp_path / "node-key.pem")}}))  # fmt: skip
    sec = dc.security_for(load_profile(prof))
    assert sec.require_encryption and sec.tls_client_cert == str(tmp_path / "node.pem")
    with connect(prof) as c:
        assert c.scheduler.address.startswith("tls://127.0.0.1:")
        assert c.submit(sum, [2, 3]).result() == 5
    (tmp_path / "ca.pem").unlink()
    with pytest.raises(DetflowClusterError, match=r"tls\.yaml: security\.ca_file: expected an existing PEM file"):
        connect(prof).__enter__()


def test_warmup_plugin_on_local_cluster():
    with connect(processes=False, n_workers=1, threads_per_worker=1, dashboard_address="127.0.0.1:0", warmup=True,
                 warmup_level="import") as c:  # fmt: skip
        (state,) = dc.warmup_status(c).values()
        assert state["status"] == "done" and state["level"] == "import"
        assert "detflow.kernels.ramp" in state["modules"] and state["errors"] == []


# ---- a real scheduler and worker, started as processes -------------------------------------------------------
@pytest.fixture(scope="module")
def processes(tmp_path_factory):
    """``dask scheduler`` and ``dask worker --preload detflow.cluster`` on 127.0.0.1, random ports."""
    tmp = tmp_path_factory.mktemp("sched")
    sfile = tmp / "scheduler.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETFLOW_")}
    env.update(dc.WORKER_ENV, DETFLOW_WARMUP="wfi", DETFLOW_CHECKSUM_CACHE="off")
    logs = [open(tmp / "scheduler.log", "wb"), open(tmp / "worker.log", "wb")]
    procs = [subprocess.Popen([BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--dashboard-address", "127.0.0.1:0", "--scheduler-file", sfile],
                              stdout=logs[0], stderr=subprocess.STDOUT, env=env)]  # fmt: skip
    try:
        for _ in range(300):
            if sfile.exists() and sfile.stat().st_size:
                break
            time.sleep(0.1)
        address = json.loads(sfile.read_text())["address"]
        procs.append(subprocess.Popen([BIN / "dask", "worker", "--scheduler-file", sfile, "--preload",
                                       "detflow.cluster", "--nthreads", "1", "--dashboard-address", "127.0.0.1:0", "--host",
                                       "127.0.0.1",
                                       "--memory-limit", "2GB"],
                                      stdout=logs[1], stderr=subprocess.STDOUT, env=env))  # fmt: skip
        from distributed import Client

        with Client(address, timeout=30) as c:
            c.wait_for_workers(1, timeout=120)
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                (state,) = dc.warmup_status(c).values()
                if state and state.get("status") not in (None, "running"):
                    break
                time.sleep(0.5)
        yield {"address": address, "scheduler_file": sfile, "worker_log": tmp / "worker.log"}
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in logs:
            f.close()


def test_connect_by_address_and_preload_warmup(processes):
    with connect(address=processes["address"]) as c:  # versions checked on connect (kind address)
        assert c.scheduler.address == processes["address"]
        ((addr, state),) = dc.warmup_status(c).items()
        assert addr.startswith("tcp://127.0.0.1:")
        assert state["status"] == "done" and state["level"] == "wfi", state
        assert state["numba_num_threads"] == 1 and state["errors"] == []
        assert "ramp.linearize_dark_fit" in state["compiled"], state["compiled"]  # the default recipe, fused
        (mem,) = (w["memory_limit"] for w in c.scheduler_info()["workers"].values())
        assert mem == 2_000_000_000
        # registering the plugin again does not warm the worker twice
        c.register_plugin(dc.WarmupPlugin(), name=dc.WarmupPlugin.name)
        assert dc.warmup_status(c)[addr]["pid"] == state["pid"] and dc.warmup_status(c)[addr]["seconds"] == state[
            "seconds"]  # fmt: skip
        table = dc.check_versions(c)
    assert table["client"]["detflow"] == table[addr]["detflow"] == detflow.__version__
    assert table["scheduler"]["distributed"] == table[addr]["distributed"]
    assert "detflow warm-up (wfi) on tcp://127.0.0.1:" in processes["worker_log"].read_text()


def test_connect_by_scheduler_file(processes, monkeypatch):
    with connect(scheduler_file=processes["scheduler_file"]) as c:
        assert c.scheduler.address == processes["address"]
        assert c.submit(lambda: os.environ["NUMBA_NUM_THREADS"]).result() == "1"
    with get_client(ClusterConfig(scheduler_file=processes["scheduler_file"])) as c:
        assert c.scheduler.address == processes["address"]
    monkeypatch.setenv("DETFLOW_SCHEDULER_FILE", str(processes["scheduler_file"]))
    with connect() as c:
        assert c.scheduler.address == processes["address"]
    with pytest.raises(DetflowClusterError, match=r"nothere\.json: scheduler_file: expected the file written by"):
        connect(scheduler_file=processes["scheduler_file"].with_name("nothere.json")).__enter__()


def test_version_mismatch_is_one_clear_error(processes, monkeypatch):
    real = detflow.__version__
    monkeypatch.setattr(detflow, "__version__", "0.0.0.dev-client")
    with pytest.raises(DetflowClusterError) as err:
        with connect(address=processes["address"]):
            pass
    msg = str(err.value)
    assert msg.startswith(f"{processes['address']}: versions: expected the same detflow, dask and distributed")
    assert f"got detflow: client 0.0.0.dev-client, scheduler {real}, worker tcp://127.0.0.1:" in msg
    assert msg.endswith(f" {real}")
    assert "dask:" not in msg and "distributed:" not in msg  # only what differs
    with connect(address=processes["address"], check_versions=False) as c, pytest.warns(UserWarning, match="detflow"):
        dc.check_versions(c, strict=False)


def test_version_rule_which_nodes_count():
    """distributed's rule (its error_message) decides: the scheduler counts for dask and distributed, not for
    numpy and friends; its detflow counts when it has one."""
    from detflow.runtime.cluster.versions import _mismatch

    row = {"detflow": "1.0", "dask": "2026.1", "numpy": "2.0"}
    table = {"client": dict(row), "scheduler": {**row, "detflow": None, "numpy": "1.0"}, "tcp://w:1": dict(row)}
    assert [_mismatch(p, table) for p in row] == [None, None, None]
    table["scheduler"]["dask"] = "2025.1"
    assert _mismatch("dask", table) == {"client": "2026.1", "scheduler": "2025.1", "tcp://w:1": "2026.1"}
    table["scheduler"]["detflow"] = "0.9"
    assert _mismatch("detflow", table) == {"client": "1.0", "scheduler": "0.9", "tcp://w:1": "1.0"}
    table["tcp://w:1"]["numpy"] = None  # not installed on a worker
    assert _mismatch("numpy", table) == {"client": "2.0", "tcp://w:1": None}


# ---- deploy files ------------------------------------------------------------------------------------------
def test_kubernetes_manifests_set_worker_env_preload_and_limits():
    docs = {}
    for f in (DEPLOY / "kubernetes").glob("*.yaml"):
        for doc in yaml.safe_load_all(f.read_text()):
            if doc and "kind" in doc:  # (operator-values.yaml: Helm values)
                docs.setdefault(doc["kind"], []).append(doc)
    clusters = docs["DaskCluster"] + [d["spec"]["cluster"] for d in docs["DaskJob"]]
    assert len(clusters) >= 2
    for cl in clusters:
        spec = cl["spec"]
        (worker,) = spec["worker"]["spec"]["containers"]
        args = " ".join(worker["args"])
        assert "--preload detflow.cluster" in args and "--memory-limit" in args
        env = {e["name"]: e.get("value") for e in worker["env"]}
        assert env["NUMBA_NUM_THREADS"] == "1" and worker["resources"]["limits"]["memory"]
        (sched,) = spec["scheduler"]["spec"]["containers"]
        assert sched["args"][:2] == ["dask", "scheduler"]
    job = docs["DaskJob"][0]["spec"]["job"]["spec"]["containers"][0]
    assert job["args"][:2] == ["detflow", "run"]
    # TLS everywhere: the scheduler listens on tls, workers and clients are told a tls:// address
    for cl in clusters:
        (sched,) = cl["spec"]["scheduler"]["spec"]["containers"]
        assert "--protocol tls" in " ".join(sched["args"])
    addresses = [
        e["value"]
        for d in docs["DaskCluster"] + docs["DaskJob"] + docs["Pod"]
        for e in _containers_env(d)
        if e["name"] in ("DASK_SCHEDULER_ADDRESS", "DETFLOW_SCHEDULER_ADDRESS")
    ]
    assert addresses and all(a.startswith("tls://") for a in addresses)


def _containers_env(doc):
    specs = {
        "Pod": lambda d: [d["spec"]],
        "DaskCluster": lambda d: [d["spec"]["worker"]["spec"]],
        "DaskJob": lambda d: [d["spec"]["job"]["spec"], d["spec"]["cluster"]["spec"]["worker"]["spec"]],
    }
    return [e for spec in specs[doc["kind"]](doc) for c in spec["containers"] for e in c.get("env", [])]


# ---- optional back ends (skipped where their package is not installed) ---------------------------------------
def test_slurm_profile_job_script(monkeypatch, tmp_path):
    """The slurm profile on top of deploy/slurm/jobqueue.yaml: the job script dask-jobqueue would sbatch.
    TLS by default (temporary credentials, the workers' copy in a directory only the user reads), and
    nothing listens on every interface: the scheduler on this host's name, the dashboard and each worker's
    HTTP server on 127.0.0.1, each worker on its node's name."""
    pytest.importorskip("dask_jobqueue")
    import socket

    import dask
    import psutil

    conf = yaml.safe_load((DEPLOY / "slurm" / "jobqueue.yaml").read_text())
    creds = tmp_path / "tls-tmp"
    with dask.config.set({f"jobqueue.slurm.{k}": v for k, v in conf["jobqueue"]["slurm"].items()}):
        prof = resolve("slurm", slurm={"queue": "debug", "job_script_prologue": None,
                                       "shared_temp_directory": str(creds)}, check_versions=False)  # fmt: skip
        assert prof.security.temporary  # the packaged profile's default
        cluster, owns = backends._slurm(prof)
        try:
            script = cluster.job_script()
            assert cluster.scheduler.address.startswith("tls://")
            sockets = cluster.scheduler.http_server._sockets.values()
            assert {s.getsockname()[0] for s in sockets} == {"127.0.0.1"}  # the dashboard stays on localhost
            listening = {c.laddr.ip for c in psutil.Process().net_connections("inet") if c.status == "LISTEN"}
            assert "0.0.0.0" not in listening and "::" not in listening
            assert cluster.scheduler.address.split("://")[1].rsplit(":", 1)[0] == socket.gethostbyname(
                socket.gethostname())  # fmt: skip
        finally:
            cluster.close()
    assert owns and "#SBATCH -p debug" in script and "#SBATCH -t 02:00:00" in script
    assert "source ~/detflow/.venv/bin/activate" in script and "export NUMBA_NUM_THREADS=1" in script
    assert script.count("--preload detflow.cluster") == 1  # from jobqueue.yaml, not added twice
    assert "--nthreads 8" in script and "--memory-limit 29.80GiB" in script
    assert "--host $(hostname)" in script and "--dashboard-address 127.0.0.1:0" in script
    assert "--protocol tls://" in script and f"--tls-ca-file {creds}/" in script and f"--tls-key {creds}/" in script
    assert creds.stat().st_mode & 0o777 == 0o700
    with dask.config.set({f"jobqueue.slurm.{k}": v for k, v in conf["jobqueue"]["slurm"].items()}):
        preview = dc.slurm_job_script(slurm={"queue": "short", "shared_temp_directory": str(creds)})
    assert "#SBATCH -p short" in preview and "--preload detflow.cluster" in preview


def test_kubernetes_profile_cluster_spec(monkeypatch):
    """The kubernetes profile's DaskCluster spec (KubeCluster itself needs a Kubernetes API: replaced)."""
    op = pytest.importorskip("dask_kubernetes.operator")
    seen = {}

    class FakeKubeCluster:
        def __init__(self, **kwargs):
            seen.update(kwargs)

    monkeypatch.setattr(op, "KubeCluster", FakeKubeCluster)
    backends._kubernetes(resolve("kubernetes"))
    spec = seen["custom_cluster_spec"]["spec"]
    (worker,) = spec["worker"]["spec"]["containers"]
    (sched,) = spec["scheduler"]["spec"]["containers"]
    assert worker["args"][:4] == ["dask", "worker", "--preload", "detflow.cluster"]
    assert {"name": "NUMBA_NUM_THREADS", "value": "1"} in worker["env"]
    assert worker["resources"]["limits"]["memory"] == "8Gi" and sched["resources"]["limits"]["memory"] == "2Gi"
    assert sched["args"][:4] == ["dask", "scheduler", "--host", "0.0.0.0"]
    assert spec["worker"]["replicas"] == 2 and seen["name"] == "detflow"


def test_gateway_profile_new_and_existing_cluster(monkeypatch):
    """The gateway profile's calls (a real gateway server is not started here: Gateway replaced)."""
    gw = pytest.importorskip("dask_gateway")
    calls = []

    class FakeCluster:
        def scale(self, n):
            calls.append(("scale", n))

        def adapt(self, minimum, maximum):
            calls.append(("adapt", minimum, maximum))

    class FakeGateway:
        def __init__(self, **kwargs):
            calls.append(("Gateway", kwargs))

        def new_cluster(self, shutdown_on_close, **options):
            calls.append(("new_cluster", shutdown_on_close, options))
            return FakeCluster()

        def connect(self, name, shutdown_on_close):
            calls.append(("connect", name, shutdown_on_close))
            return FakeCluster()

    monkeypatch.setattr(gw, "Gateway", FakeGateway)
    prof = resolve("gateway", gateway={"cluster_options": {"worker_memory": 8}})
    cluster, owns = backends._gateway(prof)
    backends._scale(cluster, prof)
    assert owns and calls[0][1]["address"] == "https://gateway.example.org"
    assert calls[1:] == [("new_cluster", True, {"worker_memory": 8}), ("scale", 2)]
    calls.clear()
    prof = resolve("gateway", gateway={"cluster_name": "abc"}, adapt={"maximum": 5})
    cluster, owns = backends._gateway(prof)
    backends._scale(cluster, prof)
    assert calls[1:] == [("connect", "abc", False), ("adapt", 0, 5)]  # closing it only disconnects
