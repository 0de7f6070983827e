"""The use cases: create, delete, status, logs, ping. No HTTP here, no Slurm syntax either.

Service orchestrates the parts, each with one job: per cluster a status tracker (tracker.py:
one scheduler query and one state-file read per refresh, whatever the number of pods and of
/status calls; /status is served from it, with no Slurm call and no file read), the janitor
(janitor.py: grace-period kills, GC), the reconciler (reconciler.py), the placement book
(book.py) and the node's capacity (capacity.py). A job seen to end has its final state written
to the store, and is never asked about again once its watch is over.

With several targets (placement), a pod's job may be on any of several clusters; the store says
which, and every later call about the pod goes to that cluster's transport and scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
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
    PodRejected,
    SchedulerError,
    SchedulerUnavailable,
    StorageError,
)
from interlink_slurm.gang import Gang
from interlink_slurm.groups import GroupBook
from interlink_slurm.janitor import Janitor
from interlink_slurm.logs import LogSource, stream_log
from interlink_slurm.metrics import Metrics
from interlink_slurm.placement import Placement, describe, place
from interlink_slurm.pulls import LOG as PULL_LOG
from interlink_slurm.pulls import Puller, encode
from interlink_slurm.reconciler import Reconciler
from interlink_slurm.slurm.scheduler import JobInfo, Scheduler
from interlink_slurm.slurm.states import (
    ACTIVE,
    CREATING_REASON,
    TERMINAL,
    UNREACHABLE_REASON,
    WAITING,
    base_state,
    container_statuses,
)
from interlink_slurm.slurm.transport import LocalTransport, Transport
from interlink_slurm.store import PodRecord, Store
from interlink_slurm.tracker import GONE, Clock, StatusTracker, SystemClock
from interlink_slurm.translate.plan import JobPlan, PlannedPull
from interlink_slurm.translate.pod import (
    ImageCommands,
)
from interlink_slurm.translate.script import render_script
from interlink_slurm.translate.targets import Candidate, candidates
from interlink_slurm.wire import (
    ContainerState,
    ContainerStateWaiting,
    ContainerStatus,
    CreateResponse,
    LogRequest,
    PingResponse,
    Pod,
    PodStatus,
    RetrievedPodData,
)

log = logging.getLogger(__name__)

MIN_REFRESH_GAP_SECONDS = 0.5
# Between the end of a refresh and the start of the next, however long it took.
MIN_REFRESH_PAUSE_SECONDS = 0.1
# The refresh done at startup, before serving, is given this long at most.
FIRST_REFRESH_SECONDS = 10.0
# While a pod created this recently has containers not yet started, refreshes come this often.
STARTING_SECONDS = 30.0
STARTING_REFRESH_SECONDS = 0.5
# ... where every cluster's files are local: a state read is then no command, only a few stats.
STARTING_REFRESH_LOCAL_SECONDS = 0.1
WORKER_THREADS = 64
# What /getLogs?source= can read besides a container: the batch job's output, the pulls'.
LOG_SOURCES = ("container", "job", "pull")
# A job seen to end is still watched this long, while Slurm lists it: it may be requeued.
ENDED_WATCH_SECONDS = 600.0


@dataclasses.dataclass(frozen=True)
class _Ready:
    """A create's decisions, ready to be written and submitted."""

    placement: Placement
    cluster: Cluster
    plan: JobPlan
    script: str
    pulls: list[PlannedPull]


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
        self._snapshot_at: float | None = None
        self._starting = False  # a new pod's containers have not all started yet
        # The queue's own pace (_queue_due): asked now, when last, and how often while idle.
        self._queue_now = True
        self._queue_at: float | None = None
        self._queue_interval = settings.status_refresh_seconds
        self._wake: asyncio.Event | None = None
        self._refresh_lock: asyncio.Lock | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.book = PlacementBook(self.metrics)
        self.clusters: dict[str, Cluster] = {}
        # Per cluster: its jobs and its pods' states as of the last refresh.
        self.trackers: dict[str, StatusTracker] = {}
        for name, (t, s) in {DEFAULT_CLUSTER: (transport, scheduler), **(clusters or {})}.items():
            own = settings.for_cluster(name)
            puller = Puller(own, t, s, store, self._request_refresh)
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
        # Pod groups (gang.py): members kept until the last arrives, then one job for all.
        self.gang = Gang(self, GroupBook(store.path))
        self.capacity = NodeCapacity(
            settings, {n: c.scheduler for n, c in self.clusters.items()}, self.clock
        )
        self.puller = self.clusters[DEFAULT_CLUSTER].puller
        # Every cluster's pod files on this machine: reading them runs no command.
        self._files_local = all(
            isinstance(c.transport, LocalTransport) for c in self.clusters.values()
        )
        # Where jobs are submitted as root, which may then choose a pod's Unix user (sbatch
        # --uid): this process itself as root with the local sbatch, or SSH as root.
        self.root_clusters = {
            name
            for name in self.clusters
            if submission.submits_as_root(settings.for_cluster(name), self.clusters[name].transport)
        }

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
        self._wake = asyncio.Event()
        self._refresh_lock = asyncio.Lock()
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
        # One refresh before serving: a /status right after a restart then answers from the
        # jobs and files as they are, not "being created" for pods that ran meanwhile.
        try:
            async with asyncio.timeout(FIRST_REFRESH_SECONDS):
                await self.refresh()
        except TimeoutError:
            log.warning(
                "the first status refresh took over %g s: serving meanwhile", FIRST_REFRESH_SECONDS
            )
        except Exception:
            log.exception("the first status refresh failed")
        self._tasks.append(asyncio.create_task(self._refresher(), name="refresher"))

    async def stop(self) -> None:
        """Stop the background tasks (refresher, janitor, pulls) at shutdown."""
        for cluster in self.clusters.values():
            await cluster.puller.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def reconcile(self) -> None:
        """Settle the pods the store and Slurm disagree about (after a crash or an outage)."""
        await self.reconciler.reconcile()

    async def _settle(self, rec: PodRecord) -> str | None:
        return await self.reconciler.settle(rec)

    # --- the refresher ---------------------------------------------------------------------------

    async def _refresher(self) -> None:
        assert self._wake is not None
        while True:
            started = time.monotonic()
            try:
                await self._refresh_watching(queue=self._queue_due())
                await self.janitor.tick()
                await self.gang.tick()  # pod groups: timeouts, and what ended a group's job
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("status refresh failed")
            # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancellation that
            # arrives as the wake-up does, and stop() then waits for this loop forever.
            # The interval counts from this refresh's start: a refresh slowed down by busy
            # cores (20 pods starting) does not push the next one back by its own length.
            pause = max(
                MIN_REFRESH_PAUSE_SECONDS, self.refresh_interval() - (time.monotonic() - started)
            )
            try:
                async with asyncio.timeout(pause):
                    await self._wake.wait()
                # Woken early (a new pod): the refreshes' pace holds all the same (the queue
                # keeps its own: _queue_due).
                gap = min(MIN_REFRESH_GAP_SECONDS, self.refresh_interval())
                await asyncio.sleep(max(0.0, gap - (time.monotonic() - started)))
            except TimeoutError:
                pass
            self._wake.clear()

    def refresh_interval(self) -> float:
        """The time until the next refresh: shorter while a new pod's containers have not all
        started (running is seen within STARTING_REFRESH_SECONDS of it, 0.1 s where the files
        are local, not a whole interval later), for STARTING_SECONDS after its create at most."""
        interval = self.settings.status_refresh_seconds
        starting = STARTING_REFRESH_LOCAL_SECONDS if self._files_local else STARTING_REFRESH_SECONDS
        return min(interval, starting) if self._starting else interval

    def _request_refresh(self) -> None:
        """A refresh of the queue too, now (a new pod, a delete, a pull done)."""
        self._queue_now = True
        if self._wake is not None:
            self._wake.set()

    def _queue_due(self) -> bool:
        """Whether the background refresh asks Slurm's queue this time, not only the files.

        While nothing changes, the queue is asked less and less often: its interval doubles
        from status_refresh_seconds up to status_idle_refresh_seconds (squeue of 10,000 jobs is
        most of an idle plugin's CPU). The state files are still read at every refresh, and a
        change there (how a job's end shows first: its containers end) asks the queue at once,
        as a create and a delete do. A start needs no query: see StatusTracker.ran_since_waiting."""
        if self._queue_at is None:
            return True
        since = self.clock.monotonic() - self._queue_at
        if self._queue_now:  # still leave Slurm a breath between two queries
            return since >= MIN_REFRESH_GAP_SECONDS
        return since >= self._queue_interval

    async def _refresh_watching(self, queue: bool) -> None:
        """refresh(queue). While pods start where the files are local, the files are also read
        every STARTING_REFRESH_LOCAL_SECONDS while the queue is asked: under load one squeue
        takes 0.1-0.3 s, and a start would otherwise be seen only after it."""
        if not (queue and self._starting and self._files_local):
            await self.refresh(queue=queue)
            return
        refreshing = asyncio.ensure_future(self.refresh(queue=True))
        try:
            while True:
                done, _ = await asyncio.wait({refreshing}, timeout=STARTING_REFRESH_LOCAL_SECONDS)
                if done:
                    break
                found = await asyncio.gather(
                    *(
                        self.trackers[n].refresh(rs, queue=False)
                        for n, rs in self._active_by_cluster().items()
                    )
                )
                if any(f.changed for f in found):
                    self._request_refresh()  # the jobs may have changed too
        finally:
            if not refreshing.done():
                refreshing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await refreshing
        refreshing.result()

    def _active_by_cluster(self) -> dict[str, list[PodRecord]]:
        """The pods to refresh (active, or ended within ENDED_WATCH_SECONDS), by cluster."""
        recs = self.store.active(self.clock.time() - ENDED_WATCH_SECONDS)  # from memory
        self.metrics.tracked_jobs.set(len(recs))
        by_cluster: dict[str, list[PodRecord]] = {name: [] for name in self.clusters}
        for rec in recs:
            if rec.cluster in by_cluster:
                by_cluster[rec.cluster].append(rec)
        return by_cluster

    async def refresh(self, queue: bool = True) -> None:
        """One state read per cluster for its active pods and, with ``queue``, one scheduler
        query before it."""
        lock = self._refresh_lock or asyncio.Lock()
        async with lock:
            by_cluster = self._active_by_cluster()
            if queue:
                self._queue_now = False
                self._queue_at = self.clock.monotonic()
            # Where the files are local, reading them costs no command: then, while pods start,
            # they are also read before the queue (a start is not seen a slow squeue later).
            files_first = self._starting and self._files_local
            found = await asyncio.gather(
                *(
                    self.trackers[n].refresh(rs, queue, files_first=files_first)
                    for n, rs in by_cluster.items()
                )
            )
            now = self.clock.time()
            self._starting = any(
                self.trackers[n].starting(rec, now, STARTING_SECONDS)
                for n, rs in by_cluster.items()
                for rec in rs
            )
            self._pace(queue, any(f.changed for f in found))
            if not queue:
                return
            for name, f in zip(by_cluster, found, strict=True):
                if f.answered:
                    await self._note_starts(by_cluster[name], self.trackers[name].jobs)
            if any(f.answered for f in found):
                self._snapshot_at = self.clock.monotonic()
                self.metrics.refresh_age.set(0)
            await self._count_pods()

    def _pace(self, queued: bool, changed: bool) -> None:
        """The queue's next interval (see _queue_due): back to the shortest on any change."""
        shortest = self.settings.status_refresh_seconds
        longest = max(shortest, self.settings.status_idle_refresh_seconds)
        if changed:
            self._queue_interval = shortest
            if not queued:
                self._request_refresh()  # files changed: the jobs may have too
        elif queued:
            self._queue_interval = min(longest, self._queue_interval * 2)

    async def _note_starts(self, recs: Sequence[PodRecord], jobs: Mapping[str, JobInfo]) -> None:
        now = self.clock.time()
        started = self.book.note_starts(recs, jobs, now)
        if started:
            await asyncio.to_thread(self.store.mark_started, started, now)

    async def _count_pods(self) -> None:
        counts = await asyncio.to_thread(self.store.count_by_state)
        active = counts.pop("ACTIVE", 0)
        by_state: dict[str, int] = {}
        for job in (j for t in self.trackers.values() for j in t.jobs.values()):
            state = base_state(job)
            if state not in TERMINAL:
                by_state[state] = by_state.get(state, 0) + 1
        by_state["UNSEEN"] = max(0, active - sum(by_state.values()))
        for state, n in counts.items():
            by_state[state] = by_state.get(state, 0) + n
        self.metrics.pods.clear()
        for state, n in by_state.items():
            self.metrics.pods.labels(state).set(n)

    # --- create / delete ------------------------------------------------------------------------

    async def create(self, data: RetrievedPodData) -> CreateResponse:
        """Submit the pod's job, once: a pod that already has a job answers with it (interLink
        retries creates); a pod whose submission was in flight is settled first."""
        pod = data.pod
        uid = pod.uid
        logsetup.bind(uid)
        joining = self.gang.joining(pod)
        if joining is not None:
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
                return await self._submit_new(data)
            except BaseException:
                # Whatever cut the create short (a rejection, an SSH outage, a cancelled
                # request), the pod waits on no target: counted there, it would skew every
                # later tie towards the other targets for good. A job that landed anyway is
                # counted again when its pod is settled.
                self.book.forget(uid)
                raise

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

    async def _submit_new(self, data: RetrievedPodData) -> CreateResponse:
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

        def record() -> None:
            self.store.set_job(uid, job_id)
            cluster.transport.write_file(f"{pod_dir}/job.id", f"{job_id}\n".encode(), 0o600)

        await asyncio.to_thread(record)
        if pulls:
            cluster.puller.start(uid, job_id, pod_dir, pulls)
        self._request_refresh()
        where = f" on target {placed} ({placement.basis})" if placed else ""
        log.info(
            "pod %s/%s (%s) submitted as job %s%s", pod.namespace, pod.name, uid, job_id, where
        )
        return CreateResponse(PodUID=uid, PodJID=job_id)

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
            if rec is None or not _same_pod(rec, pod.namespace, pod.name):
                return f"pod {uid} is not known here: nothing to delete"
            self._cluster(rec)  # a cluster no longer configured: never reachable, say so
            try:
                return await self._delete(pod, rec)
            except SchedulerUnavailable as err:
                # interLink may forget the pod after this answer (interLink #540): the delete
                # is kept instead, and the refresher cancels the job once Slurm answers.
                await asyncio.to_thread(self.store.mark_deleted, uid)
                await asyncio.to_thread(self.store.set_kill_at, uid, self.clock.time())
                self._request_refresh()
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
        self._request_refresh()
        log.info(message)
        return message

    # --- status ---------------------------------------------------------------------------------

    def _job_for(self, rec: PodRecord, files: jobdir.PodFiles | None = None) -> JobInfo | None:
        """What is known of the pod's job without asking Slurm; with the pod's ``files``, a job
        the queue last showed waiting is running once they count a new run."""
        assert rec.job_id is not None
        tracker = self.trackers.get(rec.cluster)
        job = tracker.jobs.get(rec.job_id) if tracker else None
        started = (
            files is not None and tracker is not None and tracker.ran_since_waiting(rec, files)
        )
        if job is not None:
            if started and base_state(job) in WAITING:
                return JobInfo(rec.job_id, "RUNNING", "", job.comment, job.nodes)
            return job
        if rec.final_state is not None:
            if rec.final_state == GONE:
                return None
            return JobInfo(rec.job_id, rec.final_state, rec.final_reason or "")
        # Submitted after the last refresh (or Slurm has not answered since): ask for one now.
        self._request_refresh()
        if started:
            return JobInfo(rec.job_id, "RUNNING", "")
        if tracker is not None and tracker.outage is not None:
            return JobInfo(rec.job_id, "PENDING", UNREACHABLE_REASON)
        return JobInfo(rec.job_id, "PENDING", CREATING_REASON)

    async def status(self, pods: Sequence[Pod]) -> list[PodStatus]:
        """Every known pod's container statuses, from the last refresh's snapshot and the pod
        directories: no Slurm call per request."""
        uids = [p.uid.lower() for p in pods if p.uid]
        recs = self.store.get_many(uids)
        out = []
        unknown = []
        for pod in pods:
            rec = recs.get(pod.uid.lower())
            if rec is None or not _same_pod(rec, pod.namespace, pod.name):
                unknown.append(pod)  # a member of a waiting pod group, or not ours
                continue
            images = {c.name: c.image for c in (*pod.spec.init_containers, *pod.spec.containers)}
            nodes = ""
            if rec.job_id is None:
                init, main = _all_waiting(rec, images, CREATING_REASON, "being submitted to Slurm")
            elif self._held_for_images(rec):
                pull = self._cluster(rec).puller.state(rec.uid)
                init, main = _all_waiting(rec, images, pull.reason, pull.message)
            else:
                seen, files_outage = await self._files_of(rec)
                job = self._job_for(rec, seen)
                init, main = container_statuses(
                    job,
                    rec.job_id,
                    rec.init_containers,
                    rec.containers,
                    seen.containers,
                    images,
                    deleted=rec.deleted is not None,
                    restarts=max(0, seen.runs - 1),
                    evicted=_evicted(seen, rec.final_state is not None),
                )
                tracker = self.trackers.get(rec.cluster)
                outage = tracker.outage if tracker and rec.final_state is None else None
                if outage or files_outage:
                    _note_outage((*init, *main), "; ".join(o for o in (outage, files_outage) if o))
                if rec.warnings:
                    _note_warnings(init, rec.warnings)
                    _note_warnings(main, rec.warnings)
                if rec.placement and job is not None and base_state(job) in WAITING:
                    _note_placement(
                        (*init, *main), describe(json.loads(rec.placement), self.clock.time())
                    )
                nodes = self.gang.node_of(rec.uid, self._nodes_of(rec))  # a member's own
                if nodes:
                    _note_nodes((*init, *main), nodes)
                self.gang.note(rec.uid, (*init, *main))  # which member ended its group's job
            out.append(
                PodStatus(
                    name=rec.name,
                    UID=rec.uid,
                    namespace=rec.namespace,
                    JID=rec.job_id or "",
                    containers=main,
                    initContainers=init,
                    NodeName=nodes or None,
                )
            )
        if unknown:
            out += await self.gang.waiting(unknown)
        return out

    async def _files_of(self, rec: PodRecord) -> tuple[jobdir.PodFiles, str | None]:
        """The pod's state files as the last refresh read them, and why they could not be read
        (then they are what was read before). No file is read here, but for a pod whose job a
        refresh saw and whose files none read (the first refresh after a restart failed):
        once, at its first /status."""
        tracker = self.trackers.get(rec.cluster)
        seen = tracker.files.get(rec.uid) if tracker is not None else None
        if tracker is not None and seen is not None:
            return seen, tracker.files_outage if rec.final_state is None else None
        if tracker is not None and rec.final_state is None and rec.job_id not in tracker.jobs:
            # Submitted since the last refresh (which _job_for asks for now): its job has not
            # been seen yet, so neither have files worth a read on this call.
            return jobdir.PodFiles({}), None
        try:
            if tracker is None:
                self._cluster(rec)  # raises: the cluster is no longer configured
                raise AssertionError("a configured cluster has a tracker")
            return await asyncio.to_thread(tracker.read_one, rec), None
        except (SchedulerUnavailable, OSError) as err:
            # The pod's files cannot be read now (SSH to the login node down, a filesystem
            # hiccup): nothing known of its containers but what Slurm says.
            return jobdir.PodFiles({}), f"cannot read the pod's files: {err}"

    def _nodes_of(self, rec: PodRecord) -> str:
        """Where the pod's job runs or ran: Slurm's node list ("" while it waits)."""
        if rec.job_id is None:
            return ""
        tracker = self.trackers.get(rec.cluster)
        job = tracker.jobs.get(rec.job_id) if tracker is not None else None
        if job is not None:
            # A requeued job waiting again runs nowhere, whatever its last run said.
            return job.nodes if base_state(job) not in WAITING else ""
        return rec.nodes or ""

    def _held_for_images(self, rec: PodRecord) -> bool:
        """Its job waits, held, for images the submit host is pulling (and no one released it
        by hand meanwhile)."""
        if rec.pulls is None or rec.deleted is not None or rec.final_state is not None:
            return False
        if rec.cluster not in self.clusters:
            return False  # no puller to ask: its files say what they can
        assert rec.job_id is not None
        job = self.trackers[rec.cluster].jobs.get(rec.job_id)
        return job is None or base_state(job) == "PENDING"

    # --- logs -----------------------------------------------------------------------------------

    async def logs(self, req: LogRequest, source: str = "container") -> AsyncIterator[bytes]:
        """The log stream of one container; or, by ``source``, of the batch job itself (job)
        or of the image pulls on the submit host (pull)."""
        logsetup.bind(req.PodUID)
        rec = self.store.get(req.PodUID)
        if rec is not None and rec.job_id:
            logsetup.bind(job=rec.job_id)
        if rec is None or not _same_pod(rec, req.Namespace, req.PodName):
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
        return None if self._snapshot_at is None else self.clock.monotonic() - self._snapshot_at


def _same_pod(rec: PodRecord, namespace: str, name: str) -> bool:
    """Whether a request names the pod of this record: the UID found it, and the namespace and
    name must agree too (a UID alone, e.g. one seen in another namespace, shows nothing)."""
    return rec.namespace == namespace and rec.name == name


def _all_waiting(
    rec: PodRecord, images: dict[str, str], reason: str, message: str
) -> tuple[list[ContainerStatus], list[ContainerStatus]]:
    def one(name: str) -> ContainerStatus:
        state = ContainerState(waiting=ContainerStateWaiting(reason=reason, message=message))
        return ContainerStatus(name=name, state=state, image=images.get(name, ""))

    return [one(n) for n in rec.init_containers], [one(n) for n in rec.containers]


def _note_placement(statuses: Sequence[ContainerStatus], placement: str) -> None:
    for st in statuses:
        if st.state.waiting is not None:
            st.state.waiting.message = f"{st.state.waiting.message} ({placement})".strip()


def _note_nodes(statuses: Sequence[ContainerStatus], nodes: str) -> None:
    """Where the job runs, in the messages a status can carry (a running state has none: the
    pod's NodeName says it then). An eviction keeps the kubelet's exact words."""
    for st in statuses:
        inner = st.state.waiting or st.state.terminated
        if inner is None or (st.state.terminated and st.state.terminated.reason == "Evicted"):
            continue
        inner.message = f"{inner.message} (Slurm node {nodes})".strip()


def _note_warnings(
    statuses: Sequence[ContainerStatus], warnings: Sequence[tuple[str, str]]
) -> None:
    """What a container runs without (a volume left out...), in its status message: a
    running container's state has no message, so it is said while waiting and once ended."""
    for st in statuses:
        said = [w for c, w in warnings if c in (st.name, "")]
        inner = st.state.waiting or st.state.terminated
        if said and inner is not None:
            inner.message = " ".join([inner.message or "", *(f"[warning: {w}]" for w in said)])
            inner.message = inner.message.strip()


def _evicted(files: jobdir.PodFiles, job_ended: bool) -> str | None:
    """Only a pod whose containers have started ending can have been evicted."""
    if job_ended or any(f.exit_code is not None for f in files.containers.values()):
        return files.evicted
    return None


def _note_outage(statuses: Sequence[ContainerStatus], outage: str) -> None:
    note = f" [Slurm does not answer, last known state: {outage}]"
    for st in statuses:
        inner = st.state.waiting or st.state.terminated
        if inner is not None:
            inner.message = (inner.message + note).strip()
