#!/bin/bash
#SBATCH --job-name=web-0
#SBATCH --comment=interlink-slurm:55555555-6666-4777-8888-999999999999
#SBATCH --output=/data/ils/pods/55555555-6666-4777-8888-999999999999/job.out
#SBATCH --open-mode=append
#SBATCH --chdir=/data/ils/pods/55555555-6666-4777-8888-999999999999
#SBATCH --partition=cpu
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --mem=1024M
#SBATCH --account=site_acct
#
# Pod default/web-0 (uid 55555555-6666-4777-8888-999999999999), written by interlink-slurm <version>.
# Each container's output, exit code and times are in containers/.
# To run it again by hand: sbatch job.sh

set -o nounset -o pipefail
umask 077
# Some runtimes (ch-run) refuse to start without $USER, which batch jobs may lack.
export USER="${USER:-$(id -un)}"
POD_DIR=/data/ils/pods/55555555-6666-4777-8888-999999999999
cd "$POD_DIR" || exit 1
# The job's functions (ils_container, ils_wait...): interlink-slurm's ils.sh.
. ./ils.sh || exit 1
ils_start default/web-0

# Restart back-off (first, longest), grace of a stopped container, hook timeout; s.
ILS_BACKOFF=10 ILS_BACKOFF_MAX=300 ILS_GRACE=20 ILS_HOOK_TIMEOUT=30

# The pod's address as interLink gave it (interlink.eu/pod-ip).
export POD_IP=10.244.3.17

# Each container's own /tmp (shared with its exec probes and hooks), on each node, in a
# directory of the job's own: never the node's /tmp itself.
ils_tmp_sweep "${TMPDIR:-/tmp}" &
ILS_TMP="${TMPDIR:-/tmp}/interlink-slurm-${SLURM_JOB_ID:-pid$$}${ILS_MEMBER:+-$ILS_MEMBER}"
ils_rm -rf "$ILS_TMP"
mkdir -m 700 -- "$ILS_TMP" || exit 1
mkdir -m 1777 -- "$ILS_TMP"/web || exit 1

# When the job ends, however it ends: stop the tunnel, remove node directories, and end
# whatever of the job still runs.
ils_cleanup() {
  rm -rf -- "$ILS_TMP"
  [ -z "${ILS_TUNNEL:-}" ] || kill -TERM -- "-$ILS_TUNNEL" 2>/dev/null
  ils_reap
}
trap ils_cleanup EXIT

# interLink's tunnel (interlink.eu/wstunnel-client-commands), in the background and
# in a process group of its own, from now until the containers end.
mkdir -p tunnel
( cd tunnel && exec setsid bash ../tunnel.sh ) > tunnel.log 2>&1 < /dev/null &
ILS_TUNNEL=$!

# Containers, all together; the job fails with the first non-zero exit code.
[ -z "$ILS_STOPPING" ] || exit 143
pids=()
ils_container web \
    -P 1 Always \
    -U 9 startup 0 2 1 1 30 tcp 127.0.0.1 8888 \
    -R 8 readiness 0 5 1 1 3 http http://127.0.0.1:8888/ \
    -V 19 liveness 0 10 1 1 5 exec enroot start --mount "$ILS_TMP"'/web /tmp none x-create=dir,rbind' --env HOSTNAME --env POD_IP /images/debian-python.sqsh test -e /tmp/alive \
    -S 12 exec enroot start --mount "$ILS_TMP"'/web /tmp none x-create=dir,rbind' --env HOSTNAME --env POD_IP /images/debian-python.sqsh touch /tmp/alive \
    -T 2 http http://127.0.0.1:8888/quit \
    enroot start --mount "$ILS_TMP"'/web /tmp none x-create=dir,rbind' --env HOSTNAME --env POD_IP /images/debian-python.sqsh python3 -m http.server 8888 &
pids+=($!)
status=0
for pid in "${pids[@]}"; do
  ils_wait "$pid"; rc=$?
  [ "$status" -ne 0 ] || status=$rc
done
exit "$status"
