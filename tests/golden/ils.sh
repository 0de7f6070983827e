# shellcheck shell=bash
# The job script's functions. Copied into every pod directory beside job.sh, which sources it
# (translate/script.py writes job.sh); so does mesh-pod.sh, and the pull script run on the
# submit host holds a copy. Definitions only: sourcing it starts nothing.
#
# The per-container protocol, also read back by jobdir.py:
#   containers/<name>.started   RFC 3339 time the container was started
#   containers/<name>.finished  RFC 3339 time it ended
#   containers/<name>.exit      its exit code
#   containers/<name>.log       its stdout and stderr
#   containers/<name>.message   its termination message, base64 on one line (ils_message)
#   containers/<name>.last      "EXIT STARTED FINISHED" of the run before a restart or requeue
#   containers/<name>.last-message  that run's termination message
#
# Read from job.sh: POD_DIR, and when the pod has restarts, probes, hooks or sizeLimits,
# ILS_BACKOFF, ILS_BACKOFF_MAX, ILS_GRACE and ILS_HOOK_TIMEOUT.

# The job's way to its containers' start forks as little as it can: each process costs
# milliseconds on a node busy with pods that start at once. ils_now, ils_read, ils_count and
# ils_which set a variable of the caller's, named by their first word, with builtins (printf -v:
# no subshell), and keep no locals, which could hide the caller's variable of that name.

# Time stamps in RFC 3339 with nanoseconds, as Kubernetes prints them: printed, or with VAR, set
# in VAR. Bash 5 tells the time itself: EPOCHREALTIME, read once (its decimal point follows
# LC_NUMERIC: digits only), its microseconds padded to nanoseconds, formatted in UTC by printf
# (TZ only for that builtin: the job's TZ stays the containers'). Bash 4 asks date.
ils_now() {
  if [ $# -eq 0 ]; then
    local now
    ils_now now
    printf '%s\n' "$now"
    return
  fi
  printf -v "$1" '%s' "${EPOCHREALTIME:-}"
  if [ "${BASH_VERSINFO[0]}" -ge 5 ] &&
    [[ ${!1} == [0-9]*[!0-9][0-9][0-9][0-9][0-9][0-9][0-9] ]]; then
    TZ=UTC0 printf -v "$1" '%(%Y-%m-%dT%H:%M:%S)T.%s000Z' "${!1%%[!0-9]*}" "${!1##*[!0-9]}"
  else
    printf -v "$1" '%s' "$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)"
  fi
}

# ils_read VAR FILE DEFAULT: VAR set as by VAR=$(cat FILE 2>/dev/null || echo DEFAULT): the
# file's text without its trailing newlines, DEFAULT when it cannot be opened.
ils_read() {
  printf -v "$1" '%s' "$3"
  { IFS= read -r -d '' "$1"; } 2> /dev/null < "$2"
  while [[ ${!1} == *$'\n' ]]; do printf -v "$1" '%s' "${!1%$'\n'}"; done
}

# ils_count VAR FILE: VAR set to the count the job wrote in FILE (job.runs, a container's
# restarts), 0 when there is no file or it is empty. The text is matched, never evaluated:
# bash's arithmetic runs the command in a text such as x[$(cmd)], and whatever can write in the
# pod's directory must not run anything here by it. Any other text stops the job, status 1.
ils_count() {
  ils_read "$1" "$2" 0
  if [[ ${!1} =~ ^[[:space:]]*([0-9]{1,18})[[:space:]]*$ ]]; then
    printf -v "$1" '%s' "$(( 10#${BASH_REMATCH[1]} ))"
  elif [[ -z ${!1//[[:space:]]/} ]]; then
    printf -v "$1" '%s' 0
  else
    echo "interlink-slurm: $2 holds no count: the job stops" >&2
    exit 1
  fi
}

# ils_which VAR NAME: VAR set as by VAR=$(command -v -- NAME) || VAR=NAME, with its status:
# the path of the command NAME on the job's PATH, else NAME as given. A name with a slash is
# tested, and hash searches PATH afresh (into BASH_CMDS; nothing for a function or a builtin):
# no process but for a name it does not find, which command -v is asked about.
ils_which() {
  printf -v "$1" '%s' "$2"
  case $2 in
    '' | */*) [ -x "$2" ] && [ ! -d "$2" ]; return ;;
  esac
  if [[ -o hashall ]]; then
    hash -d -- "$2" 2> /dev/null
    if hash -- "$2" 2> /dev/null; then
      printf -v "$1" '%s' "${BASH_CMDS[$2]-$2}"
      return 0
    fi
  fi
  printf -v "$1" '%s' "$(command -v -- "$2")"
  [ -n "${!1}" ] || { printf -v "$1" '%s' "$2"; return 1; }
}

# ils_rm FLAGS PATH...: rm FLAGS -- PATH..., run only when one of them is there (they seldom
# are).
ils_rm() {
  local flags=$1 f
  shift
  for f in "$@"; do
    if [ -e "$f" ] || [ -L "$f" ]; then
      rm "$flags" -- "$@"
      return
    fi
  done
}

# Write a small file atomically, so a reader never sees half of it. The temporary file is made
# in the current (the pod's) directory: renamed into containers/, it changes the mtime of both,
# so the plugin's state reader finds every changed pod by its directory alone. Then the data
# root's .state-changed is written (POD_DIR is <root>/<namespace>/<pod>): while it is older than
# the reader's last look, the reader looks in no pod directory at all (jobdir.STATE_MARK).
ils_put() {
  local tmp=".${1//\//.}.tmp"
  printf '%s\n' "$2" > "$tmp" && mv -f "$tmp" "$1" || return
  if [ -n "${POD_DIR:-}" ]; then
    { printf '%s\n' "${POD_DIR##*/}" > "${POD_DIR%/*/*}/.state-changed"; } 2> /dev/null
  fi
  return 0
}

# Wait for one child, riding out the TERM that scancel sends to every process of the job:
# wait returns early (>128) when a trapped signal arrives while the child still runs. The child
# may also have ended while the trap ran: bash has kept its status, which one more wait gives
# (127 when the first answer already was it: a child killed by a signal).
ils_wait() {
  local pid=$1 rc again
  wait "$pid"; rc=$?
  while [ "$rc" -gt 128 ] && kill -0 "$pid" 2>/dev/null; do
    wait "$pid"; rc=$?
  done
  if [ "$rc" -gt 128 ]; then
    wait "$pid" 2>/dev/null; again=$?
    [ "$again" -eq 127 ] || rc=$again
  fi
  return "$rc"
}

# Run by a launcher's task: the variables of the env file ($1), then the rest of the words.
# shellcheck disable=SC2016  # expanded by that task's bash
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
# its env file, its output in its log (through logpipe.py's code, which notes when each chunk
# was written), its start time, end time, exit code and restarts in files. The container runs
# in a session (and process group) of its own, whose id is its pid: a stop signals every
# process of it, and what it leaves behind when it ends is killed, as its PID namespace would
# be.
# Options, each followed by its number of words:
#   -L launcher (srun, mpiexec...) that runs the container on every task of the job
#   -P restart policy (Never, OnFailure, Always): restarted with a doubling back-off, the last
#      run's log kept as <name>.previous.log
#   -U / -R / -V startup / readiness / liveness probe (containers/<name>.ready; a failed
#      startup or liveness probe stops it; readiness and liveness wait for startup)
#   -S / -T postStart / preStop hook
#   -M terminationMessagePolicy (File, FallbackToLogsOnError: see ils_message)
ils_container() {
  local name=$1; shift
  local -a envs=() launch=() startup=() readiness=() liveness=() poststart=() prestop=()
  local kv rc=0 logger="" pipe="containers/$name.pipe" runtime now cpid="" policy=Never
  local messages=File started
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
      -M) messages=$3 ;;
      *) break ;;
    esac
    shift $(( $2 + 2 ))
  done
  local -a direct=("${envs[@]}")
  local step=""
  if [ "${#launch[@]}" -gt 0 ]; then
    ils_which 'launch[0]' "${launch[0]}"
    if [ "${launch[0]##*/}" = srun ]; then
      # Its step's name, by which a delete finds it (ils_graceful); the pod's flags come after.
      step="ils-${ILS_MEMBER:-pod}-$name"
      launch=("${launch[0]}" "--job-name=$step" "${launch[@]:1}")
    fi
    # The launcher never sees the pod's variables (it acts on SLURM_*, OMPI_*...): they are
    # read from the env file after it, on each task's node, for the runtime only.
    launch+=("$BASH" -c "$ILS_AFTER_LAUNCH" ils-env "$POD_DIR/containers/$name.env")
    direct=()
  fi
  # Found on the job's PATH, not on a PATH the pod's environment may set for the container.
  ils_which runtime "$1"
  shift
  ils_count restarts "containers/$name.restarts"
  while :; do
    logger=""
    watchers=()
    [ "${#readiness[@]}" -eq 0 ] || ils_put "containers/$name.ready" false
    ils_now started
    ils_put "containers/$name.started" "$started"
    ils_rm -f "containers/$name.backoff"
    if [ -n "$ILS_PYTHON" ]; then
      ils_rm -f "$pipe" && mkfifo -m 600 "$pipe"
      # The log copier's code comes on fd 3 (interlink-slurm's logpipe.py, put in its place
      # below when the library is written): one file fewer in every pod directory. -S: it
      # needs the standard library only, and starts faster without site.
      "$ILS_PYTHON" -S /dev/fd/3 "containers/$name.log" < "$pipe" 3<<'ILS_LOGPIPE_PY' &
"""Copies a container's output to its log, noting when each chunk arrived.

The batch job runs this code with the host's ``python3 -S``, between the container and
``containers/<name>.log``: the job's library (jobscript/ils.sh) carries it and hands it to
python on a file descriptor, so no pod directory holds a copy. The log stays byte for byte what
the container wrote; beside it, ``<name>.log.idx`` gets one fixed-size record per chunk read
from the pipe: (offset of the chunk in the log, time it arrived in ns since the epoch),
little-endian u64 each. A line's time is the time of the chunk holding its first byte: when it
was written, to within the pipe's latency. Fixed-size records in time order let a reader
binary-search them.

It ignores SIGTERM and SIGINT: when Slurm signals every process of the job, the container's
last words after SIGTERM must still reach the log. It ends at end of input (or SIGKILL).

Standard library only: it runs on compute nodes, outside any virtualenv.
"""

from __future__ import annotations

import os
import signal
import struct
import sys
import time

RECORD = struct.Struct("<QQ")
CHUNK = 65536


def copy(source: int, log_path: str) -> None:
    """Append ``source`` to ``log_path`` until end of input, a record in ``log_path.idx``
    before each chunk; a log that exists (a restart) is continued."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    log = os.open(log_path, flags, 0o600)
    idx = os.open(log_path + ".idx", flags, 0o600)
    offset = os.fstat(log).st_size
    while True:
        chunk = os.read(source, CHUNK)
        if not chunk:
            break
        # The record goes first: a reader that sees data always finds its time.
        os.write(idx, RECORD.pack(offset, time.time_ns()))
        view = memoryview(chunk)
        while view:
            view = view[os.write(log, view) :]
        offset += len(chunk)
    os.close(log)
    os.close(idx)


def main() -> None:
    """``python3 -S logpipe.py LOG``: stdin to LOG, deaf to SIGTERM and SIGINT."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    copy(sys.stdin.fileno(), sys.argv[1])


if __name__ == "__main__":
    main()
ILS_LOGPIPE_PY
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
    ils_rm -f "containers/$name.startup-ok"
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
    ils_message "$name" "$rc" "$messages"
    ils_now now
    ils_put "containers/$name.finished" "$now"
    case $policy in
      Always) ;;
      OnFailure) [ "$rc" -ne 0 ] || break ;;
      *) break ;;
    esac
    [ -z "${ILS_STOPPING:-}" ] || break
    # Restart after a back-off, as the kubelet does (CrashLoopBackOff meanwhile).
    ils_last_run "containers/$name" "$rc" "$started" "$now"
    restarts=$(( restarts + 1 ))
    ils_put "containers/$name.restarts" "$restarts"
    mv -f "containers/$name.log" "containers/$name.previous.log" 2>/dev/null
    ils_rm -f "containers/$name.previous.log.idx"
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
  ils_rm -f "containers/$name.backoff"
  trap 'ILS_STOPPING=1' TERM INT URG
  ils_put "containers/$name.exit" "$rc"
  return "$rc"
}

# ils_last_run PATH RC STARTED FINISHED: the run of the container PATH (containers/<name>) that
# ended becomes its last state (lastState) until the next one ends. Its message moves first, so
# that a state read that finds the new .last finds that run's message beside it.
ils_last_run() {
  if [ -e "$1.message" ]; then
    mv -f "$1.message" "$1.last-message"
  else
    ils_rm -f "$1.last-message"
  fi
  ils_put "$1.last" "$2 $3 $4"
}

# ils_message NAME RC POLICY: containers/NAME.message, the termination message of the run that
# just ended (base64 on one line, which the plugin's state reader carries whatever the bytes),
# or no such file when it has none. With FallbackToLogsOnError and a non-zero exit: the last 80
# lines of its log, of which at most the last 2048 bytes, as the kubelet does.
ils_message() {
  local text=""
  if [ "$3" = FallbackToLogsOnError ] && [ "$2" -ne 0 ] && [ -s "containers/$1.log" ]; then
    text=$(tail -n 80 -- "containers/$1.log" | tail -c 2048 | base64 -w 0)
  fi
  if [ -n "$text" ]; then
    ils_put "containers/$1.message" "$text"
  else
    ils_rm -f "containers/$1.message"
  fi
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
  ils_step_signal TERM || kill -TERM -- "-$cpid" 2>/dev/null
}

# ils_step_signal SIG: SIG to the tasks of the container's srun step (named $step), through
# Slurm: srun answers SIGTERM by killing its step at once, where a container gets SIGTERM and
# its grace period. False when the container has no such step, or it is not listed yet (the
# caller then signals the launcher as any other process).
ils_step_signal() {
  [ -n "${step:-}" ] || return 1
  local -a ids
  mapfile -t ids < <(squeue -h -s -j "$SLURM_JOB_ID" -o '%i %j' 2>/dev/null |
    awk -v n="$step" '$2 == n { print $1 }')
  [ "${#ids[@]}" -gt 0 ] && scancel --signal="$1" -- "${ids[@]}" 2>/dev/null
}

# The preStop hook of the container being run, once, when the job is told to stop.
ils_prestop() {
  if [ "${#prestop[@]}" -gt 0 ]; then
    local -a hook=("${prestop[@]}")
    prestop=()
    ils_hook "$name" preStop "$cpid" "${hook[@]}"
  fi
}

# ils_check TIMEOUT CHECK...: one probe or hook action (see translate/lifecycle.py), run from
# inside ils_container (it sees the container's envs).
# shellcheck disable=SC2016  # the python and the tcp check's words are expanded by their own
ils_check() {
  local t=$1 rt; shift
  case $1 in
    exec)
      ils_which rt "$2"
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
# period. The caller, one of the container's watchers, waits out the grace period here, and the
# container's end kills it: a killer left to run on its own would, once the container had ended,
# signal a process group whose id the system may have given to another job's processes by then.
ils_stop() {
  ils_step_signal TERM || kill -TERM -- "-$1" 2>/dev/null
  sleep "$ILS_GRACE"
  ils_step_signal KILL
  kill -KILL -- "-$1" 2>/dev/null
}

# ils_probe NAME PID KIND DELAY PERIOD TIMEOUT SUCCESS FAILURE CHECK...: while the container
# runs, readiness writes containers/NAME.ready; a failed startup or liveness probe stops the
# container (restarted or not by its policy). Readiness and liveness wait for a startup probe
# to succeed (containers/NAME.startup-ok), as in Kubernetes.
ils_probe() {
  local name=$1 pid=$2 kind=$3 delay=$4 period=$5 t=$6 success=$7 failure=$8 ok=0 bad=0 now
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
      ils_now now
      ils_put "containers/$name.startup-ok" "$now"
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

# ils_pull TARGET AUTH SOURCE ARGV...: convert an image into the shared cache once: ARGV writes
# TARGET.part from SOURCE, with the NAME=VALUE entries of the file AUTH ('' for none) in its
# environment. Pods pulling the same image wait for one another (flock), a half-written image
# is never seen, and a failed pull leaves nothing behind.
ils_pull() {
  local target=$1 auth=$2 source=$3 kv
  local -a creds=()
  shift 3
  [ -s "$target" ] && return 0
  if [ -n "$auth" ]; then
    while IFS= read -r -d '' kv; do creds+=("$kv"); done < "$auth" || return 1
  fi
  mkdir -p -- "${target%/*}" || return 1
  (
    if ! flock -w 3600 9; then
      echo "interlink-slurm: waited an hour for another pull of $source ($target.lock)"
      exit 1
    fi
    [ -s "$target" ] && exit 0
    echo "interlink-slurm: pulling $source into $target"
    rm -f -- "$target.part"
    if env -- "${creds[@]}" "$@" < /dev/null; then
      mv -f -- "$target.part" "$target"
    else
      rc=$?
      rm -f -- "$target.part"
      exit "$rc"
    fi
  ) 9> "$target.lock"
}

# ils_reap: kill what still runs of this job when it ends: every process of this user with
# the job's SLURM_JOB_ID in its environment (one grep over /proc), but this shell. A pod of a
# group (ILS_MEMBER, its uid) shares the job with its siblings, maybe the node too: only the
# processes of its own step, which carry its ILS_MEMBER.
ils_reap() {
  local p key
  [ -n "${SLURM_JOB_ID:-}" ] || return 0
  key="SLURM_JOB_ID=$SLURM_JOB_ID"
  [ -z "${ILS_MEMBER:-}" ] || key="ILS_MEMBER=$ILS_MEMBER"
  # shellcheck disable=SC2013  # file names of /proc, without spaces
  for p in $(grep -lsxzF -- "$key" /proc/[0-9]*/environ); do
    p=${p#/proc/}
    p=${p%/environ}
    [ "$p" = "$$" ] || [ "$p" = "$BASHPID" ] || kill -KILL "$p" 2>/dev/null
  done
}

# ils_ch_image NAME IMAGE: what a Charliecloud image made by ch-image says of its containers,
# which the kubelet would take from the image's config and ch-run does not by itself: its ENV
# (ch/environment, NAME=VALUE lines) into containers/NAME.image-env, for ch-run's --set-env,
# less every variable the pod sets itself (containers/NAME.env), which wins as in Kubernetes;
# and its WORKDIR (ch/metadata.json's top-level "cwd") into ILS_CWD, "/" when it gives none.
# ch-run reads that file and sets its variables inside the container, after it has started:
# nothing of the image reaches ch-run's own process on the host. A SquashFS image is read with
# unsquashfs -cat (squashfs-tools), when the node has it; an image that ch-image did not make
# says nothing.
# shellcheck disable=SC2034  # ILS_CWD: read by the job script's ch-run line
ils_ch_image() {
  local name=$1 image=$2 kv line set
  local -a pod=() environment=() metadata=()
  ILS_CWD=/
  : > "containers/$name.image-env" || return
  if [ -d "$image" ]; then
    [ ! -f "$image/ch/environment" ] || mapfile -t environment < "$image/ch/environment"
    [ ! -f "$image/ch/metadata.json" ] || mapfile -t metadata < "$image/ch/metadata.json"
  elif [ -f "$image" ] && command -v unsquashfs > /dev/null 2>&1; then
    mapfile -t environment < <(unsquashfs -cat "$image" ch/environment 2> /dev/null)
    mapfile -t metadata < <(unsquashfs -cat "$image" ch/metadata.json 2> /dev/null)
  fi
  while IFS= read -r -d '' kv; do pod+=("${kv%%=*}"); done < "containers/$name.env"
  for line in "${environment[@]}"; do
    [[ $line =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || continue
    for set in "${pod[@]}"; do
      [ "$set" != "${line%%=*}" ] || continue 2
    done
    printf '%s\n' "$line"
  done > "containers/$name.image-env" || return
  # ch-image writes it with json.dumps(indent=2): a top-level key is indented by two spaces.
  for line in "${metadata[@]}"; do
    if [[ $line =~ ^\ \ \"cwd\":\ \"(/[^\"\\]*)\",?$ ]]; then
      ILS_CWD=${BASH_REMATCH[1]}
      break
    fi
  done
  return 0
}

# ils_tmp_sweep DIR: remove the containers' /tmp directories (DIR/interlink-slurm-<job id>,
# or -<job id>-<pod uid> for a pod of a group) that this user's jobs left on this node when they
# were killed before their own cleanup: those of jobs with no process left here (never this
# job's: its siblings' are theirs). A site whose TMPDIR is private to each job never has any.
ils_tmp_sweep() {
  local d id live
  local -a found=()
  for d in "$1"/interlink-slurm-*; do
    id=${d##*/interlink-slurm-}
    id=${id%%-*}
    case $id in '' | *[!0-9]*) continue ;; esac
    if [ ! -d "$d" ] || [ ! -O "$d" ] || [ "$id" = "${SLURM_JOB_ID:-}" ]; then continue; fi
    found+=("$d")
  done
  [ "${#found[@]}" -gt 0 ] || return 0
  # The jobs with a process on this node, in one pass over them all (one per directory made
  # each of 20 jobs starting at once on a node read every process's environment 10 times).
  live=" $(grep -hsaxzoE -- 'SLURM_JOB_ID=[0-9]+' /proc/[0-9]*/environ | tr '\0' ' ') "
  for d in "${found[@]}"; do
    id=${d##*/interlink-slurm-}
    id=${id%%-*}
    case $live in *" SLURM_JOB_ID=$id "*) ;; *) rm -rf -- "$d" ;; esac
  done
}

# ils_size_watch [VOLUME PATH KIB LIMIT]...: watch the emptyDirs' sizes, as the kubelet does:
# one over its sizeLimit evicts the pod. Every container is stopped as on a delete (preStop,
# SIGTERM), and whatever still runs after the grace period is killed.
ils_size_watch() {
  local -a w=("$@")
  local i used
  trap - TERM INT URG
  while sleep 10; do
    for (( i = 0; i < ${#w[@]}; i += 4 )); do
      used=$(du -sk -- "${w[i+1]}" 2>/dev/null | cut -f1)
      if [ -n "$used" ] && [ "$used" -gt "${w[i+2]}" ]; then
        ils_put job.evicted \
          "Usage of EmptyDir volume \"${w[i]}\" exceeds the limit \"${w[i+3]}\"."
        echo "interlink-slurm: emptyDir volume ${w[i]} uses ${used}Ki, more than its" \
          "sizeLimit of ${w[i+3]}: the pod is evicted"
        kill -URG 0
        sleep "$ILS_GRACE"
        kill -KILL 0
      fi
    done
  done
}

# ils_start POD: the start of the job, before anything of the pod's. A requeued job runs again
# from the start: what the last run wrote becomes the "previous" logs, and the containers
# start over.
ils_start() {
  local f runs code began ended i
  local -a ended_runs=()
  ils_count runs job.runs
  ILS_RUN=$(( runs + 1 ))
  # A run after the first (a requeue) clears the last one's files before it counts itself: a
  # state read in between then sees the last run without its containers' states, never this
  # run beside the last one's exit codes.
  if [ "$ILS_RUN" -gt 1 ]; then
    for f in containers/*.log; do
      case $f in *.previous.log|'containers/*.log') continue ;; esac
      mv -f "$f" "${f%.log}.previous.log"
      if [ -e "$f.idx" ]; then mv -f "$f.idx" "${f%.log}.previous.log.idx"; fi
    done
    # A container the last run saw end is that run's last state, as after a restart (written
    # once its states are gone: a read never sees a run beside itself as its last state); one
    # whose end it could not write (a node that failed) keeps the state it had before, if any.
    for f in containers/*.exit; do
      [ -e "$f" ] || continue
      f=${f%.exit}
      ils_read code "$f.exit" ""
      ils_read began "$f.started" ""
      ils_read ended "$f.finished" ""
      if [[ $code =~ ^[0-9]{1,3}$ && $began =~ ^[0-9T:.Z-]+$ && $ended =~ ^[0-9T:.Z-]+$ ]]; then
        ended_runs+=("$f" "$code" "$began" "$ended")
      fi
    done
    rm -f containers/*.started containers/*.finished containers/*.exit containers/*.ready \
      containers/*.startup-ok containers/*.backoff
    for (( i = 0; i < ${#ended_runs[@]}; i += 4 )); do
      ils_last_run "${ended_runs[@]:i:4}"
    done
    rm -f containers/*.message
  fi
  ils_put job.runs "$ILS_RUN"
  ils_which ILS_PYTHON python3 || ILS_PYTHON=""
  ILS_STOPPING=""
  trap 'ILS_STOPPING=1' TERM INT URG
  # Slurm's name of the node, which is what squeue shows (nodes may share a hostname).
  echo "interlink-slurm: pod $1 starts as job ${SLURM_JOB_ID:-?} on ${SLURMD_NODENAME:-$(hostname)}"
}

# ils_node_ip NODE: the address of a Slurm node: its NodeAddr, resolved when it is a name.
ils_node_ip() {
  local addr ip
  addr=$(scontrol show node -o -- "$1" 2>/dev/null | grep -o 'NodeAddr=[^ ]*' | head -n 1)
  addr=${addr#NodeAddr=}
  [ -n "$addr" ] || addr=$1
  ip=$(getent ahostsv4 -- "$addr" 2>/dev/null | awk '{ print $1; exit }')
  echo "${ip:-$addr}"
}

# ils_group_stop: the trap of a group's batch script for SIGURG, which a delete sends to the
# batch step only (scancel --full, slurmrestd's FULL_JOB), never to the srun steps that run the
# pods: each member's step gets it from here (scancel without --full signals the steps alone),
# so every container has its preStop and SIGTERM, not the grace period's kill.
ils_group_stop() {
  ILS_STOPPING=1
  scancel --signal=URG -- "$SLURM_JOB_ID" 2>/dev/null || true
}

# ils_group_wait POLICY NAME PID [NAME PID]...: wait for the steps of a group's pods, each
# named by its pod; the exit code is the first non-zero one. With POLICY fail-group, the first
# pod that fails ends the others as a delete would (SIGURG to every step: preStop, SIGTERM,
# the grace period), and group.ended says which.
#
# Bash's wait -n knows only the jobs of its job table, from which each new child (a step's srun,
# the trap's scancel, ils_put's mv) moves those that ended: wait -n then says "no such job" for
# them, and plain wait still has their status. So each turn first takes a step whose process is
# gone with plain wait, and only then waits for the others. A trapped signal (a delete) cuts
# wait -n short and leaves its -p variable unset. Bash before 5.1 (RHEL 8 has 4.4) has no -p:
# there wait -n waits for any child, and the next turn finds which step it was.
ILS_WAIT_P=""
if [ "${BASH_VERSINFO[0]}" -gt 5 ] ||
  { [ "${BASH_VERSINFO[0]}" -eq 5 ] && [ "${BASH_VERSINFO[1]}" -ge 1 ]; }; then
  ILS_WAIT_P=1
fi
ils_group_wait() {
  local policy=$1 status=0 pid rc p
  local -A name_of=()
  shift
  while [ $# -ge 2 ]; do
    name_of[$2]=$1
    shift 2
  done
  while [ ${#name_of[@]} -gt 0 ]; do
    pid=""
    for p in "${!name_of[@]}"; do
      kill -0 "$p" 2>/dev/null || { pid=$p; break; }
    done
    if [ -n "$pid" ]; then
      wait "$pid"
      rc=$?
    elif [ -n "$ILS_WAIT_P" ]; then
      wait -n -p pid "${!name_of[@]}" 2>/dev/null
      rc=$?
      if [ -z "${pid:-}" ]; then
        [ "$rc" -eq 127 ] || continue # a signal cut the wait short
        # Not one left in the job table (their pids taken again since): plain wait.
        for pid in "${!name_of[@]}"; do break; done
        wait "$pid"
        rc=$?
      fi
    else
      # 127: no child left that wait -n knows of (or one exited 127): look again in a second.
      wait -n 2>/dev/null || [ $? -ne 127 ] || sleep 1
      continue
    fi
    if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then
      status=$rc
      if [ "$policy" = fail-group ] && [ ${#name_of[@]} -gt 1 ]; then
        ils_put group.ended "pod ${name_of[$pid]} failed (exit code $rc)"
        echo "interlink-slurm: pod ${name_of[$pid]} failed (exit code $rc): ending the group"
        ils_group_stop
      fi
    fi
    unset "name_of[$pid]"
  done
  return "$status"
}

# ils_group_env PREFIX FILE...: add the variables of group.env (NAME=VALUE lines: the nodes of
# a group's pods, its leader's address) to containers' env files, each name after the runtime's
# PREFIX.
ils_group_env() {
  local prefix=$1 line f
  shift
  for f in "$@"; do
    while IFS= read -r line; do printf '%s%s\0' "$prefix" "$line"; done < group.env >> "$f" ||
      return 1
  done
}
