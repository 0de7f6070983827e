"""The Transport over SSH to a login node: commands with exec, files with SFTP (paramiko), a
new pod's directory as one tar archive unpacked by one exec.

One connection, opened on first use and reused by every request; it is opened again when it
breaks. At most ``max_channels`` channels are open on it at once (sshd refuses more than its
MaxSessions, 10 by default); SFTP sessions are kept open between calls and count as channels.

Nothing here can hang: connecting has connect_timeout, every channel operation has a deadline
(socket timeouts, and a watchdog that closes the channel for the calls paramiko would wait on
forever). Every failure to reach the login node becomes ``SSHUnavailable``, in one place
(``_unavailable``): a ``CommandUnavailable`` for the CLI scheduler and a ``SchedulerUnavailable``
(HTTP 503) for everything else. File errors the login node reports (no such file, permission
denied) stay ``OSError``s, as with the local transport.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import posixpath
import shlex
import socket
import tarfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import paramiko

from interlink_slurm.errors import SchedulerUnavailable
from interlink_slurm.slurm.remote_settings import SSHSettings
from interlink_slurm.slurm.transport import CommandResult, CommandUnavailable, TreeItem

log = logging.getLogger(__name__)

T = TypeVar("T")

# After a failed connection attempt, calls fail at once with the same reason for this long
# instead of each waiting for its own connect_timeout.
RECONNECT_BACKOFF_SECONDS = 1.0
# Exit status of a shell that could not find the command.
COMMAND_NOT_FOUND = 127
NOT_FOUND = ("not found", "no such file or directory")  # from the shell, from env(1)
# Directories created on the way to a pod directory (data_root, namespaces).
PARENT_DIR_MODE = 0o755
# After a call timed out: how long the connection has to answer a keepalive to be kept.
LIVENESS_SECONDS = 2.0
# Before asking again for an SFTP session the login node closed at once.
SFTP_RETRY_PAUSE_SECONDS = 0.2


class SSHUnavailable(CommandUnavailable, SchedulerUnavailable):
    """The login node cannot be reached, or did not answer in time."""


def remote_command(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """The command line sshd hands to the login shell: every word quoted, variables via env(1).

    >>> remote_command(["sbatch", "--comment=a b", "/d/job.sh"], {"SLURM_CONF": "/etc/s.conf"})
    "env SLURM_CONF=/etc/s.conf sbatch '--comment=a b' /d/job.sh"
    """
    if not argv:
        raise ValueError("empty command")
    words = [*argv]
    if env:
        words = ["env", *(f"{k}={v}" for k, v in sorted(env.items())), *words]
    return " ".join(shlex.quote(w) for w in words)


class _AcceptAnyHostKey(paramiko.MissingHostKeyPolicy):
    """insecure_skip_host_key_check: take the key, say so in the log."""

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        """paramiko's hook for an unknown host key: accept it, with a warning."""
        log.warning(
            "accepting the host key of %s without checking it (%s %s): "
            "ssh.insecure_skip_host_key_check is on",
            hostname,
            key.get_name(),
            key.fingerprint,
        )


class SSHTransport:
    """Implements the Transport protocol (see transport.py) on a login node."""

    def __init__(
        self,
        settings: SSHSettings,
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._s = settings
        self._env = dict(env or {})
        self._timeout = timeout
        self._conn_lock = threading.Lock()
        self._client: paramiko.SSHClient | None = None
        self._retry_at = 0.0
        self._last_error = ""
        self._slots = threading.BoundedSemaphore(settings.max_channels)
        self._pool_lock = threading.Lock()
        self._idle_sftp: list[paramiko.SFTPClient] = []
        self._probe_lock = threading.Lock()

    # --- connection -----------------------------------------------------------------------------

    def _unavailable(self, what: str, err: BaseException | str) -> SSHUnavailable:
        reason = err if isinstance(err, str) else _describe(err)
        return SSHUnavailable(f"cannot reach the login node {self._s.target}: {what}{reason}")

    def _connection(self) -> paramiko.Transport:
        """The live connection, opened (again) when needed."""
        with self._conn_lock:
            current = self._client.get_transport() if self._client is not None else None
            if current is not None and current.is_active():
                return current
            if time.monotonic() < self._retry_at:
                raise SSHUnavailable(self._last_error)
            self._drop_locked()
            try:
                self._client = self._connect()
            except SSHUnavailable as err:
                self._retry_at = time.monotonic() + RECONNECT_BACKOFF_SECONDS
                self._last_error = str(err)
                raise
            transport = self._client.get_transport()
            assert transport is not None
            return transport

    def _connect(self) -> paramiko.SSHClient:
        """A new connection to the login node, its host key checked, logged in."""
        s = self._s
        client = paramiko.SSHClient()
        self._trust_host_keys(client)
        pkey = self._private_key()
        started = time.monotonic()
        try:
            client.connect(
                s.host,
                port=s.port,
                username=s.user,
                pkey=pkey,
                allow_agent=pkey is None,
                look_for_keys=pkey is None,
                timeout=s.connect_timeout,
                banner_timeout=s.connect_timeout,
                auth_timeout=s.connect_timeout,
                channel_timeout=self._timeout,
            )
        except (paramiko.SSHException, OSError, EOFError) as err:
            client.close()
            raise self._login_failed(err, time.monotonic() - started) from err
        transport = client.get_transport()
        if transport is None or not transport.is_active():
            client.close()
            raise self._unavailable("", "the connection closed during login")
        if isinstance(transport.sock, socket.socket):
            # Opening a channel is a few small packets each way: with Nagle's algorithm on,
            # each exec waited for the other side's delayed ACK (40 ms per command on loopback,
            # measured; 4.8 ms without).
            with contextlib.suppress(OSError):  # not a TCP socket
                transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if s.keepalive_seconds:
            transport.set_keepalive(max(1, round(s.keepalive_seconds)))
        log.info("connected to %s in %.2f s", s.target, time.monotonic() - started)
        return client

    def _trust_host_keys(self, client: paramiko.SSHClient) -> None:
        """Only the login node's key in known_hosts, unless told to skip the check."""
        s = self._s
        known_hosts = s.known_hosts.expanduser()
        if s.insecure_skip_host_key_check:
            client.set_missing_host_key_policy(_AcceptAnyHostKey())
            return
        if not known_hosts.is_file():
            raise self._unavailable(
                "",
                f"the known_hosts file {known_hosts} does not exist: add the login node's "
                f"host key to it (ssh-keyscan -p {s.port} {s.host} >> {known_hosts}, then "
                "check the fingerprint), set ssh.known_hosts, or, insecurely, "
                "ssh.insecure_skip_host_key_check: true",
            )
        try:
            client.load_host_keys(str(known_hosts))
        except (OSError, paramiko.SSHException) as err:
            raise self._unavailable(f"cannot read known_hosts {known_hosts}: ", err) from err
        client.set_missing_host_key_policy(paramiko.RejectPolicy())

    def _login_failed(self, err: BaseException, elapsed: float) -> SSHUnavailable:
        """Why a connection attempt failed, with what to check, after ``elapsed`` seconds."""
        s = self._s
        known_hosts = s.known_hosts.expanduser()
        timed_out = f"no answer within {s.connect_timeout:g} s (ssh.connect_timeout)"
        if isinstance(err, paramiko.BadHostKeyException):
            return self._unavailable(
                "",
                f"its host key ({err.key.get_name()} {err.key.fingerprint}) does not match the "
                f"one in known_hosts {known_hosts} ({err.expected_key.fingerprint}); if the "
                "login node's key really changed, replace its line in that file, otherwise the "
                "connection may be intercepted",
            )
        if isinstance(err, paramiko.AuthenticationException):
            key = f"the key {s.key_file}" if s.key_file else "the SSH agent's keys and ~/.ssh/id_*"
            return self._unavailable(
                "",
                f"login as {s.user} refused ({err}): check ssh.user and that {key} is in "
                f"~{s.user}/.ssh/authorized_keys on {s.host}",
            )
        if isinstance(err, paramiko.SSHException):
            text = str(err)
            if elapsed >= s.connect_timeout or "banner" in text.lower():
                # paramiko ends a negotiation that timed out with "No existing session".
                return self._unavailable("", timed_out)
            if "not found in known_hosts" in text:
                return self._unavailable(
                    "",
                    f"its host key is not in known_hosts {known_hosts}: add it (ssh-keyscan -p "
                    f"{s.port} {s.host} >> {known_hosts}, then check the fingerprint)",
                )
            return self._unavailable("SSH failed: ", err)
        if isinstance(err, TimeoutError):
            return self._unavailable("", timed_out)
        return self._unavailable("", err)

    def _private_key(self) -> paramiko.PKey | None:
        s = self._s
        if s.key_file is None:
            return None
        path = s.key_file.expanduser()
        try:
            pkey = paramiko.PKey.from_path(path)
        except paramiko.PasswordRequiredException as err:
            raise self._unavailable(
                "", f"ssh.key_file {path} is protected by a passphrase: use the SSH agent instead"
            ) from err
        except (OSError, paramiko.SSHException, ValueError) as err:
            raise self._unavailable(f"cannot read ssh.key_file {path}: ", err) from err
        if s.certificate_file is not None:
            cert = s.certificate_file.expanduser()
            try:
                pkey.load_certificate(str(cert))
            except (OSError, ValueError, paramiko.SSHException) as err:
                raise self._unavailable(f"cannot use ssh.certificate_file {cert}: ", err) from err
        return pkey

    def _drop_locked(self) -> None:
        """Forget the current connection and its idle SFTP sessions (conn lock held)."""
        with self._pool_lock:
            idle, self._idle_sftp = self._idle_sftp, []
        for sftp in idle:
            _quiet_close(sftp)
            self._slots.release()
        if self._client is not None:
            _quiet_close(self._client)
            self._client = None

    def close(self) -> None:
        """Close the connection (at shutdown)."""
        with self._conn_lock:
            self._drop_locked()

    def _timed_out(
        self, what: str, seconds: float, connection: paramiko.Transport | None
    ) -> SSHUnavailable:
        """A call got no answer in time. The connection may be dead without knowing it yet (a
        network partition, a frozen login node): then the next call opens a new one. One that
        still answers is kept: every thread shares it, and dropping it would fail their calls
        in flight for one slow command."""
        if connection is not None and not self._answers(connection):
            with self._conn_lock:
                current = self._client.get_transport() if self._client is not None else None
                if current is connection:
                    self._drop_locked()
        return self._unavailable("", f"{what}: no answer within {seconds:.3g} s")

    def _answers(self, connection: paramiko.Transport) -> bool:
        """Whether the login node answers a keepalive on ``connection`` within
        LIVENESS_SECONDS. The reply (a refusal of the request is a reply too) comes from the
        session's own sshd process, so a frozen node or a cut link fails it."""
        if not connection.is_active():
            return False
        answered = threading.Event()

        def probe() -> None:
            # paramiko's global_request waits with no deadline of its own: a thread waits for
            # it, and ends once the connection is dropped (it then returns).
            try:
                connection.global_request("keepalive@openssh.com", wait=True)
                if connection.is_active():
                    answered.set()
            except Exception:  # any failure means no answer
                log.debug("keepalive on the SSH connection failed", exc_info=True)

        with self._probe_lock:  # one probe at a time: global replies are not matched to asks
            threading.Thread(target=probe, name="ssh-liveness", daemon=True).start()
            return answered.wait(LIVENESS_SECONDS)

    # --- channels -------------------------------------------------------------------------------

    def _take_slot(self, deadline: float) -> None:
        """One of the max_channels slots; an idle SFTP session gives its slot up if needed."""
        while True:
            if self._slots.acquire(blocking=False):
                return
            with self._pool_lock:
                victim = self._idle_sftp.pop(0) if self._idle_sftp else None
            if victim is not None:
                _quiet_close(victim)
                self._slots.release()
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._unavailable(
                    "",
                    f"all {self._s.max_channels} SSH channels stayed busy for "
                    f"{self._timeout:g} s (ssh.max_channels)",
                )
            # Slots come back either released or as idle SFTP sessions: look again soon.
            if self._slots.acquire(timeout=min(remaining, 0.05)):
                return

    @contextmanager
    def _watchdog(self, channel: paramiko.Channel, deadline: float) -> Iterator[None]:
        """Close the channel at the deadline: whoever waits on it wakes up with an error."""
        timer = threading.Timer(max(0.0, deadline - time.monotonic()), channel.close)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def _open_channel(self, deadline: float) -> paramiko.Channel:
        connection = self._connection()
        pause = 0.02
        renewed = False

        def moved_on() -> bool:
            """Onto the next connection when this one is gone: dropped by another thread
            (nothing ran on it), or dead by itself (once per call)."""
            nonlocal connection, renewed
            if self._replaced(connection, deadline):
                connection = self._connection()
                return True
            if not renewed and self._renewed(connection, deadline):
                connection, renewed = self._connection(), True
                return True
            return False

        while True:
            wait = max(0.1, deadline - time.monotonic())
            try:
                channel = connection.open_session(timeout=wait)
            except paramiko.SSHException as err:
                # sshd refused the channel: it still counts one we have just closed against
                # MaxSessions for a moment. Ask again, within the deadline. (With several
                # threads, paramiko may hand the refusal's ChannelException to another one and
                # this one gets "Unable to open channel".)
                refused = isinstance(err, paramiko.ChannelException) or (
                    "unable to open channel" in str(err).lower()
                )
                if not refused or not connection.is_active():
                    if "timeout" in str(err).lower():
                        raise self._timed_out("opening a channel", wait, connection) from err
                    if moved_on():
                        continue
                    raise self._unavailable("cannot open a channel: ", err) from err
                if time.monotonic() + pause >= deadline:
                    raise self._unavailable(
                        "the login node refuses more channels (its sshd MaxSessions is below "
                        f"ssh.max_channels = {self._s.max_channels}?): ",
                        err,
                    ) from err
                time.sleep(pause)
                pause = min(pause * 2, 0.5)
                continue
            except (OSError, EOFError) as err:
                if isinstance(err, TimeoutError):
                    raise self._timed_out("opening a channel", wait, connection) from err
                if moved_on():
                    continue
                raise self._unavailable("cannot open a channel: ", err) from err
            channel.settimeout(max(0.1, deadline - time.monotonic()))
            return channel

    def _replaced(self, connection: paramiko.Transport, deadline: float) -> bool:
        """Whether another thread dropped ``connection`` (a call on it timed out) and there is
        time left to open the channel on the connection that follows: nothing ran on the old
        one, so asking again is safe."""
        if time.monotonic() >= deadline:
            return False
        with self._conn_lock:
            current = self._client.get_transport() if self._client is not None else None
        return current is not connection

    def _renewed(self, connection: paramiko.Transport, deadline: float) -> bool:
        """Whether ``connection``, still the current one, died by itself (its socket closed
        under it: seen once in 10,000 creates) and was dropped, so that the next call opens
        a new one, with time left to do so: nothing ran on it. Asked once per call: a login
        node that drops every connection fails the call, as _connection's back-off says."""
        if time.monotonic() >= deadline or connection.is_active():
            return False
        with self._conn_lock:
            current = self._client.get_transport() if self._client is not None else None
            if current is connection:
                self._drop_locked()
        return True

    # --- commands -------------------------------------------------------------------------------

    def run(self, argv: Sequence[str], *, timeout: float) -> CommandResult:
        """Run ``argv`` on the login node, every word quoted for its shell, within ``timeout``."""
        return self._exec(argv, timeout, None)

    def _exec(
        self, argv: Sequence[str], timeout: float, stdin: bytes | None, found: bool = True
    ) -> CommandResult:
        """``run``, with ``stdin`` (when given) as the command's whole input. ``found``: a
        shell's "not found" (127) raises CommandUnavailable naming ``argv[0]``; without it, the
        caller reads the status (argv[0] is a shell that runs another command)."""
        command = remote_command(argv, self._env)
        deadline = time.monotonic() + timeout
        self._take_slot(deadline)
        try:
            channel = self._open_channel(deadline)
            try:
                with self._watchdog(channel, deadline):
                    channel.exec_command(command)
                    if stdin is not None:
                        channel.settimeout(max(deadline - time.monotonic(), 0.001))
                        # A command that ended before reading all its input (tar refused the
                        # first entry) closes the channel under sendall: its exit status and
                        # stderr, collected next, say why; a lost connection shows there too.
                        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                            channel.sendall(stdin)
                            channel.shutdown_write()
                    out, err, status = _collect(channel, deadline)
            except (paramiko.SSHException, OSError, EOFError) as error:
                if time.monotonic() >= deadline:
                    raise self._timed_out(argv[0], timeout, channel.get_transport()) from error
                raise self._unavailable(f"running {argv[0]}: ", error) from error
            finally:
                channel.close()
        finally:
            self._slots.release()
        if status < 0:
            if time.monotonic() >= deadline:
                raise self._timed_out(argv[0], timeout, channel.get_transport())
            raise self._unavailable("", f"the connection closed before {argv[0]} ended")
        stdout = out.decode(errors="replace")
        stderr = err.decode(errors="replace")
        if found and status == COMMAND_NOT_FOUND and any(m in stderr.lower() for m in NOT_FOUND):
            raise CommandUnavailable(f"{argv[0]} is not installed or not on PATH on {self._s.host}")
        return CommandResult(tuple(argv), status, stdout, stderr)

    # --- files ----------------------------------------------------------------------------------

    def _take_sftp(self, deadline: float) -> paramiko.SFTPClient:
        connection = self._connection()
        while True:
            with self._pool_lock:
                sftp = self._idle_sftp.pop() if self._idle_sftp else None
            if sftp is None:
                break
            sftp_channel = sftp.get_channel()
            if (
                sftp_channel is not None
                and not sftp_channel.closed
                and sftp_channel.get_transport() is connection
            ):
                return sftp
            _quiet_close(sftp)  # from a connection that has since broken
            self._slots.release()
        self._take_slot(deadline)
        channel: paramiko.Channel | None = None
        try:
            channel = self._open_channel(deadline)
            with self._watchdog(channel, deadline):
                channel.invoke_subsystem("sftp")
                return paramiko.SFTPClient(channel)
        except BaseException as err:
            if channel is not None:
                channel.close()
            self._slots.release()
            if isinstance(err, (paramiko.SSHException, OSError, EOFError)) and not isinstance(
                err, SSHUnavailable
            ):
                used = channel.get_transport() if channel is not None else None
                if used is not None and self._replaced(used, deadline):
                    # Dropped under this session by another thread: start one on the next.
                    return self._take_sftp(deadline)
                if (
                    isinstance(err, EOFError)
                    and used is not None
                    and used.is_active()
                    and time.monotonic() + SFTP_RETRY_PAUSE_SECONDS < deadline
                ):
                    # The login node closed the new session before SFTP began (seen under
                    # load: its sftp-server could not start). Nothing ran: ask again, within
                    # the deadline.
                    time.sleep(SFTP_RETRY_PAUSE_SECONDS)
                    return self._take_sftp(deadline)
                if time.monotonic() >= deadline:
                    raise self._timed_out("starting SFTP", self._timeout, used) from err
                raise self._unavailable("cannot start SFTP: ", err) from err
            raise

    def _give_back(self, sftp: paramiko.SFTPClient, reusable: bool) -> None:
        channel = sftp.get_channel()
        if reusable and channel is not None and not channel.closed:
            with self._pool_lock:
                self._idle_sftp.append(sftp)
            return
        _quiet_close(sftp)
        self._slots.release()

    def _sftp(self, what: str, path: str, op: Callable[[paramiko.SFTPClient], T]) -> T:
        """``op`` on an SFTP session, within the timeout. Every op here is idempotent (a write
        is a temporary file renamed into place), so one whose connection was dropped under it
        (another thread's call timed out on it) or died by itself is run again, once, on the
        next connection."""
        deadline = time.monotonic() + self._timeout
        again = True
        while True:
            sftp = self._take_sftp(deadline)
            channel = sftp.get_channel()
            assert channel is not None
            connection = channel.get_transport()
            reusable = False
            try:
                # Every SFTP request waits on the channel's socket: its timeout bounds each wait.
                channel.settimeout(self._timeout)
                result = op(sftp)
                reusable = True
                return result
            except TimeoutError as err:
                raise self._timed_out(f"{what} {path}", self._timeout, connection) from err
            except (OSError, paramiko.SSHException, EOFError) as err:
                if isinstance(err, OSError) and not channel.closed and connection.is_active():
                    reusable = True
                    raise  # the login node's answer about the file itself (missing, permission)
                if again and self._lost(connection, deadline):
                    again = False
                    continue
                if time.monotonic() >= deadline:
                    raise self._timed_out(f"{what} {path}", self._timeout, connection) from err
                raise self._unavailable(f"{what} {path}: ", err) from err
            finally:
                self._give_back(sftp, reusable)

    def _lost(self, connection: paramiko.Transport, deadline: float) -> bool:
        """Whether ``connection`` is gone (dropped by another thread, or dead by itself, then
        dropped) with time left to use the next one."""
        return self._replaced(connection, deadline) or self._renewed(connection, deadline)

    def make_dirs(self, path: str, mode: int) -> None:
        """Create ``path`` and its parents with ``mode`` (SFTP)."""

        def op(sftp: paramiko.SFTPClient) -> None:
            _mkdirs(sftp, path, mode)
            sftp.chmod(path, mode)

        self._sftp("creating directory", path, op)

    def write_file(self, path: str, data: bytes, mode: int) -> None:
        """Write ``data`` to ``path`` with ``mode``, atomically (a temporary file renamed)."""
        tmp = f"{path}.tmp"

        def op(sftp: paramiko.SFTPClient) -> None:
            # Pod files live in the pod directory (mode 0700), so the temporary file is private
            # before its mode is set; the rename makes the whole file appear at once.
            with sftp.open(tmp, "wb") as f:
                f.set_pipelined(True)
                f.write(data)
                f.chmod(mode)
            sftp.posix_rename(tmp, path)

        self._sftp("writing", path, op)

    def write_tree(self, base: str, base_mode: int, items: Sequence[TreeItem]) -> None:
        """One exec: ``tar`` on the login node unpacks the tree sent on its input (a pod's
        directory took about 35 SFTP requests, one after the other)."""
        argv = ["sh", "-c", _UNPACK, "sh", base, f"{base_mode:o}"]
        result = self._exec(argv, self._timeout, tar_archive(items), found=False)
        if result.returncode != 0:
            raise unpack_error(result)

    def read_file(self, path: str, limit: int) -> bytes | None:
        """At most ``limit`` bytes from the start; None when the file does not exist."""

        def op(sftp: paramiko.SFTPClient) -> bytes | None:
            try:
                with sftp.open(path, "rb") as f:
                    return bytes(f.read(limit))
            except FileNotFoundError:
                return None

        return self._sftp("reading", path, op)

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` (fewer at the end of the file)."""

        def op(sftp: paramiko.SFTPClient) -> bytes:
            with sftp.open(path, "rb") as f:
                f.seek(offset)
                return bytes(f.read(length))

        return self._sftp("reading", path, op)

    def size(self, path: str) -> int | None:
        """The file's size; None when it does not exist."""

        def op(sftp: paramiko.SFTPClient) -> int | None:
            try:
                return sftp.stat(path).st_size
            except FileNotFoundError:
                return None

        return self._sftp("reading", path, op)

    def remove_tree(self, path: str) -> None:
        """Best effort, like the local transport: a failure is logged, never raised."""
        try:
            result = self.run(["rm", "-rf", "--", path], timeout=self._timeout)
            if result.returncode != 0:
                # A job killed before its cleanup may have left read-only directories (the
                # volumes it made read-only): writable again, then removed.
                self.run(["chmod", "-R", "u+w", "--", path], timeout=self._timeout)
                result = self.run(["rm", "-rf", "--", path], timeout=self._timeout)
        except CommandUnavailable as err:
            log.warning("could not remove %s: %s", path, err)
            return
        if result.returncode != 0:
            log.warning("could not remove %s: %s", path, result.stderr.strip())


# Parents as _mkdirs makes them (PARENT_DIR_MODE), the base with its own mode, then the tree:
# modes as given (-p), files stamped now (-m: the state reader compares mtimes), owned by the
# login user (-o), as GNU tar and bsdtar read these options. Messages in English: _TAR_ERRORS
# reads them.
_UNPACK = (
    "LC_ALL=C && export LC_ALL && umask 022 "
    '&& mkdir -p -- "$1" && chmod "$2" -- "$1" && cd -- "$1" '
    "&& umask 077 && exec tar -x -o -p -m -f -"
)
# What tar said → the errno a local write would have raised (jobdir tells the pod's doing,
# a name too long, from the site's).
_TAR_ERRORS = (
    ("file name too long", errno.ENAMETOOLONG),
    ("no space left", errno.ENOSPC),
    ("quota exceeded", errno.EDQUOT),
    ("permission denied", errno.EACCES),
    ("read-only file system", errno.EROFS),
    ("not found", errno.ENOENT),  # tar itself, or sh: the login node lacks it
)


def tar_archive(items: Sequence[TreeItem]) -> bytes:
    """``items`` as a POSIX (pax) tar archive: long and non-ASCII names kept whole."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for item in items:
            info = tarfile.TarInfo(item.path)
            info.mode = item.mode
            if item.data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(item.data)
                tar.addfile(info, io.BytesIO(item.data))
    return buffer.getvalue()


def unpack_error(result: CommandResult) -> OSError:
    """What the unpacking of a tree said when it failed, as the OSError a local write would
    have raised: its errno and reason read from the first line, which follows them."""
    lines = result.stderr.strip().splitlines()
    said = lines[0] if lines else f"exit status {result.returncode}"
    lowered = said.lower()
    code = next((c for text, c in _TAR_ERRORS if text in lowered), None)
    if code is None:
        return OSError(errno.EIO, f"the login node said: {said}")
    return OSError(code, f"{os.strerror(code)} (the login node said: {said})")


# How long one wait for a command's output lasts before its stderr is read again.
_OUTPUT_WAIT_SECONDS = 0.05


def _collect(channel: paramiko.Channel, deadline: float) -> tuple[bytes, bytes, int]:
    """Read stdout and stderr until the command exits; -1 when no exit status came.

    It waits in paramiko's own buffers (recv with a timeout, then the exit status's event),
    never with select on the channel: the channel's fileno() makes an OS pipe that paramiko's
    transport thread may still write to or read from after another thread closed it (the
    watchdog at the deadline, or a close from the server), when its descriptor may already be
    another connection's socket. Seen as EBADF, then EPIPE, on the SSH connection every thread
    shares, under 10,000 creates."""
    out: list[bytes] = []
    err: list[bytes] = []
    stdout_open = True
    while True:
        while channel.recv_stderr_ready():
            err.append(channel.recv_stderr(65536))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("command timed out")
        if stdout_open:
            channel.settimeout(min(remaining, _OUTPUT_WAIT_SECONDS))
            try:
                chunk = channel.recv(65536)
            except TimeoutError:
                continue
            if chunk:
                out.append(chunk)
                continue
            stdout_open = False  # its end: what is left is stderr and the exit status
        finished = channel.exit_status_ready() or channel.closed
        if finished and not channel.recv_stderr_ready():
            break
        channel.status_event.wait(min(remaining, _OUTPUT_WAIT_SECONDS))
    status = channel.recv_exit_status() if channel.exit_status_ready() else -1
    return b"".join(out), b"".join(err), status


def _mkdirs(sftp: paramiko.SFTPClient, path: str, mode: int) -> None:
    try:
        attrs = sftp.stat(path)
    except FileNotFoundError:
        parent = posixpath.dirname(path.rstrip("/"))
        if parent and parent != path:
            _mkdirs(sftp, parent, PARENT_DIR_MODE)
        try:
            sftp.mkdir(path, mode)
        except OSError:
            # Created meanwhile by another request? Then all is well.
            attrs = sftp.stat(path)
        else:
            return
    if attrs.st_mode is not None and not _is_dir(attrs.st_mode):
        raise NotADirectoryError(20, "not a directory", path)


def _is_dir(mode: int) -> bool:
    return (mode & 0o170000) == 0o040000


def _describe(err: BaseException) -> str:
    if isinstance(err, paramiko.ssh_exception.NoValidConnectionsError) and all(
        isinstance(e, ConnectionRefusedError) for e in err.errors.values()
    ):
        return "connection refused (is sshd running there, on that port?)"
    if isinstance(err, socket.gaierror):
        return f"unknown host ({err.strerror})"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused (is sshd running there, on that port?)"
    if isinstance(err, OSError) and err.strerror:
        return str(err.strerror).lower()
    text = str(err) or type(err).__name__
    return text


def _quiet_close(thing: paramiko.SSHClient | paramiko.SFTPClient) -> None:
    try:
        thing.close()
    except Exception:  # closing something broken: nothing to do about it
        log.debug("error while closing %r", thing, exc_info=True)


def check_key_file(path: Path) -> str | None:
    """Why a private key file cannot be used, or None (for doctor)."""
    try:
        paramiko.PKey.from_path(path.expanduser())
    except paramiko.PasswordRequiredException:
        return f"{path} is protected by a passphrase"
    except (OSError, paramiko.SSHException, ValueError) as err:
        return f"{path}: {err}"
    return None
