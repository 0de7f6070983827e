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
echo "interlink-slurm: pod default/web-0 starts as job ${SLURM_JOB_ID:-?} on $(hostname)"

# Restart back-off (first, longest), grace of a stopped container, hook timeout; s.
ILS_BACKOFF=10 ILS_BACKOFF_MAX=300 ILS_GRACE=20 ILS_HOOK_TIMEOUT=30

# ils_check TIMEOUT CHECK...: one probe or hook action (see translate/lifecycle.py), run from
# inside ils_container (it sees the container's envs).
ils_check() {
  local t=$1 rt; shift
  case $1 in
    exec)
      rt=$(command -v -- "$2") || rt=$2
      shift 2
      timeout "$t" env -- "${envs[@]}" "$rt" "$@" ;;
    http)
      shift
      if [ -n "$ILS_PYTHON" ]; then
        timeout "$t" "$ILS_PYTHON" -c 'import ssl, sys, urllib.request as u
r = u.Request(sys.argv[2], headers=dict(h.split(": ", 1) for h in sys.argv[3:]))
u.urlopen(r, timeout=float(sys.argv[1]), context=ssl._create_unverified_context())' "$t" "$@"
      else
        local -a hs=()
        local h
        for h in "${@:2}"; do hs+=(-H "$h"); done
        timeout "$t" curl -fsSk -o /dev/null -m "$t" "${hs[@]}" -- "$1"
      fi ;;
    tcp) timeout "$t" bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$2" "$3" ;;
    sleep) sleep "$2" ;;
    *) return 2 ;;
  esac
}

# Stop a container (every process of its session): SIGTERM, then SIGKILL after the pod's grace
# period.
ils_stop() {
  kill -TERM -- "-$1" 2>/dev/null
  ( sleep "$ILS_GRACE"; kill -KILL -- "-$1" 2>/dev/null ) &
}

# ils_probe NAME PID KIND DELAY PERIOD TIMEOUT SUCCESS FAILURE CHECK...: while the container
# runs, readiness writes containers/NAME.ready; a failed startup or liveness probe stops the
# container (restarted or not by its policy). Readiness and liveness wait for a startup probe
# to succeed (containers/NAME.startup-ok), as in Kubernetes.
ils_probe() {
  local name=$1 pid=$2 kind=$3 delay=$4 period=$5 t=$6 success=$7 failure=$8 ok=0 bad=0
  shift 8
  trap - TERM INT
  if [ "$kind" != startup ] && [ "${#startup[@]}" -gt 0 ]; then
    while [ ! -e "containers/$name.startup-ok" ]; do
      kill -0 "$pid" 2>/dev/null || return
      sleep 1
    done
  fi
  sleep "$delay"
  while kill -0 "$pid" 2>/dev/null; do
    if ils_check "$t" "$@" > /dev/null 2>&1; then ok=$(( ok + 1 )); bad=0
    else bad=$(( bad + 1 )); ok=0; fi
    if [ "$kind" = readiness ]; then
      if [ "$ok" -ge "$success" ]; then ils_put "containers/$name.ready" true
      elif [ "$bad" -ge "$failure" ]; then ils_put "containers/$name.ready" false; fi
    elif [ "$kind" = startup ] && [ "$ok" -ge "$success" ]; then
      ils_put "containers/$name.startup-ok" "$(ils_now)"
      return
    elif [ "$bad" -ge "$failure" ]; then
      echo "interlink-slurm: container $name failed its $kind probe $bad times: stopping it"
      ils_stop "$pid"
      return
    fi
    sleep "$period"
  done
}

# ils_hook NAME EVENT PID CHECK...: a postStart or preStop hook; a failed postStart stops the
# container, as in Kubernetes.
ils_hook() {
  local name=$1 event=$2 pid=$3 t=$ILS_HOOK_TIMEOUT
  shift 3
  [ "$event" != preStop ] || t=$ILS_GRACE
  if ! ils_check "$t" "$@" >> "containers/$name.hooks.log" 2>&1; then
    echo "interlink-slurm: the $event hook of container $name failed"
    [ "$event" != postStart ] || ils_stop "$pid"
  fi
}

# The pod's address as interLink gave it (interlink.eu/pod-ip).
export POD_IP=10.244.3.17

# Each container's own /tmp (shared with its exec probes and hooks), on each node, in a
# directory of the job's own: never the node's /tmp itself.
ILS_TMP="${TMPDIR:-/tmp}/interlink-slurm-${SLURM_JOB_ID:-$$}"
rm -rf -- "$ILS_TMP"
mkdir -m 700 -- "$ILS_TMP" || exit 1
mkdir -m 1777 -- "$ILS_TMP"/web || exit 1

# Enroot unpacks the pod's images on each node into a directory of the job's own
# (enroot_create_dir); what a run killed before its cleanup left there is removed.
export ENROOT_DATA_PATH=/local/enroot/interlink-slurm-55555555-6666-4777-8888-999999999999
chmod -Rf u+w -- /local/enroot/interlink-slurm-55555555-6666-4777-8888-999999999999 2>/dev/null
rm -rf -- /local/enroot/interlink-slurm-55555555-6666-4777-8888-999999999999
mkdir -p -m 700 -- /local/enroot/interlink-slurm-55555555-6666-4777-8888-999999999999

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
  chmod -Rf u+w -- /local/enroot/interlink-slurm-55555555-6666-4777-8888-999999999999 2>/dev/null
  rm -rf -- /local/enroot/interlink-slurm-55555555-6666-4777-8888-999999999999
  [ -z "${ILS_TUNNEL:-}" ] || kill -TERM -- "-$ILS_TUNNEL" 2>/dev/null
  ils_reap
}
trap ils_cleanup EXIT

# Each image unpacked once on each node; the containers start it by name.
enroot create --name ils-0 /images/debian-python.sqsh || { echo 'interlink-slurm: cannot unpack /images/debian-python.sqsh'; exit 1; }

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
    -V 17 liveness 0 10 1 1 5 exec enroot start --mount "$ILS_TMP"'/web /tmp none x-create=dir,rbind' --env POD_IP ils-0 test -e /tmp/alive \
    -S 10 exec enroot start --mount "$ILS_TMP"'/web /tmp none x-create=dir,rbind' --env POD_IP ils-0 touch /tmp/alive \
    -T 2 http http://127.0.0.1:8888/quit \
    enroot start --mount "$ILS_TMP"'/web /tmp none x-create=dir,rbind' --env POD_IP ils-0 python3 -m http.server 8888 &
pids+=($!)
status=0
for pid in "${pids[@]}"; do
  ils_wait "$pid"; rc=$?
  [ "$status" -ne 0 ] || status=$rc
done
exit "$status"
