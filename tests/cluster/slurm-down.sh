#!/usr/bin/env bash
# Stop the single-node SLURM cluster that tests/cluster/slurm-up.sh started, by pid file:
# slurmd, slurmctld, slurmdbd, MariaDB and munged. State and accounting data are kept.
# slurm-up.sh sources this file for the paths and the daemon helpers below.
set -euo pipefail

LOG_DIR=/var/log/slurm
STATE_DIR=/var/lib/slurm
ETC_DIR=/etc/slurm
MUNGE_PID=/run/munge/munged.pid
MYSQL_SOCK=/run/mysqld/mysqld.sock
MYSQL_PID=/run/mysqld/mysqld.pid
SLURMDBD_PID=/run/slurmdbd.pid
SLURMCTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid

# Print the pid in PIDFILE if that process is alive, is not a zombie and runs COMMAND.
daemon_pid() {
    local command=$1 pidfile=$2 pid state
    pid=$(tr -dc '0-9' 2>/dev/null <"$pidfile") || return 1
    [[ -n $pid && -r /proc/$pid/stat ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$command" ]] || return 1
    state=$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ $state != Z ]] || return 1
    echo "$pid"
}

# Stop COMMAND (pid in PIDFILE): SIGTERM, then SIGKILL after 20 s. A zombie counts as stopped.
stop_daemon() {
    local command=$1 pidfile=$2 pid i
    pid=$(daemon_pid "$command" "$pidfile") || { rm -f "$pidfile"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do
        daemon_pid "$command" "$pidfile" >/dev/null || break
        sleep 0.1
    done
    if daemon_pid "$command" "$pidfile" >/dev/null; then
        echo "slurm-down: $command (pid $pid) ignored SIGTERM for 20 s; sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$pidfile"
    echo "slurm-down: stopped $command (pid $pid)"
}

stop_all() {
    stop_daemon slurmd "$SLURMD_PID"
    stop_daemon slurmctld "$SLURMCTLD_PID"
    stop_daemon slurmdbd "$SLURMDBD_PID"
    stop_daemon mariadbd "$MYSQL_PID"
    stop_daemon munged "$MUNGE_PID"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    [[ $(id -u) == 0 ]] || { echo "slurm-down: must run as root" >&2; exit 1; }
    stop_all
fi
