"""A transport for unit tests that counts what the plugin asks of a login node."""

from __future__ import annotations

from collections.abc import Sequence

from interlink_slurm.slurm.transport import CommandResult, LocalTransport, TreeItem


class CountingTransport:
    """The local files and commands, each call counted by method (what SFTP requests or SSH
    execs the SSH transport would make) and each command's argv kept. Not a LocalTransport,
    so the state files are read through the reader's command, as over SSH (a
    LocalTransport's are read in process)."""

    def __init__(self) -> None:
        self.local = LocalTransport()
        self.calls: dict[str, int] = {}
        self.argvs: list[list[str]] = []

    def _count(self, method: str) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1

    def run(self, argv: Sequence[str], *, timeout: float) -> CommandResult:
        self._count("run")
        self.argvs.append(list(argv))
        return self.local.run(argv, timeout=timeout)

    def make_dirs(self, path: str, mode: int) -> None:
        self._count("make_dirs")
        self.local.make_dirs(path, mode)

    def write_file(self, path: str, data: bytes, mode: int) -> None:
        self._count("write_file")
        self.local.write_file(path, data, mode)

    def write_tree(self, base: str, base_mode: int, items: Sequence[TreeItem]) -> None:
        self._count("write_tree")
        self.local.write_tree(base, base_mode, items)

    def read_file(self, path: str, limit: int) -> bytes | None:
        self._count("read_file")
        return self.local.read_file(path, limit)

    def size(self, path: str) -> int | None:
        self._count("size")
        return self.local.size(path)

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        self._count("read_range")
        return self.local.read_range(path, offset, length)

    def remove_tree(self, path: str) -> None:
        self._count("remove_tree")
        self.local.remove_tree(path)
