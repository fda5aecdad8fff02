#!/usr/bin/env bash
# Start a real single-node SLURM cluster on this machine (loopback only), for the tests and CI:
# munged, MariaDB (socket only), slurmdbd, slurmctld and slurmd, one partition "debug".
# Installs Debian's packages when absent. Idempotent: running daemons are reused; a changed
# configuration (other SLURM_CPUS / SLURM_GPUS) restarts slurmctld and slurmd.
#
#   SLURM_CPUS=N       CPUs the node advertises (default: nproc; more oversubscribes the machine)
#   SLURM_GPUS=N       fake GPUs (gres/gpu on /dev/null-like devices; default 0)
#   SLURM_NODE_NAME=X  node name (default: hostname -s; it must resolve)
#
# Needs root and apt (Debian 12). Stop it with tests/cluster/slurm-down.sh.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=slurm-down.sh
source "$HERE/slurm-down.sh"

NODE=${SLURM_NODE_NAME:-$(hostname -s)}
CPUS=${SLURM_CPUS:-$(nproc)}
GPUS=${SLURM_GPUS:-0}
PACKAGES=(slurm-wlm munge slurmdbd mariadb-server)
MARKER="# Written by tests/cluster/slurm-up.sh; rewritten on every run."
FAKE_GPU_DIR=$STATE_DIR/fakegpu
DB_PASS=slurmdbpass
CONFIG_CHANGED=0     # slurm.conf or gres.conf changed: restart slurmctld and slurmd
DBD_CONFIG_CHANGED=0 # slurmdbd.conf changed: restart slurmdbd

die() {
    echo "slurm-up: $*" >&2
    exit 1
}

# die_with_log MESSAGE LOGFILE: stop with MESSAGE and the tail of LOGFILE.
die_with_log() {
    local message=$1 logfile=$2
    echo "slurm-up: $message" >&2
    if [[ -s $logfile ]]; then
        echo "slurm-up: last lines of $logfile:" >&2
        tail -n 25 "$logfile" >&2
    fi
    exit 1
}

# wait_until DESCRIPTION TIMEOUT_S LOGFILE COMMAND...: poll COMMAND every 0.1 s.
wait_until() {
    local description=$1 timeout_s=$2 logfile=$3 deadline
    shift 3
    deadline=$((SECONDS + timeout_s))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die_with_log "timed out after ${timeout_s} s waiting for $description" "$logfile"
        sleep 0.1
    done
}

check_environment() {
    [[ $(id -u) == 0 ]] || die "must run as root (it installs packages and starts daemons)"
    [[ $CPUS =~ ^[1-9][0-9]*$ ]] || die "SLURM_CPUS must be a positive integer, got '$CPUS'"
    [[ $GPUS =~ ^[0-9]+$ ]] || die "SLURM_GPUS must be a non-negative integer, got '$GPUS'"
    getent hosts "$NODE" >/dev/null ||
        die "node name '$NODE' does not resolve; add '127.0.0.1 $NODE' to /etc/hosts or set SLURM_NODE_NAME=localhost"
    if [[ -e $ETC_DIR/slurm.conf ]] && ! grep -qxF "$MARKER" "$ETC_DIR/slurm.conf"; then
        die "$ETC_DIR/slurm.conf was not written by this script; refusing to overwrite a real SLURM configuration"
    fi
}

is_installed() {
    dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

install_packages() {
    local missing=() package attempt
    for package in "${PACKAGES[@]}"; do
        is_installed "$package" || missing+=("$package")
    done
    ((${#missing[@]})) || return 0
    echo "slurm-up: installing ${missing[*]}"
    for attempt in 1 2 3; do
        if apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
            return 0
        fi
        echo "slurm-up: apt-get failed (attempt $attempt of 3); retrying in 5 s" >&2
        sleep 5
    done
    die "could not install ${missing[*]} with apt-get"
}

slurm_conf() {
    local memory_mb gres=""
    memory_mb=$(($(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo) - 512))
    ((GPUS == 0)) || gres=" Gres=gpu:$GPUS"
    cat <<EOF
$MARKER
ClusterName=ci
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job may start again cred_expire+1 s later (default 121 s)
AuthInfo=cred_expire=5
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=$SLURMCTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG_DIR/jobcomp.log
KillWait=5
MinJobAge=300
InactiveLimit=0
Waittime=0
EOF
    # advertising other CPUs than the hardware has needs config_overrides
    ((CPUS == $(nproc))) || echo "SlurmdParameters=config_overrides"
    ((GPUS == 0)) || echo "GresTypes=gpu"
    echo "NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$memory_mb$gres State=UNKNOWN"
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
}

slurmdbd_conf() {
    cat <<EOF
$MARKER
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=$LOG_DIR/slurmdbd.log
PidFile=$SLURMDBD_PID
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$DB_PASS
EOF
}

# gres/gpu needs character devices: /dev/null clones stand in for the GPUs.
gres_conf() {
    local files=$FAKE_GPU_DIR/nvidia0
    ((GPUS == 1)) || files="$FAKE_GPU_DIR/nvidia[0-$((GPUS - 1))]"
    printf '%s\nNodeName=%s Name=gpu File=%s\n' "$MARKER" "$NODE" "$files"
}

# update_file PATH MODE CONTENT: write CONTENT unless PATH already holds it; fails when unchanged.
update_file() {
    local path=$1 mode=$2 content=$3
    if [[ -f $path ]] && [[ $(cat "$path") == "$content" ]]; then
        return 1
    fi
    printf '%s\n' "$content" >"$path.new"
    chmod "$mode" "$path.new"
    mv "$path.new" "$path"
}

write_configs() {
    local i
    install -d "$ETC_DIR" "$LOG_DIR" "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd"
    if update_file "$ETC_DIR/slurm.conf" 644 "$(slurm_conf)"; then CONFIG_CHANGED=1; fi
    if update_file "$ETC_DIR/slurmdbd.conf" 600 "$(slurmdbd_conf)"; then DBD_CONFIG_CHANGED=1; fi
    if ((GPUS > 0)); then
        install -d "$FAKE_GPU_DIR"
        for ((i = 0; i < GPUS; i++)); do
            [[ -c $FAKE_GPU_DIR/nvidia$i ]] || mknod "$FAKE_GPU_DIR/nvidia$i" c 1 3
        done
        if update_file "$ETC_DIR/gres.conf" 644 "$(gres_conf)"; then CONFIG_CHANGED=1; fi
    elif [[ -e $ETC_DIR/gres.conf ]]; then
        rm -f "$ETC_DIR/gres.conf"
        CONFIG_CHANGED=1
    fi
}

munge_works() {
    munge -n | unmunge >/dev/null
}

start_munge() {
    munge_works 2>/dev/null && return 0
    if [[ ! -s /etc/munge/munge.key ]]; then
        install -d -o munge -g munge -m 700 /etc/munge
        dd if=/dev/urandom bs=1024 count=1 status=none >/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    install -d -o munge -g munge /run/munge /var/log/munge
    runuser -u munge -- /usr/sbin/munged || die_with_log "munged failed to start" /var/log/munge/munged.log
    wait_until "munged" 10 /var/log/munge/munged.log munge_works
}

mariadb_alive() {
    mariadb-admin --socket="$MYSQL_SOCK" ping
}

start_mariadb() {
    if ! mariadb_alive >/dev/null 2>&1; then
        install -d -o mysql -g mysql /run/mysqld
        if [[ ! -d /var/lib/mysql/mysql ]]; then
            mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db >"$LOG_DIR/mariadb-install.log" 2>&1 ||
                die_with_log "mariadb-install-db failed" "$LOG_DIR/mariadb-install.log"
        fi
        setsid mariadbd --user=mysql --skip-networking --socket="$MYSQL_SOCK" --pid-file="$MYSQL_PID" \
            --log-error="$LOG_DIR/mariadb.err" --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 \
            </dev/null >/dev/null 2>&1 &
        wait_until "MariaDB" 60 "$LOG_DIR/mariadb.err" mariadb_alive
    fi
    mariadb --socket="$MYSQL_SOCK" -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
}

# start_slurm_daemon COMMAND PIDFILE LOGFILE RESTART ARGS...: start unless running; RESTART=1 restarts it.
start_slurm_daemon() {
    local command=$1 pidfile=$2 logfile=$3 restart=$4
    shift 4
    if daemon_pid "$command" "$pidfile" >/dev/null; then
        ((restart)) || return 0
        stop_daemon "$command" "$pidfile" >/dev/null
    fi
    "$command" "$@" || die_with_log "$command failed to start" "$logfile"
}

accounting_up() {
    timeout 5 sacctmgr -n -P show cluster
}

controller_up() {
    timeout 5 scontrol ping | grep -q 'is UP'
}

# Succeeds once the node accepts jobs; resumes it if an earlier configuration left it drained or down.
node_ready() {
    local state
    state=$(timeout 5 sinfo -h -n "$NODE" -o %T) || return 1
    case $state in
        idle | mixed | allocated | completing) return 0 ;;
        *drain* | down*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    return 1
}

start_slurm() {
    if ((CONFIG_CHANGED)); then
        stop_daemon slurmd "$SLURMD_PID" >/dev/null
    fi
    start_slurm_daemon slurmdbd "$SLURMDBD_PID" "$LOG_DIR/slurmdbd.log" "$DBD_CONFIG_CHANGED"
    wait_until "slurmdbd (sacctmgr show cluster)" 30 "$LOG_DIR/slurmdbd.log" accounting_up
    start_slurm_daemon slurmctld "$SLURMCTLD_PID" "$LOG_DIR/slurmctld.log" "$CONFIG_CHANGED"
    wait_until "slurmctld (scontrol ping)" 30 "$LOG_DIR/slurmctld.log" controller_up
    start_slurm_daemon slurmd "$SLURMD_PID" "$LOG_DIR/slurmd.log" "$CONFIG_CHANGED" -N "$NODE"
    wait_until "node $NODE to become idle" 60 "$LOG_DIR/slurmd.log" node_ready
}

main() {
    local start_ns elapsed_ms note=""
    start_ns=$(date +%s%N)
    check_environment
    install_packages
    write_configs
    start_munge
    start_mariadb
    start_slurm
    elapsed_ms=$((($(date +%s%N) - start_ns) / 1000000))
    ((CONFIG_CHANGED)) && note=" (new configuration)"
    printf 'slurm-up: cluster up in %d.%02d s: node %s, %s CPUs, %s GPUs, partition debug%s\n' \
        $((elapsed_ms / 1000)) $((elapsed_ms % 1000 / 10)) "$NODE" "$CPUS" "$GPUS" "$note"
}

main "$@"
