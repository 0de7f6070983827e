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

# Run by a launcher's task: the variables of the env file ($1), then the rest of the words.
ILS_AFTER_LAUNCH='e=(); while IFS= read -r -d "" kv; do e+=("$kv"); done < "$1" || exit 127
shift; exec env -- "${e[@]}" "$@"'

# A process and all its descendants, frozen first so that none forks meanwhile: a watcher and
# what it runs (sleep, a probe's check).
ils_kill_tree() {
  local sig=$1 p
  shift
  for p in "$@"; do
    kill -STOP "$p" 2>/dev/null || continue
    # shellcheck disable=SC2046
    ils_kill_tree "$sig" $(pgrep -P "$p" 2>/dev/null)
    kill "-$sig" "$p" 2>/dev/null
    kill -CONT "$p" 2>/dev/null
  done
}

# ils_container NAME [-X COUNT WORDS...]... ARGV...: run one container with the variables of
# its env file, its output in its log (through logpipe.py, which notes when each chunk was
# written), its start time, end time, exit code and restarts in files. The container runs in a
# session (and process group) of its own, whose id is its pid: a stop signals every process
# of it, and what it leaves behind when it ends is killed, as its PID namespace would be.
# Options, each followed by its number of words:
#   -L launcher (srun, mpiexec...) that runs the container on every task of the job
#   -P restart policy (Never, OnFailure, Always): restarted with a doubling back-off, the last
#      run's log kept as <name>.previous.log
#   -U / -R / -V startup / readiness / liveness probe (containers/<name>.ready; a failed
#      startup or liveness probe stops it; readiness and liveness wait for startup)
#   -S / -T postStart / preStop hook
ils_container() {
  local name=$1; shift
  local -a envs=() launch=() startup=() readiness=() liveness=() poststart=() prestop=()
  local kv rc=0 logger="" pipe="containers/$name.pipe" runtime found cpid="" policy=Never
  local restarts backoff=${ILS_BACKOFF:-10}
  local -a watchers
  trap 'ILS_STOPPING=1; ils_prestop' TERM INT
  trap ils_graceful URG
  while IFS= read -r -d '' kv; do envs+=("$kv"); done < "containers/$name.env"
  while :; do
    case $1 in
      -L) launch=("${@:3:$2}") ;;
      -P) policy=$3 ;;
      -U) startup=("${@:3:$2}") ;;
      -R) readiness=("${@:3:$2}") ;;
      -V) liveness=("${@:3:$2}") ;;
      -S) poststart=("${@:3:$2}") ;;
      -T) prestop=("${@:3:$2}") ;;
      *) break ;;
    esac
    shift $(( $2 + 2 ))
  done
  local -a direct=("${envs[@]}")
  if [ "${#launch[@]}" -gt 0 ]; then
    found=$(command -v -- "${launch[0]}") && launch[0]=$found
    # The launcher never sees the pod's variables (it acts on SLURM_*, OMPI_*...): they are
    # read from the env file after it, on each task's node, for the runtime only.
    launch+=("$BASH" -c "$ILS_AFTER_LAUNCH" ils-env "$POD_DIR/containers/$name.env")
    direct=()
  fi
  # Found on the job's PATH, not on a PATH the pod's environment may set for the container.
  runtime=$(command -v -- "$1") || runtime=$1
  shift
  restarts=$(cat "containers/$name.restarts" 2>/dev/null || echo 0)
  while :; do
    logger=""
    watchers=()
    [ "${#readiness[@]}" -eq 0 ] || ils_put "containers/$name.ready" false
    ils_put "containers/$name.started" "$(ils_now)"
    rm -f "containers/$name.backoff"
    if [ -n "$ILS_PYTHON" ]; then
      rm -f "$pipe" && mkfifo -m 600 "$pipe"
      "$ILS_PYTHON" logpipe.py "containers/$name.log" < "$pipe" &
      logger=$!
      setsid env -- "${direct[@]}" "${launch[@]}" "$runtime" "$@" \
        > "$pipe" 2>&1 < /dev/null &
    else
      setsid env -- "${direct[@]}" "${launch[@]}" "$runtime" "$@" \
        >> "containers/$name.log" 2>&1 < /dev/null &
    fi
    cpid=$!
    if [ "${#poststart[@]}" -gt 0 ]; then
      ils_hook "$name" postStart "$cpid" "${poststart[@]}" & watchers+=($!)
    fi
    rm -f "containers/$name.startup-ok"
    if [ "${#startup[@]}" -gt 0 ]; then
      ils_probe "$name" "$cpid" "${startup[@]}" & watchers+=($!)
    fi
    if [ "${#readiness[@]}" -gt 0 ]; then
      ils_probe "$name" "$cpid" "${readiness[@]}" & watchers+=($!)
    fi
    if [ "${#liveness[@]}" -gt 0 ]; then
      ils_probe "$name" "$cpid" "${liveness[@]}" & watchers+=($!)
    fi
    ils_wait "$cpid"; rc=$?
    kill -KILL -- "-$cpid" 2>/dev/null
    pkill -KILL -s "$cpid" 2>/dev/null
    cpid=""
    if [ "${#watchers[@]}" -gt 0 ]; then ils_kill_tree TERM "${watchers[@]}"; fi
    [ "${#readiness[@]}" -eq 0 ] || ils_put "containers/$name.ready" false
    if [ -n "$logger" ]; then
      # The log ends with the container, even if a process it left behind (a daemon of a
      # session of its own) holds the pipe open; the TERM that scancel sends to every process
      # does not call the watchdog off (the logger ignores it).
      ( trap '' TERM INT; sleep 5; kill -KILL "$logger" 2>/dev/null ) &
      local watchdog=$!
      ils_wait "$logger"
      ils_kill_tree KILL "$watchdog"
      rm -f "$pipe"
    fi
    ils_put "containers/$name.finished" "$(ils_now)"
    case $policy in
      Always) ;;
      OnFailure) [ "$rc" -ne 0 ] || break ;;
      *) break ;;
    esac
    [ -z "${ILS_STOPPING:-}" ] || break
    # Restart after a back-off, as the kubelet does (CrashLoopBackOff meanwhile).
    restarts=$(( restarts + 1 ))
    ils_put "containers/$name.restarts" "$restarts"
    mv -f "containers/$name.log" "containers/$name.previous.log" 2>/dev/null
    rm -f "containers/$name.previous.log.idx"
    if [ -e "containers/$name.log.idx" ]; then
      mv -f "containers/$name.log.idx" "containers/$name.previous.log.idx"
    fi
    ils_put "containers/$name.backoff" "$rc $backoff"
    echo "interlink-slurm: container $name exited with code $rc;" \
      "restart $restarts in ${backoff} s"
    sleep "$backoff" & local nap=$!
    wait "$nap"; kill "$nap" 2>/dev/null
    backoff=$(( backoff * 2 > ${ILS_BACKOFF_MAX:-300} ? ${ILS_BACKOFF_MAX:-300} : backoff * 2 ))
    [ -z "${ILS_STOPPING:-}" ] || break
  done
  rm -f "containers/$name.backoff"
  trap 'ILS_STOPPING=1' TERM INT URG
  ils_put "containers/$name.exit" "$rc"
  return "$rc"
}

# The pod is deleted: the plugin sends SIGURG to every process of the job (ignored by all but
# this script). As the kubelet does, the container's preStop hook runs first, then the container
# gets SIGTERM; the plugin cancels the job when the grace period is over. (A time limit or an
# administrator's scancel sends SIGTERM to every process at once: the hook runs alongside.)
ils_graceful() {
  [ -z "${ILS_STOPPING:-}" ] || return 0
  ILS_STOPPING=1
  [ -n "$cpid" ] || return 0
  ils_prestop
  kill -TERM -- "-$cpid" 2>/dev/null
}

# The preStop hook of the container being run, once, when the job is told to stop.
ils_prestop() {
  if [ "${#prestop[@]}" -gt 0 ]; then
    local -a hook=("${prestop[@]}")
    prestop=()
    ils_hook "$name" preStop "$cpid" "${hook[@]}"
  fi
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
  rm -f containers/*.started containers/*.finished containers/*.exit containers/*.ready \
    containers/*.startup-ok containers/*.backoff
fi
ILS_PYTHON=$(command -v python3 || true)

ILS_STOPPING=""
trap 'ILS_STOPPING=1' TERM INT URG
echo "interlink-slurm: pod team-a/hello starts as job ${SLURM_JOB_ID:-?} on $(hostname)"

# Each container's own /tmp (shared with its exec probes and hooks), on each node, in a
# directory of the job's own: never the node's /tmp itself.
ILS_TMP="${TMPDIR:-/tmp}/interlink-slurm-${SLURM_JOB_ID:-$$}"
rm -rf -- "$ILS_TMP"
mkdir -m 700 -- "$ILS_TMP" || exit 1
mkdir -m 1777 -- "$ILS_TMP"/main || exit 1

# ils_reap: kill what still runs of this job when it ends: every process of this user with
# the job's SLURM_JOB_ID in its environment (one grep over /proc), but this shell.
ils_reap() {
  local p
  [ -n "${SLURM_JOB_ID:-}" ] || return 0
  for p in $(grep -lsxzF -- "SLURM_JOB_ID=$SLURM_JOB_ID" /proc/[0-9]*/environ); do
    p=${p#/proc/}
    p=${p%/environ}
    [ "$p" = "$$" ] || [ "$p" = "$BASHPID" ] || kill -KILL "$p" 2>/dev/null
  done
}

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
ils_container main enroot start --mount "$ILS_TMP"'/main /tmp none x-create=dir,rbind' /images/debian-python.sqsh python3 -c 'print('"'"'hello, world'"'"')' &
pids+=($!)
status=0
for pid in "${pids[@]}"; do
  ils_wait "$pid"; rc=$?
  [ "$status" -ne 0 ] || status=$rc
done
exit "$status"
