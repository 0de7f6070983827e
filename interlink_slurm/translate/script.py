"""JobPlan → the batch script: plain bash an operator can read and ``sbatch`` by hand.

Only one fixed skeleton is written here; what differs between pods is data (directives, argv
lists) placed into it with ``shlex.quote``. Environment values never appear in the script: each
container reads its own NUL-separated env file (``containers/<name>.env``).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from interlink_slurm.translate.annotations import NTASKS
from interlink_slurm.translate.lifecycle import HOOK_TIMEOUT_SECONDS
from interlink_slurm.translate.plan import CONTAINER_TMP, ContainerPlan, JobPlan, PlannedPull
from interlink_slurm.translate.volumes import SHM_ROOT

# The per-container protocol, also read back by jobdir.py:
#   containers/<name>.started   RFC 3339 time the container was started
#   containers/<name>.finished  RFC 3339 time it ended
#   containers/<name>.exit      its exit code
#   containers/<name>.log       its stdout and stderr
SKELETON = r"""
set -o nounset -o pipefail
umask 077
# Some runtimes (ch-run) refuse to start without $USER, which batch jobs may lack.
export USER="${{USER:-$(id -un)}}"
POD_DIR={pod_dir}
cd "$POD_DIR" || exit 1

# Time stamps in RFC 3339 with nanoseconds, as Kubernetes prints them.
ils_now() {{ date -u +%Y-%m-%dT%H:%M:%S.%NZ; }}

# Write a small file atomically, so a reader never sees half of it.
ils_put() {{ printf '%s\n' "$2" > "$1.tmp" && mv -f "$1.tmp" "$1"; }}

# Wait for one child, riding out the TERM that scancel sends to every process of the job:
# wait returns early (>128) when a trapped signal arrives while the child still runs.
ils_wait() {{
  local pid=$1 rc
  while :; do
    wait "$pid"; rc=$?
    if [ "$rc" -gt 128 ] && kill -0 "$pid" 2>/dev/null; then continue; fi
    return "$rc"
  done
}}

# Run by a launcher's task: the variables of the env file ($1), then the rest of the words.
ILS_AFTER_LAUNCH='e=(); while IFS= read -r -d "" kv; do e+=("$kv"); done < "$1" || exit 127
shift; exec env -- "${{e[@]}}" "$@"'

# A process and all its descendants, frozen first so that none forks meanwhile: a watcher and
# what it runs (sleep, a probe's check).
ils_kill_tree() {{
  local sig=$1 p
  shift
  for p in "$@"; do
    kill -STOP "$p" 2>/dev/null || continue
    # shellcheck disable=SC2046
    ils_kill_tree "$sig" $(pgrep -P "$p" 2>/dev/null)
    kill "-$sig" "$p" 2>/dev/null
    kill -CONT "$p" 2>/dev/null
  done
}}

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
ils_container() {{
  local name=$1; shift
  local -a envs=() launch=() startup=() readiness=() liveness=() poststart=() prestop=()
  local kv rc=0 logger="" pipe="containers/$name.pipe" runtime found cpid="" policy=Never
  local restarts backoff=${{ILS_BACKOFF:-10}}
  local -a watchers
  trap 'ILS_STOPPING=1; ils_prestop' TERM INT
  trap ils_graceful URG
  while IFS= read -r -d '' kv; do envs+=("$kv"); done < "containers/$name.env"
  while :; do
    case $1 in
      -L) launch=("${{@:3:$2}}") ;;
      -P) policy=$3 ;;
      -U) startup=("${{@:3:$2}}") ;;
      -R) readiness=("${{@:3:$2}}") ;;
      -V) liveness=("${{@:3:$2}}") ;;
      -S) poststart=("${{@:3:$2}}") ;;
      -T) prestop=("${{@:3:$2}}") ;;
      *) break ;;
    esac
    shift $(( $2 + 2 ))
  done
  local -a direct=("${{envs[@]}}")
  if [ "${{#launch[@]}}" -gt 0 ]; then
    found=$(command -v -- "${{launch[0]}}") && launch[0]=$found
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
    [ "${{#readiness[@]}}" -eq 0 ] || ils_put "containers/$name.ready" false
    ils_put "containers/$name.started" "$(ils_now)"
    rm -f "containers/$name.backoff"
    if [ -n "$ILS_PYTHON" ]; then
      rm -f "$pipe" && mkfifo -m 600 "$pipe"
      "$ILS_PYTHON" logpipe.py "containers/$name.log" < "$pipe" &
      logger=$!
      setsid env -- "${{direct[@]}}" "${{launch[@]}}" "$runtime" "$@" \
        > "$pipe" 2>&1 < /dev/null &
    else
      setsid env -- "${{direct[@]}}" "${{launch[@]}}" "$runtime" "$@" \
        >> "containers/$name.log" 2>&1 < /dev/null &
    fi
    cpid=$!
    if [ "${{#poststart[@]}}" -gt 0 ]; then
      ils_hook "$name" postStart "$cpid" "${{poststart[@]}}" & watchers+=($!)
    fi
    rm -f "containers/$name.startup-ok"
    if [ "${{#startup[@]}}" -gt 0 ]; then
      ils_probe "$name" "$cpid" "${{startup[@]}}" & watchers+=($!)
    fi
    if [ "${{#readiness[@]}}" -gt 0 ]; then
      ils_probe "$name" "$cpid" "${{readiness[@]}}" & watchers+=($!)
    fi
    if [ "${{#liveness[@]}}" -gt 0 ]; then
      ils_probe "$name" "$cpid" "${{liveness[@]}}" & watchers+=($!)
    fi
    ils_wait "$cpid"; rc=$?
    kill -KILL -- "-$cpid" 2>/dev/null
    pkill -KILL -s "$cpid" 2>/dev/null
    cpid=""
    if [ "${{#watchers[@]}}" -gt 0 ]; then ils_kill_tree TERM "${{watchers[@]}}"; fi
    [ "${{#readiness[@]}}" -eq 0 ] || ils_put "containers/$name.ready" false
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
    [ -z "${{ILS_STOPPING:-}}" ] || break
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
      "restart $restarts in ${{backoff}} s"
    sleep "$backoff" & local nap=$!
    wait "$nap"; kill "$nap" 2>/dev/null
    backoff=$(( backoff * 2 > ${{ILS_BACKOFF_MAX:-300}} ? ${{ILS_BACKOFF_MAX:-300}} : backoff * 2 ))
    [ -z "${{ILS_STOPPING:-}}" ] || break
  done
  rm -f "containers/$name.backoff"
  trap 'ILS_STOPPING=1' TERM INT URG
  ils_put "containers/$name.exit" "$rc"
  return "$rc"
}}

# The pod is deleted: the plugin sends SIGURG to every process of the job (ignored by all but
# this script). As the kubelet does, the container's preStop hook runs first, then the container
# gets SIGTERM; the plugin cancels the job when the grace period is over. (A time limit or an
# administrator's scancel sends SIGTERM to every process at once: the hook runs alongside.)
ils_graceful() {{
  [ -z "${{ILS_STOPPING:-}}" ] || return 0
  ILS_STOPPING=1
  [ -n "$cpid" ] || return 0
  ils_prestop
  kill -TERM -- "-$cpid" 2>/dev/null
}}

# The preStop hook of the container being run, once, when the job is told to stop.
ils_prestop() {{
  if [ "${{#prestop[@]}}" -gt 0 ]; then
    local -a hook=("${{prestop[@]}}")
    prestop=()
    ils_hook "$name" preStop "$cpid" "${{hook[@]}}"
  fi
}}

# A requeued job runs again from the start: what the last run wrote becomes the "previous"
# logs, and the containers start over.
ILS_RUN=$(( $(cat job.runs 2>/dev/null || echo 0) + 1 ))
ils_put job.runs "$ILS_RUN"
if [ "$ILS_RUN" -gt 1 ]; then
  for f in containers/*.log; do
    case $f in *.previous.log|'containers/*.log') continue ;; esac
    mv -f "$f" "${{f%.log}}.previous.log"
    if [ -e "$f.idx" ]; then mv -f "$f.idx" "${{f%.log}}.previous.log.idx"; fi
  done
  rm -f containers/*.started containers/*.finished containers/*.exit containers/*.ready \
    containers/*.startup-ok containers/*.backoff
fi
ILS_PYTHON=$(command -v python3 || true)

ILS_STOPPING=""
trap 'ILS_STOPPING=1' TERM INT URG
echo "interlink-slurm: pod {pod_ref} starts as job ${{SLURM_JOB_ID:-?}} on $(hostname)"
"""


# Probes and hooks, written into the script only when a container has one.
LIFECYCLE = r"""
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
"""


# Images converted into the shared cache, written into the script only when a pod needs one;
# render_pull_script runs the same function on the submit host.
PULL = r"""
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
"""


def render_pull_script(pulls: Sequence[PlannedPull]) -> str:
    """A script that pulls the images into the cache one after the other, with the job's own
    ils_pull; run by bash in the pod's directory (the credentials files are there). Exit code 0
    once every image is there; else the first failure ends it with the pull's own exit code,
    the reason in its output."""
    lines = ["#!/bin/bash", "set -o nounset -o pipefail", "umask 077"]
    lines += PULL.rstrip("\n").split("\n")
    lines += ["", *_pull_lines(pulls, keep_code=True), ""]
    return "\n".join(lines)


def _pull_lines(pulls: Sequence[PlannedPull], keep_code: bool = False) -> list[str]:
    """One ils_pull per image; the first that fails ends the script, with exit code 1 or
    (``keep_code``) the pull's own."""
    return [
        _or_exit(
            f"ils_pull {_quote_argv([p.target, p.auth or '', p.source, *p.argv])}",
            f"interlink-slurm: cannot pull {p.source}",
            keep_code,
        )
        for p in pulls
    ]


def _or_exit(command: str, say: str, keep_code: bool = False) -> str:
    """``command``, and if it fails: ``say`` it and end the script (exit code 1, or with
    ``keep_code`` the command's own)."""
    if keep_code:
        return f'{command} || {{ rc=$?; echo {shlex.quote(say)}; exit "$rc"; }}'
    return f"{command} || {{ echo {shlex.quote(say)}; exit 1; }}"


def _quote_argv(argv: Sequence[str]) -> str:
    return " ".join(_word(a) for a in argv)


def _word(a: str) -> str:
    # The launcher's task count and the containers' /tmp directories are the job's, known on
    # the node only.
    if a == NTASKS:
        return '"${SLURM_NTASKS:-1}"'
    if a.startswith(CONTAINER_TMP):
        return '"$ILS_TMP"' + shlex.quote(a.removeprefix(CONTAINER_TMP))
    return shlex.quote(a)


def _container_line(c: ContainerPlan, argv: Sequence[str], background: bool) -> str:
    life = c.lifecycle
    options = []
    for flag, words in (
        ("-L", c.launcher),
        ("-P", (life.restart,) if life.restart != "Never" else ()),
        ("-U", life.startup),
        ("-R", life.readiness),
        ("-V", life.liveness),
        ("-S", life.post_start),
        ("-T", life.pre_stop),
    ):
        if words:
            options.append(f"{flag} {len(words)} {' '.join(_word(a) for a in words)}")
    # One option per line when there are any, so that a reader sees each.
    sep = " \\\n    " if options else " "
    line = sep.join([f"ils_container {shlex.quote(c.name)}", *options, _quote_argv(argv)])
    return f"{line} &" if background else line


def _uses_lifecycle(plan: JobPlan) -> bool:
    return any(
        c.lifecycle.readiness
        or c.lifecycle.startup
        or c.lifecycle.liveness
        or c.lifecycle.post_start
        or c.lifecycle.pre_stop
        for c in (*plan.init_containers, *plan.containers)
    )


def _uses_restarts(plan: JobPlan) -> bool:
    return any(c.lifecycle.restart != "Never" for c in (*plan.init_containers, *plan.containers))


def _before_containers(plan: JobPlan) -> list[str]:
    """What the job does before its first container: environment, node directories, the pod's
    own pre-exec code, interLink's tunnel; and what it undoes when it ends."""
    lines: list[str] = []
    if _uses_restarts(plan) or _uses_lifecycle(plan) or plan.size_limits:
        first, most = plan.backoff_seconds
        lines += [
            "",
            "# Restart back-off (first, longest), grace of a stopped container, hook timeout; s.",
            f"ILS_BACKOFF={first} ILS_BACKOFF_MAX={most} ILS_GRACE={plan.grace_seconds}"
            f" ILS_HOOK_TIMEOUT={HOOK_TIMEOUT_SECONDS}",
        ]
    if _uses_lifecycle(plan):
        lines += LIFECYCLE.rstrip("\n").split("\n")
    if plan.job_env:
        lines += ["", "# The pod's address as interLink gave it (interlink.eu/pod-ip)."]
        lines += [f"export {name}={shlex.quote(value)}" for name, value in plan.job_env]
    cleanup: list[str] = []
    # On several nodes, directories in a node's own memory are made on each (srun, one task
    # per node); the others are on the shared filesystem.
    every_node = (
        f"srun --nodes={plan.nodes} --ntasks={plan.nodes} --ntasks-per-node=1 "
        if plan.nodes > 1
        else ""
    )
    names = [c.name for c in (*plan.init_containers, *plan.containers)]
    lines += [
        "",
        "# Each container's own /tmp (shared with its exec probes and hooks), on each node, in a",
        "# directory of the job's own: never the node's /tmp itself.",
        'ILS_TMP="${TMPDIR:-/tmp}/interlink-slurm-${SLURM_JOB_ID:-$$}"',
        f'{every_node}rm -rf -- "$ILS_TMP"',
        f'{every_node}mkdir -m 700 -- "$ILS_TMP" || exit 1',
        f"{every_node}mkdir -m 1777 -- {' '.join(_word(f'{CONTAINER_TMP}/{n}') for n in names)}"
        " || exit 1",
    ]
    cleanup.append(f'{every_node}rm -rf -- "$ILS_TMP"')
    shared = [d for d in plan.node_dirs if not d.startswith(SHM_ROOT)]
    local = [d for d in plan.node_dirs if d.startswith(SHM_ROOT)]
    scratch = list(plan.scratch_dirs)
    if plan.enroot_data_path:
        data = plan.enroot_data_path
        # An unpacked image may hold directories without write permission, which rm cannot
        # empty: made writable first, as enroot remove does (best effort: it may not exist).
        writable = f"{every_node}chmod -Rf u+w -- {shlex.quote(data)} 2>/dev/null"
        lines += [
            "",
            "# Enroot unpacks the pod's images on each node into a directory of the job's own",
            "# (enroot_create_dir); what a run killed before its cleanup left there is removed.",
            f"export ENROOT_DATA_PATH={shlex.quote(data)}",
            writable,
            f"{every_node}rm -rf -- {shlex.quote(data)}",
        ]
        local.append(data)
        scratch.append(data)
        cleanup.append(writable)
    if plan.node_dirs:
        also = ", ENROOT_DATA_PATH" if plan.enroot_data_path else ""
        lines += ["", f"# Directories on the node: memory-backed emptyDirs, volume claims{also}."]
    if shared:
        lines.append(f"mkdir -p -m 700 -- {_quote_argv(shared)}")
    if local:
        lines.append(f"{every_node}mkdir -p -m 700 -- {_quote_argv(local)}")
    if scratch:
        cleanup.append(f"{every_node}rm -rf -- {_quote_argv(scratch)}")
    if plan.read_only_dirs:
        dirs = _quote_argv(plan.read_only_dirs)
        lines += [
            "",
            "# The runtime's binds are read-write: the pod's own copies of its read-only volumes",
            "# are made read-only by their permissions (which hold back any user but root).",
            f"chmod -R a-w -- {dirs}",
        ]
        cleanup.append(f"chmod -R u+w -- {dirs}")
    if plan.tunnel:
        cleanup.append('[ -z "${ILS_TUNNEL:-}" ] || kill -TERM -- "-$ILS_TUNNEL" 2>/dev/null')
    if plan.size_limits:
        cleanup.append('[ -z "${ILS_SIZE_WATCH:-}" ] || kill "$ILS_SIZE_WATCH" 2>/dev/null')
    lines += REAP.rstrip("\n").split("\n")
    lines += [
        "",
        "# When the job ends, however it ends: stop the tunnel, remove node directories, and end",
        "# whatever of the job still runs.",
        "ils_cleanup() {",
        *(f"  {c}" for c in cleanup),
        "  ils_reap",
        "}",
        "trap ils_cleanup EXIT",
    ]
    if plan.pre_exec:
        lines += [
            "",
            "# The pod's own shell code (slurm-job.vk.io/pre-exec), run in this shell.",
            "set +o nounset",
            f". ./{shlex.quote(plan.pre_exec)}",
            "set -o nounset",
            'cd "$POD_DIR" || exit 1',
        ]
    if plan.image_pulls:
        lines += PULL.rstrip("\n").split("\n")
        lines += _pull_lines(plan.image_pulls)
    if plan.enroot_creates:
        lines += ["", "# Each image unpacked once on each node; the containers start it by name."]
        lines += [
            _or_exit(
                f"{every_node}{_quote_argv(c.argv)}", f"interlink-slurm: cannot unpack {c.image}"
            )
            for c in plan.enroot_creates
        ]
    if plan.size_limits:
        lines += SIZE_WATCH.rstrip("\n").split("\n")
        words = [w for s in plan.size_limits for w in (s.volume, s.path, str(s.kib), s.quantity)]
        lines += [f"ils_size_watch {_quote_argv(words)} &", "ILS_SIZE_WATCH=$!"]
    if plan.tunnel:
        lines += [
            "",
            "# interLink's tunnel (interlink.eu/wstunnel-client-commands), in the background and",
            "# in a process group of its own, from now until the containers end.",
            "mkdir -p tunnel",
            f"( cd tunnel && exec setsid bash ../{shlex.quote(plan.tunnel)} ) "
            "> tunnel.log 2>&1 < /dev/null &",
            "ILS_TUNNEL=$!",
        ]
    return lines


# Every job ends its processes: linuxproc-style process tracking loses a process whose parent
# ended (a daemon a container started, a watcher's sleep), and nothing of a pod may outlive it.
REAP = r"""
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
"""


# emptyDir sizeLimits, written only when a pod sets one.
SIZE_WATCH = r"""
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
"""


# Deleted before a container started (during the pre-exec, a pull, an unpack, an earlier init
# container): start nothing more.
STOPPED = '[ -z "$ILS_STOPPING" ] || exit 143'


# The variables of the script the containers' functions read, handed to the mesh's shell.
_MESH_VARIABLES = (
    "POD_DIR ILS_PYTHON ILS_STOPPING ILS_RUN ILS_BACKOFF ILS_BACKOFF_MAX ILS_GRACE ILS_HOOK_TIMEOUT"
    " ILS_TMP ILS_AFTER_LAUNCH"
)


def _in_mesh(plan: JobPlan, pod: list[str]) -> list[str]:
    """The containers' part of the script, run inside interLink's full mesh: a function that
    the mesh script (whose template runs its arguments in the mesh's network namespace) runs
    in a shell of its own, given this script's functions and variables (mesh-pod.sh)."""
    assert plan.mesh is not None
    return [
        "",
        "# interLink's full mesh (Network.FullMesh): the containers run inside the mesh's network",
        "# namespace. Its script (mesh.sh, from the pre-exec's EOFMESH heredoc) runs its arguments",
        "# there: a shell given this script's functions and variables, which runs ils_pod.",
        "ils_pod() {",
        *(f"  {line}" if line else "" for line in pod),
        "}",
        "{",
        "  echo 'set -o nounset -o pipefail; umask 077'",
        f"  declare -p {_MESH_VARIABLES} 2>/dev/null",
        "  declare -f",
        """  echo 'cd "$POD_DIR" || exit 1; trap "ILS_STOPPING=1" TERM INT URG; ils_pod'""",
        "} > mesh-pod.sh",
        f'bash ./{shlex.quote(plan.mesh)} /bin/bash "$POD_DIR/mesh-pod.sh"',
        "",
    ]


def render_script(plan: JobPlan) -> str:
    lines = ["#!/bin/bash"]
    lines += [f"#SBATCH {d}" for d in plan.directives]
    lines.append("#")
    lines += [f"# {line}" if line else "#" for line in plan.header_comment.splitlines()]
    lines.append(
        SKELETON.format(
            pod_dir=shlex.quote(plan.pod_dir),
            pod_ref=shlex.quote(f"{plan.namespace}/{plan.name}"),
        ).rstrip("\n")
    )
    lines += _before_containers(plan)
    body = _containers(plan)
    if plan.mesh is None:
        return "\n".join([*lines, *body])
    # In a function, each exit a return to the mesh's shell, which ends with it.
    inner = [
        line.replace('exit "$', 'return "$').replace("|| exit 143", "|| return 143")
        for line in body
    ]
    return "\n".join([*lines, *_in_mesh(plan, inner[:-1])])


def _containers(plan: JobPlan) -> list[str]:
    """Init containers in order, then the containers together; the job's exit code."""
    lines: list[str] = []
    if plan.init_containers:
        lines += ["", "# Init containers, in order; the first that fails ends the pod."]
        for c in plan.init_containers:
            lines.append(STOPPED)
            lines.append(_container_line(c, plan.runtime_argv[c.name], background=False))
            lines.append('rc=$?; [ "$rc" -eq 0 ] || exit "$rc"')
    lines += ["", "# Containers, all together; the job fails with the first non-zero exit code."]
    lines.append(STOPPED)
    lines.append("pids=()")
    for c in plan.containers:
        lines.append(_container_line(c, plan.runtime_argv[c.name], background=True))
        lines.append("pids+=($!)")
    lines += [
        "status=0",
        'for pid in "${pids[@]}"; do',
        '  ils_wait "$pid"; rc=$?',
        '  [ "$status" -ne 0 ] || status=$rc',
        "done",
        'exit "$status"',
        "",
    ]
    return lines
