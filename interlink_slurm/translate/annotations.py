"""Pod annotations users already write → checked sbatch options and runtime arguments. Pure.

User text never reaches the script as written: sbatch flags are tokenised like a shell (shlex),
each option is looked up in ``SBATCH_OPTIONS`` (short and long forms, abbreviations refused),
checked against the configured allowlist, and written back in its canonical ``--name=value``
form. Runtime options and mounts get the same treatment, and so do the MPI launcher's options
(``launcher_options.py``; the launcher runs on the host, so options acting there need
``allow_user_shell``). Only the two annotations that *are* shell code (pre-exec, wstunnel
commands) are used as written, and only when the operator allows it (``allow_user_shell``).
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
import shlex
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from interlink_slurm.errors import PodRejected
from interlink_slurm.launcher_options import (
    DEFAULT_MPI_FLAGS_ALLOWED,
    LAUNCHER_OPTIONS,
    canonical,
    scan_launcher_options,
)
from interlink_slurm.sbatch_options import SBATCH_OPTIONS as SBATCH_OPTIONS
from interlink_slurm.sbatch_options import OptionError, parse_options
from interlink_slurm.translate.runtimes import RUNTIMES, runtime_of
from interlink_slurm.translate.volumes import allowed_host_path

# Annotations of the reference plugin and of interLink (see the wire-format reference).
FLAGS = "slurm-job.vk.io/flags"
PRE_EXEC = "slurm-job.vk.io/pre-exec"
SINGULARITY_MOUNTS = "slurm-job.vk.io/singularity-mounts"
SINGULARITY_OPTIONS = "slurm-job.vk.io/singularity-options"
IMAGE_ROOT = "slurm-job.vk.io/image-root"
MPI_FLAGS = "slurm-job.vk.io/mpi-flags"
FLAVOR = "slurm-job.vk.io/flavor"
POD_IP = "interlink.eu/pod-ip"
WSTUNNEL = "interlink.eu/wstunnel-client-commands"
# Our own.
NODES = "interlink-slurm/nodes"
TASKS_PER_NODE = "interlink-slurm/tasks-per-node"
MPI_LAUNCHER = "interlink-slurm/mpi-launcher"
TARGETS = "interlink-slurm/targets"  # placement: the targets a pod may go to, comma-separated

USER_SHELL_ANNOTATIONS = (PRE_EXEC, WSTUNNEL)


# Never from a pod, whatever the configuration says: the plugin owns the job's identity, files
# and directory (--comment, --output, --error, --chdir, --open-mode), the job runs as the
# plugin's user (--uid, --gid), and the script is the plugin's (--wrap, --export*, --array...).
# --job-name is only a label: the pod's UID is in the comment, which is what finds the job again
# (reconcile, slurmrestd's errors), so a pod may name its job (vk-test-set's pods do).
NEVER_USER_FLAGS = frozenset(
    {
        "--array",
        "--batch",
        "--chdir",
        "--clusters",
        "--comment",
        "--container",
        "--error",
        "--export",
        "--export-file",
        "--get-user-env",
        "--gid",
        "--input",
        "--nodefile",
        "--open-mode",
        "--output",
        "--parsable",
        "--test-only",
        "--uid",
        "--wait",
        "--wrap",
    }
)
# Each of them also has a translation for slurmrestd (slurm/rest.py), so a pod behaves the same
# whichever scheduler the site uses.
DEFAULT_USER_FLAGS_ALLOWED = (
    "--account",  # only with allow_account_annotation
    "--constraint",
    "--cpus-per-gpu",
    "--cpus-per-task",
    "--dependency",
    "--distribution",
    "--exclusive",
    "--gpu-bind",
    "--gpus",
    "--gpus-per-node",
    "--gpus-per-task",
    "--gres",
    "--hint",
    "--job-name",
    "--licenses",
    "--mail-type",
    "--mail-user",
    "--mem",
    "--mem-per-cpu",
    "--mem-per-gpu",
    "--nice",
    "--no-requeue",
    "--nodes",
    "--ntasks",
    "--ntasks-per-core",
    "--ntasks-per-gpu",
    "--ntasks-per-node",
    "--ntasks-per-socket",
    "--partition",  # only partitions in user_partitions_allowed
    "--prefer",
    "--qos",  # only QOS in user_qos_allowed, when set
    "--requeue",
    "--reservation",
    "--signal",
    "--threads-per-core",
    "--time",  # at most max_time
    "--time-min",
    "--tmp",
)
# sbatch options that must not appear twice in one job: a later one replaces an earlier one, and
# one of a group replaces the others (sbatch refuses --mem with --mem-per-cpu, and a task or GPU
# count given twice in two forms is ambiguous).
MEMORY_OPTIONS = frozenset({"--mem", "--mem-per-cpu", "--mem-per-gpu"})
REPLACING_GROUPS = (
    MEMORY_OPTIONS,
    frozenset({"--ntasks", "--ntasks-per-node"}),
    frozenset({"--gres", "--gpus", "--gpus-per-node", "--gpus-per-task"}),
)

# What a flag value may hold: what sbatch values are made of (times, node lists, GRES, e-mail
# addresses, dependencies, constraints with & | [ ]). No blank, quote, '#', '$', '\' or ';':
# the value is written in an #SBATCH line and read again by sbatch and slurmrestd.
_FLAG_VALUE = re.compile(r"[A-Za-z0-9_.,:=+/@%*\[\]()!&|~^-]*")


def _tokens(text: str, annotation: str) -> list[str]:
    if "\x00" in text:
        raise PodRejected(f"metadata.annotations[{annotation}]", "must not contain NUL characters")
    try:
        return shlex.split(text, comments=False, posix=True)
    except ValueError as err:
        raise PodRejected(
            f"metadata.annotations[{annotation}]", f"cannot be split like a shell line: {err}"
        ) from err


@dataclass(frozen=True)
class FlagPolicy:
    """What a pod may ask with ``slurm-job.vk.io/flags``."""

    allowed: Collection[str]
    partitions: Collection[str] | None  # None: any
    qos: Collection[str] | None  # None: any
    account: bool  # whether --account may be given
    # Open by default no more: each needs the site's list, or None for "any" said explicitly.
    reservations: Collection[str] | None = ()
    dependencies: Collection[str] | None = ()  # dependency types: afterok, singleton...
    mail: Collection[str] | None = ()  # addresses, or @domain


# Where each of them is configured, for the messages.
_LISTED = {
    "--qos": ("QOS", "user_qos_allowed"),
    "--reservation": ("reservation", "user_reservations_allowed"),
    "--dependency": ("dependency type", "user_dependencies_allowed"),
    "--mail-user": ("address", "user_mail_allowed"),
}
_DEPENDENCY_SEP = re.compile(r"[,?]")


def _listed_values(name: str, value: str) -> list[str]:
    """What of a value the site's list must hold: each QOS or reservation, each dependency's
    type (``afterok:123:456`` → afterok), each address."""
    if name == "--dependency":
        return [d.split(":", 1)[0] for d in _DEPENDENCY_SEP.split(value)]
    if name == "--qos":
        return [value]
    return value.split(",")


def _mail_allowed(address: str, allowed: Collection[str]) -> bool:
    return address in allowed or "@" + address.rpartition("@")[2] in allowed


def _check_listed(where: str, name: str, value: str, policy: FlagPolicy) -> None:
    allowed = {
        "--qos": policy.qos,
        "--reservation": policy.reservations,
        "--dependency": policy.dependencies,
        "--mail-user": policy.mail,
    }[name]
    if allowed is None:
        return
    what, key = _LISTED[name]
    if name == "--mail-user":
        bad = [v for v in _listed_values(name, value) if not _mail_allowed(v, allowed)]
    else:
        bad = [v for v in _listed_values(name, value) if v not in allowed]
    if bad:
        raise PodRejected(
            where,
            f"{name} {','.join(bad)}: this {what} is not allowed "
            f"(allowed: {', '.join(sorted(allowed)) or f'none; the site lists them in {key}'})",
        )


def user_flags(text: str, policy: FlagPolicy) -> list[str]:
    """The annotation's sbatch options as canonical ``--name[=value]`` directives."""
    where = f"metadata.annotations[{FLAGS}]"
    try:
        options = parse_options(_tokens(text, FLAGS))
    except OptionError as err:
        raise PodRejected(where, str(err)) from err
    out = []
    for name, value in options:
        if name in NEVER_USER_FLAGS or name not in policy.allowed:
            raise PodRejected(
                where,
                f"sbatch option {name} is not allowed here "
                f"(allowed: {', '.join(sorted(policy.allowed)) or 'none'})"
                if name not in NEVER_USER_FLAGS
                else f"sbatch option {name} is set by interlink-slurm and cannot be given by a pod",
            )
        if value is not None and not _FLAG_VALUE.fullmatch(value):
            raise PodRejected(where, f"{name}: {value!r} is not a value this plugin passes on")
        if value == "":
            raise PodRejected(where, f"{name} has an empty value")
        if name == "--account" and not policy.account:
            raise PodRejected(
                where, "sbatch option --account is not allowed: the site chooses the account"
            )
        if name == "--partition" and policy.partitions is not None:
            assert value is not None
            bad = [p for p in value.split(",") if p not in policy.partitions]
            if bad:
                raise PodRejected(
                    where,
                    f"--partition {','.join(bad)} is not allowed "
                    f"(allowed: {', '.join(sorted(policy.partitions)) or 'none'})",
                )
        if name in _LISTED:
            assert value is not None
            _check_listed(where, name, value, policy)
        if name == "--nice" and value is not None and not value.isdigit():
            # A negative nice raises the job's priority over other users' (when the plugin
            # runs as root, Slurm honours it).
            raise PodRejected(where, f"--nice={value}: only a whole number of 0 or more")
        out.append(f"{name}={value}" if value is not None else name)
    return out


def option_name(directive: str) -> str:
    return directive.split("=", 1)[0]


def merge_directives(base: Sequence[str], later: Sequence[str]) -> list[str]:
    """``base`` then ``later``; an option of ``later`` replaces the same option of ``base``, or
    any option of its group (``REPLACING_GROUPS``), so sbatch sees each once."""
    names = {option_name(d) for d in later}
    for group in REPLACING_GROUPS:
        if names & group:
            names |= group
    return [d for d in base if option_name(d) not in names] + list(later)


# --- Apptainer / Singularity options -------------------------------------------------------------

# Options a pod may add with slurm-job.vk.io/singularity-options, and whether they take a value.
RUNTIME_OPTION_VALUES: dict[str, bool] = {
    "--nv": False,
    "--nvccli": False,
    "--rocm": False,
    "--cleanenv": False,
    "--contain": False,
    "--containall": False,
    "--no-home": False,
    "--no-init": False,
    "--no-privs": False,
    "--no-umask": False,
    "--no-eval": False,
    "--writable-tmpfs": False,
    "--compat": False,
    "--ipc": False,
    "--pid": False,
    "--uts": False,
    "--no-mount": True,
    "--env": True,
    "--hostname": True,
    "--pwd": True,
    "--userns": False,
    "--unsquash": False,
    "--fakeroot": False,
    "--net": False,
    "--network": True,
    "--security": True,
    "--add-caps": True,
    "--drop-caps": True,
    "--overlay": True,
    "--home": True,
    "--bind": True,
    "--mount": True,
    "--scratch": True,
    "--workdir": True,
}
DEFAULT_RUNTIME_OPTIONS_ALLOWED = (
    "--nv",
    "--nvccli",
    "--rocm",
    "--cleanenv",
    "--contain",
    "--containall",
    "--no-home",
    "--no-init",
    "--no-umask",
    "--no-eval",
    "--writable-tmpfs",
    "--compat",
    "--ipc",
    "--pid",
    "--no-mount",
    "--env",
    "--pwd",
)
_RUNTIME_VALUE = re.compile(r"[^\x00\n]*")


def _apptainer_like() -> str:
    return " and ".join(n for n, rt in RUNTIMES.items() if rt.takes_apptainer_options)


def runtime_options(text: str, runtime: str, allowed: Collection[str]) -> list[str]:
    """slurm-job.vk.io/singularity-options → checked Apptainer/Singularity options."""
    where = f"metadata.annotations[{SINGULARITY_OPTIONS}]"
    if not runtime_of(runtime).takes_apptainer_options:
        raise PodRejected(where, f"only for the {_apptainer_like()} runtimes, not {runtime}")
    tokens = _tokens(text, SINGULARITY_OPTIONS)
    out: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        name, eq, value = tok.partition("=")
        if name not in RUNTIME_OPTION_VALUES or name not in allowed:
            raise PodRejected(
                where,
                f"{name!r} is not allowed (allowed: {', '.join(sorted(allowed)) or 'none'}; "
                f"mounts go in {SINGULARITY_MOUNTS})",
            )
        if RUNTIME_OPTION_VALUES[name]:
            if not eq:
                if i >= len(tokens):
                    raise PodRejected(where, f"{name} needs a value")
                value = tokens[i]
                i += 1
            if value.startswith("-"):
                raise PodRejected(where, f"{name}: {value!r} is not a value")
            out += [name, value]
        else:
            if eq:
                raise PodRejected(where, f"{name} takes no value")
            out.append(name)
    return out


def runtime_mounts(text: str, runtime: str, host_path_prefixes: Sequence[str]) -> list[str]:
    """slurm-job.vk.io/singularity-mounts (``--bind SRC[:DST[:ro|rw]],...``) → ``--bind`` options
    whose host paths lie under the host paths pods may mount (as for hostPath volumes)."""
    where = f"metadata.annotations[{SINGULARITY_MOUNTS}]"
    if not runtime_of(runtime).takes_apptainer_options:
        raise PodRejected(where, f"only for the {_apptainer_like()} runtimes, not {runtime}")
    tokens = _tokens(text, SINGULARITY_MOUNTS)
    specs: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        name, eq, value = tok.partition("=")
        if name in ("--bind", "-B"):
            if not eq:
                if i >= len(tokens):
                    raise PodRejected(where, f"{name} needs a value")
                value = tokens[i]
                i += 1
            specs += value.split(",")
        elif not tok.startswith("-"):
            specs += tok.split(",")  # a bare SRC:DST list, as some users write it
        else:
            raise PodRejected(where, f"{tok!r}: only --bind SRC[:DST[:ro|rw]] is accepted")
    out: list[str] = []
    allowed = ", ".join(host_path_prefixes) or "none configured"
    for spec in specs:
        if not spec:
            continue
        parts = spec.split(":")
        if len(parts) > 3 or any("\n" in p or "\x00" in p for p in parts):
            raise PodRejected(where, f"{spec!r} is not SRC[:DST[:ro|rw]]")
        src = parts[0]
        dst = parts[1] if len(parts) > 1 else src
        mode = parts[2] if len(parts) > 2 else "rw"
        if mode not in ("ro", "rw"):
            raise PodRejected(where, f"{spec!r}: the mount option must be ro or rw")
        if not src.startswith("/") or not dst.startswith("/"):
            raise PodRejected(where, f"{spec!r}: both paths must be absolute")
        if not allowed_host_path(src, host_path_prefixes):
            raise PodRejected(
                where, f"{src!r} is outside the host paths pods may mount ({allowed})"
            )
        out += ["--bind", f"{posixpath.normpath(src)}:{dst}:{mode}"]
    return out


# --- MPI -----------------------------------------------------------------------------------------

NTASKS = "\x00NTASKS"  # stands for "$SLURM_NTASKS" in a launcher argv (NUL: never user text)
LAUNCHERS = ("srun", "mpirun", "mpiexec")


@dataclass(frozen=True)
class Mpi:
    nodes: int
    tasks_per_node: int
    launcher: tuple[str, ...]  # empty: containers run once, on the first node


def _positive(annotations: Mapping[str, str], key: str, limit: int) -> int | None:
    raw = annotations.get(key)
    if raw is None:
        return None
    if not raw.strip().isdigit() or not 1 <= int(raw) <= limit:
        raise PodRejected(
            f"metadata.annotations[{key}]", f"{raw!r} must be a whole number from 1 to {limit}"
        )
    return int(raw)


def launcher_flags(
    text: str, launcher: str, allowed: Collection[str], user_shell: bool
) -> list[str]:
    """slurm-job.vk.io/mpi-flags → checked options of the launcher, in its canonical form.

    The launcher runs on the host: an option that runs a program, names a file or changes the
    tasks' directory, environment or user is refused unless the site runs pods' shell code."""
    where = f"metadata.annotations[{MPI_FLAGS}]"
    table = LAUNCHER_OPTIONS[launcher]
    try:
        options = scan_launcher_options(_tokens(text, MPI_FLAGS), table)
    except OptionError as err:
        raise PodRejected(where, str(err)) from err
    out: list[str] = []
    for written, name, values in options:
        if name in table.host and not user_shell:
            raise PodRejected(
                where,
                f"{launcher} option {written} runs a program, names a file or changes the "
                "directory, environment or user of the tasks on the host, and this site does "
                "not run code of the pod's choosing there (allow_user_shell: false)",
            )
        if name not in allowed:
            raise PodRejected(
                where,
                f"{launcher} option {written} is not allowed here "
                f"(allowed: {', '.join(sorted(allowed)) or 'none'}; mpi_flags_allowed)",
            )
        for value in values:
            if "\x00" in value or "\n" in value or value == "":
                raise PodRejected(where, f"{written}: {value!r} is not a value")
            if not table.joined and value.startswith("-"):
                # Written as a word of its own, the launcher would read it as an option.
                raise PodRejected(where, f"{written}: {value!r} is not a value")
        out += canonical(table, name, values)
    return out


def mpi(
    annotations: Mapping[str, str],
    allowed: Mapping[Any, Collection[str]] | None = None,
    user_shell: bool = True,
) -> Mpi:
    """Nodes, tasks per node and how the containers are launched across them.

    ``slurm-job.vk.io/mpi-flags`` (as the reference plugin) launches the containers with
    ``mpiexec -np $SLURM_NTASKS <flags>``; ``interlink-slurm/mpi-launcher`` picks srun, mpirun
    or mpiexec instead. More than one node or task with no launcher is launched with srun.
    ``allowed``: the options a pod may give, by launcher (default DEFAULT_MPI_FLAGS_ALLOWED)."""
    nodes = _positive(annotations, NODES, 10000)
    tasks = _positive(annotations, TASKS_PER_NODE, 100000) or 1
    flags_text = annotations.get(MPI_FLAGS)
    launcher_name = annotations.get(MPI_LAUNCHER)
    if nodes is None and (flags_text is not None or launcher_name is not None):
        # A launcher runs on every node of the job, also of one whose nodes the sbatch flags
        # ask (as pods written for the reference plugin do): each node needs its directories.
        nodes = _flag_nodes(annotations.get(FLAGS))
    nodes = nodes or 1
    if launcher_name is not None and launcher_name not in LAUNCHERS:
        raise PodRejected(
            f"metadata.annotations[{MPI_LAUNCHER}]",
            f"{launcher_name!r} must be one of {', '.join(LAUNCHERS)}",
        )
    if launcher_name is None:
        if flags_text is not None:
            launcher_name = "mpiexec"
        elif nodes > 1 or tasks > 1:
            launcher_name = "srun"
    if launcher_name is None:
        return Mpi(nodes, tasks, ())
    flags: list[str] = []
    if flags_text not in (None, "true"):
        if allowed is None:
            allowed = DEFAULT_MPI_FLAGS_ALLOWED
        flags = launcher_flags(
            flags_text or "", launcher_name, allowed.get(launcher_name, ()), user_shell
        )
    if launcher_name == "srun":
        return Mpi(nodes, tasks, ("srun", *flags))
    return Mpi(nodes, tasks, (launcher_name, "-np", NTASKS, *flags))


def _flag_nodes(text: str | None) -> int | None:
    """The node count of ``--nodes``/``-N`` in slurm-job.vk.io/flags, if any (unreadable flags
    are refused by user_flags)."""
    try:
        options = parse_options(_tokens(text or "", FLAGS))
    except (OptionError, PodRejected):
        return None
    values = [value for name, value in options if name == "--nodes"]
    if not values or values[-1] is None:
        return None
    if not values[-1].isdigit() or not 1 <= int(values[-1]) <= 10000:
        raise PodRejected(
            f"metadata.annotations[{FLAGS}]",
            f"--nodes={values[-1]}: with an MPI launcher, the node count must be one whole "
            f"number from 1 to 10000 (or give it in {NODES})",
        )
    return int(values[-1])


def pod_ip(annotations: Mapping[str, str]) -> str | None:
    raw = annotations.get(POD_IP)
    if raw is None or raw == "":
        return None
    try:
        return str(ipaddress.ip_address(raw.strip()))
    except ValueError as err:
        raise PodRejected(
            f"metadata.annotations[{POD_IP}]", f"{raw!r} is not an IP address"
        ) from err


def user_shell(annotations: Mapping[str, str], allowed: bool) -> dict[str, str]:
    """The shell-code annotations a pod carries (pre-exec, wstunnel commands), refused by name
    when the site does not let pods run shell code of their own in the job."""
    found = {k: annotations[k] for k in USER_SHELL_ANNOTATIONS if annotations.get(k, "").strip()}
    if found and not allowed:
        raise PodRejected(
            f"metadata.annotations[{next(iter(found))}]",
            "this site does not run shell code from pod annotations (allow_user_shell: false); "
            f"remove {' and '.join(found)}",
        )
    for k, v in found.items():
        if "\x00" in v:
            raise PodRejected(f"metadata.annotations[{k}]", "must not contain NUL characters")
    return found


# --- interLink's full mesh ------------------------------------------------------------------------

# interLink's virtual kubelet (Network.FullMesh) prepends to slurm-job.vk.io/pre-exec a heredoc
# writing its mesh script, a template that runs its arguments inside the mesh's network
# namespace (slirp4netns + WireGuard over wstunnel).
_MESH_OPENING = re.compile(r"""\s*cat\s+<<\s*'EOFMESH'\s*>\s*"?\$\{?TMPDIR\}?/mesh\.sh"?\s*""")
MESH_END = "EOFMESH"


def split_mesh(pre_exec: str) -> tuple[str | None, str]:
    """(the mesh script, the rest of the pre-exec) when the pre-exec holds interLink's mesh
    heredoc; (None, pre_exec) otherwise (also when the heredoc is never closed)."""
    lines = pre_exec.split("\n")
    for start, line in enumerate(lines):
        if not _MESH_OPENING.fullmatch(line):
            continue
        for end in range(start + 1, len(lines)):
            if lines[end].rstrip("\r") == MESH_END:
                body = "\n".join(lines[start + 1 : end]) + "\n"
                rest = "\n".join([*lines[:start], *lines[end + 1 :]])
                return body, rest
        break
    return None, pre_exec
