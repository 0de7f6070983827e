"""The Scheduler over Slurm's command-line tools, run through a Transport."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import shlex
from collections.abc import Sequence
from datetime import UTC, datetime

from interlink_slurm.errors import SchedulerError, SchedulerUnavailable, SubmitRejected
from interlink_slurm.sbatch_options import OptionError, scan_options
from interlink_slurm.slurm.scheduler import ClusterResources, Estimate, JobInfo
from interlink_slurm.slurm.transport import CommandResult, CommandUnavailable, Transport

log = logging.getLogger(__name__)

# Messages by which Slurm's tools say "I could not reach the controller", as opposed to
# "the controller said no". Only the first kind is worth retrying.
UNREACHABLE = (
    "unable to contact slurm controller",
    "socket timed out",
    "connection refused",
    "zero bytes were transmitted",
    "communication connection failure",
    "unable to establish",
    "backup controller in standby",
    "transport endpoint",
    "munge",
)
INVALID_JOB = "invalid job id"
# From this many jobs on, a refresh asks squeue for the user's jobs rather than by id.
BY_USER_FROM = 32
# What scancel says of a job that has already ended.
GONE = (INVALID_JOB, "already completing or completed", "job/step already")
SEP = "|"
# Node states that give nothing to new jobs.
UNUSABLE_NODE_STATES = ("down", "drain", "fail", "inval", "maint", "future", "unknown")
_GRES = re.compile(r"^gpu(?::([^:()]+))?:(\d+)")
# Options of a job that its start estimate leaves out: they name the pod directory, which does
# not exist before the submission, or hold the job, which then never starts by itself.
NOT_ESTIMATED = frozenset({"--output", "--error", "--open-mode", "--chdir", "--hold"})
# Start times printed as epoch seconds (strftime's %s, glibc), so the time zone of the host that
# runs sbatch does not matter; TZ=UTC makes the ISO form, should %s be ignored, UTC as well.
TIME_ENV = ("TZ=UTC", "SLURM_TIME_FORMAT=%s")
# env(1) could not find or run the command.
NOT_RUNNABLE = (126, 127)
_START = re.compile(r"\bto start at (\S+)[ \t]*(.*)$", re.MULTILINE)


def _message(result: CommandResult, sep: str = " ") -> str:
    text = (result.stderr or result.stdout).strip()
    # Drop Slurm's "sbatch: error: " (and --test-only's "allocation failure: ") prefixes; keep
    # the sentence.
    lines = [
        re.sub(r"^(\w+: error: |allocation failure: )", "", line).strip()
        for line in text.splitlines()
    ]
    return sep.join(line for line in lines if line) or f"exit status {result.returncode}"


def _unreachable(result: CommandResult) -> bool:
    text = f"{result.stderr}\n{result.stdout}".lower()
    return any(marker in text for marker in UNREACHABLE)


def parse_gres(gres: str) -> dict[str, int]:
    """``gpu:a100:4(S:0-1),gpu:2`` → {"a100": 4, "": 2}."""
    out: dict[str, int] = {}
    if not gres or gres == "(null)":
        return out
    for item in gres.split(","):
        m = _GRES.match(item.strip())
        if m:
            kind = m.group(1) or ""
            out[kind] = out.get(kind, 0) + int(m.group(2))
    return out


def parse_sinfo(text: str) -> ClusterResources:
    """Lines of ``%N|%c|%m|%G|%T``; a node in several partitions counts once."""
    seen: set[str] = set()
    cpus = memory = 0
    gpus: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.strip().split(SEP)
        if len(parts) < 5 or parts[0] in seen:
            continue
        name, ncpu, mem, gres, state = parts[:5]
        if any(s in state.lower() for s in UNUSABLE_NODE_STATES):
            continue
        seen.add(name)
        cpus += int(ncpu) if ncpu.isdigit() else 0
        memory += int(mem) if mem.isdigit() else 0
        for kind, count in parse_gres(gres).items():
            gpus[kind] = gpus.get(kind, 0) + count
    return ClusterResources(cpus=cpus, memory_mb=memory, gpus=gpus, nodes=len(seen))


def parse_squeue(text: str) -> dict[str, JobInfo]:
    """Lines of ``%i|%T|%r|%N|%k`` (the comment last: it may hold the separator)."""
    jobs: dict[str, JobInfo] = {}
    for line in text.splitlines():
        parts = line.strip().split(SEP, 4)
        if len(parts) < 3 or not parts[0]:
            continue
        job_id, state, reason = parts[0], parts[1].upper(), parts[2]
        nodes = parts[3] if len(parts) > 3 else ""
        comment = parts[4] if len(parts) > 4 and parts[4] != "(null)" else ""
        job_id, component = het_component(job_id)
        if component:  # a later part of a heterogeneous job (a pod group): its nodes only
            first = jobs.get(job_id)
            if first is not None and nodes.strip():
                jobs[job_id] = dataclasses.replace(first, nodes=f"{first.nodes},{nodes.strip()}")
            continue
        jobs[job_id] = JobInfo(
            job_id, state, "" if reason == "None" else reason, comment, nodes.strip()
        )
    return jobs


def het_component(job_id: str) -> tuple[str, int]:
    """``J+K`` (part K of heterogeneous job J, as squeue and sacct list it) → (J, K); any
    other id → (id, 0). The parts start and end together: part 0 speaks for the job."""
    base, plus, part = job_id.partition("+")
    return (base, int(part)) if plus and part.isdigit() else (job_id, 0)


def estimate_options(directives: Sequence[str]) -> list[str]:
    """The sbatch arguments of ``directives`` (one ``#SBATCH`` line each) that a start estimate
    takes: all but NOT_ESTIMATED (by exact option name, short forms included)."""
    out: list[str] = []
    for directive in directives:
        try:
            words = shlex.split(directive)
        except ValueError as err:
            raise SchedulerError(f"cannot read the sbatch option {directive!r}: {err}") from err
        try:
            options = scan_options(words)
        except OptionError:
            # An option unknown here may be known to this Slurm: sbatch judges it.
            out.extend(words)
            continue
        out.extend(
            name if value is None else f"{name}={value}"
            for _, name, value in options
            if name not in NOT_ESTIMATED
        )
    return out


def _epoch(word: str) -> float | None:
    if word.isdigit():  # before fromisoformat, which takes "20261125" for a date
        return float(word)
    try:
        when = datetime.fromisoformat(word)
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def parse_estimate(text: str) -> Estimate:
    """What ``sbatch --test-only`` printed → Estimate. Slurm 22.05 prints
    ``sbatch: Job 19186 to start at 1795609155 using 2 processors on nodes vm in partition p``;
    the time is epoch seconds, or ISO 8601 (UTC unless it carries an offset)."""
    m = _START.search(text)
    start = _epoch(m.group(1)) if m else None
    if m is None or start is None:
        said = " ".join(text.split())[:300] or "nothing"
        raise SchedulerError(f"sbatch --test-only answered {said!r}, not a start time")
    return Estimate(start=start, detail=m.group(2).strip())


def _no_sbatch(sbatch: str, why: str) -> SchedulerUnavailable:
    return SchedulerUnavailable(
        f"no start time estimate: estimates run Slurm's sbatch on the transport's host, and "
        f"{sbatch} could not be run there ({why})"
    )


def _read_estimate(result: CommandResult, sbatch: str) -> Estimate:
    if result.returncode in NOT_RUNNABLE:
        raise _no_sbatch(sbatch, _message(result))
    if result.returncode != 0 and _unreachable(result):
        raise SchedulerUnavailable(f"Slurm is not reachable: {_message(result)}")
    if result.returncode != 0:
        raise SubmitRejected(f"Slurm would not run the job: {_message(result, '; ')}")
    return parse_estimate(f"{result.stderr}\n{result.stdout}")


async def estimate_with_sbatch(
    transport: Transport,
    sbatch: str,
    directives: Sequence[str],
    timeout: float,
    *,
    limit: asyncio.Semaphore | None = None,
) -> Estimate:
    """The start estimate of every scheduler: ``sbatch --test-only`` through ``transport``, the
    answer within ``timeout`` seconds (waiting for a ``limit`` slot included)."""
    argv = ["env", *TIME_ENV, sbatch, "--test-only", *estimate_options(directives), "--wrap=true"]
    cap = asyncio.timeout(timeout)
    try:
        async with cap, limit if limit is not None else contextlib.nullcontext():
            # The command ends by itself within timeout if the cap leaves it behind.
            result = await asyncio.to_thread(transport.run, argv, timeout=timeout)
    except TimeoutError as err:
        if not cap.expired():
            raise
        raise SchedulerUnavailable(
            f"no start time estimate: Slurm did not answer within {timeout:g} s"
        ) from err
    except CommandUnavailable as err:
        # The transports name argv[0], which is env(1) here; sbatch is what matters.
        reason = re.sub(r"^env\b", sbatch, str(err))
        if "not installed" in reason:  # how the transports say "command not found"
            raise _no_sbatch(sbatch, reason) from err
        raise SchedulerUnavailable(f"no start time estimate: {reason}") from err
    return _read_estimate(result, sbatch)


class CliScheduler:
    def __init__(
        self,
        transport: Transport,
        *,
        timeout: float = 30.0,
        command: dict[str, str] | None = None,
        max_concurrent: int = 8,
    ) -> None:
        self._transport = transport
        self._timeout = timeout
        self._cmd = command or {}
        self._limit = asyncio.Semaphore(max_concurrent)
        self._accounting = True
        self._by_user = True  # many jobs are queried with squeue --me (see query)

    def _bin(self, name: str) -> str:
        return self._cmd.get(name, name)

    async def _run(self, *argv: str) -> CommandResult:
        argv = (self._bin(argv[0]), *argv[1:])
        async with self._limit:
            try:
                result = await asyncio.to_thread(self._transport.run, argv, timeout=self._timeout)
            except CommandUnavailable as err:
                raise SchedulerUnavailable(f"Slurm is not reachable: {err}") from err
        if result.returncode != 0 and _unreachable(result):
            raise SchedulerUnavailable(f"Slurm is not reachable: {_message(result)}")
        return result

    async def submit(self, script_path: str, workdir: str) -> str:
        result = await self._run("sbatch", "--parsable", f"--chdir={workdir}", script_path)
        if result.returncode != 0:
            raise SubmitRejected(f"Slurm refused the job: {_message(result)}")
        job_id = result.stdout.strip().split(";", 1)[0]
        if not job_id.isdigit():
            raise SchedulerError(f"sbatch answered {result.stdout.strip()!r}, not a job id")
        return job_id

    async def cancel(self, job_id: str) -> None:
        result = await self._run("scancel", job_id)
        if result.returncode != 0 and INVALID_JOB not in _message(result).lower():
            raise SchedulerError(f"scancel {job_id} failed: {_message(result)}")

    async def _on_job(self, *argv: str, gone: Sequence[str] = GONE) -> None:
        """A command on one job; Slurm saying that the job is gone (``gone``) is fine."""
        result = await self._run(*argv)
        message = _message(result).lower()
        if result.returncode != 0 and not any(m in message for m in gone):
            raise SchedulerError(f"{' '.join(argv)} failed: {_message(result)}")

    async def release(self, job_id: str) -> None:
        await self._on_job("scontrol", "release", job_id, gone=(*GONE, "already finished"))

    async def signal(self, job_id: str, signal: str) -> None:
        await self._on_job("scancel", f"--signal={signal}", "--full", job_id)

    async def final_states(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        ids = sorted({j for j in job_ids if j.isdigit()}, key=int)
        if not ids or not self._accounting:
            return {}
        result = await self._run(
            "sacct",
            "--noheader",
            "--parsable2",
            "--allocations",
            f"--jobs={','.join(ids)}",
            "--format=JobID,State,ExitCode,NodeList",
        )
        if result.returncode != 0 or "accounting storage is disabled" in result.stderr.lower():
            # Without slurmdbd there is nothing to ask, now or later.
            self._accounting = "disabled" not in result.stderr.lower()
            return {}
        out: dict[str, JobInfo] = {}
        for line in result.stdout.splitlines():
            parts = line.split("|")
            parts[0], component = het_component(parts[0])
            if len(parts) >= 2 and parts[0].isdigit() and not component:
                nodes = parts[3] if len(parts) > 3 and parts[3] != "None assigned" else ""
                out[parts[0]] = JobInfo(parts[0], parts[1].split()[0].upper(), "", nodes=nodes)
        return out

    async def _squeue(self, *selection: str) -> dict[str, JobInfo]:
        result = await self._run(
            "squeue",
            "--noheader",
            "--all",
            "--states=all",
            *selection,
            "--format=%i|%T|%r|%N|%k",
        )
        if result.returncode != 0:
            if INVALID_JOB in _message(result).lower():
                return {}
            raise SchedulerError(f"squeue failed: {_message(result)}")
        return parse_squeue(result.stdout)

    async def query(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        ids = sorted({j for j in job_ids if j.isdigit()}, key=int)
        if not ids:
            return {}
        if len(ids) < BY_USER_FROM or not self._by_user:
            return await self._squeue(f"--jobs={','.join(ids)}")
        # Many jobs: this user's jobs in one squeue, filtered here, cost the client and
        # slurmctld far less than --jobs with thousands of ids (a command line that grows with
        # them, over SSH too). Jobs outside that view (submitted as another user with --uid,
        # or gone from the queue) are then asked by id.
        try:
            mine = await self._squeue("--me")
        except SchedulerError as err:
            log.info("squeue --me failed (%s): jobs are asked by id from now on", err)
            self._by_user = False
            return await self._squeue(f"--jobs={','.join(ids)}")
        wanted = set(ids)
        out = {j: job for j, job in mine.items() if j in wanted}
        rest = [j for j in ids if j not in out]
        if len(rest) * 2 > len(ids):
            # Most jobs are another user's (root submitting with --uid): --me does not pay.
            log.info("most jobs are not this user's: they are asked by id from now on")
            self._by_user = False
        if rest:
            out.update(await self._squeue(f"--jobs={','.join(rest)}"))
        return out

    async def find_by_comment(self, comment: str) -> JobInfo | None:
        for job in (await self._squeue()).values():
            if job.comment == comment:
                return job
        return None

    async def resources(self, partitions: Sequence[str]) -> ClusterResources:
        selection = [f"--partition={','.join(partitions)}"] if partitions else []
        result = await self._run(
            "sinfo", "--noheader", "--Node", *selection, "--format=%N|%c|%m|%G|%T"
        )
        if result.returncode != 0:
            raise SchedulerError(f"sinfo failed: {_message(result)}")
        return parse_sinfo(result.stdout)

    async def ping(self) -> None:
        result = await self._run("scontrol", "ping")
        if result.returncode != 0 or "UP" not in result.stdout:
            raise SchedulerUnavailable(f"Slurm controller is not up: {_message(result)}")

    async def estimate(self, directives: Sequence[str], timeout: float) -> Estimate:
        return await estimate_with_sbatch(
            self._transport, self._bin("sbatch"), directives, timeout, limit=self._limit
        )
