"""Reading a container's log the way ``kubectl logs`` asks, without reading more than needed."""

from __future__ import annotations

from interlink_slurm.slurm.transport import Transport
from interlink_slurm.wire import LogOpts

BLOCK = 64 * 1024


def tail_start(transport: Transport, path: str, size: int, lines: int) -> int:
    """Offset where the last ``lines`` lines of the file begin, reading backwards by blocks."""
    if lines <= 0:
        return size
    # A final newline ends the last line; it does not start another one.
    end = size
    if end and transport.read_range(path, end - 1, 1) == b"\n":
        end -= 1
    newlines = 0
    pos = end
    while pos > 0:
        start = max(0, pos - BLOCK)
        block = transport.read_range(path, start, pos - start)
        for i in range(len(block) - 1, -1, -1):
            if block[i] == 0x0A:
                newlines += 1
                if newlines == lines:
                    return start + i + 1
        pos = start
    return 0


def read_log(transport: Transport, path: str, opts: LogOpts) -> bytes:
    size = transport.size(path)
    if not size:
        return b""
    start = tail_start(transport, path, size, opts.Tail) if opts.Tail else 0
    length = size - start
    if opts.Bytes:
        length = min(length, opts.Bytes)
    return transport.read_range(path, start, length)
