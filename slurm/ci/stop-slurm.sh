#!/bin/bash
# Stop the daemons slurm/ci/start-slurm.sh started (by pid), and nothing else.
set -uo pipefail
dir=${HPCINFER_SLURM_DIR:-/tmp/hpcinfer-slurm}
[ -f "$dir/started.pids" ] || exit 0
while read -r pid; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null
done < "$dir/started.pids"
for _ in $(seq 50); do
    alive=0
    while read -r pid; do
        [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && alive=1
    done < "$dir/started.pids"
    [ "$alive" = 0 ] && break
    sleep 0.1
done
rm -f "$dir/started.pids"
echo "stop-slurm: stopped" >&2
