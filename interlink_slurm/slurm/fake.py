"""An in-memory Scheduler for unit tests of error paths (the real one is tested on real Slurm).

Jobs are submitted into a dict; ``fail_next`` scripts the errors the next calls raise.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from interlink_slurm.slurm.scheduler import ClusterResources, Estimate, JobInfo


@dataclass
class FakeScheduler:
    """An in-memory Scheduler for tests: jobs are created PENDING and changed by the test;
    ``fail_next`` makes one call of a method raise."""

    jobs: dict[str, JobInfo] = field(default_factory=dict)
    scripts: dict[str, str] = field(default_factory=dict)  # job id → script path
    calls: list[str] = field(default_factory=list)
    fail_next: dict[str, Exception] = field(default_factory=dict)  # method → error, once
    down: Exception | None = None  # raised by every call while set
    resources_answer: ClusterResources = field(
        default_factory=lambda: ClusterResources(cpus=64, memory_mb=256_000, gpus={"a100": 8})
    )
    next_id: int = 1000
    signals: list[tuple[str, str]] = field(default_factory=list)
    accounting: dict[str, JobInfo] = field(default_factory=dict)  # what sacct would say
    # Partition ("" for none given) → seconds from now its jobs start; missing: now.
    starts: dict[str, float] = field(default_factory=dict)
    estimate_delay: float = 0.0  # seconds each estimate takes to answer

    def _enter(self, method: str) -> None:
        self.calls.append(method)
        if self.down is not None:
            raise self.down
        if method in self.fail_next:
            raise self.fail_next.pop(method)

    async def submit(self, script_path: str, workdir: str, directives: Sequence[str]) -> str:
        self._enter("submit")
        self.next_id += 1
        job_id = str(self.next_id)
        comment = ""
        held = False
        with open(script_path) as f:
            for line in f:
                if line.startswith("#SBATCH --comment="):
                    comment = line.strip().split("=", 1)[1]
                held = held or line.strip() == "#SBATCH --hold"
        reason = "JobHeldUser" if held else "Priority"
        self.jobs[job_id] = JobInfo(job_id, "PENDING", reason, comment)
        self.scripts[job_id] = script_path
        return job_id

    async def cancel(self, job_id: str) -> None:
        self._enter("cancel")
        if job_id in self.jobs:
            old = self.jobs[job_id]
            self.jobs[job_id] = JobInfo(job_id, "CANCELLED", "", old.comment)

    async def release(self, job_id: str) -> None:
        self._enter("release")
        old = self.jobs.get(job_id)
        if old is not None and old.reason == "JobHeldUser":
            self.jobs[job_id] = JobInfo(job_id, "PENDING", "Priority", old.comment)

    async def signal(self, job_id: str, signal: str) -> None:
        self._enter("signal")
        self.signals.append((job_id, signal))

    async def final_states(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        self._enter("final_states")
        return {j: self.accounting[j] for j in job_ids if j in self.accounting}

    async def query(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        self._enter("query")
        return {j: self.jobs[j] for j in job_ids if j in self.jobs}

    async def find_by_comment(self, comment: str) -> JobInfo | None:
        self._enter("find_by_comment")
        return next((j for j in self.jobs.values() if j.comment == comment), None)

    async def resources(self, partitions: Sequence[str]) -> ClusterResources:
        self._enter("resources")
        return self.resources_answer

    async def ping(self) -> None:
        self._enter("ping")

    async def estimate(self, directives: Sequence[str], timeout: float) -> Estimate:
        self._enter("estimate")
        await asyncio.sleep(self.estimate_delay)
        partitions = [d.split("=", 1)[1] for d in directives if d.startswith("--partition=")]
        partition = partitions[-1] if partitions else ""  # the last one given wins, as in sbatch
        return Estimate(
            start=time.time() + self.starts.get(partition, 0.0),
            detail=f"using 1 processors on nodes fake in partition {partition or 'default'}",
        )
