#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine (root, no cgroups): what the tests submit
# cluster/slurm/ark.sbatch to (tests/test_slurm.py), and a way to try it by hand.
# Usage: local-cluster.sh start DIR   -> prints "export SLURM_CONF=DIR/slurm.conf"
#        local-cluster.sh stop DIR    -> stops the daemons it started (by their pid files)
# Needs Debian's slurm-wlm and munge (`make slurm` installs them).
set -euo pipefail
cmd=${1:?start|stop} dir=$(realpath -m "${2:?DIR}")
if [[ $cmd == stop ]]; then
  pids=()
  for p in slurmd slurmctld; do [[ -f $dir/$p.pid ]] && pids+=("$(cat "$dir/$p.pid")"); done
  [[ ${#pids[@]} -gt 0 ]] && kill "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 30); do kill -0 "${pids[@]}" 2>/dev/null || exit 0; sleep 0.5; done   # gone before we return
  kill -KILL "${pids[@]}" 2>/dev/null || true
  exit 0
fi
mkdir -p "$dir"/{state,spool,log}
host=$(hostname -s)
cat >"$dir/slurm.conf" <<CONF
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ReturnToService=2
# A requeued job waits cred_expire + 1 s before it may start again (default 120 s): 15 s here.
AuthInfo=cred_expire=15
MpiDefault=none
NodeName=$host CPUs=$(nproc) RealMemory=$(( $(free -m | awk '/Mem:/{print $2}') * 3 / 4 )) State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
mkdir -p /etc/munge /run/munge /var/log/munge /var/lib/munge
[[ -f /etc/munge/munge.key ]] || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || munged --force
export SLURM_CONF=$dir/slurm.conf
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 30); do sinfo -h -o %T 2>/dev/null | grep -q idle && break; sleep 1; done
sinfo -h -o %T | grep -q idle || { echo "slurm did not come up; see $dir/log" >&2; exit 1; }
echo "export SLURM_CONF=$SLURM_CONF"
