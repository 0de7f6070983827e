"""JobPlan → the batch script: plain bash an operator can read and ``sbatch`` by hand.

What every job does is shell code of its own, ``interlink_slurm/jobscript/ils.sh`` (LIBRARY):
copied into the pod directory and sourced by job.sh. Written here is only what differs between
pods, as data (directives, argv lists) placed with ``shlex.quote``. Environment values never
appear in the script: each container reads its own NUL-separated env file
(``containers/<name>.env``).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from interlink_slurm.translate.annotations import NTASKS
from interlink_slurm.translate.lifecycle import HOOK_TIMEOUT_SECONDS
from interlink_slurm.translate.plan import (
    CONTAINER_TMP,
    HOSTS_FILE,
    IMAGE_CWD,
    ContainerPlan,
    JobPlan,
    PlannedPull,
)
from interlink_slurm.translate.volumes import SHM_ROOT

# The job script's functions, copied into every pod directory as LIBRARY_FILE (see its header),
# with the log copier's code (logpipe.py) in its place: ils_container hands it to python3.
LIBRARY_FILE = "ils.sh"
_LOGPIPE_PLACE = "# @logpipe.py@\n"


def _library() -> str:
    package = Path(__file__).resolve().parent.parent
    text = (package / "jobscript" / LIBRARY_FILE).read_text()
    code = (package / "logpipe.py").read_text()
    # Its here-document ends at a line ILS_LOGPIPE_PY.
    if text.count(_LOGPIPE_PLACE) != 1 or "ILS_LOGPIPE_PY" in code:
        raise RuntimeError(f"{LIBRARY_FILE} has no single place for logpipe.py")
    return text.replace(_LOGPIPE_PLACE, code)


LIBRARY = _library()
_SOURCE = f". ./{LIBRARY_FILE} || exit 1"


def render_pull_script(pulls: Sequence[PlannedPull]) -> str:
    """A script that pulls the images into the cache one after the other, with the job's own
    ils_pull; run by bash in the pod's directory (the credentials files are there). Exit code 0
    once every image is there; else the first failure ends it with the pull's own exit code,
    the reason in its output."""
    # The library itself, not sourced: a pod directory written by an earlier version has none.
    lines = ["#!/bin/bash", "set -o nounset -o pipefail", "umask 077"]
    lines += LIBRARY.rstrip("\n").split("\n")
    lines += ["", *_pull_lines(pulls, keep_code=True), ""]
    return "\n".join(lines)


def _pull_lines(pulls: Sequence[PlannedPull], keep_code: bool = False) -> list[str]:
    """One ils_pull per image; the first that fails ends the script, with exit code 1 or
    (``keep_code``) the pull's own."""
    return [
        _or_exit(
            f"[ -s {shlex.quote(p.target)} ]",
            f"interlink-slurm: image {p.source} is not present with pull policy of Never",
            keep_code,
        )
        if p.never
        else _or_exit(
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
    if a == IMAGE_CWD:
        return '"$ILS_CWD"'
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
        ("-M", (life.messages,) if life.messages != "File" else ()),
    ):
        if words:
            options.append(f"{flag} {len(words)} {' '.join(_word(a) for a in words)}")
    # One option per line when there are any, so that a reader sees each.
    sep = " \\\n    " if options else " "
    line = sep.join([f"ils_container {shlex.quote(c.name)}", *options, _quote_argv(argv)])
    return f"{line} &" if background else line


def _prepare(plan: JobPlan, c: ContainerPlan) -> list[str]:
    """The runtime's command run just before the container (Runtime.prepare_argv), if any."""
    words = plan.runtime_prepare.get(c.name)
    if not words:
        return []
    return [_or_exit(_quote_argv(words), f"interlink-slurm: cannot prepare container {c.name}")]


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
    # On several nodes, directories in a node's own memory are made on each (srun, one task
    # per node); the others are on the shared filesystem.
    every_node = (
        f"srun --nodes={plan.nodes} --ntasks={plan.nodes} --ntasks-per-node=1 "
        if plan.nodes > 1
        else ""
    )
    lines = _job_variables(plan)
    made, cleanup = _job_directories(plan, every_node)
    lines += made
    if plan.tunnel:
        cleanup.append('[ -z "${ILS_TUNNEL:-}" ] || kill -TERM -- "-$ILS_TUNNEL" 2>/dev/null')
    if plan.size_limits:
        cleanup.append('[ -z "${ILS_SIZE_WATCH:-}" ] || kill "$ILS_SIZE_WATCH" 2>/dev/null')
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
    return lines + _pod_setup(plan, every_node)


def _job_variables(plan: JobPlan) -> list[str]:
    """The library's timing variables (when restarts, hooks or size watches use them) and the
    pod's address."""
    lines: list[str] = []
    if _uses_restarts(plan) or _uses_lifecycle(plan) or plan.size_limits:
        first, most = plan.backoff_seconds
        lines += [
            "",
            "# Restart back-off (first, longest), grace of a stopped container, hook timeout; s.",
            f"ILS_BACKOFF={first} ILS_BACKOFF_MAX={most} ILS_GRACE={plan.grace_seconds}"
            f" ILS_HOOK_TIMEOUT={HOOK_TIMEOUT_SECONDS}",
        ]
    if plan.job_env:
        lines += ["", "# The pod's address as interLink gave it (interlink.eu/pod-ip)."]
        lines += [f"export {name}={shlex.quote(value)}" for name, value in plan.job_env]
    return lines


def _job_directories(plan: JobPlan, every_node: str) -> tuple[list[str], list[str]]:
    """The directories the job makes (the containers' /tmp, Enroot's data, memory-backed
    emptyDirs, claims; read-only volumes' copies made read-only), and the cleanup of each."""
    names = [c.name for c in (*plan.init_containers, *plan.containers)]
    lines = [
        "",
        "# Each container's own /tmp (shared with its exec probes and hooks), on each node, in a",
        "# directory of the job's own: never the node's /tmp itself.",
        # In the background: what other jobs left is no reason to start this one's later.
        'ils_tmp_sweep "${TMPDIR:-/tmp}" &',
        'ILS_TMP="${TMPDIR:-/tmp}/interlink-slurm-${SLURM_JOB_ID:-pid$$}${ILS_MEMBER:+-$ILS_MEMBER}"',
        # What a killed run left (seldom there): removed by a process only when it is there,
        # on one node; each node's srun task cannot run ils_rm.
        f'{every_node}rm -rf -- "$ILS_TMP"' if every_node else 'ils_rm -rf "$ILS_TMP"',
        f'{every_node}mkdir -m 700 -- "$ILS_TMP" || exit 1',
        f"{every_node}mkdir -m 1777 -- {' '.join(_word(f'{CONTAINER_TMP}/{n}') for n in names)}"
        " || exit 1",
    ]
    cleanup = [f'{every_node}rm -rf -- "$ILS_TMP"']
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
    return lines, cleanup


def _pod_setup(plan: JobPlan, every_node: str) -> list[str]:
    """The pod's pre-exec code, image pulls and unpacks, the emptyDir size watch and
    interLink's tunnel, in that order."""
    lines: list[str] = []
    if plan.host_aliases:
        entries = "".join(
            f" {shlex.quote(ip)} {shlex.quote(' '.join(names))}" for ip, names in plan.host_aliases
        )
        lines += [
            "",
            "# The pod's hostAliases after this node's own /etc/hosts, as the kubelet writes them;",
            "# the containers get the file at /etc/hosts.",
            "{ cat /etc/hosts; echo '# Entries added by HostAliases.';"
            f" printf '%s\\t%s\\n'{entries}; }} > .{HOSTS_FILE}.tmp"
            f" && mv -f .{HOSTS_FILE}.tmp {HOSTS_FILE} || exit 1",
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
        lines += ["", "# Images converted into the shared cache, once for every pod (ils_pull)."]
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
        lines += ["", "# emptyDir sizeLimits, watched as the kubelet does (ils_size_watch)."]
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
    in a shell of its own, given this script's variables and the library (mesh-pod.sh)."""
    assert plan.mesh is not None
    return [
        "",
        "# interLink's full mesh (Network.FullMesh): the containers run inside the mesh's network",
        "# namespace. Its script (mesh.sh, from the pre-exec's EOFMESH heredoc) runs its arguments",
        "# there: a shell given this script's variables and the library, which runs ils_pod.",
        "ils_pod() {",
        *(f"  {line}" if line else "" for line in pod),
        "}",
        "{",
        "  echo 'set -o nounset -o pipefail; umask 077'",
        f"  declare -p {_MESH_VARIABLES} 2>/dev/null",
        "  declare -f ils_pod",
        f"  echo 'cd \"$POD_DIR\" || exit 1; {_SOURCE}'",
        """  echo 'trap "ILS_STOPPING=1" TERM INT URG; ils_pod'""",
        "} > mesh-pod.sh",
        f'bash ./{shlex.quote(plan.mesh)} /bin/bash "$POD_DIR/mesh-pod.sh"',
        "",
    ]


def render_script(plan: JobPlan) -> str:
    """The job script of a plan: #SBATCH lines, then bash that sources the library (ils.sh)
    and runs the containers. Pure: the same plan gives the same text (the goldens)."""
    lines = ["#!/bin/bash"]
    lines += [f"#SBATCH {d}" for d in plan.directives]
    lines.append("#")
    lines += [f"# {line}" if line else "#" for line in plan.header_comment.splitlines()]
    lines += [
        "",
        "set -o nounset -o pipefail",
        "umask 077",
        "# Some runtimes (ch-run) refuse to start without $USER, which batch jobs may lack.",
        'export USER="${USER:-$(id -un)}"',
        f"POD_DIR={shlex.quote(plan.pod_dir)}",
        'cd "$POD_DIR" || exit 1',
        f"# The job's functions (ils_container, ils_wait...): interlink-slurm's {LIBRARY_FILE}.",
        _SOURCE,
        f"ils_start {shlex.quote(f'{plan.namespace}/{plan.name}')}",
    ]
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
            lines += _prepare(plan, c)
            lines.append(_container_line(c, plan.runtime_argv[c.name], background=False))
            lines.append('rc=$?; [ "$rc" -eq 0 ] || exit "$rc"')
    lines += ["", "# Containers, all together; the job fails with the first non-zero exit code."]
    lines.append(STOPPED)
    lines.append("pids=()")
    for c in plan.containers:
        lines += _prepare(plan, c)
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
