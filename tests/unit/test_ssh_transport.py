"""The SSH transport without a login node: how commands are quoted for the remote shell, and how
every way of not reaching the login node becomes a clear, quick 503 (never a hang). The same
transport against a real sshd is in tests/integration (modes "ssh" and "rest", test_faults)."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interlink_slurm.errors import SchedulerUnavailable
from interlink_slurm.slurm.cli import CliScheduler
from interlink_slurm.slurm.remote_settings import SSHSettings
from interlink_slurm.slurm.ssh import SSHTransport, SSHUnavailable, remote_command, unpack_error
from interlink_slurm.slurm.transport import CommandResult, CommandUnavailable, TreeItem

# --- quoting ------------------------------------------------------------------------------------

NASTY = [
    "plain",
    "two words",
    "it's",
    '"double"',
    "$HOME",
    "`id`",
    "$(id)",
    "a;b|c&d",
    "*",
    "~",
    "new\nline",
    "tab\there",
    "--comment=interlink-slurm:3f6c",
    "",
    "ünïcode ✓",
    "back\\slash",
    "!bang",
]


def test_every_argument_is_quoted_and_variables_go_through_env() -> None:
    assert remote_command(
        ["sbatch", "--comment=a b", "/d/job.sh"], {"SLURM_CONF": "/e/s.conf"}
    ) == ("env SLURM_CONF=/e/s.conf sbatch '--comment=a b' /d/job.sh")
    assert remote_command(["squeue"]) == "squeue"


def test_the_remote_shell_gets_each_argument_byte_for_byte() -> None:
    # What sshd does with the command line: hand it to the user's shell (bash here).
    line = remote_command(["printf", "%s\\0", *NASTY], {"A": "x y"})
    out = subprocess.run(["bash", "-c", line], capture_output=True, check=True).stdout
    assert out.decode().split("\0")[:-1] == NASTY


@given(
    st.lists(
        st.text(st.characters(exclude_characters="\0", codec="utf-8"), max_size=12),
        min_size=1,
        max_size=6,
    )
)
@settings(max_examples=200, deadline=None)
def test_quoting_round_trips_through_a_posix_shell_parser(argv: list[str]) -> None:
    import shlex

    assert shlex.split(remote_command(argv)) == argv


# --- not reaching the login node ---------------------------------------------------------------


@pytest.fixture
def known_hosts(tmp_path: Path) -> Path:
    path = tmp_path / "known_hosts"
    path.write_text("")
    return path


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts TCP connections and never says a word (a hung sshd, a black-holing firewall)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def transport(port: int, known_hosts: Path, **settings: object) -> SSHTransport:
    config = SSHSettings.model_validate(
        {
            "host": "127.0.0.1",
            "port": port,
            "user": "hpc",
            "known_hosts": str(known_hosts),
            "connect_timeout": 0.5,
            **settings,
        }
    )
    return SSHTransport(config, timeout=2)


def test_a_closed_port_is_unavailable_at_once_with_a_clear_message(known_hosts: Path) -> None:
    port = closed_port()
    t = transport(port, known_hosts)
    started = time.monotonic()

    with pytest.raises(SSHUnavailable) as err:
        t.run(["sinfo"], timeout=5)

    assert time.monotonic() - started < 2
    assert str(err.value) == (
        f"cannot reach the login node hpc@127.0.0.1:{port}: connection refused "
        "(is sshd running there, on that port?)"
    )
    # One error, two readings: a command that could not run, and a 503 for the API.
    assert isinstance(err.value, CommandUnavailable)
    assert isinstance(err.value, SchedulerUnavailable)


def test_a_login_node_that_never_answers_times_out(silent_server: int, known_hosts: Path) -> None:
    t = transport(silent_server, known_hosts)
    started = time.monotonic()

    with pytest.raises(SSHUnavailable, match=r"no answer within 0\.5 s \(ssh\.connect_timeout\)"):
        t.read_file("/data/pod/containers/main.log", 100)

    assert time.monotonic() - started < 3


def test_file_operations_while_unreachable_are_unavailable_not_file_errors(
    known_hosts: Path,
) -> None:
    t = transport(closed_port(), known_hosts)

    for op in (
        lambda: t.read_file("/x", 1),
        lambda: t.size("/x"),
        lambda: t.read_range("/x", 0, 1),
        lambda: t.write_file("/x", b"", 0o600),
        lambda: t.make_dirs("/x", 0o700),
        lambda: t.write_tree("/x", 0o711, [TreeItem("p", 0o700)]),
    ):
        with pytest.raises(SSHUnavailable):
            op()
    t.remove_tree("/x")  # best effort, like the local transport: never raises


def test_the_cli_scheduler_over_ssh_says_slurm_is_not_reachable(known_hosts: Path) -> None:
    scheduler = CliScheduler(transport(closed_port(), known_hosts))

    with pytest.raises(
        SchedulerUnavailable, match="Slurm is not reachable: cannot reach the login"
    ):
        asyncio.run(scheduler.ping())


def test_a_missing_known_hosts_file_is_named_with_how_to_fill_it(tmp_path: Path) -> None:
    t = transport(2222, tmp_path / "nope")

    with pytest.raises(SSHUnavailable) as err:
        t.run(["true"], timeout=5)

    message = str(err.value)
    assert f"known_hosts file {tmp_path / 'nope'} does not exist" in message
    assert "ssh-keyscan -p 2222 127.0.0.1" in message
    assert "insecure_skip_host_key_check" in message


def test_an_unreadable_key_file_is_named(known_hosts: Path, tmp_path: Path) -> None:
    t = transport(closed_port(), known_hosts, key_file=str(tmp_path / "id_missing"))

    with pytest.raises(SSHUnavailable, match=r"cannot read ssh\.key_file .*id_missing"):
        t.run(["true"], timeout=5)


def test_after_a_failed_connection_calls_fail_fast_with_the_same_reason(known_hosts: Path) -> None:
    t = transport(closed_port(), known_hosts)
    with pytest.raises(SSHUnavailable):
        t.run(["true"], timeout=5)
    with pytest.raises(SSHUnavailable, match="connection refused"):
        t.run(["true"], timeout=5)  # within the back-off: the same reason, without a new try


class _DroppedConnection:
    """A connection another thread has just dropped (a call on it timed out): its socket is
    closed, so opening a channel on it fails with EBADF."""

    def is_active(self) -> bool:
        return False

    def open_session(self, timeout: float | None = None) -> object:
        raise OSError(9, "Bad file descriptor")


class _Channel:
    def settimeout(self, seconds: float) -> None:
        self.timeout = seconds


class _LiveConnection:
    def is_active(self) -> bool:
        return True

    def open_session(self, timeout: float | None = None) -> _Channel:
        return _Channel()


class _Client:
    def __init__(self, connection: object) -> None:
        self.connection = connection

    def get_transport(self) -> object:
        return self.connection


def test_a_channel_is_opened_on_the_next_connection_when_another_thread_dropped_this_one(
    known_hosts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seen with 10,000 creates over SSH: one call timed out and dropped the connection while
    # other threads were opening channels on it. Nothing ran on it, so they ask the next one.
    t = transport(closed_port(), known_hosts)
    dropped, live = _DroppedConnection(), _LiveConnection()
    handed = iter([dropped, live])

    def connection() -> object:
        conn = next(handed)
        t._client = _Client(conn)  # type: ignore[assignment]
        if conn is dropped:
            t._client = None  # the other thread drops it before this one opens its channel
        return conn

    monkeypatch.setattr(t, "_connection", connection)
    channel = t._open_channel(time.monotonic() + 5)
    assert isinstance(channel, _Channel)


def test_a_current_connection_that_died_by_itself_is_replaced_once(
    known_hosts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seen once in 10,000 creates over SSH: "cannot open a channel: bad file descriptor" on the
    # connection every thread shared, its socket closed under it. Nothing ran on it.
    t = transport(closed_port(), known_hosts)
    dead, live = _DroppedConnection(), _LiveConnection()
    t._client = _Client(dead)  # type: ignore[assignment]
    handed = iter([dead, live])

    def connection() -> object:
        conn = next(handed)
        t._client = _Client(conn)  # type: ignore[assignment]
        return conn

    monkeypatch.setattr(t, "_connection", connection)
    assert isinstance(t._open_channel(time.monotonic() + 5), _Channel)


def test_a_login_node_whose_every_connection_dies_fails_the_call_after_one_more(
    known_hosts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = transport(closed_port(), known_hosts)
    opened: list[object] = []

    def connection() -> object:
        conn = _DroppedConnection()
        opened.append(conn)
        t._client = _Client(conn)  # type: ignore[assignment]
        return conn

    monkeypatch.setattr(t, "_connection", connection)
    with pytest.raises(SSHUnavailable, match="cannot open a channel: bad file descriptor"):
        t._open_channel(time.monotonic() + 5)
    assert len(opened) == 2


class _SubsystemChannel:
    """A channel whose SFTP start fails when its connection is the dropped one."""

    closed = False

    def __init__(self, connection: object, fails: bool) -> None:
        self.connection, self.fails = connection, fails

    def get_transport(self) -> object:
        return self.connection

    def invoke_subsystem(self, name: str) -> None:
        if self.fails:
            raise EOFError()

    def close(self) -> None:
        self.closed = True


def test_an_sftp_session_is_started_on_the_next_connection_when_this_one_was_dropped(
    known_hosts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = transport(closed_port(), known_hosts)
    dropped, live = _DroppedConnection(), _LiveConnection()
    channels = iter([_SubsystemChannel(dropped, True), _SubsystemChannel(live, False)])
    t._client = _Client(live)  # type: ignore[assignment]  # what the other thread opened
    monkeypatch.setattr(t, "_connection", lambda: live)
    monkeypatch.setattr(t, "_open_channel", lambda deadline: next(channels))
    monkeypatch.setattr("interlink_slurm.slurm.ssh.paramiko.SFTPClient", lambda channel: channel)
    sftp = t._take_sftp(time.monotonic() + 5)
    assert sftp.get_transport() is live  # type: ignore[attr-defined]


def test_an_sftp_session_the_login_node_closes_at_once_is_asked_for_again(
    known_hosts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seen creating 1,000 pods over SSH: "cannot start SFTP: EOF during negotiation" on a
    # connection that stayed up. Nothing ran on that session: a second one is asked for.
    t = transport(closed_port(), known_hosts)
    live = _LiveConnection()
    channels = iter([_SubsystemChannel(live, True), _SubsystemChannel(live, False)])
    t._client = _Client(live)  # type: ignore[assignment]
    monkeypatch.setattr(t, "_connection", lambda: live)
    monkeypatch.setattr(t, "_open_channel", lambda deadline: next(channels))
    monkeypatch.setattr("interlink_slurm.slurm.ssh.paramiko.SFTPClient", lambda channel: channel)
    sftp = t._take_sftp(time.monotonic() + 5)
    assert sftp.get_transport() is live  # type: ignore[attr-defined]
    with pytest.raises(SSHUnavailable, match="cannot start SFTP"):
        # One that keeps closing it fails once its deadline is near.
        closing = iter([_SubsystemChannel(live, True) for _ in range(100)])
        monkeypatch.setattr(t, "_open_channel", lambda deadline: next(closing))
        t._take_sftp(time.monotonic() + 0.5)


class _SessionChannel:
    """The channel of an SFTP session on ``connection``."""

    closed = False

    def __init__(self, connection: object) -> None:
        self.connection = connection

    def get_transport(self) -> object:
        return self.connection

    def settimeout(self, seconds: float) -> None:
        pass


class _Session:
    """An SFTP session whose writes fail as paramiko's do when the connection is dropped
    under them (``dropped``), else are kept."""

    def __init__(self, connection: object, dropped: bool, written: list[str]) -> None:
        self.channel = _SessionChannel(connection)
        self.dropped, self.written = dropped, written

    def get_channel(self) -> _SessionChannel:
        return self.channel

    def open(self, path: str, mode: str) -> object:
        if self.dropped:
            raise paramiko.SSHException("Server connection dropped: ")
        self.written.append(path)
        return _File()

    def posix_rename(self, old: str, new: str) -> None:
        self.written.append(new)

    def close(self) -> None:
        pass


class _File:
    def __enter__(self) -> _File:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def set_pipelined(self, on: bool) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass

    def chmod(self, mode: int) -> None:
        pass


@pytest.mark.parametrize("how", ["dropped by another thread", "dead by itself"])
def test_a_file_write_whose_connection_is_lost_under_it_is_written_on_the_next(
    how: str, known_hosts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seen creating 10,000 pods over SSH: "writing …/job.id: Server connection dropped". A
    # write is a temporary file renamed into place: written again on the next connection.
    t = transport(closed_port(), known_hosts)
    lost, live = _DroppedConnection(), _LiveConnection()
    written: list[str] = []
    sessions = iter([_Session(lost, True, written), _Session(live, False, written)])
    t._client = None if how == "dropped by another thread" else _Client(lost)  # type: ignore[assignment]
    monkeypatch.setattr(t, "_take_sftp", lambda deadline: next(sessions))
    monkeypatch.setattr(t, "_give_back", lambda sftp, reusable: None)
    t.write_file("/data/p/job.id", b"42\n", 0o600)
    assert written == ["/data/p/job.id.tmp", "/data/p/job.id"]


def test_a_file_write_lost_twice_fails_the_call(
    known_hosts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = transport(closed_port(), known_hosts)
    written: list[str] = []
    sessions = iter([_Session(_DroppedConnection(), True, written) for _ in range(3)])
    t._client = None
    monkeypatch.setattr(t, "_take_sftp", lambda deadline: next(sessions))
    monkeypatch.setattr(t, "_give_back", lambda sftp, reusable: None)
    with pytest.raises(SSHUnavailable, match="Server connection dropped"):
        t.write_file("/data/p/job.id", b"42\n", 0o600)
    assert written == []


@pytest.mark.parametrize(
    ("said", "code"),
    [
        ("tar: pod/x: Cannot open: File name too long", errno.ENAMETOOLONG),
        ("mkdir: cannot create directory '/d': Permission denied", errno.EACCES),
        ("tar: pod/f: Wrote only 512 of 10240 bytes: No space left on device", errno.ENOSPC),
        ("sh: 1: exec: tar: not found", errno.ENOENT),  # a login node without tar
        ("tar: Unexpected EOF in archive", None),
    ],
)
def test_what_tar_says_on_the_login_node_becomes_the_errno_of_a_local_write(
    said: str, code: int | None
) -> None:
    # jobdir tells the pod's doing (a name too long: 422) from the site's by the errno; the
    # doctor and the create's answer show the reason, then what the login node said.
    err = unpack_error(CommandResult(("sh",), 2, "", f"{said}\nmore\n"))
    if code is None:
        assert err.errno == errno.EIO and err.strerror == f"the login node said: {said}"
    else:
        assert err.errno == code
        assert err.strerror == f"{os.strerror(code)} (the login node said: {said})"
