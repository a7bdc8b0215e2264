#!/usr/bin/env bash
# Stop the one-node cluster that tools/slurm/start.sh started (its slurmd, slurmctld and munged).
set -uo pipefail
DIR=${LM_SLURM_DIR:-/tmp/lm-slurm}
export SLURM_CONF=$DIR/slurm.conf
for pidfile in "$DIR/slurmd.pid" "$DIR/slurmctld.pid"; do
    if [ -f "$pidfile" ]; then
        kill "$(cat "$pidfile")" 2>/dev/null || true
    fi
done
for _ in $(seq 50); do
    [ -f "$DIR/slurmd.pid" ] && kill -0 "$(cat "$DIR/slurmd.pid")" 2>/dev/null && { sleep 0.2; continue; }
    [ -f "$DIR/slurmctld.pid" ] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null && { sleep 0.2; continue; }
    break
done
if [ -f /run/munge/munged.pid ]; then
    kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
fi
exit 0
