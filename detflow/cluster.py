"""The one cluster factory: profiles, ``connect()``, worker warm-up and the version check.

Used by the CLI (``--profile``, ``--scheduler``, ``--scheduler-file``), the Python API and the
notebooks::

    from detflow.cluster import connect
    with connect() as client:                      # embedded LocalCluster on 127.0.0.1
        ...
    with connect("slurm", n_workers=8) as client:  # deploy/profiles/slurm.yaml (dask-jobqueue)
        ...
    with connect(address="tls://sched:8786", security={"ca_file": ..., "cert": ..., "key": ...}) as c:
        ...

Kinds of cluster (``kind:`` in a profile): ``local`` (an embedded LocalCluster, the default; scheduler,
workers and dashboard bind to 127.0.0.1), ``address`` (a running scheduler, ``tcp://`` or ``tls://``),
``scheduler_file`` (a running scheduler that wrote ``dask scheduler --scheduler-file``), ``slurm``
(dask-jobqueue's ``SLURMCluster``), ``kubernetes`` (the Dask Kubernetes operator's ``KubeCluster``) and
``gateway`` (dask-gateway). The last three are optional packages, imported only when used
(``pip install 'detflow[slurm]'``, ``[kubernetes]``, ``[gateway]``).

A profile is a YAML file validated by :class:`Profile` (unknown keys are errors naming the file and
the key). ``connect("NAME")`` looks for ``NAME.yaml`` in ``$DETFLOW_PROFILE_PATH`` (colon-separated),
then ``~/.config/detflow/profiles`` (``$XDG_CONFIG_HOME/detflow/profiles``), then the profiles shipped
with detflow (the same text as ``deploy/profiles/*.yaml``); a path to a YAML file works too. Layers,
later ones win: the profile file, the job's ``cluster:`` block, the environment
(``DETFLOW_CLUSTER__<KEY>``, ``__`` for nesting, values parsed as JSON when they parse, else strings;
``DETFLOW_SCHEDULER_ADDRESS``, ``DETFLOW_SCHEDULER_FILE``; ``DETFLOW_PROFILE`` names the profile
when none is given), then the arguments of :func:`connect` (the CLI flags).

Workers: ``NUMBA_NUM_THREADS=1`` (and OMP/MKL/OPENBLAS) in their environment, since dask owns
parallelism and the kernels are single-threaded; a memory limit per worker; optionally a warm-up that
compiles the numba kernels when a worker starts (:class:`WarmupPlugin`, or ``dask worker --preload
detflow.cluster``, which runs :func:`dask_setup`). On connecting to a cluster detflow did not start in
this process, the detflow, dask and distributed versions of the client, the scheduler and the workers
must agree (:func:`check_versions`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import shlex
import socket
import tempfile
import time
import warnings
from pathlib import Path
from collections.abc import Iterator
from typing import Any, Literal

import pydantic
import yaml
from distributed import Client, WorkerPlugin
from pydantic import Field

from .errors import DetflowInputError

logger = logging.getLogger(__name__)
worker_logger = logging.getLogger("distributed.detflow")  # in a worker: shown with distributed's own log lines

WORKER_ENV = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1"}  # fmt: skip
"""Set in every worker's environment: dask owns parallelism, kernels never start threads of their own."""

ENV_PREFIX = "DETFLOW_CLUSTER__"
KINDS = ("local", "address", "scheduler_file", "slurm", "kubernetes", "gateway")
BACKENDS = {  # kind: (module, package, extra)
    "slurm": ("dask_jobqueue", "dask-jobqueue", "slurm"),
    "kubernetes": ("dask_kubernetes.operator", "dask-kubernetes", "kubernetes"),
    "gateway": ("dask_gateway", "dask-gateway", "gateway"),
}
STRICT_PACKAGES = ("detflow", "dask", "distributed")  # a mismatch is an error
WARN_PACKAGES = ("numpy", "numba", "zarr", "xarray")  # a mismatch is a warning
WARMUP_LEVELS = ("off", "import", "wfi")


class DetflowClusterError(DetflowInputError):
    """A cluster that cannot be used as asked: a bad or missing profile, a missing optional package,
    mismatched versions. Reads like every detflow input error: ``<where>: <field>: expected ..., got ...``."""


class SchedulerUnreachable(DetflowClusterError):
    """No scheduler answered at the address (within the timeout): nothing listens there, or the network
    does not get there."""

    @classmethod
    def of(cls, address, exc: BaseException, timeout: float | None = None) -> "SchedulerUnreachable":
        within = f" within {timeout:g} s" if timeout else ""
        return cls(address, "scheduler", f"a running scheduler that answers{within}",
                   f"unreachable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")  # fmt: skip


# ---- profiles ----------------------------------------------------------------------------------------------
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
    def _complete(self) -> "TLSConfig":
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
    def _kind_needs(self) -> "Profile":
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


def profile_dirs() -> list[Path]:
    """Directories searched for ``NAME.yaml``, in order (the packaged profiles come after them)."""
    dirs = [Path(p).expanduser() for p in os.environ.get("DETFLOW_PROFILE_PATH", "").split(os.pathsep) if p]
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config").expanduser()
    dirs.append(config / "detflow" / "profiles")
    return dirs


def packaged_profiles() -> dict[str, str]:
    """The profiles shipped with detflow: ``{name: YAML text}`` (the text of deploy/profiles/*.yaml)."""
    from ._profiles import PROFILES

    return dict(PROFILES)


def list_profiles() -> dict[str, str]:
    """Every profile name that :func:`find_profile` resolves, and where it comes from."""
    found: dict[str, str] = {}
    for d in profile_dirs():
        if d.is_dir():
            for f in sorted(d.iterdir()):
                if f.suffix in (".yaml", ".yml"):
                    found.setdefault(f.stem, str(f))
    for name in packaged_profiles():
        found.setdefault(name, f"packaged:{name}")
    return found


def find_profile(name: str | os.PathLike) -> tuple[str, str]:
    """``(source, YAML text)`` of a profile given by name or path."""
    text = str(name)
    p = Path(text).expanduser()
    if p.suffix in (".yaml", ".yml") or os.sep in text or "/" in text:
        if not p.is_file():
            raise DetflowClusterError(p, "profile", "an existing profile YAML file", "no such file")
        return str(p), p.read_text()
    for d in profile_dirs():
        for suffix in (".yaml", ".yml"):
            f = d / f"{text}{suffix}"
            if f.is_file():
                return str(f), f.read_text()
    packaged = packaged_profiles()
    if text in packaged:
        return f"packaged:{text}", packaged[text]
    searched = ", ".join(str(d) for d in profile_dirs())
    raise DetflowClusterError(text, "profile", f"a profile name found as NAME.yaml in {searched} or shipped with "
                              f"detflow ({', '.join(sorted(packaged))}), or a path to a YAML file", "not found")  # fmt: skip


def _read_yaml(source: str, text: str) -> dict:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DetflowClusterError(source, "YAML", "valid YAML", str(exc).splitlines()[0]) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise DetflowClusterError(source, "<root>", "a mapping of profile keys", type(raw).__name__)
    return raw


def load_profile(name: str | os.PathLike) -> Profile:
    """A profile file alone (no job block, environment or arguments on top), validated."""
    source, text = find_profile(name)
    return _validate([(source, _read_yaml(source, text))], source)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _env_value(raw: str):
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def env_overrides(environ: dict[str, str] | None = None) -> tuple[dict, dict[tuple, str]]:
    """The profile keys set in the environment, and the variable that set each (for error messages)."""
    environ = os.environ if environ is None else environ
    out: dict = {}
    names: dict[tuple, str] = {}
    for var in sorted(environ):
        if var.startswith(ENV_PREFIX):
            path = tuple(part.lower() for part in var[len(ENV_PREFIX):].split("__") if part)
            if not path:
                continue
            node = out
            for part in path[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise DetflowClusterError("environment", var, "a key inside a mapping", "a value above it")
            node[path[-1]] = _env_value(environ[var])
            names[path] = var
    if environ.get("DETFLOW_SCHEDULER_FILE"):
        out.update(kind="scheduler_file", scheduler_file=environ["DETFLOW_SCHEDULER_FILE"])
        names[("scheduler_file",)] = "DETFLOW_SCHEDULER_FILE"
    if environ.get("DETFLOW_SCHEDULER_ADDRESS"):
        out.update(kind="address", address=environ["DETFLOW_SCHEDULER_ADDRESS"])
        names[("address",)] = "DETFLOW_SCHEDULER_ADDRESS"
    return out, names


def _config_layer(cfg) -> dict:
    """The profile keys a job's ``cluster:`` block sets (only those it sets: defaults stay the profile's)."""
    if cfg is None:
        return {}
    fields = cfg.model_fields_set
    layer: dict = {}
    for key in ("n_workers", "threads_per_worker", "memory_limit", "dashboard_address"):
        if key in fields and getattr(cfg, key) is not None:
            layer[key] = getattr(cfg, key)
    layer = _merge(layer, dict(getattr(cfg, "options", None) or {}))
    if getattr(cfg, "scheduler_file", None):
        layer.update(kind="scheduler_file", scheduler_file=cfg.scheduler_file)
    if cfg.scheduler:
        layer.update(kind="address", address=cfg.scheduler)
    return layer


def _find_source(layers: list[tuple[str, dict]], loc: tuple, env_names: dict[tuple, str]) -> tuple[str, str]:
    """The layer that set the key at ``loc`` (the last one wins), and the key's name in that layer."""
    merged: dict = {}
    for _, layer in layers:
        merged = _merge(merged, layer)
    node: Any = merged
    for n, part in enumerate(loc):  # pydantic may append union members ("str", "int"): keep real keys
        if not (isinstance(node, dict) and part in node):
            loc = loc[:n]
            break
        node = node[part]
    dotted = ".".join(str(x) for x in loc) or "<root>"
    for source, layer in reversed(layers):
        node: Any = layer
        ok = True
        for part in loc:
            if isinstance(node, dict) and part in node:
                node = node[part]
            else:
                ok = False
                break
        if ok and loc:
            if source == "environment":
                for n in range(len(loc), 0, -1):
                    if tuple(loc[:n]) in env_names:
                        return source, env_names[tuple(loc[:n])]
            return source, dotted
    return layers[0][0], dotted


def _validate(layers: list[tuple[str, dict]], source: str, env_names: dict[tuple, str] | None = None) -> Profile:
    merged: dict = {}
    for _, layer in layers:
        merged = _merge(merged, layer)
    try:
        prof = Profile(**merged)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(x for x in err["loc"] if not isinstance(x, int)) if err["loc"] else ()
        where, key = _find_source(layers, loc, env_names or {})
        if err["type"] == "extra_forbidden":
            model = _model_at(loc[:-1])
            raise DetflowClusterError(where, key, "a profile key (" + ", ".join(model.model_fields) + ")",
                                      "unknown key") from None  # fmt: skip
        if err["type"] == "missing":
            raise DetflowClusterError(where, key, "a value", "missing") from None
        raise DetflowClusterError(where, key, err["msg"].removeprefix("Value error, "),
                                  repr(err.get("input"))[:80]) from None  # fmt: skip
    prof._source = source
    return prof


def _model_at(path: tuple) -> type[pydantic.BaseModel]:
    model: type[pydantic.BaseModel] = Profile
    for part in path:
        ann = model.model_fields[part].annotation
        sub = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type)
                    and issubclass(a, pydantic.BaseModel)), None)  # fmt: skip
        if sub is None:
            break
        model = sub
    return model


def resolve(profile: str | os.PathLike | Profile | None = None, *, config=None,
            environ: dict[str, str] | None = None, **overrides) -> Profile:  # fmt: skip
    """The profile to use: the file (or packaged profile, or the defaults), the job's ``cluster:`` block
    (a :class:`~detflow.runtime.config.ClusterConfig`), the environment and ``overrides`` on top.

    ``overrides`` are profile keys (``n_workers=4``, ``slurm={"queue": "debug"}``); ``None`` values are
    ignored; ``address=`` / ``scheduler_file=`` switch the kind to connect to a running scheduler."""
    environ = os.environ if environ is None else environ
    if profile is None and config is not None:
        profile = getattr(config, "profile", None)
    if profile is None:
        profile = environ.get("DETFLOW_PROFILE") or None
    if isinstance(profile, Profile):
        source, base = profile.source, profile.model_dump(exclude_unset=True)
    elif profile is None:
        source, base = "<defaults>", {}
    else:
        source, text = find_profile(profile)
        base = _read_yaml(source, text)
    env, env_names = env_overrides(environ)
    args = {k: v for k, v in overrides.items() if v is not None}
    if args.get("scheduler_file"):
        args.setdefault("kind", "scheduler_file")
    if args.get("address"):
        args["kind"] = "address"
    job_source = getattr(config, "_detflow_source", None) or "job cluster block"
    layers = [(source, base), (job_source, _config_layer(config)), ("environment", env), ("arguments", args)]
    return _validate(layers, source, env_names)


# ---- security ----------------------------------------------------------------------------------------------
def security_for(prof: Profile, address: str | None = None):
    """The ``distributed.security.Security`` of a profile (None: plain tcp). A ``tls://`` address without
    a security block takes the credentials of the dask config (``distributed.comm.tls.*``)."""
    from distributed.security import Security

    tls = prof.security
    if tls is None:
        if (address or prof.address or "").startswith("tls://"):
            sec = Security()  # dask config: distributed.comm.tls.* (DASK_DISTRIBUTED__COMM__TLS__CA_FILE, ...)
            if sec.tls_ca_file and sec.tls_client_cert:
                return sec
            raise DetflowClusterError(prof.source, "security", "TLS credentials for a tls:// address: a security "
                                      "block (ca_file, cert, key) or the dask config distributed.comm.tls.ca-file "
                                      "and distributed.comm.tls.client.cert/key", "none")  # fmt: skip
        return None
    if tls.temporary:
        return Security.temporary()
    files = {}
    for key in ("ca_file", "cert", "key"):
        path = getattr(tls, key)
        if path is None:
            continue
        path = Path(os.path.expandvars(str(path))).expanduser()
        if not path.is_file():
            raise DetflowClusterError(prof.source, f"security.{key}", "an existing PEM file", f"{path}: no such file")
        files[key] = str(path)
    cert, key = files["cert"], files.get("key")
    roles = {f"tls_{role}_{what}": value for role in ("client", "scheduler", "worker")
             for what, value in (("cert", cert), ("key", key)) if value}  # fmt: skip
    return Security(require_encryption=tls.require_encryption, tls_ca_file=files["ca_file"], **roles)


# ---- connect -----------------------------------------------------------------------------------------------
class ClusterHandle:
    """A client and, when detflow started one, its cluster. ``close()`` (or ``with``) releases both."""

    def __init__(self, client: Client, cluster=None, profile: Profile | None = None, owns_cluster: bool = True):
        self.client = client
        self.cluster = cluster
        self.profile = profile
        self._owns = owns_cluster

    @property
    def dashboard_link(self) -> str | None:
        return getattr(self.client, "dashboard_link", None)

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            if self.cluster is not None and self._owns:
                self.cluster.close()

    def __enter__(self) -> "ClusterHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self.client.scheduler.address if self.client.scheduler else "?"
        return f"<ClusterHandle {self.profile.summary() if self.profile else ''} scheduler={where}>"


def _require(prof: Profile):
    module, package, extra = BACKENDS[prof.kind]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DetflowClusterError(prof.source, "kind", f"the {package} package for kind {prof.kind} (pip install "
                                  f"'detflow[{extra}]', or pip install {package})", f"{type(exc).__name__}: {exc}"
                                  ) from exc  # fmt: skip


def _worker_env(prof: Profile) -> dict[str, str]:
    return {**WORKER_ENV, **{k: str(v) for k, v in prof.env.items()}}


def _local(prof: Profile):
    from distributed import LocalCluster

    n = 1 if prof.n_workers is None else prof.n_workers
    threads = prof.threads_per_worker or max(1, (os.cpu_count() or 1) // max(n, 1))
    kwargs: dict[str, Any] = {}
    security = security_for(prof)
    if security is not None:
        kwargs.update(security=security, protocol="tls")
    elif prof.protocol:
        kwargs["protocol"] = prof.protocol
    if prof.processes:
        kwargs["env"] = _worker_env(prof)
    if prof.processes or "protocol" in kwargs:
        kwargs["host"] = prof.host  # (threads without a protocol: inproc://, no network at all)
    # the embedded cluster's own log lines ("Compute Failed" at ERROR, with a task's traceback) would stand
    # above the run's one-line error, which carries the task's exception: they show with detflow -v only
    verbose = logging.getLogger("detflow").isEnabledFor(logging.INFO)
    kwargs["silence_logs"] = logging.WARNING if verbose else logging.CRITICAL
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Port 8787 is already in use.*")
        cluster = LocalCluster(n_workers=n, threads_per_worker=threads, processes=prof.processes,
                               dashboard_address=prof.dashboard_address, memory_limit=prof.memory_limit,
                               **kwargs)  # fmt: skip
    return cluster, True


def _slurm(prof: Profile):
    import dask

    jq = _require(prof)
    o = prof.slurm or SlurmOptions()
    kwargs = {k: v for k, v in o.model_dump(exclude={"jobs", "scheduler_options"}).items() if v is not None}
    prologue = o.job_script_prologue
    if prologue is None:
        prologue = dask.config.get("jobqueue.slurm.job-script-prologue", None) or []
    kwargs["job_script_prologue"] = list(prologue) + [f"export {k}={shlex.quote(v)}" for k, v in
                                                      _worker_env(prof).items()]  # fmt: skip
    extra = o.worker_extra_args
    if extra is None:
        extra = dask.config.get("jobqueue.slurm.worker-extra-args", None) or []
    extra = list(extra)
    if prof.warmup and "detflow.cluster" not in extra:
        extra += ["--preload", "detflow.cluster"]
    if prof.memory_limit not in (None, "auto") and "--memory-limit" not in extra:
        extra += ["--memory-limit", str(prof.memory_limit)]
    sched_opts = {"dashboard_address": prof.dashboard_address, **(o.scheduler_options or {})}
    interface = o.interface or dask.config.get("jobqueue.slurm.interface", None)
    if not interface:  # never every interface (0.0.0.0): the scheduler on this host's name, each worker on its node's
        if "interface" not in sched_opts:
            sched_opts.setdefault("host", socket.gethostname())
        if "--host" not in extra and "--interface" not in extra:
            extra += ["--host", "$(hostname)"]  # (the job script is bash: the node's own name)
    if "--dashboard-address" not in extra:  # a worker's HTTP server (/health, /metrics) too, even without a dashboard
        extra += ["--dashboard-address", "127.0.0.1:0"]
    kwargs["worker_extra_args"] = extra
    kwargs["scheduler_options"] = sched_opts
    if prof.security is not None:
        kwargs["security"] = True if prof.security.temporary else security_for(prof)
        kwargs["protocol"] = "tls://"
        if prof.security.temporary and o.shared_temp_directory:  # the workers' copy of the credentials: yours only
            shared = Path(os.path.expandvars(o.shared_temp_directory)).expanduser()
            shared.mkdir(mode=0o700, parents=True, exist_ok=True)
    cluster = jq.SLURMCluster(**kwargs)
    if o.jobs is not None and prof.adapt is None:
        cluster.scale(jobs=o.jobs)
    return cluster, True


def slurm_job_script(profile: str | os.PathLike | Profile | None = "slurm", **overrides) -> str:
    """The job script a ``slurm`` profile submits for each worker job (nothing is submitted)."""
    prof = resolve(profile, **overrides)
    if prof.kind != "slurm":
        raise DetflowClusterError(prof.source, "kind", "slurm", prof.kind)
    cluster, _ = _slurm(prof)
    try:
        return cluster.job_script()
    finally:
        cluster.close()


def _kubernetes(prof: Profile):
    op = _require(prof)
    o = prof.kubernetes or KubernetesOptions()
    command = ["dask", "worker"] + (["--preload", "detflow.cluster"] if prof.warmup else [])
    if prof.memory_limit not in (None, "auto"):
        command += ["--memory-limit", str(prof.memory_limit)]
    kwargs: dict[str, Any] = {k: getattr(o, k) for k in ("namespace", "create_mode", "shutdown_on_close",
                                                         "scheduler_service_type", "port_forward_cluster_ip",
                                                         "idle_timeout", "resource_timeout")
                              if getattr(o, k) is not None}  # fmt: skip
    if o.create_mode is not None:
        from dask_kubernetes.operator.kubecluster.kubecluster import CreateMode

        kwargs["create_mode"] = CreateMode[o.create_mode]
        if o.create_mode == "CONNECT_ONLY" and o.shutdown_on_close is None:
            kwargs["shutdown_on_close"] = False  # a cluster someone else made outlives this client
    if o.custom_cluster_spec is not None:
        spec: Any = str(Path(o.custom_cluster_spec).expanduser())
    else:
        spec = op.make_cluster_spec(o.name, image=o.image, n_workers=prof.n_workers, resources=o.resources,
                                    env={**_worker_env(prof), **o.env}, worker_command=command)  # fmt: skip
        scheduler = spec["spec"]["scheduler"]["spec"]["containers"][0]
        # the `dask-scheduler` script make_cluster_spec names is gone from distributed 2024+: `dask scheduler`
        scheduler["args"] = ["dask", "scheduler", "--host", "0.0.0.0"] + scheduler["args"][3:]
        scheduler.pop("resources", None)  # make_cluster_spec gives the scheduler the workers' resources
        if o.scheduler_resources:
            scheduler["resources"] = o.scheduler_resources
    cluster = op.KubeCluster(name=o.name, custom_cluster_spec=spec, **kwargs)
    if prof.n_workers is not None and o.custom_cluster_spec is not None and prof.adapt is None:
        cluster.scale(prof.n_workers)
    return cluster, True


def _gateway(prof: Profile):
    gw_mod = _require(prof)
    o = prof.gateway or GatewayOptions()
    gateway = gw_mod.Gateway(address=o.address, proxy_address=o.proxy_address, public_address=o.public_address,
                             auth=o.auth)  # fmt: skip
    if o.cluster_name:  # closing it then only disconnects (unless shutdown_on_close: true)
        shutdown = bool(o.shutdown_on_close) if o.shutdown_on_close is not None else False
        return gateway.connect(o.cluster_name, shutdown_on_close=shutdown), True
    shutdown = True if o.shutdown_on_close is None else o.shutdown_on_close
    options = dict(o.cluster_options)
    cluster = gateway.new_cluster(shutdown_on_close=shutdown, **options)
    return cluster, True


def _scale(cluster, prof: Profile) -> None:
    if prof.adapt is not None:
        cluster.adapt(minimum=prof.adapt.minimum, maximum=prof.adapt.maximum)
    elif prof.n_workers is not None and prof.kind in ("slurm", "gateway") and (
            prof.kind != "slurm" or prof.slurm is None or prof.slurm.jobs is None):  # fmt: skip
        cluster.scale(prof.n_workers)


def start(profile: str | os.PathLike | Profile | None = None, *, address: str | None = None,
          scheduler_file: str | os.PathLike | None = None, n_workers: int | None = None,
          threads_per_worker: int | None = None, memory_limit: str | int | float | None = None,
          config=None, warmup: bool | None = None, check_versions: bool | None = None,
          **overrides) -> ClusterHandle:  # fmt: skip
    """Start or reach the cluster a profile describes and return a :class:`ClusterHandle` (not a context
    manager by itself: call ``close()``, or use :func:`connect`). Arguments as :func:`connect`."""
    prof = resolve(profile, config=config, address=address, scheduler_file=scheduler_file, n_workers=n_workers,
                   threads_per_worker=threads_per_worker, memory_limit=memory_limit, warmup=warmup,
                   check_versions=check_versions, **overrides)  # fmt: skip
    return start_profile(prof)


def start_profile(prof: Profile) -> ClusterHandle:
    """:func:`start` for a resolved :class:`Profile`."""
    cluster, owns = None, True
    if prof.kind == "address":
        security = security_for(prof)
        try:
            client = Client(prof.address, security=security, timeout=prof.timeout, set_as_default=False)
        except OSError as exc:  # (TimeoutError and distributed's CommClosedError are OSErrors)
            raise SchedulerUnreachable.of(prof.address, exc, prof.timeout) from None
    elif prof.kind == "scheduler_file":
        path = Path(os.path.expandvars(str(prof.scheduler_file))).expanduser()
        if not path.is_file():
            raise DetflowClusterError(path, "scheduler_file", "the file written by `dask scheduler "
                                      "--scheduler-file` (is the scheduler running?)", "no such file")  # fmt: skip
        try:
            address = json.loads(path.read_text())["address"]
        except (ValueError, KeyError, TypeError) as exc:
            raise DetflowClusterError(path, "scheduler_file", "a scheduler file (JSON with an address)",
                                      f"{type(exc).__name__}: {exc}") from None  # fmt: skip
        security = security_for(prof, address)
        try:
            client = Client(scheduler_file=str(path), security=security, timeout=prof.timeout, set_as_default=False)
        except OSError as exc:
            raise SchedulerUnreachable.of(address, exc, prof.timeout) from None
    else:
        make = {"local": _local, "slurm": _slurm, "kubernetes": _kubernetes, "gateway": _gateway}[prof.kind]
        cluster, owns = make(prof)
        try:
            _scale(cluster, prof)
            if prof.kind == "gateway":
                client = cluster.get_client(set_as_default=False)
            else:
                client = Client(cluster, set_as_default=False, timeout=prof.timeout)
        except BaseException:
            if owns:
                cluster.close()
            raise
    handle = ClusterHandle(client, cluster, prof, owns)
    try:
        if prof.warmup:
            client.register_plugin(WarmupPlugin(prof.warmup_level), name=WarmupPlugin.name)
        if prof.wait_for_workers:
            client.wait_for_workers(prof.wait_for_workers, timeout=prof.wait_timeout)
        if prof.check_versions if prof.check_versions is not None else prof.kind != "local":
            check_versions(client)
    except BaseException:
        handle.close()
        raise
    return handle


@contextlib.contextmanager
def connect(profile: str | os.PathLike | Profile | None = None, *, address: str | None = None,
            scheduler_file: str | os.PathLike | None = None, n_workers: int | None = None,
            threads_per_worker: int | None = None, memory_limit: str | int | float | None = None,
            config=None, warmup: bool | None = None, check_versions: bool | None = None,
            **overrides) -> Iterator[Client]:  # fmt: skip
    """Yield a ``distributed.Client`` for a profile; close the client (and the cluster detflow started)
    on exit.

    ``profile``: a name on the profile path, a YAML path, a :class:`Profile`, or None (``$DETFLOW_PROFILE``
    or the defaults: an embedded LocalCluster, one worker process with a thread per core, bound to
    127.0.0.1, dashboard 127.0.0.1:8787). ``address`` / ``scheduler_file``: connect to a running
    scheduler instead. ``config``: a job's ``ClusterConfig``. ``warmup``: register :class:`WarmupPlugin`.
    ``check_versions``: run :func:`check_versions` (default: for every kind but local). ``overrides``:
    any other profile key (``security={...}``, ``adapt={"maximum": 20}``, ``slurm={"queue": "debug"}``).
    """
    handle = start(profile, address=address, scheduler_file=scheduler_file, n_workers=n_workers,
                   threads_per_worker=threads_per_worker, memory_limit=memory_limit, config=config,
                   warmup=warmup, check_versions=check_versions, **overrides)  # fmt: skip
    with handle:
        yield handle.client


# ---- versions ----------------------------------------------------------------------------------------------
def _make_probe():
    # a closure, so cloudpickle sends it by value: it runs on a worker or scheduler without detflow installed
    def probe(import_detflow: bool = True) -> dict[str, str | None]:
        import importlib as _il
        import importlib.metadata as _md
        import sys as _sys

        out: dict[str, str | None] = {}
        mod = _sys.modules.get("detflow")
        if mod is None and import_detflow:
            try:
                mod = _il.import_module("detflow")
            except Exception:  # noqa: BLE001 - reported as missing
                mod = None
        if mod is not None:
            out["detflow"] = getattr(mod, "__version__", None)
        else:
            try:
                out["detflow"] = _md.version("detflow")
            except Exception:  # noqa: BLE001
                out["detflow"] = None
        return out

    return probe


def cluster_versions(client: Client) -> dict[str, dict[str, str | None]]:
    """``{"client": {...}, "scheduler": {...}, <worker address>: {...}}`` for detflow and the packages in
    :data:`STRICT_PACKAGES` and :data:`WARN_PACKAGES` (None: not installed there)."""
    import detflow

    probe = _make_probe()
    extra = [p for p in WARN_PACKAGES if p not in ("numpy",)]
    info = client.get_versions(check=False, packages=extra)
    pkgs = tuple(p for p in STRICT_PACKAGES + WARN_PACKAGES if p != "detflow")

    def pick(d):
        packages = (d or {}).get("packages") or {}
        return {p: packages.get(p) for p in pkgs}

    table = {"client": {"detflow": getattr(detflow, "__version__", None), **pick(info.get("client"))}}
    table["scheduler"] = {**client.run_on_scheduler(probe, False), **pick(info.get("scheduler"))}
    workers = client.run(probe) if info.get("workers") else {}
    for addr, d in sorted((info.get("workers") or {}).items()):
        table[addr] = {"detflow": (workers.get(addr) or {}).get("detflow"), **pick(d)}
    return table


def check_versions(client: Client, *, strict: bool = True) -> dict[str, dict[str, str | None]]:
    """Compare the versions of the client, the scheduler and every worker (those connected now).

    detflow, dask or distributed differing anywhere raises :class:`DetflowClusterError` listing what
    differs where (``strict=False``: a warning instead); numpy, numba, zarr or xarray differing between
    the client and the workers warns. detflow missing on the scheduler is fine (it runs no detflow
    code). Returns the table of versions."""
    table = cluster_versions(client)
    where = client.scheduler.address if client.scheduler else "cluster"
    errors, warns = [], []
    for pkg in STRICT_PACKAGES + WARN_PACKAGES:
        seen = {name: row.get(pkg) for name, row in table.items()}
        if pkg == "detflow" and seen.get("scheduler") is None:
            seen.pop("scheduler", None)
        if pkg in WARN_PACKAGES:
            seen.pop("scheduler", None)
        if len(set(seen.values())) > 1:
            (errors if pkg in STRICT_PACKAGES else warns).append(f"{pkg}: " + _describe(seen))
    if warns:
        warnings.warn(f"{where}: versions differ (results may differ slightly): " + "; ".join(warns),
                      stacklevel=2)  # fmt: skip
    if errors:
        msg = "; ".join(errors)
        if strict:
            raise DetflowClusterError(where, "versions", "the same detflow, dask and distributed on the client, "
                                      "the scheduler and every worker", msg)  # fmt: skip
        warnings.warn(f"{where}: versions: {msg}", stacklevel=2)
    return table


def _describe(seen: dict[str, str | None]) -> str:
    parts = []
    workers: dict[str | None, list[str]] = {}
    for name, v in seen.items():
        if name in ("client", "scheduler"):
            parts.append(f"{name} {v or 'missing'}")
        else:
            workers.setdefault(v, []).append(name)
    for v, names in workers.items():
        label = f"worker {names[0]}" if len(names) == 1 else f"{len(names)} workers ({', '.join(names)})"
        parts.append(f"{label} {v or 'missing'}")
    return ", ".join(parts)


# ---- worker warm-up ----------------------------------------------------------------------------------------
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

    from .schema import DQ

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
        "linearitylegendre": {"data": c, "Smin": smin, "Smax": smax, "Sref": np.full((n, n), bias, np.float32),
                              "dq": dq.copy()},
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

    from . import kernels

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
