#!/usr/bin/env bash
# Private Slurm cluster of $ILS_NODES nodes (default 2) on this one machine (+ Charliecloud
# image) for interlink-slurm tests.
#
#   cluster.sh up       install packages if missing, start munged/slurmctld/one slurmd per node,
#                       build image
#   cluster.sh down     cancel running jobs, stop the daemons this cluster started (pid files)
#   cluster.sh status   show daemons and sinfo; non-zero exit when the cluster is not up
#   cluster.sh env      print export lines: eval "$(deploy/local/cluster.sh env)"
#
# Everything lives in $ILS_CLUSTER_DIR (default <repo>/.cluster): its own slurm.conf, ports,
# munge key and socket, state, spool and pid files. Nothing under /etc/slurm or /run/munge is
# read or written, so this cluster can run next to a "real" Slurm on the same machine.
set -Eeuo pipefail
# set -e exits silently; say where it happened.
on_error() {
    local rc=$?
    echo "cluster.sh: error: line $1: '$2' failed (exit $rc)" >&2
    exit "$rc"
}
trap 'on_error "$LINENO" "$BASH_COMMAND"' ERR

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(cd -- "$SCRIPT_DIR/../.." && pwd -P)

# Absolute paths only: they end up in slurm.conf and in daemons' command lines.
D=$(realpath -m -- "${ILS_CLUSTER_DIR:-$REPO/.cluster}")
IMAGE_DIR=$(realpath -m -- "${ILS_IMAGE_DIR:-/var/cache/interlink-slurm/images}")
IMG=$IMAGE_DIR/debian-python
CTLD_PORT=${ILS_SLURMCTLD_PORT:-17817}
SLURMD_PORT=${ILS_SLURMD_PORT:-17818} # node i (1..N) listens on SLURMD_PORT+i-1
NODES=${ILS_NODES:-2}
CLUSTER_NAME=${ILS_CLUSTER_NAME:-ilsdev}
FIRST_JOB_ID=${ILS_FIRST_JOB_ID:-1}
MSG_TIMEOUT=${ILS_MESSAGE_TIMEOUT:-5}
HN=$(hostname -s)
# slurm.conf has no quoting: a path with blanks would silently break it.
[[ $D$IMAGE_DIR != *[[:space:]]* ]] || { echo "cluster.sh: paths must not contain blanks" >&2; exit 1; }
[[ $NODES =~ ^[1-9]$ ]] || { echo "cluster.sh: ILS_NODES must be 1..9, not '$NODES'" >&2; exit 1; }
[[ $CLUSTER_NAME =~ ^[a-z][a-z0-9]{0,39}$ ]] ||
    { echo "cluster.sh: ILS_CLUSTER_NAME must be lowercase letters and digits" >&2; exit 1; }
[[ $FIRST_JOB_ID =~ ^[1-9][0-9]{0,6}$ ]] ||
    { echo "cluster.sh: ILS_FIRST_JOB_ID must be a number from 1 to 9999999" >&2; exit 1; }
# Node names n1..nN: all nodes share this machine's hostname and address, so slurmd runs once
# per node name (-N) with a port of its own; jobs tell nodes apart by $SLURMD_NODENAME.
NODE_NAMES=()
for ((i = 1; i <= NODES; i++)); do NODE_NAMES+=("n$i"); done
NODE_LIST=n[1-$NODES]
((NODES > 1)) || NODE_LIST=n1

CONF=$D/slurm.conf
MUNGE_DIR=$D/munge
# A unix socket's path has at most 107 bytes, and $D can be as deep as the checkout. munged's
# socket and slurmd's spool (each job step listens on a socket there) live in a short
# directory of their own, named after $D so that several clusters on a machine never share one.
RUN_DIR=${ILS_RUN_DIR:-/run/interlink-slurm/$(printf '%s' "$D" | sha256sum | cut -c1-12)}
MUNGE_SOCKET=$RUN_DIR/munge.socket
SPOOL=$RUN_DIR/spool # + -<node>: each slurmd has its own spool
# Jobs' TMPDIR. A compute node's /tmp is its own: a job makes the same directory in it on every
# node (srun mkdir). Here all nodes are one machine, so each slurmd runs in a mount namespace of
# its own where $NODE_TMP-<node> is mounted on $NODE_TMP, and TASK_PROLOG points TMPDIR there.
NODE_TMP=$RUN_DIR/tmp
TASK_PROLOG=$D/task-prolog.sh
MUNGED_PID=$MUNGE_DIR/munged.pid
CTLD_PID=$D/slurmctld.pid
# Written inside the image as its last build step, before the temp dir is renamed into place.
IMAGE_STAMP=.interlink-slurm-image-complete

# docker-registry: not part of the cluster, but a registry the image tests push to and the
# plugin asks (tests/registry.py starts its own, on a free port).
PACKAGES=(slurmctld slurmd slurm-client munge charliecloud debootstrap docker-registry)
UP_TIMEOUT=30     # seconds to wait for the nodes to become usable
STOP_TIMEOUT=30   # seconds to wait for a daemon to exit after SIGTERM before SIGKILL

# Every Slurm command run by this script talks to this cluster only.
export SLURM_CONF=$CONF

log() { printf 'cluster.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
need_root() { [[ $EUID -eq 0 ]] || die "'$1' must run as root"; }

# ---------------------------------------------------------------------------------------------
# Processes. A pid file alone is not trusted: the pid must be alive (not a zombie), have the
# expected name, and carry this cluster's config/socket path in its command line. That last
# check is what guarantees `down` never signals another Slurm or munged on the machine, even
# if a stale pid file's number has been reused.
# ---------------------------------------------------------------------------------------------

# proc_alive PID NAME : PID exists, is called NAME and has not exited. An exited daemon can
# stay a zombie for a while (its parent is init, which reaps when it pleases), so kill -0 is
# not enough.
proc_alive() {
    local pid=$1 name=$2 stat
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    # Field 3 of /proc/PID/stat (after "(comm)") is the state; Z = exited but not yet reaped.
    [[ ${stat##*\) } != Z* ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]
}

# daemon_pid NAME PIDFILE MARKER -> prints the pid and succeeds when our daemon is running.
daemon_pid() {
    local name=$1 pidfile=$2 marker=$3 pid
    # The daemon deletes its pid file on exit, possibly while we read it: no error message.
    pid=$({ tr -dc '0-9' <"$pidfile"; } 2>/dev/null) || return 1
    [[ -n $pid ]] && proc_alive "$pid" "$name" || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$marker" || return 1
    echo "$pid"
}
munged_pid()    { daemon_pid munged    "$MUNGED_PID" "$MUNGE_SOCKET"; }
# A munged started by an older cluster.sh, whose socket was inside $D.
old_munged_pid() { daemon_pid munged   "$MUNGED_PID" "--socket=$MUNGE_DIR/munge.socket"; }
slurmctld_pid() { daemon_pid slurmctld "$CTLD_PID"   "$CONF"; }
# slurmd_pid NODE
slurmd_pid()    { daemon_pid slurmd    "$D/slurmd.$1.pid" "$CONF"; }
# The one slurmd of an older, single-node cluster.sh.
old_slurmd_pid() { daemon_pid slurmd   "$D/slurmd.pid" "$CONF"; }
any_slurmd_pid() {
    local n
    old_slurmd_pid && return 0
    for n in "${NODE_NAMES[@]}"; do slurmd_pid "$n" && return 0; done
    return 1
}
# watch_pid NODE : the shell that runs the node's slurmd and starts it again if it dies.
watch_pid()     { daemon_pid sh        "$D/watch-slurmd.$1.pid" "$CONF"; }
# stop_slurmds : every slurmd of this cluster, including nodes an earlier config had more of.
stop_slurmds() {
    local f n
    # Their watchers first, or they would start them again.
    for f in "$D"/watch-slurmd.*.pid; do
        [[ -e $f ]] || continue
        n=${f#"$D"/watch-slurmd.}
        stop_daemon "sh (watcher of slurmd ${n%.pid})" watch_pid "${n%.pid}" >/dev/null
        rm -f -- "$f"
    done
    for f in "$D"/slurmd.*.pid; do
        [[ -e $f ]] || continue
        n=${f#"$D"/slurmd.}
        stop_daemon "slurmd ${n%.pid}" slurmd_pid "${n%.pid}"
    done
    stop_daemon slurmd old_slurmd_pid >/dev/null 2>&1
}

# slurmstepd processes (one per running job step) of this cluster. They are not children of
# slurmd and outlive it; what ties them to this cluster is the unix socket each one listens on
# in our SlurmdSpoolDirs ($SPOOL-<node>/<host>_<job>.<step>).
stepd_pids() {
    local inodes pid fd link
    inodes=" $(awk -v dir="$SPOOL" 'index($8, dir) == 1 { printf "%s ", $7 }' /proc/net/unix) "
    [[ $inodes != "  " ]] || return 0
    for pid in $(pgrep -x slurmstepd); do
        for fd in /proc/"$pid"/fd/*; do
            link=$(readlink "$fd" 2>/dev/null) || continue
            if [[ $link == socket:\[*\] && $inodes == *" ${link//[^0-9]/} "* ]]; then
                echo "$pid"
                break
            fi
        done
    done
}

# spawn LOGFILE CMD... : start a self-daemonizing program detached from our stdio and lock fd,
# so `$(cluster.sh up)` or a caller's pipe never waits on a daemon holding it open.
spawn() {
    local logfile=$1; shift
    "$@" </dev/null >>"$logfile" 2>&1 9>&- 8>&-
}

# spawn_bg LOGFILE CMD... : spawn for a program that stays in the foreground: it runs in the
# background, fds closed as above.
spawn_bg() {
    local logfile=$1; shift
    "$@" </dev/null >>"$logfile" 2>&1 9>&- 8>&- &
}

# stop_daemon LABEL PIDFN [ARG] : SIGTERM, wait (bounded), then SIGKILL as a last resort.
# LABEL's first word is the process name. Waits on the process itself: slurmd removes its pid
# file at the start of a shutdown that can take seconds, and the next daemon must not be
# stopped before this one is gone.
stop_daemon() {
    local label=$1 pidfn=$2 pid i name=${1%% *}
    pid=$($pidfn "${@:3}") || { log "$label: not running"; return 0; }
    log "$label: stopping pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
        proc_alive "$pid" "$name" || return 0
        sleep 0.1
    done
    log "$label: still alive after ${STOP_TIMEOUT}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        proc_alive "$pid" "$name" || return 0
        sleep 0.1
    done
    die "$label (pid $pid) did not exit"
}

# check_port PORT NAME : fail clearly when something (another cluster, or an orphan daemon of a
# deleted cluster dir) already listens on PORT, instead of a daemon dying on bind().
check_port() {
    local port=$1 name=$2 who
    who=$(ss -Hltnp "sport = :$port" 2>/dev/null) || return 0
    [[ -z $who ]] && return 0
    die "$name port $port is already in use: ${who##* } (set ILS_${name^^}_PORT to another port)"
}

# wait_for SECONDS CMD... : poll CMD every 0.2 s until it succeeds or time runs out.
wait_for() {
    local secs=$1 i; shift
    for ((i = 0; i < secs * 5; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    return 1
}

# ---------------------------------------------------------------------------------------------
# Packages
# ---------------------------------------------------------------------------------------------
# shellcheck source=deploy/local/packages.sh
. "$SCRIPT_DIR/packages.sh"

# ---------------------------------------------------------------------------------------------
# Cluster directory and configuration
# ---------------------------------------------------------------------------------------------
render_slurm_conf() {
    cat <<EOF
# Generated by deploy/local/cluster.sh -- edits are overwritten by the next 'up'.
ClusterName=$CLUSTER_NAME
# Another cluster on the machine can start elsewhere, so that job ids of the two never meet.
FirstJobId=$FIRST_JOB_ID
SlurmctldHost=$HN(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# Private munged: never the system socket in /run/munge.
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$D/state
# %n: the node name; each slurmd of this machine has its own.
SlurmdSpoolDir=$SPOOL-%n
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$D/slurmd.%n.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
SchedulerType=sched/backfill
# Start jobs as soon as they are submitted (tests submit many small jobs). A heterogeneous job
# (a pod group, #SBATCH hetjob) was seen to start only at a backfill cycle: every second here,
# not every 30 s (the default; sites' own setting applies there).
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,bf_interval=1
# Lets the nodes claim CPUs=16 each on a small machine, so many test jobs run at once.
SlurmdParameters=config_overrides
JobCompType=jobcomp/filetxt
JobCompLoc=$D/log/jobcomp.txt
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
# TMPDIR: node-local, as on real nodes (see NODE_TMP in cluster.sh).
TaskProlog=$TASK_PROLOG
ReturnToService=2
# Finished jobs leave squeue after ~10 s instead of 300 s (the purge itself runs periodically).
MinJobAge=10
# Room for the 10,000-pod benchmarks (the default is 10000 jobs in all).
MaxJobCount=40000
KillWait=5
# With slurmctld down, client commands (squeue, sbatch, ...) fail after MessageTimeout-1 s:
# 4 s here instead of 9 s with the default 10.
MessageTimeout=$MSG_TIMEOUT

# Like Leonardo Booster nodes: 4 A100s each (fake), all on this one machine.
EOF
    local i
    for ((i = 1; i <= NODES; i++)); do
        echo "NodeName=n$i NodeHostname=$HN NodeAddr=127.0.0.1 Port=$((SLURMD_PORT + i - 1))" \
            "CPUs=16 RealMemory=10000 Gres=gpu:a100:4 State=UNKNOWN"
    done
    cat <<EOF
# Leonardo-style partitions over all nodes. DefMemPerCPU keeps a job from taking all memory.
PartitionName=dcgp_usr_prod Nodes=$NODE_LIST Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=500
PartitionName=boost_usr_prod Nodes=$NODE_LIST MaxTime=INFINITE State=UP DefMemPerCPU=500
EOF
}

render_gres_conf() {
    local n
    echo "# Generated by deploy/local/cluster.sh. Four fake A100s per node (character devices,"
    echo "# clones of /dev/null), each node its own."
    echo "AutoDetect=off"
    for n in "${NODE_NAMES[@]}"; do
        echo "NodeName=$n Name=gpu Type=a100 File=$D/dev/$n/nvidia[0-3]"
    done
}

# write_if_changed FILE [MODE] : stdin -> FILE (mode 644 unless given), replaced whole and only
# when the content differs (so an unchanged config does not restart anything, and a job or a
# command reading it while another 'up' runs never sees it half written). Sets CONFIG_CHANGED=1
# when it wrote.
# (It returns status through a variable: a function used in `if`/`&&` runs without set -e.)
CONFIG_CHANGED=0
write_if_changed() {
    local file=$1 tmp
    tmp=$(mktemp "$file.XXXXXX")
    cat >"$tmp"
    if [[ -f $file ]] && cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
        return 0
    fi
    chmod "${2:-644}" "$tmp"
    mv -f "$tmp" "$file"
    CONFIG_CHANGED=1
}

# prepare_dir : create the cluster dir, munge key, fake GPUs and config files.
prepare_dir() {
    local i dev n
    mkdir -p "$D"/{state,log,dev}
    for n in "${NODE_NAMES[@]}"; do mkdir -p "$SPOOL-$n" "$D/dev/$n" "$NODE_TMP-$n"; done
    mkdir -p "$NODE_TMP"
    chmod 1777 "$NODE_TMP" "${NODE_NAMES[@]/#/$NODE_TMP-}"
    # Keep git from ever picking up the cluster dir when it is inside the repo.
    [[ -f $D/.gitignore ]] || echo '*' >"$D/.gitignore"

    # munged refuses sockets in group/world-writable dirs; clients need to reach the socket.
    mkdir -p "$MUNGE_DIR"
    chmod 755 "$MUNGE_DIR" "$RUN_DIR"
    if [[ ! -s $MUNGE_DIR/munge.key ]]; then
        (umask 077 && dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1024 count=1 status=none)
    fi
    chmod 400 "$MUNGE_DIR/munge.key"

    # GRES device files must be character devices; regular files are rejected by slurmd.
    for n in "${NODE_NAMES[@]}"; do
        for i in 0 1 2 3; do
            dev=$D/dev/$n/nvidia$i
            if [[ ! -c $dev ]]; then
                rm -f "$dev"
                mknod -m 666 "$dev" c 1 3
            fi
        done
    done

    render_slurm_conf >"$D/.slurm.conf.new"
    write_if_changed "$CONF" <"$D/.slurm.conf.new"
    # The task prolog is read by slurmd at each task's start: no restart when it changes.
    local changed=$CONFIG_CHANGED
    write_if_changed "$TASK_PROLOG" 755 < <(printf '#!/bin/sh\n# Generated by deploy/local/cluster.sh: each node has its own %s.\necho "export TMPDIR=%s"\n' \
        "$NODE_TMP" "$NODE_TMP")
    CONFIG_CHANGED=$changed
    render_gres_conf >"$D/.gres.conf.new"
    write_if_changed "$D/gres.conf" <"$D/.gres.conf.new"
    rm -f "$D/.slurm.conf.new" "$D/.gres.conf.new"
}

# ---------------------------------------------------------------------------------------------
# Daemons
# ---------------------------------------------------------------------------------------------
munge_ok() { munge -S "$MUNGE_SOCKET" -n </dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null; }

start_munged() {
    munged_pid >/dev/null && return 0
    log "munged: starting"
    rm -f "$MUNGED_PID"
    # No --force: if a munged we failed to recognise still holds the socket lock, munged
    # refuses to start instead of stealing the socket from it.
    spawn "$D/log/munged.stderr" /usr/sbin/munged \
        --socket="$MUNGE_SOCKET" \
        --key-file="$MUNGE_DIR/munge.key" \
        --pid-file="$MUNGED_PID" \
        --log-file="$MUNGE_DIR/munged.log" \
        --seed-file="$MUNGE_DIR/munged.seed" ||
        { tail -n 5 "$D/log/munged.stderr" "$MUNGE_DIR/munged.log" >&2 || true; die "munged failed to start"; }
    wait_for 10 munge_ok || die "munged started but 'munge | unmunge' on $MUNGE_SOCKET fails"
}

start_slurmctld() {
    slurmctld_pid >/dev/null && return 0
    check_port "$CTLD_PORT" slurmctld
    log "slurmctld: starting"
    rm -f "$CTLD_PID" # stale (ours is not running): its reappearance tells us the daemon is up
    # -i: keep going if saved state is partly unreadable (e.g. after a crash or a SIGKILL).
    spawn "$D/log/slurmctld.stderr" /usr/sbin/slurmctld -i -f "$CONF" ||
        { tail -n 20 "$D/log/slurmctld.stderr" "$D/log/slurmctld.log" >&2 || true; die "slurmctld failed to start"; }
    local i
    for ((i = 0; i < 15 * 5; i++)); do
        scontrol ping >/dev/null 2>&1 && return 0
        # Fail fast when it wrote its pid file and then died (fatal config or bind error).
        if [[ -e $CTLD_PID ]] && ! slurmctld_pid >/dev/null; then
            break
        fi
        sleep 0.2
    done
    tail -n 20 "$D/log/slurmctld.log" >&2 || true
    die "slurmctld did not come up (see $D/log/slurmctld.log)"
}

# start_slurmd NODE : the slurmd of one node (-N), on the node's own port, run in the
# foreground by a watcher (its own session) that starts it again when it dies: Debian's slurmd
# 22.05.8 was seen to abort once in a parallel test run (glibc: "unaligned tcache chunk" as an
# RPC thread ended), and every later job needing that node then waited for it. Its running
# steps survive (slurmstepd is no child of slurmd). Each restart is noted in
# $D/log/slurmd.NODE.restarts, which `down` prints and removes.
start_slurmd() {
    local n=$1 i
    watch_pid "$n" >/dev/null && return 0
    slurmd_pid "$n" >/dev/null && return 0 # an older cluster.sh's, without a watcher
    check_port "$((SLURMD_PORT + ${n#n} - 1))" slurmd
    log "slurmd $n: starting"
    rm -f "$D/slurmd.$n.pid" "$D/watch-slurmd.$n.pid"
    # slurmd's job steps inherit its mount namespace: there, $NODE_TMP is this node's own.
    # shellcheck disable=SC2016 # sh expands them
    spawn_bg "$D/log/slurmd.$n.stderr" setsid unshare --mount --propagation private -- \
        sh -c 'mount --bind "$1" "$2" || exit 1
            echo $$ > "$5"
            while :; do
                /usr/sbin/slurmd -D -f "$3" -N "$4"
                echo "slurmd $4 exited (status $?) at $(date -u +%FT%TZ): restarted" >> "$6"
                sleep 1
            done' \
        sh "$NODE_TMP-$n" "$NODE_TMP" "$CONF" "$n" "$D/watch-slurmd.$n.pid" \
        "$D/log/slurmd.$n.restarts"
    for ((i = 0; i < UP_TIMEOUT * 10; i++)); do
        slurmd_pid "$n" >/dev/null && watch_pid "$n" >/dev/null && return 0
        sleep 0.1
    done
    tail -n 20 "$D/log/slurmd.$n.stderr" "$D/log/slurmd.$n.log" >&2 || true
    die "slurmd $n failed to start"
}

node_state() { sinfo -h -N -n "$1" -o '%T' 2>/dev/null | head -n 1; }

# A node is usable when it is responding (no '*' suffix) and neither down nor drained.
node_usable() {
    local s
    s=$(node_state "$1")
    [[ $s =~ ^(idle|mixed|allocated|completing)$ ]]
}

nodes_usable() {
    local n
    for n in "${NODE_NAMES[@]}"; do node_usable "$n" || return 1; done
}

wait_nodes_usable() {
    local i n s
    local -A resumed=()
    for ((i = 0; i < UP_TIMEOUT * 5; i++)); do
        nodes_usable && return 0
        for n in "${NODE_NAMES[@]}"; do
            s=$(node_state "$n")
            # ReturnToService=2 clears most DOWN states by itself; a DRAIN set earlier by hand
            # or by Slurm (e.g. "Kill task failed") does not, so resume once.
            if [[ -z ${resumed[$n]:-} && ($s == drain* || $s == drained || $s == down) ]]; then
                scontrol update nodename="$n" state=resume >/dev/null 2>&1 || true
                resumed[$n]=1
            fi
        done
        sleep 0.2
    done
    sinfo -N -l >&2 || true
    for n in "${NODE_NAMES[@]}"; do
        node_usable "$n" && continue
        tail -n 20 "$D/log/slurmd.$n.log" >&2 || true
        die "node $n not usable after ${UP_TIMEOUT}s (state: $(node_state "$n"))"
    done
}

# slurmctld runs its first scheduling pass ~3 s after it starts, even when jobs are waiting;
# `up` waits for it so that jobs submitted right after `up` start at once. sdiag's
# "Main schedule statistics ... Total cycles: N" counts those passes.
sched_cycles() { sdiag 2>/dev/null | awk '/^Main schedule statistics/ { m = 1 } m && /Total cycles:/ { print $3; exit }'; }
scheduler_ready() {
    local n
    n=$(sched_cycles) || true
    [[ $n =~ ^[0-9]+$ ]] && ((n > 0))
}

wait_scheduler_ready() {
    wait_for 10 scheduler_ready ||
        log "warning: no scheduling pass seen in sdiag after 10 s; continuing"
}

# ---------------------------------------------------------------------------------------------
# Container image
# ---------------------------------------------------------------------------------------------
image_ok() { [[ -f $IMG/$IMAGE_STAMP ]]; }

# Remove a (partial) debootstrap tree. An interrupted debootstrap can leave /proc or /sys
# mounted inside it; unmount those first and never let rm cross into another filesystem.
remove_tree() {
    local dir=$1 m
    [[ -e $dir ]] || return 0
    findmnt -rn -o TARGET | awk -v d="$dir/" 'index($0, d) == 1' | sort -r | while read -r m; do
        umount -l -- "$m" 2>/dev/null || true
    done
    rm -rf --one-file-system -- "$dir"
}

# debian_mirror : the Debian archive this machine's apt already uses (the first URIs: line of
# its deb822 sources, else the first deb line of sources.list, security archives left out),
# since a machine may reach only its own mirror. ILS_DEBIAN_MIRROR overrides it.
debian_mirror() {
    local uri
    if [[ -n ${ILS_DEBIAN_MIRROR:-} ]]; then
        echo "$ILS_DEBIAN_MIRROR"
        return
    fi
    uri=$(awk '$1 == "URIs:" { for (i = 2; i <= NF; i++) print $i }' \
        /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v -e security -e ubuntu | head -n 1) || true
    if [[ -z $uri ]]; then
        uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }' \
            /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            grep -v -e security -e ubuntu | head -n 1) || true
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

build_image() {
    image_ok && return 0
    mkdir -p "$IMAGE_DIR"
    # Several clusters (checkouts) share the image dir: one builder at a time.
    exec 8>"$IMAGE_DIR/.debian-python.lock"
    flock 8
    if image_ok; then exec 8>&-; return 0; fi

    local t0=$SECONDS tmp old
    for old in "$IMAGE_DIR"/.debian-python.tmp.*; do remove_tree "$old"; done
    # An image dir without the stamp is an unfinished or foreign tree: rebuild it.
    remove_tree "$IMG"

    tmp=$IMAGE_DIR/.debian-python.tmp.$$
    local DEBIAN_MIRROR
    DEBIAN_MIRROR=$(debian_mirror)
    log "building image $IMG (debootstrap bookworm from $DEBIAN_MIRROR)"
    debootstrap --variant=minbase --include=python3-minimal bookworm "$tmp" "$DEBIAN_MIRROR" \
        >"$IMAGE_DIR/.debian-python.build.log" 2>&1 ||
        { tail -n 20 "$IMAGE_DIR/.debian-python.build.log" >&2; remove_tree "$tmp"; die "debootstrap failed"; }

    # ch-run bind-mounts these host files over the image's, so they must exist in the image.
    local f
    for f in etc/passwd etc/group etc/hosts etc/resolv.conf; do
        [[ -e $tmp/$f || -L $tmp/$f ]] || touch "$tmp/$f"
    done
    # debootstrap leaves its apt cache behind; it is just weight in the image.
    rm -rf "${tmp:?}"/var/cache/apt/archives/*.deb

    USER=root ch-run "$tmp" -- python3 -c 'print(1)' | grep -qx 1 ||
        { remove_tree "$tmp"; die "ch-run cannot run python3 in the freshly built image"; }

    date -u +%FT%TZ >"$tmp/$IMAGE_STAMP"
    mv -T -- "$tmp" "$IMG"
    exec 8>&-
    log "image ready in $((SECONDS - t0)) s"
}

# Charliecloud 0.31 cannot create a bind destination in a read-only image, so the image holds
# the mount points that tests and examples use (as images built with ch-image hold /mnt/0-9).
# Cheap and idempotent: run on every 'up', so an older image gains new ones.
MOUNT_POINTS=(
    mnt/0 mnt/1 mnt/2 mnt/3 mnt/4 mnt/5 mnt/6 mnt/7 mnt/8 mnt/9
    mnt/config mnt/secret mnt/work mnt/data mnt/shared mnt/projected mnt/scratch
    etc/config data scratch workspace var/run/secrets/kubernetes.io/serviceaccount
)
ensure_mount_points() {
    local m
    # debootstrap makes var/run an absolute link to /run: seen from the host it points at the
    # host's /run, so a mkdir through it would land on the host. Relative, it means the same
    # inside the container and stays inside the image from outside.
    if [[ -L $IMG/var/run && $(readlink -- "$IMG/var/run") == /run ]]; then
        ln -sfn ../run "$IMG/var/run"
    fi
    for m in "${MOUNT_POINTS[@]}"; do
        [[ -d $IMG/$m ]] || mkdir -p -- "$IMG/$m"
    done
}

# ---------------------------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------------------------
cmd_up() {
    need_root up
    ensure_packages
    mkdir -p "$D"
    # Serialise concurrent 'up'/'down' on the same cluster dir. spawn() closes fd 9 so the
    # daemons never inherit (and hold) this lock.
    exec 9>"$D/.lock"
    flock 9

    prepare_dir
    if ((CONFIG_CHANGED)) && { slurmctld_pid || any_slurmd_pid; } >/dev/null; then
        log "configuration changed: restarting Slurm daemons"
        stop_slurmds
        stop_daemon slurmctld slurmctld_pid
    fi
    stop_daemon munged old_munged_pid >/dev/null 2>&1
    start_munged
    start_slurmctld
    local n
    for n in "${NODE_NAMES[@]}"; do start_slurmd "$n"; done
    wait_nodes_usable
    wait_scheduler_ready
    build_image
    ensure_mount_points
    log "up: $(sinfo -h -N -o '%N %T' | sort -u | tr '\n' ' ')SLURM_CONF=$CONF"
}

cmd_down() {
    need_root down
    if [[ -d $D ]]; then
        exec 9>"$D/.lock"
        flock 9
    fi
    # Running jobs would outlive the daemons (their slurmstepd is detached from slurmd), so
    # cancel this cluster's running jobs first and give them KillWait to end. Pending jobs stay
    # in the saved state and start after the next 'up'.
    local ids i
    if slurmctld_pid >/dev/null && any_slurmd_pid >/dev/null; then
        ids=$(squeue -h -t running,suspended,configuring -o '%A' 2>/dev/null | tr '\n' ' ') || ids=
        if [[ -n ${ids// /} ]]; then
            log "cancelling running jobs: $ids"
            # shellcheck disable=SC2086
            scancel $ids 2>/dev/null || true
        fi
    fi
    for ((i = 0; i < 150; i++)); do
        [[ -z $(stepd_pids) ]] && break
        sleep 0.1
    done

    # slurmds first so they do not log the controller going away; munged last, all use it.
    stop_slurmds
    local f
    for f in "$D"/log/slurmd.*.restarts; do
        [[ -e $f ]] || continue
        while IFS= read -r line; do log "warning: $line"; done <"$f"
        rm -f -- "$f"
    done
    stop_daemon slurmctld slurmctld_pid
    stop_daemon munged munged_pid
    stop_daemon munged old_munged_pid >/dev/null 2>&1
    ids=$(stepd_pids | tr '\n' ' ')
    if [[ -n $ids ]]; then
        log "warning: job steps of this cluster still running (slurmstepd pids: $ids); they end" \
            "with their jobs or can be killed by hand"
    else
        rm -rf -- "$RUN_DIR"
    fi
}

cmd_status() {
    local up=0 name pid n
    for name in munged slurmctld; do
        if pid=$(${name}_pid); then
            printf '%-10s running (pid %s)\n' "$name:" "$pid"
        else
            printf '%-10s not running\n' "$name:"
            up=1
        fi
    done
    for n in "${NODE_NAMES[@]}"; do
        if pid=$(slurmd_pid "$n"); then
            printf '%-10s running (pid %s)\n' "slurmd $n:" "$pid"
        else
            printf '%-10s not running\n' "slurmd $n:"
            up=1
        fi
    done
    echo "SLURM_CONF=$CONF"
    if ((up == 0)); then
        sinfo || up=1
        for n in "${NODE_NAMES[@]}"; do
            node_usable "$n" || { echo "node $n is not usable"; up=1; }
        done
    fi
    if image_ok; then echo "image: $IMG"; else echo "image: $IMG (missing)"; fi
    exit "$up"
}

cmd_env() {
    printf 'export SLURM_CONF=%q\n' "$CONF"
    printf 'export ILS_CLUSTER_DIR=%q\n' "$D"
    printf 'export ILS_IMAGE=%q\n' "$IMG"
    # What this cluster runs with, from which tests derive further ports.
    printf 'export ILS_NODES=%q\n' "$NODES"
    printf 'export ILS_SLURMCTLD_PORT=%q\n' "$CTLD_PORT"
    printf 'export ILS_SLURMD_PORT=%q\n' "$SLURMD_PORT"
}

usage() {
    echo "usage: $0 {up|down|status|env}" >&2
    exit 2
}

case ${1:-} in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *) usage ;;
esac
