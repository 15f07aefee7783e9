#!/usr/bin/env bash
# A one-node SLURM on this machine from Debian's packages (slurm-wlm, munge), for the SLURM test
# (tests/test_slurm.py, `pytest -m slurm`) and for trying the `slurm` profile on a laptop or a CI runner.
#
#   sudo deploy/slurm/one-node-slurm.sh          # install (if needed), configure, start; waits for `idle`
#   sudo deploy/slurm/one-node-slurm.sh stop     # stop the daemons
#
# Needs root and Debian/Ubuntu (apt-get). The node offers every core and 80% of the memory in one
# partition, `debug`. No cgroups (proctrack/linuxproc, task/none), no accounting: enough for dask-jobqueue
# to submit worker jobs with sbatch and for them to run here, which is what the test checks. Exits 3 when
# it cannot set SLURM up (not root, no apt-get, packages unavailable): callers treat that as "no SLURM".
set -euo pipefail

if [[ "${1:-start}" == "stop" ]]; then
  pkill -x slurmd || true
  pkill -x slurmctld || true
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then echo "one-node-slurm: needs root" >&2; exit 3; fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || { echo "one-node-slurm: no apt-get" >&2; exit 3; }
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null; }; then
    echo "one-node-slurm: could not install slurm-wlm and munge" >&2
    exit 3
  fi
fi

host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) * 8 / 10 / 1024 ))
conf_dir=/etc/slurm
[[ -d /etc/slurm-llnl && ! -d /etc/slurm ]] && conf_dir=/etc/slurm-llnl
mkdir -p "$conf_dir" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/lib/munge /var/log/munge
cat > "$conf_dir/slurm.conf" <<EOF
# written by detflow deploy/slurm/one-node-slurm.sh
ClusterName=detflow-one-node
SlurmctldHost=${host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SchedulerType=sched/backfill
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=${host} CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
EOF

if [[ ! -s /etc/munge/munge.key ]]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || su -s /bin/sh munge -c munged 2>/dev/null || munged --force
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd

for _ in $(seq 60); do
  state=$(sinfo -h -n "$host" -o %t 2>/dev/null || true)
  if [[ "$state" == "idle" || "$state" == "mix" ]]; then
    echo "one-node-slurm: node ${host} ${state} (${cpus} CPUs, ${mem_mb} MB) in partition debug"
    exit 0
  fi
  [[ "$state" == down* || "$state" == drain* ]] && scontrol update nodename="$host" state=resume 2>/dev/null || true
  sleep 1
done
echo "one-node-slurm: the node did not come up (state: ${state:-none}); see /var/log/slurm" >&2
exit 3
