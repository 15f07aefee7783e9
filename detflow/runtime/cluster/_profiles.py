"""The cluster profiles shipped with detflow: the text of ``deploy/profiles/*.yaml``, kept here as strings
so that a plain ``pip install`` carries them (no package-data configuration needed).

Generated; tests/test_cluster_factory.py checks that each one equals its file in deploy/profiles/.
After editing a file there, regenerate with::

    python -m detflow.runtime.cluster._profiles deploy/profiles > detflow/runtime/cluster/_profiles.py
"""

PROFILES: dict[str, str] = {}
PROFILES["address"] = """\
# detflow cluster profile "address": a scheduler that is already running (dask scheduler, a DaskCluster
# on Kubernetes, the sbatch script of deploy/slurm), reached over TLS.
#   detflow run job.yaml --profile address                           # this file
#   detflow run job.yaml --profile address --scheduler tls://other:8786
#   DETFLOW_SCHEDULER_ADDRESS=tls://sched.example.org:8786 detflow run job.yaml --profile address
kind: address
address: tls://sched.example.org:8786
security:                  # certificates: see deploy/README.md (openssl); paths may use ~ and $VARS
  ca_file: ~/.config/detflow/tls/ca.pem
  cert: ~/.config/detflow/tls/client.pem
  key: ~/.config/detflow/tls/client-key.pem
  require_encryption: true
timeout: 30                # seconds to reach the scheduler
check_versions: true       # detflow/dask/distributed must match on client, scheduler and workers
warmup: false              # workers started with --preload detflow.cluster are warm already
"""
PROFILES["gateway"] = """\
# detflow cluster profile "gateway": a cluster from a dask-gateway server (pip install 'detflow[gateway]').
# The gateway gives each cluster its own TLS credentials; the client uses them without configuration.
kind: gateway
n_workers: 2               # or adapt: {minimum: 1, maximum: 20}
gateway:
  address: https://gateway.example.org   # null: the dask config gateway.address
  auth: null               # basic, kerberos or jupyterhub; null: the dask config gateway.auth.type
  cluster_name: null       # connect to this running cluster instead of creating one
  cluster_options: {}      # what the server offers (gateway.cluster_options()), e.g. {image: ..., worker_memory: 8}
  shutdown_on_close: null  # null: stop the cluster on close if this created it
warmup: true               # WarmupPlugin registered on every worker, also those that join later
check_versions: true
"""
PROFILES["kubernetes"] = """\
# detflow cluster profile "kubernetes": a DaskCluster made by the Dask Kubernetes operator
# (pip install 'detflow[kubernetes]'; the operator installed in the cluster: deploy/kubernetes/README.md).
# The client runs where kubectl works; the scheduler is port-forwarded to it when it is outside the cluster.
# NOT TLS: dask-kubernetes' KubeCluster (2026.3) connects to its scheduler over plain tcp only, and every pod in
# the Kubernetes cluster can reach the scheduler service (ClusterIP) and so run code on the workers. Use it on
# a cluster only you (or people you trust) run pods on; on a shared one, run the TLS DaskCluster of
# deploy/kubernetes (daskcluster.yaml, certificates: deploy/kubernetes/README.md) and the `address` profile.
kind: kubernetes
n_workers: 2
kubernetes:
  name: detflow
  namespace: null          # null: the current kubectl context's namespace
  image: detflow:0.1.0     # built from deploy/docker/Dockerfile and pushed where the cluster pulls from
  resources:               # per worker pod; the worker's memory limit follows the container limit
    requests: {cpu: "2", memory: 8Gi}
    limits: {cpu: "2", memory: 8Gi}
  scheduler_resources:
    requests: {cpu: "1", memory: 2Gi}
    limits: {cpu: "1", memory: 2Gi}
  env: {}                  # NUMBA_NUM_THREADS=1 etc. are added by detflow
  custom_cluster_spec: null   # or a DaskCluster manifest of your own (image/resources/env then come from it;
                              # plain tcp: for the TLS cluster of deploy/kubernetes use kind: address)
  shutdown_on_close: true
warmup: true               # workers run `dask worker --preload detflow.cluster`
check_versions: true
"""
PROFILES["local"] = """\
# detflow cluster profile "local": the embedded LocalCluster (also what you get with no profile at all).
# Scheduler, workers and dashboard bind to 127.0.0.1: nothing is reachable from the network.
kind: local
n_workers: 1               # worker processes: one with a thread per core is fastest (the kernels release the GIL)
threads_per_worker: null   # null: cores / n_workers
memory_limit: auto         # per worker: auto = machine (or cgroup) memory / n_workers
host: 127.0.0.1
dashboard_address: 127.0.0.1:8787
env: {}                    # more worker environment; NUMBA_NUM_THREADS=1 (and OMP/MKL/OPENBLAS) always set
warmup: false              # true: compile the numba kernels when the worker starts
check_versions: false      # same Python environment by construction
"""
PROFILES["slurm"] = """\
# detflow cluster profile "slurm": dask-jobqueue's SLURMCluster (pip install 'detflow[slurm]').
# The scheduler runs in this process (the login node or your own batch job); each SLURM job runs
# `processes` workers. Keys left out take dask-jobqueue's config (deploy/slurm/jobqueue.yaml copied to
# ~/.config/dask/jobqueue.yaml). Override per run: DETFLOW_CLUSTER__SLURM__QUEUE=debug,
# DETFLOW_CLUSTER__N_WORKERS=8, or a job's `cluster: {profile: slurm, options: {slurm: {walltime: ...}}}`.
kind: slurm
n_workers: 4               # workers to start (jobs = n_workers / processes); or use adapt below
# adapt: {minimum: 0, maximum: 32}
slurm:
  queue: null              # partition; null: the cluster's default
  account: null
  cores: 8                 # per job
  processes: 1             # worker processes per job: threads per worker = cores / processes
  memory: 32GB             # per job, split between its processes (each worker's memory limit)
  walltime: "02:00:00"     # quote it (unquoted, YAML reads 02:00:00 as a number)
  job_extra_directives: []
  job_script_prologue:     # NUMBA_NUM_THREADS=1 etc. are appended by detflow
    - source ~/detflow/.venv/bin/activate
  local_directory: $TMPDIR # worker spill space on the node's local disk
  interface: null          # e.g. ib0: where scheduler and workers listen; null: the scheduler on this host's
                           # name, each worker on its node's name (never on every interface, 0.0.0.0)
  shared_temp_directory: ~/.detflow/tls-tmp   # the workers' copy of the TLS credentials (made mode 700)
dashboard_address: 127.0.0.1:8787   # reach it with: ssh -L 8787:127.0.0.1:8787 login-node
warmup: true               # workers start with --preload detflow.cluster (kernels compiled before tasks)
check_versions: true
# TLS between scheduler, workers and client (the scheduler listens on the cluster's network, and anyone who
# reaches an unauthenticated scheduler can run code on its workers as you): throwaway credentials made for
# each cluster (distributed's Security.temporary()). Your own CA instead: security: {ca_file: ..., cert: ...,
# key: ...} (deploy/README.md#security). Plain tcp (a network only you use): security: null.
security: {temporary: true}
"""


def _generate(folder: str) -> str:  # pragma: no cover
    from pathlib import Path

    q = chr(34)
    head = __doc__.join([q * 3] * 2) + "\n\nPROFILES: dict[str, str] = {}\n"
    body = "".join(f"PROFILES[{q}{p.stem}{q}] = " + q * 3 + "\\\n" + p.read_text() + q * 3 + "\n"
                   for p in sorted(Path(folder).glob("*.yaml")))  # fmt: skip
    src = Path(__file__).read_text()
    return head + body + src[src.index("\n\ndef _generate") :]


if __name__ == "__main__":  # pragma: no cover
    import sys

    print(_generate(sys.argv[1]), end="")
