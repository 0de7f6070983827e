"""Submissions a crash (or an outage) cut short: Slurm, by the job's comment, says whether they
landed; a job that left the queue is found by the first line its script wrote."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from interlink_slurm import jobdir
from interlink_slurm.book import PlacementBook
from interlink_slurm.clusters import Cluster
from interlink_slurm.errors import SchedulerUnavailable
from interlink_slurm.pulls import decode
from interlink_slurm.store import PodRecord, Store
from interlink_slurm.translate.pod import JOB_COMMENT_PREFIX

log = logging.getLogger(__name__)


class Reconciler:
    """Settles the pods whose submission a crash or an outage cut short: whether their job
    landed, by its comment (or its script's first line once it left the queue)."""

    def __init__(
        self,
        store: Store,
        cluster_of: Callable[[PodRecord], Cluster],
        book: PlacementBook,
        forget: Callable[[str], None],
    ) -> None:
        """``cluster_of`` raises SchedulerUnavailable for a cluster no longer configured;
        ``forget`` drops what memory holds of a pod whose row is gone."""
        self.store = store
        self.cluster_of = cluster_of
        self.book = book
        self.forget = forget

    async def reconcile(self) -> None:
        """Every pod in flight (at startup)."""
        down: set[str] = set()  # clusters that did not answer: their other pods wait too
        for rec in await asyncio.to_thread(self.store.in_flight):
            if rec.cluster in down:
                continue
            try:
                await self.settle(rec)
            except SchedulerUnavailable as err:
                log.warning("cannot reconcile pod %s now: %s", rec.uid, err)
                down.add(rec.cluster)

    async def settle(self, rec: PodRecord) -> str | None:
        """The job of a pod in flight, recorded; None when it never landed (the row is gone)."""
        cluster = self.cluster_of(rec)
        job = await cluster.scheduler.find_by_comment(f"{JOB_COMMENT_PREFIX}{rec.uid}")
        if job is None:
            # Not in the queue (any more): if it ran, its script said which job it was.
            try:
                ran = await asyncio.to_thread(
                    jobdir.read_started_job, cluster.transport, rec.pod_dir
                )
            except OSError:
                ran = None
            if ran is not None:
                await asyncio.to_thread(self.store.set_job, rec.uid, ran)
                log.info("pod %s: its job %s ran and left the queue", rec.uid, ran)
                return ran
            await asyncio.to_thread(self.store.forget, rec.uid)
            self.forget(rec.uid)
            return None
        await asyncio.to_thread(self.store.set_job, rec.uid, job.job_id)
        log.info("pod %s: found its job %s in Slurm", rec.uid, job.job_id)
        if rec.started is None and rec.deleted is None:
            # Its create failed after sbatch had reached Slurm: it waits on its target after all.
            self.book.enter(rec)
        if rec.pulls is not None and rec.deleted is None:
            cluster.puller.start(rec.uid, job.job_id, rec.pod_dir, decode(rec.pulls))
        return job.job_id
