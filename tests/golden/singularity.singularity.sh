#!/bin/bash
#SBATCH --job-name=sing
#SBATCH --comment=interlink-slurm:66666666-7777-4888-8999-aaaaaaaaaaaa
#SBATCH --output=/data/ils/pods/66666666-7777-4888-8999-aaaaaaaaaaaa/job.out
#SBATCH --open-mode=append
#SBATCH --chdir=/data/ils/pods/66666666-7777-4888-8999-aaaaaaaaaaaa
#SBATCH --partition=gpu
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --mem=1024M
#SBATCH --gres=gpu:a100:1
#SBATCH --account=site_acct
#
# Pod default/sing (uid 66666666-7777-4888-8999-aaaaaaaaaaaa), written by interlink-slurm <version>.
# Each container's output, exit code and times are in containers/.
# To run it again by hand: sbatch job.sh

set -o nounset -o pipefail
umask 077
# Some runtimes (ch-run) refuse to start without $USER, which batch jobs may lack.
export USER="${USER:-$(id -un)}"
POD_DIR=/data/ils/pods/66666666-7777-4888-8999-aaaaaaaaaaaa
cd "$POD_DIR" || exit 1
# The job's functions (ils_container, ils_wait...): interlink-slurm's ils.sh.
. ./ils.sh || exit 1
ils_start default/sing

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
ils_container main singularity exec --workdir "$ILS_TMP"/main --containall --cleanenv --env OMP_NUM_THREADS=8 --bind /leonardo_work/p1/in:/in:ro --nv docker://debian-python python3 -c 'print('"'"'hi'"'"')' &
pids+=($!)
status=0
for pid in "${pids[@]}"; do
  ils_wait "$pid"; rc=$?
  [ "$status" -ne 0 ] || status=$rc
done
exit "$status"
