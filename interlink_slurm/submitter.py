"""A new pod's job: where it goes and its final plan, then its directory, its row in flight
(before sbatch: a crash after it is settled from Slurm by the job's comment), the submission
and the job id. The service calls it under the pod's lock, for a pod with no job yet.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping

from interlink_slurm import jobdir, logsetup, submission
from interlink_slurm.clusters import Cluster
from interlink_slurm.config import Settings
from interlink_slurm.errors import PodRejected, SchedulerError, SchedulerUnavailable, StorageError
from interlink_slurm.metrics import Metrics
from interlink_slurm.placement import Placement
from interlink_slurm.pulls import encode
from interlink_slurm.store import Store
from interlink_slurm.translate.images import image_ids
from interlink_slurm.translate.plan import JobPlan, PlannedPull
from interlink_slurm.translate.pod import ImageCommands
from interlink_slurm.translate.script import render_script
from interlink_slurm.wire import CreateResponse, RetrievedPodData

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _Ready:
    """A create's decisions, ready to be written and submitted."""

    placement: Placement
    cluster: Cluster
    plan: JobPlan
    script: str
    pulls: list[PlannedPull]


class Submitter:
    """Turns a pod into its submitted job, once decided where (``place``)."""

    def __init__(
        self,
        settings: Settings,
        clusters: Mapping[str, Cluster],
        root_clusters: set[str],
        store: Store,
        metrics: Metrics,
        place: Callable[[RetrievedPodData, ImageCommands], Awaitable[Placement]],
        request_refresh: Callable[[], None],
    ) -> None:
        """``root_clusters``: where jobs are submitted as root; ``place`` chooses the target
        (and counts the pod waiting there); ``request_refresh`` asks for a refresh now."""
        self.settings = settings
        self.clusters = clusters
        self.root_clusters = root_clusters
        self.store = store
        self.metrics = metrics
        self.place = place
        self.request_refresh = request_refresh

    async def _ready(self, data: RetrievedPodData) -> _Ready:
        """What a create decides before it writes anything: the target, the final plan (images'
        commands and bind targets, the job user's group, a hold while images are pulled) and
        its script. Raises PodRejected (counted as a submit failure)."""
        uid = data.pod.uid
        try:
            commands: ImageCommands = {}
            if submission.needs_image_commands(data, self.settings):
                commands = await asyncio.to_thread(
                    submission.image_commands,
                    data,
                    self.settings,
                    {n: c.transport for n, c in self.clusters.items()},
                )
            placement = await self.place(data, commands)
            cluster = self.clusters[placement.chosen.cluster]
            plan = placement.chosen.plan
            assert plan is not None  # a chosen target has a plan
            if submission.bind_targets(self.settings, plan):
                plan = await asyncio.to_thread(
                    submission.in_images,
                    cluster.transport,
                    self.settings,
                    data,
                    placement.chosen,
                    plan,
                    commands,
                    submit_as_root=placement.chosen.cluster in self.root_clusters,
                )
            for container, warning in plan.warnings:
                log.warning("pod %s, container %s: %s", uid, container, warning)
            if plan.owner is not None and plan.owner[1] is None:
                plan = await asyncio.to_thread(submission.primary_group, cluster.transport, plan)
            pulls = []
            if plan.image_pulls and self.settings.image_pull_on == "submit_host":
                pulls = await asyncio.to_thread(cluster.puller.missing, plan.image_pulls)
            if pulls:
                # Held until the submit host has put its images in the cache.
                plan = dataclasses.replace(plan, directives=(*plan.directives, "--hold"))
            script = render_script(plan)
        except (PodRejected, StorageError) as err:
            self.metrics.submit_failures.labels(type(err).__name__).inc()
            raise
        return _Ready(placement, cluster, plan, script, pulls)

    async def submit(self, data: RetrievedPodData) -> CreateResponse:
        """Decide (target, plan, script), write the pod's directory and its row in flight,
        submit its job and record the job id. Raises PodRejected, StorageError (counted as
        submit failures) or the scheduler's errors."""
        pod = data.pod
        uid = pod.uid
        ready = await self._ready(data)
        placement, cluster, plan, pulls = ready.placement, ready.cluster, ready.plan, ready.pulls
        pod_dir = plan.pod_dir
        placed = placement.chosen.name if self.settings.targets else ""
        final, script = plan, ready.script

        def prepare() -> str:
            """The pod's directory, then its row in flight: one thread hop for both."""
            try:
                path = jobdir.write_pod(cluster.transport, final, script)
                if final.owner is not None:
                    submission.hand_over(cluster.transport, final)
            except (PodRejected, StorageError) as err:
                self.metrics.submit_failures.labels(type(err).__name__).inc()
                raise
            self.store.begin_submit(
                uid,
                pod.namespace,
                pod.name,
                pod_dir,
                [c.name for c in pod.spec.init_containers],
                [c.name for c in pod.spec.containers],
                pulls=encode(pulls) if pulls else None,
                cluster=cluster.name,
                placement=placement.record() if placed else None,
                warnings=final.warnings,
                image_ids=image_ids(final),
            )
            return path

        script_path = await asyncio.to_thread(prepare)
        try:
            job_id = await cluster.scheduler.submit(script_path, pod_dir, plan.directives)
        except SchedulerUnavailable:
            # sbatch may have reached Slurm before failing: the row stays in flight and the
            # next create (or a restart) asks Slurm for the job by its comment.
            self.metrics.submit_failures.labels("SchedulerUnavailable").inc()
            raise
        except SchedulerError as err:
            self.metrics.submit_failures.labels(type(err).__name__).inc()
            await asyncio.to_thread(self.store.forget, uid)
            await asyncio.to_thread(cluster.transport.remove_tree, pod_dir)
            raise
        logsetup.bind(job=job_id)

        await asyncio.to_thread(self.store.set_job, uid, job_id)
        if pulls:
            cluster.puller.start(uid, job_id, pod_dir, pulls)
        self.request_refresh()
        where = f" on target {placed} ({placement.basis})" if placed else ""
        log.info(
            "pod %s/%s (%s) submitted as job %s%s", pod.namespace, pod.name, uid, job_id, where
        )
        return CreateResponse(PodUID=uid, PodJID=job_id)
