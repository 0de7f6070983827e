#!/bin/bash
#SBATCH --job-name=train-job
#SBATCH --comment=interlink-slurm:33333333-4444-4555-8666-777777777777
#SBATCH --output=/data/ils/pods/33333333-4444-4555-8666-777777777777/job.out
#SBATCH --open-mode=append
#SBATCH --chdir=/data/ils/pods/33333333-4444-4555-8666-777777777777
#SBATCH --partition=gpu
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=9
#SBATCH --mem=32896M
#SBATCH --gres=gpu:a100:2
#SBATCH --time=0-02:00:00
#
# Pod default/train-job (uid 33333333-4444-4555-8666-777777777777), written by interlink-slurm <version>.
# Each container's output, exit code and times are in containers/.
# To run it again by hand: sbatch job.sh

set -o nounset -o pipefail
umask 077
# Some runtimes (ch-run) refuse to start without $USER, which batch jobs may lack.
export USER="${USER:-$(id -un)}"
POD_DIR=/data/ils/pods/33333333-4444-4555-8666-777777777777
cd "$POD_DIR" || exit 1
# The job's functions (ils_container, ils_wait...): interlink-slurm's ils.sh.
. ./ils.sh || exit 1
ils_start default/train-job

# Each container's own /tmp (shared with its exec probes and hooks), on each node, in a
# directory of the job's own: never the node's /tmp itself.
ils_tmp_sweep "${TMPDIR:-/tmp}" &
ILS_TMP="${TMPDIR:-/tmp}/interlink-slurm-${SLURM_JOB_ID:-pid$$}${ILS_MEMBER:+-$ILS_MEMBER}"
ils_rm -rf "$ILS_TMP"
mkdir -m 700 -- "$ILS_TMP" || exit 1
mkdir -m 1777 -- "$ILS_TMP"/train "$ILS_TMP"/monitor || exit 1

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
ils_container train enroot start --mount "$ILS_TMP"'/train /tmp none x-create=dir,rbind' --env HOSTNAME --env EPOCHS --env DATA_DIR --env NOTE /images/debian-python.sqsh python3 train.py --epochs=10 --data=/data/in &
pids+=($!)
ils_container monitor enroot start --mount "$ILS_TMP"'/monitor /tmp none x-create=dir,rbind' --env HOSTNAME --env INTERVAL /images/debian-python.sqsh sh -c 'while sleep 30; do date; done' &
pids+=($!)
status=0
for pid in "${pids[@]}"; do
  ils_wait "$pid"; rc=$?
  [ "$status" -ne 0 ] || status=$rc
done
exit "$status"
