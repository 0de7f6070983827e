"""How commands run and files are reached on the cluster side: one narrow interface.

Methods are blocking; the service calls them from worker threads. Only the local
implementation lives here; others (SSH) implement the same Protocol.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class CommandResult:
    """How a command ended: its exit status and output."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class TreeItem:
    """A directory (``data`` None) or a file of a new tree, ``path`` relative to its base."""

    path: str
    mode: int
    data: bytes | None = None


class CommandUnavailable(Exception):
    """The command could not be run at all (not installed, timed out, transport down)."""


class Transport(Protocol):
    """Where commands run and files are reached: this machine (LocalTransport) or a login
    node over SSH (ssh.SSHTransport)."""

    def run(self, argv: Sequence[str], *, timeout: float) -> CommandResult:
        """Run ``argv`` (no shell), within ``timeout`` seconds; CommandUnavailable when it cannot
        be run at all."""
        ...

    def make_dirs(self, path: str, mode: int) -> None:
        """Create ``path`` and its parents, ``path`` with ``mode``."""
        ...

    def write_file(self, path: str, data: bytes, mode: int) -> None:
        """Write ``data`` to ``path`` with ``mode``, the whole file appearing at once."""
        ...

    def write_tree(self, base: str, base_mode: int, items: Sequence[TreeItem]) -> None:
        """Make ``base`` and its parents (``base`` with ``base_mode``), then each item under it,
        in order (a directory before what it holds). Each file appears whole, but not all at
        once: the tree is for a job not submitted yet. OSError when an item cannot be made."""
        ...

    def read_file(self, path: str, limit: int) -> bytes | None:
        """At most ``limit`` bytes from the start; None when the file does not exist."""
        ...

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` (fewer at the end of the file)."""
        ...

    def size(self, path: str) -> int | None:
        """The file's size; None when it does not exist."""
        ...

    def remove_tree(self, path: str) -> None:
        """Remove ``path`` and everything under it; nothing when it does not exist."""
        ...


class LocalTransport:
    """Commands as child processes (argv, never a shell), files on the local filesystem."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        """``env``: the commands' whole environment (default: this process's)."""
        # Encoded once: given str, subprocess encodes every variable again on every command
        # (an sbatch per create).
        self._env = {
            os.fsencode(k): os.fsencode(v) for k, v in (os.environ if env is None else env).items()
        }

    def run(self, argv: Sequence[str], *, timeout: float) -> CommandResult:
        try:
            proc = subprocess.run(
                list(argv),
                capture_output=True,
                text=True,
                timeout=timeout,
                env=self._env,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except FileNotFoundError as err:
            raise CommandUnavailable(f"{argv[0]} is not installed or not on PATH") from err
        except subprocess.TimeoutExpired as err:
            raise CommandUnavailable(f"{argv[0]} did not answer within {timeout:g} s") from err
        return CommandResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)

    def make_dirs(self, path: str, mode: int) -> None:
        os.makedirs(path, mode=mode, exist_ok=True)
        os.chmod(path, mode)

    def write_file(self, path: str, data: bytes, mode: int) -> None:
        tmp = f"{path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            # No fsync: the rename makes the file whole or absent. Durability of the pod ↔ job
            # link lives in SQLite, and a pod whose files vanished with the machine is re-sent.
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def write_tree(self, base: str, base_mode: int, items: Sequence[TreeItem]) -> None:
        self.make_dirs(base, base_mode)
        for item in items:
            path = f"{base}/{item.path}"
            if item.data is None:
                self.make_dirs(path, item.mode)
            else:
                self.write_file(path, item.data, item.mode)

    def read_file(self, path: str, limit: int) -> bytes | None:
        try:
            with open(path, "rb") as f:
                return f.read(limit)
        except FileNotFoundError:
            return None

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(length)

    def size(self, path: str) -> int | None:
        try:
            return os.stat(path).st_size
        except FileNotFoundError:
            return None

    def remove_tree(self, path: str) -> None:
        def writable_again(_: object, failed: str, info: tuple[type, object, object]) -> None:
            # A job killed before its cleanup may have left read-only directories (the volumes
            # it made read-only): the parent made writable, the entry removed again.
            if not issubclass(info[0], PermissionError) or failed == path:
                return
            try:
                os.chmod(os.path.dirname(failed), 0o700)
                if os.path.isdir(failed) and not os.path.islink(failed):
                    os.chmod(failed, 0o700)
                    shutil.rmtree(failed, ignore_errors=True)
                else:
                    os.unlink(failed)
            except OSError:
                pass

        shutil.rmtree(path, onerror=writable_again)
