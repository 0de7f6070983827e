"""The background refresher: every cluster's status tracker kept fresh, at a pace set by what
happens. Each turn reads every cluster's state files (one command, or a few stats where they
are local) and, when due, asks each cluster's queue; then the janitor and the pod groups run.

The pace: every status_refresh_seconds; every STARTING_REFRESH_SECONDS while a pod created in
the last STARTING_SECONDS has containers not yet started (from the create on); at once (but
never closer than MIN_REFRESH_GAP_SECONDS) after a create, a delete or a pull done. The queue
keeps a pace of its own: its interval doubles while nothing changes, up to
status_idle_refresh_seconds. Every interval is read from the injected clock, so tests drive it
with a fake one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from interlink_slurm.book import PlacementBook
from interlink_slurm.config import Settings
from interlink_slurm.metrics import Metrics
from interlink_slurm.slurm.scheduler import JobInfo
from interlink_slurm.slurm.states import TERMINAL, base_state
from interlink_slurm.store import PodRecord, Store
from interlink_slurm.tracker import Clock, StatusTracker

log = logging.getLogger(__name__)

MIN_REFRESH_GAP_SECONDS = 0.5
# Between the end of a refresh and the start of the next, however long it took.
MIN_REFRESH_PAUSE_SECONDS = 0.1
# The refresh done at startup, before serving, is given this long at most.
FIRST_REFRESH_SECONDS = 10.0
# While a pod created this recently has containers not yet started, refreshes come this often.
STARTING_SECONDS = 30.0
# Over SSH too, where a state read is one exec (a few processes on the login node while pods
# start; after two when no job wrote): 0.25 s saw starts 0.19 s (p50) after them on the
# loopback, 0.1 s 0.10 s (docs/benchmarks.md).
STARTING_REFRESH_SECONDS = 0.1
# A job seen to end is still watched this long, while Slurm lists it: it may be requeued.
ENDED_WATCH_SECONDS = 600.0


class Refresher:
    """Runs every cluster's tracker's refreshes: the background loop and its pace, the
    metrics of what they found, the pods' first starts in the placement book."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        trackers: Mapping[str, StatusTracker],
        book: PlacementBook,
        metrics: Metrics,
        clock: Clock,
    ) -> None:
        self.settings = settings
        self.store = store
        self.trackers = trackers
        self.book = book
        self.metrics = metrics
        self.clock = clock
        self.starting = False  # a new pod's containers have not all started yet
        self._snapshot_at: float | None = None
        # The queue's own pace (queue_due): asked now, when last, and how often while idle.
        self._queue_now = True
        self._queue_at: float | None = None
        self._queue_interval = settings.status_refresh_seconds
        self._wake: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, after: Callable[[], Awaitable[None]]) -> None:
        """One refresh before serving (a /status right after a restart then answers from the
        jobs and files as they are, not "being created" for pods that ran meanwhile), then the
        loop in the background, running ``after`` (the janitor, the groups) after each turn."""
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        try:
            async with asyncio.timeout(FIRST_REFRESH_SECONDS):
                await self.refresh()
        except TimeoutError:
            log.warning(
                "the first status refresh took over %g s: serving meanwhile", FIRST_REFRESH_SECONDS
            )
        except Exception:
            log.exception("the first status refresh failed")
        self._task = asyncio.create_task(self._loop(after), name="refresher")

    async def stop(self) -> None:
        """Stop the loop (at shutdown)."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _loop(self, after: Callable[[], Awaitable[None]]) -> None:
        assert self._wake is not None
        while True:
            started = self.clock.monotonic()
            try:
                await self.refresh_watching(queue=self.queue_due())
                await after()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("status refresh failed")
            # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancellation that
            # arrives as the wake-up does, and stop() then waits for this loop forever.
            try:
                async with asyncio.timeout(self.pause(started)):
                    await self._wake.wait()
                # Woken early (a new pod): the refreshes' pace holds all the same (the queue
                # keeps its own: queue_due).
                await asyncio.sleep(self.woken_pause(started))
            except TimeoutError:
                pass
            self._wake.clear()

    def pause(self, started: float) -> float:
        """How long the loop waits after a turn that began at ``started`` (monotonic): the
        interval counts from the turn's start, so a turn slowed down by busy cores (20 pods
        starting) does not push the next one back by its own length."""
        elapsed = self.clock.monotonic() - started
        return max(MIN_REFRESH_PAUSE_SECONDS, self.interval() - elapsed)

    def woken_pause(self, started: float) -> float:
        """How much longer the loop waits when woken early, after a turn begun at ``started``:
        never two refreshes closer than MIN_REFRESH_GAP_SECONDS (or the interval, if shorter)."""
        gap = min(MIN_REFRESH_GAP_SECONDS, self.interval())
        return max(0.0, gap - (self.clock.monotonic() - started))

    def interval(self) -> float:
        """The time until the next refresh: shorter while a new pod's containers have not all
        started (running is seen within a starting_pace() of it, not a whole interval later),
        for STARTING_SECONDS after its create at most."""
        interval = self.settings.status_refresh_seconds
        return min(interval, self.starting_pace()) if self.starting else interval

    def starting_pace(self) -> float:
        """How often the files are read while pods start."""
        return STARTING_REFRESH_SECONDS

    def request(self, new_pod: bool = False) -> None:
        """A refresh of the queue too, now (a new pod, a delete, a pull done). ``new_pod``: a
        job was just submitted, so pods are starting from now on: the next turn reads the
        files before the queue and while it is asked, not after (a burst after an idle spell
        saw its first starts only once that turn's squeue ended, 0.2-0.3 s late)."""
        self._queue_now = True
        if new_pod:
            self.starting = True
        if self._wake is not None:
            self._wake.set()

    def queue_due(self) -> bool:
        """Whether the next refresh asks Slurm's queue, not only the files.

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

    def snapshot_age(self) -> float | None:
        """Seconds since the job states were last read from Slurm; None before the first read."""
        return None if self._snapshot_at is None else self.clock.monotonic() - self._snapshot_at

    async def refresh_watching(self, queue: bool) -> None:
        """refresh(queue). While pods start, the files are also read every starting_pace()
        while the queue is asked: under load one squeue takes 0.1-0.3 s (more over SSH), and
        a start would otherwise be seen only after it."""
        if not (queue and self.starting):
            await self.refresh(queue=queue)
            return
        refreshing = asyncio.ensure_future(self.refresh(queue=True))
        try:
            while True:
                done, _ = await asyncio.wait({refreshing}, timeout=self.starting_pace())
                if done:
                    break
                found = await asyncio.gather(
                    *(
                        self.trackers[n].refresh(rs, queue=False)
                        for n, rs in self._active_by_cluster().items()
                    )
                )
                if any(f.changed for f in found):
                    self.request()  # the jobs may have changed too
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
        by_cluster: dict[str, list[PodRecord]] = {name: [] for name in self.trackers}
        for rec in recs:
            if rec.cluster in by_cluster:
                by_cluster[rec.cluster].append(rec)
        return by_cluster

    async def refresh(self, queue: bool = True) -> None:
        """One state read per cluster for its active pods and, with ``queue``, one scheduler
        query before it."""
        lock = self._lock or asyncio.Lock()
        async with lock:
            by_cluster = self._active_by_cluster()
            if queue:
                self._queue_now = False
                self._queue_at = self.clock.monotonic()
            # While pods start, the files are also read before the queue (a start is not seen
            # a slow squeue later).
            files_first = self.starting
            found = await asyncio.gather(
                *(
                    self.trackers[n].refresh(rs, queue, files_first=files_first)
                    for n, rs in by_cluster.items()
                )
            )
            now = self.clock.time()
            self.starting = any(
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
        """The queue's next interval (see queue_due): back to the shortest on any change."""
        shortest = self.settings.status_refresh_seconds
        longest = max(shortest, self.settings.status_idle_refresh_seconds)
        if changed:
            self._queue_interval = shortest
            if not queued:
                self.request()  # files changed: the jobs may have too
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
