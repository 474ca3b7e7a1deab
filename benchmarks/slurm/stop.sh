#!/usr/bin/env bash
# Stop the one-node cluster of start.sh by its own PIDs (munged too when start.sh started it;
# one that was already running is left to whoever started it) and remove its state.
set -uo pipefail
DIR=${XTFCLIP_SLURM_DIR:-/tmp/xtfclip-slurm}
for daemon in slurmd slurmctld; do
    if [ -f "$DIR/$daemon.pid" ]; then kill "$(cat "$DIR/$daemon.pid")" 2>/dev/null; fi
done
if [ -f "$DIR/munged.ours" ] && [ -f /run/munge/munged.pid ]; then
    kill "$(cat /run/munge/munged.pid)" 2>/dev/null
fi
sleep 0.5
rm -rf "$DIR"
