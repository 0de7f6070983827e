"""Pod groups: pods that must start together (a PyTorchJob, a JobSet, an MPIJob, Kueue's plain
pod groups) become one multi-node Slurm job, submitted when the last member arrives.

Membership is Kueue's convention (label ``kueue.x-k8s.io/pod-group-name``, annotation
``kueue.x-k8s.io/pod-group-total-count``) or ours for clusters without Kueue (annotations
``slurm-job.vk.io/pod-group`` and ``slurm-job.vk.io/pod-group-size``). Groups are per namespace.

The members that arrived are kept in SQLite (two tables of the store's own database, through a
connection of their own) until the group is complete: a restart loses none. Each member is
still its own pod for the rest of the plugin: its own plan, directory, job script, statuses and
logs; the group's job only starts each member's script on its own node(s).
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from interlink_slurm.errors import PodRejected
from interlink_slurm.wire import (
    ContainerState,
    ContainerStateTerminated,
    ContainerStateWaiting,
    ContainerStatus,
    ObjectMeta,
    Pod,
    PodStatus,
)

KUEUE_GROUP = "kueue.x-k8s.io/pod-group-name"  # a label
KUEUE_TOTAL = "kueue.x-k8s.io/pod-group-total-count"  # an annotation
GROUP = "slurm-job.vk.io/pod-group"  # our own pair, both annotations
GROUP_SIZE = "slurm-job.vk.io/pod-group-size"
# A Kubernetes label value: what a group name may be (it becomes part of a directory name).
_GROUP_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")

PENDING_REASON = "GroupPending"
TIMEOUT_REASON = "GroupIncomplete"
ENDED_REASON = "GroupEnded"

SCHEMA = """
CREATE TABLE IF NOT EXISTS pod_groups (
    namespace TEXT NOT NULL,
    name      TEXT NOT NULL,
    size      INTEGER NOT NULL,
    first_at  REAL NOT NULL,     -- when its first member arrived (group_timeout counts from it)
    job_id    TEXT,              -- once submitted
    group_dir TEXT,
    failed    TEXT,              -- why the group failed before it was submitted
    ended_by  TEXT,              -- which member ended the group's job, and how
    PRIMARY KEY (namespace, name)
);
CREATE TABLE IF NOT EXISTS group_members (
    uid       TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    grp       TEXT NOT NULL,
    name      TEXT NOT NULL,
    arrived   REAL NOT NULL,
    data      TEXT               -- the create's body (JSON) until the group is submitted
);
CREATE INDEX IF NOT EXISTS group_members_group ON group_members(namespace, grp);
"""


@dataclass(frozen=True)
class Membership:
    """The group a pod says it belongs to, and how many pods must start together."""

    group: str
    size: int


def membership(meta: ObjectMeta, max_size: int) -> Membership | None:
    """The group a pod belongs to, or None. Raises PodRejected naming the label or annotation
    that is wrong."""
    kueue = meta.labels.get(KUEUE_GROUP)
    own = meta.annotations.get(GROUP)
    if kueue is None and own is None:
        for where, key in (("annotations", KUEUE_TOTAL), ("annotations", GROUP_SIZE)):
            if key in meta.annotations:
                name_key = KUEUE_GROUP if key == KUEUE_TOTAL else GROUP
                raise PodRejected(
                    f"metadata.{where}[{key}]", f"a group size without a group name ({name_key})"
                )
        return None
    if kueue is not None and own is not None and kueue != own:
        raise PodRejected(
            f"metadata.annotations[{GROUP}]",
            f"group {own!r} differs from the pod's Kueue group {kueue!r} ({KUEUE_GROUP})",
        )
    if kueue is not None:
        name, name_field = kueue, f"metadata.labels[{KUEUE_GROUP}]"
    else:
        assert own is not None
        name, name_field = own, f"metadata.annotations[{GROUP}]"
    if not _GROUP_NAME.fullmatch(name):
        raise PodRejected(
            name_field,
            f"{name!r} is not a group name (1-63 letters, digits, '-', '_' or '.', starting and "
            "ending with a letter or digit)",
        )
    sizes = {k: meta.annotations[k] for k in (KUEUE_TOTAL, GROUP_SIZE) if k in meta.annotations}
    if not sizes:
        raise PodRejected(
            f"metadata.annotations[{KUEUE_TOTAL if kueue is not None else GROUP_SIZE}]",
            f"group {name!r} has no size: the number of pods that must start together",
        )
    size = 0
    for key, raw in sizes.items():
        field = f"metadata.annotations[{key}]"
        try:
            value = int(raw.strip())
        except ValueError:
            raise PodRejected(field, f"{raw!r} is not a whole number of pods") from None
        if value < 1:
            raise PodRejected(field, f"{value}: a group has at least 1 pod")
        if value > max_size:
            raise PodRejected(
                field, f"{value} pods: more than the {max_size} a group may have (max_group_size)"
            )
        if size and value != size:
            raise PodRejected(field, f"{value} differs from the group size {size} also given")
        size = value
    return Membership(name, size)


def missing_names(arrived: Sequence[str], size: int) -> str:
    """Who has not arrived, as well as can be told: names of the form PREFIX-INDEX the arrived
    members share, else the count."""
    count = size - len(arrived)
    found = [re.fullmatch(r"(.*)-(\d+)", n) for n in arrived]
    prefixes = {m.group(1) for m in found if m is not None}
    if arrived and len(prefixes) == 1 and all(found):
        prefix = prefixes.pop()
        names = [f"{prefix}-{i}" for i in range(size) if f"{prefix}-{i}" not in arrived]
        if len(names) == count:
            return ", ".join(names)
    have = ", ".join(arrived) if arrived else "none"
    return f"{count} pod{'s' if count != 1 else ''} (arrived: {have})"


@dataclass(frozen=True)
class Member:
    """A pod of a group that arrived (its create was accepted)."""

    uid: str
    namespace: str
    group: str
    name: str
    arrived: float
    data: str | None  # the create's body, JSON; None once the group is submitted


@dataclass(frozen=True)
class Group:
    """A group as recorded: its job once submitted, why it failed (it never started) or
    what ended its job."""

    namespace: str
    name: str
    size: int
    first_at: float
    job_id: str | None = None
    group_dir: str | None = None
    failed: str | None = None
    ended_by: str | None = None


class GroupBook:
    """The groups and the members that arrived, durable (SQLite, WAL, synchronous=FULL)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        """Create the database (mode 0600) if need be; done at first use otherwise."""
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = sqlite3.connect(
            self._path, check_same_thread=False, isolation_level=None, timeout=30.0
        )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        self._db = db
        self._path.chmod(0o600)

    def close(self) -> None:
        """Close the database; a later use opens it again."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        # Opened under the lock: two threads opening at once would each replace the other's
        # connection, and the one left with an open transaction locks the file for good.
        with self._lock:
            if self._db is None:
                self.open()  # at first use: most sites never have a group
            db = self._db
            assert db is not None
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    _GROUP = "SELECT namespace, name, size, first_at, job_id, group_dir, failed, ended_by"
    _MEMBER = "SELECT uid, namespace, grp, name, arrived, data FROM group_members"

    @staticmethod
    def _group(row: Sequence[object]) -> Group:
        ns, name, size, first, job, gdir, failed, ended = row
        return Group(
            str(ns),
            str(name),
            int(size),  # type: ignore[call-overload]
            float(first),  # type: ignore[arg-type]
            None if job is None else str(job),
            None if gdir is None else str(gdir),
            None if failed is None else str(failed),
            None if ended is None else str(ended),
        )

    @staticmethod
    def _member(row: Sequence[object]) -> Member:
        uid, ns, grp, name, arrived, data = row
        return Member(
            str(uid),
            str(ns),
            str(grp),
            str(name),
            float(arrived),  # type: ignore[arg-type]
            None if data is None else str(data),
        )

    def arrive(
        self, namespace: str, joining: Membership, uid: str, name: str, data: str, now: float
    ) -> tuple[Group, list[Member]]:
        """Record a member (again: the same uid is kept once); the group and its members as
        they now are. Raises PodRejected when its size differs from the group's, or another
        pod of the group has its name, or the group was already submitted or failed."""
        with self._tx() as db:
            row = db.execute(
                self._GROUP + " FROM pod_groups WHERE namespace = ? AND name = ?",
                (namespace, joining.group),
            ).fetchone()
            known = db.execute(self._MEMBER + " WHERE uid = ?", (uid,)).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO pod_groups (namespace, name, size, first_at) VALUES (?, ?, ?, ?)",
                    (namespace, joining.group, joining.size, now),
                )
                group = Group(namespace, joining.group, joining.size, now)
            else:
                group = self._group(row)
                if known is None:
                    _check_joinable(group, joining)
            if known is None:
                taken = db.execute(
                    "SELECT uid FROM group_members WHERE namespace = ? AND grp = ? AND name = ?",
                    (namespace, joining.group, name),
                ).fetchone()
                if taken is not None:
                    raise PodRejected(
                        "metadata.name",
                        f"group {joining.group!r} already has a pod {name!r} (uid {taken[0]})",
                    )
                db.execute(
                    "INSERT INTO group_members (uid, namespace, grp, name, arrived, data)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (uid, namespace, joining.group, name, now, data),
                )
            rows = db.execute(
                self._MEMBER + " WHERE namespace = ? AND grp = ? ORDER BY arrived, name",
                (namespace, joining.group),
            ).fetchall()
        return group, [self._member(r) for r in rows]

    def member(self, uid: str) -> tuple[Group, Member] | None:
        """The pod's group and its own row; None when it is in none."""
        with self._tx() as db:
            row = db.execute(self._MEMBER + " WHERE uid = ?", (uid,)).fetchone()
            if row is None:
                return None
            member = self._member(row)
            grow = db.execute(
                self._GROUP + " FROM pod_groups WHERE namespace = ? AND name = ?",
                (member.namespace, member.group),
            ).fetchone()
        if grow is None:
            return None
        return self._group(grow), member

    def members_of(self, uids: Sequence[str]) -> dict[str, tuple[Group, Member]]:
        """The group of each of these pods that is a member of one (one transaction)."""
        out: dict[str, tuple[Group, Member]] = {}
        with self._tx() as db:
            for uid in uids:
                row = db.execute(self._MEMBER + " WHERE uid = ?", (uid,)).fetchone()
                if row is None:
                    continue
                member = self._member(row)
                grow = db.execute(
                    self._GROUP + " FROM pod_groups WHERE namespace = ? AND name = ?",
                    (member.namespace, member.group),
                ).fetchone()
                if grow is not None:
                    out[uid] = (self._group(grow), member)
        return out

    def members(self, namespace: str, group: str) -> list[Member]:
        """The group's members in the order they arrived."""
        with self._tx() as db:
            rows = db.execute(
                self._MEMBER + " WHERE namespace = ? AND grp = ? ORDER BY arrived, name",
                (namespace, group),
            ).fetchall()
        return [self._member(r) for r in rows]

    def submitted(self, namespace: str, group: str, job_id: str, group_dir: str) -> None:
        """The group's job landed: its members' bodies (secrets...) are no longer kept."""
        with self._tx() as db:
            db.execute(
                "UPDATE pod_groups SET job_id = ?, group_dir = ? WHERE namespace = ? AND name = ?",
                (job_id, group_dir, namespace, group),
            )
            db.execute(
                "UPDATE group_members SET data = NULL WHERE namespace = ? AND grp = ?",
                (namespace, group),
            )

    def fail(self, namespace: str, group: str, reason: str) -> None:
        """The group will never start (it did not complete in time, or it cannot run): the
        reason its members show; their bodies are no longer kept."""
        with self._tx() as db:
            db.execute(
                "UPDATE pod_groups SET failed = ? WHERE namespace = ? AND name = ?",
                (reason, namespace, group),
            )
            db.execute(
                "UPDATE group_members SET data = NULL WHERE namespace = ? AND grp = ?",
                (namespace, group),
            )

    def ended_by(self, namespace: str, group: str, why: str) -> None:
        """What ended the group's job (the first cause is kept)."""
        with self._tx() as db:
            db.execute(
                "UPDATE pod_groups SET ended_by = COALESCE(ended_by, ?)"
                " WHERE namespace = ? AND name = ?",
                (why, namespace, group),
            )

    def leave(self, uid: str) -> None:
        """A member deleted: its row goes; the group's with its last member."""
        with self._tx() as db:
            row = db.execute(
                "SELECT namespace, grp FROM group_members WHERE uid = ?", (uid,)
            ).fetchone()
            if row is None:
                return
            db.execute("DELETE FROM group_members WHERE uid = ?", (uid,))
            left = db.execute(
                "SELECT COUNT(*) FROM group_members WHERE namespace = ? AND grp = ?", tuple(row)
            ).fetchone()[0]
            if not left:
                db.execute("DELETE FROM pod_groups WHERE namespace = ? AND name = ?", tuple(row))

    def overdue(self, arrived_before: float) -> list[Group]:
        """Groups still incomplete whose first member arrived before the given time."""
        with self._tx() as db:
            rows = db.execute(
                self._GROUP + " FROM pod_groups WHERE job_id IS NULL AND failed IS NULL"
                " AND first_at < ?",
                (arrived_before,),
            ).fetchall()
        return [self._group(r) for r in rows]

    def all(self) -> list[tuple[Group, list[Member]]]:
        """Every group with its members: what the gang loads into memory at first use."""
        with self._tx() as db:
            groups = [self._group(r) for r in db.execute(self._GROUP + " FROM pod_groups")]
            members = [self._member(r) for r in db.execute(self._MEMBER)]
        return [
            (g, [m for m in members if (m.namespace, m.group) == (g.namespace, g.name)])
            for g in groups
        ]

    def any(self) -> bool:
        """Whether any group is recorded: the gang's tick has nothing to do otherwise."""
        with self._tx() as db:
            return db.execute("SELECT 1 FROM pod_groups LIMIT 1").fetchone() is not None

    def complete_unsubmitted(self) -> list[Group]:
        """Groups all of whose members arrived, not submitted (a failure or a crash between)."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT namespace, name, size, first_at, job_id, group_dir, failed, ended_by"
                " FROM pod_groups g WHERE job_id IS NULL AND failed IS NULL"
                " AND size <= (SELECT COUNT(*) FROM group_members m"
                " WHERE m.namespace = g.namespace AND m.grp = g.name)"
            ).fetchall()
        return [self._group(r) for r in rows]

    def running(self) -> list[Group]:
        """Submitted groups whose end is not explained yet."""
        with self._tx() as db:
            rows = db.execute(
                self._GROUP + " FROM pod_groups WHERE job_id IS NOT NULL AND ended_by IS NULL"
            ).fetchall()
        return [self._group(r) for r in rows]


def _check_joinable(group: Group, joining: Membership) -> None:
    if group.size != joining.size:
        raise PodRejected(
            f"metadata.annotations[{KUEUE_TOTAL}]",
            f"{joining.size} pods, but group {group.name!r} was started with {group.size} "
            "by the pods that arrived before",
        )
    if group.failed is not None:
        raise PodRejected(
            f"metadata.labels[{KUEUE_GROUP}]", f"group {group.name!r} has failed: {group.failed}"
        )
    if group.job_id is not None:
        raise PodRejected(
            f"metadata.labels[{KUEUE_GROUP}]",
            f"group {group.name!r} is complete and runs as job {group.job_id}",
        )


def arrival_message(group: Group, arrived: int) -> str:
    """What a waiting member says: how many of the group arrived."""
    return f"{arrived} of {group.size} pods of group {group.name} arrived"


def waiting_status(pod: Pod, group: Group, members: Sequence[Member]) -> PodStatus:
    """A member before its group's job exists: waiting for the others, or failed (the group
    did not complete in time)."""
    names = [m.name for m in members]

    def state() -> ContainerState:
        if group.failed is not None:
            return ContainerState(
                terminated=ContainerStateTerminated(
                    exit_code=1, reason=TIMEOUT_REASON, message=group.failed
                )
            )
        return ContainerState(
            waiting=ContainerStateWaiting(
                reason=PENDING_REASON, message=arrival_message(group, len(names))
            )
        )

    def one(name: str, image: str) -> ContainerStatus:
        return ContainerStatus(name=name, state=state(), image=image)

    return PodStatus(
        name=pod.name,
        UID=pod.uid,
        namespace=pod.namespace,
        JID="",
        containers=[one(c.name, c.image) for c in pod.spec.containers],
        initContainers=[one(c.name, c.image) for c in pod.spec.init_containers],
    )


def timeout_reason(group: Group, members: Sequence[Member], timeout: float) -> str:
    """Why a group that did not complete within group_timeout failed, naming who is missing."""
    missing = missing_names([m.name for m in members], group.size)
    return (
        f"group {group.name}: {len(members)} of {group.size} pods arrived within "
        f"{timeout:g} s (group_timeout); missing: {missing}"
    )


def note_ended(statuses: Sequence[ContainerStatus], why: str) -> None:
    """Say, in the ended containers of a member, what ended the group's job."""
    for st in statuses:
        inner = st.state.terminated
        if inner is not None:
            inner.message = f"{inner.message} [{ENDED_REASON}: {why}]".strip()


def decode(data: str) -> Mapping[str, object]:
    """A member's stored create body (Member.data), as the JSON object it was written."""
    value = json.loads(data)
    assert isinstance(value, dict)
    return value
