"""Every pod's state files in one command (jobdir.read_states): what it reads, what it skips
(pods unchanged since), and what a pod's own files cannot do (pass for another pod's, follow a
link)."""

from __future__ import annotations

import base64
import os
import shlex
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from interlink_slurm import jobdir
from interlink_slurm.slurm.transport import CommandResult, LocalTransport, Transport
from interlink_slurm.translate.script import LIBRARY_FILE
from tests.counting import CountingTransport

ILS_SH = Path(jobdir.__file__).parent / "jobscript" / LIBRARY_FILE

STARTED = "2026-12-02T11:00:00.123456789Z"
LONG_AGO = 1_000_000_000  # 2001


def put(pod: Path, name: str, value: str, tmp_dir: str = "") -> None:
    """As the job script's ils_put writes: a temporary file in the pod's directory (or, as the
    job scripts of older versions did, in ``tmp_dir`` beside the file) renamed into place."""
    path = pod / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pod / tmp_dir / f".{name.replace('/', '.')}.tmp"
    tmp.write_text(value + "\n")
    os.replace(tmp, path)


def age(pod: Path) -> None:
    """The pod's directories as if last changed long ago."""
    for d in (pod, pod / "containers"):
        os.utime(d, (LONG_AGO, LONG_AGO))


class Here(LocalTransport):
    """The local transport: read_states reads its files in this process, running nothing."""

    def run(self, argv: Sequence[str], *, timeout: float) -> CommandResult:
        raise AssertionError(f"no command expected, ran {argv[0]}")


@pytest.fixture(params=["shell", "shell, in processes", "here"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Transport:
    """Each case three times: the shell script (as over SSH), reading the files with bash's
    own read (a few pods) or in find and awk (many), and the in-process reader (local)."""
    if request.param == "here":
        return Here()
    if request.param == "shell, in processes":
        monkeypatch.setattr(jobdir, "READ_IN_BASH_MAX", 0)
    return CountingTransport()


def test_all_pods_are_read_in_one_command_and_unchanged_ones_skipped(
    tmp_path: Path, reader: Transport
) -> None:
    a, b = tmp_path / "ns" / "a-1", tmp_path / "ns" / "b-2"
    for pod in (a, b):
        put(pod, "job.runs", "1")
        put(pod, "containers/c.started", STARTED)
    put(b, "containers/c.exit", "3")
    put(b, "containers/c.finished", STARTED)
    t = reader
    pods = {str(a): ["c"], str(b): ["c"]}
    first = jobdir.read_states(t, str(tmp_path), 0, pods)
    if isinstance(t, CountingTransport):
        assert len(t.argvs) == 1
        # bash -c SCRIPT name root since depth mark mark-stamp most: no argument per pod
        assert len(t.argvs[0]) == 10
    assert set(first.changed) == {str(a), str(b)}
    assert first.changed[str(a)].runs == 1
    assert first.changed[str(a)].containers["c"].started is not None
    assert first.changed[str(a)].containers["c"].exit_code is None
    assert first.changed[str(b)].containers["c"].exit_code == 3
    # Nothing changed since: nothing read. Then one pod's container ends.
    age(a)
    age(b)
    assert jobdir.read_states(t, str(tmp_path), first.now - 10, pods).changed == {}
    put(a, "containers/c.exit", "0")
    again = jobdir.read_states(t, str(tmp_path), first.now - 10, pods)
    assert set(again.changed) == {str(a)}
    assert again.changed[str(a)].containers["c"].exit_code == 0
    if isinstance(t, CountingTransport):
        assert len(t.argvs) == 3


def test_a_pods_files_cannot_pass_for_another_pods(tmp_path: Path, reader: Transport) -> None:
    evil, other = tmp_path / "ns" / "evil-1", tmp_path / "ns" / "other-2"
    put(other, "containers/c.started", STARTED)
    put(evil, "containers/c.started", f"{STARTED}\nP ns/other-2\n|==> containers/c.exit <==\n|7")
    (evil / "containers" / "x.exit").symlink_to(other / "containers" / "c.started")
    (evil / "containers" / "bin.ready").write_bytes(b"\xff\x00true\n")
    os.mkfifo(evil / "containers" / "fifo.started")  # never opened for good: no hang
    (evil / "containers" / "big.started").write_text(STARTED + "\n" + "x" * 2000)
    read = jobdir.read_states(
        reader,
        str(tmp_path),
        0,
        {str(evil): ["c", "x", "bin", "fifo", "big"], str(other): ["c"]},
    )
    assert read.changed[str(other)].containers["c"].exit_code is None
    assert read.changed[str(evil)].containers["x"].started is None  # the link not followed
    assert read.changed[str(evil)].containers["c"].exit_code is None
    assert read.changed[str(evil)].containers["fifo"].started is None
    assert read.changed[str(evil)].containers["big"].started is None  # over 1 kB: not read


def test_termination_messages_and_the_last_run_are_read_with_the_states(
    tmp_path: Path, reader: Transport
) -> None:
    """A message is base64 on one line (ils_message): any bytes, up to the kubelet's 4096,
    arrive whole; a file over 6 kB is not read."""
    pod, big = tmp_path / "ns" / "a-1", tmp_path / "ns" / "b-2"
    raw = bytes(range(256)) * 16  # 4096 bytes, newlines, NULs and invalid UTF-8 included
    for p in (pod, big):
        put(p, "containers/c.started", STARTED)
        put(p, "containers/c.restarts", "2")
        put(p, "containers/c.last", f"1 {STARTED} {STARTED}")
        put(p, "containers/c.exit", "3")
        put(p, "containers/c.finished", STARTED)
    put(pod, "containers/c.last-message", base64.b64encode("déjà vu\n".encode()).decode())
    put(pod, "containers/c.message", base64.b64encode(raw).decode())
    put(big, "containers/c.message", base64.b64encode(raw + raw[:512]).decode())
    read = jobdir.read_states(reader, str(tmp_path), 0, {str(pod): ["c"], str(big): ["c"]})
    c = read.changed[str(pod)].containers["c"]
    assert c.message == raw.decode(errors="replace")
    assert c.last is not None
    assert (c.last.exit_code, c.last.message) == (1, "déjà vu\n")
    assert c.last.started == c.last.finished == c.started
    assert read.changed[str(big)].containers["c"].message is None  # over 6 kB: not read
    assert read.changed[str(big)].containers["c"].last is not None


def test_pods_not_asked_about_and_other_directories_are_left_out(
    tmp_path: Path, reader: Transport
) -> None:
    mine, ended = tmp_path / "ns" / "mine-1", tmp_path / "ns" / "ended-2"
    for pod in (mine, ended):
        put(pod, "containers/c.started", STARTED)
    (mine / "volumes" / "data").mkdir(parents=True)
    (tmp_path / "ns" / "linked-3").symlink_to(mine)  # a link is no pod directory
    (tmp_path / "ns" / "file-4").write_text("x")
    pods = {str(mine): ["c"], str(tmp_path / "ns" / "linked-3"): ["c"]}
    read = jobdir.read_states(reader, str(tmp_path), 0, pods)
    assert set(read.changed) == {str(mine)}
    assert read.now > 0


def test_what_the_job_scripts_ils_put_writes_is_found_by_the_pods_directory_alone(
    tmp_path: Path, reader: Transport
) -> None:
    pod = tmp_path / "ns" / "p-1"
    put(pod, "containers/c.started", STARTED)
    age(pod)
    script = f"set -e; . {ILS_SH}; cd {shlex.quote(str(pod))}; ils_put containers/c.exit 4"
    subprocess.run(["bash", "-c", script], check=True)
    assert not list(pod.glob("**/*.tmp"))
    read = jobdir.read_states(reader, str(tmp_path), LONG_AGO + 10, {str(pod): ["c"]})
    assert read.changed[str(pod)].containers["c"].exit_code == 4


def test_a_write_within_containers_only_is_found_by_the_deep_read(
    tmp_path: Path, reader: Transport
) -> None:
    # A pod whose job script was written by an older version, still running after an upgrade.
    pod = tmp_path / "ns" / "old-1"
    put(pod, "containers/c.started", STARTED)
    age(pod)
    put(pod, "containers/c.exit", "5", tmp_dir="containers")
    os.utime(pod, (LONG_AGO, LONG_AGO))  # the rename within containers/ left it alone
    pods = {str(pod): ["c"]}
    since = LONG_AGO + 10
    assert jobdir.read_states(reader, str(tmp_path), since, pods).changed == {}
    deep = jobdir.read_states(reader, str(tmp_path), since, pods, deep_since=since)
    assert deep.changed[str(pod)].containers["c"].exit_code == 5


def test_the_deep_read_does_not_read_again_what_the_reads_of_pod_directories_saw(
    tmp_path: Path, reader: Transport
) -> None:
    """A pod written through its directory (ils_put) since the last deep read, and already read
    (its directory older than the last read): the deep read leaves it (10,000 pods started in
    the last minute are not all read again). One whose containers/ alone changed is read."""
    new, old = tmp_path / "ns" / "new-1", tmp_path / "ns" / "old-2"
    put(new, "containers/c.started", STARTED)
    put(old, "containers/c.started", STARTED)
    age(old)
    put(old, "containers/c.exit", "5", tmp_dir="containers")
    written = (new / "containers").stat().st_mtime
    for d in (new, new / "containers", old):
        os.utime(d, (written - 100, written - 100))  # read by the reads since
    pods = {str(new): ["c"], str(old): ["c"]}
    deep = jobdir.read_states(
        reader, str(tmp_path), written - 50, pods, deep_since=LONG_AGO, whole=True
    )
    assert set(deep.changed) == {str(old)}
    assert deep.changed[str(old)].containers["c"].exit_code == 5


def mark(root: Path, when: float) -> None:
    """The data root's mark (jobdir.STATE_MARK), as last written at ``when``."""
    path = root / jobdir.STATE_MARK
    path.write_text("p-1\n")
    os.utime(path, (when, when))


def test_an_old_mark_means_no_pod_directory_is_looked_at_unless_asked_or_deep(
    tmp_path: Path, reader: Transport
) -> None:
    """A change no job marked (as if the mark were older than it, the write being lost) is not
    seen by a read that trusts the mark; one asked to look at every pod (whole), or the deep
    read, sees it; and with no mark at all, every read looks."""
    pod = tmp_path / "ns" / "p-1"
    put(pod, "containers/c.started", STARTED)
    pods = {str(pod): ["c"]}
    since = LONG_AGO + 10
    mark(tmp_path, since - 5)
    assert jobdir.read_states(reader, str(tmp_path), since, pods).changed == {}
    whole = jobdir.read_states(reader, str(tmp_path), since, pods, whole=True)
    assert whole.changed[str(pod)].containers["c"].started is not None
    deep = jobdir.read_states(reader, str(tmp_path), since, pods, deep_since=since)
    assert deep.changed[str(pod)].containers["c"].started is not None
    mark(tmp_path, since + 5)
    marked = jobdir.read_states(reader, str(tmp_path), since, pods)
    assert marked.changed[str(pod)].containers["c"].started is not None
    (tmp_path / jobdir.STATE_MARK).unlink()
    (tmp_path / jobdir.STATE_MARK).mkdir()  # not a file: no mark to trust
    assert set(jobdir.read_states(reader, str(tmp_path), since, pods).changed) == {str(pod)}


def test_the_job_scripts_ils_put_writes_the_mark_after_the_state_file(
    tmp_path: Path, reader: Transport
) -> None:
    """ils_put, with the job's POD_DIR, writes the data root's mark (the name both sides
    know): a read that trusts the mark finds the file. Without POD_DIR (no job) no mark."""
    pod = tmp_path / "ns" / "p-1"
    put(pod, "containers/c.started", STARTED)
    age(pod)
    mark(tmp_path, LONG_AGO)
    pod_dir = shlex.quote(str(pod))
    script = f"set -e; . {ILS_SH}; POD_DIR={pod_dir}; cd {pod_dir}; ils_put containers/c.exit 4"
    subprocess.run(["bash", "-c", script], check=True)
    assert (tmp_path / jobdir.STATE_MARK).stat().st_mtime > LONG_AGO + 10
    assert (tmp_path / jobdir.STATE_MARK).read_text() == "p-1\n"
    read = jobdir.read_states(reader, str(tmp_path), LONG_AGO + 10, {str(pod): ["c"]})
    assert read.changed[str(pod)].containers["c"].exit_code == 4
    mark(tmp_path, LONG_AGO)
    script = f". {ILS_SH}; cd {pod_dir}; ils_put containers/c.ready true"
    subprocess.run(["bash", "-c", script], check=True)
    assert (tmp_path / jobdir.STATE_MARK).stat().st_mtime == LONG_AGO


def test_ils_put_does_not_fail_for_a_mark_it_cannot_write(tmp_path: Path) -> None:
    pod = tmp_path / "ns" / "p-1"
    (pod / "containers").mkdir(parents=True)
    (tmp_path / jobdir.STATE_MARK).mkdir()  # cannot be written as a file
    pod_dir = shlex.quote(str(pod))
    script = f". {ILS_SH}; POD_DIR={pod_dir}; cd {pod_dir}; ils_put containers/c.exit 0; echo $?"
    run = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert run.stdout == "0\n"
    assert run.stderr == ""
    assert (pod / "containers" / "c.exit").read_text() == "0\n"


@pytest.mark.parametrize("content", [None, b"", b"soon\n", b"nan\n", b"inf\n", b"-inf"])
def test_since_when_the_pods_mark_is_written_once_with_the_plugins_start(
    content: bytes | None, tmp_path: Path
) -> None:
    path = tmp_path / jobdir.MARKED_SINCE
    if content is not None:
        path.write_bytes(content)
    assert jobdir.marked_since(Here(), str(tmp_path), 1234.5) == 1234.5
    assert path.read_text() == "1234.5\n"
    assert jobdir.marked_since(Here(), str(tmp_path), 9999.0) == 1234.5


def stamp(pod: Path, ns: int) -> None:
    """The pod's directories as last written at ``ns`` (nanoseconds since the epoch)."""
    for d in (pod, pod / "containers"):
        os.utime(d, ns=(ns, ns))


def test_a_pod_read_once_is_not_read_again_until_a_write_changes_its_directories(
    tmp_path: Path,
) -> None:
    """In process (local files): a pod whose directories keep the stamps the last read saw is
    left out, however recent its writes are by ``since``; ils_put's next write is read."""
    pod = tmp_path / "ns" / "p-1"
    put(pod, "containers/c.started", STARTED)
    stamp(pod, time.time_ns() - 5_000_000_000 + 123_456_789)  # 5 s ago, a fine-grained clock
    pods = {str(pod): ["c"]}
    first = jobdir.read_states(Here(), str(tmp_path), 0, pods)
    assert set(first.changed) == {str(pod)} and first.stamps is not None
    again = jobdir.read_states(Here(), str(tmp_path), 0, pods, seen=first.stamps)
    assert again.changed == {}
    assert again.stamps == first.stamps  # still known as read, for the read after
    script = f". {ILS_SH}; cd {shlex.quote(str(pod))}; ils_put containers/c.exit 4"
    subprocess.run(["bash", "-c", script], check=True)
    after = jobdir.read_states(Here(), str(tmp_path), 0, pods, seen=again.stamps)
    assert after.changed[str(pod)].containers["c"].exit_code == 4
    # Over SSH the shell reader keeps no stamps: every pod changed since is read.
    shell = jobdir.read_states(CountingTransport(), str(tmp_path), 0, pods, seen=after.stamps)
    assert set(shell.changed) == {str(pod)} and shell.stamps is None


@pytest.mark.parametrize("clock", ["within a second of the read", "whole seconds"])
def test_a_pod_whose_stamps_could_hide_a_write_is_read_again(tmp_path: Path, clock: str) -> None:
    """Stamps from a clock that ticks in whole seconds, or within a second of the read that saw
    them, could be those of a later write too: such a pod is read at every read."""
    pod = tmp_path / "ns" / "p-1"
    put(pod, "containers/c.started", STARTED)
    now = time.time_ns()
    if clock == "whole seconds":
        stamp(pod, now - 5_000_000_000 - now % 1_000_000_000)
    else:
        stamp(pod, now - 300_000_000)
    pods = {str(pod): ["c"]}
    first = jobdir.read_states(Here(), str(tmp_path), 0, pods)
    again = jobdir.read_states(Here(), str(tmp_path), 0, pods, seen=first.stamps)
    assert set(again.changed) == {str(pod)}


def test_stamps_are_kept_only_for_the_pods_asked_about(tmp_path: Path) -> None:
    """A pod directory read before its pod was asked about (submitted, its job id not yet
    stored) is read again once it is: its files were never handed over."""
    pod, other = tmp_path / "ns" / "p-1", tmp_path / "ns" / "q-2"
    for p in (pod, other):
        put(p, "containers/c.started", STARTED)
        stamp(p, time.time_ns() - 5_000_000_000 + 123_456_789)
    first = jobdir.read_states(Here(), str(tmp_path), 0, {str(pod): ["c"]})
    assert first.stamps is not None and set(first.stamps) == {"ns/p-1"}  # relative to the data root
    both = {str(pod): ["c"], str(other): ["c"]}
    again = jobdir.read_states(Here(), str(tmp_path), 0, both, seen=first.stamps)
    assert set(again.changed) == {str(other)}


def test_pods_no_read_looked_for_are_looked_at_whatever_the_mark_says(
    tmp_path: Path, reader: Transport
) -> None:
    """With the mark older than the last read: the pods to look for (``look``: new ones) are
    read; in process each by its own directory, no other; the shell reader looks at all."""
    new, other = tmp_path / "ns" / "new-1", tmp_path / "ns" / "other-2"
    for pod in (new, other):
        put(pod, "containers/c.started", STARTED)
    since = time.time() - 5
    mark(tmp_path, since - 5)
    pods = {str(new): ["c"], str(other): ["c"]}
    assert jobdir.read_states(reader, str(tmp_path), since, pods).changed == {}
    looked = jobdir.read_states(reader, str(tmp_path), since, pods, look=[str(new)])
    expected = {str(new)} if isinstance(reader, Here) else {str(new), str(other)}
    assert set(looked.changed) == expected
    assert looked.changed[str(new)].containers["c"].started is not None


def mark_ns(root: Path, ns: int) -> None:
    """The data root's mark as last written at ``ns`` (nanoseconds since the epoch)."""
    path = root / jobdir.STATE_MARK
    path.write_text("p-1\n")
    os.utime(path, ns=(ns, ns))


def test_a_mark_as_a_read_a_second_later_saw_it_means_no_pod_directory_is_looked_at(
    tmp_path: Path, reader: Transport
) -> None:
    """A mark written 3 s ago is newer than ``since`` (the last read less its margin), but
    keeps the stamp the last read saw, over a second after it was written: no job wrote since,
    and no pod directory is looked at. The next ils_put changes it."""
    pod = tmp_path / "ns" / "p-1"
    put(pod, "containers/c.started", STARTED)
    pods = {str(pod): ["c"]}
    written = time.time_ns() - 3_000_000_000 + 123_456_789
    mark_ns(tmp_path, written)
    first = jobdir.read_states(reader, str(tmp_path), 0, pods)
    assert set(first.changed) == {str(pod)}
    assert first.stamps is not None and first.stamps[jobdir.STATE_MARK][0] == written
    put(pod, "containers/c.exit", "3")  # as if its mark were lost: not looked for
    again = jobdir.read_states(reader, str(tmp_path), 0, pods, seen=first.stamps)
    assert again.changed == {} and again.stamps is None  # the last read's stamps stay
    pod_dir = shlex.quote(str(pod))
    script = f". {ILS_SH}; POD_DIR={pod_dir}; cd {pod_dir}; ils_put containers/c.exit 4"
    subprocess.run(["bash", "-c", script], check=True)
    after = jobdir.read_states(reader, str(tmp_path), 0, pods, seen=first.stamps)
    assert after.changed[str(pod)].containers["c"].exit_code == 4


@pytest.mark.parametrize("clock", ["within a second of the read", "whole seconds"])
def test_a_mark_whose_stamp_could_hide_a_write_is_not_trusted(
    tmp_path: Path, clock: str, reader: Transport
) -> None:
    """A mark stamped in whole seconds, or within a second of the read that saw it, could have
    the same stamp after a later write: every read looks at the pods changed since."""
    pod = tmp_path / "ns" / "p-1"
    put(pod, "containers/c.started", STARTED)
    pods = {str(pod): ["c"]}
    now = time.time_ns()
    if clock == "whole seconds":
        mark_ns(tmp_path, now - 3_000_000_000 - now % 1_000_000_000)
    else:
        mark_ns(tmp_path, now - 300_000_000)
    first = jobdir.read_states(reader, str(tmp_path), 0, pods)
    put(pod, "containers/c.exit", "3")
    again = jobdir.read_states(reader, str(tmp_path), 0, pods, seen=first.stamps)
    assert again.changed[str(pod)].containers["c"].exit_code == 3
