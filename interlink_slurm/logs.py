"""A container's log the way ``kubectl logs`` asks for it, read from the end, streamed.

The log file is what the container wrote, byte for byte; ``<log>.idx`` (written by logpipe.py)
says when each chunk of it arrived. Options are applied in kubelet's order: since → tail →
timestamps → byte limit; Follow then keeps sending what the container writes until it ends.
Nothing here asks Slurm anything: whether a container has ended is read from its files.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from interlink_slurm.logpipe import RECORD
from interlink_slurm.slurm.transport import Transport
from interlink_slurm.wire import LogOpts

BLOCK = 64 * 1024
FOLLOW_POLL_SECONDS = 0.25


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ns(t: datetime) -> int:
    """Exact nanoseconds since the epoch (a float timestamp would lose the last digits)."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return (t - EPOCH) // timedelta(microseconds=1) * 1000


def rfc3339nano(t_ns: int) -> bytes:
    """Go's time.RFC3339Nano in UTC: nanoseconds with trailing zeros trimmed."""
    secs, nanos = divmod(t_ns, 1_000_000_000)
    base = datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{nanos:09d}".rstrip("0")
    return f"{base}{'.' + frac if frac else ''}Z".encode()


class Index:
    """The (offset, time) records of a log, read lazily by binary search."""

    def __init__(self, transport: Transport, path: str) -> None:
        self._transport = transport
        self._path = path
        self.count = (transport.size(path) or 0) // RECORD.size
        self._cache: dict[int, tuple[int, int]] = {}

    def __bool__(self) -> bool:
        return self.count > 0

    def record(self, i: int) -> tuple[int, int]:
        """Record ``i``: (offset in the log, time in ns) of a chunk; (0, 0) past the end."""
        if i not in self._cache:
            raw = self._transport.read_range(self._path, i * RECORD.size, RECORD.size)
            self._cache[i] = RECORD.unpack(raw) if len(raw) == RECORD.size else (0, 0)
        return self._cache[i]

    def _search(self, key: Callable[[tuple[int, int]], bool]) -> int:
        """The first record index for which key is true (records are in order)."""
        lo, hi = 0, self.count
        while lo < hi:
            mid = (lo + hi) // 2
            if key(self.record(mid)):
                hi = mid
            else:
                lo = mid + 1
        return lo

    def first_at_or_after(self, t_ns: int) -> int | None:
        """Offset of the first chunk written at or after t_ns."""
        i = self._search(lambda r: r[1] >= t_ns)
        return self.record(i)[0] if i < self.count else None

    def times_from(self, offset: int) -> tuple[list[int], list[int]]:
        """(offsets, times) of the chunks from the one holding ``offset`` to the end."""
        i = max(0, self._search(lambda r: r[0] > offset) - 1)
        n = self.count - i
        raw = self._transport.read_range(self._path, i * RECORD.size, n * RECORD.size)
        records = [RECORD.unpack_from(raw, k * RECORD.size) for k in range(len(raw) // 16)]
        return [r[0] for r in records], [r[1] for r in records]


def tail_start(transport: Transport, path: str, size: int, lines: int, floor: int = 0) -> int:
    """Offset where the last ``lines`` lines of the file begin, reading backwards by blocks."""
    end = size
    # A final newline ends the last line; it does not start another one.
    if end > floor and transport.read_range(path, end - 1, 1) == b"\n":
        end -= 1
    newlines = 0
    pos = end
    while pos > floor:
        start = max(floor, pos - BLOCK)
        block = transport.read_range(path, start, pos - start)
        for i in range(len(block) - 1, -1, -1):
            if block[i] == 0x0A:
                newlines += 1
                if newlines == lines:
                    return start + i + 1
        pos = start
    return floor


def _line_start_at_or_after(transport: Transport, path: str, size: int, offset: int) -> int:
    """The first line start >= offset (a line that began before it is left out)."""
    if offset <= 0:
        return 0
    if transport.read_range(path, offset - 1, 1) == b"\n":
        return offset
    pos = offset
    while pos < size:
        block = transport.read_range(path, pos, BLOCK)
        nl = block.find(b"\n")
        if nl >= 0:
            return pos + nl + 1
        pos += len(block)
    return size


@dataclass
class LogSource:
    """Where one container's log is and how to tell that the container has ended."""

    path: str
    ended: Callable[[], bool]


class _Stamper:
    """Prefixes each line with the time of the chunk that holds its first byte."""

    def __init__(self, index: Index, start: int) -> None:
        self.offsets, self.times = index.times_from(start) if index else ([], [])
        self.at_line_start = True

    def refresh(self, index: Index, start: int) -> None:
        """Take the times from ``start`` on of a fresh read of the index (a follow that
        reads on, or a log that restarted)."""
        self.offsets, self.times = index.times_from(start)

    def time_at(self, offset: int) -> int:
        """The arrival time (ns) of the chunk holding byte ``offset``; now with no index."""
        i = bisect.bisect_right(self.offsets, offset) - 1
        return self.times[i] if i >= 0 else (self.times[0] if self.times else time.time_ns())

    def stamp(self, data: bytes, offset: int) -> bytes:
        """``data`` (from ``offset`` in the log) with a timestamp before each line that
        starts in it; a line cut between two calls is stamped once."""
        out = []
        pos = 0
        while pos < len(data):
            if self.at_line_start:
                out.append(rfc3339nano(self.time_at(offset + pos)) + b" ")
            nl = data.find(b"\n", pos)
            end = len(data) if nl < 0 else nl + 1
            out.append(data[pos:end])
            self.at_line_start = nl >= 0
            pos = end
        return b"".join(out)


class _Limit:
    """LimitBytes across chunks; a limit of 0 or less is none."""

    def __init__(self, limit: int) -> None:
        self.left = limit if limit > 0 else -1

    def take(self, data: bytes) -> bytes:
        """What of ``data`` is still within the limit."""
        if self.left < 0:
            return data
        data = data[: self.left]
        self.left -= len(data)
        return data

    @property
    def done(self) -> bool:
        """Whether the limit is reached: nothing more to read."""
        return self.left == 0


async def stream_log(
    transport: Transport, source: LogSource, opts: LogOpts, now_ns: int | None = None
) -> AsyncIterator[bytes]:
    """The log as kubectl asked for it, in chunks; with Follow, until the container ends."""
    path = source.path
    run = asyncio.to_thread

    def current_size() -> int:
        return transport.size(path) or 0

    size = await run(current_size)
    index = (
        await run(Index, transport, path + ".idx")
        if (opts.Timestamps or opts.SinceSeconds or opts.since_time)
        else None
    )

    start = await _start(transport, path, size, index, opts, now_ns)
    # An empty index is still an index: a followed container may not have written yet.
    stamper = await run(_Stamper, index, start) if opts.Timestamps and index is not None else None
    limit = _Limit(opts.Bytes)
    pos = start

    async def emit_until(end: int) -> AsyncIterator[bytes]:
        nonlocal pos
        while pos < end and not limit.done:
            data = await run(transport.read_range, path, pos, min(BLOCK, end - pos))
            if not data:
                return
            out = stamper.stamp(data, pos) if stamper else data
            pos += len(data)
            out = limit.take(out)
            if out:
                yield out

    async for chunk in emit_until(size):
        yield chunk
    if not opts.Follow:
        return
    while not limit.done:
        ended = await run(source.ended)
        size = await run(current_size)
        if size < pos:
            # The log was rotated (the container restarted): follow the new run from its start.
            pos = 0
            if stamper is not None:
                stamper.at_line_start = True
                await run(stamper.refresh, await run(Index, transport, path + ".idx"), 0)
        if size > pos:
            if stamper and index is not None:
                fresh = await run(Index, transport, path + ".idx")
                await run(stamper.refresh, fresh, pos)
            async for chunk in emit_until(size):
                yield chunk
        elif ended:
            return
        else:
            await asyncio.sleep(FOLLOW_POLL_SECONDS)


async def _start(
    transport: Transport,
    path: str,
    size: int,
    index: Index | None,
    opts: LogOpts,
    now_ns: int | None,
) -> int:
    """Where the answer starts in the log: the first line since SinceSeconds or SinceTime (by
    the index of line times), or the last Tail lines, whichever starts later."""
    run = asyncio.to_thread
    start = 0
    since_ns = None
    if opts.SinceSeconds:
        since_ns = (now_ns or time.time_ns()) - opts.SinceSeconds * 1_000_000_000
    elif opts.since_time is not None:
        since_ns = _ns(opts.since_time)
    if since_ns is not None and index:
        first = await run(index.first_at_or_after, since_ns)
        start = (
            size
            if first is None
            else await run(_line_start_at_or_after, transport, path, size, first)
        )
    if opts.Tail and size:
        start = max(start, await run(tail_start, transport, path, size, opts.Tail, start))
    return start


async def read_log(
    transport: Transport, path: str, opts: LogOpts, now_ns: int | None = None
) -> bytes:
    """The whole answer at once (no Follow): for tests and small logs."""
    source = LogSource(path, lambda: True)
    return b"".join([c async for c in stream_log(transport, source, opts, now_ns)])
