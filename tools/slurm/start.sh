#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine (munged, slurmctld, slurmd) for the tests of
# `lightning-mem sweep slurm`. State lives in $LM_SLURM_DIR (default /tmp/lm-slurm); the generated
# slurm.conf is $LM_SLURM_DIR/slurm.conf (export SLURM_CONF to it; as root it is also linked to
# /etc/slurm/slurm.conf when that file is absent). No cgroups: proctrack/linuxproc, task/none.
# Waits until `sinfo` shows the node idle; exits 1 with the daemons' logs when it does not.
set -euo pipefail
DIR=${LM_SLURM_DIR:-/tmp/lm-slurm}
mkdir -p "$DIR"/state "$DIR"/spool "$DIR"/munge
HOST=$(hostname -s)
CPUS=$(nproc)
# Memory SLURM may hand out: 90% of what the node has, in MiB.
MEM=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
USER_NAME=$(id -un)
cat > "$DIR/slurm.conf" <<CONF
ClusterName=lightning-mem
MpiDefault=none
SlurmctldHost=$HOST
SlurmUser=$USER_NAME
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits cred_expire seconds before it may run again (default 120): 30 s for the tests' requeues.
AuthInfo=cred_expire=30
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ReturnToService=2
# Short waits so a test's requeue and time limit act within seconds.
SchedulerParameters=defer_batch
MinJobAge=300
KillWait=5
OverTimeLimit=0
InactiveLimit=0
MessageTimeout=20
# Requeued jobs may run again (submitit requeues on preemption / time-out signals).
JobRequeue=1
MaxArraySize=10001
DefMemPerCPU=2048
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
if [ "$(id -u)" = 0 ] && [ ! -e /etc/slurm/slurm.conf ]; then
    mkdir -p /etc/slurm && ln -s "$DIR/slurm.conf" /etc/slurm/slurm.conf
fi
export SLURM_CONF=$DIR/slurm.conf
# munged: Debian's key in /etc/munge; its own socket and state under $DIR.
if ! munge -n >/dev/null 2>&1; then
    if [ ! -f /etc/munge/munge.key ]; then
        mungekey --create 2>/dev/null || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
        chown munge:munge /etc/munge/munge.key 2>/dev/null || true
        chmod 600 /etc/munge/munge.key
    fi
    mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
    if id munge >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        su -s /bin/sh munge -c "munged --force" || munged --force
    else
        munged --force
    fi
    for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.2; done
fi
pgrep -x -r D,R,S slurmctld >/dev/null || slurmctld -f "$DIR/slurm.conf"
pgrep -x -r D,R,S slurmd >/dev/null || slurmd -f "$DIR/slurm.conf"
for _ in $(seq 120); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qx idle; then
        sinfo
        echo "export SLURM_CONF=$DIR/slurm.conf"
        exit 0
    fi
    sleep 0.5
done
echo "start.sh: the node did not become idle within 60 s; sinfo says:" >&2
sinfo >&2 || true
tail -n 20 "$DIR/slurmctld.log" "$DIR/slurmd.log" >&2 || true
exit 1
