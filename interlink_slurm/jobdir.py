"""The directory of one pod on the shared filesystem: where it is, writing it, reading it back.

Layout (``DATA_ROOT/<namespace>/<name>-<uid>/``):
    job.sh, ils.sh, job.out (the batch script, its functions, its output), pod.json
    containers/<name>.{env,log,started,finished,exit}
    containers/<name>.{restarts,ready,backoff}  restarts (restartPolicy), readiness, back-off
    containers/<name>.{message,last,last-message}  termination message; the run before a restart
                                                or requeue
    containers/<name>.previous.log              the run before the last restart or requeue
    containers/<name>.{startup-ok,hooks.log}    startup probe passed; postStart/preStop output
    volumes/<volume>/...
    pre-exec.sh, tunnel.sh, tunnel/, tunnel.log  the pod's own shell code (annotations)
    mesh.sh, mesh-pod.sh                         interLink's full mesh, the containers run in it
    pull/<hash>.auth                            registry credentials for the image cache
    hosts                                       the node's /etc/hosts and the pod's hostAliases
"""

from __future__ import annotations

import base64
import contextlib
import errno
import math
import os
import posixpath
import re
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from interlink_slurm.errors import PodRejected, StorageError
from interlink_slurm.slurm.container_files import ContainerFiles as ContainerFiles
from interlink_slurm.slurm.container_files import LastRun
from interlink_slurm.slurm.transport import (
    CommandUnavailable,
    LocalTransport,
    Transport,
    TreeItem,
)
from interlink_slurm.translate.plan import JobPlan
from interlink_slurm.wire import dns_label, dns_subdomain, pod_uid

POD_DIR_MODE = 0o700
SCRIPT_MODE = 0o700
NAMESPACE_DIR_MODE = 0o711
_MAX_NAME_IN_PATH = 200  # keeps "<name>-<uid>" under the usual 255-byte file name limit


def pod_dir(data_root: str, namespace: str, name: str, uid: str) -> str:
    """``DATA_ROOT/<namespace>/<name>-<uid>`` (the name cut to 200 characters); ValueError
    when a name is not a Kubernetes name or the path would leave ``data_root``."""
    # Validated again here because this is where a name becomes a path.
    dns_label(namespace)
    dns_subdomain(name)
    pod_uid(uid)
    path = posixpath.join(data_root, namespace, f"{name[:_MAX_NAME_IN_PATH]}-{uid}")
    if posixpath.dirname(posixpath.dirname(path)) != posixpath.normpath(data_root):
        raise ValueError(f"pod directory {path!r} escapes {data_root!r}")
    return path


def inside(root: str, relative: str) -> str:
    """``root/relative``, refusing anything that would resolve outside root."""
    joined = posixpath.normpath(posixpath.join(root, relative))
    if not joined.startswith(root.rstrip("/") + "/"):
        raise ValueError(f"{relative!r} escapes {root!r}")
    return joined


def container_file(pod_dir: str, container: str, suffix: str) -> str:
    """``containers/<container>.<suffix>`` in the pod's directory; the container name is
    checked to be a DNS label (it becomes a path)."""
    dns_label(container)
    return f"{pod_dir}/containers/{container}.{suffix}"


def pod_tree(plan: JobPlan, script: str) -> list[TreeItem]:
    """The pod's directory as a tree under its namespace's: the directory, every directory the
    plan names or a file needs (parents first), the plan's files, then job.sh."""
    root = plan.pod_dir
    name = posixpath.basename(root)
    items = [TreeItem(name, POD_DIR_MODE)]
    made = {root}

    def directory(path: str) -> None:
        if path in made:
            return
        directory(posixpath.dirname(path))
        made.add(path)
        items.append(TreeItem(f"{name}/{path[len(root) + 1 :]}", POD_DIR_MODE))

    for d in plan.dirs:
        directory(inside(root, d))
    for f in plan.files:
        path = inside(root, f.path)
        directory(posixpath.dirname(path))
        items.append(TreeItem(f"{name}/{path[len(root) + 1 :]}", f.mode, f.content))
    items.append(TreeItem(f"{name}/job.sh", SCRIPT_MODE, script.encode()))
    return items


def write_pod(transport: Transport, plan: JobPlan, script: str) -> str:
    """Create the pod's directory with every file its job needs, in one transport call (one
    SSH exec, not an SFTP request per directory and file); returns the script path.

    On failure the directory is removed, so no half-written pod is ever submitted."""
    root = plan.pod_dir
    try:
        transport.write_tree(posixpath.dirname(root), NAMESPACE_DIR_MODE, pod_tree(plan, script))
    except OSError as err:
        transport.remove_tree(root)
        if err.errno == errno.ENAMETOOLONG:
            # The pod's own names are checked before (wire.relative_path); this is the backstop
            # for a filesystem with shorter names: the pod's doing, not a full disk.
            raise PodRejected(
                "spec.volumes", f"a file name of the pod is too long for {root}: {err}"
            ) from err
        reason = err.strerror or str(err)
        raise StorageError(f"cannot write the pod directory {root}: {reason}") from err
    return f"{root}/job.sh"


def _time(raw: bytes | None) -> datetime | None:
    if not raw:
        return None
    text = raw.decode(errors="replace").strip()
    # date prints nanoseconds; Python keeps microseconds.
    if "." in text:
        head, _, frac = text.partition(".")
        text = f"{head}.{frac.rstrip('Z')[:6]}+00:00"
    else:
        text = text.replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _int(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    try:
        return int(raw.strip())
    except ValueError:
        return None


def read_container(transport: Transport, pod_dir: str, container: str) -> ContainerFiles:
    """One container's state from its files, one read each (blocking); not started when
    there is no .started file."""
    return _container(
        lambda suffix, limit: transport.read_file(container_file(pod_dir, container, suffix), limit)
    )


def _message(raw: bytes | None) -> str | None:
    """A termination message as ils_message writes it (base64); None when there is none or it
    is not base64. Bytes that are not UTF-8 become U+FFFD, as Go's JSON encoder makes them."""
    if not raw:
        return None
    try:
        data = base64.b64decode(raw.strip(), validate=True)
    except ValueError:
        return None
    return data.decode(errors="replace") or None


def _last(raw: bytes | None, message: str | None) -> LastRun | None:
    """The run before a restart or requeue, from its .last line: "EXIT STARTED FINISHED"."""
    words = raw.split() if raw else []
    code = _int(words[0]) if len(words) == 3 else None
    if code is None:
        return None
    return LastRun(code, _time(words[1]), _time(words[2]), message)


def _container(read: Callable[[str, int], bytes | None]) -> ContainerFiles:
    """One container's state from its files, each read by ``read(suffix, limit)``."""
    # The run before the last restart or requeue: shown while the next one waits to start too.
    raw_last = read("last", 128)
    last = _last(raw_last, _message(read("last-message", MESSAGE_FILE_MAX))) if raw_last else None
    started = _time(read("started", 64))
    if started is None:
        return ContainerFiles(last=last)
    restarts = _int(read("restarts", 16))
    exit_code = _int(read("exit", 16))
    finished = _time(read("finished", 64))
    ready = None
    backoff = None
    if exit_code is None:  # readiness and back-off matter while it has not ended for good
        raw_ready = read("ready", 16)
        ready = None if raw_ready is None else raw_ready.strip() == b"true"
        raw_backoff = read("backoff", 32)
        words = raw_backoff.split() if raw_backoff is not None else []
        if len(words) == 2 and all(w.isdigit() for w in words):
            backoff = (int(words[0]), int(words[1]))
    return ContainerFiles(
        started=started,
        finished=finished,
        exit_code=exit_code,
        restarts=restarts or 0,
        ready=ready,
        backoff=backoff,
        # Written before the run's .finished: read with it.
        message=_message(read("message", MESSAGE_FILE_MAX)) if finished is not None else None,
        last=last,
    )


def read_runs(transport: Transport, pod_dir: str) -> int:
    """How many times the batch job has started (more than once when Slurm requeued it)."""
    raw = transport.read_file(f"{pod_dir}/job.runs", 16)
    try:
        return int(raw.strip()) if raw else 0
    except ValueError:
        return 0


@dataclass(frozen=True)
class PodFiles:
    """What a pod's job wrote of its state: each container's files, runs and eviction."""

    containers: dict[str, ContainerFiles]
    runs: int = 0  # times the batch job started (more than once when Slurm requeued it)
    evicted: str | None = None  # why the job evicted its pod (an emptyDir over its sizeLimit)


def read_pod(
    transport: Transport, pod_dir: str, containers: Sequence[str], job_ended: bool = False
) -> PodFiles:
    """A pod's state files, one read each (blocking): for one pod; every pod's at once is
    read_states. job.evicted is read only once the job or some container has ended."""
    files = {name: read_container(transport, pod_dir, name) for name in containers}
    evicted = None
    if job_ended or any(f.exit_code is not None for f in files.values()):
        # Only a pod whose containers have started ending can have been evicted: no read
        # for the others, the /status of a running pod is the hot path.
        raw = transport.read_file(f"{pod_dir}/job.evicted", 1024)
        evicted = raw.decode(errors="replace").strip() or None if raw is not None else None
    return PodFiles(files, read_runs(transport, pod_dir), evicted)


_STARTED = re.compile(rb"^interlink-slurm: pod \S+ starts as job (\d+) on ", re.MULTILINE)


def read_started_job(transport: Transport, pod_dir: str) -> str | None:
    """The job id the batch script wrote when it started (its first line in job.out), if it
    did: how a job that left Slurm's queue is still found after a crash."""
    raw = transport.read_file(f"{pod_dir}/job.out", 4096)
    match = _STARTED.search(raw or b"")
    return match.group(1).decode() if match else None


# --- every pod's state in one command --------------------------------------------------------

# /status needs of a pod only the small files its job script writes (ils_put: a temporary file
# renamed into place): containers/<name>.{started,finished,exit,restarts,ready,backoff},
# job.runs and job.evicted.
# A rename updates the mtime of the directories it takes a file from and puts it in, on a
# parallel filesystem too (the metadata server keeps it), where inotify sees nothing written
# from other nodes. ils_put makes its temporary file in the pod's directory, so a pod whose
# directory changed since the last read is one whose state files changed. One command finds
# those (one find over the data root's pod directories, whatever the number of pods: no
# argument per pod, no directory listed but the namespaces') and prints their files.
# After each state file, ils_put also writes the data root's STATE_MARK: while the mark is no
# newer than the last read, or keeps the stamp a read over a second later saw, no job wrote a
# state file since, and a read looks at no pod
# directory (an idle refresh of 10,000 pods is one stat, not 10,000), unless it is deep or asked
# to look at them all (a pod no read looked for yet, or one older than MARKED_SINCE). With no
# mark every read looks: the plugin makes it on a data root where no job has yet (ensure_mark).
# The deep read (given the time of the last one) also looks in each pod's containers/, for the
# pods whose job script renames within containers/ (written by an older version of the plugin,
# still running after an upgrade): a pod whose containers/ changed since the last deep read,
# and later than its own directory (else the reads above have seen the change).
# A pod's files are its job's (its user's) to write: symlinks are not followed, each file is
# read up to 1 kB (6 kB for a termination message, base64), every byte outside printable
# ASCII becomes "?", and each of a pod's lines is prefixed with "|", so nothing it writes can
# pass for another pod's.
STATE_MARK = ".state-changed"
# Since when the plugins on this data root have written job scripts that write the mark (the
# first start of such a plugin on it): a pod created before may run a script that writes none
# (an upgrade with pods running), and while one does, every read looks at every pod directory.
MARKED_SINCE = ".state-marked-since"
# Arguments: the data root, since (seconds), the deep read's since or "-", "mark" or "all",
# the mark's stamp (ns) as a read over a second after its writing saw it, or "-", and up to
# how many changed pods bash reads the files itself (READ_IN_BASH_MAX). "M" is
# printed with the mark's stamp by a read that looks at pod directories.
STATE_READER = r"""
export LC_ALL=C
cd -- "$1" || exit 3
# bash 5's clock needs no process; an older bash asks date.
if [[ -n ${EPOCHREALTIME:-} ]]; then echo "N $EPOCHREALTIME"; else echo "N $(date +%s.%N)"; fi
m=
if [[ -f .state-changed && ! -L .state-changed ]]; then
  m=$(date -r .state-changed +%s%N 2>/dev/null) && [[ $m =~ ^[0-9]+$ ]] || m=
fi
if [[ $3 == - && $4 == mark && -n $m ]]; then
  # Unchanged since a read that can trust it, or no newer than since: no job wrote.
  if [[ $m == "$5" ]] || (( m <= $2 * 1000000000 )); then exit 0; fi
fi
[[ -z $m ]] || echo "M $m"
dirs=()
while IFS= read -r d; do
  # Pod directories only: <namespace>/<name>-<uid>, with their containers/.
  [[ $d == */* && $d != */*/* ]] || continue
  [[ -d $d && ! -L $d && -d $d/containers && ! -L $d/containers ]] || continue
  echo "P $d"
  dirs+=("$d")
done < <(
  if [[ $3 == - ]]; then
    find . -mindepth 2 -maxdepth 2 -type d -newermt "@$2" -printf '%P\n' 2>/dev/null
  else
    find . -mindepth 2 -maxdepth 3 -type d -newermt "@$3" -printf '%T@ %P\n' 2>/dev/null \
      | awk -v since="$2" '{ t = $1 + 0; p = substr($0, length($1) + 2)
          if (p ~ /\/containers$/) c[substr(p, 1, length(p) - 11)] = t; else m[p] = t }
        END { for (p in m) if (m[p] > since + 0) print p
              for (p in c) if (!(p in m) || c[p] > m[p]) print p }'
  fi | sort -u)
[ "${#dirs[@]}" -gt 0 ] || exit 0
# Their state files (regular files, links not followed, at most 1 kB), the first line of each.
# A few pods (a refresh while pods start): read by bash itself, with no process to start (on
# 2 busy cores each one waited for a core). Many: in a few processes whatever their number.
if [ "${#dirs[@]}" -le "$6" ]; then
  shopt -s nullglob
  for d in "${dirs[@]}"; do
    for f in "$d"/job.runs "$d"/job.evicted "$d"/containers/*; do
      n=1024
      case $f in
        */containers/*.started | */containers/*.finished | */containers/*.exit) ;;
        */containers/*.restarts | */containers/*.ready | */containers/*.backoff) ;;
        */containers/*.last) ;;
        */containers/*.message | */containers/*.last-message) n=6144 ;;
        */containers/*) continue ;;
      esac
      [[ -f $f && ! -L $f ]] || continue
      c=
      IFS= read -r -N $(( n + 1 )) c 2>/dev/null <"$f"
      [[ -n $c && ${#c} -le $n ]] || continue
      l=${c%%$'\n'*}
      printf 'F %s\n|%s\n' "${f//[^!-~]/?}" "${l//[^ -~]/?}"
    done
  done
  exit 0
fi
printf '%s\0' "${dirs[@]}" \
  | xargs -0 sh -c 'find "$@" -maxdepth 2 -type f \( -size -2k \( -path "*/containers/*" \
      \( -name "*.started" -o -name "*.finished" -o -name "*.exit" -o -name "*.restarts" \
      -o -name "*.ready" -o -name "*.backoff" -o -name "*.last" \) -o -name job.runs \
      -o -name job.evicted \) -o -size -7k -path "*/containers/*" \( -name "*.message" \
      -o -name "*.last-message" \) \) -print0' ils-find \
  | xargs -0 -r awk 'FNR == 1 { n = FILENAME; gsub(/[^!-~]/, "?", n); print "F " n
      gsub(/[^ -~]/, "?"); print "|" $0; nextfile }'
"""


def marked_since(transport: Transport, data_root: str, now: float) -> float:
    """Since when the data root's pods have had job scripts that write STATE_MARK: what its
    MARKED_SINCE file says, else ``now`` (this plugin's start), written there. Raises
    OSError or SchedulerUnavailable."""
    path = f"{data_root.rstrip('/')}/{MARKED_SINCE}"
    raw = transport.read_file(path, 64)
    if raw is not None:
        with contextlib.suppress(ValueError):
            since = float(raw.decode(errors="replace").strip())
            if math.isfinite(since):
                return since
    transport.write_file(path, f"{now}\n".encode(), 0o600)
    return now


# A pod directory's (mtime_ns, its containers/' mtime_ns, when they were read: time_ns), as the
# in-process reader last read its files.
Stamp = tuple[int, int, int]
# A pod whose directories still have the stamps of a read that began this long after them is
# not read again: any later write would have changed one of them. Closer than that, two writes
# could share a timestamp (the kernel stamps files from a clock that ticks every few ms).
_SETTLED_NS = 1_000_000_000


def ensure_mark(transport: Transport, data_root: str) -> None:
    """STATE_MARK, made (empty, stamped now) where no job has written it yet: without it every
    read looks at every pod directory until a job writes a state file (a new data root whose
    first pods wait in the queue). A job's ils_put writes over it. Raises OSError or
    SchedulerUnavailable."""
    path = f"{data_root.rstrip('/')}/{STATE_MARK}"
    if transport.size(path) is None:
        transport.write_file(path, b"", 0o600)


@dataclass(frozen=True)
class StateRead:
    """What one pass of the reader found."""

    now: float  # the cluster side's clock (seconds) when it started
    changed: dict[str, PodFiles]  # pod dir → its files, for the pods that changed
    # Pod dir relative to the data root → its Stamp, for the pods asked about that this read
    # looked at (the in-process reader only), and STATE_MARK → the mark's; None when it looked
    # at none but new pods' (the mark said nothing changed). The next read takes them as
    # ``seen``, as they are.
    stamps: dict[str, Stamp] | None = None


def read_states(
    transport: Transport,
    data_root: str,
    since: float,
    pods: Mapping[str, Sequence[str]],
    timeout: float = 60,
    *,
    deep_since: float | None = None,
    whole: bool = False,
    seen: Mapping[str, Stamp] | None = None,
    look: Sequence[str] = (),
) -> StateRead:
    """The state files of the pods (pod dir → its containers) whose directory changed at or
    after ``since`` (the cluster side's clock), in one command; with ``deep_since`` (a deep
    read) also those whose containers/ alone changed after it. Unless deep or ``whole``, when
    the data root's STATE_MARK is no newer than ``since`` only the pod dirs ``look`` (pods no
    read has looked for) are looked at: where the files are here, those alone; through a
    command, every pod dir. Where the files are here, a pod whose directories still have the
    stamps ``seen`` (the last read's StateRead.stamps) is not read again; anywhere, a mark that
    still has its stamp there says nothing changed. Raises OSError or SchedulerUnavailable."""
    root = data_root.rstrip("/") or "/"
    prefix = root + "/" if root != "/" else "/"
    stamps: dict[str, Stamp] | None = None
    if isinstance(transport, LocalTransport):
        # The files are here: read in this process, with no child process to start (a refresh
        # while 20 pods start on 2 cores waited up to 0.4 s for the reader's 10 processes).
        now, raw, looked = scan_states(
            root,
            since,
            deep_since=deep_since,
            whole=whole,
            seen=seen,
            look=[p[len(prefix) :] for p in look if p.startswith(prefix)],
        )
        if looked is not None:
            stamps = {
                rel: v for rel, v in looked.items() if rel == STATE_MARK or prefix + rel in pods
            }
    else:
        deep = "-" if deep_since is None else str(max(0, int(deep_since)))
        mark = "all" if whole or look else "mark"
        known = seen.get(STATE_MARK) if seen is not None else None
        trusted = str(known[0]) if known is not None and _trusted(known) else "-"
        argv = [
            *("bash", "-c", STATE_READER, "ils-state"),
            *(root, str(max(0, int(since))), deep, mark, trusted, str(READ_IN_BASH_MAX)),
        ]
        try:
            result = transport.run(argv, timeout=timeout)
        except CommandUnavailable as err:
            raise OSError(f"cannot read the pods' state files: {err}") from err
        if result.returncode != 0:
            raise OSError(f"cannot read the pods' state files: {result.stderr.strip()[:500]}")
        now, raw, mark_ns = _parse_states(result.stdout)
        if mark_ns is not None:
            stamps = {STATE_MARK: (mark_ns, mark_ns, int(now * 1e9))}
    changed = {}
    for rel, files in raw.items():  # the changed ones only: an idle refresh maps no pod
        pod_dir = prefix + rel
        containers = pods.get(pod_dir)
        if containers is not None:
            changed[pod_dir] = pod_files(files, containers)
    return StateRead(now, changed, stamps)


def pod_files(files: Mapping[str, bytes], containers: Sequence[str]) -> PodFiles:
    """A pod's state from its files' first lines (name relative to the pod dir → bytes). The
    eviction is kept whenever written: the caller says when it counts (see read_pod)."""

    def container(name: str) -> ContainerFiles:
        return _container(lambda suffix, limit: files.get(f"containers/{name}.{suffix}"))

    raw_runs = files.get("job.runs")
    runs = _int(raw_runs) if raw_runs is not None else 0
    raw_evicted = files.get("job.evicted")
    evicted = raw_evicted.decode(errors="replace").strip() or None if raw_evicted else None
    return PodFiles({c: container(c) for c in containers}, runs or 0, evicted)


# What scan_states reads, as STATE_READER does: names, the largest size, and the bytes kept.
_POD_STATE_FILES = ("job.runs", "job.evicted")
_MESSAGE_SUFFIXES = (".message", ".last-message")  # read up to MESSAGE_FILE_MAX
_CONTAINER_STATE_SUFFIXES = (
    *(".started", ".finished", ".exit", ".restarts", ".ready", ".backoff", ".last"),
    *_MESSAGE_SUFFIXES,
)
# Up to how many changed pods STATE_READER reads their files with bash's own read (a refresh
# while pods start): a process per file type costs more there than bash's loop.
READ_IN_BASH_MAX = 64
_STATE_FILE_MAX = 1024  # find -size -2k: at most one 1 KiB unit
# A termination message: at most 4096 bytes, as base64 (find -size -7k).
MESSAGE_FILE_MAX = 6144
_UNPRINTABLE = re.compile(rb"[^ -~]")


def scan_states(
    root: str,
    since: float,
    *,
    deep_since: float | None = None,
    whole: bool = False,
    seen: Mapping[str, Stamp] | None = None,
    look: Sequence[str] = (),
) -> tuple[float, dict[str, dict[str, bytes]], dict[str, Stamp] | None]:
    """What STATE_READER prints, parsed (see _parse_states), read from this machine's files
    in this process: the pod directories under ``root`` (``<namespace>/<pod>``, with a
    containers/ directory, no symlink) changed after ``since``, with ``deep_since`` also those
    whose containers/ alone changed after it; for each, its state files' first lines. Unless
    deep or ``whole``, when the data root's STATE_MARK is no newer than ``since``, or still has
    the stamp ``seen`` gives it, only the pod directories ``look`` (relative: pods no read has
    looked for yet) are looked at.

    ``seen``: the stamps of the last read (relative pod dir → Stamp). A pod whose directories
    still have them, settled (see _settled), is left out: without it, every pod written in the
    last SINCE_MARGIN seconds was read again at every refresh (10 times a second while pods
    start). Returns the time, the files read, and the stamps of every pod looked at and of the
    mark (None when only ``look`` was). Raises OSError when ``root`` cannot be listed."""
    now_ns = time.time_ns()
    now = now_ns / 1e9
    changed: dict[str, dict[str, bytes]] = {}
    stamps: dict[str, Stamp] = {}
    deep = deep_since is not None

    def visit(path: str, rel: str) -> None:
        try:
            outer = os.lstat(path)
            newer = outer.st_mtime > since
            if not (newer or deep):
                return  # the common case: one stat per pod, no more
            inner = os.lstat(f"{path}/containers")
        except OSError:
            return
        if not (stat.S_ISDIR(outer.st_mode) and stat.S_ISDIR(inner.st_mode)):
            return
        if newer or (deep_since is not None and inner.st_mtime > max(deep_since, outer.st_mtime)):
            known = seen.get(rel) if seen is not None else None
            if known is not None and _settled(known, outer.st_mtime_ns, inner.st_mtime_ns):
                stamps[rel] = known
                return
            changed[rel] = _state_files(path)
            stamps[rel] = (outer.st_mtime_ns, inner.st_mtime_ns, now_ns)

    mark_ns = _mark_ns(root)
    if not (deep or whole) and _unmarked(mark_ns, since, seen):
        for rel in look:
            if rel.count("/") == 1 and ".." not in rel.split("/"):
                visit(f"{root}/{rel}", rel)
        return now, changed, None
    if mark_ns is not None:
        # Under a key no pod directory has (they are <namespace>/<pod>).
        stamps[STATE_MARK] = (mark_ns, mark_ns, now_ns)
    with os.scandir(root) as namespaces:
        spaces = [e for e in namespaces if e.is_dir(follow_symlinks=False)]
    for space in spaces:
        try:
            with os.scandir(space.path) as entries:
                pods = [e for e in entries if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue  # removed meanwhile, or not ours to read
        for pod in pods:
            visit(pod.path, f"{space.name}/{pod.name}")
    return now, changed, stamps


def _settled(known: Stamp, outer_ns: int, inner_ns: int) -> bool:
    """Whether a pod's directories, stamped ``outer_ns`` and ``inner_ns`` now, are as a read
    ``known`` left them, with no write since: the same stamps, from a clock finer than a second
    (a filesystem that stamps whole seconds can give two writes the same stamp, so its pods are
    read by ``since`` alone), and written over _SETTLED_NS before that read began."""
    return known[:2] == (outer_ns, inner_ns) and _trusted(known)


def _trusted(known: Stamp) -> bool:
    """Whether stamps a read saw would change with any later write: from a clock finer than a
    second, and over _SETTLED_NS older than that read."""
    outer, inner, read_ns = known
    if outer % 1_000_000_000 == 0 or inner % 1_000_000_000 == 0:
        return False
    return max(outer, inner) < read_ns - _SETTLED_NS


def _mark_ns(root: str) -> int | None:
    """The data root's STATE_MARK's stamp (ns), None when there is no such file."""
    try:
        info = os.lstat(f"{root}/{STATE_MARK}")
    except OSError:
        return None
    return info.st_mtime_ns if stat.S_ISREG(info.st_mode) else None


def _unmarked(mark_ns: int | None, since: float, seen: Mapping[str, Stamp] | None) -> bool:
    """Whether no job wrote a state file since the last read, by the data root's mark: no
    newer than ``since``, or as the last read that looked at the pods saw it, settled (see
    _settled: without it, each mark written made every read for SINCE_MARGIN seconds look at
    every pod directory, 10 times a second while pods start)."""
    if mark_ns is None:
        return False  # no mark to trust
    if mark_ns / 1e9 <= since:
        return True
    known = seen.get(STATE_MARK) if seen is not None else None
    return known is not None and _settled(known, mark_ns, mark_ns)


def _state_files(pod_dir: str) -> dict[str, bytes]:
    """A pod's state files (name relative to the pod dir → first line), as STATE_READER
    reads them: regular files only, links not followed, at most _STATE_FILE_MAX bytes, bytes
    outside printable ASCII as "?"; an empty file is left out."""
    names = list(_POD_STATE_FILES)
    with contextlib.suppress(OSError), os.scandir(f"{pod_dir}/containers") as entries:
        names += [
            f"containers/{e.name}" for e in entries if e.name.endswith(_CONTAINER_STATE_SUFFIXES)
        ]
    files: dict[str, bytes] = {}
    for name in names:
        limit = MESSAGE_FILE_MAX if name.endswith(_MESSAGE_SUFFIXES) else _STATE_FILE_MAX
        line = _first_line(f"{pod_dir}/{name}", limit)
        if line is not None:
            files[name] = line
    return files


def _first_line(path: str, limit: int) -> bytes | None:
    try:
        # O_NONBLOCK: a FIFO with a state file's name must not hang the refresh (fstat then
        # refuses it); O_NOFOLLOW: a link is not followed.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return None
        data = os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)
    if not data:
        return None
    return _UNPRINTABLE.sub(b"?", data.split(b"\n", 1)[0])


def _parse_states(stdout: str) -> tuple[float, dict[str, dict[str, bytes]], int | None]:
    """The reader's output: "N <now>", "M <the mark's stamp>" when it looked at pod
    directories, "P <pod dir>" for each changed pod (relative to the root), then
    "F <pod dir>/<file>" and "|<its first line>" for each of their files."""
    now = 0.0
    mark_ns: int | None = None
    changed: dict[str, dict[str, bytes]] = {}
    name: tuple[str, str] | None = None
    for line in stdout.splitlines():
        if line.startswith("N "):
            with contextlib.suppress(ValueError):
                now = float(line[2:])
        elif line.startswith("M "):
            with contextlib.suppress(ValueError):
                mark_ns = int(line[2:])
        elif line.startswith("P "):
            changed.setdefault(line[2:], {})
        elif line.startswith("F "):
            parts = line[2:].split("/", 2)
            name = ("/".join(parts[:2]), parts[2]) if len(parts) == 3 else None
        elif line.startswith("|") and name is not None:
            pod, file = name
            if pod in changed:
                changed[pod].setdefault(file, line[1:].encode())
            name = None
    return now, changed, mark_ns
