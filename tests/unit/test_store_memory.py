"""The store's rows in memory follow every write: after any sequence of writes, what get()
answers is what a fresh load of the database reads (a restart sees the same pods)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from interlink_slurm.store import Store


def fresh(path: Path) -> dict[str, object]:
    other = Store(path)
    other.open()
    try:
        return dict(other._rows)
    finally:
        other.close()


def test_every_write_is_in_memory_as_a_fresh_load_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = Store(path)
    store.open()
    try:
        for i in range(5):
            store.begin_submit(f"u{i}", "ns", f"p{i}", f"/d/{i}", ["init"], ["main"], pulls="[]")
        for i in range(4):
            store.set_job(f"u{i}", str(100 + i))
        store.pulls_done("u0")
        store.mark_started(["u0", "u1"], 5.0)
        store.set_nodes("default", [("100", "n1"), ("101", "n2")])
        store.finish("default", [("100", "COMPLETED", ""), ("102", "FAILED", "NonZeroExitCode")])
        store.reopen("default", ["102"])
        store.set_kill_at("u1", 9.0)
        store.mark_deleted("u1")
        store.forget("u3")
        mine = {uid: store.get(uid) for uid in (f"u{i}" for i in range(5))}
        assert {u: r for u, r in mine.items() if r is not None} == fresh(path)
        assert mine["u3"] is None
        u0 = mine["u0"]
        assert u0 is not None and u0.final_state == "COMPLETED" and u0.nodes == "n1"
        assert u0.pulls is None and u0.started == 5.0
        assert store.get_many(["u0", "u3", "nope"]).keys() == {"u0"}
        # active() from memory picks the rows the SQL it replaced picked.
        for since in (0.0, time.time() + 1000):
            with store._tx() as db:
                picked = db.execute(
                    "SELECT uid FROM pods WHERE job_id IS NOT NULL AND (final_state IS NULL"
                    " OR (final_state != 'GONE' AND final_at >= ?))",
                    (since,),
                ).fetchall()
            assert sorted(r.uid for r in store.active(since)) == sorted(u for (u,) in picked)
        assert "u0" in {r.uid for r in store.active(0.0)}  # ended, still watched
        assert "u0" not in {r.uid for r in store.active(time.time() + 1000)}
    finally:
        store.close()


def test_a_write_that_fails_leaves_memory_as_it_was(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    store.open()
    try:
        store.begin_submit("u", "ns", "p", "/d", [], ["main"])
        before = store.get("u")
        with pytest.raises(sqlite3.Error), store._write() as w:
            w.execute("UPDATE pods SET job_id = '1' WHERE uid = 'u'")
            w.reload("uid = ?", ("u",))
            w.execute("SELECT * FROM no_such_table")
        assert store.get("u") == before
        assert as_sql_reads(store) == before
    finally:
        store.close()
    with pytest.raises(RuntimeError):
        store.get("u")  # a closed store answers nothing


def as_sql_reads(store: Store) -> object:
    """The row as SQL reads it now (the failed write left nothing in the database either)."""
    with store._tx() as db:
        row = db.execute(store._SELECT + " WHERE uid = 'u'").fetchone()
    return store._record(row)


def test_writes_asked_while_one_commits_share_the_next_commit(tmp_path: Path) -> None:
    """Group commit: eight writes at once take two transactions (the first alone, then the
    seven that queued while it waited), and a write that fails fails alone."""
    path = tmp_path / "state.db"
    store = Store(path)
    store.open()
    commits: list[str] = []
    errors: dict[int, BaseException] = {}
    try:
        for i in range(8):
            store.begin_submit(f"u{i}", "ns", f"p{i}", f"/d/{i}", [], ["main"])
        assert store._db is not None
        store._db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)

        def write(i: int) -> None:
            try:
                if i == 5:
                    with store._write() as w:
                        w.execute("UPDATE pods SET job_id = 'x' WHERE uid = 'u5'")
                        w.execute("UPDATE no_such_table SET x = 1")
                else:
                    store.set_job(f"u{i}", str(100 + i))
            except BaseException as err:
                errors[i] = err

        store._lock.acquire()  # the first write's commit waits: the others queue meanwhile
        threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
        try:
            for t in threads:
                t.start()
            deadline = time.monotonic() + 60
            while len(store._queue) < 7 and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            store._lock.release()
        for t in threads:
            t.join()
        assert len(commits) == 2
        assert list(errors) == [5] and isinstance(errors[5], sqlite3.Error)
        got = {u: r.job_id for u, r in store.get_many([f"u{i}" for i in range(8)]).items()}
        assert got == {f"u{i}": None if i == 5 else str(100 + i) for i in range(8)}
        store._db.set_trace_callback(None)
        assert {u: r for u, r in store._rows.items()} == fresh(path)
    finally:
        store.close()


def test_image_ids_are_kept_with_the_container_names_and_old_rows_have_none(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    store = Store(path)
    store.open()
    try:
        ids = {"main": "docker.io/library/python@sha256:" + "0" * 64}
        store.begin_submit("u", "ns", "p", "/d", ["init"], ["main"], image_ids=ids)
        store.begin_submit("v", "ns", "q", "/e", [], ["main"])
        # A row written before image ids were kept: the containers JSON has no such key.
        with store._write() as w:
            w.execute(
                """UPDATE pods SET containers = '{"init": [], "main": ["x"]}' WHERE uid = 'v'"""
            )
            w.reload("uid = 'v'", ())
        rec = store.get("u")
        assert rec is not None
        assert rec.image_ids == (("main", ids["main"]),)
        assert rec.all_containers == ("init", "main")
    finally:
        store.close()
    again = fresh(path)
    assert again["u"].image_ids == (("main", ids["main"]),)  # type: ignore[attr-defined]
    assert again["v"].image_ids == ()  # type: ignore[attr-defined]
    assert again["v"].containers == ("x",)  # type: ignore[attr-defined]
