"""The Scheduler through pyslurm (Slurm's C API), for sites where it is installed.

pyslurm is optional: it must be built against the site's exact Slurm release (pip install
"pyslurm==<major>.<minor>.*"), so it is not a dependency of this package. Without it, choosing
``scheduler: pyslurm`` fails at start with a message saying so; nothing else is affected.

It uses pyslurm's object API (23.x and later: JobSubmitDescription, Jobs, Job, Nodes). The
library is absent from the test machine (pyslurm does not build against Slurm 22.05), so this
module is exercised by unit tests with a stand-in module only; prefer ``cli`` or ``rest`` unless
you need pyslurm.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from interlink_slurm.errors import SchedulerError, SchedulerUnavailable, SubmitRejected
from interlink_slurm.slurm.common import (
    INVALID_JOB,
    UNREACHABLE,
    UNUSABLE_NODE_STATES,
    estimate_with_sbatch,
    parse_gres,
)
from interlink_slurm.slurm.scheduler import ClusterResources, Estimate, FromJobListing, JobInfo
from interlink_slurm.slurm.transport import Transport

T = TypeVar("T")
ALREADY_ENDED = (INVALID_JOB, "already completing or completed")


def load_pyslurm() -> Any:
    """The pyslurm module, or a SchedulerError saying how to install it."""
    try:
        return importlib.import_module("pyslurm")
    except ImportError as err:
        raise SchedulerError(
            "scheduler: pyslurm needs the pyslurm package, built for this cluster's Slurm "
            f"release (pip install 'pyslurm==<major>.<minor>.*'), and it cannot be imported "
            f"({err}); or use scheduler: cli or scheduler: rest"
        ) from err


class PyslurmScheduler(FromJobListing):
    """Implements the Scheduler protocol (see scheduler.py) with pyslurm; start estimates run
    ``sbatch --test-only`` through the transport (``sbatch``: the command's path), as every
    scheduler's do."""

    def __init__(
        self,
        transport: Transport,
        *,
        module: Any = None,
        sbatch: str = "sbatch",
        environment: Mapping[str, str] | None = None,
    ) -> None:
        """``environment``: the jobs' (pyslurm adds this process's SLURM_* to it); default:
        this process's whole environment, as sbatch would export it."""
        self._transport = transport
        self._py = module if module is not None else load_pyslurm()
        self._sbatch = sbatch
        self._environment = None if environment is None else dict(environment)

    async def _call(self, what: str, fn: Callable[[], T], *, submitting: bool = False) -> T:
        try:
            return await asyncio.to_thread(fn)
        except Exception as err:
            if isinstance(err, (SchedulerError, SchedulerUnavailable)):
                raise
            text = str(err) or type(err).__name__
            if any(marker in text.lower() for marker in UNREACHABLE):
                raise SchedulerUnavailable(f"Slurm is not reachable ({what}): {text}") from err
            if submitting:
                raise SubmitRejected(f"Slurm refused the job: {text}") from err
            raise SchedulerError(f"pyslurm: {what} failed: {text}") from err

    async def submit(self, script_path: str, workdir: str, directives: Sequence[str]) -> str:
        # pyslurm reads the script (and its #SBATCH lines) itself: it must be on this machine,
        # hence the local transport (see factory.py).
        if await asyncio.to_thread(self._transport.size, script_path) is None:
            raise SchedulerError(f"the job script {script_path} does not exist")

        def submit() -> int:
            desc = self._py.JobSubmitDescription(
                script=script_path, working_directory=workdir, environment=self._environment
            )
            desc.load_sbatch_options()
            return int(desc.submit())

        return str(await self._call("submitting a job", submit, submitting=True))

    async def _on_job(
        self, what: str, fn: Callable[[], object], gone: Sequence[str] = ALREADY_ENDED
    ) -> None:
        """A call on one job; pyslurm saying that the job is gone (``gone``) is fine."""
        try:
            await self._call(what, fn)
        except SchedulerError as err:
            if not any(m in str(err).lower() for m in gone):
                raise

    async def cancel(self, job_id: str) -> None:
        await self._on_job(f"cancelling job {job_id}", lambda: self._py.Job(int(job_id)).cancel())

    async def release(self, job_id: str) -> None:
        await self._on_job(
            f"releasing job {job_id}",
            lambda: self._py.Job(int(job_id)).release(),
            (*ALREADY_ENDED, "already finished"),
        )

    async def signal(self, job_id: str, signal: str) -> None:
        await self._on_job(
            f"signalling job {job_id}",
            lambda: self._py.Job(int(job_id)).send_signal(signal, steps="all"),
        )

    async def _jobs(self) -> dict[str, JobInfo]:
        loaded = await self._call("listing jobs", lambda: self._py.Jobs.load())
        out: dict[str, JobInfo] = {}
        for job in loaded.values():
            reason = str(getattr(job, "state_reason", "") or "")
            out[str(job.id)] = JobInfo(
                str(job.id),
                str(job.state).upper(),
                "" if reason == "None" else reason,
                str(getattr(job, "comment", "") or ""),
                str(getattr(job, "nodes", "") or ""),
            )
        return out

    async def final_states(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        return {}

    async def resources(self, partitions: Sequence[str]) -> ClusterResources:
        nodes = await self._call("listing nodes", lambda: self._py.Nodes.load())
        wanted = set(partitions)
        cpus = memory = count = 0
        gpus: dict[str, int] = {}
        for node in nodes.values():
            if wanted and not wanted & set(getattr(node, "partitions", None) or []):
                continue
            state = str(getattr(node, "state", "") or "unknown").lower()
            if any(bad in state for bad in UNUSABLE_NODE_STATES):
                continue
            count += 1
            cpus += int(getattr(node, "total_cpus", 0) or 0)
            memory += int(getattr(node, "real_memory", 0) or 0)
            configured = getattr(node, "configured_gres", None) or {}
            gres = ",".join(f"{k}:{v}" for k, v in configured.items())
            for kind, n in parse_gres(gres).items():
                gpus[kind] = gpus.get(kind, 0) + n
        return ClusterResources(cpus=cpus, memory_mb=memory, gpus=gpus, nodes=count)

    async def ping(self) -> None:
        # Any successful call to slurmctld proves it answers.
        await self._call("asking slurmctld", lambda: self._py.Nodes.load())

    async def estimate(self, directives: Sequence[str], timeout: float) -> Estimate:
        return await estimate_with_sbatch(self._transport, self._sbatch, directives, timeout)
