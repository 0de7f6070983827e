"""The use cases: create, delete, status, logs, ping. No HTTP here, no Slurm syntax either.

Service orchestrates the parts, each with one job: per cluster a status tracker (tracker.py:
one scheduler query and one state-file read per refresh, whatever the number of pods and of
/status calls), the refresher that runs them at their pace (refresher.py), the status view
that answers /status from them with no Slurm call and no file read (statuses.py), the
submitter that turns a new pod into its job (submitter.py), the janitor
(janitor.py: grace-period kills, GC), the reconciler (reconciler.py), the placement book
(book.py) and the node's capacity (capacity.py). A job seen to end has its final state written
to the store, and is never asked about again once its watch is over.

With several targets (placement), a pod's job may be on any of several clusters; the store says
which, and every later call about the pod goes to that cluster's transport and scheduler.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from interlink_slurm import jobdir, logsetup, submission
from interlink_slurm.book import PlacementBook
from interlink_slurm.capacity import NodeCapacity
from interlink_slurm.clusters import Cluster
from interlink_slurm.config import DEFAULT_CLUSTER, Settings
from interlink_slurm.errors import (
    BadRequest,
    NotFound,
    SchedulerError,
    SchedulerUnavailable,
)
from interlink_slurm.gang import Gang
from interlink_slurm.groups import GroupBook
from interlink_slurm.janitor import Janitor
from interlink_slurm.logs import LogSource, stream_log
from interlink_slurm.metrics import Metrics
from interlink_slurm.placement import Placement, place
from interlink_slurm.pulls import LOG as PULL_LOG
from interlink_slurm.pulls import Puller
from interlink_slurm.reconciler import Reconciler
from interlink_slurm.refresher import Refresher
from interlink_slurm.registry import Registries
from interlink_slurm.slurm.scheduler import Scheduler
from interlink_slurm.slurm.states import (
    ACTIVE,
    base_state,
)
from interlink_slurm.slurm.transport import Transport
from interlink_slurm.statuses import StatusView
from interlink_slurm.store import PodRecord, Store
from interlink_slurm.submitter import Submitter
from interlink_slurm.tracker import Clock, StatusTracker, SystemClock
from interlink_slurm.translate.pod import (
    ImageCommands,
)
from interlink_slurm.translate.targets import Candidate, candidates
from interlink_slurm.wire import (
    CreateResponse,
    LogRequest,
    PingResponse,
    Pod,
    PodStatus,
    RetrievedPodData,
)

log = logging.getLogger(__name__)

WORKER_THREADS = 64
# What /getLogs?source= can read besides a container: the batch job's output, the pulls'.
LOG_SOURCES = ("container", "job", "pull")


class Service:
    """The plugin's work behind interLink's calls: pods become Slurm jobs (create), are ended
    (delete) and report their containers' states (status); one instance per process."""

    def __init__(
        self,
        settings: Settings,
        scheduler: Scheduler,
        transport: Transport,
        store: Store,
        metrics: Metrics | None = None,
        clusters: Mapping[str, tuple[Transport, Scheduler]] | None = None,
        clock: Clock | None = None,
    ) -> None:
        """``scheduler`` and ``transport`` reach the default cluster (the top-level keys);
        ``clusters`` the others that targets use, by name; ``clock`` the time (a test's)."""
        self.settings = settings
        self.scheduler = scheduler
        self.transport = transport
        self.store = store
        self.metrics = metrics or Metrics()
        self.clock = clock or SystemClock()
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self.book = PlacementBook(self.metrics)
        self.clusters: dict[str, Cluster] = {}
        # Per cluster: its jobs and its pods' states as of the last refresh.
        self.trackers: dict[str, StatusTracker] = {}
        for name, (t, s) in {DEFAULT_CLUSTER: (transport, scheduler), **(clusters or {})}.items():
            own = settings.for_cluster(name)
            puller = Puller(own, t, s, store, self.request_refresh)
            self.clusters[name] = Cluster(name, t, s, puller, str(own.data_root))
            # A job run as a pod's own user (runAsUser: sbatch --uid, root submitting, where
            # namespace_uids allows it) cannot write the data root's mark: there every read
            # looks at every pod directory.
            marks = not (own.namespace_uids and submission.submits_as_root(own, t))
            self.trackers[name] = StatusTracker(
                name, t, s, str(own.data_root), store, self.clock, marks=marks
            )
        self.janitor = Janitor(
            store,
            {n: (c.transport, c.scheduler) for n, c in self.clusters.items()},
            self._settle,
            self._forget,
            self.clock,
            settings.retention_seconds,
            settings.gc_interval_seconds,
        )
        self.reconciler = Reconciler(store, self._cluster, self.book, self._forget)
        self.registries = Registries(
            settings, asked=lambda outcome: self.metrics.image_lookups.labels(outcome).inc()
        )
        # Pod groups (gang.py): members kept until the last arrives, then one job for all.
        self.gang = Gang(self, GroupBook(store.path))
        self.capacity = NodeCapacity(
            settings, {n: c.scheduler for n, c in self.clusters.items()}, self.clock
        )
        self.puller = self.clusters[DEFAULT_CLUSTER].puller
        self.refresher = Refresher(
            settings,
            store,
            self.trackers,
            self.book,
            self.metrics,
            self.clock,
        )
        self.statuses = StatusView(
            store, self.trackers, self._cluster, self.gang, self.clock, self.request_refresh
        )
        # Where jobs are submitted as root, which may then choose a pod's Unix user (sbatch
        # --uid): this process itself as root with the local sbatch, or SSH as root.
        self.root_clusters = {
            name
            for name in self.clusters
            if submission.submits_as_root(settings.for_cluster(name), self.clusters[name].transport)
        }
        self.submitter = Submitter(
            settings,
            self.clusters,
            self.root_clusters,
            store,
            self.metrics,
            self.place,
            lambda: self.request_refresh(new_pod=True),
        )

    def _forget(self, uid: str) -> None:
        """What memory holds of a pod whose row is gone."""
        self.book.forget(uid)
        for tracker in self.trackers.values():
            tracker.forget(uid)

    def _cluster(self, rec: PodRecord) -> Cluster:
        cluster = self.clusters.get(rec.cluster)
        if cluster is None:
            raise SchedulerUnavailable(
                f"pod {rec.uid} is on cluster {rec.cluster!r}, which is no longer configured"
            )
        return cluster

    def _lock(self, uid: str) -> asyncio.Lock:
        lock = self._locks.get(uid)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[uid] = lock
        return lock

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Settle what a crash left half-done, then keep job states fresh in the background."""
        # Blocking work (files, SQLite, Slurm commands) runs in threads; asyncio's default pool
        # is min(32, cores + 4), too small to keep Slurm busy on a small login VM.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=WORKER_THREADS, thread_name_prefix="ils")
        )
        await self.reconcile()
        for rec in await asyncio.to_thread(self.store.waiting_placed):
            self.book.enter(rec)
        for rec in await asyncio.to_thread(self.store.pulling):
            if rec.cluster in self.clusters:
                self.clusters[rec.cluster].puller.resume([rec])
        await self.refresher.start(self._after_refresh)

    async def _after_refresh(self) -> None:
        await self.janitor.tick()
        await self.gang.tick()  # pod groups: timeouts, and what ended a group's job

    async def stop(self) -> None:
        """Stop the background tasks (refresher, janitor, pulls) at shutdown."""
        for cluster in self.clusters.values():
            await cluster.puller.stop()
        await self.refresher.stop()
        await self.registries.aclose()

    async def refresh(self, queue: bool = True) -> None:
        """One refresh of every cluster's tracker now (see Refresher.refresh)."""
        await self.refresher.refresh(queue)

    def request_refresh(self, new_pod: bool = False) -> None:
        """A refresh of the queue too, now (a new pod, a delete, a pull done; see
        Refresher.request)."""
        self.refresher.request(new_pod)

    async def reconcile(self) -> None:
        """Settle the pods the store and Slurm disagree about (after a crash or an outage)."""
        await self.reconciler.reconcile()

    async def _settle(self, rec: PodRecord) -> str | None:
        return await self.reconciler.settle(rec)

    # --- create / delete ------------------------------------------------------------------------

    async def create(self, data: RetrievedPodData) -> CreateResponse:
        """Submit the pod's job, once: a pod that already has a job answers with it (interLink
        retries creates); a pod whose submission was in flight is settled first."""
        pod = data.pod
        uid = pod.uid
        logsetup.bind(uid)
        joining = self.gang.joining(pod)
        if joining is not None:
            data = await self.registries.pin(data)
            return await self.gang.create(data, joining)  # a member of a pod group
        async with self._lock(uid):
            rec = self.store.get(uid)
            if rec is not None and rec.job_id is None:
                await self._settle(rec)
                rec = self.store.get(uid)
            if rec is not None and rec.job_id is not None:
                log.info("pod %s already has job %s", uid, rec.job_id)
                return CreateResponse(PodUID=uid, PodJID=rec.job_id)
            try:
                # imagePullPolicy Always: the image of the tag's digest now.
                data = await self.registries.pin(data)
                return await self.submitter.submit(data)
            except BaseException:
                # Whatever cut the create short (a rejection, an SSH outage, a cancelled
                # request), the pod waits on no target: counted there, it would skew every
                # later tie towards the other targets for good. A job that landed anyway is
                # counted again when its pod is settled.
                self.book.forget(uid)
                raise

    async def place(
        self, data: RetrievedPodData, image_commands: ImageCommands | None = None
    ) -> Placement:
        """Where the pod's job goes: with targets, the eligible one where Slurm expects it to
        start soonest; without, the top-level configuration. Raises PodRejected."""
        placement = await self.decide(self.targets_for(data, image_commands))
        if self.settings.targets:
            self.book.placed(placement, [data.pod.uid])
        return placement

    def targets_for(
        self, data: RetrievedPodData, image_commands: ImageCommands | None = None
    ) -> list[Candidate]:
        """The pod planned on each placement target (its directory on that target's cluster)."""
        pod = data.pod

        def pod_dir(cluster: str) -> str:
            root = self.clusters[cluster].data_root
            return jobdir.pod_dir(root, pod.namespace, pod.name, pod.uid)

        return candidates(data, self.settings, pod_dir, image_commands, self.root_clusters)

    async def decide(self, cands: Sequence[Candidate]) -> Placement:
        """Of ``cands``, the one Slurm expects to start soonest, placed pods waiting counted."""
        schedulers = {name: c.scheduler for name, c in self.clusters.items()}
        return await place(
            cands,
            schedulers,
            self.settings.placement_estimate_seconds,
            waiting=self.book.counts,
        )

    def _grace_seconds(self, pod: Pod) -> int:
        meta_grace = (pod.metadata.model_extra or {}).get("deletionGracePeriodSeconds")
        for value in (meta_grace, pod.spec.termination_grace_period_seconds):
            if isinstance(value, int) and value >= 0:
                return value
        return self.settings.default_grace_seconds

    async def delete(self, pod: Pod) -> str:
        """End the pod's job (its preStop hooks and grace period first when it runs); when Slurm
        does not answer, the delete is kept and carried out once it does."""
        uid = pod.uid.lower()
        if not uid:
            return "pod has no uid: nothing to delete"
        logsetup.bind(uid)
        async with self._lock(uid):
            left = await self.gang.delete(pod)  # a member of a pod group that waits
            if left is not None:
                return left
            rec = self.store.get(uid)
            if rec is None or not rec.is_pod(pod.namespace, pod.name):
                return f"pod {uid} is not known here: nothing to delete"
            self._cluster(rec)  # a cluster no longer configured: never reachable, say so
            try:
                return await self._delete(pod, rec)
            except SchedulerUnavailable as err:
                # interLink may forget the pod after this answer (interLink #540): the delete
                # is kept instead, and the refresher cancels the job once Slurm answers.
                await asyncio.to_thread(self.store.mark_deleted, uid)
                await asyncio.to_thread(self.store.set_kill_at, uid, self.clock.time())
                self.request_refresh()
                message = (
                    f"pod {uid}: Slurm does not answer ({err}); its job will be cancelled as "
                    "soon as Slurm answers"
                )
                log.warning(message)
                return message

    async def _delete(self, pod: Pod, rec: PodRecord) -> str:
        uid = rec.uid
        job_id = rec.job_id or await self._settle(rec)
        if job_id is None:
            return f"pod {uid} had no job: nothing to delete"
        if rec.final_state is not None:
            await asyncio.to_thread(self.store.mark_deleted, uid)
            return f"pod {uid}: job {job_id} has already ended"
        if rec.deleted is not None:
            return f"pod {uid}: job {job_id} is already being ended"
        logsetup.bind(job=job_id)
        cluster = self._cluster(rec)
        grace = self._grace_seconds(pod)
        # A job held for its images is pending: cancelled below at once, like any other.
        cluster.puller.forget(uid)
        # The snapshot may be a refresh old; a delete is rare enough to ask Slurm itself.
        job = (await cluster.scheduler.query([job_id])).get(job_id)
        if grace > 0 and job is not None and base_state(job) in ACTIVE:
            # Every container's preStop hook runs, then the container gets SIGTERM (the job
            # script does both on SIGURG, which nothing else heeds) and the rest of the
            # grace period to end; the refresher cancels the job for good when it runs out.
            try:
                await cluster.scheduler.signal(job_id, "URG")
            except SchedulerError as err:
                # Slurm would not signal it (it was changing state): end it plainly.
                log.info("job %s could not be signalled (%s): cancelling it", job_id, err)
                await cluster.scheduler.cancel(job_id)
                message = f"pod {uid}: job {job_id} cancelled"
            else:
                await asyncio.to_thread(self.store.set_kill_at, uid, self.clock.time() + grace)
                message = f"pod {uid}: job {job_id} signalled, {grace} s to end"
        else:
            await cluster.scheduler.cancel(job_id)
            message = f"pod {uid}: job {job_id} cancelled"
        await asyncio.to_thread(self.store.mark_deleted, uid)
        self.request_refresh()
        log.info(message)
        return message

    # --- status -------------------------------------------------------------------------------

    async def status(self, pods: Sequence[Pod]) -> list[PodStatus]:
        """Every known pod's container statuses, from the last refresh's snapshot: no Slurm
        call and no file read per request (statuses.py)."""
        return await self.statuses.status(pods)

    # --- logs -----------------------------------------------------------------------------------

    async def logs(self, req: LogRequest, source: str = "container") -> AsyncIterator[bytes]:
        """The log stream of one container; or, by ``source``, of the batch job itself (job)
        or of the image pulls on the submit host (pull)."""
        logsetup.bind(req.PodUID)
        rec = self.store.get(req.PodUID)
        if rec is not None and rec.job_id:
            logsetup.bind(job=rec.job_id)
        if rec is None or not rec.is_pod(req.Namespace, req.PodName):
            raise NotFound(
                f"pod {req.Namespace}/{req.PodName} (uid {req.PodUID}) is not known to this plugin"
            )
        transport = self._cluster(rec).transport
        name = req.ContainerName
        job_output = source != "container"
        if not name and not job_output:
            # interLink passes an empty name on; like kubectl, a one-container pod means it.
            if len(rec.containers) != 1:
                raise BadRequest(
                    f"pod {rec.namespace}/{rec.name} has {len(rec.containers)} containers "
                    f"({', '.join(rec.containers)}): ContainerName must name one"
                )
            name = rec.containers[0]
        if source == "job":
            path = f"{rec.pod_dir}/job.out"
        elif source == "pull":
            path = f"{rec.pod_dir}/{PULL_LOG}"
        else:
            if name not in rec.all_containers:
                raise NotFound(
                    f"pod {rec.namespace}/{rec.name} has no container {name!r} "
                    f"(containers: {', '.join(rec.all_containers)})"
                )
            suffix = "previous.log" if req.Opts.Previous else "log"
            path = jobdir.container_file(rec.pod_dir, name, suffix)
            if req.Opts.Previous and await asyncio.to_thread(transport.size, path) is None:
                raise BadRequest(f"container {name!r} of pod {rec.name} has no previous run")
        exit_file = jobdir.container_file(rec.pod_dir, name, "exit") if not job_output else None

        def ended() -> bool:
            fresh = self.store.get(rec.uid)
            if fresh is None or fresh.final_state is not None:
                return True
            if req.Opts.Previous:
                return True
            return exit_file is not None and transport.size(exit_file) is not None

        return stream_log(transport, LogSource(path, ended), req.Opts)

    # --- node -----------------------------------------------------------------------------------

    async def ping(self) -> PingResponse:
        """What the clusters can give, for interLink's ping (the status call without pods)."""
        return await self.capacity.ping()

    async def ready(self) -> None:
        """Return when the service can serve (readiness probe); raise otherwise."""
        return await self.capacity.ready()

    def snapshot_age(self) -> float | None:
        """Seconds since the job states were last read from Slurm; None before the first read."""
        return self.refresher.snapshot_age()
