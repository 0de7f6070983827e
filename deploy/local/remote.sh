#!/usr/bin/env bash
# What the SSH and slurmrestd modes of the local cluster need, besides the cluster itself.
#
#   remote.sh setup   install openssh-server and slurmrestd if missing, create the job user,
#                     generate a host key and a client key (idempotent)
#   remote.sh env     print export lines: eval "$(deploy/local/remote.sh env)"
#
# Daemons are not started here: the integration tests start sshd (own port, own config, own
# pid file) and slurmrestd (as the job user, on a unix socket) and stop them by pid.
# Everything lives in $ILS_CLUSTER_DIR/remote (default <repo>/.cluster/remote).
set -Eeuo pipefail
on_error() {
    local rc=$?
    echo "remote.sh: error: line $1: '$2' failed (exit $rc)" >&2
    exit "$rc"
}
trap 'on_error "$LINENO" "$BASH_COMMAND"' ERR

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(cd -- "$SCRIPT_DIR/../.." && pwd -P)
D=$(realpath -m -- "${ILS_CLUSTER_DIR:-$REPO/.cluster}")
R=$D/remote
JOB_USER=${ILS_REMOTE_USER:-ilsuser}
PACKAGES=(openssh-server slurmrestd)

log() { printf 'remote.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# shellcheck source=deploy/local/packages.sh
. "$SCRIPT_DIR/packages.sh"

ensure_user() {
    if ! id -u "$JOB_USER" >/dev/null 2>&1; then
        log "creating user $JOB_USER"
        useradd --create-home --shell /bin/bash "$JOB_USER"
    fi
    # A locked account ('!' in /etc/shadow) is refused by sshd even with a key; '*' is not.
    if [[ $(getent shadow "$JOB_USER" | cut -d: -f2) == '!'* ]]; then
        usermod -p '*' "$JOB_USER"
    fi
}

ensure_keys() {
    mkdir -p "$R"
    chmod 755 "$R"
    [[ -f $R/ssh_host_ed25519_key ]] ||
        ssh-keygen -q -t ed25519 -N '' -C "interlink-slurm test login node" -f "$R/ssh_host_ed25519_key"
    [[ -f $R/id_ed25519 ]] ||
        ssh-keygen -q -t ed25519 -N '' -C "interlink-slurm plugin" -f "$R/id_ed25519"
    chmod 600 "$R/ssh_host_ed25519_key" "$R/id_ed25519"
    # sshd reads this as the job user (AuthorizedKeysFile in the tests' sshd_config). Replaced
    # whole, and only when it differs: test workers' login nodes read it while another worker's
    # setup runs.
    if ! cmp -s "$R/id_ed25519.pub" "$R/authorized_keys"; then
        cp "$R/id_ed25519.pub" "$R/authorized_keys.new"
        chmod 644 "$R/authorized_keys.new"
        mv -f "$R/authorized_keys.new" "$R/authorized_keys"
    fi
    # sshd's privilege separation directory.
    mkdir -p /run/sshd
    chmod 755 /run/sshd
}

# The job user must reach the cluster's config and munge socket (jobs and slurmrestd use them).
check_reachable() {
    local path socket
    # The munge socket lives outside $D (a short path): slurm.conf says where.
    socket=$(sed -n 's/^AuthInfo=socket=//p' "$D/slurm.conf" 2>/dev/null) || true
    for path in "$D/slurm.conf" "${socket:-$D/slurm.conf (AuthInfo=socket=...)}"; do
        [[ -e $path ]] || die "$path missing: run deploy/local/cluster.sh up first"
        runuser -u "$JOB_USER" -- test -r "$path" ||
            die "$JOB_USER cannot reach $path: every directory above it must be mode 755"
    done
}

cmd_setup() {
    [[ $EUID -eq 0 ]] || die "'setup' must run as root"
    # Parallel test workers each run setup: one at a time (useradd, apt, ssh-keygen).
    mkdir -p "$D"
    exec 9>"$D/remote.lock"
    flock 9
    ensure_packages
    ensure_user
    ensure_keys
    check_reachable
}

cmd_env() {
    printf 'export ILS_REMOTE_USER=%q\n' "$JOB_USER"
    printf 'export ILS_REMOTE_DIR=%q\n' "$R"
    printf 'export ILS_SSH_KEY=%q\n' "$R/id_ed25519"
    printf 'export ILS_SSH_HOST_KEY=%q\n' "$R/ssh_host_ed25519_key"
}

case ${1:-} in
    setup) cmd_setup ;;
    env) cmd_env ;;
    *) echo "usage: $0 {setup|env}" >&2; exit 2 ;;
esac
