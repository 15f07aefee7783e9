"""Cluster profiles as validated models: :class:`Profile` and the blocks of its back ends. Unknown keys are
errors (``extra="forbid"``); :mod:`.profiles` names the file, job block or variable that set them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import Field

KINDS = ("local", "address", "scheduler_file", "slurm", "kubernetes", "gateway")


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")


class TLSConfig(_Strict):
    """TLS for a ``tls://`` scheduler: one CA and one certificate/key pair, used for every role."""

    ca_file: Path | None = Field(None, description="CA certificate(s) (PEM)")
    cert: Path | None = Field(None, description="certificate of this client / node (PEM)")
    key: Path | None = Field(None, description="its private key (PEM); may be the same file as cert")
    temporary: bool = Field(False, description="self-signed credentials made in memory "
                            "(distributed.security.Security.temporary()): a LocalCluster or tests only")  # fmt: skip
    require_encryption: bool = Field(True, description="refuse unencrypted connections")

    @pydantic.model_validator(mode="after")
    def _complete(self) -> TLSConfig:
        if not self.temporary and not (self.ca_file and self.cert):
            raise ValueError("ca_file and cert (and key, unless the cert file holds it), or temporary: true")
        return self


class AdaptConfig(_Strict):
    minimum: int = Field(0, ge=0, description="fewest workers")
    maximum: int = Field(..., ge=1, description="most workers")


def _walltime(v):
    # an unquoted 02:00:00 is a YAML 1.1 base-60 integer (7200): give it back its spelling
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v // 3600:02d}:{v // 60 % 60:02d}:{v % 60:02d}"
    return v


class SlurmOptions(_Strict):
    """dask-jobqueue ``SLURMCluster`` arguments; a key left out (null) takes dask-jobqueue's configuration
    (``jobqueue.slurm.*``, e.g. ``~/.config/dask/jobqueue.yaml``: see deploy/slurm/jobqueue.yaml)."""

    queue: str | None = Field(None, description="partition (#SBATCH -p)")
    account: str | None = Field(None, description="#SBATCH -A")
    cores: int | None = Field(None, ge=1, description="cores per job")
    processes: int | None = Field(None, ge=1, description="worker processes per job (threads = cores / processes)")
    memory: str | None = Field(None, description="memory per job, e.g. 32GB (split between its worker processes)")
    walltime: str | None = Field(None, description="#SBATCH -t, e.g. '02:00:00' (quote it in YAML)")
    job_cpu: int | None = Field(None, ge=1, description="#SBATCH --cpus-per-task (default: cores)")
    job_mem: str | None = Field(None, description="#SBATCH --mem (default: memory)")
    job_extra_directives: list[str] | None = Field(None, description="more #SBATCH lines, e.g. ['--exclusive']")
    job_script_prologue: list[str] | None = Field(None, description="shell lines before the worker starts "
                                                  "(module load, source venv/bin/activate); the worker "
                                                  "environment (NUMBA_NUM_THREADS=1, ...) is appended")  # fmt: skip
    worker_extra_args: list[str] | None = Field(None, description="more `dask worker` arguments")
    local_directory: str | None = Field(None, description="worker spill directory (fast local disk, $TMPDIR)")
    log_directory: str | None = Field(None, description="where the job logs go")
    shared_temp_directory: str | None = Field(None, description="shared directory for temporary TLS "
                                              "credentials (security: {temporary: true})")  # fmt: skip
    interface: str | None = Field(None, description="network interface of scheduler and workers (ib0, eth0)")
    python: str | None = Field(None, description="python of the workers (default: this one)")
    death_timeout: float | None = Field(None, description="seconds a worker waits for the scheduler")
    scheduler_options: dict[str, Any] | None = Field(None, description="Scheduler arguments (host, port, ...)")
    jobs: int | None = Field(None, ge=0, description="scale to this many jobs (instead of n_workers)")

    @pydantic.field_validator("walltime", mode="before")
    @classmethod
    def _wt(cls, v):
        return _walltime(v)


class KubernetesOptions(_Strict):
    """Dask Kubernetes operator ``KubeCluster`` arguments (null: the operator's defaults)."""

    name: str = Field("detflow", description="DaskCluster name")
    namespace: str | None = Field(None, description="namespace (default: the current context's)")
    image: str = Field("detflow:0.1.0", description="image of scheduler and workers (deploy/docker/Dockerfile)")
    resources: dict[str, dict[str, str]] | None = Field(None, description="worker container resources: "
                                                       "{requests: {cpu, memory}, limits: {cpu, memory}}")  # fmt: skip
    scheduler_resources: dict[str, dict[str, str]] | None = Field(None, description="scheduler container "
                                                                 "resources (default: none set)")  # fmt: skip
    env: dict[str, str] = Field(default_factory=dict, description="more container environment")
    custom_cluster_spec: Path | None = Field(None, description="a DaskCluster manifest to create instead "
                                             "(plain tcp); image/resources/env then unused")  # fmt: skip
    create_mode: Literal["CREATE_OR_CONNECT", "CREATE_ONLY", "CONNECT_ONLY"] | None = None
    shutdown_on_close: bool | None = Field(None, description="delete the DaskCluster on close (default: if created)")
    scheduler_service_type: str | None = Field(None, description="ClusterIP (default), NodePort, LoadBalancer")
    port_forward_cluster_ip: bool | None = Field(None, description="port-forward the scheduler from outside "
                                                 "the cluster (kubectl port-forward)")  # fmt: skip
    idle_timeout: int | None = Field(None, ge=0, description="seconds idle before the operator deletes it")
    resource_timeout: int | None = Field(None, ge=0, description="seconds to wait for the resources")


class GatewayOptions(_Strict):
    """dask-gateway: a new cluster (``Gateway().new_cluster``) or an existing one (``cluster_name``)."""

    address: str | None = Field(None, description="gateway URL (default: dask config gateway.address)")
    proxy_address: str | None = Field(None, description="scheduler proxy (default: the address)")
    public_address: str | None = Field(None, description="address for dashboard links")
    auth: str | None = Field(None, description="basic, kerberos or jupyterhub (default: dask config)")
    cluster_name: str | None = Field(None, description="connect to this running cluster instead of creating one")
    cluster_options: dict[str, Any] = Field(default_factory=dict, description="server-defined options, e.g. "
                                            "{image: ..., worker_memory: 8, environment: {...}}")  # fmt: skip
    shutdown_on_close: bool | None = Field(None, description="stop the cluster on close (default: if created)")


class Profile(_Strict):
    """One cluster profile (a YAML file in deploy/profiles/, a job's ``cluster:`` block on top)."""

    kind: Literal["local", "address", "scheduler_file", "slurm", "kubernetes", "gateway"] = "local"
    description: str | None = Field(None, description="free text")
    # workers (local: the LocalCluster; slurm/kubernetes/gateway: how many to scale to)
    n_workers: int | None = Field(None, ge=0, description="worker processes (local: default 1)")
    threads_per_worker: int | None = Field(None, ge=1, description="threads per worker (local: cores / workers)")
    memory_limit: str | int | float | None = Field("auto", description="per-worker memory limit (local)")
    processes: bool = Field(True, description="local: worker processes (false: threads in this process)")
    adapt: AdaptConfig | None = Field(None, description="adaptive scaling instead of n_workers")
    env: dict[str, str] = Field(default_factory=dict, description="more worker environment (on top of "
                                "NUMBA_NUM_THREADS=1 and friends)")  # fmt: skip
    # network
    host: str = Field("127.0.0.1", description="local: the scheduler's and the workers' interface")
    dashboard_address: str = Field("127.0.0.1:8787", description="dashboard (local, slurm): localhost only "
                                   "by default; reach it with an ssh tunnel or kubectl port-forward")  # fmt: skip
    protocol: Literal["tcp", "tls"] | None = Field(None, description="local/slurm: tls with a security block")
    address: str | None = Field(None, description="address: tcp://host:8786 or tls://host:8786")
    scheduler_file: Path | None = Field(None, description="scheduler_file: the JSON file of dask scheduler")
    security: TLSConfig | None = Field(None, description="TLS credentials (tls:// addresses)")
    timeout: float = Field(30.0, gt=0, description="seconds to connect to the scheduler")
    wait_for_workers: int | None = Field(None, ge=1, description="wait until this many workers are up")
    wait_timeout: float = Field(600.0, gt=0, description="seconds to wait for them")
    # behaviour
    warmup: bool = Field(False, description="compile the numba kernels on every worker when it starts")
    warmup_level: Literal["import", "wfi"] = Field("wfi", description="import: import the kernel modules; "
                                                   "wfi: also compile the WFI kernels on a tiny exposure")  # fmt: skip
    check_versions: bool | None = Field(None, description="compare detflow/dask/distributed of client, "
                                        "scheduler and workers (default: yes, unless kind is local)")  # fmt: skip
    # back ends
    slurm: SlurmOptions | None = None
    kubernetes: KubernetesOptions | None = None
    gateway: GatewayOptions | None = None

    _source: str = pydantic.PrivateAttr("<defaults>")

    @property
    def source(self) -> str:
        """Where this profile came from (a file, ``packaged:NAME``, or ``<defaults>``)."""
        return self._source

    @pydantic.model_validator(mode="after")
    def _kind_needs(self) -> Profile:
        if self.kind == "address":
            if not self.address:
                raise ValueError("kind address needs an address (tcp://host:8786 or tls://host:8786)")
            if "://" in self.address and self.address.split("://")[0] not in ("tcp", "tls", "inproc", "ws", "wss"):
                raise ValueError(f"a tcp:// or tls:// address, got {self.address!r}")
        if self.kind == "scheduler_file" and not self.scheduler_file:
            raise ValueError("kind scheduler_file needs a scheduler_file")
        if self.protocol == "tls" and self.security is None:
            raise ValueError("protocol tls needs a security block (ca_file, cert, key; or temporary: true)")
        return self

    def summary(self) -> str:
        where = {"address": self.address, "scheduler_file": str(self.scheduler_file)}.get(self.kind, "")
        return f"{self.kind}{' ' + where if where else ''} (profile {self.source})"
