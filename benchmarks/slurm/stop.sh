#!/usr/bin/env bash
# Stop the one-node cluster of start.sh by its own PIDs (munged is left to whoever started it
# when it was already running) and remove its state.
set -uo pipefail
DIR=${XTFCLIP_SLURM_DIR:-/tmp/xtfclip-slurm}
for daemon in slurmd slurmctld; do
    if [ -f "$DIR/$daemon.pid" ]; then kill "$(cat "$DIR/$daemon.pid")" 2>/dev/null; fi
done
sleep 0.5
rm -rf "$DIR"
