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

# Time stamps in RFC 3339 with nanoseconds, as Kubernetes prints them.
ils_now() { date -u +%Y-%m-%dT%H:%M:%S.%NZ; }

# Write a small file atomically, so a reader never sees half of it.
ils_put() { printf '%s\n' "$2" > "$1.tmp" && mv -f "$1.tmp" "$1"; }

# Wait for one child, riding out the TERM that scancel sends to every process of the job:
# wait returns early (>128) when a trapped signal arrives while the child still runs.
ils_wait() {
  local pid=$1 rc
  while :; do
    wait "$pid"; rc=$?
    if [ "$rc" -gt 128 ] && kill -0 "$pid" 2>/dev/null; then continue; fi
    return "$rc"
  done
}

# ils_container NAME [-L N LAUNCHER...] ARGV...: run one container with the variables of its
# env file (through a launcher such as srun, given as its N words, on every task of the job),
# its output in its log (through logpipe.py, which notes when each chunk was written), and
# its start time, end time and exit code in files.
ils_container() {
  local name=$1; shift
  local -a envs=() launch=()
  local kv rc logger="" pipe="containers/$name.pipe" runtime found
  trap ':' TERM INT
  while IFS= read -r -d '' kv; do envs+=("$kv"); done < "containers/$name.env"
  if [ "$1" = "-L" ]; then
    launch=("${@:3:$2}"); shift $(( $2 + 2 ))
    found=$(command -v -- "${launch[0]}") && launch[0]=$found
  fi
  # Found on the job's PATH, not on a PATH the pod's environment may set for the container.
  runtime=$(command -v -- "$1") || runtime=$1
  shift
  ils_put "containers/$name.started" "$(ils_now)"
  if [ -n "$ILS_PYTHON" ]; then
    rm -f "$pipe" && mkfifo -m 600 "$pipe"
    "$ILS_PYTHON" logpipe.py "containers/$name.log" < "$pipe" &
    logger=$!
    env -- "${envs[@]}" "${launch[@]}" "$runtime" "$@" > "$pipe" 2>&1 < /dev/null &
  else
    env -- "${envs[@]}" "${launch[@]}" "$runtime" "$@" \
      >> "containers/$name.log" 2>&1 < /dev/null &
  fi
  ils_wait $!; rc=$?
  if [ -n "$logger" ]; then
    # The log ends with the container, even if a process it left behind holds the pipe open.
    # (Stopping the watchdog stops its sleep too, so nothing outlives the container.)
    ( trap 'kill "$s" 2>/dev/null; exit 0' TERM
      sleep 5 & s=$!; wait "$s"; kill -KILL "$logger" 2>/dev/null ) &
    local watchdog=$!
    ils_wait "$logger"
    kill "$watchdog" 2>/dev/null
    rm -f "$pipe"
  fi
  ils_put "containers/$name.finished" "$(ils_now)"
  ils_put "containers/$name.exit" "$rc"
  return "$rc"
}

# A requeued job runs again from the start: what the last run wrote becomes the "previous"
# logs, and the containers start over.
ILS_RUN=$(( $(cat job.runs 2>/dev/null || echo 0) + 1 ))
ils_put job.runs "$ILS_RUN"
if [ "$ILS_RUN" -gt 1 ]; then
  for f in containers/*.log; do
    case $f in *.previous.log|'containers/*.log') continue ;; esac
    mv -f "$f" "${f%.log}.previous.log"
    if [ -e "$f.idx" ]; then mv -f "$f.idx" "${f%.log}.previous.log.idx"; fi
  done
  rm -f containers/*.started containers/*.finished containers/*.exit
fi
ILS_PYTHON=$(command -v python3 || true)

trap ':' TERM INT
echo "interlink-slurm: pod default/train-job starts as job ${SLURM_JOB_ID:-?} on $(hostname)"

# Containers, all together; the job fails with the first non-zero exit code.
pids=()
ils_container train apptainer exec --containall --nv docker://debian-python python3 train.py --epochs=10 --data=/data/in &
pids+=($!)
ils_container monitor apptainer exec --containall docker://debian-python sh -c 'while sleep 30; do date; done' &
pids+=($!)
status=0
for pid in "${pids[@]}"; do
  ils_wait "$pid"; rc=$?
  [ "$status" -ne 0 ] || status=$rc
done
exit "$status"
