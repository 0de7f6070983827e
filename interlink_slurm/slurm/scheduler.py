"""The one seam to Slurm: submit, cancel, query many jobs, cluster resources, start estimates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class JobInfo:
    """One Slurm job as the plugin sees it: state, reason, comment (the pod's uid), nodes."""

    job_id: str
    state: str  # Slurm's long state name: PENDING, RUNNING, COMPLETED, ...
    reason: str = ""  # Slurm's reason (Priority, Resources, NonZeroExitCode, ...), "" for None
    comment: str = ""
    nodes: str = ""  # Slurm's node list once the job is placed ("lrdn0001", "n[1-2]"), else ""


@dataclass(frozen=True)
class ClusterResources:
    """What the usable nodes of some partitions give, for interLink's ping and placement."""

    cpus: int
    memory_mb: int
    gpus: dict[str, int] = field(default_factory=dict)  # gres type ("a100", "" untyped) → count
    nodes: int = 0


@dataclass(frozen=True)
class Estimate:
    """When Slurm expects a job to start (sbatch --test-only), for placement."""

    start: float  # epoch seconds (UTC) when Slurm expects the job to start
    detail: str  # Slurm's own words after the time, e.g. "using 2 processors on nodes vm in ..."


class Scheduler(Protocol):
    """The one seam to Slurm, implemented over its commands (cli.py), slurmrestd (rest.py)
    and pyslurm (pyslurm_scheduler.py), and faked in tests (fake.py)."""

    async def submit(self, script_path: str, workdir: str, directives: Sequence[str]) -> str:
        """Submit a batch script to run in ``workdir``; returns the job id. ``directives``: the
        script's ``#SBATCH`` options (the plan's), for slurmrestd, which takes them beside the
        script; sbatch and pyslurm read them from the script itself."""
        ...

    async def cancel(self, job_id: str) -> None:
        """Cancel a job; a job that is already gone is not an error."""
        ...

    async def release(self, job_id: str) -> None:
        """Let a job submitted held (``#SBATCH --hold``) start; a job that is gone or already
        released is not an error."""
        ...

    async def signal(self, job_id: str, signal: str) -> None:
        """Send a signal (e.g. "TERM") to every process of a job, the batch script included;
        a job that is already gone is not an error."""
        ...

    async def query(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        """Every job of ``job_ids`` that Slurm still knows; one scheduler call for all."""
        ...

    async def final_states(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        """The end state of jobs that left the queue, from accounting; {} where there is none."""
        ...

    async def find_by_comment(self, comment: str) -> JobInfo | None:
        """A job carrying exactly this comment, if Slurm knows one."""
        ...

    async def resources(self, partitions: Sequence[str]) -> ClusterResources:
        """What the partitions can give (all partitions when empty)."""
        ...

    async def ping(self) -> None:
        """Return when the controller answers; raise SchedulerUnavailable otherwise."""
        ...

    async def estimate(self, directives: Sequence[str], timeout: float) -> Estimate:
        """When Slurm expects a job with these sbatch options to start, without submitting it
        (sbatch --test-only). Raises SubmitRejected when Slurm says it would refuse or could never
        run such a job there (its message), SchedulerUnavailable when Slurm cannot be reached or the
        answer did not come within ``timeout`` seconds, SchedulerError for anything else."""
        ...


class FromJobListing:
    """query and find_by_comment for schedulers that can only list every job at once
    (slurmrestd, pyslurm): one listing, filtered here."""

    async def _jobs(self) -> dict[str, JobInfo]:
        raise NotImplementedError

    async def query(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        """The jobs of ``job_ids`` found in one listing of every job."""
        wanted = {j for j in job_ids if j.isdigit()}
        if not wanted:
            return {}
        return {j: info for j, info in (await self._jobs()).items() if j in wanted}

    async def find_by_comment(self, comment: str) -> JobInfo | None:
        """The job whose comment is ``comment``, from one listing of every job."""
        return next((j for j in (await self._jobs()).values() if j.comment == comment), None)
