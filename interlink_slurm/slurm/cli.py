"""The Scheduler over Slurm's command-line tools, run through a Transport."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence

from interlink_slurm.errors import SchedulerError, SchedulerUnavailable, SubmitRejected
from interlink_slurm.slurm.common import (
    ALREADY_ENDED,
    INVALID_JOB,
    UNUSABLE_NODE_STATES,
    estimate_with_sbatch,
    parse_gres,
    says_unreachable,
    tool_message,
)
from interlink_slurm.slurm.scheduler import ClusterResources, Estimate, JobInfo
from interlink_slurm.slurm.transport import CommandResult, CommandUnavailable, Transport

log = logging.getLogger(__name__)

# From this many jobs on, a refresh asks squeue for the user's jobs rather than by id.
BY_USER_FROM = 32
SEP = "|"


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


class CliScheduler:
    """Implements the Scheduler protocol (scheduler.py) with sbatch, scancel, scontrol,
    squeue, sacct and sinfo, run through a Transport (locally or over SSH); at most
    ``max_concurrent`` commands at once."""

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
        if result.returncode != 0 and says_unreachable(result):
            raise SchedulerUnavailable(f"Slurm is not reachable: {tool_message(result)}")
        return result

    async def submit(self, script_path: str, workdir: str, directives: Sequence[str]) -> str:
        # sbatch reads the directives from the script's #SBATCH lines.
        result = await self._run("sbatch", "--parsable", f"--chdir={workdir}", script_path)
        if result.returncode != 0:
            raise SubmitRejected(f"Slurm refused the job: {tool_message(result)}")
        job_id = result.stdout.strip().split(";", 1)[0]
        if not job_id.isdigit():
            raise SchedulerError(f"sbatch answered {result.stdout.strip()!r}, not a job id")
        return job_id

    async def cancel(self, job_id: str) -> None:
        result = await self._run("scancel", job_id)
        if result.returncode != 0 and INVALID_JOB not in tool_message(result).lower():
            raise SchedulerError(f"scancel {job_id} failed: {tool_message(result)}")

    async def _on_job(self, *argv: str, gone: Sequence[str] = ALREADY_ENDED) -> None:
        """A command on one job; Slurm saying that the job is gone (``gone``) is fine."""
        result = await self._run(*argv)
        message = tool_message(result).lower()
        if result.returncode != 0 and not any(m in message for m in gone):
            raise SchedulerError(f"{' '.join(argv)} failed: {tool_message(result)}")

    async def release(self, job_id: str) -> None:
        await self._on_job("scontrol", "release", job_id, gone=(*ALREADY_ENDED, "already finished"))

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
            if INVALID_JOB in tool_message(result).lower():
                return {}
            raise SchedulerError(f"squeue failed: {tool_message(result)}")
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
            raise SchedulerError(f"sinfo failed: {tool_message(result)}")
        return parse_sinfo(result.stdout)

    async def ping(self) -> None:
        result = await self._run("scontrol", "ping")
        if result.returncode != 0 or "UP" not in result.stdout:
            raise SchedulerUnavailable(f"Slurm controller is not up: {tool_message(result)}")

    async def estimate(self, directives: Sequence[str], timeout: float) -> Estimate:
        return await estimate_with_sbatch(
            self._transport, self._bin("sbatch"), directives, timeout, limit=self._limit
        )
