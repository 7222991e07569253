#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the cluster test and for trying the slurm profile.
#   scripts/slurm-local.sh start   install (Debian packages) if needed, configure, start munged/slurmctld/slurmd
#   scripts/slurm-local.sh stop    stop the daemons this script started, by PID
#   scripts/slurm-local.sh env     print the export line for SLURM_CONF
# State lives in $DKO_SLURM_DIR (default /tmp/dko-slurm). Needs root (installs packages, starts daemons).
set -euo pipefail
STATE=${DKO_SLURM_DIR:-/tmp/dko-slurm}
CONF=$STATE/slurm.conf
HOST=$(hostname -s)
SYSTEM_CONF=/etc/slurm/slurm.conf
MARKER="# managed by dko scripts/slurm-local.sh"

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null; then
        return
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >/dev/null
}

configure() {
    mkdir -p "$STATE"/{spool/ctld,spool/d,log,run} /run/munge
    chown -R slurm:slurm "$STATE/spool/ctld" "$STATE/log" "$STATE/run"
    chown munge:munge /run/munge
    local cpus mem
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 85 / 100 ))
    cat > "$CONF" <<CONF
$MARKER
ClusterName=dkolocal
SlurmctldHost=$HOST
AuthType=auth/munge
SlurmUser=slurm
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MinJobAge=300
ReturnToService=2
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
NodeName=$HOST CPUs=$cpus Boards=1 SocketsPerBoard=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
    # Job steps (srun inside sbatch jobs) look for the default path, not $SLURM_CONF: put ours there
    # unless another SLURM installation owns it.
    if [[ ! -e $SYSTEM_CONF ]] || grep -qx "$MARKER" "$SYSTEM_CONF"; then
        mkdir -p "$(dirname "$SYSTEM_CONF")"
        cp "$CONF" "$SYSTEM_CONF"
    fi
}

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
    install
    configure
    if ! pid_alive /run/munge/munged.pid; then
        runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
        cp /run/munge/munged.pid "$STATE/run/munged.pid"
    fi
    pid_alive "$STATE/run/slurmctld.pid" || /usr/sbin/slurmctld -f "$CONF"
    pid_alive "$STATE/run/slurmd.pid" || /usr/sbin/slurmd -f "$CONF"
    export SLURM_CONF=$CONF
    for _ in $(seq 1 60); do
        if sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
            echo "SLURM up: $(sinfo -h -o '%N %t %c CPUs %m MB')"
            return 0
        fi
        sleep 1
    done
    echo "SLURM did not come up; see $STATE/log" >&2
    return 1
}

stop() {
    for name in slurmd slurmctld munged; do
        local file=$STATE/run/$name.pid
        if pid_alive "$file"; then
            local pid
            pid=$(cat "$file")
            kill "$pid"
            for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        fi
        rm -f "$file"
    done
    if [[ -f $SYSTEM_CONF ]] && grep -qx "$MARKER" "$SYSTEM_CONF"; then
        rm -f "$SYSTEM_CONF"
    fi
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
