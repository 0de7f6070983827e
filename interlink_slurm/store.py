"""The pod ↔ job index, in SQLite (WAL, synchronous=FULL: a row is on disk before we answer).

It is an index, not the truth: Slurm knows whether a job exists (and carries the pod UID in its
comment), and the pod directory knows what each container did.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS pods (
    uid        TEXT PRIMARY KEY,
    namespace  TEXT NOT NULL,
    name       TEXT NOT NULL,
    pod_dir    TEXT NOT NULL,
    job_id     TEXT,             -- NULL while the submission is in flight
    containers TEXT NOT NULL,    -- JSON: {"init": [...], "main": [...]}
    created    REAL NOT NULL,
    deleted    REAL              -- when /delete was asked
);
CREATE INDEX IF NOT EXISTS pods_job ON pods(job_id);
"""


@dataclass(frozen=True)
class PodRecord:
    uid: str
    namespace: str
    name: str
    pod_dir: str
    job_id: str | None
    init_containers: tuple[str, ...]
    containers: tuple[str, ...]
    created: float
    deleted: float | None

    @property
    def all_containers(self) -> tuple[str, ...]:
        return (*self.init_containers, *self.containers)


class Store:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        self._db = db
        self._path.chmod(0o600)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        if self._db is None:
            raise RuntimeError("store is not open")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @staticmethod
    def _record(row: sqlite3.Row | tuple[object, ...]) -> PodRecord:
        uid, ns, name, pod_dir, job_id, containers, created, deleted = row
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
        )

    _SELECT = "SELECT uid, namespace, name, pod_dir, job_id, containers, created, deleted FROM pods"

    def get(self, uid: str) -> PodRecord | None:
        with self._tx() as db:
            row = db.execute(self._SELECT + " WHERE uid = ?", (uid,)).fetchone()
        return self._record(row) if row else None

    def get_many(self, uids: Sequence[str]) -> dict[str, PodRecord]:
        out: dict[str, PodRecord] = {}
        with self._tx() as db:
            for start in range(0, len(uids), 500):
                chunk = uids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                # Only '?' placeholders are built here; the values are bound.
                query = f"{self._SELECT} WHERE uid IN ({marks})"
                for row in db.execute(query, chunk):
                    rec = self._record(row)
                    out[rec.uid] = rec
        return out

    def begin_submit(
        self,
        uid: str,
        namespace: str,
        name: str,
        pod_dir: str,
        init_containers: Sequence[str],
        containers: Sequence[str],
    ) -> None:
        names = json.dumps({"init": list(init_containers), "main": list(containers)})
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO pods (uid, namespace, name, pod_dir, job_id, containers,"
                " created, deleted) VALUES (?, ?, ?, ?, NULL, ?, ?, NULL)",
                (uid, namespace, name, pod_dir, names, time.time()),
            )

    def set_job(self, uid: str, job_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE pods SET job_id = ? WHERE uid = ?", (job_id, uid))

    def forget(self, uid: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM pods WHERE uid = ?", (uid,))

    def mark_deleted(self, uid: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE pods SET deleted = COALESCE(deleted, ?) WHERE uid = ?", (time.time(), uid)
            )

    def in_flight(self) -> list[PodRecord]:
        """Pods whose submission was started but not recorded (a crash in between)."""
        with self._tx() as db:
            rows = db.execute(self._SELECT + " WHERE job_id IS NULL").fetchall()
        return [self._record(r) for r in rows]
