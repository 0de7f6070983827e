#!/bin/bash
#SBATCH --job-name=hello
#SBATCH --comment=interlink-slurm:11111111-2222-4333-8444-555555555555
#SBATCH --output=/data/ils/pods/11111111-2222-4333-8444-555555555555/job.out
#SBATCH --open-mode=append
#SBATCH --chdir=/data/ils/pods/11111111-2222-4333-8444-555555555555
#SBATCH --partition=cpu
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --mem=1024M
#
# Pod team-a/hello (uid 11111111-2222-4333-8444-555555555555), written by interlink-slurm <version>.
# Each container's output, exit code and times are in containers/.
# To run it again by hand: sbatch job.sh

set -o nounset -o pipefail
umask 077
# Some runtimes (ch-run) refuse to start without $USER, which batch jobs may lack.
export USER="${USER:-$(id -un)}"
POD_DIR=/data/ils/pods/11111111-2222-4333-8444-555555555555
cd "$POD_DIR" || exit 1
# The job's functions (ils_container, ils_wait...): interlink-slurm's ils.sh.
. ./ils.sh || exit 1
ils_start team-a/hello

# Each container's own /tmp (shared with its exec probes and hooks), on each node, in a
# directory of the job's own: never the node's /tmp itself.
ils_tmp_sweep "${TMPDIR:-/tmp}" &
ILS_TMP="${TMPDIR:-/tmp}/interlink-slurm-${SLURM_JOB_ID:-pid$$}${ILS_MEMBER:+-$ILS_MEMBER}"
ils_rm -rf "$ILS_TMP"
mkdir -m 700 -- "$ILS_TMP" || exit 1
mkdir -m 1777 -- "$ILS_TMP"/main || exit 1

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
ils_container main enroot start --mount "$ILS_TMP"'/main /tmp none x-create=dir,rbind' --env HOSTNAME /images/debian-python.sqsh python3 -c 'print('"'"'hello, world'"'"')' &
pids+=($!)
status=0
for pid in "${pids[@]}"; do
  ils_wait "$pid"; rc=$?
  [ "$status" -ne 0 ] || status=$rc
done
exit "$status"
