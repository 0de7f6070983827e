"""The slurmrestd job of a plan's sbatch directives: pure, one table per API family.

slurmrestd takes a job as JSON, the script and its properties beside it; it does not read the
script's ``#SBATCH`` lines. The plan's directives (the very lines the script carries) are
translated here into properties, option by option, by the table of the API version: v0.0.38
(Slurm 22.05; plain numbers and strings, sbatch's own parser behind most properties) or the
data_parser versions v0.0.40 and later (numbers as ``{"set", "infinite", "number"}``, states and
flags as lists, GRES as TRES). An option without a translation stops the submission, naming it,
rather than be dropped silently. The HTTP client is rest.py.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from interlink_slurm.errors import SchedulerError
from interlink_slurm.sbatch_options import OptionError, scan_options
from interlink_slurm.slurm_units import size_mebibytes, time_seconds

# The API versions of the v0.0.38 shapes (LEGACY); every later one takes CURRENT's.
LEGACY_VERSIONS = frozenset({"v0.0.38"})


@dataclass(frozen=True)
class Option:
    """One sbatch option of a directive, by its long name."""

    name: str  # the long option, as the error messages name it
    value: str | None  # None for a flag given without a value


_SIGNAL = re.compile(r"(?:([BR]{1,2}):)?([A-Za-z0-9]+)(?:@(\d+))?")


def _untranslatable(name: str, version: str = "") -> SchedulerError:
    where = f"slurmrestd {version}" if version else "slurmrestd"
    return SchedulerError(
        f"the sbatch option {name} in the job script cannot be sent to {where} (it has no "
        "REST job property here): remove it from sbatch_extra or the pod's "
        "slurm-job.vk.io/flags, or use scheduler: cli"
    )


def directive_options(directives: Sequence[str]) -> list[Option]:
    """The options of the job's sbatch directives (one ``#SBATCH`` line each), in order, read as
    sbatch reads those lines; one without a REST translation in any version stops here."""
    options: list[Option] = []
    for directive in directives:
        line = f"#SBATCH {directive}"  # how the job script carries it, and errors name it
        try:
            found = scan_options(shlex.split(directive))
        except (ValueError, OptionError) as err:
            raise SchedulerError(f"cannot read the job script line {line!r}: {err}") from err
        for written, name, value in found:
            if name not in TRANSLATED:
                raise _untranslatable(written)
            options.append(Option(name, value))
    return options


def _int(option: Option) -> int:
    value = option.value or ""
    if not value.isdigit():
        raise SchedulerError(f"{option.name}={value}: a whole number is expected")
    return int(value)


def _mebibytes(option: Option) -> int:
    """``--mem`` values: a number with an optional K, M (default), G or T suffix → MiB."""
    try:
        return size_mebibytes(option.value or "")
    except ValueError:
        raise SchedulerError(
            f"{option.name}={option.value}: expected a size like 512M or 4G"
        ) from None


def _minutes(option: Option) -> int | None:
    """Slurm's time formats → whole minutes (rounded up, as Slurm does); None when unlimited.

    minutes, minutes:seconds, hours:minutes:seconds, days-hours, days-hours:minutes,
    days-hours:minutes:seconds."""
    value = (option.value or "").strip()
    try:
        total = time_seconds(value)
    except ValueError:
        raise SchedulerError(f"{option.name}={value}: not a Slurm time (D-HH:MM:SS)") from None
    return None if total is None else -(-total // 60)


def _nodes(option: Option) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", option.value or "")
    if not m:
        raise SchedulerError(f"{option.name}={option.value}: expected N or MIN-MAX")
    low = int(m.group(1))
    return low, int(m.group(2) or low)


def _gres_tres(value: str) -> str:
    """``gpu:a100:2,license:x`` → ``gres/gpu:a100:2,gres/license:x`` (tres_per_node)."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    return ",".join("gres/" + re.sub(r"^gres[:/]", "", item) for item in items)


def _number(value: int | None) -> dict[str, Any]:
    """A v0.0.40+ number: ``{"set", "infinite", "number"}``; None means infinite."""
    if value is None:
        return {"set": True, "infinite": True, "number": 0}
    return {"set": True, "infinite": False, "number": value}


def rest_job(
    directives: Sequence[str],
    api_version: str,
    *,
    workdir: str,
    environment: Mapping[str, str],
) -> dict[str, Any]:
    """The REST job properties of a job with these sbatch ``directives`` (the plan's, which the
    job script carries as its ``#SBATCH`` lines) run in ``workdir`` (sbatch's ``--chdir``), in
    the shapes of ``api_version``: slurmrestd reads no ``#SBATCH`` line itself."""
    legacy = api_version in LEGACY_VERSIONS
    job: dict[str, Any] = {"current_working_directory": workdir}
    if legacy:
        job["environment"] = dict(environment)
    else:
        job["environment"] = [f"{k}={v}" for k, v in environment.items()]
    table = LEGACY if legacy else CURRENT
    for option in directive_options(directives):
        put = table.get(option.name)
        if put is None:
            raise _untranslatable(option.name, "v0.0.38" if legacy else "v0.0.40+")
        put(job, option)
    return job


HETJOB = "hetjob"  # the directive between the components of a heterogeneous job


def components(directives: Sequence[str]) -> list[list[str]]:
    """The directives of each component of a heterogeneous job (``#SBATCH hetjob`` between
    them, as sbatch reads the script); one component for any other job."""
    parts: list[list[str]] = [[]]
    for directive in directives:
        if directive.strip() == HETJOB:
            parts.append([])
        else:
            parts[-1].append(directive)
    return parts


def submit_body(
    script: str,
    directives: Sequence[str],
    api_version: str,
    *,
    workdir: str,
    environment: Mapping[str, str],
) -> dict[str, Any]:
    """The body of ``POST job/submit``: one job description (``job``), or a heterogeneous
    job's list of them (``jobs``, one per component, which slurmrestd submits as one job);
    the script beside them (v0.0.38) or in the (first) description (v0.0.40+)."""
    jobs = [
        rest_job(part, api_version, workdir=workdir, environment=environment)
        for part in components(directives)
    ]
    if api_version in LEGACY_VERSIONS:
        return {"script": script, **({"job": jobs[0]} if len(jobs) == 1 else {"jobs": jobs})}
    jobs[0] = {**jobs[0], "script": script}
    return {"job": jobs[0]} if len(jobs) == 1 else {"jobs": jobs}


def _add_tres(job: dict[str, Any], key: str, value: str) -> None:
    job[key] = f"{job[key]},{value}" if job.get(key) else value


def _signal(job: dict[str, Any], option: Option, legacy: bool) -> None:
    """``--signal=[{R}{B}:]<sig>[@sig_time]``."""
    value = option.value or ""
    m = _SIGNAL.fullmatch(value)
    if not m:
        raise SchedulerError(f"--signal={value}: expected [B:]SIGNAL[@SECONDS]")
    where, signal, seconds = m.groups()
    if legacy:
        if where:
            # Slurm 22.05 parses this property with the options common to srun and salloc,
            # which know no "B:" or "R:" (only sbatch itself does).
            raise SchedulerError(
                f"--signal={value}: slurmrestd v0.0.38 takes no {where}: prefix; use "
                f"--signal={signal}{'@' + seconds if seconds else ''}, or scheduler: cli"
            )
        job["signal"] = value
        return
    flags = {"B": "BATCH_JOB", "R": "RESERVATION_JOB"}
    job["kill_warning_signal"] = signal
    job["kill_warning_delay"] = _number(int(seconds or 60))
    if where:
        job["kill_warning_flags"] = [flags[c] for c in where]


# --- the tables: one per API family, sbatch option → how it sets the job's properties ----------

Put = Callable[[dict[str, Any], Option], None]


def _copy(key: str) -> Put:
    """The value as it is."""
    return lambda job, o: job.__setitem__(key, o.value or "")


def _whole(key: str) -> Put:
    """A whole number."""
    return lambda job, o: job.__setitem__(key, _int(o))


def _tres(key: str, prefix: str = "") -> Put:
    """GRES added to a v0.0.40+ TRES list (``gpu:2`` → ``gres/gpu:2``)."""
    return lambda job, o: _add_tres(job, key, _gres_tres(prefix + (o.value or "")))


def _open_mode(legacy: bool) -> Put:
    def put(job: dict[str, Any], o: Option) -> None:
        mode = (o.value or "").lower()
        if mode not in ("append", "truncate"):
            raise SchedulerError(f"--open-mode={o.value or ''}: expected append or truncate")
        job["open_mode"] = mode if legacy else [mode.upper()]

    return put


def _nodes_legacy(job: dict[str, Any], o: Option) -> None:
    # A string, as sbatch reads it: Slurm 22.05 takes [min, max] and gives the job one node.
    job["nodes"] = "{}-{}".format(*_nodes(o))


def _nodes_current(job: dict[str, Any], o: Option) -> None:
    job["minimum_nodes"], job["maximum_nodes"] = _nodes(o)


def _memory(key: str, legacy: bool) -> Put:
    def put(job: dict[str, Any], o: Option) -> None:
        mib = _mebibytes(o)
        job[key] = mib if legacy else _number(mib)

    return put


def _memory_per_gpu(job: dict[str, Any], o: Option) -> None:
    _add_tres(job, "memory_per_tres", f"gres/gpu:{_mebibytes(o)}")


def _time(key: str, legacy: bool) -> Put:
    def put(job: dict[str, Any], o: Option) -> None:
        minutes = _minutes(o)
        if not legacy:
            job[key] = _number(minutes)
        elif minutes is None:
            raise SchedulerError(
                f"{o.name}={o.value or ''} cannot be sent to slurmrestd v0.0.38: leave it out "
                "(the partition's limit applies)"
            )
        else:
            job[key] = minutes

    return put


def _exclusive(legacy: bool) -> Put:
    def put(job: dict[str, Any], o: Option) -> None:
        value = o.value or ""
        kind = value.lower()
        if kind not in ("", "user", "mcs", "topo"):
            raise SchedulerError(f"--exclusive={value}: expected user, mcs or no value")
        if not legacy:
            job["shared"] = [kind or "none"]
        elif kind == "topo":
            raise SchedulerError("--exclusive=topo is not known to slurmrestd v0.0.38")
        else:
            # v0.0.38 hands this to sbatch's own option parser: "exclusive", "user" or "mcs"
            # (not the "true" its OpenAPI description lists, which it refuses).
            job["exclusive"] = kind or "exclusive"

    return put


def _nice(job: dict[str, Any], o: Option) -> None:
    value = o.value or ""
    if value and not re.fullmatch(r"[+-]?\d+", value):
        raise SchedulerError(f"--nice={value}: a whole number is expected")
    job["nice"] = int(value or 100)  # sbatch's default adjustment


def _mail_type(legacy: bool) -> Put:
    def put(job: dict[str, Any], o: Option) -> None:
        kinds = [k.strip().upper() for k in (o.value or "").split(",") if k.strip()]
        job["mail_type"] = ",".join(kinds) if legacy else kinds

    return put


# The same property in every version.
_COMMON: dict[str, Put] = {
    **{
        name: _copy(key)
        for name, key in {
            "--job-name": "name",
            "--comment": "comment",
            "--output": "standard_output",
            "--error": "standard_error",
            "--chdir": "current_working_directory",
            "--partition": "partition",
            "--account": "account",
            "--qos": "qos",
            "--constraint": "constraints",
            "--prefer": "prefer",
            "--reservation": "reservation",
            "--licenses": "licenses",
            "--wckey": "wckey",
            "--mail-user": "mail_user",
            "--dependency": "dependency",
            "--distribution": "distribution",
        }.items()
    },
    **{
        name: _whole(key)
        for name, key in {
            "--ntasks": "tasks",
            "--cpus-per-task": "cpus_per_task",
            "--ntasks-per-node": "tasks_per_node",
            "--ntasks-per-core": "tasks_per_core",
            "--ntasks-per-socket": "tasks_per_socket",
            "--threads-per-core": "threads_per_core",
        }.items()
    },
    "--nice": _nice,
    "--hold": lambda job, o: job.__setitem__("hold", True),
    "--requeue": lambda job, o: job.__setitem__("requeue", True),
    "--no-requeue": lambda job, o: job.__setitem__("requeue", False),
}

# slurmrestd v0.0.38 (Slurm 22.05): sbatch's own option parser reads most properties.
LEGACY: dict[str, Put] = {
    **_COMMON,
    "--gpus": _copy("gpus"),
    "--gpus-per-node": _copy("gpus_per_node"),
    "--gpus-per-task": _copy("gpus_per_task"),
    "--cpus-per-gpu": _copy("cpus_per_gpu"),
    "--gpu-bind": _copy("gpu_binding"),
    "--hint": _copy("cpu_binding_hint"),
    "--gres-flags": _copy("gres_flags"),
    "--gres": _copy("gres"),
    "--open-mode": _open_mode(legacy=True),
    "--nodes": _nodes_legacy,
    "--mem": _memory("memory_per_node", legacy=True),
    "--mem-per-cpu": _memory("memory_per_cpu", legacy=True),
    "--mem-per-gpu": _memory("memory_per_gpu", legacy=True),
    "--time": _time("time_limit", legacy=True),
    "--time-min": _time("time_minimum", legacy=True),
    "--exclusive": _exclusive(legacy=True),
    "--signal": lambda job, o: _signal(job, o, legacy=True),
    "--mail-type": _mail_type(legacy=True),
}

# slurmrestd v0.0.40 and later: GPUs as TRES of gres/gpu, numbers as {set, infinite, number}.
CURRENT: dict[str, Put] = {
    **_COMMON,
    "--gpus": _tres("tres_per_job", "gpu:"),
    "--gpus-per-node": _tres("tres_per_node", "gpu:"),
    "--gpus-per-task": _tres("tres_per_task", "gpu:"),
    "--cpus-per-gpu": _tres("cpus_per_tres", "gpu:"),
    "--gpu-bind": _tres("tres_bind", "gpu:"),
    "--gres": _tres("tres_per_node"),
    "--open-mode": _open_mode(legacy=False),
    "--nodes": _nodes_current,
    "--mem": _memory("memory_per_node", legacy=False),
    "--mem-per-cpu": _memory("memory_per_cpu", legacy=False),
    "--mem-per-gpu": _memory_per_gpu,
    "--tmp": lambda job, o: job.__setitem__("temporary_disk_per_node", _mebibytes(o)),
    "--ntasks-per-gpu": _whole("ntasks_per_tres"),
    "--time": _time("time_limit", legacy=False),
    "--time-min": _time("time_minimum", legacy=False),
    "--exclusive": _exclusive(legacy=False),
    "--signal": lambda job, o: _signal(job, o, legacy=False),
    "--mail-type": _mail_type(legacy=False),
}

# The sbatch options some version translates into job properties (whether this version can
# take one is its table's say); any other option in a job script stops the submission, naming it.
TRANSLATED = frozenset({*LEGACY, *CURRENT})
