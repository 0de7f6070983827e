#!/bin/bash
#SBATCH --job-name=pulled
#SBATCH --comment=interlink-slurm:77777777-8888-4999-8aaa-bbbbbbbbbbbb
#SBATCH --output=/data/ils/pods/77777777-8888-4999-8aaa-bbbbbbbbbbbb/job.out
#SBATCH --open-mode=append
#SBATCH --chdir=/data/ils/pods/77777777-8888-4999-8aaa-bbbbbbbbbbbb
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --mem=1024M
#
# Pod default/pulled (uid 77777777-8888-4999-8aaa-bbbbbbbbbbbb), written by interlink-slurm <version>.
# Each container's output, exit code and times are in containers/.
# To run it again by hand: sbatch job.sh

set -o nounset -o pipefail
umask 077
# Some runtimes (ch-run) refuse to start without $USER, which batch jobs may lack.
export USER="${USER:-$(id -un)}"
POD_DIR=/data/ils/pods/77777777-8888-4999-8aaa-bbbbbbbbbbbb
cd "$POD_DIR" || exit 1
# The job's functions (ils_container, ils_wait...): interlink-slurm's ils.sh.
. ./ils.sh || exit 1
ils_start default/pulled

# Each container's own /tmp (shared with its exec probes and hooks), on each node, in a
# directory of the job's own: never the node's /tmp itself.
ils_tmp_sweep "${TMPDIR:-/tmp}" &
ILS_TMP="${TMPDIR:-/tmp}/interlink-slurm-${SLURM_JOB_ID:-pid$$}${ILS_MEMBER:+-$ILS_MEMBER}"
ils_rm -rf "$ILS_TMP"
mkdir -m 700 -- "$ILS_TMP" || exit 1
mkdir -m 1777 -- "$ILS_TMP"/main || exit 1

# Enroot unpacks the pod's images on each node into a directory of the job's own
# (enroot_create_dir); what a run killed before its cleanup left there is removed.
export ENROOT_DATA_PATH=/local/enroot/interlink-slurm-77777777-8888-4999-8aaa-bbbbbbbbbbbb
chmod -Rf u+w -- /local/enroot/interlink-slurm-77777777-8888-4999-8aaa-bbbbbbbbbbbb 2>/dev/null
rm -rf -- /local/enroot/interlink-slurm-77777777-8888-4999-8aaa-bbbbbbbbbbbb
mkdir -p -m 700 -- /local/enroot/interlink-slurm-77777777-8888-4999-8aaa-bbbbbbbbbbbb

# When the job ends, however it ends: stop the tunnel, remove node directories, and end
# whatever of the job still runs.
ils_cleanup() {
  rm -rf -- "$ILS_TMP"
  chmod -Rf u+w -- /local/enroot/interlink-slurm-77777777-8888-4999-8aaa-bbbbbbbbbbbb 2>/dev/null
  rm -rf -- /local/enroot/interlink-slurm-77777777-8888-4999-8aaa-bbbbbbbbbbbb
  ils_reap
}
trap ils_cleanup EXIT

# Images converted into the shared cache, once for every pod (ils_pull).
ils_pull /shared/sif-cache/nvcr.io_nvidia_pytorch_24.05-py3-02aa20bc678e9f9e.sqsh '' docker://nvcr.io/nvidia/pytorch:24.05-py3 enroot import --output /shared/sif-cache/nvcr.io_nvidia_pytorch_24.05-py3-02aa20bc678e9f9e.sqsh.part 'docker://nvcr.io#nvidia/pytorch:24.05-py3' || { echo 'interlink-slurm: cannot pull docker://nvcr.io/nvidia/pytorch:24.05-py3'; exit 1; }

# Each image unpacked once on each node; the containers start it by name.
enroot create --name ils-0 /shared/sif-cache/nvcr.io_nvidia_pytorch_24.05-py3-02aa20bc678e9f9e.sqsh || { echo 'interlink-slurm: cannot unpack /shared/sif-cache/nvcr.io_nvidia_pytorch_24.05-py3-02aa20bc678e9f9e.sqsh'; exit 1; }

# Containers, all together; the job fails with the first non-zero exit code.
[ -z "$ILS_STOPPING" ] || exit 143
pids=()
ils_container main enroot start --mount "$ILS_TMP"'/main /tmp none x-create=dir,rbind' --env HOSTNAME ils-0 python3 -c 'print(1)' &
pids+=($!)
status=0
for pid in "${pids[@]}"; do
  ils_wait "$pid"; rc=$?
  [ "$status" -ne 0 ] || status=$rc
done
exit "$status"
