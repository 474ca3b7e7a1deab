#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine, for the workbook's `--executor slurm` tests and
# benchmark: munged, slurmctld and slurmd as background processes (no systemd needed), state and
# logs in $XTFCLIP_SLURM_DIR (default /tmp/xtfclip-slurm). Prints the SLURM_CONF to export.
# Needs Debian's slurm-wlm and munge (installed here with apt-get when missing and run as root).
# Stop it with benchmarks/slurm/stop.sh.
set -euo pipefail
DIR=${XTFCLIP_SLURM_DIR:-/tmp/xtfclip-slurm}
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
    else
        echo "start.sh: slurm-wlm and munge are not installed (apt-get install slurm-wlm munge)" >&2; exit 1
    fi
fi
mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
cat > "$DIR/slurm.conf" <<CONF
ClusterName=xtfclip
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
# munged refuses root: it runs as the munge user, its socket under /run/munge.
mkdir -p /run/munge && chown munge:munge /run/munge
if ! munge -n </dev/null >/dev/null 2>&1; then    # no munged answering (a zombie does not)
    setpriv --reuid munge --regid munge --init-groups munged
    touch "$DIR/munged.ours"            # stop.sh stops it again
fi
if [ -f "$DIR/slurmctld.pid" ] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null; then
    echo "start.sh: a cluster of $DIR is already running (benchmarks/slurm/stop.sh stops it)" >&2; exit 1
fi
if pgrep -x -r R,S,D slurmctld >/dev/null; then
    echo "start.sh: another slurmctld runs on this machine (pid $(pgrep -x -r R,S,D slurmctld | head -1)); stop it first" >&2
    exit 1
fi
export SLURM_CONF="$DIR/slurm.conf"
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF" -N localhost
for _ in $(seq 1 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
        echo "export SLURM_CONF=$SLURM_CONF"; exit 0
    fi
    sleep 0.5
done
echo "start.sh: the node did not come up; see $DIR/log/" >&2
exit 1
