#!/bin/bash
#SBATCH --job-name=mpi-sim
#SBATCH --comment=interlink-slurm:44444444-5555-4666-8777-888888888888
#SBATCH --output=/data/ils/pods/44444444-5555-4666-8777-888888888888/job.out
#SBATCH --open-mode=append
#SBATCH --chdir=/data/ils/pods/44444444-5555-4666-8777-888888888888
#SBATCH --partition=cpu
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=32
#SBATCH --cpus-per-task=1
#SBATCH --mem=65536M
#SBATCH --account=site_acct
#SBATCH --constraint=ib
#SBATCH --time=2:00:00
#SBATCH --exclusive
#
# Pod default/mpi-sim (uid 44444444-5555-4666-8777-888888888888), written by interlink-slurm <version>.
# Each container's output, exit code and times are in containers/.
# To run it again by hand: sbatch job.sh

set -o nounset -o pipefail
umask 077
# Some runtimes (ch-run) refuse to start without $USER, which batch jobs may lack.
export USER="${USER:-$(id -un)}"
POD_DIR=/data/ils/pods/44444444-5555-4666-8777-888888888888
cd "$POD_DIR" || exit 1
# The job's functions (ils_container, ils_wait...): interlink-slurm's ils.sh.
. ./ils.sh || exit 1
ils_start default/mpi-sim

# Restart back-off (first, longest), grace of a stopped container, hook timeout; s.
ILS_BACKOFF=10 ILS_BACKOFF_MAX=300 ILS_GRACE=30 ILS_HOOK_TIMEOUT=30

# Each container's own /tmp (shared with its exec probes and hooks), on each node, in a
# directory of the job's own: never the node's /tmp itself.
ils_tmp_sweep "${TMPDIR:-/tmp}" &
ILS_TMP="${TMPDIR:-/tmp}/interlink-slurm-${SLURM_JOB_ID:-pid$$}${ILS_MEMBER:+-$ILS_MEMBER}"
srun --nodes=2 --ntasks=2 --ntasks-per-node=1 rm -rf -- "$ILS_TMP"
srun --nodes=2 --ntasks=2 --ntasks-per-node=1 mkdir -m 700 -- "$ILS_TMP" || exit 1
srun --nodes=2 --ntasks=2 --ntasks-per-node=1 mkdir -m 1777 -- "$ILS_TMP"/sim || exit 1

# Directories on the node: memory-backed emptyDirs, volume claims.
mkdir -p -m 700 -- /shared/claims/default/cases
srun --nodes=2 --ntasks=2 --ntasks-per-node=1 mkdir -p -m 700 -- /dev/shm/interlink-slurm-44444444-5555-4666-8777-888888888888/fast

# When the job ends, however it ends: stop the tunnel, remove node directories, and end
# whatever of the job still runs.
ils_cleanup() {
  srun --nodes=2 --ntasks=2 --ntasks-per-node=1 rm -rf -- "$ILS_TMP"
  srun --nodes=2 --ntasks=2 --ntasks-per-node=1 rm -rf -- /dev/shm/interlink-slurm-44444444-5555-4666-8777-888888888888
  [ -z "${ILS_SIZE_WATCH:-}" ] || kill "$ILS_SIZE_WATCH" 2>/dev/null
  ils_reap
}
trap ils_cleanup EXIT

# The pod's own shell code (slurm-job.vk.io/pre-exec), run in this shell.
set +o nounset
. ./pre-exec.sh
set -o nounset
cd "$POD_DIR" || exit 1

# emptyDir sizeLimits, watched as the kubelet does (ils_size_watch).
ils_size_watch fast /dev/shm/interlink-slurm-44444444-5555-4666-8777-888888888888/fast 8388608 8Gi &
ILS_SIZE_WATCH=$!

# Containers, all together; the job fails with the first non-zero exit code.
[ -z "$ILS_STOPPING" ] || exit 143
pids=()
ils_container sim \
    -L 3 srun --mpi=pmix --cpu-bind=cores \
    enroot start --mount "$ILS_TMP"'/sim /tmp none x-create=dir,rbind' --mount '/shared/claims/default/cases /data none x-create=auto,rbind' --mount '/dev/shm/interlink-slurm-44444444-5555-4666-8777-888888888888/fast /scratch none x-create=auto,rbind' --env HOSTNAME /images/debian-python.sqsh /opt/sim/bin/solver --input=/data/case.nml --steps=1000 &
pids+=($!)
status=0
for pid in "${pids[@]}"; do
  ils_wait "$pid"; rc=$?
  [ "$status" -ne 0 ] || status=$rc
done
exit "$status"
