"""The service's parts on their own, time-driven ones with a fake clock: the status tracker
(refresh, state reads, outage → recovery), the janitor (grace-period kills, GC) and /status
served from memory (a counting transport: no file read per call). Slurm is the scripted fake;
the same behaviour on real Slurm is in tests/integration."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import pytest

from interlink_slurm import jobdir, submission
from interlink_slurm.config import Settings, load_settings
from interlink_slurm.errors import SchedulerUnavailable
from interlink_slurm.refresher import STARTING_REFRESH_SECONDS
from interlink_slurm.service import Service
from interlink_slurm.slurm.fake import FakeScheduler
from interlink_slurm.slurm.scheduler import JobInfo
from interlink_slurm.slurm.transport import CommandResult, LocalTransport
from interlink_slurm.store import PodRecord, Store
from interlink_slurm.tracker import DEEP_READ_SECONDS
from interlink_slurm.wire import LogRequest, Pod, RetrievedPodData
from tests import podgen
from tests.counting import CountingTransport
from tests.fakeclock import FakeClock

STARTED = "2026-12-02T11:00:00.123456789Z"
LONG_AGO = 1_000_000_000  # 2001


def settings(tmp_path: Path, **more: Any) -> Settings:
    return load_settings(
        None, data_root=str(tmp_path / "pods"), runtime="apptainer", partition="cpu", **more
    )


def new_pod(name: str, **spec: Any) -> RetrievedPodData:
    c = podgen.container("main", "print(1)")
    return RetrievedPodData.model_validate(podgen.retrieved(podgen.pod(name, [c], **spec)))


def put(pod_dir: str, name: str, value: str, mark: bool = True) -> None:
    """As the job script's ils_put writes a state file: a temporary file in the pod's
    directory, renamed into place, then the data root's mark (jobdir.STATE_MARK) written.
    Without the mark, a read that trusts its stamp (over a second old) looks at no pod."""
    pod = Path(pod_dir)
    path = pod / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pod / f".{name.replace('/', '.')}.tmp"
    tmp.write_text(value + "\n")
    os.replace(tmp, path)
    if mark:
        (pod.parent.parent / jobdir.STATE_MARK).write_text(pod.name + "\n")


def make(
    tmp_path: Path, **more: Any
) -> tuple[Service, FakeScheduler, CountingTransport, FakeClock]:
    fake = FakeScheduler()
    transport = CountingTransport()
    clock = FakeClock()
    store = Store(tmp_path / "state.db")
    store.open()
    service = Service(settings(tmp_path, **more), fake, transport, store, clock=clock)
    return service, fake, transport, clock


def run(job_id: str, fake: FakeScheduler) -> None:
    old = fake.jobs[job_id]
    fake.jobs[job_id] = JobInfo(job_id, "RUNNING", "", old.comment, nodes="node1")


async def started(service: Service, fake: FakeScheduler, data: RetrievedPodData) -> PodRecord:
    """Create ``data``'s pod, its job running and its container started by the files."""
    answer = await service.create(data)
    run(answer.PodJID, fake)
    rec = service.store.get(answer.PodUID)
    assert rec is not None
    put(rec.pod_dir, "containers/main.started", STARTED)
    return rec


def drive(service: Service, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a test's scenario on the service, then close its store whatever happened."""
    try:
        asyncio.run(scenario())
    finally:
        service.store.close()


def test_status_is_served_from_memory_and_a_refresh_reads_all_pods_in_one_call(
    tmp_path: Path,
) -> None:
    service, fake, transport, _ = make(tmp_path)
    pods = [new_pod(f"p{i}") for i in range(6)]

    async def scenario() -> None:
        answers = [await service.create(p) for p in pods]
        for a in answers:
            run(a.PodJID, fake)
            rec = service.store.get(a.PodUID)
            assert rec is not None
            put(rec.pod_dir, "job.runs", "1")
            put(rec.pod_dir, "containers/main.started", STARTED)
        transport.calls.clear()
        fake.calls.clear()
        await service.refresh()
        # Every pod's state files: one command per read, here two (new pods are starting: the
        # files are read before the query too); at the first refresh on this data root, since
        # when its pods write marks (jobdir.MARKED_SINCE, read once, written once) and the mark
        # (jobdir.STATE_MARK, looked for once: the jobs wrote it).
        assert transport.calls == {"run": 2, "read_file": 1, "write_file": 1, "size": 1}
        assert fake.calls == ["query"]  # every pod's job: one query
        transport.calls.clear()
        for _ in range(3):
            statuses = await service.status([p.pod for p in pods])
            assert len(statuses) == len(pods)
            for st in statuses:
                assert st.containers[0].state.running is not None, st
        assert transport.calls == {}  # zero file operations per /status call
        # One container ends: the next refresh reads it (still one command), /status says so.
        rec = service.store.get(pods[0].pod.uid)
        assert rec is not None
        os.utime(Path(rec.pod_dir) / "containers", (0, 0))
        put(rec.pod_dir, "containers/main.exit", "3")
        put(rec.pod_dir, "containers/main.finished", STARTED)
        await service.refresh()
        assert transport.calls == {"run": 1}
        transport.calls.clear()
        [st] = await service.status([pods[0].pod])
        assert st.containers[0].state.terminated is not None
        assert st.containers[0].state.terminated.exit_code == 3
        assert transport.calls == {}

    drive(service, scenario)


def test_a_pod_submitted_since_the_last_refresh_is_read_by_none_at_its_status(
    tmp_path: Path,
) -> None:
    service, fake, transport, _ = make(tmp_path)
    data = new_pod("fresh")

    async def scenario() -> None:
        await started(service, fake, data)
        transport.calls.clear()
        [st] = await service.status([data.pod])
        assert transport.calls == {}  # its job is not seen yet: no file is worth a read
        assert st.containers[0].state.waiting is not None
        await service.refresh()  # the refresh that status asked for
        transport.calls.clear()
        [st] = await service.status([data.pod])
        assert st.containers[0].state.running is not None
        assert transport.calls == {}

    drive(service, scenario)


def test_a_refresh_trusts_the_data_roots_mark_but_looks_for_a_pod_no_read_looked_for(
    tmp_path: Path,
) -> None:
    """While the mark (jobdir.STATE_MARK, which ils_put writes) is older than the last read,
    a refresh looks at no pod directory: here a change written without it stays unseen until
    the mark is written. A pod created since the last read that looked at them all is looked
    for whatever the mark says (its job may not have written anything yet)."""
    service, fake, transport, _ = make(tmp_path)
    first, second = new_pod("first"), new_pod("second")
    mark = tmp_path / "pods" / jobdir.STATE_MARK

    def age_mark() -> None:
        old = time.time() - 100
        mark.write_text("x\n")
        os.utime(mark, (old, old))

    async def state(data: RetrievedPodData) -> str:
        [st] = await service.status([data.pod])
        return next(k for k, v in st.containers[0].state.model_dump().items() if v is not None)

    async def scenario() -> None:
        pod_dir = (await started(service, fake, first)).pod_dir
        age_mark()
        await service.refresh()
        assert await state(first) == "running"
        put(pod_dir, "containers/main.exit", "0", mark=False)
        put(pod_dir, "containers/main.finished", STARTED, mark=False)
        await service.refresh()
        assert await state(first) == "running"  # not marked: not looked at
        await started(service, fake, second)
        age_mark()
        await service.refresh()
        transport.calls.clear()
        assert await state(second) == "running"  # new: looked for, the mark old as it is
        assert transport.calls == {}  # by the refresh, not by a read of its own at /status
        mark.write_text("first\n")
        await service.refresh()
        assert await state(first) == "terminated"

    drive(service, scenario)


def test_a_change_whose_mark_was_lost_is_seen_by_the_next_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A state file written without its mark (the job killed between the two writes) is not
    seen by the reads that trust the mark, but by the next read that looks at every pod
    directory changed since the last such read, DEEP_READ_SECONDS after it at most: here
    written 30 s before a read, long before that read's own margin. (Files read in process,
    whose wall clock the test moves.)"""
    fake, clock = FakeScheduler(), FakeClock()
    store = Store(tmp_path / "state.db")
    store.open()
    service = Service(settings(tmp_path), fake, LocalTransport(), store, clock=clock)
    data = new_pod("lost")
    mark = tmp_path / "pods" / jobdir.STATE_MARK
    ahead = [0]  # seconds the reads' wall clock is ahead of this one
    real_ns = time.time_ns
    monkeypatch.setattr(jobdir.time, "time_ns", lambda: real_ns() + ahead[0] * 1_000_000_000)

    async def at(seconds: int) -> Any:
        clock.advance(seconds - ahead[0])
        ahead[0] = seconds
        await service.refresh()
        [st] = await service.status([data.pod])
        return st.containers[0].state

    async def scenario() -> None:
        rec = await started(service, fake, data)
        assert (await at(0)).running is not None  # the first read is a sweep
        old = time.time() - 100
        mark.write_text("x\n")
        os.utime(mark, (old, old))
        put(rec.pod_dir, "containers/main.exit", "0", mark=False)
        put(rec.pod_dir, "containers/main.finished", STARTED, mark=False)
        assert (await at(30)).running is not None  # the mark says nothing changed
        assert (await at(int(DEEP_READ_SECONDS) - 1)).running is not None
        ended = (await at(int(DEEP_READ_SECONDS))).terminated
        assert ended is not None and ended.exit_code == 0

    drive(service, scenario)


async def end_unmarked(
    service: Service, fake: FakeScheduler, data: RetrievedPodData, marked_since: float | None
) -> str:
    """Create ``data``'s pod, start it, refresh, end its container with the data root's mark
    older than that refresh (and, with ``marked_since``, the marks that recent), refresh: the
    state its status then gives."""
    root = Path(service.trackers[next(iter(service.trackers))].data_root)
    answer = await service.create(data)
    run(answer.PodJID, fake)
    rec = service.store.get(answer.PodUID)
    assert rec is not None
    if marked_since is not None:
        (root / jobdir.MARKED_SINCE).write_text(f"{marked_since}\n")
    put(rec.pod_dir, "containers/main.started", STARTED)
    await service.refresh()
    old = time.time() - 100
    (root / jobdir.STATE_MARK).write_text("x\n")
    os.utime(root / jobdir.STATE_MARK, (old, old))
    put(rec.pod_dir, "containers/main.exit", "0", mark=False)
    put(rec.pod_dir, "containers/main.finished", STARTED, mark=False)
    await service.refresh()
    [st] = await service.status([data.pod])
    return next(k for k, v in st.containers[0].state.model_dump().items() if v is not None)


def test_pods_older_than_the_marks_are_looked_at_at_every_refresh(tmp_path: Path) -> None:
    """A pod created before the data root's jobs wrote marks (jobdir.MARKED_SINCE: an upgrade
    with pods running) may run a job script that writes none: while one is active, every
    refresh looks at every pod directory, and its change is seen without a mark."""
    service, fake, _, clock = make(tmp_path)

    async def scenario() -> None:
        assert await end_unmarked(service, fake, new_pod("older"), clock.time() + 1) == (
            "terminated"
        )

    drive(service, scenario)


def test_where_pods_may_run_as_their_own_users_no_mark_is_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Submitting as root with namespace_uids, a job may run as a user who cannot write the
    data root's mark: every refresh looks at every pod directory."""
    monkeypatch.setattr(submission, "submits_as_root", lambda settings, transport: True)
    (tmp_path / "plain").mkdir()
    plain, plain_fake, _, _ = make(tmp_path / "plain")
    assert next(iter(plain.trackers.values())).marks  # no pod may choose its user

    async def trusted() -> None:  # the same change, unmarked, is not seen there
        assert await end_unmarked(plain, plain_fake, new_pod("mine"), None) == "running"

    drive(plain, trusted)
    service, fake, _, _ = make(tmp_path, namespace_uids={"default": "20000-20999"})
    assert not next(iter(service.trackers.values())).marks

    async def scenario() -> None:
        assert await end_unmarked(service, fake, new_pod("theirs"), None) == "terminated"

    drive(service, scenario)


def test_the_first_refresh_on_a_data_root_writes_since_when_its_pods_mark(
    tmp_path: Path,
) -> None:
    service, _, _, clock = make(tmp_path)
    born = clock.time()
    clock.advance(30)

    async def scenario() -> None:
        await service.create(new_pod("first"))
        await service.refresh()
        since = (tmp_path / "pods" / jobdir.MARKED_SINCE).read_text()
        assert float(since) == born  # the plugin's start: every pod it created marks
        # No job has written the mark yet: made now, so that reads trust it from the next on
        # (a first pod that waits in the queue does not make every read look at every pod).
        mark = tmp_path / "pods" / jobdir.STATE_MARK
        assert mark.read_bytes() == b"" and mark.stat().st_mode & 0o777 == 0o600

    drive(service, scenario)


def test_a_mark_a_job_wrote_is_left_as_it_is(tmp_path: Path) -> None:
    service, _, _, _ = make(tmp_path)
    mark = tmp_path / "pods" / jobdir.STATE_MARK
    mark.parent.mkdir(parents=True)
    mark.write_text("ns/p-1\n")
    os.utime(mark, (LONG_AGO, LONG_AGO))

    async def scenario() -> None:
        await service.create(new_pod("first"))
        await service.refresh()
        assert mark.read_text() == "ns/p-1\n" and mark.stat().st_mtime == LONG_AGO

    drive(service, scenario)


def test_a_job_that_starts_while_the_queue_is_asked_is_seen_running_at_once(
    tmp_path: Path,
) -> None:
    """While pods start, the files are read before the query: a job the query shows pending,
    whose script counts its run while squeue runs, has started since (Slurm marks a job
    running before its script runs), and is running at the refresh that read that count; it
    is not taken for a run from before the query, hidden until the next one."""
    service, fake, _, _ = make(tmp_path)
    data = new_pod("quick")

    async def scenario() -> None:
        answer = await service.create(data)
        rec = service.store.get(answer.PodUID)
        assert rec is not None
        tracker = next(iter(service.trackers.values()))
        asked = fake.query

        async def query(job_ids: Sequence[str]) -> dict[str, JobInfo]:
            jobs = await asked(job_ids)  # the job is pending as squeue looks
            put(rec.pod_dir, "job.runs", "1")  # ... and its script starts right after
            put(rec.pod_dir, "containers/main.started", STARTED)
            return jobs

        fake.query = query  # type: ignore[method-assign]
        await tracker.refresh([rec], queue=True, files_first=True)
        fake.query = asked  # type: ignore[method-assign]
        [st] = await service.status([data.pod])
        assert st.containers[0].state.running is not None, st

    drive(service, scenario)


class SlowQueue:
    """A service whose scheduler, once ``slow()`` is called, answers no query until the end:
    what the refresher sees of a start meanwhile comes from the files alone."""

    def __init__(self, tmp_path: Path, where: str) -> None:
        self.fake = FakeScheduler()
        store = Store(tmp_path / "state.db")
        store.open()
        transport = LocalTransport() if where == "local" else CountingTransport()
        self.service = Service(settings(tmp_path), self.fake, transport, store)
        self.asked = self.fake.query
        self.answer = asyncio.Event()
        self.queries: list[str] = []

    async def _query(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        self.queries.append("asked")
        await self.answer.wait()
        return await self.asked(job_ids)

    def slow(self) -> None:
        self.fake.query = self._query  # type: ignore[method-assign]

    async def seen_running_in_the_query(self, data: RetrievedPodData, pod_dir: str) -> None:
        """Once a query is asked, the pod starts (its files, as its job writes them): /status
        says running within 5 s, that query still unanswered."""
        for _ in range(100):
            if self.queries:
                break
            await asyncio.sleep(0.02)
        assert self.queries, "the refresher never asked the queue"
        put(pod_dir, "job.runs", "1")
        put(pod_dir, "containers/main.started", STARTED)
        running = False
        for _ in range(100):  # up to 5 s; the watch reads every 0.1 s
            await asyncio.sleep(0.05)
            [st] = await self.service.status([data.pod])
            if st.containers[0].state.running is not None:
                running = True
                break
        assert running, st
        assert not self.answer.is_set() and len(self.queries) == 1  # still in that squeue

    async def stop(self) -> None:
        self.answer.set()
        self.fake.query = self.asked  # type: ignore[method-assign]
        await self.service.stop()


@pytest.mark.parametrize("where", ["local", "through a command"])
def test_while_pods_start_their_files_are_read_while_the_queue_is_asked(
    tmp_path: Path, where: str
) -> None:
    """A start is seen while a slow squeue is still running (the refresher reads the files
    every 0.1 s meanwhile, through a command as over SSH too), not after it."""
    slow = SlowQueue(tmp_path, where)
    service = slow.service
    data = new_pod("starting")

    async def scenario() -> None:
        await service.start()
        try:
            answer = await service.create(data)
            rec = service.store.get(answer.PodUID)
            assert rec is not None
            [tracker] = service.trackers.values()
            for _ in range(100):  # its job seen pending by a query (the create asks for one)
                if answer.PodJID in tracker.jobs:
                    break
                await asyncio.sleep(0.05)
            assert answer.PodJID in tracker.jobs
            slow.slow()
            service.request_refresh()
            await slow.seen_running_in_the_query(data, rec.pod_dir)
        finally:
            await slow.stop()

    drive(service, scenario)


@pytest.mark.parametrize("where", ["local", "through a command"])
def test_the_first_pods_after_an_idle_spell_are_seen_starting_while_the_queue_is_asked(
    tmp_path: Path, where: str
) -> None:
    """A create on an idle plugin makes the very next turn a starting one: the files are read
    before the query and while it runs. (That turn used to ask the queue first and read the
    files after it: a burst's first starts were seen a slow squeue late.)"""
    slow = SlowQueue(tmp_path, where)
    service = slow.service
    data = new_pod("first")

    async def scenario() -> None:
        await service.start()  # nothing to watch: the loop waits its whole interval
        assert not service.refresher.starting
        slow.slow()
        try:
            answer = await service.create(data)
            rec = service.store.get(answer.PodUID)
            assert rec is not None
            await slow.seen_running_in_the_query(data, rec.pod_dir)
        finally:
            await slow.stop()

    drive(service, scenario)


def test_a_state_read_that_ends_after_a_later_one_publishes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Overlapping reads (the watch while the queue is asked): files read earlier never
    replace files read later."""
    service, fake, _, _ = make(tmp_path)
    data = new_pod("overlap")
    real = jobdir.read_states
    first_may_end = threading.Event()
    reads: list[int] = []

    def read(*args: Any, **kwargs: Any) -> jobdir.StateRead:
        found = real(*args, **kwargs)
        reads.append(len(reads))
        if len(reads) == 1:
            first_may_end.wait(10)  # read, not yet published
        return found

    async def scenario() -> None:
        answer = await service.create(data)
        run(answer.PodJID, fake)
        rec = service.store.get(answer.PodUID)
        assert rec is not None
        [tracker] = service.trackers.values()
        put(rec.pod_dir, "containers/main.started", STARTED)
        monkeypatch.setattr(jobdir, "read_states", read)
        earlier = asyncio.create_task(tracker.refresh([rec], queue=False))
        while not reads:
            await asyncio.sleep(0.01)
        put(rec.pod_dir, "containers/main.exit", "0")
        put(rec.pod_dir, "containers/main.finished", STARTED)
        await tracker.refresh([rec], queue=False)
        assert tracker.files[rec.uid].containers["main"].exit_code == 0
        first_may_end.set()
        await earlier
        assert tracker.files[rec.uid].containers["main"].exit_code == 0

    drive(service, scenario)


def test_status_and_logs_run_no_sql_and_no_transport_call(tmp_path: Path) -> None:
    """/status and the lookup of /getLogs: zero SQLite statements, zero transport calls (the
    rows are in memory, kept in step with every write)."""
    service, fake, transport, clock = make(tmp_path)
    pods = [new_pod(f"q{i}") for i in range(4)]
    statements: list[str] = []

    async def scenario() -> None:
        answers = [await service.create(p) for p in pods]
        for a in answers[:3]:
            run(a.PodJID, fake)
            rec = service.store.get(a.PodUID)
            assert rec is not None
            put(rec.pod_dir, "containers/main.started", STARTED)
        await service.delete(pods[3].pod)
        await service.refresh()
        db = service.store._db
        assert db is not None
        db.set_trace_callback(statements.append)
        transport.calls.clear()
        try:
            for _ in range(3):
                statuses = await service.status([p.pod for p in pods])
                assert [st.containers[0].state.running is not None for st in statuses] == [
                    True,
                    True,
                    True,
                    False,
                ]
            req = LogRequest.model_validate(
                {
                    "Namespace": pods[0].pod.namespace,
                    "PodUID": pods[0].pod.uid,
                    "PodName": pods[0].pod.name,
                    "ContainerName": "main",
                    "Opts": {},
                }
            )
            await service.logs(req)  # the stream is not read: only the lookup is counted
        finally:
            db.set_trace_callback(None)
        assert statements == []
        assert transport.calls == {}
        # Memory follows every write: an end seen by a refresh, then the row's removal.
        fake.jobs[answers[0].PodJID] = JobInfo(answers[0].PodJID, "COMPLETED", "")
        clock.advance(1)
        await service.refresh()
        rec = service.store.get(answers[0].PodUID)
        assert rec is not None and rec.final_state == "COMPLETED"
        service.store.forget(answers[0].PodUID)
        assert service.store.get(answers[0].PodUID) is None

    drive(service, scenario)


def test_an_outage_serves_the_last_states_and_recovers(tmp_path: Path) -> None:
    service, fake, _, clock = make(tmp_path)
    data = new_pod("o")

    async def scenario() -> None:
        answer = await service.create(data)
        run(answer.PodJID, fake)
        await service.refresh()
        tracker = service.trackers["default"]
        assert tracker.outage is None
        age = service.snapshot_age()
        fake.down = SchedulerUnavailable("slurmctld: connection refused")
        clock.advance(30)
        await service.refresh()
        assert tracker.outage == "slurmctld: connection refused"
        assert tracker.jobs[answer.PodJID].state == "RUNNING"  # the last known state
        assert service.snapshot_age() == (age or 0) + 30  # not refreshed since
        [st] = await service.status([data.pod])
        waiting = st.containers[0].state.waiting
        assert waiting is not None
        assert f"Slurm job {answer.PodJID} is running" in waiting.message
        assert "[Slurm does not answer, last known state: slurmctld" in waiting.message
        fake.down = None
        await service.refresh()
        assert tracker.outage is None
        assert service.snapshot_age() == 0

    drive(service, scenario)


def test_an_ended_job_is_watched_for_a_while_then_no_longer_asked(tmp_path: Path) -> None:
    service, fake, _, clock = make(tmp_path)
    data = new_pod("e")

    async def scenario() -> None:
        answer = await service.create(data)
        old = fake.jobs[answer.PodJID]
        fake.jobs[answer.PodJID] = JobInfo(answer.PodJID, "COMPLETED", "", old.comment)
        await service.refresh()  # seen to end: recorded
        fake.calls.clear()
        await service.refresh()
        assert fake.calls == ["query"]  # still watched (Slurm may requeue it)
        clock.advance(601)
        fake.calls.clear()
        await service.refresh()
        assert fake.calls == []  # no longer asked about

    drive(service, scenario)


def test_the_janitor_kills_when_the_grace_period_runs_out(tmp_path: Path) -> None:
    service, fake, _, clock = make(tmp_path)
    data = new_pod("k", terminationGracePeriodSeconds=30)

    async def scenario() -> None:
        answer = await service.create(data)
        run(answer.PodJID, fake)
        await service.delete(Pod.model_validate(data.pod.model_dump(by_alias=True)))
        assert fake.signals == [(answer.PodJID, "URG")]
        clock.advance(29)
        fake.calls.clear()
        await service.janitor.kill_due()
        assert "cancel" not in fake.calls
        clock.advance(2)
        fake.down = SchedulerUnavailable("slurmctld down")
        await service.janitor.kill_due()  # cannot: retried at the next refresh
        fake.down = None
        await service.janitor.kill_due()
        assert fake.jobs[answer.PodJID].state == "CANCELLED"
        fake.calls.clear()
        await service.janitor.kill_due()
        assert fake.calls == []  # done once

    drive(service, scenario)


def test_the_janitor_collects_garbage_after_retention_every_interval(tmp_path: Path) -> None:
    service, _, _, clock = make(tmp_path, retention_seconds=3600, gc_interval_seconds=300)
    data = new_pod("g")

    async def scenario() -> None:
        answer = await service.create(data)
        rec = service.store.get(answer.PodUID)
        assert rec is not None
        await service.delete(Pod.model_validate(data.pod.model_dump(by_alias=True)))
        await service.refresh()  # the cancelled job is seen to end
        await service.janitor.tick()  # the first GC: nothing expired yet
        assert Path(rec.pod_dir).exists()
        clock.advance(3601)
        await service.janitor.tick()  # expired, and the GC interval has passed
        assert not Path(rec.pod_dir).exists()
        assert service.store.get(answer.PodUID) is None

    async def between() -> None:
        answer = await service.create(new_pod("h"))
        rec = service.store.get(answer.PodUID)
        assert rec is not None
        await service.delete(Pod.model_validate(new_pod("h").pod.model_dump(by_alias=True)))
        clock.advance(3601)
        # The interval since the last GC has not passed: nothing collected, whatever expired.
        await service.janitor.tick()
        assert Path(rec.pod_dir).exists()

    try:
        asyncio.run(scenario())
        asyncio.run(between())
    finally:
        service.store.close()


def test_refreshes_come_sooner_while_a_new_pods_containers_start(tmp_path: Path) -> None:
    service, fake, _, clock = make(tmp_path, status_refresh_seconds=2)
    first, late = new_pod("s"), new_pod("late")

    async def scenario() -> None:
        answer = await service.create(first)
        await service.refresh()
        # Its job waits: look again soon (reading the files is a command here, as over SSH).
        assert service.refresher.interval() == STARTING_REFRESH_SECONDS
        run(answer.PodJID, fake)
        rec = service.store.get(answer.PodUID)
        assert rec is not None
        put(rec.pod_dir, "containers/main.started", STARTED)
        await service.refresh()
        assert service.refresher.interval() == 2  # all its containers started
        # A pod that does not start within the window no longer shortens the interval.
        await service.create(late)
        await service.refresh()
        assert service.refresher.interval() == STARTING_REFRESH_SECONDS
        clock.advance(31)
        await service.refresh()
        assert service.refresher.interval() == 2

    drive(service, scenario)


def test_where_the_files_are_local_refreshes_come_sooner_still_while_pods_start(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "state.db")
    store.open()
    service = Service(settings(tmp_path), FakeScheduler(), LocalTransport(), store)

    async def scenario() -> None:
        await service.create(new_pod("here"))
        await service.refresh()
        assert service.refresher.interval() == 0.1  # a state read is a few stats: no command

    drive(service, scenario)


def test_a_status_during_a_refresh_never_pairs_an_ended_job_with_older_files(
    tmp_path: Path,
) -> None:
    """The queue says the job ended while the state files are being read: a /status at that
    moment still sees the last published pair (running), never 'ended' with the files from
    before the container's end, which would say the job killed it (137)."""
    service, fake, transport, _ = make(tmp_path)
    data = new_pod("pair")
    seen: list[Any] = []

    async def scenario() -> None:
        answer = await service.create(data)
        run(answer.PodJID, fake)
        rec = service.store.get(answer.PodUID)
        assert rec is not None
        put(rec.pod_dir, "containers/main.started", STARTED)
        await service.refresh()
        loop = asyncio.get_running_loop()
        real_run = transport.run

        def run_then_ask(argv: Sequence[str], *, timeout: float) -> CommandResult:
            result = real_run(argv, timeout=timeout)
            ask = asyncio.run_coroutine_threadsafe(service.status([data.pod]), loop)
            seen.append(ask.result(timeout=30)[0].containers[0].state)
            return result

        put(rec.pod_dir, "containers/main.exit", "0")
        put(rec.pod_dir, "containers/main.finished", STARTED)
        old = fake.jobs[answer.PodJID]
        fake.jobs[answer.PodJID] = JobInfo(answer.PodJID, "COMPLETED", "", old.comment)
        transport.run = run_then_ask  # type: ignore[method-assign]
        await service.refresh()
        transport.run = real_run  # type: ignore[method-assign]
        [after] = await service.status([data.pod])
        assert after.containers[0].state.terminated is not None
        assert after.containers[0].state.terminated.exit_code == 0

    drive(service, scenario)
    [during] = seen
    assert during.running is not None, during


def test_a_restarted_service_refreshes_once_before_serving(tmp_path: Path) -> None:
    service, fake, _, _ = make(tmp_path)
    data = new_pod("before")

    async def scenario() -> None:
        answer = await service.create(data)
        run(answer.PodJID, fake)
        again = Service(service.settings, fake, CountingTransport(), service.store)
        await again.start()
        try:
            assert again.trackers["default"].jobs[answer.PodJID].state == "RUNNING"
            assert again.snapshot_age() is not None
        finally:
            await again.stop()

    drive(service, scenario)


@pytest.mark.parametrize("starting", [False, True], ids=["idle pace", "pods starting"])
def test_a_job_gone_between_two_refreshes_is_never_shown_killed(
    tmp_path: Path, starting: bool
) -> None:
    """A short job starts, ends and leaves the queue between two refreshes: its end is written
    to the store only after the files read with it are published (while pods start, the files
    are also read before the query)."""
    service, fake, transport, _ = make(tmp_path)
    data = new_pod("short")
    seen: list[Any] = []

    async def scenario() -> None:
        answer = await service.create(data)
        rec = service.store.get(answer.PodUID)
        assert rec is not None
        put(rec.pod_dir, "containers/main.started", STARTED)
        await service.status([data.pod])  # its files read once: started, not ended
        put(rec.pod_dir, "containers/main.exit", "0")
        put(rec.pod_dir, "containers/main.finished", STARTED)
        old = fake.jobs.pop(answer.PodJID)
        fake.accounting[answer.PodJID] = JobInfo(answer.PodJID, "COMPLETED", "", old.comment)
        loop = asyncio.get_running_loop()
        real_run = transport.run

        def run_then_ask(argv: Sequence[str], *, timeout: float) -> CommandResult:
            result = real_run(argv, timeout=timeout)
            ask = asyncio.run_coroutine_threadsafe(service.status([data.pod]), loop)
            seen.append(ask.result(timeout=30)[0].containers[0].state)
            return result

        transport.run = run_then_ask  # type: ignore[method-assign]
        service.refresher.starting = starting  # the create left it starting
        await service.refresh()
        transport.run = real_run  # type: ignore[method-assign]
        [after] = await service.status([data.pod])
        assert after.containers[0].state.terminated is not None
        assert after.containers[0].state.terminated.exit_code == 0

    drive(service, scenario)
    assert len(seen) == (2 if starting else 1)  # with pods starting, a read before the query
    assert all(during.terminated is None for during in seen), seen


def test_the_queue_is_asked_less_often_while_nothing_changes_and_at_once_when_files_change(
    tmp_path: Path,
) -> None:
    service, fake, transport, clock = make(
        tmp_path, status_refresh_seconds=2, status_idle_refresh_seconds=8
    )

    async def tick() -> bool:
        """One turn of the background refresher: whether it asked the queue."""
        before = fake.calls.count("query")
        await service.refresh(queue=service.refresher.queue_due())
        clock.advance(2)
        return fake.calls.count("query") > before

    async def scenario() -> None:
        answer = await service.create(new_pod("idle"))
        run(answer.PodJID, fake)
        rec = service.store.get(answer.PodUID)
        assert rec is not None
        put(rec.pod_dir, "job.runs", "1")
        put(rec.pod_dir, "containers/main.started", STARTED)
        asked = [await tick() for _ in range(14)]
        # Every refresh reads the files; the queue after 2, 4, 8, then every 8 s.
        assert asked == [
            True,
            True,
            False,
            True,
            False,
            False,
            False,
            True,
            False,
            False,
            False,
            True,
            False,
            False,
        ]
        reads = transport.calls["run"]
        # The container ends: the next refresh's file read sees it, and the queue is asked on
        # the refresh right after, however long the idle interval had grown; then it slows
        # down again from the shortest interval.
        put(rec.pod_dir, "containers/main.exit", "0")
        put(rec.pod_dir, "containers/main.finished", STARTED)
        assert [await tick() for _ in range(4)] == [False, True, False, True]
        assert transport.calls["run"] - reads == 4  # one state read per refresh, no more
        # A job that ends without its files changing (cancelled from outside) is seen within
        # the longest interval.
        job = fake.jobs[answer.PodJID]
        fake.jobs[answer.PodJID] = JobInfo(job.job_id, "CANCELLED", "", job.comment, job.nodes)
        assert True in [await tick() for _ in range(4)]
        ended = service.store.get(answer.PodUID)
        assert ended is not None and ended.final_state == "CANCELLED"

    drive(service, scenario)


def test_a_start_is_seen_from_the_files_before_the_queue_says_so_but_not_an_earlier_runs(
    tmp_path: Path,
) -> None:
    service, fake, _, _ = make(tmp_path)
    data = new_pod("quick")

    async def state() -> str:
        [st] = await service.status([data.pod])
        return next(
            k for k in ("waiting", "running", "terminated") if getattr(st.containers[0].state, k)
        )

    async def scenario() -> None:
        answer = await service.create(data)
        await service.refresh()  # the queue shows the job pending
        rec = service.store.get(answer.PodUID)
        assert rec is not None
        # The job starts after that query: its script counts the run, then the container.
        put(rec.pod_dir, "job.runs", "1")
        put(rec.pod_dir, "containers/main.started", STARTED)
        queries = fake.calls.count("query")
        await service.refresh(queue=False)
        assert fake.calls.count("query") == queries
        assert await state() == "running"
        # Its container ends before the queue says where the job ran: the end waits for it.
        put(rec.pod_dir, "containers/main.exit", "0")
        put(rec.pod_dir, "containers/main.finished", STARTED)
        await service.refresh(queue=False)
        assert await state() == "waiting"
        for name in ("exit", "finished"):
            (Path(rec.pod_dir) / "containers" / f"main.{name}").unlink()
        # Slurm requeues it: pending again, the first run's files still there.
        fake.jobs[answer.PodJID] = JobInfo(answer.PodJID, "PENDING", "BeginTime", rec.pod_dir)
        await service.refresh()
        assert await state() == "waiting"
        await service.refresh(queue=False)
        assert await state() == "waiting"  # an earlier run's files: still hidden
        put(rec.pod_dir, "job.runs", "2")  # the second run starts
        await service.refresh(queue=False)
        assert await state() == "running"

    drive(service, scenario)


def local_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Service, FakeScheduler, list[str]]:
    """A service whose pod files are local (read in process), and the pod directories whose
    state files its reads read, in order."""
    store = Store(tmp_path / "state.db")
    store.open()
    fake = FakeScheduler()
    service = Service(settings(tmp_path), fake, LocalTransport(), store)
    real = jobdir._state_files
    read: list[str] = []

    def counted(pod_dir: str) -> dict[str, bytes]:
        read.append(pod_dir)
        return real(pod_dir)

    monkeypatch.setattr(jobdir, "_state_files", counted)
    return service, fake, read


def test_where_the_files_are_local_a_pod_read_once_is_not_read_again_until_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every refresh (10 a second while pods start) reads the pods changed in the last
    SINCE_MARGIN seconds by their directories' times; in process, one whose directories keep
    the stamps of the last read is not read again."""
    service, fake, read = local_reads(tmp_path, monkeypatch)
    data = new_pod("settled")

    async def scenario() -> None:
        answer = await service.create(data)
        run(answer.PodJID, fake)
        rec = service.store.get(answer.PodUID)
        assert rec is not None
        put(rec.pod_dir, "job.runs", "1")
        put(rec.pod_dir, "containers/main.started", STARTED)
        written = time.time_ns() - 3_000_000_000 + 123_456_789  # 3 s ago, within the margin
        for d in (rec.pod_dir, f"{rec.pod_dir}/containers"):
            os.utime(d, ns=(written, written))
        await service.refresh()
        assert read == [rec.pod_dir]
        await service.refresh(queue=False)
        await service.refresh(queue=False)
        assert read == [rec.pod_dir]  # unchanged: not read again
        put(rec.pod_dir, "containers/main.exit", "0")
        put(rec.pod_dir, "containers/main.finished", STARTED)
        await service.refresh(queue=False)
        assert read == [rec.pod_dir, rec.pod_dir]
        [status] = await service.status([data.pod])
        assert status.containers[0].state.terminated is not None

    drive(service, scenario)


def test_where_the_files_are_local_a_new_pod_is_looked_for_once_by_its_own_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The data root's mark older than the last read: a pod no read looked for yet is looked
    at (its job may not have marked anything yet) by its own directory, the others not at all,
    and once: the next read trusts the mark for it too."""
    service, _, read = local_reads(tmp_path, monkeypatch)
    mark = tmp_path / "pods" / jobdir.STATE_MARK

    async def scenario() -> None:
        first = await service.create(new_pod("first"))
        mark.write_text("")
        await service.refresh()  # reads every pod: the mark is new
        os.utime(mark, (time.time() - 60, time.time() - 60))
        read.clear()
        second = await service.create(new_pod("second"))
        await service.refresh()
        rec = service.store.get(second.PodUID)
        assert rec is not None and read == [rec.pod_dir]
        await service.refresh(queue=False)
        assert read == [rec.pod_dir]  # looked for once
        assert first.PodUID in service.trackers["default"].files

    drive(service, scenario)
