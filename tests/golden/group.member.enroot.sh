#!/bin/bash
#SBATCH --job-name=train-worker-0
#SBATCH --comment=interlink-slurm:0a1b2c3d-0000-4000-8000-000000000002
#SBATCH --output=/data/ils/default/train-worker-0-0a1b2c3d-0000-4000-8000-000000000002/job.out
#SBATCH --open-mode=append
#SBATCH --chdir=/data/ils/default/train-worker-0-0a1b2c3d-0000-4000-8000-000000000002
#SBATCH --partition=gpu
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=4
#SBATCH --mem=8192M
#SBATCH --gres=gpu:a100:4
#
# Pod default/train-worker-0 (uid 0a1b2c3d-0000-4000-8000-000000000002), written by interlink-slurm <version>.
# Each container's output, exit code and times are in containers/.
# To run it again by hand: sbatch job.sh

set -o nounset -o pipefail
umask 077
# Some runtimes (ch-run) refuse to start without $USER, which batch jobs may lack.
export USER="${USER:-$(id -un)}"
POD_DIR=/data/ils/default/train-worker-0-0a1b2c3d-0000-4000-8000-000000000002
cd "$POD_DIR" || exit 1
# The job's functions (ils_container, ils_wait...): interlink-slurm's ils.sh.
. ./ils.sh || exit 1
ils_start default/train-worker-0

# Each container's own /tmp (shared with its exec probes and hooks), on each node, in a
# directory of the job's own: never the node's /tmp itself.
ils_tmp_sweep "${TMPDIR:-/tmp}" &
ILS_TMP="${TMPDIR:-/tmp}/interlink-slurm-${SLURM_JOB_ID:-pid$$}${ILS_MEMBER:+-$ILS_MEMBER}"
ils_rm -rf "$ILS_TMP"
mkdir -m 700 -- "$ILS_TMP" || exit 1
mkdir -m 1777 -- "$ILS_TMP"/trainer || exit 1

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
ils_container trainer enroot start --mount "$ILS_TMP"'/trainer /tmp none x-create=dir,rbind' --mount '/data/ils/default/train-worker-0-0a1b2c3d-0000-4000-8000-000000000002/volumes/interlink-slurm-group/hosts /etc/hosts none x-create=auto,rbind' --env HOSTNAME --env ILS_GROUP --env ILS_GROUP_SIZE --env ILS_GROUP_RANK --env ILS_GROUP_PODS --env ILS_GROUP_LEADER --env ILS_GROUP_NODES --env ILS_GROUP_LEADER_ADDR --env WORLD_SIZE --env RANK --env MASTER_ADDR --env MASTER_PORT /images/debian-python.sqsh python3 -c 'print(1)' &
pids+=($!)
status=0
for pid in "${pids[@]}"; do
  ils_wait "$pid"; rc=$?
  [ "$status" -ne 0 ] || status=$rc
done
exit "$status"
