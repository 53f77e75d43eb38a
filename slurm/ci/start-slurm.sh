#!/bin/bash
# Start a real single-node SLURM (munged, slurmctld, slurmd as plain daemons) for the
# SLURM end-to-end tests; installs Debian's packages first when they are missing.
#
#   eval "$(bash slurm/ci/start-slurm.sh)"    # prints: export SLURM_CONF=...
#   ... sbatch / squeue / the tests ...
#   bash slurm/ci/stop-slurm.sh               # stops only the daemons started here
#
# Needs root (apt-get, daemons). State, logs and pid files live in $HPCINFER_SLURM_DIR
# (default /tmp/hpcinfer-slurm). Progress goes to stderr; stdout is only the export line.
set -euo pipefail
dir=${HPCINFER_SLURM_DIR:-/tmp/hpcinfer-slurm}
export PATH="$PATH:/usr/sbin:/sbin"  # the daemons and runuser live there
log() { echo "start-slurm: $*" >&2; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    log "installing slurm-wlm and munge from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends slurm-wlm slurm-wlm-basic-plugins \
        slurmctld slurmd slurm-client munge >&2
fi

mkdir -p "$dir"/{state,spool,munge}
: > "$dir/started.pids"

# munge: authentication between the SLURM daemons and commands.
if ! pgrep -x munged >/dev/null; then
    [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null; }
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    install -d -o munge -g munge -m 755 /run/munge
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
    cat /run/munge/munged.pid >> "$dir/started.pids"
fi

host=$(hostname -s)
node=$(slurmd -C | head -1)
cat > "$dir/slurm.conf" <<CONF
ClusterName=hpcinfer-ci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=pmi2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MailProg=/bin/true
ReturnToService=2
KillWait=10
MinJobAge=600
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=ci Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$dir/slurm.conf

slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 100); do
    [ -s "$dir/slurmctld.pid" ] && [ -s "$dir/slurmd.pid" ] && break
    sleep 0.1
done
cat "$dir/slurmctld.pid" "$dir/slurmd.pid" >> "$dir/started.pids"

for _ in $(seq 150); do
    state=$(sinfo -h -o %t 2>/dev/null || true)
    if [ "$state" = "idle" ]; then
        log "SLURM is up: node $host idle (config $SLURM_CONF)"
        echo "export SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 0.2
done
log "the node did not become idle; see $dir/slurmctld.log and $dir/slurmd.log"
exit 1
