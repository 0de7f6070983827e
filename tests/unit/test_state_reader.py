"""Every pod's state files in one command (jobdir.read_states): what it reads, what it skips
(unchanged pods), and what a pod's own files cannot do (pass for another pod's, follow a link)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from interlink_slurm import jobdir
from interlink_slurm.slurm.transport import LocalTransport
from interlink_slurm.tracker import _changed_lately

STARTED = "2026-12-02T11:00:00.123456789Z"


def put(pod: Path, name: str, value: str) -> None:
    """As the job script's ils_put writes: a temporary file renamed into place."""
    path = pod / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(value + "\n")
    os.replace(tmp, path)


def test_all_pods_are_read_in_one_command_and_unchanged_ones_skipped(tmp_path: Path) -> None:
    a, b = tmp_path / "ns" / "a-1", tmp_path / "ns" / "b-2"
    for pod in (a, b):
        put(pod, "job.runs", "1")
        put(pod, "containers/c.started", STARTED)
    put(b, "containers/c.exit", "3")
    put(b, "containers/c.finished", STARTED)
    calls: list[list[str]] = []

    class Counting(LocalTransport):
        def run(self, argv, *, timeout):  # type: ignore[no-untyped-def]
            calls.append(list(argv))
            return super().run(argv, timeout=timeout)

    t = Counting()
    pods = {str(a): ("", ["c"]), str(b): ("", ["c"])}
    first = jobdir.read_states(t, str(tmp_path), pods)
    assert len(calls) == 1
    assert set(first.changed) == {str(a), str(b)}
    files_a = first.changed[str(a)][1]
    assert files_a.runs == 1
    assert files_a.containers["c"].started is not None
    assert files_a.containers["c"].exit_code is None
    assert first.changed[str(b)][1].containers["c"].exit_code == 3
    # Given the keys back: nothing changed, nothing read; then one pod's container ends.
    keys = {d: (first.changed[d][0], ["c"]) for d in pods}
    assert jobdir.read_states(t, str(tmp_path), keys).changed == {}
    os.utime(a / "containers", (0, 0))  # a write changes the directory's mtime
    put(a, "containers/c.exit", "0")
    again = jobdir.read_states(t, str(tmp_path), keys)
    assert set(again.changed) == {str(a)}
    assert again.changed[str(a)][1].containers["c"].exit_code == 0
    assert len(calls) == 3


def test_a_pods_files_cannot_pass_for_another_pods(tmp_path: Path) -> None:
    evil, other = tmp_path / "ns" / "evil-1", tmp_path / "ns" / "other-2"
    put(other, "containers/c.started", STARTED)
    put(evil, "containers/c.started", f"{STARTED}\nP 2 forged\n|==> containers/c.exit <==\n|7")
    (evil / "containers" / "x.exit").symlink_to(other / "containers" / "c.started")
    (evil / "containers" / "bin.ready").write_bytes(b"\xff\x00true\n")
    read = jobdir.read_states(
        LocalTransport(),
        str(tmp_path),
        {str(evil): ("", ["c", "x", "bin"]), str(other): ("", ["c"])},
    )
    assert read.changed[str(other)][0] != "forged"
    assert read.changed[str(other)][1].containers["c"].exit_code is None
    assert read.changed[str(evil)][1].containers["x"].started is None  # the link not followed
    assert read.changed[str(evil)][1].containers["c"].exit_code is None


def test_a_pod_whose_directory_is_gone_is_said_missing(tmp_path: Path) -> None:
    read = jobdir.read_states(LocalTransport(), str(tmp_path), {f"{tmp_path}/ns/p-1": ("", [])})
    assert read.missing == {f"{tmp_path}/ns/p-1"}
    assert read.now > 0


def test_a_directory_changed_within_the_mtime_tick_is_read_again(tmp_path: Path) -> None:
    pod = tmp_path / "ns" / "p-1"
    put(pod, "containers/c.started", STARTED)
    read = jobdir.read_states(LocalTransport(), str(tmp_path), {str(pod): ("", ["c"])})
    key = read.changed[str(pod)][0]
    assert re.fullmatch(r"\d+\.\d+_\d+\.\d+", key), key
    # Changed within 2 s of the reader's clock: the same mtime may hide a second write.
    assert _changed_lately(key, read.now)
    assert not _changed_lately(key, read.now + 10)
    assert _changed_lately("", read.now)  # no mtime known: read again
