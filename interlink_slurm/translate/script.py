"""JobPlan → the batch script: plain bash an operator can read and ``sbatch`` by hand.

Only one fixed skeleton is written here; what differs between pods is data (directives, argv
lists) placed into it with ``shlex.quote``. Environment values never appear in the script: each
container reads its own NUL-separated env file (``containers/<name>.env``).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from interlink_slurm.translate.annotations import NTASKS
from interlink_slurm.translate.plan import ContainerPlan, JobPlan

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

# ils_container NAME [-L N LAUNCHER...] ARGV...: run one container with the variables of its
# env file (through a launcher such as srun, given as its N words, on every task of the job),
# its output in its log (through logpipe.py, which notes when each chunk was written), and
# its start time, end time and exit code in files.
ils_container() {{
  local name=$1; shift
  local -a envs=() launch=()
  local kv rc logger="" pipe="containers/$name.pipe" runtime found
  trap ':' TERM INT
  while IFS= read -r -d '' kv; do envs+=("$kv"); done < "containers/$name.env"
  if [ "$1" = "-L" ]; then
    launch=("${{@:3:$2}}"); shift $(( $2 + 2 ))
    found=$(command -v -- "${{launch[0]}}") && launch[0]=$found
  fi
  # Found on the job's PATH, not on a PATH the pod's environment may set for the container.
  runtime=$(command -v -- "$1") || runtime=$1
  shift
  ils_put "containers/$name.started" "$(ils_now)"
  if [ -n "$ILS_PYTHON" ]; then
    rm -f "$pipe" && mkfifo -m 600 "$pipe"
    "$ILS_PYTHON" logpipe.py "containers/$name.log" < "$pipe" &
    logger=$!
    env -- "${{envs[@]}}" "${{launch[@]}}" "$runtime" "$@" > "$pipe" 2>&1 < /dev/null &
  else
    env -- "${{envs[@]}}" "${{launch[@]}}" "$runtime" "$@" \
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
  rm -f containers/*.started containers/*.finished containers/*.exit
fi
ILS_PYTHON=$(command -v python3 || true)

trap ':' TERM INT
echo "interlink-slurm: pod {pod_ref} starts as job ${{SLURM_JOB_ID:-?}} on $(hostname)"
"""


def _quote_argv(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def _word(a: str) -> str:
    # The launcher's task count is the job's, known on the node only.
    return '"${SLURM_NTASKS:-1}"' if a == NTASKS else shlex.quote(a)


def _container_line(c: ContainerPlan, argv: Sequence[str], background: bool) -> str:
    launch = ""
    if c.launcher:
        launch = f"-L {len(c.launcher)} {' '.join(_word(a) for a in c.launcher)} "
    line = f"ils_container {shlex.quote(c.name)} {launch}{_quote_argv(argv)}"
    return f"{line} &" if background else line


def _before_containers(plan: JobPlan) -> list[str]:
    """What the job does before its first container: environment, node directories, the pod's
    own pre-exec code, interLink's tunnel; and what it undoes when it ends."""
    lines: list[str] = []
    if plan.job_env:
        lines += ["", "# The pod's address as interLink gave it (interlink.eu/pod-ip)."]
        lines += [f"export {name}={shlex.quote(value)}" for name, value in plan.job_env]
    cleanup: list[str] = []
    if plan.node_dirs:
        lines += ["", "# Directories on the node: memory-backed emptyDirs, volume claims."]
        lines.append(f"mkdir -p -m 700 -- {_quote_argv(plan.node_dirs)}")
    if plan.scratch_dirs:
        cleanup.append(f"rm -rf -- {_quote_argv(plan.scratch_dirs)}")
    if plan.tunnel:
        cleanup.append('[ -z "${ILS_TUNNEL:-}" ] || kill -TERM -- "-$ILS_TUNNEL" 2>/dev/null')
    if cleanup:
        lines += [
            "",
            "# When the job ends, however it ends: stop the tunnel, remove node directories.",
            "ils_cleanup() {",
            *(f"  {c}" for c in cleanup),
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
    if plan.init_containers:
        lines += ["", "# Init containers, in order; the first that fails ends the pod."]
        for c in plan.init_containers:
            lines.append(_container_line(c, plan.runtime_argv[c.name], background=False))
            lines.append('rc=$?; [ "$rc" -eq 0 ] || exit "$rc"')
    lines += ["", "# Containers, all together; the job fails with the first non-zero exit code."]
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
    return "\n".join(lines)
