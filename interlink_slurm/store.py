"""The pod ↔ job index, in SQLite (WAL, synchronous=FULL: a row is on disk before we answer).

It is an index, not the truth: Slurm knows whether a job exists (and carries the pod UID in its
comment), and the pod directory knows what each container did.

Every row is also held in memory, loaded at open and updated by each write once committed (the
rows it changed are read back in the same transaction): ``get`` and ``get_many``, which /status,
/getLogs and /create ask on every call, run no SQL. This process is the database's only writer.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS pods (
    uid          TEXT PRIMARY KEY,
    namespace    TEXT NOT NULL,
    name         TEXT NOT NULL,
    pod_dir      TEXT NOT NULL,
    job_id       TEXT,             -- NULL while the submission is in flight
    containers   TEXT NOT NULL,    -- JSON: {"init": [...], "main": [...], "image_ids": {...}}
    created      REAL NOT NULL,
    deleted      REAL,             -- when /delete was asked
    final_state  TEXT,             -- the job's last Slurm state once it ended (or GONE)
    final_reason TEXT,
    kill_at      REAL,             -- when to kill a job whose grace period runs
    final_at     REAL,             -- when the job was seen to end
    pulls        TEXT,             -- JSON: images to pull on the submit host while the job is held
    cluster      TEXT NOT NULL DEFAULT 'default',  -- the Slurm cluster the job is on
    placement    TEXT,             -- JSON: the target chosen and why (several targets)
    started      REAL,             -- when the job was first seen running (placement metrics)
    nodes        TEXT,             -- the job's Slurm node list, once seen placed
    notes        TEXT              -- JSON: [[container, warning]...] said in its status
);
CREATE INDEX IF NOT EXISTS pods_job ON pods(job_id);
"""
# Columns added after the first release, for databases created before them.
MIGRATIONS = {
    "final_state": "ALTER TABLE pods ADD COLUMN final_state TEXT",
    "final_reason": "ALTER TABLE pods ADD COLUMN final_reason TEXT",
    "kill_at": "ALTER TABLE pods ADD COLUMN kill_at REAL",
    "final_at": "ALTER TABLE pods ADD COLUMN final_at REAL",
    "pulls": "ALTER TABLE pods ADD COLUMN pulls TEXT",
    "cluster": "ALTER TABLE pods ADD COLUMN cluster TEXT NOT NULL DEFAULT 'default'",
    "placement": "ALTER TABLE pods ADD COLUMN placement TEXT",
    "started": "ALTER TABLE pods ADD COLUMN started REAL",
    "nodes": "ALTER TABLE pods ADD COLUMN nodes TEXT",
    "notes": "ALTER TABLE pods ADD COLUMN notes TEXT",
}


@dataclass(frozen=True)
class PodRecord:
    """One pod's row: which job and cluster it went to, and what has been seen of its job.
    Frozen: a write replaces the row in memory whole."""

    uid: str
    namespace: str
    name: str
    pod_dir: str
    job_id: str | None
    init_containers: tuple[str, ...]
    containers: tuple[str, ...]
    created: float
    deleted: float | None
    final_state: str | None = None
    final_reason: str | None = None
    kill_at: float | None = None
    final_at: float | None = None  # when the job was seen to end
    # Images still to pull on the submit host before the (held) job may start, as the JSON the
    # puller wrote; None when there are none.
    pulls: str | None = None
    cluster: str = "default"
    # The placement decision as JSON (placement.Placement.record), with several targets.
    placement: str | None = None
    started: float | None = None
    nodes: str | None = None  # Slurm's node list of the job, as last seen
    # (container, warning): what the pod asked that it runs without, said in its status. Stored
    # in the column "notes" (its name before it was called warnings), so old databases open as is.
    warnings: tuple[tuple[str, str], ...] = ()
    # (container, imageID): the digest each container's image was pulled by, where known (an
    # image the pod or its Always lookup pinned). Kept in the "containers" JSON.
    image_ids: tuple[tuple[str, str], ...] = ()

    @property
    def all_containers(self) -> tuple[str, ...]:
        """Init containers first, then the main ones: every container with state files."""
        return (*self.init_containers, *self.containers)

    def is_pod(self, namespace: str, name: str) -> bool:
        """Whether a request names this row's pod: the UID found the row, and the namespace and
        name must agree too (a UID alone, e.g. one seen in another namespace, shows nothing)."""
        return self.namespace == namespace and self.name == name


class _Write:
    """The statements of one write, run later in a shared transaction (Store._write)."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, str, Any]] = []
        self.done = False
        self.error: Exception | None = None

    def execute(self, sql: str, params: Sequence[object] = ()) -> None:
        """A statement to run at commit, as sqlite3's execute."""
        self._steps.append(("execute", sql, params))

    def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        """A statement to run at commit for each of ``rows``, as sqlite3's executemany."""
        self._steps.append(("executemany", sql, rows))

    def reload(self, where: str, params: Sequence[object]) -> None:
        """Read back the rows the write changed (``where`` is this module's own SQL, the values
        bound), for memory to take once committed."""
        self._steps.append(("reload", where, params))

    def drop(self, uid: str) -> None:
        """The pod's row is gone: from memory too, once committed."""
        self._steps.append(("drop", uid, None))

    def run(
        self,
        db: sqlite3.Connection,
        select: str,
        record: Callable[[tuple[object, ...]], PodRecord],
    ) -> dict[str, PodRecord | None]:
        """Runs the statements; returns the rows they changed (None: deleted)."""
        changed: dict[str, PodRecord | None] = {}
        for kind, text, args in self._steps:
            if kind == "execute":
                db.execute(text, args)
            elif kind == "executemany":
                db.executemany(text, args)
            elif kind == "reload":
                # Only this module's own WHERE clauses are built in; the values are bound.
                for row in db.execute(f"{select} WHERE {text}", args):
                    rec = record(row)
                    changed[rec.uid] = rec
            else:
                changed[text] = None
        return changed


class Store:
    """The pod rows: on disk in SQLite, and in memory for the reads on every call. Blocking:
    callers on the event loop run writes in a thread (asyncio.to_thread)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        # uid → its row as last committed; replaced whole (records are frozen), never mutated.
        self._rows: dict[str, PodRecord] = {}
        # Group commit (_write): the writes waiting for the next transaction, and whether a
        # thread is committing one now.
        self._group = threading.Condition()
        self._queue: list[_Write] = []
        self._leading = False

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    def open(self) -> None:
        """Create or migrate the database (mode 0600, its directory 0700) and load every row
        into memory; nothing is read or written before this."""
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        have = {row[1] for row in db.execute("PRAGMA table_info(pods)")}
        for column, statement in MIGRATIONS.items():
            if column not in have:
                db.execute(statement)
        self._db = db
        self._rows = {r.uid: r for r in map(self._record, db.execute(self._SELECT))}
        self._path.chmod(0o600)

    def close(self) -> None:
        """Close the database and drop the rows from memory; calling it twice is harmless."""
        if self._db is not None:
            self._db.close()
            self._db = None
        self._rows = {}

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A transaction for reads (writes go through _write)."""
        if self._db is None:
            raise RuntimeError("store is not open")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            finally:
                self._db.execute("ROLLBACK")

    @contextmanager
    def _write(self) -> Iterator[_Write]:
        """A write: the statements said in the block run when it ends, in the next transaction
        (group commit), and the call returns once that is committed, on disk.

        One transaction, so one fsync, holds every write that threads asked for while the last
        one committed: with 8 creates at once, most of them. Each write runs in a savepoint of
        its own; one that fails is rolled back alone and raises in its own thread."""
        if self._db is None:
            raise RuntimeError("store is not open")
        write = _Write()
        yield write
        with self._group:
            self._queue.append(write)
            while self._leading and not write.done:
                self._group.wait()
            batch = None
            if not write.done:
                self._leading = True
                batch, self._queue = self._queue, []
        if batch is not None:
            try:
                self._commit(batch)
            finally:
                with self._group:
                    self._leading = False
                    self._group.notify_all()
        if write.error is not None:
            raise write.error

    def _commit(self, batch: Sequence[_Write]) -> None:
        """Runs the writes in one transaction; memory takes their rows once it is committed."""
        changed: dict[str, PodRecord | None] = {}
        with self._lock:
            db = self._db
            try:
                if db is None:
                    raise RuntimeError("store is not open")
                db.execute("BEGIN IMMEDIATE")
                for write in batch:
                    db.execute("SAVEPOINT one")
                    try:
                        mine = write.run(db, self._SELECT, self._record)
                    except Exception as err:
                        db.execute("ROLLBACK TO one")
                        write.error = err
                    else:
                        changed.update(mine)
                    db.execute("RELEASE one")
                db.execute("COMMIT")
            except Exception as err:
                if db is not None and db.in_transaction:
                    db.execute("ROLLBACK")
                changed = {}
                for write in batch:
                    write.error = write.error or err
            # Memory follows the database only once the writes are on disk.
            for uid, rec in changed.items():
                if rec is None:
                    self._rows.pop(uid, None)
                else:
                    self._rows[uid] = rec
            for write in batch:
                write.done = True

    @staticmethod
    def _record(row: sqlite3.Row | tuple[object, ...]) -> PodRecord:
        (
            uid,
            ns,
            name,
            pod_dir,
            job_id,
            containers,
            created,
            deleted,
            state,
            reason,
            kill,
            pulls,
            cluster,
            placement,
            started,
            nodes,
            notes,
            final_at,
        ) = row
        names = json.loads(str(containers))
        return PodRecord(
            uid=str(uid),
            namespace=str(ns),
            name=str(name),
            pod_dir=str(pod_dir),
            job_id=None if job_id is None else str(job_id),
            init_containers=tuple(names["init"]),
            containers=tuple(names["main"]),
            created=float(created),  # type: ignore[arg-type]
            deleted=None if deleted is None else float(deleted),  # type: ignore[arg-type]
            final_state=None if state is None else str(state),
            final_reason=None if reason is None else str(reason),
            kill_at=None if kill is None else float(kill),  # type: ignore[arg-type]
            final_at=None if final_at is None else float(final_at),  # type: ignore[arg-type]
            pulls=None if pulls is None else str(pulls),
            cluster=str(cluster),
            placement=None if placement is None else str(placement),
            started=None if started is None else float(started),  # type: ignore[arg-type]
            nodes=None if nodes is None else str(nodes),
            warnings=tuple((str(c), str(w)) for c, w in json.loads(str(notes))) if notes else (),
            image_ids=tuple((str(c), str(i)) for c, i in names.get("image_ids", {}).items()),
        )

    _SELECT = (
        "SELECT uid, namespace, name, pod_dir, job_id, containers, created, deleted,"
        " final_state, final_reason, kill_at, pulls, cluster, placement, started, nodes,"
        " notes, final_at"
        " FROM pods"
    )

    def _open_rows(self) -> dict[str, PodRecord]:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._rows

    def get(self, uid: str) -> PodRecord | None:
        """The pod's row, from memory: no SQL, safe to call on the event loop."""
        return self._open_rows().get(uid)

    def get_many(self, uids: Sequence[str]) -> dict[str, PodRecord]:
        """The rows of those pods that have one, from memory (see get)."""
        rows = self._open_rows()
        return {uid: rec for uid in uids if (rec := rows.get(uid)) is not None}

    def begin_submit(
        self,
        uid: str,
        namespace: str,
        name: str,
        pod_dir: str,
        init_containers: Sequence[str],
        containers: Sequence[str],
        pulls: str | None = None,
        cluster: str = "default",
        placement: str | None = None,
        warnings: Sequence[tuple[str, str]] = (),
        image_ids: Mapping[str, str] | None = None,
    ) -> None:
        """The pod's row, with no job yet, written (on disk) before its job is submitted: a
        crash in between leaves a row whose job is found by its comment. Replaces an old row."""
        lists: dict[str, object] = {"init": list(init_containers), "main": list(containers)}
        if image_ids:
            lists["image_ids"] = dict(image_ids)
        names = json.dumps(lists)
        noted = json.dumps([list(said) for said in warnings]) if warnings else None
        with self._write() as w:
            w.execute(
                "INSERT OR REPLACE INTO pods (uid, namespace, name, pod_dir, job_id, containers,"
                " created, deleted, pulls, cluster, placement, notes)"
                " VALUES (?, ?, ?, ?, NULL, ?, ?, NULL, ?, ?, ?, ?)",
                (
                    uid,
                    namespace,
                    name,
                    pod_dir,
                    names,
                    time.time(),
                    pulls,
                    cluster,
                    placement,
                    noted,
                ),
            )
            w.reload("uid = ?", (uid,))

    def set_job(self, uid: str, job_id: str) -> None:
        """The job Slurm gave the pod, once submitted (or found after a crash)."""
        with self._write() as w:
            w.execute("UPDATE pods SET job_id = ? WHERE uid = ?", (job_id, uid))
            w.reload("uid = ?", (uid,))

    def pulls_done(self, uid: str) -> None:
        """The pod's images are pulled: its held job may be released."""
        with self._write() as w:
            w.execute("UPDATE pods SET pulls = NULL WHERE uid = ?", (uid,))
            w.reload("uid = ?", (uid,))

    def pulling(self) -> list[PodRecord]:
        """Pods whose held job waits for image pulls on the submit host."""
        with self._tx() as db:
            rows = db.execute(
                self._SELECT + " WHERE pulls IS NOT NULL AND job_id IS NOT NULL"
                " AND deleted IS NULL AND final_state IS NULL"
            ).fetchall()
        return [self._record(r) for r in rows]

    def forget(self, uid: str) -> None:
        """Delete the pod's row, on disk and in memory: after the retention, or when Slurm
        refused its job."""
        with self._write() as w:
            w.execute("DELETE FROM pods WHERE uid = ?", (uid,))
            w.drop(uid)

    def mark_deleted(self, uid: str) -> None:
        """Kubernetes deleted the pod: the retention counts from now (a second delete keeps
        the first time)."""
        with self._write() as w:
            w.execute(
                "UPDATE pods SET deleted = COALESCE(deleted, ?) WHERE uid = ?", (time.time(), uid)
            )
            w.reload("uid = ?", (uid,))

    def finish(self, cluster: str, job_states: Sequence[tuple[str, str, str]]) -> None:
        """Record the final Slurm state of jobs of a cluster that ended: (job id, state,
        reason)."""
        with self._write() as w:
            w.executemany(
                "UPDATE pods SET final_state = ?, final_reason = ?, kill_at = NULL,"
                " final_at = COALESCE(final_at, ?) WHERE job_id = ? AND cluster = ?"
                " AND (final_state IS NULL OR final_state != ?)",
                [
                    (state, reason, time.time(), job_id, cluster, state)
                    for job_id, state, reason in job_states
                ],
            )
            for job_id, _, _ in job_states:
                w.reload("job_id = ? AND cluster = ?", (job_id, cluster))

    def reopen(self, cluster: str, job_ids: Sequence[str]) -> None:
        """Jobs seen to end that Slurm runs again (requeued): they are active once more."""
        with self._write() as w:
            w.executemany(
                "UPDATE pods SET final_state = NULL, final_reason = NULL, final_at = NULL"
                " WHERE job_id = ? AND cluster = ?",
                [(j, cluster) for j in job_ids],
            )
            for job_id in job_ids:
                w.reload("job_id = ? AND cluster = ?", (job_id, cluster))

    def mark_started(self, uids: Sequence[str], when: float) -> None:
        """Pods whose job was seen running for the first time."""
        with self._write() as w:
            w.executemany(
                "UPDATE pods SET started = COALESCE(started, ?) WHERE uid = ?",
                [(when, uid) for uid in uids],
            )
            for uid in uids:
                w.reload("uid = ?", (uid,))

    def set_nodes(self, cluster: str, job_nodes: Sequence[tuple[str, str]]) -> None:
        """Where jobs of a cluster run (job id, node list), as Slurm last said."""
        with self._write() as w:
            w.executemany(
                "UPDATE pods SET nodes = ? WHERE job_id = ? AND cluster = ?",
                [(nodes, job_id, cluster) for job_id, nodes in job_nodes],
            )
            for job_id, _ in job_nodes:
                w.reload("job_id = ? AND cluster = ?", (job_id, cluster))

    def set_kill_at(self, uid: str, when: float | None) -> None:
        """When the janitor cancels the pod's job for good (after the grace period); None once
        it did."""
        with self._write() as w:
            w.execute("UPDATE pods SET kill_at = ? WHERE uid = ?", (when, uid))
            w.reload("uid = ?", (uid,))

    def active(self, ended_since: float) -> list[PodRecord]:
        """Pods worth asking Slurm about: jobs not seen to end, and jobs that ended after
        ``ended_since`` (Slurm may still requeue those). From memory: each refresh asks."""
        return [
            r
            for r in list(self._open_rows().values())
            if r.job_id is not None
            and (
                r.final_state is None
                or (
                    r.final_state != "GONE" and r.final_at is not None and r.final_at >= ended_since
                )
            )
        ]

    def due_kills(self, now: float) -> list[PodRecord]:
        """Pods whose job is to be cancelled for good by ``now`` (see set_kill_at)."""
        with self._tx() as db:
            rows = db.execute(
                self._SELECT + " WHERE kill_at IS NOT NULL AND kill_at <= ?", (now,)
            ).fetchall()
        return [self._record(r) for r in rows]

    def expired(self, deleted_before: float) -> list[PodRecord]:
        """Pods deleted before the given time: their directories can go."""
        with self._tx() as db:
            rows = db.execute(
                self._SELECT + " WHERE deleted IS NOT NULL AND deleted < ?", (deleted_before,)
            ).fetchall()
        return [self._record(r) for r in rows]

    def count_by_state(self) -> dict[str, int]:
        """Rows per final Slurm state, SUBMITTING (no job yet) or ACTIVE: for the metrics."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT COALESCE(final_state, CASE WHEN job_id IS NULL THEN 'SUBMITTING'"
                " ELSE 'ACTIVE' END), COUNT(*) FROM pods GROUP BY 1"
            ).fetchall()
        return {str(k): int(v) for k, v in rows}

    def waiting_placed(self) -> list[PodRecord]:
        """Placed pods whose job has not been seen to start, end or be deleted."""
        with self._tx() as db:
            rows = db.execute(
                self._SELECT + " WHERE placement IS NOT NULL AND started IS NULL"
                " AND final_state IS NULL AND deleted IS NULL"
            ).fetchall()
        return [self._record(r) for r in rows]

    def in_flight(self) -> list[PodRecord]:
        """Pods whose submission was started but not recorded (a crash in between)."""
        with self._tx() as db:
            rows = db.execute(self._SELECT + " WHERE job_id IS NULL").fetchall()
        return [self._record(r) for r in rows]
