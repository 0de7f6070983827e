#!/bin/bash
#SBATCH --job-name=web-7d9f
#SBATCH --comment=interlink-slurm:22222222-3333-4444-8555-666666666666
#SBATCH --output=/data/ils/pods/22222222-3333-4444-8555-666666666666/job.out
#SBATCH --open-mode=append
#SBATCH --chdir=/data/ils/pods/22222222-3333-4444-8555-666666666666
#SBATCH --partition=cpu
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --mem=1024M
#
# Pod default/web-7d9f (uid 22222222-3333-4444-8555-666666666666), written by interlink-slurm <version>.
# Each container's output, exit code and times are in containers/.
# To run it again by hand: sbatch job.sh

set -o nounset -o pipefail
umask 077
# Some runtimes (ch-run) refuse to start without $USER, which batch jobs may lack.
export USER="${USER:-$(id -un)}"
POD_DIR=/data/ils/pods/22222222-3333-4444-8555-666666666666
cd "$POD_DIR" || exit 1
# The job's functions (ils_container, ils_wait...): interlink-slurm's ils.sh.
. ./ils.sh || exit 1
ils_start default/web-7d9f

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
  ils_reap
}
trap ils_cleanup EXIT

# Containers, all together; the job fails with the first non-zero exit code.
[ -z "$ILS_STOPPING" ] || exit 143
pids=()
ils_container web enroot start --mount "$ILS_TMP"'/web /tmp none x-create=dir,rbind' --mount '/data/ils/pods/22222222-3333-4444-8555-666666666666/volumes/config /etc/app none x-create=auto,rbind,ro' --mount '/data/ils/pods/22222222-3333-4444-8555-666666666666/volumes/cache /cache none x-create=auto,rbind,ro' --env HOSTNAME /images/debian-python.sqsh /bin/sh -c 'cd -- "$0" && exec "$@"' /srv/app serve --port=8080 '--motd=it'"'"'s $(HOME) & `date`' &
pids+=($!)
status=0
for pid in "${pids[@]}"; do
  ils_wait "$pid"; rc=$?
  [ "$status" -ne 0 ] || status=$rc
done
exit "$status"
