"""The MPI launchers' options (srun, mpirun, mpiexec) a pod may give in
``slurm-job.vk.io/mpi-flags``: which exist, whether they take a value, and which of them act on
the host. Pure, with no imports from the rest of the package but the sbatch option parser.

A launcher runs on the compute node outside the container, as the job's user: an option that
runs a program, names a file, or changes the directory, the environment or the user of the
tasks gives the pod the host (srun ``--task-prolog``, ``--output``; mpirun ``-x``, ``--mca``,
``--launch-agent``...). Those are ``host`` options: only a site that runs pods' shell code
(``allow_user_shell: true``) may allow them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from interlink_slurm.sbatch_options import Arity, OptionError, OptionSpec, scan_options

_R, _N, _O = Arity.REQUIRED, Arity.NONE, Arity.OPTIONAL


@dataclass(frozen=True)
class LauncherOptions:
    """One MPI launcher's options: which exist, which act on the host, which the plugin sets."""

    name: str
    options: dict[str, OptionSpec]
    host: frozenset[str]  # run a program, name a file, change directory, environment or user
    owned: frozenset[str]  # set by interlink-slurm (the task count)
    two_values: frozenset[str] = frozenset()  # --mca NAME VALUE
    single_dash: bool = False  # mpirun/mpiexec also read -bind-to as --bind-to, and never bundle
    joined: bool = False  # written back as --name=value (srun) or as two words (mpirun)


# srun (Slurm 22.05-23.11), long name → short form and value.
_SRUN = {
    "--accel-bind": OptionSpec(None, _R),
    "--bcast": OptionSpec(None, _O),
    "--bcast-exclude": OptionSpec(None, _R),
    "--chdir": OptionSpec("-D", _R),
    "--container": OptionSpec(None, _R),
    "--cpu-bind": OptionSpec(None, _R),
    "--cpu-freq": OptionSpec(None, _R),
    "--cpus-per-gpu": OptionSpec(None, _R),
    "--cpus-per-task": OptionSpec("-c", _R),
    "--disable-status": OptionSpec("-X", _N),
    "--distribution": OptionSpec("-m", _R),
    "--epilog": OptionSpec(None, _R),
    "--error": OptionSpec("-e", _R),
    "--exact": OptionSpec(None, _N),
    "--exclude": OptionSpec("-x", _R),
    "--export": OptionSpec(None, _R),
    "--gid": OptionSpec(None, _R),
    "--gpu-bind": OptionSpec(None, _R),
    "--gpus": OptionSpec("-G", _R),
    "--gpus-per-task": OptionSpec(None, _R),
    "--gres": OptionSpec(None, _R),
    "--hint": OptionSpec(None, _R),
    "--input": OptionSpec("-i", _R),
    "--jobid": OptionSpec(None, _R),
    "--kill-on-bad-exit": OptionSpec("-K", _O),
    "--label": OptionSpec("-l", _N),
    "--mem": OptionSpec(None, _R),
    "--mem-bind": OptionSpec(None, _R),
    "--mem-per-cpu": OptionSpec(None, _R),
    "--mpi": OptionSpec(None, _R),
    "--multi-prog": OptionSpec(None, _N),
    "--nodefile": OptionSpec("-F", _R),
    "--nodelist": OptionSpec("-w", _R),
    "--nodes": OptionSpec("-N", _R),
    "--ntasks": OptionSpec("-n", _R),
    "--ntasks-per-core": OptionSpec(None, _R),
    "--ntasks-per-gpu": OptionSpec(None, _R),
    "--ntasks-per-node": OptionSpec(None, _R),
    "--ntasks-per-socket": OptionSpec(None, _R),
    "--open-mode": OptionSpec(None, _R),
    "--output": OptionSpec("-o", _R),
    "--overlap": OptionSpec(None, _N),
    "--preserve-env": OptionSpec("-E", _N),
    "--prolog": OptionSpec(None, _R),
    "--propagate": OptionSpec(None, _O),
    "--pty": OptionSpec(None, _N),
    "--quiet": OptionSpec("-Q", _N),
    "--relative": OptionSpec("-r", _R),
    "--send-libs": OptionSpec(None, _O),
    "--task-epilog": OptionSpec(None, _R),
    "--task-prolog": OptionSpec(None, _R),
    "--threads-per-core": OptionSpec(None, _R),
    "--time": OptionSpec("-t", _R),
    "--uid": OptionSpec(None, _R),
    "--unbuffered": OptionSpec("-u", _N),
    "--verbose": OptionSpec("-v", _N),
    "--wait": OptionSpec("-W", _R),
    "--x11": OptionSpec(None, _O),
}
SRUN = LauncherOptions(
    "srun",
    _SRUN,
    host=frozenset(
        {
            "--bcast",  # copies a file to a path of the pod's choosing
            "--bcast-exclude",
            "--chdir",
            "--container",  # an OCI bundle directory on the host
            "--epilog",  # programs run by srun
            "--error",  # files written by srun
            "--export",  # the tasks' environment
            "--gid",
            "--input",
            "--jobid",  # steps in another job
            "--multi-prog",  # the command becomes a file of programs
            "--nodefile",
            "--open-mode",
            "--output",
            "--preserve-env",
            "--prolog",
            "--propagate",  # resource limits of the tasks
            "--pty",
            "--send-libs",
            "--task-epilog",
            "--task-prolog",
            "--uid",
            "--x11",
        }
    ),
    owned=frozenset(),
    joined=True,
)

# Open MPI's mpirun (4.x, 5.x), by its long names; "-bind-to" reads as "--bind-to".
_MPIRUN = {
    "--allow-run-as-root": OptionSpec(None, _N),
    "--am": OptionSpec(None, _R),
    "--app": OptionSpec(None, _R),
    "--bind-to": OptionSpec(None, _R),
    "--cpu-set": OptionSpec(None, _R),
    "--cpus-per-proc": OptionSpec(None, _R),
    "--cpus-per-rank": OptionSpec(None, _R),
    "--debugger": OptionSpec(None, _R),
    "--default-hostfile": OptionSpec(None, _R),
    "--display-allocation": OptionSpec(None, _N),
    "--display-devel-map": OptionSpec(None, _N),
    "--display-map": OptionSpec(None, _N),
    "--gmca": OptionSpec(None, _R),
    "--host": OptionSpec("-H", _R),
    "--hostfile": OptionSpec(None, _R),
    "--launch-agent": OptionSpec(None, _R),
    "--machinefile": OptionSpec(None, _R),
    "--map-by": OptionSpec(None, _R),
    "--mca": OptionSpec(None, _R),
    "--merge-stderr-to-stdout": OptionSpec(None, _N),
    "--nolocal": OptionSpec(None, _N),
    "--nooversubscribe": OptionSpec(None, _N),
    "--npernode": OptionSpec(None, _R),
    "--npersocket": OptionSpec(None, _R),
    "--output": OptionSpec(None, _R),
    "--output-filename": OptionSpec(None, _R),
    "--oversubscribe": OptionSpec(None, _N),
    "--path": OptionSpec(None, _R),
    "--prefix": OptionSpec(None, _R),
    "--preload-binary": OptionSpec(None, _N),
    "--preload-files": OptionSpec(None, _R),
    "--quiet": OptionSpec("-q", _N),
    "--rank-by": OptionSpec(None, _R),
    "--report-bindings": OptionSpec(None, _N),
    "--report-pid": OptionSpec(None, _R),
    "--report-uri": OptionSpec(None, _R),
    "--tag-output": OptionSpec(None, _N),
    "--timestamp-output": OptionSpec(None, _N),
    "--tmpdir": OptionSpec(None, _R),
    "--tune": OptionSpec(None, _R),
    "--use-hwthread-cpus": OptionSpec(None, _N),
    "--verbose": OptionSpec("-v", _N),
    "--wd": OptionSpec(None, _R),
    "--wdir": OptionSpec(None, _R),
    "--xml": OptionSpec(None, _N),
    "-x": OptionSpec(None, _R),
}
_MPIRUN_HOST = frozenset(
    {
        "--am",  # files of MCA parameters
        "--app",  # a file of programs
        "--debugger",
        "--default-hostfile",
        "--gmca",  # MCA parameters choose programs (plm_rsh_agent) and files
        "--hostfile",
        "--launch-agent",  # the program started on each node
        "--machinefile",
        "--mca",
        "--output",  # Open MPI 5: file=PATH
        "--output-filename",
        "--path",  # where programs are looked up
        "--prefix",
        "--preload-binary",
        "--preload-files",
        "--report-pid",
        "--report-uri",
        "--tmpdir",
        "--tune",
        "--wd",
        "--wdir",
        "-x",  # the tasks' environment
    }
)
# The task count is the job's: the plugin writes -np $SLURM_NTASKS.
_COUNT = frozenset({"-np", "--np", "-n", "--n", "-c", "--c"})
MPIRUN = LauncherOptions(
    "mpirun",
    _MPIRUN,
    host=_MPIRUN_HOST,
    owned=_COUNT,
    two_values=frozenset({"--mca", "--gmca"}),
    single_dash=True,
)

# mpiexec is Open MPI's mpirun or MPICH's Hydra, whose own options are added here.
_HYDRA = {
    "--bootstrap": OptionSpec(None, _R),
    "--bootstrap-exec": OptionSpec(None, _R),
    "--configfile": OptionSpec(None, _R),
    "--env": OptionSpec(None, _R),
    "--envall": OptionSpec(None, _N),
    "--envlist": OptionSpec(None, _R),
    "--envnone": OptionSpec(None, _N),
    "--errfile-pattern": OptionSpec(None, _R),
    "--genv": OptionSpec(None, _R),
    "--genvall": OptionSpec(None, _N),
    "--genvlist": OptionSpec(None, _R),
    "--genvnone": OptionSpec(None, _N),
    "--hosts": OptionSpec(None, _R),
    "--iface": OptionSpec(None, _R),
    "--launcher": OptionSpec(None, _R),
    "--launcher-exec": OptionSpec(None, _R),
    "--outfile-pattern": OptionSpec(None, _R),
    "--ppn": OptionSpec(None, _R),
    "--prepend-rank": OptionSpec(None, _N),
}
MPIEXEC = LauncherOptions(
    "mpiexec",
    {**_MPIRUN, **_HYDRA},
    host=_MPIRUN_HOST
    | {
        "--bootstrap",  # how Hydra starts its proxies: ssh, rsh, slurm, ...
        "--bootstrap-exec",
        "--configfile",
        "--env",
        "--envall",
        "--envlist",
        "--envnone",
        "--errfile-pattern",
        "--genv",
        "--genvall",
        "--genvlist",
        "--genvnone",
        "--launcher",
        "--launcher-exec",
        "--outfile-pattern",
    },
    owned=_COUNT,
    two_values=frozenset({"--mca", "--gmca", "--env", "--genv"}),
    single_dash=True,
)

LAUNCHER_OPTIONS: dict[str, LauncherOptions] = {o.name: o for o in (SRUN, MPIRUN, MPIEXEC)}

# What a pod may give when the site says nothing: placement and binding of the tasks, and
# output labels; none of them acts on the host.
DEFAULT_MPI_FLAGS_ALLOWED: dict[str, tuple[str, ...]] = {
    "srun": (
        "--accel-bind",
        "--cpu-bind",
        "--cpus-per-task",
        "--distribution",
        "--exact",
        "--gpu-bind",
        "--gpus-per-task",
        "--hint",
        "--kill-on-bad-exit",
        "--label",
        "--mem-bind",
        "--mpi",
        "--overlap",
        "--quiet",
        "--threads-per-core",
        "--unbuffered",
        "--verbose",
        "--wait",
    ),
    "mpirun": (
        "--bind-to",
        "--cpus-per-proc",
        "--cpus-per-rank",
        "--display-map",
        "--map-by",
        "--rank-by",
        "--report-bindings",
        "--tag-output",
        "--timestamp-output",
        "--use-hwthread-cpus",
    ),
    "mpiexec": (
        "--bind-to",
        "--cpus-per-proc",
        "--cpus-per-rank",
        "--display-map",
        "--map-by",
        "--prepend-rank",
        "--rank-by",
        "--report-bindings",
        "--tag-output",
        "--timestamp-output",
        "--use-hwthread-cpus",
    ),
}


def _scan_single_dash(
    tokens: Sequence[str], table: LauncherOptions
) -> list[tuple[str, str, list[str]]]:
    """(as written, long name, values) of an mpirun/mpiexec line: ``--x v``, ``--x=v``,
    ``-x v``, ``-bind-to v``; no bundling (these launchers have none)."""
    shorts = {o.short: name for name, o in table.options.items() if o.short}
    out: list[tuple[str, str, list[str]]] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        if not tok.startswith("-") or tok == "-":
            raise OptionError(f"{tok!r} is not a {table.name} option (options start with '-')")
        written, eq, value = tok.partition("=")
        if written in table.owned:
            raise OptionError(
                f"{written} is set by interlink-slurm (the job's task count), "
                "not by a pod: ask for tasks with interlink-slurm/tasks-per-node"
            )
        name = shorts.get(written) or written
        if name not in table.options and not name.startswith("--"):
            name = "-" + name  # -bind-to is --bind-to
        spec = table.options.get(name)
        if spec is None:
            raise OptionError(f"{written!r} is not a {table.name} option this plugin knows")
        if spec.arity is Arity.NONE:
            if eq:
                raise OptionError(f"{written} takes no value")
            out.append((written, name, []))
            continue
        values = [value] if eq else []
        wanted = 2 if name in table.two_values else 1
        while len(values) < wanted:
            if i >= len(tokens):
                raise OptionError(f"{written} needs {'two values' if wanted == 2 else 'a value'}")
            values.append(tokens[i])
            i += 1
        out.append((written, name, values))
    return out


def scan_launcher_options(
    tokens: Sequence[str], table: LauncherOptions
) -> list[tuple[str, str, list[str]]]:
    """(as written, long name, values) for each option of a tokenised launcher command line.
    srun's are read as sbatch's are (getopt: bundled short switches, optional values only with
    '='); mpirun's and mpiexec's also with one leading dash. Unknown names are refused
    (OptionError), so nothing the launcher would read differently passes."""
    if table.single_dash:
        return _scan_single_dash(tokens, table)
    return [
        (written, name, [] if value is None else [value])
        for written, name, value in scan_options(tokens, table.options, table.name)
    ]


def canonical(table: LauncherOptions, name: str, values: Sequence[str]) -> list[str]:
    """How an option is written back for the launcher: ``--name=value`` for srun, ``--name``
    then its values as words for mpirun and mpiexec (Open MPI reads no '=')."""
    if table.joined:
        return [f"{name}={values[0]}" if values else name]
    return [name, *values]
