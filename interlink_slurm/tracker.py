"""What is known of one cluster's pods, refreshed in the background: the jobs (one scheduler
query per refresh) and the containers' states (one command per refresh reads the state files of
every pod that changed). /status is served from it, with no call to Slurm and no file read.

A refresh Slurm does not answer leaves the last known jobs (an outage, said in the statuses
until it answers again); a state read that fails leaves the last known files the same way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Protocol

from interlink_slurm import jobdir
from interlink_slurm.errors import SchedulerError, SchedulerUnavailable
from interlink_slurm.slurm.scheduler import JobInfo, Scheduler
from interlink_slurm.slurm.states import (
    TERMINAL,
    UNCONFIRMED_REASON,
    WAITING,
    base_state,
    doubtful_failure,
)
from interlink_slurm.slurm.transport import Transport
from interlink_slurm.store import PodRecord, Store

log = logging.getLogger(__name__)

GONE = "GONE"  # final_state of a job that left the queue with no accounting record
# Each state read reads the pods changed since this long before the last read started: a write
# in the same mtime tick as that read (a second on some filesystems), or stamped by a node whose
# clock is a little behind the login node's, is not missed.
SINCE_MARGIN_SECONDS = 10.0
# This often a state read looks at every pod directory changed since the last such read,
# whatever the data root's mark says: a state file whose mark was lost (the job killed between
# the two writes, the mark not writable a moment) is seen within this long, not only at the
# pod's next write. While pods whose job script writes no mark run (jobdir.MARKED_SINCE), that
# read also looks at their containers/, for pods whose job script only renames there (older
# versions of the plugin). Locally it is a stat per pod directory; over SSH one find.
DEEP_READ_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class Refreshed:
    """What one refresh of a cluster found."""

    answered: bool  # Slurm answered (always True when the queue was not asked)
    changed: bool  # a job or a pod's state files differ from what the last refresh knew


class Clock(Protocol):
    """Where the parts read the time: the system's, or a test's."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch: for the times stored (deletions, kills due)."""
        ...

    def monotonic(self) -> float:
        """Seconds that never go back: for intervals (refresh, garbage collection)."""
        ...


class SystemClock:
    """The system's clock, outside tests."""

    def time(self) -> float:
        """time.time()."""
        return time.time()

    def monotonic(self) -> float:
        """time.monotonic()."""
        return time.monotonic()


class StatusTracker:
    """One cluster's jobs and pod states, as of the last refresh."""

    def __init__(
        self,
        name: str,
        transport: Transport,
        scheduler: Scheduler,
        data_root: str,
        store: Store,
        clock: Clock | None = None,
        *,
        marks: bool = True,
    ) -> None:
        self.name = name
        self.marks = marks  # whether the jobs write the data root's mark (jobdir.STATE_MARK)
        self.transport = transport
        self.scheduler = scheduler
        self.data_root = data_root
        self.store = store
        self.clock = clock or SystemClock()
        self.jobs: dict[str, JobInfo] = {}  # the jobs seen at the last refresh Slurm answered
        self.outage: str | None = None  # why Slurm did not answer the last refresh
        self.files: dict[str, jobdir.PodFiles] = {}  # pod uid → its state files, last read
        self.files_outage: str | None = None  # why the last state read failed
        self.state_reads = 0  # transport calls made to read state files (for benchmarks)
        self._since: float | None = None  # the cluster side's clock at the last state read
        self._deep_since: float | None = None  # ... at the last one that looked in containers/
        self._swept_since: float | None = None  # ... at the last sweep (see DEEP_READ_SECONDS)
        # uid → its job.runs when the queue last showed its job waiting (see ran_since_waiting).
        self._waiting_runs: dict[str, int] = {}
        self._swept_at: float | None = None  # the monotonic clock then
        # The pods a read has looked for whatever the data root's mark (jobdir.STATE_MARK) said:
        # every pod of the last read that looked at every pod directory, and each new pod since,
        # looked at by its own. A pod not among them has a directory no read has seen yet,
        # which its job has not marked (it may not have started).
        self._looked: set[str] = set()
        # Pod dir (relative to the data root) → its directories' stamps as the last published
        # read that looked at pod directories saw them (files read in this process only), and
        # jobdir.STATE_MARK → the mark's (any reader): an unchanged pod is not read again, an
        # unchanged mark makes no read look (jobdir.read_states).
        self._stamps: dict[str, jobdir.Stamp] = {}
        self._born = self.clock.time()
        # Reads may overlap (refresher.refresh_watching): each is numbered at its start, and one
        # that ends after a later-started one has published is dropped, its files older.
        self._reads_started = 0
        self._reads_published = 0
        # jobdir.marked_since, once read: a pod created before may run a job script that
        # writes no mark; None until read.
        self._marked_since: float | None = None

    # --- the queue ------------------------------------------------------------------------------

    async def refresh(
        self, recs: Sequence[PodRecord], queue: bool = True, files_first: bool = False
    ) -> Refreshed:
        """The refresh of this cluster's states, and of its jobs unless ``queue`` is False.

        The files are read after the queue, and both are published together (no await in
        between), before the ends are written to the store: a /status never pairs a job seen
        ended with its containers' files from before they ended (which would say the job
        killed them). Files newer than the jobs are safe: a container is seen to end before
        its job is. With ``files_first`` (while pods start) the files are also read and
        published before the queue is asked, so a start is not seen a slow squeue later."""
        early = False
        before: Mapping[str, jobdir.PodFiles] | None = None
        if queue and files_first:
            early = (await self._read_states(recs))()
            before = dict(self.files)
        answer = await self._refresh_jobs(recs) if queue else None
        publish = await self._read_states(recs)
        jobs_changed = False
        if answer is not None:
            jobs_changed = answer[0] != self.jobs
            self.jobs = answer[0]
        files_changed = publish()
        changed = jobs_changed or files_changed or early
        if answer is None:
            return Refreshed(not queue, changed)
        self._note_waiting(recs, self.files if before is None else before)
        await answer[1]()
        return Refreshed(True, changed)

    def _note_waiting(
        self, recs: Sequence[PodRecord], files: Mapping[str, jobdir.PodFiles]
    ) -> None:
        """For each pod whose job the queue shows waiting, its job.runs as the ``files`` say
        (see ran_since_waiting): as read just before the query when there is such a read (a job
        the query saw waiting starts after it: its run, counted while the query ran, is then
        not taken for an old one and hidden until the next query), else as read after it."""
        waiting = {}
        for rec in recs:
            job = self.jobs.get(rec.job_id or "")
            if job is None or base_state(job) in WAITING:
                seen = files.get(rec.uid)
                waiting[rec.uid] = seen.runs if seen is not None else 0
        self._waiting_runs = waiting

    def ran_since_waiting(self, rec: PodRecord, files: jobdir.PodFiles) -> bool:
        """Whether the pod's job started since the queue last showed it waiting: the files
        count one more run (the job script counts its start in job.runs before any container
        starts). Its containers are then seen running from the files at the next state read,
        without waiting for the next query of the queue. Files an earlier run left (before a
        requeue) count no new run, and stay hidden while the job waits. Once a container has
        ended, the queue is waited for: how a pod ends (and where it ran) is the job's to say,
        and a change of files asks the queue at once."""
        if files.runs <= self._waiting_runs.get(rec.uid, 0):
            return False
        ended = (files.containers.get(c) for c in rec.containers)
        return not any(f is not None and f.exit_code is not None for f in ended)

    async def _refresh_jobs(
        self, recs: Sequence[PodRecord]
    ) -> tuple[dict[str, JobInfo], Callable[[], Awaitable[None]]] | None:
        """The jobs, and what writes to the store the ones that ended, were requeued or moved;
        None when Slurm did not answer."""
        name = self.name
        job_ids = [r.job_id for r in recs if r.job_id]
        ended = {r.job_id for r in recs if r.final_state is not None}
        try:
            jobs = await self.scheduler.query(job_ids) if job_ids else {}
        except (SchedulerUnavailable, SchedulerError) as err:
            if self.outage is None:
                log.warning(
                    "Slurm (cluster %s) does not answer; serving the last known states: %s",
                    name,
                    err,
                )
            self.outage = str(err)
            return None
        if self.outage is not None:
            self.outage = None
            log.info("Slurm (cluster %s) answers again", name)
        jobs = await self._confirm_failures(recs, jobs, ended)

        finished: list[tuple[str, str, str]] = []
        revived: list[str] = []
        gone = [j for j in job_ids if j not in jobs and j not in ended]
        for job_id, job in jobs.items():
            if base_state(job) in TERMINAL:
                finished.append((job_id, base_state(job), job.reason))
            elif job_id in ended:
                revived.append(job_id)
        placed = {j: job.nodes for j, job in jobs.items() if job.nodes}
        if gone:
            try:
                accounted = await self.scheduler.final_states(gone)
            except (SchedulerUnavailable, SchedulerError):
                accounted = {}
            for job_id in gone:
                acct = accounted.get(job_id)
                finished.append(
                    (job_id, base_state(acct), acct.reason) if acct else (job_id, GONE, "")
                )
                if acct and acct.nodes:
                    placed[job_id] = acct.nodes
        known = {r.job_id: r.nodes for r in recs}
        moved = [(j, n) for j, n in placed.items() if known.get(j) != n]

        async def record() -> None:
            if revived:
                log.info("jobs %s run again (requeued)", ", ".join(revived))
                await asyncio.to_thread(self.store.reopen, name, revived)
            if finished:
                await asyncio.to_thread(self.store.finish, name, finished)
            if moved:
                # Kept, so a pod whose job has left the queue still says where it ran.
                await asyncio.to_thread(self.store.set_nodes, name, moved)

        return jobs, record

    async def _confirm_failures(
        self,
        recs: Sequence[PodRecord],
        jobs: dict[str, JobInfo],
        ended: set[str | None],
    ) -> dict[str, JobInfo]:
        """The queue's answer, with each doubtful failure (states.doubtful_failure) replaced by
        what Slurm's accounting record says, or held as pending while it says nothing."""
        now = self.clock.time()
        by_job = {r.job_id: r for r in recs if r.job_id and r.job_id not in ended}
        young = [
            (j, rec)
            for j, job in jobs.items()
            if (rec := by_job.get(j)) is not None and doubtful_failure(job, rec.created, now, False)
        ]
        if not young:
            return jobs
        doubtful = []
        for job_id, rec in young:
            try:
                ran = await asyncio.to_thread(jobdir.read_started_job, self.transport, rec.pod_dir)
            except (OSError, SchedulerUnavailable):
                ran = None
            if ran != job_id:
                doubtful.append(job_id)
        if not doubtful:
            return jobs
        try:
            records = await self.scheduler.final_states(doubtful)
        except (SchedulerUnavailable, SchedulerError):
            records = {}
        out = dict(jobs)
        for job_id in doubtful:
            record = records.get(job_id)
            if record is not None and base_state(record) == "FAILED":
                continue  # confirmed: the queue's answer (with its reason) stands
            if record is not None and base_state(record) in TERMINAL:
                out[job_id] = dataclasses.replace(record, comment=jobs[job_id].comment)
                continue
            if record is not None:
                log.info("job %s: the queue shows FAILED, its record %s", job_id, record.state)
                out[job_id] = dataclasses.replace(record, comment=jobs[job_id].comment)
                continue
            log.info(
                "job %s: Slurm shows it FAILED before it started; held until confirmed", job_id
            )
            out[job_id] = JobInfo(job_id, "PENDING", UNCONFIRMED_REASON, jobs[job_id].comment)
        return out

    # --- the pods' state files ------------------------------------------------------------------

    async def _read_states(self, recs: Sequence[PodRecord]) -> Callable[[], bool]:
        """The state files of every pod with a job whose directory changed since the last
        read: one command through the transport. Returns what publishes them, which says
        whether any pod's files differ from what was known."""
        by_dir = {r.pod_dir: r for r in recs if r.job_id}
        if not by_dir:
            return lambda: False
        marked = await self._marked() if self.marks else float("inf")
        unmarked = any(r.created < marked for r in by_dir.values())
        sweep = (
            self._swept_at is None or self.clock.monotonic() - self._swept_at >= DEEP_READ_SECONDS
        )
        deep = self._swept_at is None or (unmarked and sweep)
        whole = deep or unmarked or sweep
        # Pods no read has looked for: looked at whatever the mark says (their jobs may not have
        # marked anything yet), each by its own directory where the files are here.
        fresh = [r for r in by_dir.values() if r.uid not in self._looked]
        # Changes from SINCE_MARGIN_SECONDS before the last read (the last sweep) on: a write
        # within the same mtime tick as that read, or stamped by a node whose clock is a little
        # behind.
        after = self._swept_since if sweep else self._since
        since = after - SINCE_MARGIN_SECONDS if after is not None else 0.0
        deep_since = None
        if deep:
            last = self._deep_since
            deep_since = last - SINCE_MARGIN_SECONDS if last is not None else 0.0
        pods = _Containers(by_dir)
        started = self.clock.monotonic()
        self._reads_started += 1
        number = self._reads_started
        try:
            read = await asyncio.to_thread(
                jobdir.read_states,
                self.transport,
                self.data_root,
                since,
                pods,
                deep_since=deep_since,
                whole=whole,
                seen=self._stamps,
                look=[r.pod_dir for r in fresh],
            )
        except (OSError, SchedulerUnavailable) as err:
            # The login node cannot be reached (SSH down, a filesystem hiccup): what the files
            # said last time is still the best answer, said to be so.
            if self.files_outage is None:
                log.warning("cannot read the pods' state files (cluster %s): %s", self.name, err)
            outage = f"cannot read the pod's files: {err}"

            def failed() -> bool:
                if number >= self._reads_published:
                    self.files_outage = outage
                return False

            return failed

        def publish() -> bool:
            self.state_reads += 1
            if number < self._reads_published:
                return False  # a read started later has published newer files
            self._reads_published = number
            self.files_outage = None
            changed = False
            for pod_dir, files in read.changed.items():
                uid = by_dir[pod_dir].uid
                changed = changed or self.files.get(uid) != files
                self.files[uid] = files
            # A pod never read (created since, or a read that failed) is in the next read too:
            # its directory is newer than the last read's start.
            self._since = read.now
            if read.stamps is not None:
                self._stamps = read.stamps
            if sweep:
                self._swept_since, self._swept_at = read.now, started
            if deep:
                self._deep_since = read.now
            if whole:
                self._looked = {r.uid for r in by_dir.values()}
            else:
                self._looked.update(r.uid for r in fresh)
            return changed

        return publish

    async def _marked(self) -> float:
        """jobdir.marked_since, read once (written at the first start on a data root), the mark
        made then if no job has; while it cannot be read, every pod counts as one whose job
        writes no mark."""
        if self._marked_since is None:
            try:
                self._marked_since = await asyncio.to_thread(self._first_marks)
            except (OSError, SchedulerUnavailable):
                return float("inf")
        return self._marked_since

    def _first_marks(self) -> float:
        since = jobdir.marked_since(self.transport, self.data_root, self._born)
        jobdir.ensure_mark(self.transport, self.data_root)
        return since

    def starting(self, rec: PodRecord, now: float, window: float = 30.0) -> bool:
        """Whether a pod created less than ``window`` ago waits for its containers to start:
        its job not seen ended, some main container with no start time yet."""
        if rec.final_state is not None or rec.deleted is not None or now - rec.created > window:
            return False
        files = self.files.get(rec.uid)
        if files is None:
            return True
        return any(
            files.containers.get(c) is None or files.containers[c].started is None
            for c in rec.containers
        )

    def read_one(self, rec: PodRecord) -> jobdir.PodFiles:
        """A pod's files read at once (blocking): for a pod no refresh has read yet."""
        files = jobdir.read_pod(
            self.transport, rec.pod_dir, rec.all_containers, rec.final_state is not None
        )
        self.files[rec.uid] = files
        return files

    def forget(self, uid: str) -> None:
        """Drop a removed pod's files from memory (the janitor removed its directory)."""
        self.files.pop(uid, None)
        self._looked.discard(uid)


class _Containers(Mapping[str, Sequence[str]]):
    """Pod directory → its containers, looked up for the pods a read found changed only (an
    idle refresh of 10,000 pods then builds no 10,000 tuples)."""

    def __init__(self, by_dir: Mapping[str, PodRecord]) -> None:
        self._by_dir = by_dir

    def __getitem__(self, pod_dir: str) -> Sequence[str]:
        return self._by_dir[pod_dir].all_containers

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_dir)

    def __len__(self) -> int:
        return len(self._by_dir)
