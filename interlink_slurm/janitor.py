"""The janitor, run after every refresh: jobs whose grace period ran out after a delete (or
whose delete could not reach Slurm) are cancelled for good, and the directories and rows of pods
deleted longer ago than the retention are removed (every gc_interval_seconds)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from interlink_slurm.errors import SchedulerError, SchedulerUnavailable
from interlink_slurm.slurm.scheduler import Scheduler
from interlink_slurm.slurm.transport import Transport
from interlink_slurm.store import PodRecord, Store
from interlink_slurm.tracker import Clock

log = logging.getLogger(__name__)


class Janitor:
    """Ends for good the jobs of deleted pods and removes their files and rows after the
    retention, across every configured cluster."""

    def __init__(
        self,
        store: Store,
        reach: Mapping[str, tuple[Transport, Scheduler]],
        settle: Callable[[PodRecord], Awaitable[str | None]],
        forget: Callable[[str], None],
        clock: Clock,
        retention_seconds: float,
        gc_interval_seconds: float,
    ) -> None:
        """``reach``: each cluster's transport and scheduler; ``settle`` finds the job of a pod
        whose submission was cut short; ``forget`` drops what memory holds of a removed pod."""
        self.store = store
        self.reach = reach
        self.settle = settle
        self.forget = forget
        self.clock = clock
        self.retention_seconds = retention_seconds
        self.gc_interval_seconds = gc_interval_seconds
        self._last_gc: float | None = None

    async def tick(self) -> None:
        """One pass after a refresh: the kills that are due, then garbage collection when
        gc_interval_seconds have passed since the last."""
        await self.kill_due()
        now = self.clock.monotonic()
        if self._last_gc is None or now - self._last_gc >= self.gc_interval_seconds:
            self._last_gc = now
            await self.collect_garbage()

    async def kill_due(self) -> None:
        """Cancel for good, retried at every refresh until Slurm takes it."""
        for rec in await asyncio.to_thread(self.store.due_kills, self.clock.time()):
            try:
                job_id = rec.job_id or await self.settle(rec)
                if job_id is not None:
                    if rec.cluster not in self.reach:
                        raise SchedulerUnavailable(
                            f"pod {rec.uid} is on cluster {rec.cluster!r}, which is no longer "
                            "configured"
                        )
                    await self.reach[rec.cluster][1].cancel(job_id)
            except (SchedulerUnavailable, SchedulerError) as err:
                log.warning("pod %s: cannot end job %s yet: %s", rec.uid, rec.job_id, err)
                continue
            if job_id is not None:
                await asyncio.to_thread(self.store.set_kill_at, rec.uid, None)
                log.info("pod %s: deleted, job %s cancelled", rec.uid, job_id)

    async def collect_garbage(self) -> None:
        """Directories and rows of pods deleted longer ago than the retention."""
        cutoff = self.clock.time() - self.retention_seconds
        for rec in await asyncio.to_thread(self.store.expired, cutoff):
            if rec.job_id is not None and rec.final_state is None:
                continue  # its job has not been seen to end: its files are still in use
            if rec.cluster not in self.reach:
                continue  # on a cluster no longer configured: nothing to reach it with
            await asyncio.to_thread(self.reach[rec.cluster][0].remove_tree, rec.pod_dir)
            await asyncio.to_thread(self.store.forget, rec.uid)
            self.forget(rec.uid)
            log.info(
                "pod %s/%s (%s): files removed after retention", rec.namespace, rec.name, rec.uid
            )
